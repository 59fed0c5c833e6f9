/* The GPU bundle has no libpng, libjpeg or DCMTK: encoded images are refused by name. Raw
 * preprocessed images (.rgb files of image_size^2 x 3 bytes, what `gemmashard logits --image`
 * and the gpu_images_* tests use) need none of it. */
#include "gs_image.h"

#include <stdlib.h>

static enum gs_status refuse(void)
{
	return gs_errorf(GS_ERR_UNSUPPORTED,
			 "image decoding (PNG, JPEG, DICOM) is not built into the GPU bundle; give raw .rgb images");
}

enum gs_status gs_image_decode(const void *data, size_t n, const char *mime, const struct gs_image_opts *o,
			       struct gs_image_rgb8 *out)
{
	(void)data, (void)n, (void)mime, (void)o, (void)out;
	return refuse();
}

void gs_image_rgb8_free(struct gs_image_rgb8 *im)
{
	if (im) {
		free(im->px);
		im->px = NULL;
	}
}

enum gs_status gs_image_resize(const struct gs_image_rgb8 *in, int32_t size, uint8_t *out)
{
	(void)in, (void)size, (void)out;
	return refuse();
}

enum gs_status gs_image_prepare(const void *data, size_t n, const char *mime, const struct gs_image_opts *o,
				int32_t size, uint8_t *out)
{
	(void)data, (void)n, (void)mime, (void)o, (void)size, (void)out;
	return refuse();
}
