#include "gs_engine.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gs_grammar.h"
#include "gs_kvpool.h"
#include "gs_plan.h"
#include "gs_sha256.h"
#include "gs_util.h"
#include "gs_vision.h"

/* A sequence as every rank sees it (slot in e->seqs). Leader-only fields are marked. */
struct eng_seq {
	bool                 used;
	uint64_t             id;
	struct gs_kv_seq     kv;
	struct gs_sampler   *smp;
	struct gs_req_params p;
	int32_t             *hist;        /* prompt + generated tokens fed so far */
	int32_t              n_hist;
	int32_t              max_positions;
	bool                 sampled;     /* logits wanted once: hist[0, n_hist) then was the prompt */
	struct gs_grammar   *grammar;     /* structured output (NULL: none); p.response_format = rf */
	char                *rf;
	struct gs_gstate    *gst;         /* the automaton after the tokens generated so far */
	bool                 gdead;       /* a fed token left the grammar: only eos from now on */
	/* images (ARCHITECTURE.md "Image tokens") */
	int32_t              n_images;
	uint64_t            *img_key;     /* [n_images] pixel digests: the prefix cache's image keys */
	int32_t             *img_pos;     /* [n_images] first soft-token position, n_img_pos found so far */
	int32_t              n_img_pos;
	int32_t              img_first;   /* images before it came with the cached prefix */
	int32_t              img_fed;     /* prompt image tokens fed so far (cached prefix included) */
	float               *img_rows;    /* backend memory: projector rows of images img_first..,
					   * encoded at admission, released when the prompt is in */
	/* leader */
	uint8_t             *pixels;      /* the request's images until they are encoded */
	int32_t             *prompt;      /* [n_prompt] */
	int32_t              n_prompt, n_prefilled, n_generated;
	int32_t              next_token;  /* sampled, fed next step; -1 none */
	bool                 finished;    /* release in the next plan */
	uint64_t             prefill_plan; /* plan that fed its last prompt token (n > 1 siblings) */
};

struct waiting_req {
	uint64_t             id;
	int32_t             *prompt;
	int32_t              n_prompt;
	struct gs_req_params p;
	char                *rf;          /* p.response_format's own copy */
	int32_t              group_n;     /* choice 0 of n > 1: admit only when all n fit */
	bool                 sibling;     /* choice i > 0: waits for lead_id's prefill */
	uint64_t             lead_id;
	uint8_t             *pixels;      /* n_images preprocessed images (own copy); NULL: none */
	int32_t              n_images;
	uint64_t            *img_key;     /* [n_images] */
	int32_t             *img_pos;     /* [n_images] */
};

/* Candidates of a rank's vocabulary slice are gathered on the leader as struct gs_cand
 * (gs_kernels.h): id (-1 padding, -2 the row's trailer carrying the slice's log-sum-exp in
 * raw), proc (after repetition penalty and temperature), raw (the model's logit; logprobs are
 * log-softmax of raw logits). */

struct gs_engine {
	const struct gs_model   *m;
	const struct gs_comm    *comm;
	struct gs_comm           self;
	struct gs_engine_config  cfg;
	struct gs_forward       *f;
	struct gs_kv_pool        pool;
	int32_t                  tp, cp;      /* the grid: T ranks per group, C groups (1: none) */
	bool                     kv_check;    /* env GS_KV_CHECK=1: the pool checked after every step */
	struct eng_seq          *seqs;        /* [max_seqs] slots */
	bool                     leader;
	/* leader queues */
	struct waiting_req      *waiting;     /* ring of cfg.max_seqs * 4 + submissions */
	int32_t                  n_waiting, waiting_head, waiting_cap;
	uint64_t                *cancels;
	int32_t                  n_cancels, cancels_cap;
	/* per-step scratch */
	struct gs_plan           plan;
	struct gs_batch_seq     *bseqs;
	int32_t                 *row_slot;    /* slot of each logits row */
	float                   *logits;      /* [max_seqs, shard.n_vocab] */
	struct gs_cand          *cands, *all_cands;
	int32_t                 *m_ids;
	float                   *m_proc;
	uint8_t                 *plan_buf;
	size_t                   plan_buf_cap;
	double                   last_plan_s;   /* leader: when the last plan went out */
	int32_t                  n_decode;    /* decode tokens in this step's plan */
	uint64_t                 plan_no;     /* leader: plans built */
	/* candidates made by the backend (e->dev_cands): per-row parameters and logit edits
	 * uploaded each step, the rows' candidates downloaded */
	bool                     dev_cands;
	struct gs_cand_row      *h_crow;      /* [max_seqs] */
	struct gs_logit_edit    *h_edit;
	size_t                   hist_cap;    /* entries of h_edit and d_edit */
	struct gs_cand          *d_cands;     /* backend memory: [max_seqs][K + 1] */
	struct gs_cand_row      *d_crow;      /* backend memory: [max_seqs] */
	struct gs_logit_edit    *d_edit;      /* backend memory */
	int32_t                 *hit;         /* leader: prefix-cache lookup [hit_cap] */
	int32_t                  hit_cap;
	struct gs_engine_stats   st;
	/* structured output: this rank's vocabulary trie, built at the first grammar request */
	const struct gs_tokenizer *tok;
	struct gs_vocab_trie    *trie;
	uint8_t                 *allow;       /* [shard.n_vocab]; device path: [max_seqs][...] */
	uint8_t                 *d_allow;     /* backend memory, the same (device candidates) */
	/* images: the vision tower's workspace, made at the first admission with images */
	struct gs_vision        *vis;
};

const char *gs_finish_str(enum gs_finish f)
{
	static const char *const names[] = { "none", "stop", "length", "cancelled" };
	_Static_assert(sizeof(names) / sizeof(names[0]) == GS_FINISH_COUNT, "finish names");
	return (unsigned)f < GS_FINISH_COUNT ? names[f] : "?";
}

static int32_t max_candidates(const struct gs_engine *e)
{
	/* Exact for every request with top_k <= K (and for greedy); see gs_sampler.h. */
	int32_t k = e->cfg.candidates;
	if (k > e->m->shard.vocab_stride)
		k = e->m->shard.vocab_stride;
	return k;
}

/* Candidates per rank this step: enough for every request's top_k and top_logprobs. */
static int32_t step_k(const struct gs_engine *e)
{
	int32_t K = max_candidates(e);
	if (K < GS_MAX_TOP_LOGPROBS)
		K = GS_MAX_TOP_LOGPROBS < e->m->shard.vocab_stride ? GS_MAX_TOP_LOGPROBS : e->m->shard.vocab_stride;
	return K;
}

void gs_engine_set_device_comm(struct gs_engine *e, const struct gs_comm *c)
{
	gs_forward_set_comm(e->f, c);
}

