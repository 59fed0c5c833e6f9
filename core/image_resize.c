/* gs_image_resize: PIL's Image.resize((S, S), Image.BILINEAR) on 8-bit RGB, bit for bit.
 *
 * PIL (libImaging/Resample.c) resamples separably: for every output column (then row) it
 * precomputes the taps of a triangle filter whose support grows with the downscale factor (so a
 * downscale averages every input pixel it covers: antialiasing), normalises them to sum 1 in
 * double, turns them into 22-bit fixed point, and runs a horizontal pass into an 8-bit image of
 * the rows the vertical pass needs, then the vertical pass. Each output sample is
 * clip8((2^21 + sum k_i * x_i) >> 22). We repeat each step, down to the float box PIL passes in. */
#include "gs_image.h"
#include "image_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define RS_PRECISION_BITS (32 - 8 - 2)

struct rs_taps {
	int      ksize;   /* taps per output sample */
	int     *bounds;  /* [out][2]: first input index, number of taps */
	int32_t *k;       /* [out][ksize]: fixed-point weights */
};

static double rs_triangle(double x)
{
	if (x < 0.0)
		x = -x;
	return x < 1.0 ? 1.0 - x : 0.0;
}

static void rs_taps_free(struct rs_taps *t)
{
	free(t->bounds);
	free(t->k);
}

/* PIL's precompute_coeffs + normalize_coeffs_8bpc for the box [0, in_size) -> out_size. */
static enum gs_status rs_taps_init(int in_size, int out_size, struct rs_taps *t)
{
	const float in0 = 0.0f, in1 = (float)in_size; /* PIL takes the box as C floats */
	double scale = (double)(in1 - in0) / out_size;
	double filterscale = scale < 1.0 ? 1.0 : scale;
	double support = 1.0 * filterscale; /* BILINEAR: support 1 */
	double *w;

	t->ksize = (int)ceil(support) * 2 + 1;
	t->bounds = malloc((size_t)out_size * 2 * sizeof(int));
	t->k = malloc((size_t)out_size * t->ksize * sizeof(int32_t));
	w = malloc((size_t)t->ksize * sizeof(double));
	if (!t->bounds || !t->k || !w) {
		free(w);
		rs_taps_free(t);
		return gs_errorf(GS_ERR_NOMEM, "image resize: out of memory for the filter taps");
	}
	for (int xx = 0; xx < out_size; xx++) {
		double center = in0 + (xx + 0.5) * scale, ww = 0.0, ss = 1.0 / filterscale;
		int xmin = (int)(center - support + 0.5), xmax = (int)(center + support + 0.5);
		int32_t *k = t->k + (size_t)xx * t->ksize;

		if (xmin < 0)
			xmin = 0;
		if (xmax > in_size)
			xmax = in_size;
		xmax -= xmin;
		for (int x = 0; x < xmax; x++) {
			w[x] = rs_triangle((x + xmin - center + 0.5) * ss);
			ww += w[x];
		}
		for (int x = 0; x < t->ksize; x++) {
			double v = x < xmax ? (ww != 0.0 ? w[x] / ww : w[x]) : 0.0;
			k[x] = v < 0 ? (int32_t)(-0.5 + v * (1 << RS_PRECISION_BITS))
				     : (int32_t)(0.5 + v * (1 << RS_PRECISION_BITS));
		}
		t->bounds[xx * 2] = xmin;
		t->bounds[xx * 2 + 1] = xmax;
	}
	free(w);
	return GS_OK;
}

static inline uint8_t rs_clip8(int32_t v)
{
	v >>= RS_PRECISION_BITS;
	return v < 0 ? 0 : v > 255 ? 255 : (uint8_t)v;
}

