#include "gs_batch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gs_batchio.h"

/* One request in flight on the leader. */
struct flight {
	struct gs_batch_req *req;
	bool                 active;
	struct gs_detok      dt;
	char                *text;
	size_t               len, cap;
	int32_t              n_prompt;
	int32_t              n_gen;
	/* logprobs */
	char               **tok_text;
	float               *tok_lp;
	char               **top_text;
	float               *top_lp;
	int32_t              n_lp;
};

static enum gs_status append(struct flight *f, const char *s, size_t n)
{
	if (f->len + n + 1 > f->cap) {
		size_t cap = (f->len + n + 1) * 2;
		char *t = realloc(f->text, cap);
		if (!t)
			return gs_errorf(GS_ERR_NOMEM, "out of memory");
		f->text = t, f->cap = cap;
	}
	memcpy(f->text + f->len, s, n);
	f->len += n;
	f->text[f->len] = '\0';
	return GS_OK;
}

static void flight_free(struct flight *f)
{
	for (int32_t i = 0; i < f->n_lp; i++)
		free(f->tok_text[i]);
	if (f->top_text)
		for (int32_t i = 0; i < f->n_lp * f->req->top_logprobs; i++)
			free(f->top_text[i]);
	free(f->tok_text), free(f->tok_lp), free(f->top_text), free(f->top_lp), free(f->text);
	memset(f, 0, sizeof(*f));
}

static char *piece_text(const struct gs_tokenizer *tok, int32_t id)
{
	char *s = NULL;
	size_t n;
	if (gs_tokenizer_decode(tok, &id, 1, &s, &n) != GS_OK)
		return NULL;
	return s;
}

/* First stop string fully present in the text; searching only the tail the new token could
 * have completed. Returns the cut position or -1. */
static long find_stop(const struct flight *f, size_t added)
{
	const struct gs_batch_req *r = f->req;
	long best = -1;

	for (int i = 0; i < r->n_stop; i++) {
		size_t sl = strlen(r->stop[i]);
		size_t from = f->len > added + sl ? f->len - added - sl : 0;
		const char *hit = f->len >= sl ? strstr(f->text + from, r->stop[i]) : NULL;
		if (hit && (best < 0 || hit - f->text < best))
			best = hit - f->text;
	}
	return best;
}

static enum gs_status write_result(struct gs_batch_out *out, struct flight *f, enum gs_batch_finish fin)
{
	struct gs_batch_result r = {
		.id = f->req->id, .text = f->text ? f->text : "", .finish = fin, .prompt_tokens = f->n_prompt,
		.completion_tokens = f->n_gen, .has_logprobs = f->req->logprobs, .n_tokens = (size_t)f->n_lp,
		.tokens = (const char *const *)f->tok_text, .token_logprobs = f->tok_lp,
		.top_n = f->req->logprobs ? (size_t)f->req->top_logprobs : 0,
		.top_tokens = (const char *const *)f->top_text, .top_logprobs = f->top_lp,
	};
	return gs_batch_out_write(out, &r);
}

static bool split_owns(struct gs_batch_split split, const struct gs_batch_req *r)
{
	return (r->line_no - 1) % split.n == split.k;
}