enum gs_status gs_engine_create(const struct gs_model *m, struct gs_backend be, const struct gs_comm *comm,
				const struct gs_engine_config *cfg_in, struct gs_engine **out)
{
	struct gs_engine *e;
	struct gs_engine_config cfg = *cfg_in;
	enum gs_status st;
	int32_t S, T, K;

	*out = NULL;
	if (cfg.max_batch_tokens < 1 || cfg.max_seqs < 1 || cfg.max_context < 2)
		return gs_errorf(GS_ERR_INVALID_ARG, "engine: max_batch_tokens, max_seqs >= 1 and max_context >= 2");
	if (cfg.max_context > m->cfg.max_position)
		cfg.max_context = m->cfg.max_position;
	if (cfg.candidates < 1)
		cfg.candidates = 64;
	if (cfg.max_seqs > cfg.max_batch_tokens)
		cfg.max_seqs = cfg.max_batch_tokens; /* every running sequence decodes each step */
	if (m->cfg.vision.present && cfg.max_batch_tokens < m->cfg.vision.mm_tokens_per_image + cfg.max_seqs - 1) {
		/* An image is computed in one step (the chunk rule), beside the decodes of the other
		 * sequences: with less, a prompt could wait forever behind running decodes. */
		int32_t need = m->cfg.vision.mm_tokens_per_image + cfg.max_seqs - 1;
		gs_log(GS_LOG_INFO, "engine: token budget per step raised from %d to %d (one image's %d tokens beside "
		       "%d decodes)", cfg.max_batch_tokens, need, m->cfg.vision.mm_tokens_per_image, cfg.max_seqs - 1);
		cfg.max_batch_tokens = need;
	}
	if (cfg.cp_comm && gs_comm_size(cfg.cp_comm) > 1) {
		if (!cfg.tp_comm || !comm || gs_comm_size(comm) != gs_comm_size(cfg.tp_comm) * gs_comm_size(cfg.cp_comm))
			return gs_errorf(GS_ERR_INVALID_ARG, "engine: a context-parallel grid needs its TP and world comms");
		if (gs_comm_size(cfg.cp_comm) > GS_KV_MAX_CP)
			return gs_errorf(GS_ERR_INVALID_ARG, "engine: %d context-parallel groups (at most %d)",
					 gs_comm_size(cfg.cp_comm), GS_KV_MAX_CP);
		cfg.no_prefix_cache = true; /* a cached prefix would have to be one on every group */
	}
	if (cfg.kv_global_blocks <= 0 || cfg.kv_local_blocks <= 0) {
		int32_t g, l, chunk = cfg.no_prefix_cache ? 0 : cfg.max_batch_tokens;
		if (cfg.kv_bytes)
			GS_TRY(gs_kv_pool_size_for_bytes(&m->cfg, m->shard.n_kv_heads, gs_kv_elem_bytes(&be), cfg.kv_bytes,
							 cfg.max_seqs, chunk, &g, &l));
		else
			gs_kv_pool_size_for(&m->cfg, cfg.max_seqs,
					    cfg.max_context < GS_KV_DEFAULT_CONTEXT ? cfg.max_context : GS_KV_DEFAULT_CONTEXT,
					    chunk, &g, &l);
		if (cfg.kv_global_blocks <= 0)
			cfg.kv_global_blocks = g;
		if (cfg.kv_local_blocks <= 0)
			cfg.kv_local_blocks = l;
	}
	e = calloc(1, sizeof(*e));
	if (!e)
		return gs_errorf(GS_ERR_NOMEM, "out of memory");
	e->m = m;
	e->cfg = cfg;
	e->kv_check = getenv("GS_KV_CHECK") && !strcmp(getenv("GS_KV_CHECK"), "1");
	if (!comm) {
		gs_comm_self_create(&e->self);
		comm = &e->self;
	}
	e->comm = comm;
	e->leader = gs_comm_rank(comm) == 0;
	S = cfg.max_seqs;
	T = gs_comm_size(comm);
	K = max_candidates(e) > GS_MAX_TOP_LOGPROBS ? max_candidates(e) : GS_MAX_TOP_LOGPROBS;
	st = gs_forward_create(m, be, cfg.max_batch_tokens, &e->f);
	if (st != GS_OK)
		goto out_free_engine;
	e->cp = cfg.cp_comm && gs_comm_size(cfg.cp_comm) > 1 ? gs_comm_size(cfg.cp_comm) : 1;
	e->tp = e->cp > 1 ? gs_comm_size(cfg.tp_comm) : T;
	if (e->cp > 1) {
		if (e->tp > 1)
			gs_forward_set_comm(e->f, cfg.tp_comm);
		st = gs_forward_set_cp(e->f, cfg.cp_comm);
		if (st != GS_OK)
			goto out_free_engine;
	} else if (comm != &e->self && T > 1) {
		gs_forward_set_comm(e->f, comm);
	}
	st = gs_kv_pool_init(&e->pool, &m->cfg, m->shard.n_kv_heads, cfg.kv_global_blocks, cfg.kv_local_blocks,
			     &be);
	if (st != GS_OK)
		goto out_free_engine;
	/* a sequence writes at most max_batch_tokens positions a step */
	gs_kv_pool_set_prefix_cache(&e->pool, !cfg.no_prefix_cache, cfg.max_batch_tokens);
	if (e->cp > 1)
		gs_kv_pool_set_cp(&e->pool, e->cp, gs_comm_rank(cfg.cp_comm));
	/* The longest sequence served: the cap, or what the whole pool holds if that is less. */
	if (gs_kv_pool_max_positions(&e->pool) < cfg.max_context)
		e->cfg.max_context = cfg.max_context = gs_kv_pool_max_positions(&e->pool);
	if (cfg.max_context < 2) {
		st = gs_errorf(GS_ERR_RANGE, "engine: a KV pool of %d global blocks holds no sequence",
			       e->pool.cache.n_global_blocks);
		goto out_free_engine;
	}
	e->hit_cap = gs_kv_global_blocks_for(cfg.max_context) + 1;
	e->hit = malloc(sizeof(int32_t) * (size_t)e->hit_cap);
	st = e->hit ? gs_plan_init(&e->plan, S, cfg.max_batch_tokens) : gs_errorf(GS_ERR_NOMEM, "out of memory");
	if (st != GS_OK)
		goto out_free_engine;
	e->seqs = calloc((size_t)S, sizeof(*e->seqs));
	e->bseqs = calloc((size_t)S, sizeof(*e->bseqs));
	e->row_slot = calloc((size_t)S, sizeof(*e->row_slot));
	e->dev_cands = !be.iface->host_memory && be.iface->candidates && !cfg.host_candidates &&
		       (be.iface->cand_max_k <= 0 || step_k(e) <= be.iface->cand_max_k);
	/* host logits rows only when the candidates are taken on the host */
	e->logits = e->dev_cands ? NULL : malloc(sizeof(float) * (size_t)S * (size_t)m->shard.n_vocab);
	e->cands = malloc(sizeof(struct gs_cand) * (size_t)S * (size_t)(K + 1));
	e->all_cands = malloc(sizeof(struct gs_cand) * (size_t)S * (size_t)(K + 1) * (size_t)T);
	e->m_ids = malloc(sizeof(int32_t) * (size_t)K * (size_t)T);
	e->m_proc = malloc(sizeof(float) * (size_t)K * (size_t)T);
	if (e->dev_cands) {
		e->h_crow = malloc(sizeof(*e->h_crow) * (size_t)S);
		e->d_cands = be.iface->alloc(be.ctx, sizeof(struct gs_cand) * (size_t)S * (size_t)(K + 1));
		e->d_crow = be.iface->alloc(be.ctx, sizeof(struct gs_cand_row) * (size_t)S);
		if (!e->h_crow || !e->d_cands || !e->d_crow) {
			st = gs_errorf(GS_ERR_NOMEM, "engine: out of memory for the candidates of %d sequences", S);
			goto out_free_engine;
		}
	}
	e->waiting_cap = 64;
	e->waiting = calloc((size_t)e->waiting_cap, sizeof(*e->waiting));
	e->cancels_cap = 64;
	e->cancels = calloc((size_t)e->cancels_cap, sizeof(*e->cancels));
	if (!e->seqs || !e->bseqs || !e->row_slot || (!e->logits && !e->dev_cands) || !e->cands || !e->all_cands ||
	    !e->m_ids || !e->m_proc || !e->waiting || !e->cancels) {
		st = gs_errorf(GS_ERR_NOMEM, "engine: out of memory for %d sequences", S);
		goto out_free_engine;
	}
	*out = e;
	return GS_OK;

out_free_engine:
	gs_engine_free(e);
	return st;
}

static void seq_release(struct gs_engine *e, int32_t slot)
{
	struct eng_seq *s = &e->seqs[slot];

	if (!s->used)
		return;
	gs_kv_seq_release(&e->pool, &s->kv);
	gs_sampler_free(s->smp);
	free(s->hist);
	free(s->prompt);
	gs_grammar_free(s->grammar);
	free(s->rf);
	free(s->gst);
	free(s->img_key);
	free(s->img_pos);
	free(s->pixels);
	if (s->img_rows && e->f->be.iface->release)
		e->f->be.iface->release(e->f->be.ctx, s->img_rows);
	memset(s, 0, sizeof(*s));
}

static void waiting_free(struct waiting_req *w)
{
	free(w->prompt);
	free(w->rf);
	free(w->pixels);
	free(w->img_key);
	free(w->img_pos);
	w->prompt = NULL, w->rf = NULL, w->pixels = NULL, w->img_key = NULL, w->img_pos = NULL;
}

void gs_engine_free(struct gs_engine *e)
{
	if (!e)
		return;
	if (e->seqs)
		for (int32_t i = 0; i < e->cfg.max_seqs; i++)
			seq_release(e, i);
	for (int32_t i = 0; i < e->n_waiting; i++)
		waiting_free(&e->waiting[(e->waiting_head + i) % e->waiting_cap]);
	if (e->vis)
		gs_vision_free(e->vis);
	gs_vocab_trie_free(e->trie);
	free(e->allow);
	if (e->d_allow && e->f && e->f->be.iface->release)
		e->f->be.iface->release(e->f->be.ctx, e->d_allow);
	gs_kv_pool_free(&e->pool);
	gs_plan_free(&e->plan);
	free(e->seqs), free(e->bseqs), free(e->row_slot), free(e->logits), free(e->cands), free(e->all_cands);
	free(e->m_ids), free(e->m_proc), free(e->waiting), free(e->cancels), free(e->plan_buf);
	free(e->h_crow), free(e->h_edit), free(e->hit);
	if (e->f && e->f->be.iface->release) {
		void *dev[] = { e->d_cands, e->d_crow, e->d_edit };
		for (size_t i = 0; i < sizeof(dev) / sizeof(dev[0]); i++)
			if (dev[i])
				e->f->be.iface->release(e->f->be.ctx, dev[i]);
	}
	gs_forward_free(e->f);
	free(e);
}

/* ---- leader: queues ------------------------------------------------------------------- */

static enum gs_status grammar_setup(struct gs_engine *e);

static enum gs_status check_params(const struct gs_engine *e, const struct gs_req_params *p)
{
	char why[256];

