/* Image preprocessing: format dispatch, the limits every format shares, EXIF orientation, and
 * gs_image_prepare (decode + resize). The decoders are image_png.c and image_jpeg.c, DICOM is
 * image_dicom.cc (when the build has it: GS_HAVE_DICOM), the resize image_resize.c. */
#include "gs_image.h"
#include "image_internal.h"
#include "gs_util.h"

#ifdef GS_HAVE_DICOM
#include "gs_dicom.h"
#endif

#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>

enum img_format { IMG_UNKNOWN, IMG_PNG, IMG_JPEG, IMG_DICOM };

static const char *const img_format_names[] = {
	[IMG_UNKNOWN] = "unknown", [IMG_PNG] = "PNG", [IMG_JPEG] = "JPEG", [IMG_DICOM] = "DICOM",
};

void gs_image_rgb8_free(struct gs_image_rgb8 *im)
{
	if (!im)
		return;
	free(im->px);
	im->px = NULL;
	im->w = im->h = 0;
}

void *gs_image_px_alloc(size_t n)
{
	return gs_alloc_huge(n);
}

enum gs_status gs_image_check_dims(const char *fmt, int64_t w, int64_t h, int64_t max_pixels)
{
	if (w <= 0 || h <= 0)
		return gs_errorf(GS_ERR_INVALID_ARG, "%s image has zero width or height (%lld x %lld)", fmt,
				 (long long)w, (long long)h);
	/* w, h < 2^32 in every format (PNG's are 32-bit): the product fits in 64 unsigned bits */
	if (w > UINT32_MAX || h > UINT32_MAX || (uint64_t)w * (uint64_t)h > (uint64_t)max_pixels)
		return gs_errorf(GS_ERR_INVALID_ARG,
				 "%s image is %lld x %lld = %llu pixels, above the limit of %lld pixels", fmt,
				 (long long)w, (long long)h,
				 (unsigned long long)(w > UINT32_MAX || h > UINT32_MAX ? UINT64_MAX
						      : (uint64_t)w * (uint64_t)h),
				 (long long)max_pixels);
	return GS_OK;
}

/* "image/png; foo" -> matches "image/png" (case-insensitive, parameters ignored). */
static bool mime_is(const char *mime, const char *want)
{
	size_t n = strlen(want);
	if (strncasecmp(mime, want, n) != 0)
		return false;
	mime += n;
	while (*mime == ' ' || *mime == '\t')
		mime++;
	return *mime == '\0' || *mime == ';';
}

static enum img_format sniff(const uint8_t *d, size_t n)
{
	static const uint8_t png_sig[8] = { 0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n' };
	if (n >= 8 && memcmp(d, png_sig, 8) == 0)
		return IMG_PNG;
	if (n >= 3 && d[0] == 0xff && d[1] == 0xd8 && d[2] == 0xff)
		return IMG_JPEG;
	if (n >= 132 && memcmp(d + 128, "DICM", 4) == 0)
		return IMG_DICOM;
	return IMG_UNKNOWN;
}

/* ---- EXIF orientation (PIL: Image.getexif()[0x0112], applied by ImageOps.exif_transpose) ---- */

static uint32_t rd16(const uint8_t *p, bool le)
{
	return le ? (uint32_t)p[0] | (uint32_t)p[1] << 8 : (uint32_t)p[0] << 8 | p[1];
}

static uint32_t rd32(const uint8_t *p, bool le)
{
	return le ? rd16(p, true) | rd16(p + 2, true) << 16 : rd16(p, false) << 16 | rd16(p + 2, false);
}

int gs_image_exif_orientation(const uint8_t *p, size_t n)
{
	int orientation = 1;
	bool le;

	if (n >= 6 && memcmp(p, "Exif\0\0", 6) == 0) {
		p += 6;
		n -= 6;
	}
	if (n < 8)
		return 1;
	if (memcmp(p, "II*\0", 4) == 0)
		le = true;
	else if (memcmp(p, "MM\0*", 4) == 0)
		le = false;
	else
		return 1;
	uint32_t ifd = rd32(p + 4, le);
	if (ifd > n || n - ifd < 2)
		return 1;
	uint32_t count = rd16(p + ifd, le);
	const uint8_t *e = p + ifd + 2;
	size_t room = (n - ifd - 2) / 12;
	for (uint32_t i = 0; i < count && i < room; i++, e += 12) {
		uint32_t tag = rd16(e, le), type = rd16(e + 2, le), cnt = rd32(e + 4, le);
		if (tag != 0x0112)
			continue;
		uint32_t v; /* a single value sits in the entry's 4-byte value field */
		if (cnt != 1)
			v = 0;
		else if (type == 1) /* BYTE */
			v = e[8];
		else if (type == 3) /* SHORT */
			v = rd16(e + 8, le);
		else if (type == 4) /* LONG */
			v = rd32(e + 8, le);
		else
			v = 0;
		orientation = v >= 1 && v <= 8 ? (int)v : 1; /* a later entry wins, as in PIL's dict */
	}
	return orientation;
}

/* PIL's transpose for orientation 2..8: FLIP_LEFT_RIGHT, ROTATE_180, FLIP_TOP_BOTTOM, TRANSPOSE,
 * ROTATE_270, TRANSVERSE, ROTATE_90. Output pixel (x, y) takes the input pixel (sx, sy). */
static enum gs_status orient(struct gs_image_rgb8 *im, int orientation)
{
	const int32_t w = im->w, h = im->h;
	const bool swap = orientation >= 5;
	const int32_t ow = swap ? h : w, oh = swap ? w : h;
	uint8_t *px;

