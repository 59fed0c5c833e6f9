/* Minimal test harness: every check counts, any failure makes main() return 1. */
#ifndef GS_TEST_H
#define GS_TEST_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* splitmix64, the tests' own random numbers: a state per file with a fixed seed, so a failure
 * reproduces. */
static inline uint64_t gs_test_splitmix(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

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