	if (gs_sampling_params_validate_vocab(&p->sp, e->m->n_vocab, why, sizeof(why)) != GS_OK)
		return gs_errorf(GS_ERR_INVALID_ARG, "%s", why);
	if (p->max_tokens < 1)
		return gs_errorf(GS_ERR_INVALID_ARG, "max_tokens must be >= 1, got %d", p->max_tokens);
	if (p->n_stop_ids < 0 || p->n_stop_ids > GS_MAX_STOP_IDS)
		return gs_errorf(GS_ERR_INVALID_ARG, "at most %d stop ids", GS_MAX_STOP_IDS);
	for (int32_t i = 0; i < p->n_stop_ids; i++)
		if (p->stop_ids[i] < 0 || p->stop_ids[i] >= e->m->n_vocab)
			return gs_errorf(GS_ERR_INVALID_ARG, "stop id %d outside the vocabulary", p->stop_ids[i]);
	if (p->top_logprobs < 0 || p->top_logprobs > GS_MAX_TOP_LOGPROBS)
		return gs_errorf(GS_ERR_INVALID_ARG, "top_logprobs must be in 0..%d", GS_MAX_TOP_LOGPROBS);
	if (p->n < 0 || p->n > GS_MAX_N)
		return gs_errorf(GS_ERR_INVALID_ARG, "n must be in 1..%d, got %d", GS_MAX_N, p->n);
	if (p->response_format) {
		struct gs_grammar *g = NULL;
		if (!e->tok)
			return gs_errorf(GS_ERR_INVALID_ARG, "response_format: this engine has no tokenizer to mask with");
		GS_TRY(gs_grammar_get(p->response_format, strlen(p->response_format), why, sizeof(why), &g));
		bool no_eos = g && p->ignore_eos, min_tok = g && p->sp.min_tokens > 0;
		gs_grammar_free(g);
		/* a finished document allows only eos: both would leave nothing to sample */
		if (no_eos)
			return gs_errorf(GS_ERR_INVALID_ARG, "response_format cannot be combined with ignore_eos");
		if (min_tok)
			return gs_errorf(GS_ERR_INVALID_ARG, "response_format cannot be combined with min_tokens");
	}
	return GS_OK;
}

void gs_engine_set_tokenizer(struct gs_engine *e, const struct gs_tokenizer *t)
{
	e->tok = t;
}

/* Bytes of one preprocessed image of this model. */
static size_t image_bytes(const struct gs_engine *e)
{
	size_t S = (size_t)e->m->cfg.vision.image_size;
	return S * S * 3;
}

/* The prefix cache's key of an image: the first 8 bytes of its pixels' SHA-256 (a different
 * image with the same key would have to be found by a 2^64 search). */
static uint64_t image_key(const uint8_t *px, size_t n)
{
	uint8_t d[32];
	uint64_t k = 0;

	gs_sha256(px, n, d);
	memcpy(&k, d, sizeof(k));
	return k;
}

/* The prompt's images (seam 5): exactly n_images runs of boi, mm_tokens_per_image x
 * image_token_id, eoi, and no image token elsewhere. pos (may be NULL) gets each run's first
 * soft-token position. */
static enum gs_status check_image_runs(const struct gs_engine *e, const int32_t *prompt, int32_t n, int32_t n_images,
				       int32_t *pos)
{
	const struct gs_vision_config *v = &e->m->cfg.vision;
	int32_t runs = 0;

	if (!v->present) {
		if (n_images)
			return gs_errorf(GS_ERR_INVALID_ARG, "this model takes no images (%d given)", n_images);
		return GS_OK;
	}
	for (int32_t i = 0, j; i < n; i = j) {
		j = i + 1;
		if (prompt[i] != v->image_token_id)
			continue;
		while (j < n && prompt[j] == v->image_token_id)
			j++;
		if (j - i != v->mm_tokens_per_image || i == 0 || prompt[i - 1] != v->boi_id || j == n ||
		    prompt[j] != v->eoi_id)
			return gs_errorf(GS_ERR_INVALID_ARG, "image tokens at prompt index %d..%d: an image must be "
					 "<start_of_image> (%d), %d x <image_soft_token> (%d), <end_of_image> (%d)", i,
					 j - 1, v->boi_id, v->mm_tokens_per_image, v->image_token_id, v->eoi_id);
		if (pos && runs < n_images)
			pos[runs] = i;
		runs++;
	}
	if (runs != n_images)
		return gs_errorf(GS_ERR_INVALID_ARG, "the prompt holds %d images (<start_of_image>, %d image tokens, "
				 "<end_of_image>) but %d were given", runs, v->mm_tokens_per_image, n_images);
	return GS_OK;
}

static enum gs_status queue_one(struct gs_engine *e, uint64_t id, const int32_t *prompt, int32_t n_prompt,
			       const struct gs_req_params *p, int32_t group_n, bool sibling, uint64_t lead_id,
			       const uint8_t *pixels, int32_t n_images, const uint64_t *img_key, const int32_t *img_pos)
{
	struct waiting_req *w;

	if (e->n_waiting == e->waiting_cap) {
		int32_t cap = e->waiting_cap * 2;
		struct waiting_req *nw = malloc(sizeof(*nw) * (size_t)cap);
		if (!nw)
			return gs_errorf(GS_ERR_NOMEM, "out of memory");
		for (int32_t i = 0; i < e->n_waiting; i++)
			nw[i] = e->waiting[(e->waiting_head + i) % e->waiting_cap];
		free(e->waiting);
		e->waiting = nw, e->waiting_cap = cap, e->waiting_head = 0;
	}
	w = &e->waiting[(e->waiting_head + e->n_waiting) % e->waiting_cap];
	memset(w, 0, sizeof(*w));
	w->prompt = malloc(sizeof(int32_t) * (size_t)n_prompt);
	if (!w->prompt)
		return gs_errorf(GS_ERR_NOMEM, "out of memory");
	memcpy(w->prompt, prompt, sizeof(int32_t) * (size_t)n_prompt);
	if (p->response_format && !(w->rf = strdup(p->response_format))) {
		waiting_free(w);
		return gs_errorf(GS_ERR_NOMEM, "out of memory");
	}
	if (n_images > 0) {
		size_t nb = image_bytes(e) * (size_t)n_images;
		w->pixels = malloc(nb);
		w->img_key = malloc(sizeof(uint64_t) * (size_t)n_images);
		w->img_pos = malloc(sizeof(int32_t) * (size_t)n_images);
		if (!w->pixels || !w->img_key || !w->img_pos) {
			waiting_free(w);
			return gs_errorf(GS_ERR_NOMEM, "out of memory for %d images", n_images);
		}
		memcpy(w->pixels, pixels, nb);
		memcpy(w->img_key, img_key, sizeof(uint64_t) * (size_t)n_images);
		memcpy(w->img_pos, img_pos, sizeof(int32_t) * (size_t)n_images);
		w->n_images = n_images;
	}
	w->id = id, w->n_prompt = n_prompt, w->p = *p;
	w->p.response_format = w->rf;
	w->group_n = group_n, w->sibling = sibling, w->lead_id = lead_id;
	e->n_waiting++;
	return GS_OK;
}

enum gs_status gs_engine_submit(struct gs_engine *e, uint64_t id, const int32_t *prompt, int32_t n_prompt,
				const struct gs_req_params *p)
{
	return gs_engine_submit_images(e, id, prompt, n_prompt, p, NULL, 0);
}

enum gs_status gs_engine_submit_images(struct gs_engine *e, uint64_t id, const int32_t *prompt, int32_t n_prompt,
				       const struct gs_req_params *p, const uint8_t *images, int32_t n_images)
{
	int64_t need = (int64_t)n_prompt + p->max_tokens;
	int32_t n = p->n > 1 ? p->n : 1;
	const struct gs_vision_config *v = &e->m->cfg.vision;
	uint64_t *keys = NULL;
	int32_t *pos = NULL;
	enum gs_status st = GS_OK;

	GS_ASSERT(e->leader);
	if (n_prompt < 1)
		return gs_errorf(GS_ERR_INVALID_ARG, "empty prompt");
	if (n_images < 0 || (n_images > 0 && !images))
		return gs_errorf(GS_ERR_INVALID_ARG, "%d images without pixels", n_images);
	GS_TRY(check_params(e, p));
	if (p->response_format && e->tok)
		GS_TRY(grammar_setup(e)); /* the leader's trie now: a failure is this request's */
	for (int32_t i = 0; i < n_prompt; i++)
		if ((prompt[i] < 0 || prompt[i] >= e->m->n_vocab) && !(v->present && prompt[i] == v->image_token_id))
			return gs_errorf(GS_ERR_INVALID_ARG, "token id %d outside the vocabulary (0..%d)", prompt[i],
					 e->m->n_vocab - 1);
	GS_TRY(check_image_runs(e, prompt, n_prompt, n_images, NULL));
	/* KV holds positions of every token fed: the prompt and all but the last generated. */
	if (need - 1 > e->cfg.max_context || !gs_kv_could_ever_admit(&e->pool, (int32_t)(need - 1)))
		return gs_errorf(GS_ERR_RANGE,
				 "can never fit: %d prompt + %d max_tokens tokens exceed the engine's context of %d tokens "
				 "(the longest it serves: --ctx, capped by its whole KV pool%s)", n_prompt, p->max_tokens,
				 e->cfg.max_context, e->cp > 1 ? " over all its context-parallel groups" : "");
	if (n > e->cfg.max_seqs ||
	    !gs_kv_could_ever_admit_group(&e->pool, (int32_t)(need - 1), n))
		return gs_errorf(GS_ERR_RANGE, "can never fit: n = %d choices of %d prompt + %d max_tokens tokens exceed the "
				 "engine's %d sequences or its whole KV pool", n, n_prompt, p->max_tokens, e->cfg.max_seqs);
	if (n_images > 0) { /* the prefix cache's image keys and where each image's tokens start */
		keys = malloc(sizeof(uint64_t) * (size_t)n_images);
		pos = malloc(sizeof(int32_t) * (size_t)n_images);
		if (!keys || !pos) {
			st = gs_errorf(GS_ERR_NOMEM, "out of memory for %d images", n_images);
			goto out_free_keys;
		}
		GS_ASSERT(check_image_runs(e, prompt, n_prompt, n_images, pos) == GS_OK);
		for (int32_t i = 0; i < n_images; i++)
			keys[i] = image_key(images + (size_t)i * image_bytes(e), image_bytes(e));
	}
	for (int32_t i = 0; i < n; i++) {
		struct gs_req_params pi = *p;
		pi.n = 1;
		pi.sp.seed = p->sp.seed + (uint64_t)i;
		st = queue_one(e, id + (uint64_t)i, prompt, n_prompt, &pi, i == 0 ? n : 1, i > 0, id, images, n_images,
			       keys, pos);
		for (int32_t j = 0; st != GS_OK && j < i; j++) /* all n queued or none */
			waiting_free(&e->waiting[(e->waiting_head + --e->n_waiting) % e->waiting_cap]);
		if (st != GS_OK)
			break;
	}
out_free_keys:
	free(keys);
	free(pos);
	return st;
}

