/* libFuzzer target: a batch input file (JSONL requests) read with gs_batch_read, which parses
 * every line (gs_batch_parse_line) and checks the ids are unique. Every request is either
 * valid or carries its error; nothing fails the read but I/O and memory. */
#include <stdint.h>
#include <string.h>

#include "fuzz_util.h"
#include "gs_batchio.h"
#include "gs_status.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct gs_batch_req *reqs = NULL;
	size_t n = 0;
	const char *path = gs_fuzz_write("input.jsonl", data, size);

	gs_clear_error();
	gs_fuzz_require(gs_batch_read(path, &reqs, &n) == GS_OK, "gs_batch_read failed on a readable file");
	for (size_t i = 0; i < n; i++) {
		const struct gs_batch_req *r = &reqs[i];
		gs_fuzz_require(r->id && r->id[0], "a request without an id");
		if (r->error) {
			gs_fuzz_require(r->error[0] != '\0', "a request refused without a message");
			continue;
		}
		gs_fuzz_require(r->text && r->max_tokens >= 1 && r->n_stop >= 0 && r->n_stop <= GS_BATCH_MAX_STOP &&
					r->top_logprobs >= 0 && r->top_logprobs <= GS_BATCH_MAX_TOP_LOGPROBS,
				"an accepted request is out of its bounds");
		for (int k = 0; k < r->n_stop; k++)
			gs_fuzz_require(r->stop[k] && r->stop[k][0], "an accepted request has an empty stop string");
	}
	gs_batch_free(reqs, n);
	return 0;
}