/* rows [y0, y0 + n_rows) of in (in_w wide) -> n_rows rows of out_w. */
static void rs_horizontal(const uint8_t *in, int in_w, int y0, int n_rows, const struct rs_taps *t, int out_w,
			  uint8_t *out)
{
	for (int y = 0; y < n_rows; y++) {
		const uint8_t *row = in + (size_t)(y0 + y) * in_w * 3;
		uint8_t *dst = out + (size_t)y * out_w * 3;
		for (int xx = 0; xx < out_w; xx++, dst += 3) {
			const int32_t *k = t->k + (size_t)xx * t->ksize;
			const uint8_t *src = row + (size_t)t->bounds[xx * 2] * 3;
			int n = t->bounds[xx * 2 + 1];
			int32_t s0 = 1 << (RS_PRECISION_BITS - 1), s1 = s0, s2 = s0;
			for (int x = 0; x < n; x++, src += 3) {
				s0 += src[0] * k[x];
				s1 += src[1] * k[x];
				s2 += src[2] * k[x];
			}
			dst[0] = rs_clip8(s0);
			dst[1] = rs_clip8(s1);
			dst[2] = rs_clip8(s2);
		}
	}
}

/* in (w wide, its row 0 = input row `first`) -> out_h rows of w. acc: w*3 scratch sums, filled
 * a whole input row at a time (contiguous, so the compiler vectorises it). */
static void rs_vertical(const uint8_t *in, int w, int first, const struct rs_taps *t, int out_h, uint8_t *out,
			int32_t *acc)
{
	const size_t stride = (size_t)w * 3;
	for (int yy = 0; yy < out_h; yy++) {
		const int32_t *k = t->k + (size_t)yy * t->ksize;
		const uint8_t *src = in + (size_t)(t->bounds[yy * 2] - first) * stride;
		int n = t->bounds[yy * 2 + 1];
		uint8_t *dst = out + (size_t)yy * stride;
		for (size_t i = 0; i < stride; i++)
			acc[i] = 1 << (RS_PRECISION_BITS - 1);
		for (int y = 0; y < n; y++, src += stride) {
			const int32_t ky = k[y];
			for (size_t i = 0; i < stride; i++)
				acc[i] += src[i] * ky;
		}
		for (size_t i = 0; i < stride; i++)
			dst[i] = rs_clip8(acc[i]);
	}
}

enum gs_status gs_image_resize(const struct gs_image_rgb8 *in, int32_t size, uint8_t *out)
{
	struct rs_taps th, tv;
	uint8_t *tmp = NULL;
	int32_t *acc = NULL;
	enum gs_status st;

	if (!in || !in->px || in->w <= 0 || in->h <= 0)
		return gs_errorf(GS_ERR_INVALID_ARG, "image resize: empty input image");
	if (size < 1 || size > GS_IMAGE_MAX_SIZE)
		return gs_errorf(GS_ERR_INVALID_ARG, "image size %d outside 1..%d", size, GS_IMAGE_MAX_SIZE);
	const bool need_h = in->w != size, need_v = in->h != size;
	if (!need_h && !need_v) {
		memcpy(out, in->px, (size_t)size * size * 3);
		return GS_OK;
	}
	GS_TRY(rs_taps_init(in->w, size, &th));
	st = rs_taps_init(in->h, size, &tv);
	if (st != GS_OK)
		goto out_free_th;
	acc = malloc((size_t)size * 3 * sizeof(int32_t));
	if (!acc) {
		st = gs_errorf(GS_ERR_NOMEM, "image resize: out of memory");
		goto out_free_tv;
	}
	if (!need_v) {
		rs_horizontal(in->px, in->w, 0, size, &th, size, out);
	} else if (!need_h) {
		rs_vertical(in->px, size, 0, &tv, size, out, acc);
	} else {
		/* only the input rows the vertical taps touch go through the horizontal pass */
		int first = tv.bounds[0];
		int last = tv.bounds[(size - 1) * 2] + tv.bounds[(size - 1) * 2 + 1];
		tmp = gs_image_px_alloc((size_t)(last - first) * size * 3);
		if (!tmp) {
			st = gs_errorf(GS_ERR_NOMEM, "image resize: out of memory for %d x %d pixels", size,
				       last - first);
			goto out_free_tv;
		}
		rs_horizontal(in->px, in->w, first, last - first, &th, size, tmp);
		rs_vertical(tmp, size, first, &tv, size, out, acc);
	}
	st = GS_OK;
	free(tmp);
out_free_tv:
	free(acc);
	rs_taps_free(&tv);
out_free_th:
	rs_taps_free(&th);
	return st;
}
