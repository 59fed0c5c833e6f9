/* Paged KV accounting against the formula of ARCHITECTURE.md §5, computed here by hand:
 * 27B (62 layers, 10 global, 16 KV heads × 128, window 1024): 80 KiB per token over the global
 * layers + a fixed ring of ceil(1023/16)+1 = 65 blocks × 16 positions on 52 sliding layers,
 * divided by T. Plus pool allocation, reservation and release bookkeeping. */
#include <stdlib.h>
#include <string.h>

#include "gs_config.h"
#include "gs_kvpool.h"
#include "gs_model.h"
#include "gs_test.h"

int main(int argc, char **argv)
{
	struct gs_config c;
	const char *j = gs_model_preset_json("27b");
	const size_t KiB = 1024;

	CHECK(gs_config_parse(j, strlen(j), "27b", &c) == GS_OK);
	/* bf16, TP = 1, 128K context */
	{
		size_t per_token = 10 * 2 * 16 * 128 * 2; /* layers × (K,V) × heads × dim × bytes */
		size_t fixed = (size_t)52 * 65 * 16 * (2 * 16 * 128 * 2);
		CHECK(per_token == 80 * KiB);
		CHECK(gs_kv_seq_bytes(&c, 16, 131072, 2) == (size_t)131072 * per_token + fixed);
		/* ~416 MiB of window + block rounding: 422.5 MiB */
		CHECK_NEAR((double)fixed / (1024.0 * 1024.0), 422.5, 0.01);
		/* T = 4: 4 KV heads per rank, exactly a quarter */
		CHECK(gs_kv_seq_bytes(&c, 4, 131072, 2) * 4 == gs_kv_seq_bytes(&c, 16, 131072, 2));
		/* A sequence shorter than the window: no ring beyond its own blocks */
		CHECK(gs_kv_seq_bytes(&c, 16, 100, 2) == (size_t)62 * 7 * 16 * (2 * 16 * 128 * 2));
	}
	/* A pool for one sequence allocates exactly what the formula says (fp32 on CPU). */
	{
		struct gs_kv_pool p;
		struct gs_kv_seq s;
		int32_t g, l;
		gs_kv_pool_size_for(&c, 1, 4096, &g, &l);
		CHECK(gs_kv_pool_init(&p, &c, 2, g, l, NULL) == GS_OK);
		CHECK(p.cache.bytes == gs_kv_seq_bytes(&c, 2, 4096, 4));
		CHECK(p.cache.ring_blocks == 65);
		CHECK(gs_kv_seq_admit(&p, &s, 4096) == GS_OK);
		CHECK(gs_kv_global_free(&p) == 0 && gs_kv_local_free(&p) == 0);
		CHECK(!gs_kv_can_admit(&p, 1));
		CHECK(gs_kv_seq_prepare(&p, &s, 17) == GS_OK && s.g_used == 2);
		s.n_past = 17;
		CHECK(gs_kv_seq_prepare(&p, &s, 4096) == GS_ERR_RANGE);
		gs_kv_seq_release(&p, &s);
		CHECK(gs_kv_global_free(&p) == g && gs_kv_local_free(&p) == l && p.g_reserved == 0);
		gs_kv_pool_free(&p);
	}
	gs_config_free(&c);
	TEST_DONE();
}
