/* The serving engine: continuous batching over the paged KV cache (ARCHITECTURE.md §1, §5).
 *
 * The leader (rank 0 of the TP group) schedules: each step it builds a plan (which
 * sequences, which tokens, admissions and releases), broadcasts it, and every rank runs the
 * same batched forward; sampling is distributed (each rank reduces its vocabulary slice to
 * candidates, the leader draws with the request's own seeded sampler). Followers only
 * execute plans (gs_engine_follow).
 *
 * Scheduling policy: admission reserves a request's worst case (prompt + max_tokens) in KV
 * blocks, so a running sequence never runs out and nothing is ever preempted; a request that
 * does not fit waits in FIFO order (no overtaking: big requests are not starved), and one that
 * could never fit is refused at submit. Each step first gives every running decode its one
 * token, then fills the remaining token budget with prefill chunks (chunked prefill), so a
 * long prompt never stalls the running decodes. A chunk never ends inside an image's tokens
 * (they attend to each other both ways); on a vision model the budget is at least one image
 * plus max_seqs - 1 decodes. */
#ifndef GS_ENGINE_H
#define GS_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include "gs_comm.h"
#include "gs_forward.h"
#include "gs_kvpool.h"
#include "gs_sampler.h"

struct gs_tokenizer;

#define GS_MAX_STOP_IDS 16 /* stop_token_ids (coordinator: 8) plus <end_of_turn> */
#define GS_MAX_TOP_LOGPROBS 20
#define GS_MAX_N 8         /* choices of one request (OpenAI's n) */

struct gs_req_params {
	struct gs_sampling_params sp;
	int32_t max_tokens;                    /* >= 1 */
	int32_t stop_ids[GS_MAX_STOP_IDS];     /* besides the model's eos ids */
	int32_t n_stop_ids;
	bool    ignore_eos;
	int32_t top_logprobs;                  /* 0..GS_MAX_TOP_LOGPROBS alternatives per token */
	bool    logprobs;                      /* report each token's logprob (implied by
						  top_logprobs > 0); otherwise the event's logprob
						  is 0 and no log-sum-exp over the vocabulary is paid */
	const char *response_format;           /* structured output (gs_grammar.h): the
						  response_format object's JSON text, NULL: none.
						  Borrowed for the call that takes it; the engine
						  keeps its own copy */
	int32_t n;                             /* choices, 0 or 1: one. n > 1 (gs_engine_submit
						  only): sequences id .. id + n - 1, seeds seed + i,
						  admitted as a group (all n reserved at once) with the
						  prompt prefilled once: choices 1.. wait for choice 0's
						  prefill and take its full blocks from the prefix cache */
};

enum gs_finish {
	GS_FINISH_NONE,       /* still running */
	GS_FINISH_STOP,       /* eos / stop id */
	GS_FINISH_LENGTH,     /* max_tokens */
	GS_FINISH_CANCELLED,
	GS_FINISH_COUNT
};

struct gs_token_event {
	uint64_t       id;
	int32_t        token;           /* -1 for a cancellation event */
	float          logprob;         /* of token under the processed distribution */
	int32_t        n_top;
	int32_t        top_ids[GS_MAX_TOP_LOGPROBS];
	float          top_logprobs[GS_MAX_TOP_LOGPROBS];
	enum gs_finish finish;
	int32_t        n_prompt, n_generated;
};

struct gs_engine_config {
	int32_t max_batch_tokens;   /* token budget per step (decodes + prefill chunks) */
	int32_t max_seqs;           /* sequences running at once */
	int32_t max_context;        /* cap on one sequence's KV positions (prompt + max_tokens - 1);
				       the engine serves min(this, max_position, what its pool holds) */
	size_t  kv_bytes;           /* KV memory per rank (--kv-mem); 0: the default below */
	int32_t kv_global_blocks;   /* pool sizes, overriding kv_bytes (0: from kv_bytes, or by default
				       enough for max_seqs × min(max_context, GS_KV_DEFAULT_CONTEXT)) */
	int32_t kv_local_blocks;
	int32_t candidates;         /* K per rank for distributed sampling (>= top_k for exactness) */
	/* Backends whose memory is not the host's make each rank's K candidates where the logits
	 * are (the candidates op) when they can, so only K entries per row cross to the host;
	 * true: download the logits rows and take the candidates on the host instead (tests). */
	bool    host_candidates;
	/* Automatic prefix caching (ARCHITECTURE.md §5) is on unless this is set. */
	bool    no_prefix_cache;
	/* Context parallelism (ARCHITECTURE.md §4): the engine's comm is then every rank of the
	 * T × C grid (plans, candidates), tp_comm this rank's TP group (the forward pass's
	 * all-reduces), cp_comm the ranks of the same TP rank in every group. NULL: none. The
	 * prefix cache is then off. */
	const struct gs_comm *tp_comm, *cp_comm;
};

/* Without a KV budget the pool holds max_seqs sequences of up to this many positions: the
 * memory the engine took by default when --ctx defaulted to 4096 (README, --kv-mem). */
#define GS_KV_DEFAULT_CONTEXT 4096

