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
	struct gs_creq          *r;
	bool                     chat, include_usage, logprobs;
	char                     id[48];
	char                     model[256];
	long long                created;
	struct gs_sbuf       out;         /* SSE bytes not yet handed to MHD, from sent */
	size_t                   sent;
	bool                     role_sent;   /* chat: the delta.role chunk went out */
	bool                     settled;     /* r finished or was cancelled */
	bool                     done;        /* "data: [DONE]" is in out */
	size_t                   text_off;
	struct gs_http_timing    tm;
	int32_t                  prompt_tokens, completion_tokens;
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
			gs_http_lps_add(&lps, h->coord, &o);
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

/* Turns one output of the request into SSE events in s->out. false: out of memory. */
static bool gs_http_stream_out(struct gs_http_stream *s, const struct gs_creq_out *o)
{
	struct gs_coord *c = s->h->coord;
	bool ok = true;

	gs_http_observe(c, &s->tm, o);
	s->prompt_tokens = s->q->prompt_tokens = o->prompt_tokens;
	s->completion_tokens = s->q->completion_tokens = o->completion_tokens;
	s->q->finish = o->finish;
	if (s->chat && !s->role_sent) {
		s->role_sent = true;
		ok = gs_http_sse(s, gs_http_chunk(s, gs_http_choice(true, true, true, "", NULL, GS_CFIN_NONE)));
	}
	if (ok && (o->text_len > 0 || (s->logprobs && o->n_ids > 0))) {
		struct gs_http_lps lps = { 0 };

		if (s->logprobs && o->lps && gs_http_lps_init(&lps, s->chat)) {
			lps.text_off = s->text_off;
			gs_http_lps_add(&lps, c, o);
			s->text_off = lps.text_off;
		}
		ok = gs_http_sse(s, gs_http_chunk(s, gs_http_choice(s->chat, true, false, o->text, lps.obj,
								      GS_CFIN_NONE)));
	}
	if (o->finish == GS_CFIN_NONE || !ok)
		return ok;

	s->settled = true;
	if (o->finish == GS_CFIN_ERROR || o->finish == GS_CFIN_CANCELLED) {
		enum gs_cerr e = o->finish == GS_CFIN_ERROR ? o->err : GS_CERR_UNAVAILABLE;
		const char *msg = o->finish == GS_CFIN_ERROR ? (o->err_msg[0] ? o->err_msg : gs_cerr_str(e)) :
							       "the request was cancelled";
		char *json = gs_http_error_json(gs_cerr_openai_type(e), NULL, gs_http_cerr_code(e), msg);

		ok = json && gs_sbuf_put(&s->out, "data: ", 6) && gs_sbuf_put(&s->out, json, strlen(json)) &&
		     gs_sbuf_put(&s->out, "\n\n", 2);
		free(json);
	} else {
		ok = gs_http_sse(s, gs_http_chunk(s, gs_http_choice(s->chat, true, false, s->chat ? NULL : "", NULL,
								      o->finish)));
		if (ok && s->include_usage) {
			cJSON *root = gs_http_chunk(s, NULL);

			cJSON_ReplaceItemInObject(root, "usage", gs_http_usage(s->prompt_tokens, s->completion_tokens));
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
		switch (gs_http_next(s->h, s->conn, s->r, &o, GS_HTTP_KEEPALIVE_S)) {
		case GS_HTTP_GONE:
			s->settled = true;
			s->q->finish = GS_CFIN_CANCELLED;
			return MHD_CONTENT_READER_END_WITH_ERROR;
		case GS_HTTP_IDLE:
			/* An SSE comment: clients skip it; MHD sees traffic and keeps the connection. */
			if (!gs_sbuf_put(&s->out, ": keep-alive\n\n", 14))
				return MHD_CONTENT_READER_END_WITH_ERROR;
			continue;
		case GS_HTTP_GOT:
			break;
		}
		if (!gs_http_stream_out(s, &o)) {
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

	if (!s->settled)
		gs_creq_cancel(s->r);
	gs_creq_release(s->r);
	gs_sbuf_free(&s->out);
	free(s);
}

/* Waits for the request's first output before answering, so that a request that fails at
 * once (engine lost, deadline) still gets its proper HTTP status; then streams. */
static enum MHD_Result gs_http_stream(struct gs_http *h, struct MHD_Connection *conn, struct gs_http_req *q,
				      const struct gs_http_gen *g, struct gs_creq *r, const char *model,
				      long long created)
{
	struct gs_http_stream *s = calloc(1, sizeof(*s));
	struct gs_creq_out o = { 0 };
	struct MHD_Response *resp;
	enum MHD_Result ret;

	if (!s) {
		gs_creq_cancel(r);
		gs_creq_release(r);
		return gs_http_error(conn, q, 500, NULL, NULL, "out of memory");
	}
	*s = (struct gs_http_stream){ .h = h, .conn = conn, .q = q, .r = r, .chat = g->chat,
				      .include_usage = g->include_usage, .logprobs = g->spec.logprobs,
				      .created = created, .tm = { .t_submit = gs_now_s() } };
	snprintf(s->id, sizeof(s->id), "%s-%" PRIu64, g->chat ? "chatcmpl" : "cmpl", gs_creq_id(r));
	snprintf(s->model, sizeof(s->model), "%s", model);

	if (gs_http_next(h, conn, r, &o, 0) != GS_HTTP_GOT) {
		s->settled = true;
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
		s->settled = true;
		gs_http_stream_free(s);
		return gs_http_cerr_reply(conn, q, e, NULL, msg);
	}
	if (!gs_http_stream_out(s, &o)) {
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
	struct gs_model_info info;
	struct gs_creq *r = NULL;
	const char *end = NULL;
	long long created = (long long)time(NULL);
	char model[256], why[512] = "", param[64];
	enum MHD_Result ret;
	enum gs_cerr e;
	cJSON *root;

	if (q->len == 0)
		return gs_http_error(conn, q, 400, NULL, NULL, "the request body is empty (expected a JSON object)");
	if (!gs_http_utf8_valid(q->body, q->len))
		return gs_http_error(conn, q, 400, NULL, NULL, "the request body is not valid UTF-8");
	root = cJSON_ParseWithLengthOpts(q->body, q->len, &end, false);
	if (!root)
		return gs_http_error(conn, q, 400, NULL, NULL, "invalid JSON in the request body (at byte %zu of %zu)",
				     end && end >= q->body ? (size_t)(end - q->body) : (size_t)0, q->len);
	if (!gs_http_parse_gen(&g, root)) {
		ret = gs_http_cerr_reply(conn, q, g.err, g.param, g.why);
		goto out_free_root;
	}
	e = gs_coord_model_info(h->coord, g.spec.model, &info);
	if (e != GS_CERR_NONE) {
		if (e == GS_CERR_NOT_FOUND)
			snprintf(why, sizeof(why), "the model '%.200s' does not exist", g.spec.model);
		else
			snprintf(why, sizeof(why), "%s", gs_cerr_str(e));
		ret = gs_http_cerr_reply(conn, q, e, "model", why);
		goto out_free_root;
	}
	snprintf(model, sizeof(model), "%s", info.name ? info.name : "");

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
	ret = g.stream ? gs_http_stream(h, conn, q, &g, r, model, created) :
			 gs_http_complete(h, conn, q, &g, r, model, created);

out_free_root:
	gs_http_gen_free(&g);
	cJSON_Delete(root);
	return ret;
}
