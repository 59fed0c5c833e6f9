/* JPEG -> 8-bit RGB with libjpeg(-turbo), decoded as PIL decodes it (the same library, default
 * IDCT and upsampling): colour to RGB, greyscale replicated, CMYK/YCCK read as Adobe-inverted
 * CMYK and converted with PIL's formula; the first APP1 "Exif" block gives the orientation.
 * Errors longjmp out of libjpeg. Warnings about corrupt data do not stop the decode (PIL does
 * not stop either), the data ending before the last scanline does ("truncated"). */
#include "image_internal.h"

#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h>

#define JPEG_MAX_SCANS   1000          /* a progressive file needs ~10; thousands are a CPU bomb */
#define JPEG_MAX_MEMORY  (1500L << 20) /* libjpeg's working memory (progressive coefficients) */

struct jpeg_ctx {
	struct jpeg_error_mgr  err;        /* first: libjpeg hands back a pointer to it */
	struct jpeg_progress_mgr progress;
	jmp_buf                jb;
	bool                   truncated;
	bool                   header_done; /* jpeg_read_header returned */
	bool                   too_many_scans;
	char                   msg[JMSG_LENGTH_MAX];
	uint8_t               *row;        /* one decoded scanline */
};

static void jpeg_error_exit_cb(j_common_ptr ci)
{
	struct jpeg_ctx *c = (struct jpeg_ctx *)ci->err;
	ci->err->format_message(ci, c->msg);
	longjmp(c->jb, 1);
}

static void jpeg_emit_cb(j_common_ptr ci, int level)
{
	struct jpeg_ctx *c = (struct jpeg_ctx *)ci->err;
	if (level >= 0) /* trace messages */
		return;
	if (ci->err->msg_code == JWRN_JPEG_EOF) { /* libjpeg would fill the rest with grey */
		c->truncated = true;
		longjmp(c->jb, 1);
	}
	ci->err->num_warnings++;
}

static void jpeg_output_cb(j_common_ptr ci)
{
	(void)ci; /* never print: the message goes to the caller through gs_errorf */
}

static void jpeg_progress_cb(j_common_ptr ci)
{
	struct jpeg_ctx *c = (struct jpeg_ctx *)ci->err;
	j_decompress_ptr di = (j_decompress_ptr)ci;
	if (di->input_scan_number > JPEG_MAX_SCANS) {
		c->too_many_scans = true;
		longjmp(c->jb, 1);
	}
}

/* PIL: unpack "CMYK;I" (255 - v), then cmyk2rgb: nk = 255 - k, c' = nk - c * nk / 255. */
static inline uint8_t jpeg_cmyk_chan(uint8_t inv_c, uint8_t inv_k)
{
	int cc = 255 - inv_c, nk = inv_k; /* nk = 255 - (255 - inv_k) */
	int tmp = cc * nk + 128;
	int v = nk - (((tmp >> 8) + tmp) >> 8);
	return v < 0 ? 0 : v > 255 ? 255 : (uint8_t)v;
}