struct gs_engine_stats {
	uint64_t steps, tokens_prefill, tokens_decode, finished;
	uint64_t tokens_generated;  /* sampled tokens (every request, cancelled ones included) */
	int32_t  last_batch_seqs, last_batch_tokens, last_decode_tokens;
	double   last_step_s, step_s_total, plan_s_total, sample_s_total;
	double   grammar_mask_s_total;   /* structured output: token masks and automaton steps */
	uint64_t grammar_masks;          /* masks computed (rows x steps, this rank)           */
	bool     device_candidates; /* candidates made by the backend (no logits download) */
	int32_t  running, waiting, max_seqs;
	int32_t  max_context;       /* longest sequence served: the configured cap, limited by the
				       model's max_position and by what the whole KV pool holds */
	int32_t  kv_global_used, kv_global_reserved, kv_global_free, kv_global_total;
	int32_t  kv_local_used, kv_local_total;
	int32_t  kv_global_cached;  /* unreferenced blocks kept for the prefix cache (count as free) */
	size_t   kv_bytes;
	/* context parallelism: T × C, and per group the global blocks held or reserved / free
	 * (leader's accounting; [0, cp) valid); sequences running spread over > 1 group */
	int32_t  tp, cp;
	int32_t  kv_group_used[GS_KV_MAX_CP], kv_group_free[GS_KV_MAX_CP];
	int32_t  sharded_running;
	bool     prefix_cache;
	uint64_t prefix_hit_tokens;   /* prompt tokens of admitted requests taken from the cache */
	uint64_t prefix_query_tokens; /* prompt tokens of requests admitted with the cache on */
	uint64_t prefix_evictions;    /* cached global blocks evicted */
	uint64_t images_encoded;      /* images through the vision tower (this rank) */
	double   vision_s_total;      /* time spent encoding them */
};

struct gs_engine;

/* Every rank of the TP group creates its engine with the same arguments (comm may be NULL
 * for T = 1). The model must be loaded for this rank of comm. */
enum gs_status gs_engine_create(const struct gs_model *m, struct gs_backend be, const struct gs_comm *comm,
				const struct gs_engine_config *cfg, struct gs_engine **out);
void gs_engine_free(struct gs_engine *e);
/* Device backends (T > 1): the forward pass all-reduces its device buffers over c (NCCL), while
 * step plans and sampling candidates stay on the engine's comm (host buffers, MPI). */
void gs_engine_set_device_comm(struct gs_engine *e, const struct gs_comm *c);

/* Leader only. Queue a request (p->n > 1: its n choices, ids id .. id + n - 1, all or none).
 * GS_ERR_RANGE ("can never fit") when prompt + max_tokens exceeds the context or the whole KV
 * pool, or n choices exceed max_seqs or the pool; GS_ERR_INVALID_ARG for bad params or ids. */
enum gs_status gs_engine_submit(struct gs_engine *e, uint64_t id, const int32_t *prompt, int32_t n_prompt,
				const struct gs_req_params *p);
/* Leader only. The same with images (ARCHITECTURE.md "Image tokens"): images holds n_images
 * preprocessed images of image_size^2 x 3 RGB bytes each (seam 1), copied. The prompt must hold
 * exactly n_images runs of boi_id, mm_tokens_per_image x image_token_id, eoi_id, in the images'
 * order, and no other image_token_id (gs_engine_submit: none at all on a vision model); else
 * GS_ERR_INVALID_ARG naming the problem (also for images to a model without a vision tower).
 * Each rank encodes the images at the request's admission; a prefix-cache hit covers an image
 * only when its pixels are the same. */
enum gs_status gs_engine_submit_images(struct gs_engine *e, uint64_t id, const int32_t *prompt, int32_t n_prompt,
				       const struct gs_req_params *p, const uint8_t *images, int32_t n_images);
/* Every rank, before requests with response_format: the tokenizer whose byte strings the
 * grammar mask walks (the vocabulary trie of this rank's slice is built at the first such
 * request, ~0.2 s). Without it such requests are refused. t must outlive the engine. */
void gs_engine_set_tokenizer(struct gs_engine *e, const struct gs_tokenizer *t);
/* Leader only. Cancel a waiting or running request; its blocks return in the next step. */
enum gs_status gs_engine_cancel(struct gs_engine *e, uint64_t id);
/* Leader only. One iteration; events (one per sampled token or cancellation) are written to
 * ev[0..cap) (cap >= max_seqs + pending cancellations is always enough). */
enum gs_status gs_engine_step(struct gs_engine *e, struct gs_token_event *ev, int32_t cap, int32_t *n_ev);
bool gs_engine_idle(const struct gs_engine *e);
/* Leader only, while it has no step to run (idle, or waiting for the coordinator): when no
 * plan went out for GS_ENGINE_TICK_S, a keepalive round trip with every follower (a "tick" in
 * place of a plan, then a barrier), so that a rank's collective watchdog (gs_comm_watch_*)
 * sees its peers alive, and sees a lost one even while idle. A no-op for T = 1 or when a plan
 * went out recently. */
#define GS_ENGINE_TICK_S 1.0
enum gs_status gs_engine_keepalive(struct gs_engine *e);
/* Leader only: tell followers to return from gs_engine_follow. */
enum gs_status gs_engine_shutdown(struct gs_engine *e);
/* Followers: execute plans until the leader shuts down. */
enum gs_status gs_engine_follow(struct gs_engine *e);

void gs_engine_get_stats(const struct gs_engine *e, struct gs_engine_stats *s);
/* Whole-pool sanity: free + used + reserved accounting equals the pool, reference counts equal
 * the running sequences' tables (tests). */
bool gs_engine_kv_consistent(const struct gs_engine *e);
/* Nothing held or reserved: every slot free and the pool whole (after gs_engine_shutdown, which
 * releases the finished sequences on every rank). */
bool gs_engine_kv_whole(const struct gs_engine *e);
/* Tests: narrow the prefix cache's hashes to `mask` bits on this rank's pool, forcing collisions. */
void gs_engine_test_hash_mask(struct gs_engine *e, uint64_t mask);

const char *gs_finish_str(enum gs_finish f);

#endif
