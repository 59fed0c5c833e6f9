/* StepPlan wire form (protobuf-c): round trip of a 64-sequence plan (admissions with images
 * too), and malformed or oversized plans rejected with GS_ERR_FORMAT before anything is written. */
#include <stdlib.h>
#include <string.h>

#include "gs_plan.h"
#include "gs_test.h"

int main(int argc, char **argv)
{
	struct gs_plan a, b, small;
	static int32_t blocks[200 * 64];
	static uint8_t pixels[3 * 5000]; /* admissions with images: 3 of 5000 bytes, then 1 */
	uint8_t *buf = NULL;
	size_t cap = 0;
	uint64_t len = 0;

	CHECK(gs_plan_init(&a, 64, 512) == GS_OK && gs_plan_init(&b, 64, 512) == GS_OK);
	CHECK(gs_plan_init(&small, 4, 8) == GS_OK);
	a.n_release = 2, a.release[0] = 5, a.release[1] = 63;
	for (int i = 0; i < 64; i++) {
		struct gs_plan_seq *s = &a.seqs[a.n_seqs++];
		memset(s, 0, sizeof(*s));
		s->slot = i, s->tok0 = a.n_ids, s->n_tokens = i == 3 ? 100 : 1, s->want_logits = i % 7 != 0;
		for (int t = 0; t < s->n_tokens; t++)
			a.ids[a.n_ids++] = 1000 * i + t;
		if (i % 9 == 0) {
			s->admit = true, s->id = 0xfeedface00ull + (uint64_t)i, s->max_positions = 300 + i;
			s->params = (struct gs_req_params){ .max_tokens = 42, .n_stop_ids = 2, .stop_ids = { 106, 1 },
							    .ignore_eos = true, .top_logprobs = 5 };
			s->params.sp = (struct gs_sampling_params){ .temperature = 0.7f, .top_k = 40, .top_p = 0.9f,
								    .min_p = 0.05f, .repetition_penalty = 1.1f,
								    .seed = 0x123456789abcdefull };
			/* prefix-cache blocks: up to 12600 in one entry (the unpack arena must grow) */
			for (int k = 0; k < 200 * i; k++)
				blocks[k] = 7 * k + i;
			CHECK(gs_plan_add_cached(&a, s, blocks, 200 * i) == GS_OK);
			if (i == 9 || i == 27) {
				for (size_t k = 0; k < sizeof(pixels); k++)
					pixels[k] = (uint8_t)(k * 31 + 7);
				s->images = i == 9 ? pixels : pixels + 5000, s->n_images = i == 9 ? 3 : 1;
				s->image_bytes = 5000;
			}
		}
	}
	CHECK(gs_plan_pack(&a, &buf, &cap, &len) == GS_OK);
	fprintf(stderr, "StepPlan: 64 sequences (63 decode tokens + a 100-token chunk, 50400 cached blocks): %llu bytes\n",
		(unsigned long long)len);
	CHECK(gs_plan_unpack(&b, buf, len) == GS_OK);
	CHECK(b.n_release == 2 && b.release[0] == 5 && b.release[1] == 63 && !b.stop);
	CHECK(b.n_seqs == 64 && b.n_ids == a.n_ids && memcmp(a.ids, b.ids, sizeof(int32_t) * (size_t)a.n_ids) == 0);
	for (int i = 0; i < 64; i++) {
		const struct gs_plan_seq *x = &a.seqs[i], *y = &b.seqs[i];
		CHECK(x->slot == y->slot && x->tok0 == y->tok0 && x->n_tokens == y->n_tokens &&
		      x->want_logits == y->want_logits && x->admit == y->admit);
		if (x->admit)
			CHECK(y->id == x->id && y->max_positions == x->max_positions && y->params.max_tokens == 42 &&
			      y->params.n_stop_ids == 2 && y->params.stop_ids[0] == 106 && y->params.ignore_eos &&
			      y->params.top_logprobs == 5 && y->params.sp.seed == x->params.sp.seed &&
			      y->params.sp.top_k == 40 && y->params.sp.temperature == 0.7f &&
			      y->n_cached == x->n_cached &&
			      !memcmp(b.cached + y->cached0, a.cached + x->cached0, sizeof(int32_t) * (size_t)x->n_cached) &&
			      y->n_images == x->n_images && y->image_bytes == x->image_bytes &&
			      (!x->n_images || !memcmp(y->images, x->images, (size_t)x->n_images * (size_t)x->image_bytes)));
		CHECK(!x->admit || x->n_images || !y->images);
	}
	/* Too big for a smaller engine: refused, nothing written past its arrays (ASan). */
	CHECK(gs_plan_unpack(&small, buf, len) == GS_ERR_FORMAT);
	/* Garbage and truncation. */
	{
		uint8_t junk[64];
		for (size_t i = 0; i < sizeof(junk); i++)
			junk[i] = (uint8_t)(i * 37 + 11);
		CHECK(gs_plan_unpack(&b, junk, sizeof(junk)) == GS_ERR_FORMAT);
		CHECK(gs_plan_unpack(&b, buf, len / 2) == GS_ERR_FORMAT);
	}
	/* Stop plan. */
	gs_plan_reset(&a);
	a.stop = true;
	CHECK(gs_plan_pack(&a, &buf, &cap, &len) == GS_OK && gs_plan_unpack(&b, buf, len) == GS_OK && b.stop &&
	      b.n_seqs == 0);
	free(buf);
	gs_plan_free(&a);
	gs_plan_free(&b);
	gs_plan_free(&small);
	TEST_DONE();
}