	if (orientation <= 1 || orientation > 8)
		return GS_OK;
	px = gs_image_px_alloc((size_t)w * h * 3);
	if (!px)
		return gs_errorf(GS_ERR_NOMEM, "image orientation: out of memory for %d x %d pixels", w, h);
	for (int32_t y = 0; y < oh; y++) {
		uint8_t *dst = px + (size_t)y * ow * 3;
		for (int32_t x = 0; x < ow; x++, dst += 3) {
			int32_t sx, sy;
			switch (orientation) {
			case 2: sx = w - 1 - x; sy = y; break;
			case 3: sx = w - 1 - x; sy = h - 1 - y; break;
			case 4: sx = x; sy = h - 1 - y; break;
			case 5: sx = y; sy = x; break;
			case 6: sx = y; sy = h - 1 - x; break;
			case 7: sx = w - 1 - y; sy = h - 1 - x; break;
			default: sx = w - 1 - y; sy = x; break; /* 8 */
			}
			memcpy(dst, im->px + ((size_t)sy * w + sx) * 3, 3);
		}
	}
	free(im->px);
	im->px = px;
	im->w = ow;
	im->h = oh;
	return GS_OK;
}

enum gs_status gs_image_decode(const void *data, size_t n, const char *mime, const struct gs_image_opts *o,
			       struct gs_image_rgb8 *out)
{
	static const struct gs_image_opts defaults;
	const uint8_t *d = data;
	enum img_format fmt;
	enum gs_status st;
	int orientation = 1;

	memset(out, 0, sizeof(*out));
	if (!o)
		o = &defaults;
	size_t max_bytes = o->max_bytes ? o->max_bytes : GS_IMAGE_MAX_BYTES;
	int64_t max_pixels = o->max_pixels > 0 ? o->max_pixels : GS_IMAGE_MAX_PIXELS;
	if (n == 0 || !d)
		return gs_errorf(GS_ERR_INVALID_ARG, "empty image (0 bytes)");
	if (n > max_bytes)
		return gs_errorf(GS_ERR_INVALID_ARG, "image is %zu bytes, above the limit of %zu bytes", n, max_bytes);

	/* The bytes decide between PNG and JPEG, as PIL's Image.open does whatever the declared type;
	 * application/dicom goes to DICOM (a DICOM file may lack the 128-byte preamble). */
	fmt = sniff(d, n);
	if (mime && mime[0]) {
		if (mime_is(mime, "application/dicom"))
			fmt = IMG_DICOM;
		else if (!mime_is(mime, "image/png") && !mime_is(mime, "image/jpeg") && !mime_is(mime, "image/jpg"))
			return gs_errorf(GS_ERR_INVALID_ARG,
					 "unsupported image type \"%.64s\": send image/png, image/jpeg or application/dicom",
					 mime);
	}
	if (fmt == IMG_UNKNOWN)
		return gs_errorf(GS_ERR_INVALID_ARG,
				 "not a PNG, JPEG or DICOM image (the first bytes match none of these formats)");
	if (o->has_window && fmt != IMG_DICOM)
		return gs_errorf(GS_ERR_INVALID_ARG, "a VOI window (window_center, window_width) applies to DICOM "
				 "images only; this image is %s", img_format_names[fmt]);

	switch (fmt) {
	case IMG_PNG:
		st = gs_image_png_decode(d, n, max_pixels, out, &orientation);
		break;
	case IMG_JPEG:
		st = gs_image_jpeg_decode(d, n, max_pixels, out, &orientation);
		break;
	default: { /* IMG_DICOM */
#ifdef GS_HAVE_DICOM
		struct gs_image_opts od = *o;
		od.max_bytes = max_bytes;
		od.max_pixels = max_pixels;
		st = gs_dicom_decode(d, n, &od, out);
#else
		st = gs_errorf(GS_ERR_UNSUPPORTED, "DICOM images are not supported by this build (no DCMTK)");
#endif
		break;
	}
	}
	if (st == GS_OK)
		st = orient(out, orientation);
	if (st != GS_OK)
		gs_image_rgb8_free(out);
	return st;
}

enum gs_status gs_image_prepare(const void *data, size_t n, const char *mime, const struct gs_image_opts *o,
				int32_t size, uint8_t *out)
{
	struct gs_image_rgb8 im;

	if (size < 1 || size > GS_IMAGE_MAX_SIZE)
		return gs_errorf(GS_ERR_INVALID_ARG, "image size %d outside 1..%d", size, GS_IMAGE_MAX_SIZE);
	GS_TRY(gs_image_decode(data, n, mime, o, &im));
	enum gs_status st = gs_image_resize(&im, size, out);
	gs_image_rgb8_free(&im);
	return st;
}