enum gs_status gs_batch_run(struct gs_engine *e, const struct gs_model *m, const struct gs_tokenizer *tok,
			    const char *in_path, const char *out_path, struct gs_batch_split split)
{
	struct gs_batch_req *reqs = NULL;
	struct gs_batch_out *out = NULL;
	struct gs_batch_progress prog = { 0 };
	struct flight *fl = NULL;
	struct gs_token_event *ev = NULL;
	size_t n = 0, next = 0, done = 0, n_own = 0, n_err = 0;
	uint64_t gen_tokens = 0;
	int32_t inflight = 0, max_inflight, end_of_turn = gs_tokenizer_find(tok, "<end_of_turn>");
	size_t out_cap = gs_detok_max_out(tok) + 1;
	char *piece = malloc(out_cap);
	enum gs_status st;

	GS_ASSERT(split.n >= 1 && split.k >= 0 && split.k < split.n);
	st = gs_batch_read(in_path, &reqs, &n);
	if (st == GS_OK)
		st = gs_batch_out_open(out_path, &out);
	if (st != GS_OK || !piece)
		goto out_shutdown;
	{
		/* Twice the engine's slots: the queue behind the running batch stays full. */
		struct gs_engine_stats s;
		gs_engine_get_stats(e, &s);
		max_inflight = 2 * s.max_seqs;
	}
	fl = calloc(n ? n : 1, sizeof(*fl));
	ev = calloc(1024, sizeof(*ev));
	if (!fl || !ev) {
		st = gs_errorf(GS_ERR_NOMEM, "out of memory for %zu requests", n);
		goto out_shutdown;
	}
	for (size_t i = 0; i < n; i++) {
		n_own += split_owns(split, &reqs[i]);
		done += split_owns(split, &reqs[i]) && gs_batch_out_done(out, reqs[i].id);
	}
	gs_batch_progress_update(&prog, done, n_own, 0, stderr);

	for (;;) {
		int32_t n_ev;
		/* Submit while there is room: errors become records at once. */
		while (next < n && inflight < max_inflight) {
			struct gs_batch_req *r = &reqs[next];
			struct flight *f = &fl[next];
			int32_t *ids = NULL;
			size_t n_ids = 0;
			struct gs_req_params p = { .sp = r->sp, .max_tokens = r->max_tokens,
						   .top_logprobs = r->logprobs ? r->top_logprobs : 0,
						   .logprobs = r->logprobs };
			next++;
			if (!split_owns(split, r) || gs_batch_out_done(out, r->id))
				continue;
			f->req = r;
			if (!r->error) {
				if (end_of_turn >= 0)
					p.stop_ids[p.n_stop_ids++] = end_of_turn;
				st = gs_tokenizer_encode(tok, r->text, strlen(r->text), !r->chat, &ids, &n_ids);
				if (st == GS_OK)
					st = gs_engine_submit(e, next - 1, ids, (int32_t)n_ids, &p);
				free(ids);
				if (st == GS_OK) {
					f->active = true;
					f->n_prompt = (int32_t)n_ids;
					gs_detok_init(&f->dt, tok);
					inflight++;
					continue;
				}
			}
			{
				char msg[512];
				snprintf(msg, sizeof(msg), "line %lld: %s", (long long)r->line_no, gs_last_error());
				struct gs_batch_result er = { .id = r->id, .error = r->error ? r->error : msg,
							      .error_type = r->error ? NULL : st == GS_ERR_RANGE ? "context_length_exceeded"
														: "invalid_request_error" };
				st = gs_batch_out_write(out, &er);
				if (st != GS_OK)
					goto out_shutdown;
				n_err++;
				gs_batch_progress_update(&prog, ++done, n_own, gen_tokens, stderr);
			}
		}
		if (inflight == 0 && next >= n && gs_engine_idle(e))
			break;
		st = gs_engine_step(e, ev, 1024, &n_ev);
		if (st != GS_OK)
			goto out_shutdown;
		for (int32_t i = 0; i < n_ev; i++) {
			struct gs_token_event *x = &ev[i];
			struct flight *f = &fl[x->id];
			bool stop_tok = x->finish == GS_FINISH_STOP;
			long cut = -1;

			if (!f->active)
				continue; /* a cancellation we asked for after a stop string */
			if (x->token >= 0) {
				size_t k;
				f->n_gen = x->n_generated;
				gen_tokens++;
				if (f->req->logprobs) {
					int32_t tn = f->req->top_logprobs;
					f->tok_text = realloc(f->tok_text, sizeof(char *) * (size_t)(f->n_lp + 1));
					f->tok_lp = realloc(f->tok_lp, sizeof(float) * (size_t)(f->n_lp + 1));
					f->top_text = realloc(f->top_text, sizeof(char *) * (size_t)(f->n_lp + 1) * (size_t)(tn ? tn : 1));
					f->top_lp = realloc(f->top_lp, sizeof(float) * (size_t)(f->n_lp + 1) * (size_t)(tn ? tn : 1));
					if (!f->tok_text || !f->tok_lp || !f->top_text || !f->top_lp) {
						st = gs_errorf(GS_ERR_NOMEM, "out of memory");
						goto out_shutdown;
					}
					f->tok_text[f->n_lp] = piece_text(tok, x->token);
					f->tok_lp[f->n_lp] = x->logprob;
					for (int32_t j = 0; j < tn; j++) {
						f->top_text[(size_t)f->n_lp * tn + j] = j < x->n_top ? piece_text(tok, x->top_ids[j]) : NULL;
						f->top_lp[(size_t)f->n_lp * tn + j] = j < x->n_top ? x->top_logprobs[j] : 0;
					}
					f->n_lp++;
				}
				/* The end-of-turn / eos token ends the answer; its text is not part of it. */
				if (!stop_tok) {
					k = gs_detok_push(&f->dt, x->token, piece, out_cap);
					if ((st = append(f, piece, k)) != GS_OK)
						goto out_shutdown;
					cut = find_stop(f, k);
				}
			}
			if (cut < 0 && x->finish == GS_FINISH_NONE)
				continue;
			if (cut >= 0) {
				f->len = (size_t)cut;
				f->text[f->len] = '\0';
				gs_engine_cancel(e, x->id);
			} else {
				size_t k = gs_detok_flush(&f->dt, piece, out_cap);
				if ((st = append(f, piece, k)) != GS_OK)
					goto out_shutdown;
			}
			st = write_result(out, f, cut >= 0 || stop_tok ? GS_BATCH_FINISH_STOP : GS_BATCH_FINISH_LENGTH);
			if (st != GS_OK)
				goto out_shutdown;
			flight_free(f);
			inflight--;
			gs_batch_progress_update(&prog, ++done, n_own, gen_tokens, stderr);
		}
	}
	gs_batch_progress_finish(&prog, n_err, stderr);
	st = GS_OK;

out_shutdown:
	{
		enum gs_status st2 = gs_engine_shutdown(e);
		if (st == GS_OK)
			st = st2;
	}
	if (fl)
		for (size_t i = 0; i < n; i++)
			if (fl[i].req)
				flight_free(&fl[i]);
	free(fl);
	free(ev);
	free(piece);
	gs_batch_out_close(out);
	gs_batch_free(reqs, n);
	return st;
}
