/* gemmashard coordinator, HTTP front end: the completion routes (POST /v1/chat/completions and
 * /v1/completions). The parsed request is submitted, then its output is either collected
 * whole (one JSON answer) or streamed as server-sent events by an MHD content reader; both
 * wait on the request in short slices and watch the client's socket, so a client that goes
 * away cancels its request within ~0.1 s. */
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "http_internal.h"
#include "gs_sbuf.h"
#include "gs_util.h"

#define GS_HTTP_KEEPALIVE_S      15.0        /* a silent stream sends an SSE comment */
#define GS_HTTP_WAIT_SLICE_S     0.1         /* between two looks at the client's socket */
#define GS_HTTP_STREAM_BLOCK     (16 * 1024) /* most bytes handed to MHD per reader call */

/* Output timings for /metrics. */
struct gs_http_timing {
	double t_submit;  /* gs_now_s() at submit */
	double t_last;    /* when the previous token batch arrived */
	bool   ttft_seen;
};

/* A streamed answer: the state of the content reader (owned by the MHD response). */
struct gs_http_stream {
	struct gs_http          *h;
	struct MHD_Connection   *conn;
	struct gs_http_req      *q;           /* its request: token counts and finish for the access
						 log (alive while MHD reads the response) */
	struct gs_creq          *r[GS_COORD_MAX_N]; /* choice i (n > 1: chunks carry index i) */
	int                      n;
	bool                     chat, include_usage, logprobs;
	char                     id[48];
	char                     model[256];
	long long                created;
	struct gs_sbuf       out;         /* SSE bytes not yet handed to MHD, from sent */
	size_t                   sent;
	bool                     role_sent[GS_COORD_MAX_N]; /* chat: the delta.role chunk went out */
	bool                     settled[GS_COORD_MAX_N];   /* r[i] finished or was cancelled */
	int                      n_settled;
	bool                     done;        /* "data: [DONE]" is in out */
	size_t                   text_off[GS_COORD_MAX_N];
	struct gs_http_timing    tm;
	int32_t                  prompt_tokens, completion_tokens[GS_COORD_MAX_N];
	double                   t_heard;     /* n > 1: last output or keep-alive */
};

/* ---- waiting for output ------------------------------------------------------------------- */

