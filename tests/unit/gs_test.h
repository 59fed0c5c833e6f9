/* Minimal test harness: every check counts, any failure makes main() return 1. */
#ifndef GS_TEST_H
#define GS_TEST_H

#include <math.h>
#include <stdio.h>
#include <string.h>

static int gs_test_failures;
static int gs_test_checks;

#define CHECK(cond)                                                                   \
	do {                                                                          \
		gs_test_checks++;                                                     \
		if (!(cond)) {                                                        \
			gs_test_failures++;                                           \
			fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond); \
		}                                                                     \
	} while (0)

#define CHECK_MSG(cond, ...)                                                          \
	do {                                                                          \
		gs_test_checks++;                                                     \
		if (!(cond)) {                                                        \
			gs_test_failures++;                                           \
			fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
			fprintf(stderr, __VA_ARGS__);                                 \
			fputc('\n', stderr);                                          \
		}                                                                     \
	} while (0)

#define CHECK_STREQ(a, b) CHECK_MSG(strcmp((a), (b)) == 0, "\"%s\" != \"%s\"", (a), (b))
#define CHECK_NEAR(a, b, tol) \
	CHECK_MSG(fabs((double)(a) - (double)(b)) <= (tol), "%.9g vs %.9g (tol %g)", (double)(a), (double)(b), (double)(tol))

#define TEST_DONE()                                                                   \
	do {                                                                          \
		if (gs_test_checks == 0) {                                            \
			fprintf(stderr, "no checks ran\n");                           \
			return 1;                                                     \
		}                                                                     \
		fprintf(stderr, "%d checks, %d failures\n", gs_test_checks, gs_test_failures); \
		return gs_test_failures ? 1 : 0;                                      \
	} while (0)

#endif
