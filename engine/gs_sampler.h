/* gemmashard worker: token sampler with Hugging Face transformers generate() semantics.
 *
 * Order of logits processors (as vLLM applies them):
 *   min_tokens mask, logit_bias, repetition_penalty, frequency/presence penalty (one
 *   "penalties" stage over the few ids they touch) -> temperature -> top_k -> top_p -> min_p
 *   -> draw from softmax.
 * temperature < 1e-5 means greedy: argmax of the penalised logits, lowest id on ties;
 * top_k/top_p/min_p are then skipped (HF's do_sample=False applies no warpers either).
 *
 * Exact rules (HF / OpenAI / vLLM equivalents in brackets):
 *   min_tokens n: while fewer than n tokens have been generated, the eos and stop ids given
 *     with gs_sampler_set_min_tokens_ids() get -inf                   [vLLM MinTokens].
 *   logit_bias: logit + bias for each listed id                       [OpenAI logit_bias].
 *   frequency_penalty f, presence_penalty p: an id generated c > 0 times (prompt tokens do
 *     not count; gs_sampler_set_prompt() says where the prompt ends) gets
 *     logit - c * f - p                                                [OpenAI's formula].
 *   The exact per-token arithmetic is gs_logit_edit_value() in gs_kernels.h.
 *   repetition_penalty r: every distinct id in the history (prompt + generated) gets
 *     logit > 0 ? logit / r : logit * r, once however often it occurs  [gather/scatter].
 *   top_k k: keep every token whose logit >= the k-th largest logit, so ties at the
 *     boundary are all kept (may keep more than k)                     [TopKLogitsWarper].
 *   top_p p: in descending order (logit desc, id asc on ties) keep the smallest prefix
 *     whose cumulative probability reaches p, i.e. token i stays iff the mass strictly
 *     before it is < p. HF removes tokens whose ascending cumulative probability is
 *     <= 1 - p; that is the same set in exact arithmetic. It differs only at float
 *     rounding and inside a tie at the cutoff, where HF's pick depends on torch.sort and
 *     ours is the lowest ids                                            [TopPLogitsWarper].
 *   min_p m: keep tokens with prob >= m * max_prob                      [MinPLogitsWarper].
 * At least one token always survives each filter.
 *
 * Determinism: the RNG is xoshiro256** seeded by splitmix64(seed) and lives in the sampler
 * (one per sequence). Probabilities use our own exp and fixed-order sums, with FMA
 * contraction off in sampler.c, so a seed gives the same tokens on every machine and at
 * every thread count. Each non-greedy draw consumes exactly one 64-bit RNG output.
 *
 * Distributed sampling (ARCHITECTURE.md §1 step 4): logits arrive sharded by vocabulary. Each
 * rank calls gs_sampler_local_candidates() on its slice (penalty + temperature, then its
 * top max_out by processed logit); the leader concatenates the candidates and calls
 * gs_sampler_sample_candidates(). With K = max_out per rank:
 *   - greedy: always exact (the global argmax is some rank's first candidate);
 *   - top_k k <= K: exact, and bit-identical to gs_sampler_sample() with the same seed,
 *     unless ties at the k-th logit straddle a rank's K boundary;
 *   - top_p / min_p without top_k: the candidates lack the tail mass, so probabilities are
 *     renormalised over the candidates only. The result is exact when the tail cannot
 *     move the cutoff; gs_sampler_sample_candidates_ex() checks exactly that from a
 *     gs_candidate_tail and reports it. Use K >= 256: for LLM-shaped logits the p=0.9
 *     nucleus is then nearly always inside the candidates;
 *   - temperature only (no truncation): approximate, off by at most the tail mass.
 * Failure contract: parameters are checked once (create/validate) and return
 * GS_ERR_INVALID_ARG with a message; the per-token calls cannot fail on request data and
 * never allocate. Size mismatches between caller and sampler are bugs (GS_ASSERT). */
#ifndef GS_SAMPLER_H
#define GS_SAMPLER_H

#include <math.h> /* INFINITY */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gs_fmath.h"
#include "gs_kernels.h" /* struct gs_logit_edit, gs_cand_row */
#include "gs_params.h"
#include "gs_status.h"

/* gs_logsumexp (logprobs) is in gs_fmath.h. */

/* A candidate set: plain arrays over buffers the owner (sampler) preallocated. */
struct gs_candidates {
	int32_t *id;     /* [n] token ids (global vocabulary ids)                      */
	float   *logit;  /* [n] processed logits                                       */
	float   *p;      /* [n] scratch: exp(logit - max) or probabilities             */
	size_t   n;      /* live entries                                               */
	bool     sorted; /* logit descending, ties by id ascending; else id ascending  */
	/* The draw always walks the final set in id order: same set, same seed, same token. */
};

/* One stage of the sampler chain (STYLE.md 2, like llama.cpp's llama_sampler_i). Stages
 * only shrink or rewrite the set; the final draw is the sampler's, not a stage's. */
struct gs_sampler_stage_i {
	const char *name;                                      /* HF parameter name   */
	void (*apply)(void *ctx, struct gs_candidates *c);
	void (*reset)(void *ctx);                              /* optional, may be NULL */
};

struct gs_sampler_stage {
	const struct gs_sampler_stage_i *iface;
	void                            *ctx;
};

struct gs_sampler; /* opaque, one per sequence */

/* Builds the chain for p (only active stages) and preallocates scratch for n_vocab tokens
 * (12 bytes per token: 3 MiB at 262144). Validates p; GS_ERR_INVALID_ARG with a message
 * on bad params or n_vocab <= 0, GS_ERR_NOMEM if the scratch cannot be allocated. */