enum gs_status gs_image_jpeg_decode(const uint8_t *d, size_t n, int64_t max_pixels, struct gs_image_rgb8 *out,
				    int *orientation)
{
	struct jpeg_decompress_struct ci;
	struct jpeg_ctx c;
	volatile enum gs_status st = GS_OK; /* set after setjmp */

	*orientation = 1;
	memset(&c, 0, sizeof(c));
	memset(&ci, 0, sizeof(ci));
	ci.err = jpeg_std_error(&c.err);
	c.err.error_exit = jpeg_error_exit_cb;
	c.err.emit_message = jpeg_emit_cb;
	c.err.output_message = jpeg_output_cb;
	if (setjmp(c.jb)) {
		if (c.truncated && !c.header_done)
			st = gs_errorf(GS_ERR_INVALID_ARG, "JPEG image is truncated or corrupt: the data ends before "
				       "its header is complete (%zu bytes)", n);
		else if (c.truncated)
			st = gs_errorf(GS_ERR_INVALID_ARG, "JPEG image is truncated: the data ends before the image is "
				       "complete (%zu bytes)", n);
		else if (c.too_many_scans)
			st = gs_errorf(GS_ERR_INVALID_ARG, "corrupt JPEG image: more than %d progressive scans",
				       JPEG_MAX_SCANS);
		else if (c.err.msg_code == JERR_OUT_OF_MEMORY)
			st = gs_errorf(GS_ERR_INVALID_ARG, "JPEG image needs more than %ld MiB to decode",
				       JPEG_MAX_MEMORY >> 20);
		else
			st = gs_errorf(GS_ERR_INVALID_ARG, "corrupt or unsupported JPEG image: %s", c.msg);
		goto out_free;
	}
	jpeg_create_decompress(&ci);
	ci.mem->max_memory_to_use = JPEG_MAX_MEMORY;
	c.progress.progress_monitor = jpeg_progress_cb;
	ci.progress = &c.progress;
	jpeg_save_markers(&ci, JPEG_APP0 + 1, 0xffff);
	jpeg_mem_src(&ci, d, (unsigned long)n);
	jpeg_read_header(&ci, TRUE);
	c.header_done = true;

	st = gs_image_check_dims("JPEG", ci.image_width, ci.image_height, max_pixels);
	if (st != GS_OK)
		goto out_free;
	switch (ci.num_components) {
	case 1: ci.out_color_space = JCS_GRAYSCALE; break;
	case 3: ci.out_color_space = JCS_RGB; break;
	case 4: ci.out_color_space = JCS_CMYK; break; /* libjpeg turns YCCK into CMYK */
	default:
		st = gs_errorf(GS_ERR_INVALID_ARG, "JPEG image with %d colour components is not supported (1, 3 or 4)",
			       ci.num_components);
		goto out_free;
	}
	/* PIL: the first APP1 that starts with "Exif\0" is the EXIF block */
	for (jpeg_saved_marker_ptr m = ci.marker_list; m; m = m->next)
		if (m->marker == JPEG_APP0 + 1 && m->data_length >= 5 && memcmp(m->data, "Exif\0", 5) == 0) {
			*orientation = gs_image_exif_orientation(m->data, m->data_length);
			break;
		}

	jpeg_start_decompress(&ci);
	const int comps = ci.output_components;
	const uint32_t w = ci.output_width, h = ci.output_height;
	out->px = gs_image_px_alloc((size_t)w * h * 3);
	c.row = malloc((size_t)w * comps);
	if (!out->px || !c.row) {
		st = gs_errorf(GS_ERR_NOMEM, "JPEG: out of memory for %u x %u pixels", (unsigned)w, (unsigned)h);
		goto out_free;
	}
	out->w = (int32_t)w;
	out->h = (int32_t)h;
	while (ci.output_scanline < h) {
		uint8_t *dst = out->px + (size_t)ci.output_scanline * w * 3;
		JSAMPROW rows[1] = { comps == 3 ? dst : c.row }; /* RGB straight into the image */
		if (jpeg_read_scanlines(&ci, rows, 1) != 1) {
			st = gs_errorf(GS_ERR_INVALID_ARG, "JPEG image is truncated: the data ends before the image is "
				       "complete (%zu bytes)", n);
			goto out_free;
		}
		if (comps == 3)
			continue;
		const uint8_t *src = c.row;
		for (uint32_t x = 0; x < w; x++, src += comps, dst += 3) {
			if (comps == 1) {
				dst[0] = dst[1] = dst[2] = src[0];
			} else {
				dst[0] = jpeg_cmyk_chan(src[0], src[3]);
				dst[1] = jpeg_cmyk_chan(src[1], src[3]);
				dst[2] = jpeg_cmyk_chan(src[2], src[3]);
			}
		}
	}
	/* No jpeg_finish_decompress: every row is out; whatever follows (even a missing EOI) does not
	 * change the image, and PIL ignores it too. */
out_free:
	jpeg_destroy_decompress(&ci);
	free(c.row);
	if (st != GS_OK)
		gs_image_rgb8_free(out);
	return st;
}
