/* Image preprocessing for the vision tower (issue 15, ARCHITECTURE.md §1 "Images"): PNG / JPEG /
 * DICOM bytes -> 8-bit RGB -> PIL's Image.resize((S, S), BILINEAR), the bytes that travel to the
 * engines (S*S*3, row-major, RGB interleaved; the engines rescale and normalise).
 *
 * Untrusted input: every limit is checked before the pixels are decoded (encoded size, the pixel
 * count from the header), corrupt and truncated files are refused, and every refusal is
 * GS_ERR_INVALID_ARG with a message for the user (gs_last_error) that names the problem and
 * never quotes image content. Thread-safe (no global state). */
#ifndef GS_IMAGE_H
#define GS_IMAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gs_status.h"

#define GS_IMAGE_MAX_BYTES  (20u << 20)    /* default encoded size limit: 20 MiB */
#define GS_IMAGE_MAX_PIXELS 50000000       /* default width * height limit (from the header) */
#define GS_IMAGE_MAX_SIZE   8192           /* largest output side gs_image_resize accepts */

struct gs_image_opts {                     /* zero-initialised = defaults */
	size_t  max_bytes;                 /* encoded size limit; 0: GS_IMAGE_MAX_BYTES */
	int64_t max_pixels;                /* width*height limit checked from the header; 0: GS_IMAGE_MAX_PIXELS */
	bool    has_window;                /* DICOM only: use this VOI window instead of the file's */
	double  window_center, window_width;
};

struct gs_image_rgb8 {
	int32_t  w, h;
	uint8_t *px;                       /* malloc'd, [h][w][3] */
};

/* Decode PNG / JPEG / DICOM (mime "image/png", "image/jpeg", "application/dicom"; NULL or "":
 * sniff the magic bytes) to 8-bit RGB, as transformers' load_image does with PIL:
 * ImageOps.exif_transpose (EXIF orientation of JPEG APP1 and PNG eXIf), then convert("RGB")
 * (grey replicated, palette looked up, alpha dropped, not composited; CMYK JPEG as PIL converts
 * it). One difference, on purpose: 16-bit PNG samples are scaled to 8 bits by their significant
 * bits (sBIT when present, else the full 16-bit range: round(v * 255 / (2^bits - 1)) of the
 * sample shifted down to its significant bits), where PIL clamps 16-bit grey to 255.
 * o may be NULL (defaults). On success *out owns px (gs_image_rgb8_free). Errors:
 * GS_ERR_INVALID_ARG (bad, corrupt, truncated, too large or unknown input; a VOI window given for
 * a non-DICOM image), GS_ERR_UNSUPPORTED (DICOM when the build has no DICOM support),
 * GS_ERR_NOMEM; *out is then {0, 0, NULL}. */
enum gs_status gs_image_decode(const void *data, size_t n, const char *mime, const struct gs_image_opts *o,
			       struct gs_image_rgb8 *out);
/* Frees px and zeroes *im; NULL and a zeroed image are fine. */
void gs_image_rgb8_free(struct gs_image_rgb8 *im);

/* PIL Image.resize((size, size), BILINEAR) on RGB8, bit for bit: the triangle filter with its
 * support scaled by the downscale factor, a horizontal then a vertical pass, 22-bit fixed-point
 * coefficients, 8-bit rounding between the passes. out: size*size*3 bytes.
 * GS_ERR_INVALID_ARG for an empty image or a size outside 1..GS_IMAGE_MAX_SIZE; GS_ERR_NOMEM. */
enum gs_status gs_image_resize(const struct gs_image_rgb8 *in, int32_t size, uint8_t *out);

/* Decode + resize: what the coordinator, batch mode and the CLI call. out: size*size*3 bytes. */
enum gs_status gs_image_prepare(const void *data, size_t n, const char *mime, const struct gs_image_opts *o,
				int32_t size, uint8_t *out);

#endif
