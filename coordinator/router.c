/* gemmashard coordinator: routing and admission (gs_coord.h): validation of a gs_gen_spec,
 * the chat template and tokenizer, the concurrency limit, and the choice of engine (least
 * loaded among those that could hold the request), also when a request moves off a lost
 * engine. Locks and threads: coord_internal.h. */
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>

#include "coord_internal.h"
#include "gs_chat.h"
#include "gs_util.h"

/* ---- routing ----------------------------------------------------------------------------- */

static int32_t blocks_for(int32_t positions)
{
	return (positions + GS_KV_BLOCK_TOKENS - 1) / GS_KV_BLOCK_TOKENS;
}

/* Called with c->mu held. The least-loaded healthy engine that could hold the request, or
 * NULL with *why_err set: UNAVAILABLE (no engine up) or TOO_LARGE (none could ever). */
static struct engine *route_locked(struct gs_coord *c, const struct gs_creq *r, const struct engine *avoid,
				   enum gs_cerr *why_err, int32_t *best_ctx)
{
	struct engine *best = NULL;
	int32_t need = blocks_for(r->n_prompt + r->max_tokens);
	bool any_up = false;

	*best_ctx = 0;
	for (struct engine *e = c->engines; e; e = e->next) {
		if (!e->up || e == avoid || e->model != r->model)
			continue;
		any_up = true;
		if (e->max_context > *best_ctx)
			*best_ctx = e->max_context;
		if (r->n_prompt + r->max_tokens > e->max_context || need > e->kv_blocks_total)
			continue;
		if (!best) {
			best = e;
			continue;
		}
		bool fits_e = e->hb_kv_free - e->reserved_since_hb >= need;
		bool fits_b = best->hb_kv_free - best->reserved_since_hb >= need;
		if (fits_e != fits_b) {
			if (fits_e)
				best = e;
			continue;
		}
		if (e->inflight < best->inflight ||
		    (e->inflight == best->inflight &&
		     e->hb_kv_free - e->reserved_since_hb > best->hb_kv_free - best->reserved_since_hb))
			best = e;
	}
	if (!best)
		*why_err = any_up ? GS_CERR_TOO_LARGE : GS_CERR_UNAVAILABLE;
	return best;
}

/* Called with c->mu held: put r on e (the caller sends the Submit after unlocking). */
static void attach_locked(struct engine *e, struct gs_creq *r)
{
	creq_list_del(r);
	creq_list_add(&e->head, r);
	r->eng = e;
	e->inflight++;
	e->reserved_since_hb += blocks_for(r->n_prompt + r->max_tokens);
	atomic_fetch_add(&r->refs, 1); /* the engine's reference */
}

/* Called with c->mu held: take r off its engine (the engine's reference moves to the caller). */
void creq_detach_locked(struct gs_creq *r)
{
	struct engine *e = r->eng;
	if (!e)
		return;
	creq_list_del(r);
	e->inflight--;
	r->eng = NULL;
}

/* Submit the n choices rs[0..n) of one request to one engine other than avoid, in one Submit
 * (for n > 1 the engine prefills the prompt once, §5). Takes and drops c->mu. Returns the error
 * class (NONE on success). */