/* The client closed its end (or the server is shutting the socket down). */
static bool gs_http_client_gone(struct MHD_Connection *conn)
{
	const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
	struct pollfd pfd;

	if (!ci)
		return false;
	pfd = (struct pollfd){ .fd = ci->connect_fd, .events = POLLRDHUP };
	if (poll(&pfd, 1, 0) <= 0)
		return false;
	return (pfd.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

enum gs_http_wait {
	GS_HTTP_GOT,  /* *o holds the next output */
	GS_HTTP_GONE, /* the client went away or the server is stopping: r has been cancelled */
	GS_HTTP_IDLE  /* nothing for idle_s seconds */
};

/* Waits for the next output of r (into *o, which must be empty); idle_s <= 0: no IDLE. */
static enum gs_http_wait gs_http_next(struct gs_http *h, struct MHD_Connection *conn, struct gs_creq *r,
				      struct gs_creq_out *o, double idle_s)
{
	double t0 = gs_now_s();

	for (;;) {
		if (gs_creq_take(r, o))
			return GS_HTTP_GOT;
		if (atomic_load(&h->stopping) || gs_http_client_gone(conn)) {
			gs_creq_cancel(r);
			return GS_HTTP_GONE;
		}
		if (idle_s > 0 && gs_now_s() - t0 >= idle_s)
			return GS_HTTP_IDLE;
		gs_creq_wait(r, GS_HTTP_WAIT_SLICE_S);
	}
}

static void gs_http_out_reset(struct gs_creq_out *o)
{
	gs_creq_out_clear(o);
	memset(o, 0, sizeof(*o));
}

static void gs_http_observe(struct gs_coord *c, struct gs_http_timing *tm, const struct gs_creq_out *o)
{
	double now;

	if (o->n_ids <= 0)
		return;
	now = gs_now_s();
	if (!tm->ttft_seen) {
		tm->ttft_seen = true;
		gs_coord_observe_ttft(c, o->ttft_s > 0 ? o->ttft_s : now - tm->t_submit);
	} else {
		gs_coord_observe_tpot(c, (now - tm->t_last) / o->n_ids, o->n_ids);
	}
	tm->t_last = now;
}

/* ---- whole answers ------------------------------------------------------------------------ */

static enum MHD_Result gs_http_complete(struct gs_http *h, struct MHD_Connection *conn, struct gs_http_req *q,
					const struct gs_http_gen *g, struct gs_creq *r, const char *model,
					long long created)
{
	struct gs_http_timing tm = { .t_submit = gs_now_s() };
	struct gs_sbuf text = { 0 };
	struct gs_http_lps lps = { 0 };
	struct gs_creq_out o = { 0 };
	enum gs_cfinish finish = GS_CFIN_NONE;
	enum gs_cerr err = GS_CERR_INTERNAL;
	int32_t prompt_tokens = 0, completion_tokens = 0;
	cJSON *root, *choices;
	char id[48], err_msg[512] = "";
	bool ok = gs_sbuf_put(&text, "", 0);

	snprintf(id, sizeof(id), "%s-%" PRIu64, g->chat ? "chatcmpl" : "cmpl", gs_creq_id(r));
	if (ok && g->spec.logprobs)
		ok = gs_http_lps_init(&lps, g->chat);
	while (finish == GS_CFIN_NONE) {
		if (gs_http_next(h, conn, r, &o, 0) != GS_HTTP_GOT)
			goto out_client_gone;
		gs_http_observe(h->coord, &tm, &o);
		if (ok && o.text_len)
			ok = gs_sbuf_put(&text, o.text, o.text_len);
		if (lps.obj)
			gs_http_lps_add(&lps, &o);
		prompt_tokens = o.prompt_tokens;
		completion_tokens = o.completion_tokens;
		finish = o.finish;
		err = o.err;
		snprintf(err_msg, sizeof(err_msg), "%s", o.err_msg);
		gs_http_out_reset(&o);
	}
	gs_creq_release(r);
	q->prompt_tokens = prompt_tokens;
	q->completion_tokens = completion_tokens;
	q->finish = ok ? finish : GS_CFIN_ERROR;

	if (finish == GS_CFIN_ERROR || finish == GS_CFIN_CANCELLED || !ok) {
		cJSON_Delete(lps.obj);
		free(text.p);
		if (!ok)
			return gs_http_error(conn, q, 500, NULL, NULL, "out of memory building the answer");
		if (finish == GS_CFIN_CANCELLED)
			return gs_http_cerr_reply(conn, q, GS_CERR_UNAVAILABLE, NULL, "the request was cancelled");
		return gs_http_cerr_reply(conn, q, err, NULL, err_msg[0] ? err_msg : gs_cerr_str(err));
	}
	root = gs_http_envelope(id, g->chat ? "chat.completion" : "text_completion", created, model, &choices);
	cJSON_AddItemToArray(choices, gs_http_choice(g->chat, false, true, text.p, lps.obj, finish));
	cJSON_AddItemToObject(root, "usage", gs_http_usage(prompt_tokens, completion_tokens));
	free(text.p);
	return gs_http_reply_json(conn, q, MHD_HTTP_OK, root);

out_client_gone:
	gs_creq_release(r);
	q->prompt_tokens = prompt_tokens;
	q->completion_tokens = completion_tokens;
	q->finish = GS_CFIN_CANCELLED;
	cJSON_Delete(lps.obj);
	free(text.p);
	return MHD_NO;
}

/* Several choices: a list of prompts (/v1/completions) and/or n > 1, n_per choices per prompt;
 * every request was submitted; their answers become choices 0..n-1 (prompt_index * n_per + i),
 * usage is the sum (each prompt counted once). Releases every r[i]. */
static enum MHD_Result gs_http_complete_many(struct gs_http *h, struct MHD_Connection *conn, struct gs_http_req *q,
					     const struct gs_http_gen *g, struct gs_creq **r, int n, int n_per,
					     const char *model, long long created)
{
	struct gs_http_timing tm = { .t_submit = gs_now_s() };
	struct gs_creq_out o = { 0 };
	int32_t prompt_tokens = 0, completion_tokens = 0;
	enum gs_cerr err = GS_CERR_NONE;
	char id[48], err_msg[512] = "";
	cJSON *choices, *root;
	bool gone = false, ok = true;
	int i;

	snprintf(id, sizeof(id), "%s-%" PRIu64, g->chat ? "chatcmpl" : "cmpl", gs_creq_id(r[0]));
	root = gs_http_envelope(id, g->chat ? "chat.completion" : "text_completion", created, model, &choices);
	for (i = 0; i < n; i++) {
		struct gs_sbuf text = { 0 };
		struct gs_http_lps lps = { 0 };
		enum gs_cfinish finish = GS_CFIN_NONE;
		ok = ok && gs_sbuf_put(&text, "", 0) && (!g->spec.logprobs || gs_http_lps_init(&lps, g->chat));
		while (!gone && finish == GS_CFIN_NONE) {
			if (gs_http_next(h, conn, r[i], &o, 0) != GS_HTTP_GOT) {
				gone = true;
				break;
			}
			gs_http_observe(h->coord, &tm, &o);
			if (ok && o.text_len)
				ok = gs_sbuf_put(&text, o.text, o.text_len);
			if (lps.obj)
				gs_http_lps_add(&lps, &o);
			prompt_tokens += o.finish != GS_CFIN_NONE && i % n_per == 0 ? o.prompt_tokens : 0;
			completion_tokens += o.finish != GS_CFIN_NONE ? o.completion_tokens : 0;
			finish = o.finish;
			if (finish == GS_CFIN_ERROR || finish == GS_CFIN_CANCELLED) {
				err = finish == GS_CFIN_CANCELLED ? GS_CERR_UNAVAILABLE : o.err;
				snprintf(err_msg, sizeof(err_msg), "%s %d: %.480s", n_per > 1 ? "choice" : "prompt",
					 i,
					 finish == GS_CFIN_CANCELLED ? "the request was cancelled" : o.err_msg);
			}
			gs_http_out_reset(&o);
		}
		gs_creq_release(r[i]);
		if (ok && !gone && err == GS_CERR_NONE) {
			cJSON *ch = gs_http_choice(g->chat, false, true, text.p, lps.obj, finish);
			cJSON_ReplaceItemInObject(ch, "index", cJSON_CreateNumber(i));
			cJSON_AddItemToArray(choices, ch);
		} else {
			cJSON_Delete(lps.obj);
		}
		free(text.p);
		if (gone || !ok || err != GS_CERR_NONE)
			break;
	}
	for (i++; i < n; i++) { /* after a failure: the rest are not wanted */
		gs_creq_cancel(r[i]);
		gs_creq_release(r[i]);
	}
	q->prompt_tokens = prompt_tokens;
	q->completion_tokens = completion_tokens;
	q->finish = gone ? GS_CFIN_CANCELLED : !ok || err != GS_CERR_NONE ? GS_CFIN_ERROR : GS_CFIN_LENGTH;
	if (gone || !ok || err != GS_CERR_NONE) {
		cJSON_Delete(root);
		if (gone)
			return MHD_NO;
		if (!ok)
			return gs_http_error(conn, q, 500, NULL, NULL, "out of memory building the answer");
		return gs_http_cerr_reply(conn, q, err, NULL, err_msg);
	}
	cJSON_AddItemToObject(root, "usage", gs_http_usage(prompt_tokens, completion_tokens));
	return gs_http_reply_json(conn, q, MHD_HTTP_OK, root);
}

/* ---- streamed answers --------------------------------------------------------------------- */

static bool gs_http_sse(struct gs_http_stream *s, cJSON *root)
{
	char *json = cJSON_PrintUnformatted(root);
	bool ok = json && gs_sbuf_put(&s->out, "data: ", 6) && gs_sbuf_put(&s->out, json, strlen(json)) &&
		  gs_sbuf_put(&s->out, "\n\n", 2);

	free(json);
	cJSON_Delete(root);
	return ok;
}

static cJSON *gs_http_chunk(struct gs_http_stream *s, cJSON *choice)
{
	cJSON *choices, *root = gs_http_envelope(s->id, s->chat ? "chat.completion.chunk" : "text_completion",
						  s->created, s->model, &choices);

	if (choice)
		cJSON_AddItemToArray(choices, choice);
	if (s->include_usage)
		cJSON_AddNullToObject(root, "usage");
	return root;
}

/* Choice i of a stream: its index set on a chunk's choice. */
static cJSON *gs_http_indexed(cJSON *choice, int i)
{
	if (choice && i)
		cJSON_ReplaceItemInObject(choice, "index", cJSON_CreateNumber(i));
	return choice;
}

/* Turns one output of choice i into SSE events in s->out. false: out of memory. */
static bool gs_http_stream_out(struct gs_http_stream *s, const struct gs_creq_out *o, int i)
{
	struct gs_coord *c = s->h->coord;
	int32_t sum = 0;
	bool ok = true;

	gs_http_observe(c, &s->tm, o);
	s->prompt_tokens = s->q->prompt_tokens = o->prompt_tokens;
	s->completion_tokens[i] = o->completion_tokens;
	for (int k = 0; k < s->n; k++)
		sum += s->completion_tokens[k];
	s->q->completion_tokens = sum;
	if (s->chat && !s->role_sent[i]) {
		s->role_sent[i] = true;
		ok = gs_http_sse(s, gs_http_chunk(s, gs_http_indexed(gs_http_choice(true, true, true, "", NULL,
										    GS_CFIN_NONE), i)));
	}
	if (ok && (o->text_len > 0 || (s->logprobs && o->n_ids > 0))) {
		struct gs_http_lps lps = { 0 };

		if (s->logprobs && o->lps && gs_http_lps_init(&lps, s->chat)) {
			lps.text_off = s->text_off[i];
			gs_http_lps_add(&lps, o);
			s->text_off[i] = lps.text_off;
		}
		ok = gs_http_sse(s, gs_http_chunk(s, gs_http_indexed(gs_http_choice(s->chat, true, false, o->text,
										    lps.obj, GS_CFIN_NONE), i)));
	}
	if (o->finish == GS_CFIN_NONE || !ok)
		return ok;

	s->settled[i] = true;
	s->n_settled++;
	if (o->finish != GS_CFIN_ERROR && o->finish != GS_CFIN_CANCELLED && s->n_settled < s->n)
		return gs_http_sse(s, gs_http_chunk(s, gs_http_indexed(gs_http_choice(s->chat, true, false,
										      s->chat ? NULL : "", NULL,
										      o->finish), i)));
	s->q->finish = o->finish;
	if (o->finish == GS_CFIN_ERROR || o->finish == GS_CFIN_CANCELLED) {
		enum gs_cerr e = o->finish == GS_CFIN_ERROR ? o->err : GS_CERR_UNAVAILABLE;
		const char *msg = o->finish == GS_CFIN_ERROR ? (o->err_msg[0] ? o->err_msg : gs_cerr_str(e)) :
							       "the request was cancelled";
		char *json = gs_http_error_json(gs_cerr_openai_type(e), NULL, gs_http_cerr_code(e), msg);

		ok = json && gs_sbuf_put(&s->out, "data: ", 6) && gs_sbuf_put(&s->out, json, strlen(json)) &&
		     gs_sbuf_put(&s->out, "\n\n", 2);
		free(json);
	} else {
		ok = gs_http_sse(s, gs_http_chunk(s, gs_http_indexed(gs_http_choice(s->chat, true, false,
										    s->chat ? NULL : "", NULL, o->finish),
								     i)));
		if (ok && s->include_usage) {
			cJSON *root = gs_http_chunk(s, NULL);

			cJSON_ReplaceItemInObject(root, "usage", gs_http_usage(s->prompt_tokens, sum));
			ok = gs_http_sse(s, root);
		}
	}
	s->done = true;
	return ok && gs_sbuf_put(&s->out, "data: [DONE]\n\n", 14);
}

/* MHD content reader: hands out buffered events, else blocks (in slices) for the next output. */
static ssize_t gs_http_stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
	struct gs_http_stream *s = cls;
	struct gs_creq_out o = { 0 };

	for (;;) {
		if (s->sent < s->out.len) {
			size_t n = s->out.len - s->sent < max ? s->out.len - s->sent : max;

			memcpy(buf, s->out.p + s->sent, n);
			s->sent += n;
			if (s->sent == s->out.len)
				s->sent = 0, gs_sbuf_reset(&s->out);
			return (ssize_t)n;
		}
		if (s->done)
			return MHD_CONTENT_READER_END_OF_STREAM;
		/* n > 1: whatever any choice has, else wait on the first one still running */
		int i = -1, w = -1;
		for (int k = 0; k < s->n; k++) {
			if (s->settled[k])
				continue;
			if (w < 0)
				w = k;
			if (s->n > 1 && gs_creq_take(s->r[k], &o)) {
				i = k;
				break;
			}
		}
		if (w < 0)
			return MHD_CONTENT_READER_END_OF_STREAM; /* not reached: the last finish sets done */
		if (i >= 0) {
			if (!gs_http_stream_out(s, &o, i)) {
				gs_http_out_reset(&o);
				return MHD_CONTENT_READER_END_WITH_ERROR;
			}
			gs_http_out_reset(&o);
			continue;
		}
		i = w;
		switch (gs_http_next(s->h, s->conn, s->r[i], &o, s->n > 1 ? GS_HTTP_WAIT_SLICE_S : GS_HTTP_KEEPALIVE_S)) {
		case GS_HTTP_GONE:
			s->q->finish = GS_CFIN_CANCELLED;
			return MHD_CONTENT_READER_END_WITH_ERROR;
		case GS_HTTP_IDLE:
			if (s->n > 1 && gs_now_s() - s->t_heard < GS_HTTP_KEEPALIVE_S)
				continue;
			/* An SSE comment: clients skip it; MHD sees traffic and keeps the connection. */
			s->t_heard = gs_now_s();
			if (!gs_sbuf_put(&s->out, ": keep-alive\n\n", 14))
				return MHD_CONTENT_READER_END_WITH_ERROR;
			continue;
		case GS_HTTP_GOT:
			break;
		}
		s->t_heard = gs_now_s();
		if (!gs_http_stream_out(s, &o, i)) {
			gs_http_out_reset(&o);
			return MHD_CONTENT_READER_END_WITH_ERROR; /* out of memory: the free cancels */
		}
		gs_http_out_reset(&o);
	}
}

/* MHD response free: the stream is over (or never started); the request goes. */
static void gs_http_stream_free(void *cls)
{
	struct gs_http_stream *s = cls;

	for (int i = 0; i < s->n; i++) {
		if (!s->settled[i])
			gs_creq_cancel(s->r[i]);
		gs_creq_release(s->r[i]);
	}
	gs_sbuf_free(&s->out);
	free(s);
}

/* Waits for the request's first output before answering, so that a request that fails at
 * once (engine lost, deadline) still gets its proper HTTP status; then streams. */
static enum MHD_Result gs_http_stream(struct gs_http *h, struct MHD_Connection *conn, struct gs_http_req *q,
				      const struct gs_http_gen *g, struct gs_creq **r, int n, const char *model,
				      long long created)
{
	struct gs_http_stream *s = calloc(1, sizeof(*s));
	struct gs_creq_out o = { 0 };
	struct MHD_Response *resp;
	enum MHD_Result ret;

	if (!s) {
		for (int i = 0; i < n; i++) {
			gs_creq_cancel(r[i]);
			gs_creq_release(r[i]);
		}
		return gs_http_error(conn, q, 500, NULL, NULL, "out of memory");
	}
	*s = (struct gs_http_stream){ .h = h, .conn = conn, .q = q, .n = n, .chat = g->chat,
				      .include_usage = g->include_usage, .logprobs = g->spec.logprobs,
				      .created = created, .tm = { .t_submit = gs_now_s() }, .t_heard = gs_now_s() };
	for (int i = 0; i < n; i++)
		s->r[i] = r[i];
	snprintf(s->id, sizeof(s->id), "%s-%" PRIu64, g->chat ? "chatcmpl" : "cmpl", gs_creq_id(r[0]));
	snprintf(s->model, sizeof(s->model), "%s", model);

	/* choice 0's first output (the choices run together in one engine) */
	if (gs_http_next(h, conn, r[0], &o, 0) != GS_HTTP_GOT) {
		s->settled[0] = true;
		gs_http_stream_free(s);
		return MHD_NO;
	}
	if (o.finish == GS_CFIN_ERROR && o.n_ids == 0 && o.text_len == 0) {
		char msg[512];
		enum gs_cerr e = o.err;

		q->prompt_tokens = o.prompt_tokens;
		q->finish = GS_CFIN_ERROR;
		snprintf(msg, sizeof(msg), "%s", o.err_msg[0] ? o.err_msg : gs_cerr_str(e));
		gs_http_out_reset(&o);
		s->settled[0] = true;
		gs_http_stream_free(s);
		return gs_http_cerr_reply(conn, q, e, NULL, msg);
	}
	if (!gs_http_stream_out(s, &o, 0)) {
		gs_http_out_reset(&o);
		gs_http_stream_free(s);
		return gs_http_error(conn, q, 500, NULL, NULL, "out of memory");
	}
	gs_http_out_reset(&o);

	resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, GS_HTTP_STREAM_BLOCK, gs_http_stream_read, s,
						 gs_http_stream_free);
	if (!resp) {
		gs_http_stream_free(s);
		return MHD_NO;
	}
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
	MHD_add_response_header(resp, "X-Accel-Buffering", "no");
	ret = MHD_queue_response(conn, MHD_HTTP_OK, resp);
	MHD_destroy_response(resp); /* frees s now if queueing failed, else when the stream ends */
	if (ret == MHD_YES)
		q->status = MHD_HTTP_OK;
	return ret;
}

