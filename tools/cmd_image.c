/* gemmashard image-prep: one image file -> the size x size x 3 RGB bytes the engines receive
 * (gs_image_prepare: decode, EXIF orientation, PIL's bilinear resize). For tests against PIL and
 * for checking what the server would make of a file. Exit 2 with the reason on bad input. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gs_args.h"
#include "gs_cmds.h"
#include "gs_image.h"
#include "gs_util.h"

static double cpu_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int image_usage_fail(const char *msg)
{
	fprintf(stderr, "gemmashard image-prep: %s\n", msg);
	return 2;
}

int gs_cmd_image_prep(int argc, char **argv)
{
	const char *in = NULL, *mime = NULL, *out_path = NULL, *window = NULL;
	int size = 896, repeat = 0;
	uint64_t max_bytes = GS_IMAGE_MAX_BYTES, max_pixels = GS_IMAGE_MAX_PIXELS;
	struct gs_arg args[] = {
		{ "in", GS_ARG_STR, &in, "image file: PNG, JPEG or DICOM" },
		{ "mime", GS_ARG_STR, &mime, "image/png, image/jpeg or application/dicom (default: from the bytes)" },
		{ "size", GS_ARG_INT, &size, "output side in pixels (default 896, the model's image_size)" },
		{ "out", GS_ARG_STR, &out_path, "write size*size*3 RGB bytes here (default: stdout)" },
		{ "window", GS_ARG_STR, &window, "C,W: DICOM VOI window centre and width instead of the file's" },
		{ "max-bytes", GS_ARG_U64, &max_bytes, "encoded size limit (default 20 MiB, as the server)" },
		{ "max-pixels", GS_ARG_U64, &max_pixels, "width*height limit (default 50000000, as the server)" },
		{ "repeat", GS_ARG_INT, &repeat, "time N decodes and resizes; print the mean times on stderr" },
	};
	struct gs_image_opts o = { 0 };
	struct gs_image_rgb8 im = { 0 };
	char *buf = NULL;
	size_t len = 0;
	uint8_t *px = NULL;
	int r, rc = 1;
	enum gs_status st;

	r = gs_args_parse("usage: gemmashard image-prep --in FILE [--mime M] [--size N] [--out FILE.rgb] "
			  "[--window C,W]",
			  args, sizeof(args) / sizeof(args[0]), argc, argv);
	if (r)
		return r == 1 ? 0 : 2;
	if (!in)
		return image_usage_fail("--in FILE is required");
	if (size < 1 || size > GS_IMAGE_MAX_SIZE) {
		fprintf(stderr, "gemmashard image-prep: --size %d outside 1..%d\n", size, GS_IMAGE_MAX_SIZE);
		return 2;
	}
	if (max_bytes == 0 || max_pixels == 0 || max_pixels > INT64_MAX)
		return image_usage_fail("--max-bytes and --max-pixels must be positive");
	o.max_bytes = max_bytes;
	o.max_pixels = (int64_t)max_pixels;
	if (window) {
		char *end;
		o.window_center = strtod(window, &end);
		if (end == window || *end != ',')
			return image_usage_fail("--window must be CENTER,WIDTH (e.g. -600,1500)");
		const char *ws = end + 1;
		o.window_width = strtod(ws, &end);
		if (end == ws || *end || !(o.window_width > 0))
			return image_usage_fail("--window must be CENTER,WIDTH with WIDTH > 0");
		o.has_window = true;
	}

	char what[600];
	snprintf(what, sizeof(what), "--in %s", in);
	st = gs_read_file_checked(what, in, false, max_bytes, &buf, &len);
	if (st != GS_OK) {
		fprintf(stderr, "gemmashard image-prep: %s\n", gs_last_error());
		return st == GS_ERR_IO || st == GS_ERR_NOMEM ? 1 : 2;
	}
	px = malloc((size_t)size * size * 3);
	if (!px) {
		gs_errorf(GS_ERR_NOMEM, "out of memory for a %d x %d image", size, size);
		goto out_fail;
	}
	st = gs_image_prepare(buf, len, mime, &o, size, px);
	if (st != GS_OK) {
		fprintf(stderr, "gemmashard image-prep: %s: %s\n", in, gs_last_error());
		rc = st == GS_ERR_NOMEM || st == GS_ERR_INTERNAL ? 1 : 2;
		goto out_free;
	}
	if (repeat > 0) { /* wall and CPU time (the CPU time holds on a busy machine) */
		double t0 = gs_now_s(), c0 = cpu_s(), t_dec, t_rs, c_dec, c_rs;
		for (int i = 0; i < repeat; i++) {
			gs_image_rgb8_free(&im);
			if (gs_image_decode(buf, len, mime, &o, &im) != GS_OK)
				goto out_fail;
		}
		t_dec = (gs_now_s() - t0) / repeat;
		c_dec = (cpu_s() - c0) / repeat;
		t0 = gs_now_s();
		c0 = cpu_s();
		for (int i = 0; i < repeat; i++)
			if (gs_image_resize(&im, size, px) != GS_OK)
				goto out_fail;
		t_rs = (gs_now_s() - t0) / repeat;
		c_rs = (cpu_s() - c0) / repeat;
		fprintf(stderr, "image-prep: %d x %d (%zu bytes) -> %d x %d, mean of %d: decode %.2f ms (CPU %.2f), "
			"resize %.2f ms (CPU %.2f), total %.2f ms (CPU %.2f) per image\n", im.w, im.h, len, size,
			size, repeat, t_dec * 1e3, c_dec * 1e3, t_rs * 1e3, c_rs * 1e3, (t_dec + t_rs) * 1e3,
			(c_dec + c_rs) * 1e3);
	}
	FILE *f = out_path ? fopen(out_path, "wb") : stdout;
	if (!f) {
		gs_errorf(GS_ERR_IO, "--out %s: cannot open for writing", out_path);
		goto out_fail;
	}
	size_t n_out = (size_t)size * size * 3;
	bool ok = fwrite(px, 1, n_out, f) == n_out;
	ok = (out_path ? fclose(f) : fflush(f)) == 0 && ok;
	if (!ok) {
		gs_errorf(GS_ERR_IO, "--out %s: write failed", out_path ? out_path : "(stdout)");
		goto out_fail;
	}
	rc = 0;
	goto out_free;

out_fail:
	rc = gs_cmd_fail("image-prep");
out_free:
	gs_image_rgb8_free(&im);
	free(px);
	free(buf);
	return rc;
}
