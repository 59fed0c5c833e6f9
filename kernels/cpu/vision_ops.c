/* The vision tower's CPU ops (gs_kernels.h "the vision tower's ops"): LayerNorm with bias, row
 * adds, average pooling, patch unfolding and bidirectional attention over one image. The
 * attention runs on the matmul kernels (Q·Kᵀ, then P·V per block of queries), so its share of
 * the tower's FLOPs goes at matmul speed rather than one dot product at a time. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gs_cpu.h"
#include "gs_status.h"

static void rows_of(size_t n, int tid, int nth, size_t *lo, size_t *hi)
{
	size_t per = (n + (size_t)nth - 1) / (size_t)nth;
	*lo = per * (size_t)tid < n ? per * (size_t)tid : n;
	*hi = *lo + per < n ? *lo + per : n;
}

/* ---- layernorm ------------------------------------------------------------------- */

struct ln_job {
	float *y;
	const float *x, *w, *b;
	int rows, dim;
	float eps;
};

static void ln_task(void *p, int tid, int nth)
{
	const struct ln_job *j = p;
	size_t lo, hi;

	rows_of((size_t)j->rows, tid, nth, &lo, &hi);
	for (size_t r = lo; r < hi; r++) {
		const float *x = j->x + r * (size_t)j->dim;
		float *y = j->y + r * (size_t)j->dim;
		double s = 0.0, ss = 0.0;
		for (int i = 0; i < j->dim; i++)
			s += x[i];
		double mean = s / j->dim;
		for (int i = 0; i < j->dim; i++)
			ss += ((double)x[i] - mean) * ((double)x[i] - mean);
		float rs = (float)(1.0 / sqrt(ss / j->dim + (double)j->eps)), mf = (float)mean;
		for (int i = 0; i < j->dim; i++)
			y[i] = (x[i] - mf) * rs * j->w[i] + j->b[i];
	}
}

void gs_cpu_layernorm(struct gs_threadpool *tp, float *y, const float *x, const float *w, const float *b, int rows,
		      int dim, float eps)
{
	struct ln_job j = { y, x, w, b, rows, dim, eps };

	if ((size_t)rows * (size_t)dim < 16384)
		ln_task(&j, 0, 1);
	else
		gs_threadpool_run(tp, ln_task, &j);
}

/* ---- add_rows -------------------------------------------------------------------- */

struct add_job {
	float *y;
	const float *x, *b;
	int rows, cols;
};

static void add_task(void *p, int tid, int nth)
{
	const struct add_job *j = p;
	size_t lo, hi, C = (size_t)j->cols;

	rows_of((size_t)j->rows, tid, nth, &lo, &hi);
	for (size_t r = lo; r < hi; r++) {
		float *y = j->y + r * C;
		const float *x = j->x ? j->x + r * C : NULL;
		if (x && j->b)
			for (size_t c = 0; c < C; c++)
				y[c] += x[c] + j->b[c];
		else if (x)
			for (size_t c = 0; c < C; c++)
				y[c] += x[c];
		else if (j->b)
			for (size_t c = 0; c < C; c++)
				y[c] += j->b[c];
	}
}

void gs_cpu_add_rows(struct gs_threadpool *tp, float *y, const float *x, const float *b, int rows, int cols)
{
	struct add_job j = { y, x, b, rows, cols };

	if ((size_t)rows * (size_t)cols < 65536)
		add_task(&j, 0, 1);
	else
		gs_threadpool_run(tp, add_task, &j);
}

/* ---- avgpool, patches ------------------------------------------------------------ */

void gs_cpu_avgpool(float *y, const float *x, int side, int k, int dim)
{
	int out = side / k;
	float inv = 1.0f / (float)(k * k);

	for (int R = 0; R < out; R++)
		for (int C = 0; C < out; C++) {
			float *o = y + ((size_t)R * out + C) * (size_t)dim;
			for (int d = 0; d < dim; d++) {
				float s = 0.0f; /* summed in row-major block order, then divided (as AvgPool2d) */
				for (int i = 0; i < k; i++)
					for (int jj = 0; jj < k; jj++)
						s += x[((size_t)(R * k + i) * side + (size_t)(C * k + jj)) * dim + d];
				o[d] = s * inv;
			}
		}
}