/* ---- route -------------------------------------------------------------------------------- */

enum MHD_Result gs_http_generate(struct gs_http *h, struct MHD_Connection *conn, struct gs_http_req *q)
{
	struct gs_http_gen g = { .chat = q->route == GS_HTTP_ROUTE_CHAT };
	const struct gs_coord_model *gm;
	struct gs_creq *r = NULL;
	long long created = (long long)time(NULL);
	char model[256], why[512] = "", param[64];
	enum MHD_Result ret;
	enum gs_cerr e;
	cJSON *root;

	if (!gs_http_parse_body(&g, q->body, q->len, &root)) {
		ret = gs_http_cerr_reply(conn, q, g.err, g.param, g.why);
		goto out_free_root;
	}
	snprintf(q->user, sizeof(q->user), "%s", g.user);
	e = gs_coord_model_find(h->coord, g.spec.model, &gm, why, sizeof(why));
	if (e != GS_CERR_NONE) {
		ret = gs_http_cerr_reply(conn, q, e, "model", why);
		goto out_free_root;
	}
	snprintf(model, sizeof(model), "%s", gm->name);
	q->model = gm->name;
	if (g.chat_in.n_images > 0) { /* decoded and resized now: a bad image is a 400 before admission */
		struct gs_coord_image_in in[GS_COORD_MAX_IMAGES];
		for (int i = 0; i < g.chat_in.n_images; i++) {
			const struct gs_chat_image *im = &g.chat_in.images[i];
			in[i] = (struct gs_coord_image_in){ .data = im->data, .n = im->n, .mime = im->mime,
							    .has_window = im->has_window,
							    .window_center = im->window_center,
							    .window_width = im->window_width };
		}
		e = gs_coord_prepare_images(h->coord, g.spec.model, in, g.chat_in.n_images, &g.images, why, sizeof(why));
		if (e != GS_CERR_NONE) {
			ret = gs_http_cerr_reply(conn, q, e, "messages", why);
			goto out_free_root;
		}
		g.spec.images = g.images;
		g.spec.n_images = g.chat_in.n_images;
	}

