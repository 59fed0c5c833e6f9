/* libFuzzer target: image bytes as a request carries them (gs_image_decode with the type
 * sniffed: PNG through libpng, JPEG through libjpeg-turbo, EXIF orientation), then PIL's bilinear
 * resize of whatever decoded (gs_image_resize) to a size taken from the image, so both up- and
 * downscaling run. Seeds: tests/fuzz/make_image_seeds.py. */
#include <stdint.h>
#include <stdlib.h>

#include "fuzz_util.h"
#include "gs_image.h"
#include "gs_status.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* a smaller pixel limit than the server's keeps each run fast; the limit path is the same */
	struct gs_image_opts o = { .max_pixels = 1 << 20 };
	struct gs_image_rgb8 im;
	uint8_t out[37 * 37 * 3];

	gs_clear_error();
	if (gs_image_decode(data, size, NULL, &o, &im) != GS_OK) {
		gs_fuzz_require(im.px == NULL && im.w == 0 && im.h == 0 && gs_last_error()[0] != '\0',
				"an image refused without a message or with pixels");
		return 0;
	}
	gs_fuzz_require(im.w > 0 && im.h > 0 && (int64_t)im.w * im.h <= o.max_pixels && im.px,
			"an accepted image has no pixels or is over the limit");
	int32_t s = 1 + (im.w * 7 + im.h) % 37;
	gs_fuzz_require(gs_image_resize(&im, s, out) == GS_OK, "resize of a decoded image failed");
	/* every decoded byte is readable (ASan checks the last one) */
	volatile uint8_t last = im.px[(size_t)im.w * im.h * 3 - 1];
	(void)last;
	gs_image_rgb8_free(&im);
	return 0;
}
