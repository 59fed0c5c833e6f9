/* Test driver for gs_dicom_decode (tests/dicom/test_dicom.py): decode one DICOM file at its own
 * size, no resize, and write the raw RGB bytes.
 *   dicom_decode IN.dcm OUT.rgb [--window C,W] [--max-pixels N] [--max-bytes N] [--repeat N]
 *                [--threads N] [--max-as-mb N]
 * Prints "W H" on success (exit 0); the message on stderr and exit 2 when the input is refused.
 * --repeat N decodes once untimed (DCMTK loads its dictionary), then N times, and prints the
 * mean wall and CPU milliseconds per decode as third and fourth fields.
 * --threads N first decodes in N threads at once and checks they all agree (exit 3 if not).
 * --max-as-mb N caps the address space (RLIMIT_AS), so a decoder that allocates what a header
 * claims fails (ignored under AddressSanitizer, which reserves terabytes of shadow). */
#include <pthread.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gs_dicom.h"

/* AddressSanitizer (gcc: __SANITIZE_ADDRESS__, clang: __has_feature) cannot run under RLIMIT_AS. */
#if defined(__SANITIZE_ADDRESS__)
#define GS_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define GS_ASAN 1
#endif
#endif

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

struct job {
	const void *buf;
	size_t n;
	const struct gs_image_opts *o;
	struct gs_image_rgb8 im;
	enum gs_status st;
};

static void *decode_job(void *arg)
{
	struct job *j = arg;
	for (int r = 0; r < 5; r++) {
		free(j->im.px);
		j->st = gs_dicom_decode(j->buf, j->n, j->o, &j->im);
	}
	return NULL;
}

/* Decode in nt threads at once; 0 when every thread got GS_OK / the same pixels, or the same
 * refusal. */
static int threads_agree(const void *buf, size_t n, const struct gs_image_opts *o, int nt)
{
	struct job jobs[16] = { 0 };
	pthread_t tid[16];
	int bad = 0;
	nt = nt > 16 ? 16 : nt;
	for (int t = 0; t < nt; t++) {
		jobs[t] = (struct job){ .buf = buf, .n = n, .o = o };
		pthread_create(&tid[t], NULL, decode_job, &jobs[t]);
	}
	for (int t = 0; t < nt; t++)
		pthread_join(tid[t], NULL);
	for (int t = 1; t < nt; t++) {
		const struct gs_image_rgb8 *a = &jobs[0].im, *b = &jobs[t].im;
		bad |= jobs[t].st != jobs[0].st || a->w != b->w || a->h != b->h ||
		       (a->px && memcmp(a->px, b->px, (size_t)a->w * a->h * 3));
	}
	for (int t = 0; t < nt; t++)
		free(jobs[t].im.px);
	return bad;
}

int main(int argc, char **argv)
{
	struct gs_image_opts o = { 0 };
	int repeat = 0, threads = 0;
	if (argc < 3) {
		fprintf(stderr, "usage: dicom_decode IN.dcm OUT.rgb [--window C,W] [--max-pixels N] "
				"[--max-bytes N] [--repeat N]\n");
		return 1;
	}
	for (int i = 3; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--window")) {
			o.has_window = true;
			if (sscanf(argv[i + 1], "%lf,%lf", &o.window_center, &o.window_width) != 2)
				return fprintf(stderr, "bad --window\n"), 1;
		} else if (!strcmp(argv[i], "--max-pixels")) {
			o.max_pixels = atoll(argv[i + 1]);
		} else if (!strcmp(argv[i], "--max-bytes")) {
			o.max_bytes = (size_t)atoll(argv[i + 1]);
		} else if (!strcmp(argv[i], "--max-as-mb")) {
#ifndef GS_ASAN
			struct rlimit rl = { .rlim_cur = (rlim_t)atoll(argv[i + 1]) << 20,
					     .rlim_max = (rlim_t)atoll(argv[i + 1]) << 20 };
			if (setrlimit(RLIMIT_AS, &rl))
				return perror("setrlimit"), 1;
#endif
		} else if (!strcmp(argv[i], "--threads")) {
			threads = atoi(argv[i + 1]);
		} else if (!strcmp(argv[i], "--repeat")) {
			repeat = atoi(argv[i + 1]);
		} else {
			return fprintf(stderr, "unknown option %s\n", argv[i]), 1;
		}
	}
	FILE *f = fopen(argv[1], "rb");
	if (!f)
		return perror(argv[1]), 1;
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	void *buf = malloc(n > 0 ? (size_t)n : 1);
	if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n)
		return fprintf(stderr, "read failed\n"), 1;
	fclose(f);

	if (threads > 0 && threads_agree(buf, (size_t)n, &o, threads))
		return fprintf(stderr, "dicom_decode: threads disagree\n"), 3;
	struct gs_image_rgb8 im;
	if (repeat > 0 && gs_dicom_decode(buf, (size_t)n, &o, &im) == GS_OK) /* warm-up: dictionary */
		free(im.px);
	double t0 = now_ms(), c0 = (double)clock() * 1e3 / CLOCKS_PER_SEC;
	for (int r = 1; r < repeat; r++) {
		if (gs_dicom_decode(buf, (size_t)n, &o, &im) == GS_OK)
			free(im.px);
	}
	enum gs_status st = gs_dicom_decode(buf, (size_t)n, &o, &im);
	double ms = (now_ms() - t0) / (repeat > 0 ? repeat : 1);
	double cpu_ms = ((double)clock() * 1e3 / CLOCKS_PER_SEC - c0) / (repeat > 0 ? repeat : 1);
	free(buf);
	if (st != GS_OK) {
		fprintf(stderr, "dicom_decode: %s: %s\n", gs_status_str(st), gs_last_error());
		return 2;
	}
	FILE *o_f = fopen(argv[2], "wb");
	if (!o_f || fwrite(im.px, 3, (size_t)im.w * im.h, o_f) != (size_t)im.w * im.h || fclose(o_f))
		return fprintf(stderr, "write failed\n"), 1;
	free(im.px);
	if (repeat > 0)
		printf("%d %d %.3f %.3f\n", im.w, im.h, ms, cpu_ms);
	else
		printf("%d %d\n", im.w, im.h);
	return 0;
}