enum gs_status gs_engine_cancel(struct gs_engine *e, uint64_t id)
{
	GS_ASSERT(e->leader);
	if (e->n_cancels == e->cancels_cap) {
		uint64_t *nc = realloc(e->cancels, sizeof(*nc) * (size_t)e->cancels_cap * 2);
		if (!nc)
			return gs_errorf(GS_ERR_NOMEM, "out of memory");
		e->cancels = nc, e->cancels_cap *= 2;
	}
	e->cancels[e->n_cancels++] = id;
	return GS_OK;
}

bool gs_engine_idle(const struct gs_engine *e)
{
	if (e->n_waiting || e->n_cancels)
		return false;
	for (int32_t i = 0; i < e->cfg.max_seqs; i++)
		if (e->seqs[i].used)
			return false;
	return true;
}

/* ---- every rank: executing a plan ---------------------------------------------------- */

static enum gs_status apply_releases(struct gs_engine *e, const struct gs_plan *p)
{
	for (int32_t i = 0; i < p->n_release; i++) {
		if (p->release[i] < 0 || p->release[i] >= e->cfg.max_seqs)
			return gs_errorf(GS_ERR_FORMAT, "plan releases slot %d", p->release[i]);
		seq_release(e, p->release[i]);
	}
	return GS_OK;
}

/* Scratch a sequence's sampler needs: the leader's merge of K candidates from each of the T
 * ranks, and on the host path this rank's vocabulary slice (gs_sampler_local_candidates). Not
 * the whole vocabulary: 3 MiB a sequence at 262K, most of it never touched. */
static int32_t sampler_capacity(const struct gs_engine *e)
{
	int32_t merged = step_k(e) * gs_comm_size(e->comm);
	if (e->dev_cands || e->m->shard.n_vocab < merged)
		return merged;
	return e->m->shard.n_vocab;
}

/* This rank's vocabulary trie and mask rows, once, at the first grammar request (the leader
 * at its submit, so a failure is that request's error; followers at its admission). */
static enum gs_status grammar_setup(struct gs_engine *e)
{
	const struct gs_shard *sh = &e->m->shard;
	/* the host path masks one row at a time; the device path uploads every row's mask */
	size_t bytes = (size_t)(e->dev_cands ? e->cfg.max_seqs : 1) * (size_t)sh->n_vocab + 1;

	if (e->trie)
		return GS_OK;
	if (!e->allow && !(e->allow = malloc(bytes)))
		return gs_errorf(GS_ERR_NOMEM, "out of memory for the grammar masks");
	if (e->dev_cands && !e->d_allow && !(e->d_allow = e->f->be.iface->alloc(e->f->be.ctx, bytes)))
		return gs_errorf(GS_ERR_NOMEM, "out of backend memory for the grammar masks");
	return gs_vocab_trie_build(e->tok, sh->vocab0, sh->n_vocab, &e->trie);
}

/* Structured output on every rank: the sequence's own copy of the text, the compiled grammar
 * (cached by text: the leader compiled it at submit), a fresh automaton, and this rank's
 * vocabulary trie at the first such request. */
static enum gs_status grammar_admit(struct gs_engine *e, struct eng_seq *s, const char *rf)
{
	char why[256];

	s->p.response_format = NULL;
	if (!(s->rf = strdup(rf)))
		return gs_errorf(GS_ERR_NOMEM, "out of memory");
	s->p.response_format = s->rf;
	GS_TRY(gs_grammar_get(rf, strlen(rf), why, sizeof(why), &s->grammar));
	if (!s->grammar)
		return GS_OK; /* {"type": "text"} */
	if (!e->tok)
		return gs_errorf(GS_ERR_INVALID_ARG, "response_format: rank %d has no tokenizer to mask with",
				 gs_comm_rank(e->comm));
	GS_TRY(grammar_setup(e));
	if (!(s->gst = malloc(sizeof(*s->gst))))
		return gs_errorf(GS_ERR_NOMEM, "out of memory");
	gs_gstate_init(s->grammar, s->gst);
	return GS_OK;
}

/* A grammar row's mask on this rank's slice: the ids the automaton takes from its state;
 * the ids that end the answer (eos, and the stop ids) exactly when the document may end. */
static void grammar_allow(struct gs_engine *e, struct eng_seq *s, uint8_t *allow)
{
	const struct gs_shard *sh = &e->m->shard;
	double t0 = gs_now_s();
	/* a dead end (no byte continues, not accepting) ends like a document: the same on every
	 * rank, as it depends on the state only */
	bool acc = s->gdead || gs_gstate_accepting(s->grammar, s->gst) || !gs_gstate_live(s->grammar, s->gst);

	if (s->gdead)
		memset(allow, 0, (size_t)sh->n_vocab);
	else
		gs_grammar_mask(e->trie, s->grammar, s->gst, allow);
	for (int32_t i = 0; i < e->m->cfg.n_eos + s->p.n_stop_ids; i++) {
		int32_t id = (i < e->m->cfg.n_eos ? e->m->cfg.eos_ids[i] : s->p.stop_ids[i - e->m->cfg.n_eos]) - sh->vocab0;
		if (id >= 0 && id < sh->n_vocab)
			allow[id] = acc;
	}
	e->st.grammar_mask_s_total += gs_now_s() - t0;
	e->st.grammar_masks++;
}

/* The host path: the refused ids' logits become -inf (raw too: logprobs are then over the
 * tokens the grammar allows). */
static void grammar_mask_row(struct gs_engine *e, struct eng_seq *s, float *lg)
{
	const struct gs_shard *sh = &e->m->shard;

	grammar_allow(e, s, e->allow);
	double t0 = gs_now_s();
	for (int32_t i = 0; i < sh->n_vocab; i++)
		if (!e->allow[i])
			lg[i] = -INFINITY;
	e->st.grammar_mask_s_total += gs_now_s() - t0;
}

/* Every rank: the generated tokens fed this step move the automaton (all ranks see the same). */
static void grammar_advance(struct gs_engine *e, struct eng_seq *s, const int32_t *ids, int32_t n)
{
	double t0 = gs_now_s();
	for (int32_t i = 0; i < n && !s->gdead; i++) {
		size_t bl;
		const uint8_t *b = gs_vocab_trie_bytes(e->trie, ids[i], &bl);
		if (!b || !gs_gstate_step_bytes(s->grammar, s->gst, b, bl))
			s->gdead = true; /* only a stop id can get here; the mask then allows eos only */
	}
	e->st.grammar_mask_s_total += gs_now_s() - t0;
}

/* Every rank, for the ids just appended to s->hist at [from, to): where its images start, and
 * the prompt's image tokens fed so far (generated tokens are never image rows). */
static void images_scan(const struct gs_engine *e, struct eng_seq *s, int32_t from, int32_t to)
{
	int32_t img = e->m->cfg.vision.image_token_id;

	for (int32_t j = from; j < to; j++) {
		if (s->hist[j] != img || s->sampled)
			continue;
		if ((j == 0 || s->hist[j - 1] != img) && s->n_img_pos < s->n_images)
			s->img_pos[s->n_img_pos++] = j;
		s->img_fed++;
	}
}

/* Every rank, at admission: the image keys (digests of the plan's pixels), the images of the
 * cached prefix (not encoded again: a cached prefix never ends inside an image). */
static enum gs_status images_admit(struct gs_engine *e, struct eng_seq *s, const struct gs_plan_seq *ps)
{
	const struct gs_vision_config *v = &e->m->cfg.vision;

