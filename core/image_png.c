/* PNG -> 8-bit RGB with libpng, as PIL's Image.open + convert("RGB") gives it: every colour type
 * and bit depth, interlaced too; grey replicated, palette looked up (tRNS ignored), alpha dropped.
 * 16-bit samples are scaled by their significant bits (gs_image.h), and the eXIf chunk gives the
 * EXIF orientation. libpng reports errors by longjmp; its warnings and "benign" errors (a bad
 * CRC in an ancillary chunk, extra data) do not stop the decode, missing image data does. */
#include "image_internal.h"

#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct png_ctx {
	const uint8_t *d;
	size_t         n, off;
	bool           truncated;      /* the read callback ran out of bytes */
	bool           pixels_done;    /* every row is in out: a later error is only in trailing chunks */
	char           msg[200];       /* libpng's error text */
	uint8_t       *rows;           /* interlaced: the whole image as libpng returns it; else one row */
	png_bytep     *row_ptrs;       /* interlaced: a pointer per row */
	uint8_t       *lut16[3];       /* 16-bit -> 8-bit per colour channel (sBIT) */
};

static void png_read_cb(png_structp png, png_bytep dst, size_t len)
{
	struct png_ctx *c = png_get_io_ptr(png);
	if (len > c->n - c->off) {
		c->truncated = true;
		png_error(png, "truncated");
	}
	memcpy(dst, c->d + c->off, len);
	c->off += len;
}

static void png_error_cb(png_structp png, png_const_charp msg)
{
	struct png_ctx *c = png_get_error_ptr(png);
	snprintf(c->msg, sizeof(c->msg), "%s", msg);
	png_longjmp(png, 1);
}

static void png_warning_cb(png_structp png, png_const_charp msg)
{
	(void)png;
	(void)msg; /* not fatal; PIL does not report these either */
}

