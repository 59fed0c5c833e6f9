/* Helpers shared by the libFuzzer targets of tests/fuzz (each fuzz_*.c is one target with
 * LLVMFuzzerTestOneInput; tests/fuzz/run.sh builds and runs them). */
#ifndef GS_FUZZ_UTIL_H
#define GS_FUZZ_UTIL_H

#include <stddef.h>
#include <stdint.h>

struct gs_coord;

/* A scratch directory of this process (created once, under $TMPDIR or /tmp). */
const char *gs_fuzz_scratch(void);
/* Writes data to scratch/name (mode 0600, replaced each time); returns the path (static). */
const char *gs_fuzz_write(const char *name, const uint8_t *data, size_t n);
/* A coordinator serving "tiny" with the real tokenizer.json (GS_FUZZ_TOKENIZER, else the path
 * compiled in), no engine, the limits of a default gemmashard-coordinator; created once.
 * Aborts when it cannot start (a broken fixture is no finding). */
struct gs_coord *gs_fuzz_coord(void);
/* Aborts with msg when a refusal came without a message (the project's rule: every refusal
 * says why), so libFuzzer records the input. */
void gs_fuzz_require(int cond, const char *msg);

#endif