	if (!v->present || ps->image_bytes != (int64_t)image_bytes(e))
		return gs_errorf(GS_ERR_FORMAT, "plan admits slot %d with %d images of %lld bytes (the model takes %s)",
				 ps->slot, ps->n_images, (long long)ps->image_bytes, v->present ? "other sizes" : "none");
	s->img_key = malloc(sizeof(uint64_t) * (size_t)ps->n_images);
	s->img_pos = malloc(sizeof(int32_t) * (size_t)ps->n_images);
	if (!s->img_key || !s->img_pos)
		return gs_errorf(GS_ERR_NOMEM, "out of memory for %d images", ps->n_images);
	s->n_images = ps->n_images;
	for (int32_t i = 0; i < s->n_images; i++)
		s->img_key[i] = image_key(ps->images + (size_t)i * image_bytes(e), image_bytes(e));
	images_scan(e, s, 0, s->n_hist);
	s->img_first = s->img_fed / v->mm_tokens_per_image;
	return GS_OK;
}

/* Every rank, at the admission step: the projector rows of the images its prompt still feeds
 * (collective over the forward's TP group), kept until the prompt is in. */
static enum gs_status images_encode(struct gs_engine *e, struct eng_seq *s, const struct gs_plan_seq *ps)
{
	const struct gs_backend be = e->f->be;
	int32_t n = s->n_images - s->img_first;
	size_t rows = (size_t)n * (size_t)e->m->cfg.vision.mm_tokens_per_image;
	double t0 = gs_now_s();

	if (!e->vis)
		GS_TRY(gs_vision_create(e->m, be, e->f->comm, &e->vis));
	s->img_rows = be.iface->alloc(be.ctx, sizeof(float) * rows * (size_t)e->m->cfg.hidden);
	if (!s->img_rows)
		return gs_errorf(GS_ERR_NOMEM, "out of backend memory for the %zu projector rows of %d images", rows, n);
	GS_TRY(gs_vision_encode(e->vis, ps->images + (size_t)s->img_first * image_bytes(e), n, s->img_rows));
	free(s->pixels); /* the leader's copy (the plan's entry is not read again) */
	s->pixels = NULL;
	e->st.images_encoded += (uint64_t)n;
	e->st.vision_s_total += gs_now_s() - t0;
	return GS_OK;
}

static enum gs_status apply_admit(struct gs_engine *e, const struct gs_plan *p, const struct gs_plan_seq *ps)
{
	struct eng_seq *s = &e->seqs[ps->slot];
	enum gs_status st;

	if (s->used)
		return gs_errorf(GS_ERR_FORMAT, "plan admits into busy slot %d", ps->slot);
	if (ps->n_cached < 0 || ps->cached0 < 0 || ps->cached0 + ps->n_cached > p->n_cached)
		return gs_errorf(GS_ERR_FORMAT, "plan admits slot %d with malformed cached blocks", ps->slot);
	memset(s, 0, sizeof(*s));
	/* A cached prefix: every rank takes the blocks the leader found (and checks them). With
	 * context parallelism (no prefix cache), this group's share of the leader's placement. */
	if (e->cp > 1)
		st = ps->n_cached ? gs_errorf(GS_ERR_FORMAT, "plan gives cached blocks to a context-parallel engine")
				  : gs_kv_seq_admit_cp(&e->pool, &s->kv, ps->max_positions, ps->cp_k, ps->cp_first);
	else
		st = gs_kv_seq_admit_cached(&e->pool, &s->kv, ps->max_positions, p->cached + ps->cached0, ps->n_cached);
	if (st != GS_OK)
		return st;
	s->used = true;
	s->id = ps->id;
	s->p = ps->params;
	s->max_positions = ps->max_positions;
	s->next_token = -1;
	s->hist = malloc(sizeof(int32_t) * ((size_t)ps->max_positions + 1));
	if (s->hist) { /* the cached prefix's tokens, as the plan carries only the rest */
		gs_kv_cached_tokens(&e->pool, p->cached + ps->cached0, ps->n_cached, s->hist);
		s->n_hist = s->kv.n_past;
	}
	st = s->hist ? gs_sampler_create(&s->p.sp, sampler_capacity(e), &s->smp)
		     : gs_errorf(GS_ERR_NOMEM, "out of memory");
	if (st == GS_OK)
		st = gs_sampler_reserve(s->smp, (size_t)ps->max_positions + 1);
	if (st == GS_OK && ps->params.response_format)
		st = grammar_admit(e, s, ps->params.response_format);
	if (st == GS_OK && ps->n_images > 0)
		st = images_admit(e, s, ps);
	if (st == GS_OK && s->p.sp.min_tokens > 0) {
		/* min_tokens keeps away what would end the sequence: eos (unless ignored), stop ids */
		int32_t ids[GS_MAX_EOS + GS_MAX_STOP_IDS];
		size_t n = 0;
		for (int32_t i = 0; !s->p.ignore_eos && i < e->m->cfg.n_eos; i++)
			ids[n++] = e->m->cfg.eos_ids[i];
		for (int32_t i = 0; i < s->p.n_stop_ids && i < GS_MAX_STOP_IDS; i++)
			ids[n++] = s->p.stop_ids[i];
		st = gs_sampler_set_min_tokens_ids(s->smp, ids, n);
	}
	if (st != GS_OK)
		seq_release(e, ps->slot);
	return st;
}

static bool wants_logprobs(const struct eng_seq *s)
{
	return s->p.logprobs || s->p.top_logprobs > 0;
}

/* The batch with the logits left in backend memory, then the candidates op over its rows:
 * e->cands gets what gs_sampler_local_candidates() would give, row by row (gs_kernels.h). */
static enum gs_status device_candidates(struct gs_engine *e, const struct gs_plan *p, int32_t rows, int32_t K)
{
	const struct gs_backend be = e->f->be;
	const struct gs_shard *sh = &e->m->shard;
	const float *lg;
	size_t n_edit = 0;
	bool masked = false;

	GS_TRY(gs_kv_forward_batch_dev(e->f, &e->pool, p->ids, e->bseqs, p->n_seqs, &lg));
	if (!rows)
		return GS_OK;
	/* Each row's parameters, from the sampler, and its logit edits (penalties, bias, min_tokens
	 * mask) for this rank's slice, packed one row after another. */
	for (int32_t r = 0; r < rows; r++) {
		struct eng_seq *s = &e->seqs[e->row_slot[r]];
		struct gs_cand_row *cr = &e->h_crow[r];
		const struct gs_logit_edit *ed;
		size_t ne = gs_sampler_rank_edits(s->smp, sh->vocab0, sh->n_vocab, s->hist, (size_t)s->n_hist, &ed);
		*cr = (struct gs_cand_row){ .edit0 = (int32_t)n_edit, .n_edit = (int32_t)ne,
					    .want_lse = sh->n_vocab && wants_logprobs(s), .masked = s->grammar != NULL };
		if (s->grammar) { /* structured output: the row's mask goes up with the parameters */
			grammar_allow(e, s, e->allow + (size_t)r * (size_t)sh->n_vocab);
			masked = true;
		}
		gs_sampler_rank_params(s->smp, &cr->penalty, &cr->frequency, &cr->presence, &cr->temperature);
		if (n_edit + ne > e->hist_cap) {
			size_t cap = n_edit + ne > 2 * e->hist_cap ? n_edit + ne : 2 * e->hist_cap;
			struct gs_logit_edit *h = realloc(e->h_edit, sizeof(*h) * cap);
			void *d = be.iface->alloc(be.ctx, sizeof(struct gs_logit_edit) * cap);
			if (!h || !d) {
				if (h)
					e->h_edit = h;
				if (d)
					be.iface->release(be.ctx, d);
				return gs_errorf(GS_ERR_NOMEM, "engine: out of memory for %zu logit edits", cap);
			}
			if (e->d_edit)
				be.iface->release(be.ctx, e->d_edit);
			e->h_edit = h, e->d_edit = d, e->hist_cap = cap;
		}
		if (ne)
			memcpy(e->h_edit + n_edit, ed, sizeof(*ed) * ne);
		n_edit += ne;
	}
	be.iface->upload(be.ctx, e->d_crow, e->h_crow, sizeof(struct gs_cand_row) * (size_t)rows);
	if (n_edit)
		be.iface->upload(be.ctx, e->d_edit, e->h_edit, sizeof(struct gs_logit_edit) * n_edit);
	if (masked)
		be.iface->upload(be.ctx, e->d_allow, e->allow, (size_t)rows * (size_t)sh->n_vocab);
	struct gs_cand_args a = { .out = e->d_cands, .logits = lg, .row = e->d_crow, .edit = e->d_edit,
				  .allow = masked ? e->d_allow : NULL,
				  .rows = rows, .cols = sh->n_vocab, .k = K, .vocab0 = sh->vocab0 };
	be.iface->candidates(be.ctx, &a);
	be.iface->download(be.ctx, e->cands, e->d_cands, sizeof(struct gs_cand) * (size_t)rows * (size_t)(K + 1));
	return GS_OK;
}

/* Run the plan's batch; then reduce each logits row to candidates and gather them on the
 * leader. Returns the number of logits rows in *n_rows. */
static void group_used(const struct gs_engine *e, int32_t *used);

/* GS_KV_CHECK: this rank's pool against its sequences' tables; with context parallelism the
 * leader's accounting of group 0's blocks against its pool, too. */
