/* gs_fmath.h (our own exp and GELU), the CPU backend's GeGLU and its fused post-norm + residual
 * add against float64 math. */
#include "gs_fmath.h"
#include "gs_kernels.h"
#include "gs_status.h"
#include "gs_test.h"

#include <stdint.h>
#include <stdlib.h>

static double gelu64(double u)
{
	return 0.5 * u * (1.0 + tanh(sqrt(2.0 / M_PI) * (u + 0.044715 * u * u * u)));
}

static void test_expf(void)
{
	double worst = 0;
	int n = 0;
	for (double x = -87.0; x <= 0.0; x += 0.0013, n++) {
		double ref = exp((double)(float)x), got = gs_expf((float)x);
		double rel = fabs(got - ref) / ref;
		if (rel > worst)
			worst = rel;
	}
	CHECK_MSG(worst <= 3.0 * 5.96e-8, "gs_expf worst relative error %.3g over %d points", worst, n);
	CHECK(gs_expf(0.0f) == 1.0f);
	CHECK(gs_expf(-88.0f) == 0.0f && gs_expf(-1e30f) == 0.0f && gs_expf(-INFINITY) == 0.0f);
	printf("gs_expf: worst relative error %.3g (%d points in [-87, 0])\n", worst, n);
}

static void test_gelu(void)
{
	double worst = 0;
	for (double u = -30.0; u <= 30.0; u += 0.00071) {
		float uf = (float)u;
		double ref = gelu64(uf), got = gs_gelu_tanh(uf);
		/* relative to max(|u|, 1e-3): GELU crosses 0 at u = 0 and is ~u·ε for large -u */
		double den = fabs((double)uf) > 1e-3 ? fabs((double)uf) : 1e-3;
		double e = fabs(got - ref) / den;
		if (e > worst)
			worst = e;
	}
	CHECK_MSG(worst <= 5e-7, "gs_gelu_tanh worst error / |u| %.3g", worst);
	CHECK(gs_gelu_tanh(0.0f) == 0.0f);
	CHECK(gs_gelu_tanh(100.0f) == 100.0f);     /* σ(large) = 1 exactly */
	CHECK(gs_gelu_tanh(-100.0f) == -0.0f);     /* e^-large underflows to 0 */
	printf("gs_gelu_tanh: worst error / |u| %.3g on [-30, 30]\n", worst);
}

/* The backend op (threaded above 8192 elements, vectorised clones) against float64. */
static void test_backend_geglu(void)
{
	struct gs_backend be;
	const size_t ns[] = { 1, 17, 8191, 8192, 100003 };
	CHECK(gs_backend_cpu_create(3, &be) == GS_OK);
	for (size_t t = 0; t < sizeof(ns) / sizeof(ns[0]); t++) {
		size_t n = ns[t];
		float *g = malloc(n * sizeof(float)), *u = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float));
		GS_ASSERT(g && u && y);
		for (size_t i = 0; i < n; i++) {
			g[i] = (float)(((double)((i * 2654435761u) % 20001) - 10000.0) / 1000.0); /* [-10, 10] */
			u[i] = (float)(((double)((i * 40503u) % 2001) - 1000.0) / 250.0);
			y[i] = NAN;
		}
		be.iface->geglu(be.ctx, y, g, u, n);
		double worst = 0;
		for (size_t i = 0; i < n; i++) {
			double ref = gelu64(g[i]) * u[i];
			double den = fabs((double)g[i] * u[i]) > 1e-3 ? fabs((double)g[i] * u[i]) : 1e-3;
			double e = fabs((double)y[i] - ref) / den;
			if (!(e <= worst)) /* NaN too */
				worst = e;
		}
		CHECK_MSG(worst <= 6e-7, "geglu n=%zu: worst error %.3g", n, worst);
		free(g), free(u), free(y);
	}
	gs_backend_cpu_free(&be);
}

/* y += x · rsqrt(mean(x²) + eps) · gain, row by row, threaded above 16384 elements. */
static void test_backend_rmsnorm_add(void)
{
	struct gs_backend be;
	const int shapes[][2] = { { 1, 1 }, { 3, 33 }, { 7, 1152 }, { 20, 5376 } };
	CHECK(gs_backend_cpu_create(3, &be) == GS_OK);
	for (size_t c = 0; c < sizeof(shapes) / sizeof(shapes[0]); c++) {
		int rows = shapes[c][0], dim = shapes[c][1];
		size_t n = (size_t)rows * dim;
		float *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float)), *g = malloc(dim * sizeof(float));
		double *ref = malloc(n * sizeof(double)), *scale = malloc(n * sizeof(double));
		GS_ASSERT(x && y && g && ref && scale);
		for (int i = 0; i < dim; i++)
			g[i] = 1.0f + (float)((i * 37) % 100) / 100.0f;
		for (size_t i = 0; i < n; i++) {
			x[i] = (float)(((double)((i * 2654435761u) % 2001) - 1000.0) / 300.0);
			y[i] = (float)(((double)((i * 40503u) % 2001) - 1000.0) / 500.0);
		}
		for (int r = 0; r < rows; r++) {
			double ss = 0;
			for (int i = 0; i < dim; i++)
				ss += (double)x[(size_t)r * dim + i] * x[(size_t)r * dim + i];
			double inv = 1.0 / sqrt(ss / dim + 1e-6);
			for (int i = 0; i < dim; i++) {
				size_t k = (size_t)r * dim + i;
				ref[k] = (double)y[k] + (double)x[k] * inv * g[i];
				/* the sum's own scale: two fp32 terms that may cancel */
				scale[k] = fabs((double)y[k]) + fabs((double)x[k] * inv * g[i]) + 1e-30;
			}
		}
		be.iface->rmsnorm_add(be.ctx, y, x, g, rows, dim, 1e-6f);
		double worst = 0;
		for (size_t i = 0; i < n; i++) {
			double e = fabs((double)y[i] - ref[i]) / scale[i];
			if (!(e <= worst))
				worst = e;
		}
		CHECK_MSG(worst <= 4e-7, "rmsnorm_add %dx%d: worst error / scale %.3g", rows, dim, worst);
		free(x), free(y), free(g), free(ref), free(scale);
	}
	gs_backend_cpu_free(&be);
}

int main(void)
{
	test_expf();
	test_gelu();
	test_backend_geglu();
	test_backend_rmsnorm_add();
	TEST_DONE();
}
