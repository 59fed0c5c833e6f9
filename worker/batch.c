#include "gs_batch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gs_batchio.h"
#include "gs_chat.h"
#include "gs_image.h"
#include "gs_model.h"

/* One request (one choice of a line) in flight on the leader. A line with n > 1 has its
 * choices 1.. in more[]; engine ids are line * GS_BATCH_MAX_N + choice. */
struct flight {
	struct gs_batch_req *req;
	bool                 active;
	bool                 finished;    /* n > 1: this choice is over (fin), the others may not be */
	enum gs_batch_finish fin;
	int32_t              n_open;      /* choice 0: choices still running */
	struct flight       *more;        /* choice 0 of n > 1: [n - 1] */
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
	if (f->more) {
		for (int i = 0; i + 1 < f->req->n; i++)
			flight_free(&f->more[i]);
		free(f->more);
	}
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

static struct gs_batch_result flight_result(const struct flight *f)
{
	return (struct gs_batch_result){
		.id = f->req->id, .text = f->text ? f->text : "", .finish = f->fin, .prompt_tokens = f->n_prompt,
		.completion_tokens = f->n_gen, .has_logprobs = f->req->logprobs, .n_tokens = (size_t)f->n_lp,
		.tokens = (const char *const *)f->tok_text, .token_logprobs = f->tok_lp,
		.top_n = f->req->logprobs ? (size_t)f->req->top_logprobs : 0,
		.top_tokens = (const char *const *)f->top_text, .top_logprobs = f->top_lp,
	};
}

/* The line's record once all its choices are over (f: choice 0). */
static enum gs_status write_result(struct gs_batch_out *out, struct flight *f)
{
	struct gs_batch_result r = flight_result(f), ch[GS_BATCH_MAX_N];
	int n = f->req->n > 1 ? f->req->n : 1;

	if (n > 1) {
		ch[0] = r;
		for (int i = 1; i < n; i++) {
			ch[i] = flight_result(&f->more[i - 1]);
			r.completion_tokens += ch[i].completion_tokens;
		}
		r.n_choices = (size_t)n;
		r.choices = ch;
	}
	return gs_batch_out_write(out, &r);
}

static bool split_owns(struct gs_batch_split split, const struct gs_batch_req *r)
{
	return (r->line_no - 1) % split.n == split.k;
}

/* A line with images: its text with the image sequences (the processor step), its images
 * decoded and resized for the model; the encoded files are freed either way. A problem fails
 * the line (GS_ERR_INVALID_ARG with the reason). */
static enum gs_status submit_images(struct gs_engine *e, const struct gs_model *m, const struct gs_tokenizer *tok,
				    struct gs_batch_req *r, uint64_t id, const struct gs_req_params *p, size_t *n_ids)
{
	const struct gs_vision_config *v = &m->cfg.vision;
	size_t each = (size_t)v->image_size * (size_t)v->image_size * 3;
	int32_t *ids = NULL, markers = 0;
	uint8_t *px = NULL;
	char *text = NULL;
	enum gs_status st = GS_OK;

	if (!v->present) {
		st = gs_errorf(GS_ERR_INVALID_ARG, "the model does not take images (its config has no vision_config)");
		goto out_free;
	}
	if ((st = gs_chat_expand_images(r->text, v->mm_tokens_per_image, &text, &markers)) != GS_OK)
		goto out_free;
	if (markers != r->n_images) {
		st = gs_errorf(GS_ERR_INVALID_ARG, "the text holds %d \"<start_of_image>\" markers for %d images; send "
			       "images only as image_url parts", (int)markers, r->n_images);
		goto out_free;
	}
	if (!(px = malloc(each * (size_t)r->n_images))) {
		st = gs_errorf(GS_ERR_NOMEM, "out of memory for %d images", r->n_images);
		goto out_free;
	}
	for (int i = 0; i < r->n_images && st == GS_OK; i++) {
		const struct gs_chat_image *im = &r->images[i];
		struct gs_image_opts o = { .has_window = im->has_window, .window_center = im->window_center,
					   .window_width = im->window_width };
		st = gs_image_prepare(im->data, im->n, im->mime, &o, v->image_size, px + each * (size_t)i);
		if (st != GS_OK)
			gs_error_prefix(st, "image %d", i);
	}
	if (st == GS_OK && (st = gs_tokenizer_encode(tok, text, strlen(text), false, &ids, n_ids)) == GS_OK)
		st = gs_engine_submit_images(e, id, ids, (int32_t)*n_ids, p, px, r->n_images);
out_free:
	for (int i = 0; i < r->n_images; i++)
		free(r->images[i].data);
	free(r->images);
	r->images = NULL;
	r->n_images = 0;
	free(ids);
	free(px);
	free(text);
	return st;
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
	/* response_format lines: the leader masks with tok (followers were given theirs) */
	gs_engine_set_tokenizer(e, tok);
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
				int nc = r->n > 1 ? r->n : 1;
				p.n = nc;
				f->n_open = nc;
				if (nc > 1 && !(f->more = calloc((size_t)nc - 1, sizeof(*f->more)))) {
					st = gs_errorf(GS_ERR_NOMEM, "out of memory");
					goto out_shutdown;
				}
				for (int i = 0; i + 1 < nc; i++)
					f->more[i].req = r;
				if (end_of_turn >= 0 && !r->ignore_eos)
					p.stop_ids[p.n_stop_ids++] = end_of_turn;
				for (int i = 0; i < r->n_stop_ids; i++)
					p.stop_ids[p.n_stop_ids++] = r->stop_ids[i];
				p.ignore_eos = r->ignore_eos;
				p.response_format = r->response_format;
				if (r->n_images)
					st = submit_images(e, m, tok, r, (next - 1) * GS_BATCH_MAX_N, &p, &n_ids);
				else if ((st = gs_tokenizer_encode(tok, r->text, strlen(r->text), !r->chat, &ids, &n_ids)) ==
					 GS_OK)
					st = gs_engine_submit(e, (next - 1) * GS_BATCH_MAX_N, ids, (int32_t)n_ids, &p);
				free(ids);
				if (st == GS_OK) {
					for (int i = 0; i < nc; i++) {
						struct flight *fc = i ? &f->more[i - 1] : f;
						fc->active = true;
						fc->n_prompt = (int32_t)n_ids;
						gs_detok_init(&fc->dt, tok);
					}
					inflight += nc;
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
			struct flight *f0 = &fl[x->id / GS_BATCH_MAX_N];
			uint64_t ci = x->id % GS_BATCH_MAX_N;
			struct flight *f = !ci ? f0 : f0->more ? &f0->more[ci - 1] : NULL; /* NULL: line written */
			bool stop_tok = x->finish == GS_FINISH_STOP;
			long cut = -1;

			if (!f || !f->active)
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
			f->fin = cut >= 0 || stop_tok ? GS_BATCH_FINISH_STOP : GS_BATCH_FINISH_LENGTH;
			f->active = false;
			f->finished = true;
			inflight--;
			if (--f0->n_open > 0)
				continue; /* n > 1: the record waits for every choice */
			st = write_result(out, f0);
			if (st != GS_OK)
				goto out_shutdown;
			flight_free(f0);
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
