/* libFuzzer target: a step plan as an engine's follower ranks receive it (gs_plan_unpack into
 * a plan of 8 sequences and 64 tokens); an accepted plan fits the capacity and its sequences
 * tile the token rows. */
#include <stdint.h>

#include "fuzz_util.h"
#include "gs_plan.h"
#include "gs_status.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct gs_plan q;
	static int ready;

	if (!ready) {
		gs_fuzz_require(gs_plan_init(&q, 8, 64) == GS_OK, "gs_plan_init failed");
		ready = 1;
	}
	gs_clear_error();
	if (gs_plan_unpack(&q, data, size) != GS_OK) {
		gs_fuzz_require(gs_last_error()[0] != '\0', "a step plan refused without a message");
		return 0;
	}
	gs_fuzz_require(q.n_seqs >= 0 && q.n_seqs <= q.max_seqs && q.n_ids >= 0 && q.n_ids <= q.max_tokens &&
				q.n_release >= 0 && q.n_release <= q.max_seqs,
			"an accepted plan exceeds the capacity");
	int32_t row = 0;
	for (int32_t i = 0; i < q.n_seqs; i++) {
		const struct gs_plan_seq *s = &q.seqs[i];
		gs_fuzz_require(s->tok0 == row && s->n_tokens >= 1 && s->slot >= 0 && s->slot < q.max_seqs,
				"an accepted plan has a sequence outside its rows or slots");
		gs_fuzz_require(!s->admit || (s->params.n_stop_ids >= 0 && s->params.n_stop_ids <= GS_MAX_STOP_IDS),
				"an accepted plan admits with too many stop ids");
		row += s->n_tokens;
	}
	gs_fuzz_require(row == q.n_ids, "an accepted plan's sequences do not cover its token rows");
	return 0;
}