static enum gs_cerr dispatch(struct gs_coord *c, struct gs_creq **rs, int n, const struct engine *avoid, char *why,
			     size_t cap)
{
	for (int tries = 0; tries < 8; tries++) {
		enum gs_cerr err = GS_CERR_NONE;
		int32_t best_ctx;

		pthread_mutex_lock(&c->mu);
		struct engine *e = route_locked(c, rs[0], avoid, &err, &best_ctx);
		if (!e) {
			pthread_mutex_unlock(&c->mu);
			if (err == GS_CERR_UNAVAILABLE)
				snprintf(why, cap, "no engine is serving model \"%s\" right now", rs[0]->model->name);
			else
				snprintf(why, cap,
					 "can never fit: %d prompt + %d max_tokens tokens exceed every engine's "
					 "context (largest %d) or KV capacity",
					 rs[0]->n_prompt, rs[0]->max_tokens, best_ctx);
			return err;
		}
		if (e->max_seqs < n) { /* the engine admits all n at once or never */
			int32_t seqs = e->max_seqs;
			pthread_mutex_unlock(&c->mu);
			snprintf(why, cap, "can never fit: n = %d choices run at once, more than the engine's %d sequences",
				 n, seqs);
			return GS_CERR_TOO_LARGE;
		}
		for (int i = 0; i < n; i++)
			attach_locked(e, rs[i]);
		pthread_mutex_unlock(&c->mu);
		if (engine_send_submit(e, rs[0], n) == GS_OK)
			return GS_CERR_NONE;
		gs_log(GS_LOG_WARN, "coordinator: submit to engine %s failed: %s", e->id, gs_last_error());
		gs_clear_error();
		shutdown(e->fd, SHUT_RDWR);
		int detached = 0;
		pthread_mutex_lock(&c->mu);
		for (int i = 0; i < n; i++)
			if (rs[i]->eng == e) {
				creq_detach_locked(rs[i]);
				e->up = false;
				detached |= 1 << i;
			}
		pthread_mutex_unlock(&c->mu);
		if (!(detached & 1))
			return GS_CERR_NONE; /* the link reader already failed or moved them */
		for (int i = 0; i < n; i++)
			if (detached & (1 << i))
				creq_unref(rs[i]); /* the engine's reference */
		avoid = e;
	}
	snprintf(why, cap, "no engine accepted the request");
	return GS_CERR_UNAVAILABLE;
}

/* Submit r to some engine other than avoid; on failure finish it with the error. Takes and
 * drops c->mu. Returns the error class (NONE on success). */
enum gs_cerr coord_dispatch(struct gs_coord *c, struct gs_creq *r, const struct engine *avoid, char *why,
			    size_t cap)
{
	return dispatch(c, &r, 1, avoid, why, cap);
}

/* ---- submit ------------------------------------------------------------------------------ */

static enum gs_cerr invalid(char *why, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static enum gs_cerr invalid(char *why, size_t cap, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, cap, fmt, ap);
	va_end(ap);
	return GS_CERR_INVALID;
}

/* Text to tokens with m's tokenizer: chat messages through the template, or a raw prompt with
 * <bos>. */
static enum gs_cerr spec_tokens(const struct gs_coord_model *m, const struct gs_gen_spec *s, int32_t **ids,
				size_t *n, char *why, size_t cap)
{
	char *text = NULL;
	const char *src;
	bool add_bos;
	enum gs_status st;

	if (s->prompt && s->n_messages > 0)
		return invalid(why, cap, "give either prompt or messages, not both");
	if (s->prompt_ids) {
		int32_t n_vocab = gs_tokenizer_n_vocab(m->tok);
		if (s->prompt || s->n_messages > 0)
			return invalid(why, cap, "give either a token-id prompt or a text prompt, not both");
		if (s->n_prompt_ids < 1)
			return invalid(why, cap, "prompt: a token-id prompt must not be empty");
		for (int32_t i = 0; i < s->n_prompt_ids; i++)
			if (s->prompt_ids[i] < 0 || s->prompt_ids[i] >= n_vocab)
				return invalid(why, cap, "prompt: token id %d is outside the vocabulary (0..%d)",
					       (int)s->prompt_ids[i], (int)n_vocab - 1);
		*ids = malloc(sizeof(int32_t) * (size_t)s->n_prompt_ids);
		if (!*ids)
			return GS_CERR_INTERNAL;
		memcpy(*ids, s->prompt_ids, sizeof(int32_t) * (size_t)s->n_prompt_ids);
		*n = (size_t)s->n_prompt_ids;
		return GS_CERR_NONE;
	}
	if (s->prompt) {
		src = s->prompt;
		add_bos = true;
	} else {
		if (s->n_messages <= 0)
			return invalid(why, cap, "messages must not be empty");
		struct gs_chat_msg *cm = calloc((size_t)s->n_messages, sizeof(*cm));
		if (!cm)
			return GS_CERR_INTERNAL;
		for (int i = 0; i < s->n_messages; i++)
			cm[i] = s->messages ? s->messages[i] : (struct gs_chat_msg){ s->roles[i], s->contents[i], NULL, 0 };
		if (s->n_messages == 1 && cm[0].role && strcmp(cm[0].role, "system") == 0) {
			free(cm);
			return invalid(why, cap, "messages has only a system message; add a user message");
		}
		st = gs_chat_render(cm, (size_t)s->n_messages, true, &text);
		free(cm);
		if (st != GS_OK) {
			snprintf(why, cap, "%s", gs_last_error());
			gs_clear_error();
			return st == GS_ERR_INVALID_ARG ? GS_CERR_INVALID : GS_CERR_INTERNAL;
		}
		if (s->n_images > 0) { /* the processor step: image sequences into the TEXT */
			char *x = NULL;
			int32_t markers = 0;
			st = gs_chat_expand_images(text, m->vision.mm_tokens_per_image, &x, &markers);
			free(text);
			text = x;
			if (st != GS_OK) {
				snprintf(why, cap, "%s", gs_last_error());
				gs_clear_error();
				return st == GS_ERR_INVALID_ARG ? GS_CERR_INVALID : GS_CERR_INTERNAL;
			}
			if (markers != s->n_images) {
				free(text);
				return invalid(why, cap, "messages: the text holds %d \"<start_of_image>\" markers for %d "
					       "images; send images only as image parts", (int)markers,
					       (int)s->n_images);
			}
		}
		src = text;
		add_bos = false;
	}
	if (s->n_images > 0 && !text)
		return invalid(why, cap, "images need chat messages (not a prompt)");
	st = gs_tokenizer_encode(m->tok, src, strlen(src), add_bos, ids, n);
	free(text);
	if (st != GS_OK) {
		snprintf(why, cap, "%s", gs_last_error());
		gs_clear_error();
		return st == GS_ERR_INVALID_ARG ? GS_CERR_INVALID : GS_CERR_INTERNAL;
	}
	if (m->vision.present) { /* soft tokens only where images go (the engine checks the runs) */
		int64_t soft = 0;
		for (size_t i = 0; i < *n; i++)
			soft += (*ids)[i] == m->vision.image_token_id;
		if (soft != (int64_t)s->n_images * m->vision.mm_tokens_per_image) {
			free(*ids);
			*ids = NULL;
			return invalid(why, cap, "the prompt holds %lld \"<image_soft_token>\" tokens where %d images need "
				       "%lld; send images only as image parts, never their tokens as text", (long long)soft,
				       (int)s->n_images, (long long)s->n_images * m->vision.mm_tokens_per_image);
		}
	}
	return GS_CERR_NONE;
}