	if (g.n_prompts > 1 || g.n > 1) {
		struct gs_creq *rs[GS_HTTP_MAX_CHOICES];
		int n = g.n > 1 ? g.n : 1, n_prompts = g.n_prompts > 1 ? g.n_prompts : 1; /* chat: one */
		if (g.stream && n_prompts > 1) {
			ret = gs_http_cerr_reply(conn, q, GS_CERR_INVALID, "prompt",
						 "prompt: a list of prompts cannot be streamed; send it without stream, or "
						 "one request per prompt");
			goto out_free_root;
		}
		for (int i = 0; i < n_prompts; i++) {
			if (!g.chat)
				gs_http_use_prompt(&g, i);
			e = gs_coord_submit_n(h->coord, GS_API_HTTP, &g.spec, n, NULL, NULL, &rs[i * n], why, sizeof(why));
			if (e != GS_CERR_NONE) {
				char msg[600];
				for (int j = 0; j < i * n; j++) {
					gs_creq_cancel(rs[j]);
					gs_creq_release(rs[j]);
				}
				gs_http_param_of(why, g.chat, param, sizeof(param));
				if (n_prompts > 1)
					snprintf(msg, sizeof(msg), "prompt %d: %s", i, why[0] ? why : gs_cerr_str(e));
				else
					snprintf(msg, sizeof(msg), "%s", why[0] ? why : gs_cerr_str(e));
				ret = gs_http_cerr_reply(conn, q, e, param, msg);
				goto out_free_root;
			}
		}
		q->req_id = gs_creq_id(rs[0]);
		cJSON_Delete(root);
		root = NULL;
		ret = g.stream ? gs_http_stream(h, conn, q, &g, rs, n, model, created) :
				 gs_http_complete_many(h, conn, q, &g, rs, n_prompts * n, n, model, created);
		goto out_free_root;
	}
	e = gs_coord_submit(h->coord, GS_API_HTTP, &g.spec, NULL, NULL, &r, why, sizeof(why));
	if (e != GS_CERR_NONE) {
		gs_http_param_of(why, g.chat, param, sizeof(param));
		ret = gs_http_cerr_reply(conn, q, e, param, why[0] ? why : gs_cerr_str(e));
		goto out_free_root;
	}
	q->req_id = gs_creq_id(r);
	/* The spec's strings were borrowed for the submit only. */
	cJSON_Delete(root);
	root = NULL;
	ret = g.stream ? gs_http_stream(h, conn, q, &g, &r, 1, model, created) :
			 gs_http_complete(h, conn, q, &g, r, model, created);

out_free_root:
	gs_http_gen_free(&g);
	cJSON_Delete(root);
	return ret;
}