static uint32_t be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* round(v' * 255 / (2^bits - 1)) of v' = v >> (16 - bits): the sample reduced to its
 * significant bits (a PNG writer stores an n-bit sample shifted up to 16 bits). */
static uint8_t *png_lut16(int bits)
{
	uint8_t *lut = malloc(65536);
	if (!lut)
		return NULL;
	if (bits < 1 || bits > 16)
		bits = 16;
	uint32_t max = (1u << bits) - 1;
	for (uint32_t v = 0; v < 65536; v++)
		lut[v] = (uint8_t)(((v >> (16 - bits)) * 255 + max / 2) / max);
	return lut;
}

/* One row as libpng gives it (channels 1..4, 8 or 16 bits, palette indices unpacked to
 * bytes) -> RGB8. */
static void png_row_to_rgb(const struct png_ctx *c, const uint8_t *src, int channels, int depth,
			   const uint8_t *pal, uint32_t w, uint8_t *dst)
{
	const int bps = depth == 16 ? 2 : 1;
	for (uint32_t x = 0; x < w; x++, src += channels * bps, dst += 3) {
		if (pal) {
			memcpy(dst, pal + src[0] * 3, 3);
		} else if (depth == 16) {
			if (channels <= 2) {
				dst[0] = dst[1] = dst[2] = c->lut16[0][src[0] << 8 | src[1]];
			} else {
				dst[0] = c->lut16[0][src[0] << 8 | src[1]];
				dst[1] = c->lut16[1][src[2] << 8 | src[3]];
				dst[2] = c->lut16[2][src[4] << 8 | src[5]];
			}
		} else if (channels <= 2) {
			dst[0] = dst[1] = dst[2] = src[0];
		} else {
			memcpy(dst, src, 3);
		}
	}
}

enum gs_status gs_image_png_decode(const uint8_t *d, size_t n, int64_t max_pixels, struct gs_image_rgb8 *out,
				   int *orientation)
{
	struct png_ctx c = { .d = d, .n = n };
	png_structp png;
	png_infop info;
	volatile enum gs_status st = GS_OK; /* set after setjmp */
	uint8_t pal[256 * 3];

	*orientation = 1;
	/* The limits first, from IHDR (always the first chunk), before libpng allocates anything. */
	if (n < 8 + 8 + 13 + 4)
		return gs_errorf(GS_ERR_INVALID_ARG, "PNG image is truncated (%zu bytes, shorter than its header)", n);
	if (be32(d + 8) != 13 || memcmp(d + 12, "IHDR", 4) != 0)
		return gs_errorf(GS_ERR_INVALID_ARG, "corrupt PNG image: the first chunk is not a valid IHDR");
	GS_TRY(gs_image_check_dims("PNG", be32(d + 16), be32(d + 20), max_pixels));

	png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &c, png_error_cb, png_warning_cb);
	if (!png)
		return gs_errorf(GS_ERR_NOMEM, "PNG: cannot create the decoder");
	info = png_create_info_struct(png);
	if (!info) {
		png_destroy_read_struct(&png, NULL, NULL);
		return gs_errorf(GS_ERR_NOMEM, "PNG: cannot create the decoder");
	}
	if (setjmp(png_jmpbuf(png))) {
		if (c.pixels_done) { /* an error after the last row (trailing chunks): PIL keeps the image */
			st = GS_OK;
			goto out_orientation;
		}
		if (c.truncated)
			st = gs_errorf(GS_ERR_INVALID_ARG, "PNG image is truncated: the data ends before the image is "
				       "complete (%zu bytes)", n);
		else if (strstr(c.msg, "memory") || strstr(c.msg, "Out of"))
			st = gs_errorf(GS_ERR_NOMEM, "PNG: %s", c.msg);
		else
			st = gs_errorf(GS_ERR_INVALID_ARG, "corrupt PNG image: %s", c.msg);
		goto out_free;
	}
	png_set_read_fn(png, &c, png_read_cb);
	/* dimensions are bounded by max_pixels above; libpng's own default is 1e6 per side */
	png_set_user_limits(png, PNG_UINT_31_MAX, PNG_UINT_31_MAX);
	png_set_benign_errors(png, 1);
	png_read_info(png, info);

	png_uint_32 w, h;
	int depth, color, interlace;
	png_get_IHDR(png, info, &w, &h, &depth, &color, &interlace, NULL, NULL);
	if (gs_image_check_dims("PNG", w, h, max_pixels) != GS_OK) { /* libpng read the same IHDR */
		st = GS_ERR_INVALID_ARG;
		goto out_free;
	}
	const uint8_t *lookup = NULL;
	if (color == PNG_COLOR_TYPE_PALETTE) {
		png_colorp plte;
		int n_plte = 0;
		/* indices beyond the palette read as PIL's default palette: a grey ramp */
		for (int i = 0; i < 256; i++)
			pal[i * 3] = pal[i * 3 + 1] = pal[i * 3 + 2] = (uint8_t)i;
		if (png_get_PLTE(png, info, &plte, &n_plte))
			for (int i = 0; i < n_plte && i < 256; i++) {
				pal[i * 3] = plte[i].red;
				pal[i * 3 + 1] = plte[i].green;
				pal[i * 3 + 2] = plte[i].blue;
			}
		lookup = pal;
		png_set_packing(png); /* 1, 2, 4-bit indices -> one byte each */
	} else if (color == PNG_COLOR_TYPE_GRAY && depth < 8) {
		png_set_expand_gray_1_2_4_to_8(png); /* 0..2^d-1 scaled to 0..255, as PIL's L;2, L;4 */
	}
	int passes = png_set_interlace_handling(png);
	png_read_update_info(png, info);
	const int channels = png_get_channels(png, info);
	const int out_depth = png_get_bit_depth(png, info);
	const size_t rowbytes = png_get_rowbytes(png, info);
	if (out_depth != 8 && out_depth != 16) {
		st = gs_errorf(GS_ERR_INVALID_ARG, "PNG: unexpected bit depth %d after expansion", out_depth);
		goto out_free;
	}
	if (out_depth == 16) {
		int bits[3] = { 16, 16, 16 };
		png_color_8p sig;
		if (png_get_sBIT(png, info, &sig)) {
			if (channels <= 2)
				bits[0] = sig->gray;
			else {
				bits[0] = sig->red;
				bits[1] = sig->green;
				bits[2] = sig->blue;
			}
		}
		for (int i = 0; i < (channels <= 2 ? 1 : 3); i++)
			if (!(c.lut16[i] = png_lut16(bits[i]))) {
				st = gs_errorf(GS_ERR_NOMEM, "PNG: out of memory");
				goto out_free;
			}
	}

	out->px = gs_image_px_alloc((size_t)w * h * 3);
	c.rows = gs_image_px_alloc(passes > 1 ? rowbytes * h : rowbytes);
	if (!out->px || !c.rows) {
		st = gs_errorf(GS_ERR_NOMEM, "PNG: out of memory for %u x %u pixels", (unsigned)w, (unsigned)h);
		goto out_free;
	}
	out->w = (int32_t)w;
	out->h = (int32_t)h;
	if (passes > 1) {
		c.row_ptrs = malloc(h * sizeof(png_bytep));
		if (!c.row_ptrs) {
			st = gs_errorf(GS_ERR_NOMEM, "PNG: out of memory");
			goto out_free;
		}
		for (png_uint_32 y = 0; y < h; y++)
			c.row_ptrs[y] = c.rows + y * rowbytes;
		png_read_image(png, c.row_ptrs);
		for (png_uint_32 y = 0; y < h; y++)
			png_row_to_rgb(&c, c.row_ptrs[y], channels, out_depth, lookup, w, out->px + (size_t)y * w * 3);
	} else {
		for (png_uint_32 y = 0; y < h; y++) {
			png_read_row(png, c.rows, NULL);
			png_row_to_rgb(&c, c.rows, channels, out_depth, lookup, w, out->px + (size_t)y * w * 3);
		}
	}
	c.pixels_done = true;
	png_read_end(png, info); /* the chunks after the image data: eXIf may be there */

out_orientation: {
	png_uint_32 n_exif = 0;
	png_bytep exif = NULL;
	if (png_get_eXIf_1(png, info, &n_exif, &exif) && exif)
		*orientation = gs_image_exif_orientation(exif, n_exif);
}
out_free:
	png_destroy_read_struct(&png, &info, NULL);
	free(c.row_ptrs);
	free(c.rows);
	for (int i = 0; i < 3; i++)
		free(c.lut16[i]);
	if (st != GS_OK)
		gs_image_rgb8_free(out);
	return st;
}