void gs_cpu_patches(float *y, const uint8_t *px, int image_size, int patch)
{
	int g = image_size / patch;
	size_t PP = (size_t)patch * patch, W = 3 * PP;

	for (int r = 0; r < g; r++)
		for (int c = 0; c < g; c++) {
			float *o = y + ((size_t)r * g + c) * W;
			for (int ky = 0; ky < patch; ky++)
				for (int kx = 0; kx < patch; kx++) {
					const uint8_t *p = px + (((size_t)r * patch + ky) * image_size + (size_t)c * patch + kx) * 3;
					for (int ch = 0; ch < 3; ch++)
						o[ch * PP + (size_t)ky * patch + kx] = ((float)p[ch] * 0.00392156862745098f - 0.5f) / 0.5f;
				}
		}
}

/* ---- attention_full -------------------------------------------------------------- */

#define GS_ATTN_FULL_BLOCK 256 /* queries per Q·Kᵀ block: 256 × n scores (4 MB at n = 4096) */

struct softmax_job {
	float *s;
	int rows, n;
	float scale;
};

static void softmax_task(void *p, int tid, int nth)
{
	const struct softmax_job *j = p;
	size_t lo, hi;

	rows_of((size_t)j->rows, tid, nth, &lo, &hi);
	for (size_t r = lo; r < hi; r++) {
		float *s = j->s + r * (size_t)j->n, mx = -INFINITY, sum = 0.0f;
		for (int i = 0; i < j->n; i++) {
			s[i] *= j->scale;
			mx = s[i] > mx ? s[i] : mx;
		}
		for (int i = 0; i < j->n; i++) {
			s[i] = expf(s[i] - mx);
			sum += s[i];
		}
		float inv = 1.0f / sum;
		for (int i = 0; i < j->n; i++)
			s[i] *= inv;
	}
}

void gs_cpu_attention_full(struct gs_threadpool *tp, float **scratch, size_t *scratch_cap, float *out, const float *q,
			   const float *k, const float *v, int n, int n_heads, int head_dim, float scale)
{
	size_t N = (size_t)n, D = (size_t)head_dim, stride = (size_t)n_heads * D;
	size_t B = N < GS_ATTN_FULL_BLOCK ? N : GS_ATTN_FULL_BLOCK;
	size_t need = 3 * N * D + B * N + B * D;
	float *qh, *kh, *vt, *s, *o;

	if (need > *scratch_cap) {
		float *p = realloc(*scratch, need * sizeof(float));
		GS_ASSERT(p != NULL && "attention_full: out of memory for its scratch");
		*scratch = p;
		*scratch_cap = need;
	}
	qh = *scratch, kh = qh + N * D, vt = kh + N * D, s = vt + N * D, o = s + B * N;
	for (int h = 0; h < n_heads; h++) {
		/* this head's q, k as [n, D] and v transposed to [D, n] (the matmul's W layout) */
		for (size_t t = 0; t < N; t++) {
			memcpy(qh + t * D, q + t * stride + (size_t)h * D, D * sizeof(float));
			memcpy(kh + t * D, k + t * stride + (size_t)h * D, D * sizeof(float));
			for (size_t d = 0; d < D; d++)
				vt[d * N + t] = v[t * stride + (size_t)h * D + d];
		}
		for (size_t q0 = 0; q0 < N; q0 += B) {
			int m = (int)(N - q0 < B ? N - q0 : B);
			struct softmax_job sj = { s, m, n, scale };
			gs_cpu_matmul_f32(tp, s, qh + q0 * D, kh, m, n, head_dim);
			if ((size_t)m * N < 16384)
				softmax_task(&sj, 0, 1);
			else
				gs_threadpool_run(tp, softmax_task, &sj);
			gs_cpu_matmul_f32(tp, o, s, vt, m, head_dim, n);
			for (int i = 0; i < m; i++)
				memcpy(out + (q0 + (size_t)i) * stride + (size_t)h * D, o + (size_t)i * D, D * sizeof(float));
		}
	}
}