static enum gs_status kv_check(const struct gs_engine *e)
{
	int32_t used[GS_KV_MAX_CP];

	if (!gs_engine_kv_consistent(e))
		return gs_errorf(GS_ERR_INTERNAL, "KV check: the pool of rank %d is not consistent after step %llu",
				 gs_comm_rank(e->comm), (unsigned long long)e->st.steps);
	if (e->cp > 1 && e->leader) {
		group_used(e, used);
		if (e->pool.cache.n_global_layers && used[0] != e->pool.cache.n_global_blocks - gs_kv_global_free(&e->pool))
			return gs_errorf(GS_ERR_INTERNAL, "KV check: the leader counts %d blocks on group 0, its pool %d",
					 used[0], e->pool.cache.n_global_blocks - gs_kv_global_free(&e->pool));
	}
	return GS_OK;
}

static enum gs_status exec_plan(struct gs_engine *e, const struct gs_plan *p, int32_t *n_rows, int32_t K)
{
	const struct gs_shard *sh = &e->m->shard;
	int32_t rows = 0;

	for (int32_t i = 0; i < p->n_seqs; i++) {
		const struct gs_plan_seq *ps = &p->seqs[i];
		struct eng_seq *s;
		if (ps->slot < 0 || ps->slot >= e->cfg.max_seqs || ps->tok0 < 0 || ps->n_tokens < 1 ||
		    ps->tok0 + ps->n_tokens > p->n_ids)
			return gs_errorf(GS_ERR_FORMAT, "malformed plan entry %d", i);
		if (ps->admit)
			GS_TRY(apply_admit(e, p, ps));
		s = &e->seqs[ps->slot];
		if (!s->used || s->n_hist + ps->n_tokens > s->max_positions + 1)
			return gs_errorf(GS_ERR_FORMAT, "plan runs slot %d beyond its reservation", ps->slot);
		if (ps->images && s->n_images > s->img_first && !s->img_rows)
			GS_TRY(images_encode(e, s, ps));
		if (s->sampled && s->grammar)
			grammar_advance(e, s, p->ids + ps->tok0, ps->n_tokens);
		memcpy(s->hist + s->n_hist, p->ids + ps->tok0, sizeof(int32_t) * (size_t)ps->n_tokens);
		s->n_hist += ps->n_tokens;
		int32_t img_row0 = s->img_fed - s->img_first * e->m->cfg.vision.mm_tokens_per_image;
		if (s->n_images)
			images_scan(e, s, s->n_hist - ps->n_tokens, s->n_hist);
		/* Logits are first wanted after the prompt's last chunk: every rank learns where the
		 * prompt ends (frequency/presence penalties and min_tokens count after it). */
		if (ps->want_logits && !s->sampled) {
			gs_sampler_set_prompt(s->smp, (size_t)s->n_hist);
			s->sampled = true;
		}
		e->bseqs[i] = (struct gs_batch_seq){
			.kv = &s->kv, .n_tokens = ps->n_tokens, .want_logits = ps->want_logits, .img_rows = s->img_rows,
			.n_img_rows = s->img_rows ? (s->n_images - s->img_first) * e->m->cfg.vision.mm_tokens_per_image : 0,
			.img_row0 = img_row0 };
		if (ps->want_logits)
			e->row_slot[rows++] = ps->slot;
	}
	if (e->dev_cands) {
		if (p->n_seqs)
			GS_TRY(device_candidates(e, p, rows, K));
	} else if (p->n_seqs) {
		GS_TRY(gs_kv_forward_batch(e->f, &e->pool, p->ids, e->bseqs, p->n_seqs, rows ? e->logits : NULL));
	}
	/* Blocks filled completely join the prefix cache (every rank alike); a prompt that is in
	 * needs its projector rows no more. */
	for (int32_t i = 0; i < p->n_seqs; i++) {
		struct eng_seq *s = &e->seqs[p->seqs[i].slot];
		struct gs_kv_images im = { s->n_img_pos, s->img_pos, e->m->cfg.vision.mm_tokens_per_image, s->img_key };
		gs_kv_seq_commit(&e->pool, &s->kv, s->hist, s->n_images ? &im : NULL);
		if (s->img_rows && s->sampled) {
			if (e->f->be.iface->release)
				e->f->be.iface->release(e->f->be.ctx, s->img_rows);
			s->img_rows = NULL;
		}
	}

	if (e->kv_check) /* tests: every block accounted for on every rank, every step */
		GS_TRY(kv_check(e));

	/* Distributed sampling, rank side: K candidates + the slice's log-sum-exp per row. */
	for (int32_t r = 0; r < rows && !e->dev_cands; r++) {
		struct eng_seq *s = &e->seqs[e->row_slot[r]];
		float *lg = e->logits + (size_t)r * sh->n_vocab;
		struct gs_cand *c = e->cands + (size_t)r * (K + 1);
		if (s->grammar)
			grammar_mask_row(e, s, lg);
		size_t got = gs_sampler_local_candidates(s->smp, lg, sh->vocab0, sh->n_vocab, s->hist, (size_t)s->n_hist,
							 (size_t)K, e->m_ids, e->m_proc);
		for (int32_t k = 0; k < K; k++) {
			/* an id the grammar refuses is no candidate: the merge never sees it */
			if ((size_t)k < got && !(s->grammar && !e->allow[e->m_ids[k] - sh->vocab0]))
				c[k] = (struct gs_cand){ e->m_ids[k], e->m_proc[k], lg[e->m_ids[k] - sh->vocab0] };
			else
				c[k] = (struct gs_cand){ -1, -INFINITY, -INFINITY };
		}
		/* the slice's log-sum-exp, only for requests that report logprobs (a pass over V/T) */
		float lse = sh->n_vocab && wants_logprobs(s) ? gs_logsumexp(lg, (size_t)sh->n_vocab) : -INFINITY;
		c[K] = (struct gs_cand){ -2, 0, lse };
	}
	if (rows)
		GS_TRY(e->comm->iface->gather(e->comm->ctx, e->cands, e->all_cands,
					      sizeof(struct gs_cand) * (size_t)rows * (size_t)(K + 1), 0));
	*n_rows = rows;
	return GS_OK;
}

/* The length of a plan that is none: the leader's keepalive (gs_engine_keepalive). */
#define PLAN_TICK UINT64_MAX

static enum gs_status broadcast_plan(struct gs_engine *e)
{
	uint64_t len = 0;

	if (gs_comm_size(e->comm) == 1)
		return GS_OK;
	if (e->leader)
		GS_TRY(gs_plan_pack(&e->plan, &e->plan_buf, &e->plan_buf_cap, &len));
	/* Followers wait here while the leader has no work: idle, not spinning. */
	GS_TRY(gs_comm_broadcast_idle(e->comm, &len, sizeof(len), 0));
	if (!e->leader && len == PLAN_TICK) {
		/* the leader's keepalive: no plan, a barrier that tells each side the other lives */
		gs_plan_reset(&e->plan);
		return gs_comm_barrier(e->comm);
	}
	if (!e->leader && len > e->plan_buf_cap) {
		uint8_t *nb = realloc(e->plan_buf, len);
		if (!nb)
			return gs_errorf(GS_ERR_NOMEM, "out of memory for a %llu-byte plan", (unsigned long long)len);
		e->plan_buf = nb, e->plan_buf_cap = len;
	}
	GS_TRY(e->comm->iface->broadcast(e->comm->ctx, e->plan_buf, len, 0));
	if (!e->leader)
		GS_TRY(gs_plan_unpack(&e->plan, e->plan_buf, len));
	e->last_plan_s = gs_now_s();
	return GS_OK;
}

enum gs_status gs_engine_keepalive(struct gs_engine *e)
{
	uint64_t len = PLAN_TICK;

	GS_ASSERT(e->leader);
	if (gs_comm_size(e->comm) == 1 || gs_now_s() - e->last_plan_s < GS_ENGINE_TICK_S)
		return GS_OK;
	/* A round trip, not only a broadcast: a small broadcast completes on the root even when
	 * no follower receives it, and an idle leader must notice a lost follower too (its
	 * watchdog; the coordinator through the heartbeats that stop meanwhile). */
	GS_TRY(gs_comm_broadcast_idle(e->comm, &len, sizeof(len), 0));
	GS_TRY(gs_comm_barrier(e->comm));
	e->last_plan_s = gs_now_s();
	return GS_OK;
}

enum gs_status gs_engine_follow(struct gs_engine *e)
{
	int32_t rows;

	GS_ASSERT(!e->leader);
	for (;;) {
		GS_TRY(broadcast_plan(e));
		GS_TRY(apply_releases(e, &e->plan)); /* a stop plan releases the finished ones too */
		if (e->plan.stop)
			return GS_OK;
		GS_TRY(exec_plan(e, &e->plan, &rows, step_k(e)));
	}
}

enum gs_status gs_engine_shutdown(struct gs_engine *e)
{
	GS_ASSERT(e->leader);
	gs_plan_reset(&e->plan);
	for (int32_t i = 0; i < e->cfg.max_seqs; i++) /* finished ones: their blocks back everywhere */
		if (e->seqs[i].used && e->seqs[i].finished) {
			e->plan.release[e->plan.n_release++] = i;
			seq_release(e, i);
		}
	e->plan.stop = true;
	return broadcast_plan(e);
}