enum gs_status gs_sampler_create(const struct gs_sampling_params *p, int32_t n_vocab,
				 struct gs_sampler **out);
void gs_sampler_free(struct gs_sampler *s); /* NULL is fine */

/* Rewinds the RNG to the seed (and resets stages with state): replays the same draws. */
void gs_sampler_reset(struct gs_sampler *s);

/* Stage names in chain order into names[0..cap); returns the number of stages. */
size_t gs_sampler_chain(const struct gs_sampler *s, const char **names, size_t cap);

/* Samples one token from full-vocabulary logits[0..n_vocab) (read only; n_vocab <= the
 * size given at create). history: prompt + generated ids (ids outside the vocabulary are
 * ignored). logprob_out (may be NULL): log-probability of the token under the final
 * distribution (after all filters, renormalised); for greedy, under softmax of the
 * penalised logits (what OpenAI-style logprobs report at temperature 0). */
int32_t gs_sampler_sample(struct gs_sampler *s, const float *logits, int32_t n_vocab,
			  const int32_t *history, size_t n_history, float *logprob_out);

/* The final distribution gs_sampler_sample() would draw from (greedy: softmax of the
 * penalised logits), without touching the RNG: the top min(n, cap) entries by probability
 * (ties: lower id first) into ids_out/probs_out. Returns n, the size of the whole set.
 * For logprob alternatives and tests; may sort the whole set (not for the token loop when
 * no filter is active). */
size_t gs_sampler_distribution(struct gs_sampler *s, const float *logits, int32_t n_vocab,
			       const int32_t *history, size_t n_history, size_t cap,
			       int32_t *ids_out, float *probs_out);

/* Rank side of distributed sampling. logits_slice[0..n_slice) holds global ids
 * [vocab_offset, vocab_offset + n_slice). Applies repetition penalty (history ids in the
 * slice) and temperature (skipped when greedy), then writes the top min(max_out, n_slice)
 * candidates by processed logit, sorted (logit desc, id asc), to ids_out/logits_out.
 * Returns how many. Leaves the RNG alone; uses the sampler's scratch (hence not const). */
size_t gs_sampler_local_candidates(struct gs_sampler *s, const float *logits_slice,
				   int32_t vocab_offset, int32_t n_slice,
				   const int32_t *history, size_t n_history, size_t max_out,
				   int32_t *ids_out, float *logits_out);

/* The rank-side stages as numbers, for the candidates op of a device backend (gs_kernels.h,
 * struct gs_cand_row), which applies them with the same rules and bits: the repetition
 * penalty (1: none), frequency and presence penalties (0: none) and the temperature divisor
 * (1: none, also when greedy). */
void gs_sampler_rank_params(const struct gs_sampler *s, float *penalty, float *frequency, float *presence,
			    float *temperature);
/* The ids of [vocab0, vocab0 + n_slice) whose logit the penalties stage changes for this
 * history, distinct and sorted, in the sampler's own buffer (*out, valid until the next call).
 * Returns how many (0 when no such stage is active). */
size_t gs_sampler_rank_edits(struct gs_sampler *s, int32_t vocab0, int32_t n_slice, const int32_t *history,
			     size_t n_history, const struct gs_logit_edit **out);

/* history[0, n_prompt) is the prompt: frequency/presence count only the ids after it, and
 * min_tokens counts n_history - n_prompt generated tokens. Default 0 (all generated). */
void gs_sampler_set_prompt(struct gs_sampler *s, size_t n_prompt);
/* The ids min_tokens keeps away (the model's eos ids unless ignore_eos, and the stop ids);
 * duplicates are dropped. GS_ERR_INVALID_ARG above 32 distinct ids. */
enum gs_status gs_sampler_set_min_tokens_ids(struct gs_sampler *s, const int32_t *ids, size_t n);
/* Room for the edits of a history of up to n_history ids, so the token loop does not
 * allocate (without it the first calls grow the buffer); nothing without a penalties stage.
 * GS_ERR_NOMEM. */
enum gs_status gs_sampler_reserve(struct gs_sampler *s, size_t n_history);

/* What the ranks left out, for the exactness check: start from GS_CANDIDATE_TAIL_NONE and
 * add each rank's result with gs_candidate_tail_add(). */
struct gs_candidate_tail {
	float   max_logit; /* upper bound on every left-out processed logit (-inf: none) */
	int64_t n;         /* number of left-out tokens                                  */
};
#define GS_CANDIDATE_TAIL_NONE ((struct gs_candidate_tail){ .max_logit = -INFINITY, .n = 0 })
/* logits_out/n_out as returned by gs_sampler_local_candidates() for an n_slice slice. */
void gs_candidate_tail_add(struct gs_candidate_tail *t, const float *logits_out, size_t n_out,
			   int32_t n_slice);

/* Leader side: merge + draw. ids[0..n) (distinct) and logits[0..n) are the processed
 * candidates of all ranks in any order (read only; n <= n_vocab given at create). Runs
 * top_k/top_p/min_p and draws exactly as gs_sampler_sample() does on a full vocabulary.
 * Returns -1 when n == 0. Greedy logprob is normalised over the candidates only. */
int32_t gs_sampler_sample_candidates(struct gs_sampler *s, const int32_t *ids, const float *logits,
				     size_t n, float *logprob_out);
/* As above; tail (may be NULL: the candidates are the whole vocabulary) describes what was
 * left out, and *exact_out (may be NULL) says whether the draw provably came from the same
 * distribution as the full-vocabulary path (see the header comment; conservative). */
int32_t gs_sampler_sample_candidates_ex(struct gs_sampler *s, const int32_t *ids,
					const float *logits, size_t n,
					const struct gs_candidate_tail *tail,
					float *logprob_out, bool *exact_out);

#endif