static int32_t best_context(struct gs_coord *c, const struct gs_coord_model *m)
{
	int32_t best = 0;
	pthread_mutex_lock(&c->mu);
	for (struct engine *e = c->engines; e; e = e->next)
		if (e->up && e->model == m && e->max_context > best)
			best = e->max_context;
	pthread_mutex_unlock(&c->mu);
	return best;
}

/* Choice i of an n > 1 request: a copy of r (validated, not dispatched) with seed + i. */
static struct gs_creq *creq_clone(const struct gs_creq *r, int i)
{
	struct gs_creq *k = malloc(sizeof(*k));
	bool ok;

	if (!k)
		return NULL;
	memcpy(k, r, sizeof(*k));
	atomic_init(&k->refs, 1);
	k->sp.seed = r->sp.seed + (uint64_t)i;
	k->n_stop = 0;
	k->prompt = malloc(sizeof(int32_t) * (size_t)r->n_prompt);
	k->response_format = r->response_format ? strdup(r->response_format) : NULL;
	ok = k->prompt && (!r->response_format || k->response_format);
	if (k->prompt)
		memcpy(k->prompt, r->prompt, sizeof(int32_t) * (size_t)r->n_prompt);
	for (int j = 0; ok && j < r->n_stop; j++, k->n_stop++)
		ok = (k->stop[j] = strdup(r->stop[j])) != NULL;
	if (!ok) {
		for (int j = 0; j < k->n_stop; j++)
			free(k->stop[j]);
		free(k->prompt);
		free(k->response_format);
		free(k);
		return NULL;
	}
	if (k->images)
		atomic_fetch_add(&k->images->refs, 1);
	pthread_mutex_init(&k->mu, NULL);
	pthread_cond_init(&k->cv, NULL);
	gs_detok_init(&k->dt, r->model->tok);
	creq_list_init(k);
	return k;
}

enum gs_cerr gs_coord_submit(struct gs_coord *c, enum gs_api api, const struct gs_gen_spec *s,
			     gs_creq_notify_fn notify_fn, void *user, struct gs_creq **out, char *why, size_t cap)
{
	*out = NULL;
	return gs_coord_submit_n(c, api, s, 1, notify_fn, user, out, why, cap);
}

