/* libFuzzer target: a tokenizer.json (gs_tokenizer_load reads it from a file), then what a
 * loaded tokenizer does with text: encode the input's own bytes, decode the ids again, and
 * the incremental detokenizer, which must give decode's text exactly (short runs). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "gs_status.h"
#include "gs_tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct gs_tokenizer *t;
	const char *path = gs_fuzz_write("tokenizer.json", data, size);

	gs_clear_error();
	if (gs_tokenizer_load(path, &t) != GS_OK) {
		gs_fuzz_require(gs_last_error()[0] != '\0', "tokenizer.json refused without a message");
		return 0;
	}
	int32_t *ids = NULL;
	size_t n = 0;
	size_t len = size < 256 ? size : 256;
	if (gs_tokenizer_encode(t, (const char *)data, len, true, &ids, &n) == GS_OK) {
		char *text = NULL;
		size_t text_len = 0;
		for (size_t i = 0; i < n; i++)
			gs_fuzz_require(ids[i] >= 0 && ids[i] < gs_tokenizer_n_vocab(t), "encode gave an id outside the vocab");
		if (gs_tokenizer_decode(t, ids, n, &text, &text_len) == GS_OK) {
			struct gs_detok d;
			size_t cap = gs_detok_max_out(t), got = 0;
			char *inc = malloc(cap * (n + 1) + 1);
			gs_fuzz_require(inc != NULL, "out of memory");
			gs_detok_init(&d, t);
			for (size_t i = 0; i < n; i++) {
				size_t k = gs_detok_push(&d, ids[i], inc + got, cap);
				gs_fuzz_require(k <= cap, "gs_detok_push needs more than gs_detok_max_out");
				got += k;
			}
			size_t k = gs_detok_flush(&d, inc + got, cap);
			gs_fuzz_require(k <= cap, "gs_detok_flush needs more than gs_detok_max_out");
			got += k;
			if (n <= GS_DETOK_PENDING) /* no byte run can pass the bound: exactly decode's text */
				gs_fuzz_require(got == text_len && memcmp(inc, text, got) == 0,
						"the incremental detokenizer differs from gs_tokenizer_decode");
			free(inc);
			free(text);
		}
		free(ids);
	}
	gs_clear_error();
	gs_tokenizer_free(t);
	return 0;
}
