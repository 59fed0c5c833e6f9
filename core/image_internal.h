/* Inside the image decoders (core/image*.c); not part of the public API (gs_image.h). */
#ifndef GS_IMAGE_INTERNAL_H
#define GS_IMAGE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "gs_image.h"

/* Each decoder checks width * height against max_pixels from the header before it allocates
 * anything for the pixels, and writes the image as stored (before EXIF orientation) in *out and
 * the EXIF orientation (1..8; 1 when absent or unreadable) in *orientation. Errors as
 * gs_image_decode; *out is left zeroed. */
enum gs_status gs_image_png_decode(const uint8_t *d, size_t n, int64_t max_pixels, struct gs_image_rgb8 *out,
				   int *orientation);
enum gs_status gs_image_jpeg_decode(const uint8_t *d, size_t n, int64_t max_pixels, struct gs_image_rgb8 *out,
				    int *orientation);

/* The Orientation tag (0x0112) of IFD0 of an EXIF block (a TIFF header, optionally preceded by
 * "Exif\0\0"), as PIL's Image.getexif() reads it: 1..8, or 1 when the block has none, it is
 * malformed or its value is not a single number in 1..8. */
int gs_image_exif_orientation(const uint8_t *p, size_t n);

/* A pixel buffer that free() releases. Large ones are 2 MiB aligned and asked to be backed by
 * transparent huge pages: a fresh 36 MB image otherwise takes ~9000 page faults, which cost
 * more than the decode on some virtual machines (measured: 250 ms against 17 ms). NULL on OOM. */
void *gs_image_px_alloc(size_t n);

/* The width * height refusal shared by the decoders ("PNG image is 30000 x 30000 = ..."). */
enum gs_status gs_image_check_dims(const char *fmt, int64_t w, int64_t h, int64_t max_pixels);

#endif