enum gs_cerr gs_coord_submit_n(struct gs_coord *c, enum gs_api api, const struct gs_gen_spec *s, int n,
			       gs_creq_notify_fn notify_fn, void *user, struct gs_creq **out, char *why, size_t cap)
{
	const struct gs_coord_limits *L = &c->limits;
	const struct gs_coord_model *model;
	struct gs_creq *r = NULL;
	int32_t *ids = NULL;
	size_t n_ids = 0;
	enum gs_cerr err;
	char msg[256];

	why[0] = '\0';
	if (n < 1 || n > GS_COORD_MAX_N) {
		snprintf(why, cap, "n must be an integer in [1, %d], got %d", GS_COORD_MAX_N, n);
		return GS_CERR_INVALID;
	}
	for (int i = 0; i < n; i++)
		out[i] = NULL;
	if ((err = gs_coord_model_find(c, s->model, &model, why, cap)) != GS_CERR_NONE ||
	    (err = gs_coord_model_images_ok(model, s->n_images, why, cap)) != GS_CERR_NONE)
		return err;
	if (s->max_tokens > L->max_tokens_limit)
		return invalid(why, cap, "max_tokens must be at most %d, got %d", L->max_tokens_limit, s->max_tokens);
	if (gs_sampling_params_validate(&s->sp, msg, sizeof(msg)) != GS_OK) {
		gs_clear_error();
		return invalid(why, cap, "%s", msg);
	}
	if (s->n_stop < 0 || s->n_stop > GS_COORD_MAX_STOP)
		return invalid(why, cap, "at most %d stop strings are allowed, got %d", GS_COORD_MAX_STOP, s->n_stop);
	for (int i = 0; i < s->n_stop; i++) {
		if (!s->stop[i] || !s->stop[i][0])
			return invalid(why, cap, "stop strings must not be empty");
		if (strlen(s->stop[i]) > GS_COORD_MAX_STOP_BYTES)
			return invalid(why, cap, "stop strings must be at most %d bytes", GS_COORD_MAX_STOP_BYTES);
	}
	if (s->top_logprobs < 0 || s->top_logprobs > GS_COORD_MAX_TOP_LOGPROBS)
		return invalid(why, cap, "top_logprobs must be an integer in [0, %d], got %d", GS_COORD_MAX_TOP_LOGPROBS,
			       s->top_logprobs);
	if (s->top_logprobs > 0 && !s->logprobs)
		return invalid(why, cap, "top_logprobs needs logprobs to be true");
	if (s->n_stop_ids < 0 || s->n_stop_ids > GS_COORD_MAX_STOP_IDS)
		return invalid(why, cap, "stop_token_ids may hold at most %d ids, got %d", GS_COORD_MAX_STOP_IDS,
			       s->n_stop_ids);
	int32_t n_vocab = gs_tokenizer_n_vocab(model->tok);
	for (int i = 0; i < s->n_stop_ids; i++)
		if (s->stop_ids[i] < 0 || s->stop_ids[i] >= n_vocab)
			return invalid(why, cap, "stop_token_ids: token id %d is outside the vocabulary (0..%d)",
				       (int)s->stop_ids[i], (int)n_vocab - 1);
	if (gs_sampling_params_validate_vocab(&s->sp, n_vocab, msg, sizeof(msg)) != GS_OK) {
		gs_clear_error();
		return invalid(why, cap, "%s", msg);
	}

	pthread_mutex_lock(&c->mu);
	bool busy = c->running + n > L->max_concurrent; /* each choice is one request in flight */
	if (!busy)
		c->running += n;
	pthread_mutex_unlock(&c->mu);
	if (busy) {
		snprintf(why, cap, "too many requests in flight (limit %d); retry later", L->max_concurrent);
		return GS_CERR_BUSY;
	}

	err = spec_tokens(model, s, &ids, &n_ids, why, cap);
	if (err != GS_CERR_NONE)
		goto fail;
	if ((int64_t)n_ids > L->max_prompt_tokens) {
		err = invalid(why, cap, "the prompt has %zu tokens, more than the limit of %d", n_ids, L->max_prompt_tokens);
		goto fail;
	}
	int32_t max_tokens = s->max_tokens;
	if (max_tokens <= 0) {
		int32_t ctx = best_context(c, model);
		max_tokens = L->default_max_tokens;
		if (ctx > 0 && ctx - (int32_t)n_ids < max_tokens)
			max_tokens = ctx - (int32_t)n_ids;
		if (max_tokens < 1)
			max_tokens = 1;
	}

	r = calloc(1, sizeof(*r));
	if (!r) {
		err = GS_CERR_INTERNAL;
		snprintf(why, cap, "coordinator: out of memory");
		goto fail;
	}
	r->c = c;
	r->api = api;
	r->model = model;
	atomic_init(&r->refs, 1);
	r->notify = notify_fn;
	r->user = user;
	r->prompt = ids;
	r->n_prompt = (int32_t)n_ids;
	ids = NULL;
	r->max_tokens = max_tokens;
	r->sp = s->sp;
	if (!s->has_seed && getrandom(&r->sp.seed, sizeof(r->sp.seed), 0) != sizeof(r->sp.seed))
		r->sp.seed = (uint64_t)(gs_now_s() * 1e9);
	for (int i = 0; i < s->n_stop; i++) {
		r->stop[i] = strdup(s->stop[i]);
		if (!r->stop[i]) {
			err = GS_CERR_INTERNAL;
			snprintf(why, cap, "coordinator: out of memory");
			goto fail_r;
		}
		r->n_stop++;
	}
	r->logprobs = s->logprobs;
	r->top_logprobs = s->top_logprobs;
	memcpy(r->stop_ids, s->stop_ids, sizeof(int32_t) * (size_t)s->n_stop_ids);
	r->n_stop_ids = s->n_stop_ids;
	r->ignore_eos = s->ignore_eos;
	if (s->response_format && !(r->response_format = strdup(s->response_format))) {
		err = GS_CERR_INTERNAL;
		snprintf(why, cap, "coordinator: out of memory");
		goto fail_r;
	}
	if (s->n_images > 0) {
		size_t each = (size_t)model->vision.image_size * (size_t)model->vision.image_size * 3;
		r->images = malloc(sizeof(*r->images) + each * (size_t)s->n_images);
		if (!r->images) {
			err = GS_CERR_INTERNAL;
			snprintf(why, cap, "coordinator: out of memory");
			goto fail_r;
		}
		atomic_init(&r->images->refs, 1);
		r->images->n = s->n_images;
		r->images->each = each;
		memcpy(r->images->px, s->images, each * (size_t)s->n_images);
	}
	r->t_submit = gs_now_s();
	r->deadline = s->deadline > 0 ? s->deadline : r->t_submit + L->default_timeout_s;
	pthread_mutex_init(&r->mu, NULL);
	pthread_cond_init(&r->cv, NULL);
	gs_detok_init(&r->dt, model->tok);
	creq_list_init(r);

	out[0] = r;
	for (int i = 1; i < n; i++)
		if (!(out[i] = creq_clone(r, i))) {
			for (int j = 0; j < i; j++)
				creq_unref(out[j]);
			out[0] = NULL;
			r = NULL;
			err = GS_CERR_INTERNAL;
			snprintf(why, cap, "coordinator: out of memory");
			goto fail;
		}
	pthread_mutex_lock(&c->mu); /* consecutive ids: the engine numbers choices id + i */
	for (int i = 0; i < n; i++)
		out[i]->id = ++c->next_id;
	pthread_mutex_unlock(&c->mu);

	err = n > 1 ? dispatch(c, out, n, NULL, why, cap) : coord_dispatch(c, r, NULL, why, cap);
	if (err != GS_CERR_NONE) {
		pthread_mutex_lock(&c->mu);
		c->running -= n;
		pthread_mutex_unlock(&c->mu);
		for (int i = 0; i < n; i++) {
			creq_unref(out[i]);
			out[i] = NULL;
		}
		return err;
	}
	pthread_mutex_lock(&c->mu);
	c->mstats[model->index].requests += (uint64_t)n;
	pthread_mutex_unlock(&c->mu);
	return GS_CERR_NONE;

fail_r:
	for (int i = 0; i < r->n_stop; i++)
		free(r->stop[i]);
	free(r->images);
	free(r->prompt);
	free(r->response_format);
	free(r);
fail:
	free(ids);
	pthread_mutex_lock(&c->mu);
	c->running -= n;
	pthread_mutex_unlock(&c->mu);
	return err;
}
