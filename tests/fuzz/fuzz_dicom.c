/* libFuzzer target: DICOM bytes (gs_dicom_decode through DCMTK, as gs_image_decode calls it for
 * application/dicom), with and without a request window. */
#include <stdint.h>
#include <stdlib.h>

#include "fuzz_util.h"
#include "gs_dicom.h"
#include "gs_status.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct gs_image_opts o = { .max_pixels = 1 << 20 };
	struct gs_image_rgb8 im;

	for (int pass = 0; pass < 2; pass++) {
		o.has_window = pass == 1;
		o.window_center = 40;
		o.window_width = 400;
		gs_clear_error();
		if (gs_dicom_decode(data, size, &o, &im) == GS_OK) {
			gs_fuzz_require(im.w > 0 && im.h > 0 && (int64_t)im.w * im.h <= o.max_pixels && im.px,
					"an accepted DICOM has no pixels or is over the limit");
			/* every output byte is readable (ASan checks the last one) */
			volatile uint8_t last = im.px[(size_t)im.w * im.h * 3 - 1];
			(void)last;
			free(im.px);
		} else {
			gs_fuzz_require(im.px == NULL && gs_last_error()[0] != '\0',
					"DICOM refused without a message or with pixels");
		}
	}
	return 0;
}
