/* gs_image_prepare over a list, in one process (the gemmashard binary takes ~1 s to start with
 * its CUDA and gRPC libraries; test_image_pil.py runs ~90 images through this instead, and a
 * few through `gemmashard image-prep` itself).
 *   stdin: one line per image, "SIZE IN OUT" (paths without spaces)
 *   stdout: one line per image, "ok" or "error <status>: <message>" */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gs_image.h"
#include "gs_util.h"

int main(void)
{
	char line[4200], in[2048], out[2048];
	int size;

	while (fgets(line, sizeof(line), stdin)) {
		char *buf = NULL;
		size_t len = 0;
		uint8_t *px = NULL;
		enum gs_status st;

		if (sscanf(line, "%d %2047s %2047s", &size, in, out) != 3) {
			printf("error bad line\n");
			fflush(stdout);
			continue;
		}
		gs_clear_error();
		/* the file limit is above the default image limit, so that gs_image_prepare refuses */
		st = gs_read_file_checked(in, in, false, 64u << 20, &buf, &len);
		if (st == GS_OK) {
			px = malloc((size_t)size * size * 3 + 1);
			st = px ? gs_image_prepare(buf, len, NULL, NULL, size, px) : GS_ERR_NOMEM;
		}
		if (st == GS_OK) {
			FILE *f = fopen(out, "wb");
			if (!f || fwrite(px, 1, (size_t)size * size * 3, f) != (size_t)size * size * 3) {
				st = gs_errorf(GS_ERR_IO, "cannot write %s", out);
			}
			if (f && fclose(f) != 0 && st == GS_OK)
				st = gs_errorf(GS_ERR_IO, "cannot write %s", out);
		}
		if (st == GS_OK)
			printf("ok\n");
		else
			printf("error %s: %s\n", gs_status_str(st), gs_last_error());
		fflush(stdout);
		free(px);
		free(buf);
	}
	return 0;
}