/* ---- leader: one step ---------------------------------------------------------------- */

static int32_t find_slot(const struct gs_engine *e, uint64_t id)
{
	for (int32_t i = 0; i < e->cfg.max_seqs; i++)
		if (e->seqs[i].used && e->seqs[i].id == id)
			return i;
	return -1;
}

static void emit_cancel(struct gs_token_event *ev, int32_t *n, uint64_t id, int32_t n_prompt, int32_t n_gen)
{
	ev[*n] = (struct gs_token_event){ .id = id, .token = -1, .finish = GS_FINISH_CANCELLED, .n_prompt = n_prompt,
					  .n_generated = n_gen };
	(*n)++;
}

/* Cancellations and finished sequences go into this plan's release list (applied here on the
 * leader now, on followers first thing when they execute the plan). */
static void plan_releases(struct gs_engine *e, struct gs_token_event *ev, int32_t cap, int32_t *n_ev)
{
	for (int32_t c = 0; c < e->n_cancels; c++) {
		uint64_t id = e->cancels[c];
		int32_t slot = find_slot(e, id);
		if (slot >= 0) {
			struct eng_seq *s = &e->seqs[slot];
			if (!s->finished && *n_ev < cap)
				emit_cancel(ev, n_ev, id, s->n_prompt, s->n_generated);
			s->finished = true;
			continue;
		}
		for (int32_t i = 0; i < e->n_waiting; i++) {
			struct waiting_req *w = &e->waiting[(e->waiting_head + i) % e->waiting_cap];
			if (w->id != id)
				continue;
			if (*n_ev < cap)
				emit_cancel(ev, n_ev, id, w->n_prompt, 0);
			waiting_free(w);
			for (int32_t j = i; j + 1 < e->n_waiting; j++)
				e->waiting[(e->waiting_head + j) % e->waiting_cap] =
					e->waiting[(e->waiting_head + j + 1) % e->waiting_cap];
			e->n_waiting--;
			break;
		}
	}
	e->n_cancels = 0;
	for (int32_t i = 0; i < e->cfg.max_seqs; i++) {
		if (e->seqs[i].used && e->seqs[i].finished) {
			e->plan.release[e->plan.n_release++] = i;
			seq_release(e, i);
		}
	}
}

static void plan_add(struct gs_engine *e, int32_t slot, const int32_t *ids, int32_t n, bool want_logits)
{
	struct gs_plan *p = &e->plan;
	struct gs_plan_seq *ps = &p->seqs[p->n_seqs++];

	*ps = (struct gs_plan_seq){ .slot = slot, .tok0 = p->n_ids, .n_tokens = n, .want_logits = want_logits };
	memcpy(p->ids + p->n_ids, ids, sizeof(int32_t) * (size_t)n);
	p->n_ids += n;
}

/* Context parallelism, leader: the global blocks each group's admitted sequences hold or have
 * reserved (their share of blocks_for(max_positions), from admission to release). */
static void group_used(const struct gs_engine *e, int32_t *used)
{
	for (int32_t c = 0; c < e->cp; c++)
		used[c] = 0;
	for (int32_t i = 0; i < e->cfg.max_seqs; i++) {
		const struct eng_seq *s = &e->seqs[i];
		if (!s->used || !e->pool.cache.n_global_layers)
			continue;
		for (int32_t c = 0; c < e->cp; c++)
			used[c] += gs_kv_cp_blocks(e->cp, s->kv.cp_k, s->kv.cp_first, c,
						   gs_kv_global_blocks_for(s->max_positions));
	}
}

static void build_plan(struct gs_engine *e)
{
	struct gs_plan *p = &e->plan;
	int32_t budget = e->cfg.max_batch_tokens;

	e->plan_no++;
	/* 1. Every running decode gets its token. */
	e->n_decode = 0;
	for (int32_t i = 0; i < e->cfg.max_seqs && budget > 0; i++) {
		struct eng_seq *s = &e->seqs[i];
		if (s->used && s->n_prefilled == s->n_prompt && s->next_token >= 0) {
			plan_add(e, i, &s->next_token, 1, true);
			s->next_token = -1;
			budget--;
			e->n_decode++;
		}
	}
	/* 2. Prefills in progress continue, in slot order. */
	for (int32_t i = 0; i < e->cfg.max_seqs && budget > 0; i++) {
		struct eng_seq *s = &e->seqs[i];
		if (s->used && s->n_prefilled < s->n_prompt) {
			/* an image is fed whole in one step (its tokens attend to each other both ways) */
			int32_t c = gs_forward_chunk_len(e->m, s->prompt, s->n_prompt, s->n_prefilled, budget);
			if (c < 1)
				continue;
			plan_add(e, i, s->prompt + s->n_prefilled, c, s->n_prefilled + c == s->n_prompt);
			s->n_prefilled += c;
			s->prefill_plan = e->plan_no;
			budget -= c;
		}
	}
	/* 3. Admit from the queue head while a slot, the KV reservation and budget allow (FIFO:
	 *    the head is never overtaken, so large requests are not starved). */
	while (e->n_waiting > 0 && budget > 0) {
		struct waiting_req *w = &e->waiting[e->waiting_head];
		int32_t slot = -1, maxpos = w->n_prompt + w->p.max_tokens - 1, c, n_hit, pre;
		struct gs_plan_seq *ps;
		for (int32_t i = 0; i < e->cfg.max_seqs; i++)
			if (!e->seqs[i].used) {
				slot = i;
				break;
			}
		if (slot < 0)
			break;
		/* n > 1 (ARCHITECTURE.md §5): choice i > 0 waits at the queue head until choice 0's
		 * prompt has been through a forward pass, so that its full blocks are in the prefix
		 * cache; nothing behind it is admitted meanwhile, so the group's reservation holds. */
		if (w->sibling && e->pool.prefix_cache) {
			int32_t ls = find_slot(e, w->lead_id);
			if (ls >= 0 && !e->seqs[ls].finished &&
			    (e->seqs[ls].n_prefilled < e->seqs[ls].n_prompt || e->seqs[ls].prefill_plan == e->plan_no))
				break;
		}
		/* The longest cached prefix, taken if the request fits with it. Without the hit
		 * it could only need more blocks, so a miss here is not worth a second look. */
		struct gs_kv_images im = { w->n_images, w->img_pos, e->m->cfg.vision.mm_tokens_per_image, w->img_key };
		int32_t cp_k = 1, cp_first = 0;
		if (e->cp > 1) { /* context parallelism: a placement over the groups, or wait */
			int32_t used[GS_KV_MAX_CP];
			group_used(e, used);
			n_hit = 0;
			if (!gs_kv_cp_place(&e->pool, used, maxpos, w->group_n > 1 ? w->group_n : 1, &cp_k, &cp_first))
				break;
		} else {
			n_hit = gs_kv_prefix_lookup(&e->pool, w->prompt, w->n_prompt, w->n_images ? &im : NULL, e->hit,
						    e->hit_cap);
			if (!gs_kv_can_admit_cached(&e->pool, maxpos, e->hit, n_hit))
				break;
		}
		if (w->group_n > 1) { /* choice 0 of n: all n slots and worst cases (CP: placed above), or wait */
			int32_t free_slots = 0;
			for (int32_t i = 0; i < e->cfg.max_seqs; i++)
				free_slots += !e->seqs[i].used;
			if (free_slots < w->group_n ||
			    (e->cp == 1 && !gs_kv_can_admit_group(&e->pool, maxpos, e->hit, n_hit, w->group_n)))
				break;
		}
		pre = n_hit * GS_KV_BLOCK;
		c = gs_forward_chunk_len(e->m, w->prompt, w->n_prompt, pre, budget);
		if (c < 1) /* an image right at the start does not fit this step's budget: next step */
			break;
		plan_add(e, slot, w->prompt + pre, c, pre + c == w->n_prompt);
		ps = &p->seqs[p->n_seqs - 1];
		ps->admit = true;
		ps->id = w->id;
		ps->max_positions = maxpos;
		ps->cp_k = cp_k;
		ps->cp_first = cp_first;
		if (cp_k > 1)
			gs_log(GS_LOG_INFO, "engine: request %llu (%d positions) spread over %d context-parallel groups from "
			       "group %d", (unsigned long long)w->id, maxpos, cp_k, cp_first);
		ps->params = w->p;
		ps->images = w->pixels;
		ps->n_images = w->n_images;
		ps->image_bytes = w->n_images ? (int64_t)image_bytes(e) : 0;
		if (gs_plan_add_cached(p, ps, e->hit, n_hit) != GS_OK) {
			/* out of memory for the list: it stays queued (the next step tries again) */
			ps->n_tokens = 0;
			p->n_ids -= c;
			p->n_seqs--;
			break;
		}
		if (e->pool.prefix_cache) {
			e->st.prefix_query_tokens += (uint64_t)w->n_prompt;
			e->st.prefix_hit_tokens += (uint64_t)pre;
		}
		e->waiting_head = (e->waiting_head + 1) % e->waiting_cap;
		e->n_waiting--;
		/* The leader admits now, so the next admission check of this plan sees the
		 * reservation; followers admit when they execute the plan. */
		if (apply_admit(e, p, ps) != GS_OK)
			GS_ASSERT(!"admission failed after the check");
		/* the plan now carries the sequence's copy of response_format (packed below) */
		ps->params.response_format = e->seqs[slot].rf;
		e->seqs[slot].pixels = w->pixels; /* the plan's images until they are encoded */
		w->pixels = NULL;
		e->seqs[slot].prompt = w->prompt;
		w->prompt = NULL;
		waiting_free(w);
		e->seqs[slot].n_prompt = w->n_prompt;
		e->seqs[slot].n_prefilled = pre + c;
		e->seqs[slot].prefill_plan = e->plan_no;
		budget -= c;
	}
}

static bool is_stop(const struct gs_engine *e, const struct eng_seq *s, int32_t tok)
{
	if (!s->p.ignore_eos && gs_config_is_eos(&e->m->cfg, tok))
		return true;
	for (int32_t i = 0; i < s->p.n_stop_ids; i++)
		if (s->p.stop_ids[i] == tok)
			return true;
	return false;
}

/* Leader: merge the T ranks' candidates of each row, draw, emit events. */
static void sample_rows(struct gs_engine *e, int32_t rows, int32_t K, struct gs_token_event *ev, int32_t cap,
			int32_t *n_ev)
{
	/* group 0's T ranks (world ranks 0..T-1 come first in the gather); with context
	 * parallelism the other groups made the same logits */
	int32_t T = e->tp;

	for (int32_t r = 0; r < rows; r++) {
		struct eng_seq *s = &e->seqs[e->row_slot[r]];
		size_t n = 0;
		double lse_sum = 0, lse_max = -INFINITY;
		struct gs_token_event *x;
		int32_t tok;
		float lp;

		for (int32_t t = 0; t < T; t++) {
			const struct gs_cand *c = e->all_cands + ((size_t)t * rows + r) * (K + 1);
			for (int32_t k = 0; k < K; k++)
				if (c[k].id >= 0)
					e->m_ids[n] = c[k].id, e->m_proc[n] = c[k].proc, n++;
			if (c[K].raw > lse_max)
				lse_max = c[K].raw;
		}
		for (int32_t t = 0; t < T; t++)
			lse_sum += exp(e->all_cands[((size_t)t * rows + r) * (K + 1) + K].raw - lse_max);
		tok = gs_sampler_sample_candidates(s->smp, e->m_ids, e->m_proc, n, &lp);
		GS_ASSERT(tok >= 0 && *n_ev < cap); /* K >= 1 candidates per rank; cap checked per step */
		x = &ev[(*n_ev)++];
		memset(x, 0, sizeof(*x));
		x->id = s->id;
		x->token = tok;
		/* logprobs: log-softmax of the model's raw logits (what vLLM reports by default). */
		if (wants_logprobs(s)) {
			double lse = lse_max + log(lse_sum);
			struct gs_cand best[GS_MAX_TOP_LOGPROBS];
			int32_t nb = 0;
			for (int32_t t = 0; t < T; t++) {
				const struct gs_cand *c = e->all_cands + ((size_t)t * rows + r) * (K + 1);
				for (int32_t k = 0; k < K; k++) {
					if (c[k].id < 0)
						continue;
					if (c[k].id == tok)
						x->logprob = (float)(c[k].raw - lse);
					/* insertion into the top list by raw logit (ties: lower id) */
					if (nb < s->p.top_logprobs || (nb > 0 && (c[k].raw > best[nb - 1].raw ||
					    (c[k].raw == best[nb - 1].raw && c[k].id < best[nb - 1].id)))) {
						int32_t j = nb < s->p.top_logprobs ? nb++ : nb - 1;
						while (j > 0 && (c[k].raw > best[j - 1].raw ||
								 (c[k].raw == best[j - 1].raw && c[k].id < best[j - 1].id))) {
							best[j] = best[j - 1];
							j--;
						}
						best[j] = c[k];
					}
				}
			}
			x->n_top = nb;
			for (int32_t j = 0; j < nb; j++)
				x->top_ids[j] = best[j].id, x->top_logprobs[j] = (float)(best[j].raw - lse);
		}
		s->n_generated++;
		e->st.tokens_generated++;
		x->n_prompt = s->n_prompt;
		x->n_generated = s->n_generated;
		if (is_stop(e, s, tok))
			x->finish = GS_FINISH_STOP;
		else if (s->n_generated >= s->p.max_tokens)
			x->finish = GS_FINISH_LENGTH;
		if (x->finish != GS_FINISH_NONE)
			s->finished = true;
		else
			s->next_token = tok;
		e->st.finished += x->finish != GS_FINISH_NONE;
	}
}

enum gs_status gs_engine_step(struct gs_engine *e, struct gs_token_event *ev, int32_t cap, int32_t *n_ev)
{
	double t0 = gs_now_s(), t1, t2;
	int32_t rows = 0, K = step_k(e), dec = 0;

	GS_ASSERT(e->leader);
	*n_ev = 0;
	/* Every sampled token must reach the caller: a dropped one would stall its sequence. */
	if (cap < e->cfg.max_seqs + e->n_cancels)
		return gs_errorf(GS_ERR_INVALID_ARG, "event buffer of %d < %d running + %d cancelled", cap,
				 e->cfg.max_seqs, e->n_cancels);
	gs_plan_reset(&e->plan);
	plan_releases(e, ev, cap, n_ev);
	build_plan(e);
	GS_TRY(broadcast_plan(e));
	t1 = gs_now_s();
	/* The leader applied releases and admissions while planning. */
	dec = e->n_decode;
	for (int32_t i = 0; i < e->plan.n_seqs; i++)
		e->plan.seqs[i].admit = false;
	GS_TRY(exec_plan(e, &e->plan, &rows, K));
	t2 = gs_now_s();
	sample_rows(e, rows, K, ev, cap, n_ev);

	e->st.steps++;
	e->st.last_batch_seqs = e->plan.n_seqs;
	e->st.last_batch_tokens = e->plan.n_ids;
	e->st.last_decode_tokens = dec;
	e->st.tokens_decode += (uint64_t)dec;
	e->st.tokens_prefill += (uint64_t)(e->plan.n_ids - dec);
	e->st.last_step_s = gs_now_s() - t0;
	e->st.step_s_total += e->st.last_step_s;
	e->st.plan_s_total += t1 - t0;
	e->st.sample_s_total += gs_now_s() - t2;
	return GS_OK;
}

void gs_engine_get_stats(const struct gs_engine *e, struct gs_engine_stats *s)
{
	*s = e->st;
	s->running = 0;
	for (int32_t i = 0; i < e->cfg.max_seqs; i++)
		s->running += e->seqs[i].used;
	s->waiting = e->n_waiting;
	s->max_seqs = e->cfg.max_seqs;
	s->device_candidates = e->dev_cands;
	s->max_context = e->cfg.max_context;
	s->kv_global_total = e->pool.cache.n_global_blocks;
	s->kv_global_used = e->pool.cache.n_global_blocks - e->pool.n_gfree - e->pool.glru.n;
	s->kv_global_cached = e->pool.glru.n;
	s->prefix_cache = e->pool.prefix_cache;
	s->prefix_evictions = e->pool.evictions;
	s->kv_global_reserved = e->pool.g_reserved;
	s->kv_global_free = gs_kv_global_free(&e->pool);
	s->kv_local_total = e->pool.cache.n_local_blocks;
	s->kv_local_used = e->pool.cache.n_local_blocks - e->pool.n_lfree - e->pool.llru.n;
	s->kv_bytes = e->pool.cache.bytes;
	s->tp = e->tp;
	s->cp = e->cp;
	s->sharded_running = 0;
	if (e->cp > 1) {
		group_used(e, s->kv_group_used);
		for (int32_t c = 0; c < e->cp; c++)
			s->kv_group_free[c] = e->pool.cache.n_global_blocks - s->kv_group_used[c];
		for (int32_t i = 0; i < e->cfg.max_seqs; i++)
			s->sharded_running += e->seqs[i].used && e->seqs[i].kv.cp_k > 1;
	} else {
		s->kv_group_free[0] = s->kv_global_free;
		s->kv_group_used[0] = s->kv_global_total - s->kv_global_free;
	}
}

bool gs_engine_kv_whole(const struct gs_engine *e)
{
	for (int32_t i = 0; i < e->cfg.max_seqs; i++)
		if (e->seqs[i].used)
			return false;
	return gs_kv_pool_consistent(&e->pool, NULL, 0);
}

bool gs_engine_kv_consistent(const struct gs_engine *e)
{
	const struct gs_kv_seq **seqs = malloc(sizeof(*seqs) * (size_t)e->cfg.max_seqs);
	int32_t n = 0;
	bool ok;

	if (!seqs)
		return false;
	for (int32_t i = 0; i < e->cfg.max_seqs; i++)
		if (e->seqs[i].used)
			seqs[n++] = &e->seqs[i].kv;
	ok = gs_kv_pool_consistent(&e->pool, seqs, n);
	free(seqs);
	return ok;
}

void gs_engine_test_hash_mask(struct gs_engine *e, uint64_t mask)
{
	e->pool.hash_mask = mask;
}
