/* gemmashard coordinator: the public gRPC API on the gRPC C core (gs_grpc.h).
 *
 * One completion-queue thread serves every call with a per-call state machine (the pattern
 * of /work/shared/reference/infra.md §2). Output of a generation arrives on engine-link
 * threads through gs_coord's notify callback; whichever thread finds the call with no send
 * in flight starts the next send (grpc_call_start_batch is thread safe; only one
 * SEND_MESSAGE may be in flight per call), so a token reaches the client without waiting
 * for the completion-queue thread. A call's memory is freed when every batch it started has
 * completed and its status has been sent. */
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include "gemmashard/v1/inference.pb-c.h"
#include "grpc/health/v1/health.pb-c.h"
#include "gs_apikeys.h"
#include "gs_coord.h"
#include "gs_grammar.h"
#include "gs_grpc.h"
#include "grpc_internal.h"
#include "gs_tls.h"
#include "gs_util.h"

enum method { M_UNKNOWN, M_GENERATE, M_STREAM, M_TOKENIZE, M_MODELINFO, M_HEALTH, M_COUNT };

static const char *const method_path[M_COUNT] = {
	NULL,
	"/gemmashard.v1.Inference/Generate",
	"/gemmashard.v1.Inference/GenerateStream",
	"/gemmashard.v1.Inference/Tokenize",
	"/gemmashard.v1.Inference/ModelInfo",
	"/grpc.health.v1.Health/Check",
};

enum op { OP_NEW, OP_CLOSE, OP_RECV, OP_SEND, OP_STATUS, OP_COUNT };

struct call;
struct tag {
	struct call *call;
	enum op      op;
};

struct gs_grpc {
	struct gs_coord          *coord;
	grpc_server              *server;
	grpc_completion_queue    *cq;
	pthread_t                 thread;
	atomic_bool               stop;
	atomic_int                live_calls;
	bool                      shutting_down;
	struct tag                shutdown_tag;
};

struct call {
	struct gs_grpc       *g;
	struct tag            tags[OP_COUNT];
	grpc_call            *call;
	grpc_call_details     details;
	grpc_metadata_array   md;
	grpc_byte_buffer     *recv_bb;
	grpc_byte_buffer     *send_bb;
	int                   cancelled;
	enum method           method;
	pthread_mutex_t       mu;
	int                   pending;       /* batches started and not completed */
	bool                  send_busy;     /* a SEND_MESSAGE batch in flight */
	bool                  status_started;
	bool                  closed;        /* RECV_CLOSE_ON_SERVER completed */
	grpc_slice            status_details;
	bool                  has_details;
	struct gs_creq       *creq;          /* choice 0 (creqs[0]) */
	struct gs_creq       *creqs[GS_COORD_MAX_N]; /* n > 1: choice i */
	int                   n_creq;
	int                   n_settled;     /* choices finished (sent or collected) */
	int                   next_choice;   /* stream: where the next look for output starts */
	double                t_start, t_last;
	bool                  first_token_seen;
	/* unary Generate: everything collected until the finish, per choice */
	struct gchoice {
		char             *text;
		size_t            text_len;
		int32_t          *ids;
		struct gs_tok_lp *lps;
		size_t            n_ids;
		enum gs_cfinish   finish;
		int32_t           completion_tokens;
		bool              settled;
	} ch[GS_COORD_MAX_N];
	bool                  want_lps;
	/* for the access log and /metrics (gs_access) */
	char                  key[GS_APIKEY_NAME_MAX + 1]; /* name of the API key used ("" none) */
	char                  user[64];      /* the request's "user" label ("" none) */
	int32_t               prompt_tokens, completion_tokens;
	enum gs_cfinish       finish;        /* how the output ended, as sent */
};

/* ---- helpers ----------------------------------------------------------------------------- */

static const char *grpc_code_name(int code)
{
	static const char *const n[] = { "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
					 "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
					 "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
					 "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED" };
	return code >= 0 && code <= 16 ? n[code] : "UNKNOWN";
}

static grpc_byte_buffer *pack(const ProtobufCMessage *m)
{
	size_t n = protobuf_c_message_get_packed_size(m);
	grpc_slice s = grpc_slice_malloc(n);
	protobuf_c_message_pack(m, GRPC_SLICE_START_PTR(s));
	grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
	grpc_slice_unref(s);
	return bb;
}

static void call_free(struct call *c)
{
	grpc_call_unref(c->call);
	grpc_call_details_destroy(&c->details);
	grpc_metadata_array_destroy(&c->md);
	if (c->recv_bb)
		grpc_byte_buffer_destroy(c->recv_bb);
	if (c->send_bb)
		grpc_byte_buffer_destroy(c->send_bb);
	if (c->has_details)
		grpc_slice_unref(c->status_details);
	for (int i = 0; i < c->n_creq; i++) {
		gs_creq_release(c->creqs[i]);
		free(c->ch[i].text);
		free(c->ch[i].ids);
		free(c->ch[i].lps);
	}
	pthread_mutex_destroy(&c->mu);
	atomic_fetch_sub(&c->g->live_calls, 1);
	free(c);
}

/* With c->mu held. */
static bool start_batch(struct call *c, const grpc_op *ops, size_t n, enum op op)
{
	grpc_call_error e = grpc_call_start_batch(c->call, ops, n, &c->tags[op], NULL);
	if (e != GRPC_CALL_OK) {
		gs_log(GS_LOG_WARN, "grpc: start_batch(op %d) failed: %d", (int)op, (int)e);
		return false;
	}
	c->pending++;
	return true;
}

/* With c->mu held: the call is over for the client (its final status is sent, or it left). */
static void call_done(struct call *c, const char *status)
{
	gs_coord_request_done(c->g->coord, &(struct gs_access){
		.api = GS_API_GRPC, .key = c->key, .user = c->user, .method = "POST",
		.route = c->method == M_UNKNOWN ? "unknown" : method_path[c->method], .status = status,
		.request_id = c->creq ? gs_creq_id(c->creq) : 0, .model = c->creq ? gs_creq_model(c->creq)->name : NULL,
		.prompt_tokens = c->prompt_tokens,
		.completion_tokens = c->completion_tokens, .finish = c->finish,
		.latency_s = gs_now_s() - c->t_start, .probe = c->method == M_HEALTH });
}

/* With c->mu held: send the final status (and a last message, if given). */
static void send_status(struct call *c, int code, const char *details, grpc_byte_buffer *msg)
{
	grpc_op ops[2];
	size_t n = 0;

	if (c->status_started) {
		if (msg)
			grpc_byte_buffer_destroy(msg);
		return;
	}
	c->status_started = true;
	c->status_details = grpc_slice_from_copied_string(details ? details : "");
	c->has_details = true;
	memset(ops, 0, sizeof(ops));
	if (msg) {
		c->send_bb = msg;
		ops[n].op = GRPC_OP_SEND_MESSAGE;
		ops[n].data.send_message.send_message = msg;
		n++;
	}
	ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
	ops[n].data.send_status_from_server.status = (grpc_status_code)code;
	ops[n].data.send_status_from_server.status_details = &c->status_details;
	n++;
	call_done(c, grpc_code_name(code));
	if (!start_batch(c, ops, n, OP_STATUS))
		c->status_started = true; /* nothing more can be sent on this call */
}

static void send_error(struct call *c, enum gs_cerr e, const char *msg)
{
	send_status(c, gs_cerr_grpc_code(e), msg, NULL);
}

static const char *md_value(const struct call *c, const char *key, char *buf, size_t cap)
{
	for (size_t i = 0; i < c->md.count; i++) {
		const grpc_metadata *m = &c->md.metadata[i];
		if (grpc_slice_str_cmp(m->key, key) == 0) {
			size_t n = GRPC_SLICE_LENGTH(m->value);
			if (n >= cap)
				n = cap - 1;
			memcpy(buf, GRPC_SLICE_START_PTR(m->value), n);
			buf[n] = '\0';
			return buf;
		}
	}
	return NULL;
}

static Gemmashard__V1__FinishReason finish_reason(enum gs_cfinish f)
{
	switch (f) {
	case GS_CFIN_STOP:
		return GEMMASHARD__V1__FINISH_REASON__STOP;
	case GS_CFIN_LENGTH:
		return GEMMASHARD__V1__FINISH_REASON__LENGTH;
	case GS_CFIN_CANCELLED:
		return GEMMASHARD__V1__FINISH_REASON__CANCELLED;
	case GS_CFIN_ERROR:
		return GEMMASHARD__V1__FINISH_REASON__ERROR;
	default:
		return GEMMASHARD__V1__FINISH_REASON__FINISH_REASON_UNSPECIFIED;
	}
}

/* Logprob messages for n tokens (all allocations in one block list; freed by lp_free). */
struct lp_msgs {
	Gemmashard__V1__TokenLogprob **ptrs;
	Gemmashard__V1__TokenLogprob  *tok;
	Gemmashard__V1__TopLogprob   **top_ptrs;
	Gemmashard__V1__TopLogprob    *top;
	char                         **texts;
	size_t                         n_texts;
};

static void lp_free(struct lp_msgs *l)
{
	for (size_t i = 0; i < l->n_texts; i++)
		free(l->texts[i]);
	free(l->texts);
	free(l->ptrs);
	free(l->tok);
	free(l->top_ptrs);
	free(l->top);
	memset(l, 0, sizeof(*l));
}

static bool lp_build(const struct gs_coord_model *model, const int32_t *ids, const struct gs_tok_lp *lps, size_t n,
		     struct lp_msgs *l)
{
	size_t n_top = 0;
	memset(l, 0, sizeof(*l));
	for (size_t i = 0; i < n; i++)
		n_top += (size_t)lps[i].n_top;
	l->ptrs = calloc(n ? n : 1, sizeof(*l->ptrs));
	l->tok = calloc(n ? n : 1, sizeof(*l->tok));
	l->top_ptrs = calloc(n_top ? n_top : 1, sizeof(*l->top_ptrs));
	l->top = calloc(n_top ? n_top : 1, sizeof(*l->top));
	l->texts = calloc(n + n_top + 1, sizeof(*l->texts));
	if (!l->ptrs || !l->tok || !l->top_ptrs || !l->top || !l->texts) {
		lp_free(l);
		return false;
	}
	size_t t = 0;
	for (size_t i = 0; i < n; i++) {
		Gemmashard__V1__TokenLogprob *m = &l->tok[i];
		gemmashard__v1__token_logprob__init(m);
		m->has_token_id = true;
		m->token_id = ids[i];
		m->has_logprob = true;
		m->logprob = lps[i].logprob;
		m->text = l->texts[l->n_texts++] = gs_coord_model_token_text(model, ids[i]);
		m->n_top = (size_t)lps[i].n_top;
		m->top = &l->top_ptrs[t];
		for (int32_t j = 0; j < lps[i].n_top; j++, t++) {
			Gemmashard__V1__TopLogprob *tp = &l->top[t];
			gemmashard__v1__top_logprob__init(tp);
			tp->has_token_id = true;
			tp->token_id = lps[i].top_ids[j];
			tp->has_logprob = true;
			tp->logprob = lps[i].top_logprobs[j];
			tp->text = l->texts[l->n_texts++] = gs_coord_model_token_text(model, lps[i].top_ids[j]);
			l->top_ptrs[t] = tp;
		}
		l->ptrs[i] = m;
	}
	return true;
}

/* ---- generation output ------------------------------------------------------------------- */

static void observe_tokens(struct call *c, int32_t n)
{
	double now = gs_now_s();
	if (n <= 0)
		return;
	if (!c->first_token_seen) {
		c->first_token_seen = true;
		gs_coord_observe_ttft(c->g->coord, now - c->t_start);
	} else {
		gs_coord_observe_tpot(c->g->coord, (now - c->t_last) / n, n);
	}
	c->t_last = now;
}

/* Cancels every choice of c (without c->mu: the pointers live until call_free). */
static void cancel_all(struct gs_creq *const *rs, int n)
{
	for (int i = 0; i < n; i++)
		gs_creq_cancel(rs[i]);
}

static void sum_usage(struct call *c, int i, const struct gs_creq_out *o)
{
	c->ch[i].completion_tokens = o->completion_tokens;
	c->prompt_tokens = o->prompt_tokens;
	c->completion_tokens = 0;
	for (int k = 0; k < c->n_creq; k++)
		c->completion_tokens += c->ch[k].completion_tokens;
}

/* With c->mu held: a streaming call with no send in flight sends what is new, one choice's
 * output per chunk (index i); the call ends with the last choice's last chunk. */
static void stream_pump(struct call *c)
{
	struct gs_creq_out o;
	char rid[32];
	int i = -1;

	if (c->send_busy || c->status_started || !c->creq)
		return;
	for (int k = 0; k < c->n_creq && i < 0; k++) {
		int t = (c->next_choice + k) % c->n_creq;
		if (!c->ch[t].settled && gs_creq_take(c->creqs[t], &o))
			i = t;
	}
	if (i < 0)
		return;
	c->next_choice = (i + 1) % c->n_creq;
	observe_tokens(c, o.n_ids);
	sum_usage(c, i, &o);
	c->finish = o.finish;
	if (o.finish == GS_CFIN_ERROR && o.text_len == 0 && o.n_ids == 0) {
		send_error(c, o.err, o.err_msg);
		gs_creq_out_clear(&o);
		return;
	}
	if (o.finish == GS_CFIN_CANCELLED) {
		send_status(c, 1 /* CANCELLED */, "cancelled", NULL);
		gs_creq_out_clear(&o);
		return;
	}
	Gemmashard__V1__GenerateChunk ch = GEMMASHARD__V1__GENERATE_CHUNK__INIT;
	Gemmashard__V1__Usage usage = GEMMASHARD__V1__USAGE__INIT;
	struct lp_msgs l = { 0 };
	snprintf(rid, sizeof(rid), "%llu", (unsigned long long)gs_creq_id(c->creq));
	ch.request_id = rid;
	ch.text = o.text;
	ch.n_token_ids = (size_t)o.n_ids;
	ch.token_ids = o.ids;
	if (c->n_creq > 1) {
		ch.has_index = true;
		ch.index = i;
	}
	if (o.lps && o.n_ids && lp_build(o.model, o.ids, o.lps, (size_t)o.n_ids, &l)) {
		ch.n_logprobs = (size_t)o.n_ids;
		ch.logprobs = l.ptrs;
	}
	bool last = o.finish != GS_CFIN_NONE && o.finish != GS_CFIN_ERROR;
	if (last) {
		ch.has_finish_reason = true;
		ch.finish_reason = finish_reason(o.finish);
		usage.has_prompt_tokens = usage.has_completion_tokens = true;
		usage.prompt_tokens = o.prompt_tokens;
		usage.completion_tokens = o.completion_tokens;
		ch.usage = &usage;
		c->ch[i].settled = true;
		c->n_settled++;
	}
	grpc_byte_buffer *bb = pack(&ch.base);
	lp_free(&l);
	if (last && c->n_settled == c->n_creq) {
		send_status(c, 0, "", bb);
	} else if (o.finish == GS_CFIN_ERROR) {
		/* text arrived with the error: deliver it, then the error status. */
		send_status(c, gs_cerr_grpc_code(o.err), o.err_msg, bb);
	} else {
		grpc_op op;
		memset(&op, 0, sizeof(op));
		op.op = GRPC_OP_SEND_MESSAGE;
		op.data.send_message.send_message = bb;
		c->send_bb = bb;
		c->send_busy = true;
		if (!start_batch(c, &op, 1, OP_SEND)) {
			c->send_busy = false;
			c->send_bb = NULL;
			grpc_byte_buffer_destroy(bb);
		}
	}
	gs_creq_out_clear(&o);
}

/* With c->mu held: the response once every choice has finished (n > 1: choices[] too). */
static void unary_send(struct call *c)
{
	Gemmashard__V1__GenerateResponse resp = GEMMASHARD__V1__GENERATE_RESPONSE__INIT;
	Gemmashard__V1__Usage usage = GEMMASHARD__V1__USAGE__INIT;
	Gemmashard__V1__Choice chs[GS_COORD_MAX_N], *chp[GS_COORD_MAX_N];
	struct lp_msgs l[GS_COORD_MAX_N];
	struct gchoice *c0 = &c->ch[0];
	char rid[32];

	memset(l, 0, sizeof(l));
	snprintf(rid, sizeof(rid), "%llu", (unsigned long long)gs_creq_id(c->creq));
	resp.request_id = rid;
	resp.text = c0->text;
	resp.n_token_ids = c0->n_ids;
	resp.token_ids = c0->ids;
	resp.has_finish_reason = true;
	resp.finish_reason = finish_reason(c0->finish);
	usage.has_prompt_tokens = usage.has_completion_tokens = true;
	usage.prompt_tokens = c->prompt_tokens;
	usage.completion_tokens = c->completion_tokens;
	resp.usage = &usage;
	for (int i = 0; i < c->n_creq; i++) {
		struct gchoice *g = &c->ch[i];
		gemmashard__v1__choice__init(&chs[i]);
		chp[i] = &chs[i];
		chs[i].has_index = true;
		chs[i].index = i;
		chs[i].text = g->text;
		chs[i].n_token_ids = g->n_ids;
		chs[i].token_ids = g->ids;
		chs[i].has_finish_reason = true;
		chs[i].finish_reason = finish_reason(g->finish);
		chs[i].has_completion_tokens = true;
		chs[i].completion_tokens = g->completion_tokens;
		if (c->want_lps && g->n_ids && lp_build(gs_creq_model(c->creq), g->ids, g->lps, g->n_ids, &l[i])) {
			chs[i].n_logprobs = g->n_ids;
			chs[i].logprobs = l[i].ptrs;
		}
	}
	resp.n_logprobs = chs[0].n_logprobs;
	resp.logprobs = chs[0].logprobs;
	if (c->n_creq > 1) {
		resp.n_choices = (size_t)c->n_creq;
		resp.choices = chp;
	}
	grpc_byte_buffer *bb = pack(&resp.base);
	for (int i = 0; i < c->n_creq; i++)
		lp_free(&l[i]);
	send_status(c, 0, "", bb);
}

/* With c->mu held: a unary call collects output; once every choice finished it sends the
 * response (an error or cancellation of any choice ends the call with it). */
static void unary_pump(struct call *c)
{
	struct gs_creq_out o;

	if (c->status_started || !c->creq)
		return;
	for (int i = 0; i < c->n_creq; i++) {
		struct gchoice *g = &c->ch[i];
		while (!g->settled && gs_creq_take(c->creqs[i], &o)) {
			observe_tokens(c, o.n_ids);
			sum_usage(c, i, &o);
			c->finish = o.finish;
			char *nt = realloc(g->text, g->text_len + o.text_len + 1);
			int32_t *ni = o.n_ids ? realloc(g->ids, sizeof(*ni) * (g->n_ids + (size_t)o.n_ids)) : g->ids;
			struct gs_tok_lp *nl = o.lps && o.n_ids ? realloc(g->lps, sizeof(*nl) * (g->n_ids + (size_t)o.n_ids))
							       : g->lps;
			if (nt)
				g->text = nt;
			if (ni)
				g->ids = ni;
			if (nl)
				g->lps = nl;
			if (!nt || (o.n_ids && !ni) || (o.lps && o.n_ids && !nl)) { /* no ids yet is not out of memory */
				cancel_all(c->creqs, c->n_creq);
				send_error(c, GS_CERR_INTERNAL, "coordinator: out of memory");
				gs_creq_out_clear(&o);
				return;
			}
			memcpy(g->text + g->text_len, o.text, o.text_len + 1);
			g->text_len += o.text_len;
			if (o.n_ids) {
				memcpy(g->ids + g->n_ids, o.ids, sizeof(*o.ids) * (size_t)o.n_ids);
				if (o.lps)
					memcpy(g->lps + g->n_ids, o.lps, sizeof(*o.lps) * (size_t)o.n_ids);
				g->n_ids += (size_t)o.n_ids;
			}
			if (o.finish == GS_CFIN_NONE) {
				gs_creq_out_clear(&o);
				continue;
			}
			g->finish = o.finish;
			g->settled = true;
			c->n_settled++;
			if (o.finish == GS_CFIN_ERROR) {
				send_error(c, o.err, o.err_msg);
				cancel_all(c->creqs, c->n_creq);
			} else if (o.finish == GS_CFIN_CANCELLED) {
				send_status(c, 1, "cancelled", NULL);
				cancel_all(c->creqs, c->n_creq);
			}
			gs_creq_out_clear(&o);
			if (c->status_started)
				return;
		}
	}
	if (c->n_settled == c->n_creq)
		unary_send(c);
}

static void pump(struct call *c)
{
	if (c->method == M_STREAM)
		stream_pump(c);
	else
		unary_pump(c);
}

/* gs_coord notify: runs on an engine-link thread. */
static void on_output(struct gs_creq *r, void *user)
{
	struct call *c = user;
	(void)r;
	pthread_mutex_lock(&c->mu);
	pump(c);
	pthread_mutex_unlock(&c->mu);
}

/* ---- request messages to requests (grpc_internal.h) --------------------------------------- */

void gs_grpc_gen_free(struct gs_grpc_gen *g)
{
	free(g->msgs);
	free(g->parts);
	free(g->images_in);
	free(g->response_format);
	if (g->req)
		gemmashard__v1__generate_request__free_unpacked(g->req, NULL);
	memset(g, 0, sizeof(*g));
}

/* response_format: the message as HTTP's JSON object, then the one check every front end
 * shares (gs_grammar_from_request: compiled and cached now, refusals name the keyword). */
static enum gs_cerr gs_grpc_parse_format(struct gs_grpc_gen *g, const Gemmashard__V1__ResponseFormat *f, char *why,
					 size_t cap)
{
	cJSON *root, *rf, *js, *schema = NULL;
	enum gs_status st;

	if (!f)
		return GS_CERR_NONE;
	if (f->base.n_unknown_fields > 0) {
		snprintf(why, cap, "ResponseFormat field number %u is not supported by this server",
			 (unsigned)f->base.unknown_fields[0].tag);
		return GS_CERR_INVALID;
	}
	if (!f->type) {
		snprintf(why, cap, "response_format.type is required (text, json_object, json_schema, choice or regex)");
		return GS_CERR_INVALID;
	}
	if (f->json_schema && !(schema = cJSON_Parse(f->json_schema))) {
		snprintf(why, cap, "response_format.json_schema is not valid JSON");
		return GS_CERR_INVALID;
	}
	if ((f->json_schema || f->name || f->has_strict) && strcmp(f->type, "json_schema") != 0) {
		cJSON_Delete(schema);
		snprintf(why, cap, "response_format.json_schema, name and strict need type \"json_schema\"");
		return GS_CERR_INVALID;
	}
	if (f->n_choice && strcmp(f->type, "choice") != 0) {
		cJSON_Delete(schema);
		snprintf(why, cap, "response_format.choice needs type \"choice\"");
		return GS_CERR_INVALID;
	}
	if (f->regex && strcmp(f->type, "regex") != 0) {
		cJSON_Delete(schema);
		snprintf(why, cap, "response_format.regex needs type \"regex\"");
		return GS_CERR_INVALID;
	}
	root = cJSON_CreateObject();
	rf = cJSON_AddObjectToObject(root, "response_format");
	if (!rf || !cJSON_AddStringToObject(rf, "type", f->type)) {
		cJSON_Delete(schema);
		cJSON_Delete(root);
		snprintf(why, cap, "coordinator: out of memory");
		return GS_CERR_INTERNAL;
	}
	if (!strcmp(f->type, "json_schema") && (js = cJSON_AddObjectToObject(rf, "json_schema"))) {
		if (f->name)
			cJSON_AddStringToObject(js, "name", f->name);
		if (f->has_strict)
			cJSON_AddBoolToObject(js, "strict", f->strict);
		if (schema)
			cJSON_AddItemToObject(js, "schema", schema);
		schema = NULL;
	}
	if (!strcmp(f->type, "choice")) {
		cJSON *ch = cJSON_AddArrayToObject(rf, "choice");
		for (size_t i = 0; ch && i < f->n_choice; i++)
			cJSON_AddItemToArray(ch, cJSON_CreateString(f->choice[i]));
	}
	if (!strcmp(f->type, "regex") && f->regex)
		cJSON_AddStringToObject(rf, "regex", f->regex);
	cJSON_Delete(schema);
	st = gs_grammar_from_request(root, &g->response_format, why, cap);
	cJSON_Delete(root);
	if (st == GS_ERR_INVALID_ARG)
		return GS_CERR_INVALID;
	if (st != GS_OK) {
		snprintf(why, cap, "coordinator: out of memory");
		return GS_CERR_INTERNAL;
	}
	g->spec.response_format = g->response_format;
	return GS_CERR_NONE;
}

/* The OpenAI fields (ranges: gs_sampling_params_validate, the coordinator's checks), and the
 * refusal of fields this server does not know (a newer client's): nothing is ignored. */
static enum gs_cerr gs_grpc_parse_openai(struct gs_grpc_gen *g, const Gemmashard__V1__GenerateRequest *req, char *why,
					 size_t cap)
{
	struct gs_gen_spec *s = &g->spec;

	if (req->base.n_unknown_fields > 0) {
		snprintf(why, cap, "GenerateRequest field number %u is not supported by this server",
			 (unsigned)req->base.unknown_fields[0].tag);
		return GS_CERR_INVALID;
	}
	if (req->has_presence_penalty)
		s->sp.presence_penalty = req->presence_penalty;
	if (req->has_frequency_penalty)
		s->sp.frequency_penalty = req->frequency_penalty;
	if (req->n_logit_bias > GS_MAX_LOGIT_BIAS) {
		snprintf(why, cap, "logit_bias may hold at most %d entries, got %zu", GS_MAX_LOGIT_BIAS, req->n_logit_bias);
		return GS_CERR_INVALID;
	}
	for (size_t i = 0; i < req->n_logit_bias; i++) {
		const Gemmashard__V1__LogitBias *b = req->logit_bias[i];
		if (!b->has_token_id || !b->has_bias) {
			snprintf(why, cap, "logit_bias[%zu] needs both token_id and bias", i);
			return GS_CERR_INVALID;
		}
		s->sp.logit_bias_id[i] = b->token_id;
		s->sp.logit_bias[i] = b->bias;
	}
	s->sp.n_logit_bias = (int32_t)req->n_logit_bias;
	if (req->n_stop_token_ids > GS_COORD_MAX_STOP_IDS) {
		snprintf(why, cap, "stop_token_ids may hold at most %d ids, got %zu", GS_COORD_MAX_STOP_IDS,
			 req->n_stop_token_ids);
		return GS_CERR_INVALID;
	}
	for (size_t i = 0; i < req->n_stop_token_ids; i++)
		s->stop_ids[i] = req->stop_token_ids[i];
	s->n_stop_ids = (int)req->n_stop_token_ids;
	if (req->has_min_tokens)
		s->sp.min_tokens = req->min_tokens;
	s->ignore_eos = req->has_ignore_eos && req->ignore_eos;
	if (req->user) {
		snprintf(g->user, sizeof(g->user), "%s", req->user);
		for (char *c = g->user; *c; c++)
			if ((unsigned char)*c <= 0x20 || (unsigned char)*c >= 0x7f || *c == '"' || *c == '\\')
				*c = '_';
		s->user = g->user;
	}
	return gs_grpc_parse_format(g, req->response_format, why, cap);
}

enum gs_cerr gs_grpc_parse_generate(struct gs_grpc_gen *g, const uint8_t *data, size_t len,
				    const struct gs_coord_limits *L, char *why, size_t cap)
{
	struct gs_gen_spec *s = &g->spec;
	Gemmashard__V1__GenerateRequest *req;

	memset(g, 0, sizeof(*g));
	why[0] = '\0';
	req = g->req = gemmashard__v1__generate_request__unpack(NULL, len, data);
	if (!req) {
		snprintf(why, cap, "malformed GenerateRequest (not a valid protobuf message)");
		return GS_CERR_INVALID;
	}
	s->model = req->model;
	s->sp = gs_sampling_params_default();
	if (req->input_case == GEMMASHARD__V1__GENERATE_REQUEST__INPUT_PROMPT) {
		s->prompt = req->prompt;
	} else if (req->input_case == GEMMASHARD__V1__GENERATE_REQUEST__INPUT_PROMPT_IDS) {
		if (req->prompt_ids->n_ids == 0 || req->prompt_ids->n_ids > INT32_MAX) {
			snprintf(why, cap, "prompt_ids must hold 1 to %d token ids, got %zu", INT32_MAX, req->prompt_ids->n_ids);
			return GS_CERR_INVALID;
		}
		s->prompt_ids = req->prompt_ids->ids;
		s->n_prompt_ids = (int32_t)req->prompt_ids->n_ids;
	} else if (req->input_case == GEMMASHARD__V1__GENERATE_REQUEST__INPUT_MESSAGES) {
		size_t n = req->messages->n_messages;
		if (n == 0) {
			snprintf(why, cap, "messages must not be empty");
			return GS_CERR_INVALID;
		}
		if (n > INT_MAX) {
			snprintf(why, cap, "messages has %zu entries, more than %d", n, INT_MAX);
			return GS_CERR_INVALID;
		}
		size_t n_parts = 0, n_images = 0;
		for (size_t i = 0; i < n; i++) {
			const Gemmashard__V1__Message *m = req->messages->messages[i];
			n_parts += m->n_parts;
			for (size_t k = 0; k < m->n_parts; k++)
				n_images += m->parts[k]->part_case == GEMMASHARD__V1__CONTENT_PART__PART_IMAGE;
		}
		if (n_images > GS_COORD_MAX_IMAGES) {
			snprintf(why, cap, "messages: %zu images in one request, more than the limit of %d", n_images,
				 GS_COORD_MAX_IMAGES);
			return GS_CERR_INVALID;
		}
		g->msgs = calloc(n, sizeof(*g->msgs));
		g->parts = calloc(n_parts + 1, sizeof(*g->parts));
		g->images_in = calloc(n_images + 1, sizeof(*g->images_in));
		if (!g->msgs || !g->parts || !g->images_in) {
			snprintf(why, cap, "coordinator: out of memory");
			return GS_CERR_INTERNAL;
		}
		n_parts = 0;
		for (size_t i = 0; i < n; i++) {
			const Gemmashard__V1__Message *m = req->messages->messages[i];
			if (!m->role) {
				snprintf(why, cap, "messages[%zu] needs a role", i);
				return GS_CERR_INVALID;
			}
			if (m->content && m->n_parts) {
				snprintf(why, cap, "messages[%zu]: give content or parts, not both", i);
				return GS_CERR_INVALID;
			}
			if (!m->content && !m->n_parts) {
				snprintf(why, cap, "messages[%zu] needs content or parts", i);
				return GS_CERR_INVALID;
			}
			g->msgs[i].role = m->role;
			g->msgs[i].content = m->content;
			if (m->content)
				continue;
			g->msgs[i].parts = &g->parts[n_parts];
			g->msgs[i].n_parts = m->n_parts;
			for (size_t k = 0; k < m->n_parts; k++, n_parts++) {
				const Gemmashard__V1__ContentPart *p = m->parts[k];
				const Gemmashard__V1__Image *im = p->image;
				if (p->part_case == GEMMASHARD__V1__CONTENT_PART__PART_TEXT) {
					g->parts[n_parts] = (struct gs_chat_part){ GS_CHAT_PART_TEXT, p->text };
					continue;
				}
				if (p->part_case != GEMMASHARD__V1__CONTENT_PART__PART_IMAGE) {
					snprintf(why, cap, "messages[%zu].parts[%zu] is empty (set text or image)", i, k);
					return GS_CERR_INVALID;
				}
				if (!im->has_data || im->data.len == 0) {
					snprintf(why, cap, "messages[%zu].parts[%zu].image.data is empty", i, k);
					return GS_CERR_INVALID;
				}
				if (im->has_window_center != im->has_window_width ||
				    (im->has_window_width && !(im->window_width > 0 && isfinite(im->window_center)))) {
					snprintf(why, cap, "messages[%zu].parts[%zu].image: give window_center and "
						 "window_width together, the width > 0", i, k);
					return GS_CERR_INVALID;
				}
				g->parts[n_parts] = (struct gs_chat_part){ GS_CHAT_PART_IMAGE, NULL };
				g->images_in[g->n_images_in++] = (struct gs_coord_image_in){
					.data = im->data.data, .n = im->data.len,
					.mime = im->mime_type && im->mime_type[0] ? im->mime_type : NULL,
					.has_window = im->has_window_width, .window_center = im->window_center,
					.window_width = im->window_width };
			}
		}
		s->messages = g->msgs;
		s->n_messages = (int)n;
	} else {
		snprintf(why, cap, "missing prompt or messages");
		return GS_CERR_INVALID;
	}
	if (req->has_max_tokens) {
		if (req->max_tokens < 1 || req->max_tokens > L->max_tokens_limit) {
			snprintf(why, cap, "max_tokens must be an integer in [1, %d], got %d", L->max_tokens_limit,
				 req->max_tokens);
			return GS_CERR_INVALID;
		}
		s->max_tokens = req->max_tokens;
	}
	if (req->has_temperature)
		s->sp.temperature = req->temperature;
	if (req->has_top_k)
		s->sp.top_k = req->top_k;
	if (req->has_top_p)
		s->sp.top_p = req->top_p;
	if (req->has_min_p)
		s->sp.min_p = req->min_p;
	if (req->has_repetition_penalty)
		s->sp.repetition_penalty = req->repetition_penalty;
	if (req->has_seed) {
		s->sp.seed = req->seed;
		s->has_seed = true;
	}
	if (req->n_stop > GS_COORD_MAX_STOP) {
		snprintf(why, cap, "stop has %zu strings, at most %d are allowed", req->n_stop, GS_COORD_MAX_STOP);
		return GS_CERR_INVALID;
	}
	for (size_t i = 0; i < req->n_stop; i++)
		s->stop[i] = req->stop[i];
	s->n_stop = (int)req->n_stop;
	s->logprobs = req->has_logprobs && req->logprobs;
	s->top_logprobs = req->has_top_logprobs ? req->top_logprobs : 0;
	g->n = 1;
	if (req->has_n) {
		if (req->n < 1 || req->n > GS_COORD_MAX_N) {
			snprintf(why, cap, "n must be an integer in [1, %d], got %d", GS_COORD_MAX_N, req->n);
			return GS_CERR_INVALID;
		}
		g->n = req->n;
	}
	return gs_grpc_parse_openai(g, req, why, cap);
}

/* ---- methods ----------------------------------------------------------------------------- */

/* With c->mu held: admits a parsed request whose images (if any) are decoded. */
static void generate_submit(struct call *c, struct gs_grpc_gen *g, uint8_t *images, enum gs_cerr e, const char *why_images)
{
	struct gs_coord *coord = c->g->coord;
	char why[600];

	if (e != GS_CERR_NONE) {
		send_error(c, e, why_images);
		return;
	}
	if (c->status_started) /* the client left while its images were decoded */
		return;
	g->spec.images = images;
	g->spec.n_images = g->n_images_in;

	struct gs_creq *rs[GS_COORD_MAX_N];
	int n = g->n > 1 ? g->n : 1;
	e = gs_coord_submit_n(coord, GS_API_GRPC, &g->spec, n, on_output, c, rs, why, sizeof(why));
	if (e != GS_CERR_NONE) {
		send_error(c, e, why);
		return;
	}
	for (int i = 0; i < n; i++)
		c->creqs[i] = rs[i];
	c->n_creq = n;
	c->creq = rs[0];
	if (c->cancelled || c->closed)
		cancel_all(rs, n);
	pump(c);
}

/* The completion-queue thread gave this call's OP_RECV completion to an image thread: it
 * decodes the images without the call's lock (the completion-queue thread keeps serving every
 * other call meanwhile), admits the request, then completes the batch as cq_main would. */
struct image_job {
	struct call        *c;
	struct gs_grpc_gen *g;
};

static void recv_batch_done(struct call *c)
{
	pthread_mutex_lock(&c->mu);
	bool done = --c->pending == 0 && c->status_started && !c->send_busy;
	pthread_mutex_unlock(&c->mu);
	if (done)
		call_free(c);
}

static void *image_job_main(void *p)
{
	struct image_job *j = p;
	struct call *c = j->c;
	uint8_t *images = NULL;
	char why[600];

	enum gs_cerr e = gs_coord_prepare_images(c->g->coord, j->g->spec.model, j->g->images_in, j->g->n_images_in,
						 &images, why, sizeof(why));
	pthread_mutex_lock(&c->mu);
	generate_submit(c, j->g, images, e, why);
	pthread_mutex_unlock(&c->mu);
	free(images);
	gs_grpc_gen_free(j->g);
	free(j->g);
	free(j);
	recv_batch_done(c);
	return NULL;
}

/* With c->mu held (on_recv). true: the request has images and an image thread took over the
 * OP_RECV completion (recv_batch_done); false: it was answered or admitted here. */
static bool do_generate(struct call *c, const uint8_t *data, size_t len)
{
	struct gs_coord *coord = c->g->coord;
	struct gs_grpc_gen *g = calloc(1, sizeof(*g));
	char why[600];

	if (!g) {
		send_error(c, GS_CERR_INTERNAL, "coordinator: out of memory for the request");
		return false;
	}
	enum gs_cerr e = gs_grpc_parse_generate(g, data, len, gs_coord_get_limits(coord), why, sizeof(why));
	snprintf(c->user, sizeof(c->user), "%s", g->user);
	if (e != GS_CERR_NONE) {
		send_error(c, e, why);
		goto out;
	}
	c->want_lps = g->spec.logprobs;
	gpr_timespec dl = c->details.deadline;
	if (gpr_time_cmp(dl, gpr_inf_future(dl.clock_type)) != 0) {
		gpr_timespec left = gpr_time_sub(dl, gpr_now(dl.clock_type));
		g->spec.deadline = gs_now_s() + gpr_timespec_to_micros(left) * 1e-6;
	}
	if (g->n_images_in > 0) { /* decoded before admission, so a bad image is refused at once */
		struct image_job *j = malloc(sizeof(*j));
		pthread_attr_t at;
		pthread_t th;
		bool started = false;

		if (j && pthread_attr_init(&at) == 0) {
			*j = (struct image_job){ c, g };
			pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
			started = pthread_create(&th, &at, image_job_main, j) == 0;
			pthread_attr_destroy(&at);
		}
		if (started)
			return true;
		free(j);
		uint8_t *images = NULL; /* no thread: decode here */
		e = gs_coord_prepare_images(coord, g->spec.model, g->images_in, g->n_images_in, &images, why, sizeof(why));
		generate_submit(c, g, images, e, why);
		free(images);
		goto out;
	}
	generate_submit(c, g, NULL, GS_CERR_NONE, NULL);
out:
	gs_grpc_gen_free(g);
	free(g);
	return false;
}

static void do_tokenize(struct call *c, const uint8_t *data, size_t len)
{
	Gemmashard__V1__TokenizeRequest *req = gemmashard__v1__tokenize_request__unpack(NULL, len, data);
	Gemmashard__V1__TokenizeResponse resp = GEMMASHARD__V1__TOKENIZE_RESPONSE__INIT;
	int32_t *ids;
	size_t n;
	char why[600];

	if (!req) {
		send_error(c, GS_CERR_INVALID, "malformed TokenizeRequest (not a valid protobuf message)");
		return;
	}
	enum gs_cerr e = gs_coord_tokenize(c->g->coord, req->model, req->text,
					   req->has_add_special_tokens ? req->add_special_tokens : true, &ids, &n,
					   why, sizeof(why));
	if (e != GS_CERR_NONE) {
		send_error(c, e, why);
	} else {
		resp.n_token_ids = n;
		resp.token_ids = ids;
		send_status(c, 0, "", pack(&resp.base));
		free(ids);
	}
	gemmashard__v1__tokenize_request__free_unpacked(req, NULL);
}

static void do_model_info(struct call *c, const uint8_t *data, size_t len)
{
	Gemmashard__V1__ModelInfoRequest *req = gemmashard__v1__model_info_request__unpack(NULL, len, data);
	Gemmashard__V1__ModelInfoResponse resp = GEMMASHARD__V1__MODEL_INFO_RESPONSE__INIT;
	struct gs_coord *coord = c->g->coord;
	const struct gs_coord_model *m;
	struct gs_model_info info;
	const char *names[GS_COORD_MAX_MODELS];
	char why[600];
	enum gs_cerr e;

	if (!req) {
		send_error(c, GS_CERR_INVALID, "malformed ModelInfoRequest (not a valid protobuf message)");
		return;
	}
	if ((e = gs_coord_model_find(coord, req->model, &m, why, sizeof(why))) != GS_CERR_NONE ||
	    (e = gs_coord_model_info(coord, m->name, &info)) != GS_CERR_NONE) {
		send_error(c, e, why);
	} else {
		/* the requested model, and every served one by name */
		resp.has_vision = true;
		resp.vision = info.vision;
		for (int i = 0; i < gs_coord_n_models(coord) && i < (int)(sizeof(names) / sizeof(names[0])); i++)
			names[resp.n_models++] = gs_coord_model_at(coord, i)->name;
		resp.models = (char **)names;
		resp.model = (char *)info.name;
		resp.architecture = (char *)info.architecture;
		resp.has_vocab_size = resp.has_max_context = resp.has_engines = resp.has_tensor_parallel = true;
		resp.vocab_size = info.vocab_size;
		resp.max_context = info.max_model_len;
		resp.engines = info.engines;
		resp.tensor_parallel = info.tensor_parallel;
		resp.n_numerics = (size_t)info.n_numerics;
		resp.numerics = (char **)info.numerics;
		send_status(c, 0, "", pack(&resp.base));
	}
	gemmashard__v1__model_info_request__free_unpacked(req, NULL);
}

static void do_health(struct call *c, const uint8_t *data, size_t len)
{
	Grpc__Health__V1__HealthCheckRequest *req = grpc__health__v1__health_check_request__unpack(NULL, len, data);
	Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;

	if (!req) {
		send_error(c, GS_CERR_INVALID, "malformed HealthCheckRequest (not a valid protobuf message)");
		return;
	}
	if (req->service && req->service[0] && strcmp(req->service, "gemmashard.v1.Inference") != 0) {
		char why[300];
		snprintf(why, sizeof(why), "unknown service \"%.200s\"", req->service);
		send_error(c, GS_CERR_NOT_FOUND, why);
	} else {
		resp.status = gs_coord_healthy_engines(c->g->coord) > 0
				      ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
				      : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
		send_status(c, 0, "", pack(&resp.base));
	}
	grpc__health__v1__health_check_request__free_unpacked(req, NULL);
}

/* ---- call state machine ------------------------------------------------------------------ */

static void post_request_call(struct gs_grpc *g);

static void on_new(struct call *c)
{
	struct gs_grpc *g = c->g;
	grpc_op ops[2];
	char auth[GS_APIKEY_MAX_LEN + 64]; /* longer values are cut, and then match no key */

	post_request_call(g); /* keep one call always posted */
	c->t_start = gs_now_s();
	for (int m = 1; m < M_COUNT; m++)
		if (grpc_slice_str_cmp(c->details.method, method_path[m]) == 0)
			c->method = (enum method)m;
	pthread_mutex_lock(&c->mu);
	memset(ops, 0, sizeof(ops));
	ops[0].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
	ops[0].data.recv_close_on_server.cancelled = &c->cancelled;
	start_batch(c, ops, 1, OP_CLOSE);
	memset(ops, 0, sizeof(ops));
	ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
	if (c->method == M_UNKNOWN) {
		start_batch(c, ops, 1, OP_RECV);
		char *m = grpc_slice_to_c_string(c->details.method);
		char why[300];
		snprintf(why, sizeof(why), "unknown method %.200s", m);
		gpr_free(m);
		send_status(c, 12 /* UNIMPLEMENTED */, why, NULL);
	} else if (c->method != M_HEALTH &&
		   !gs_coord_authorized(g->coord, md_value(c, "authorization", auth, sizeof(auth)), c->key,
					sizeof(c->key))) {
		start_batch(c, ops, 1, OP_RECV);
		send_error(c, GS_CERR_UNAUTHENTICATED,
			   "missing or wrong API key: send metadata \"authorization: Bearer <key>\"");
	} else {
		ops[1].op = GRPC_OP_RECV_MESSAGE;
		ops[1].data.recv_message.recv_message = &c->recv_bb;
		start_batch(c, ops, 2, OP_RECV);
	}
	pthread_mutex_unlock(&c->mu);
	explicit_bzero(auth, sizeof(auth));
}

/* true: an image thread completes this OP_RECV batch (do_generate). */
static bool on_recv(struct call *c, bool ok)
{
	bool deferred = false;

	pthread_mutex_lock(&c->mu);
	if (c->status_started) {
		/* initial metadata of an early error: nothing to do */
	} else if (!ok || !c->recv_bb) {
		send_error(c, GS_CERR_INVALID, "no request message received");
	} else {
		grpc_byte_buffer_reader rd;
		if (!grpc_byte_buffer_reader_init(&rd, c->recv_bb)) {
			send_error(c, GS_CERR_INVALID, "cannot read the request message");
		} else {
			grpc_slice s = grpc_byte_buffer_reader_readall(&rd);
			const uint8_t *p = GRPC_SLICE_START_PTR(s);
			size_t n = GRPC_SLICE_LENGTH(s);
			switch (c->method) {
			case M_GENERATE:
			case M_STREAM:
				deferred = do_generate(c, p, n);
				break;
			case M_TOKENIZE:
				do_tokenize(c, p, n);
				break;
			case M_MODELINFO:
				do_model_info(c, p, n);
				break;
			case M_HEALTH:
				do_health(c, p, n);
				break;
			default:
				break;
			}
			grpc_slice_unref(s);
			grpc_byte_buffer_reader_destroy(&rd);
		}
	}
	pthread_mutex_unlock(&c->mu);
	return deferred;
}

static void on_close(struct call *c)
{
	struct gs_creq *rs[GS_COORD_MAX_N];
	int n;
	pthread_mutex_lock(&c->mu);
	c->closed = true;
	n = c->cancelled ? c->n_creq : 0;
	for (int i = 0; i < n; i++)
		rs[i] = c->creqs[i];
	pthread_mutex_unlock(&c->mu);
	cancel_all(rs, n); /* client cancelled or its deadline passed: free the KV */
}

static void on_send(struct call *c, bool ok)
{
	pthread_mutex_lock(&c->mu);
	c->send_busy = false;
	if (c->send_bb) {
		grpc_byte_buffer_destroy(c->send_bb);
		c->send_bb = NULL;
	}
	if (!ok) {
		/* the client went away: stop generating */
		struct gs_creq *rs[GS_COORD_MAX_N];
		int n = c->n_creq;
		for (int i = 0; i < n; i++)
			rs[i] = c->creqs[i];
		if (!c->status_started) {
			c->status_started = true;
			c->finish = GS_CFIN_CANCELLED;
			call_done(c, "CANCELLED");
		}
		pthread_mutex_unlock(&c->mu);
		cancel_all(rs, n);
		return;
	}
	pump(c);
	pthread_mutex_unlock(&c->mu);
}

static void post_request_call(struct gs_grpc *g)
{
	if (g->shutting_down)
		return;
	struct call *c = calloc(1, sizeof(*c));
	if (!c) {
		gs_log(GS_LOG_ERROR, "grpc: out of memory for a call");
		return;
	}
	c->g = g;
	for (int i = 0; i < OP_COUNT; i++)
		c->tags[i] = (struct tag){ .call = c, .op = (enum op)i };
	pthread_mutex_init(&c->mu, NULL);
	grpc_call_details_init(&c->details);
	grpc_metadata_array_init(&c->md);
	atomic_fetch_add(&g->live_calls, 1);
	c->pending = 1;
	grpc_call_error e = grpc_server_request_call(g->server, &c->call, &c->details, &c->md, g->cq, g->cq,
						     &c->tags[OP_NEW]);
	if (e != GRPC_CALL_OK) {
		gs_log(GS_LOG_ERROR, "grpc: request_call failed: %d", (int)e);
		grpc_call_details_destroy(&c->details);
		grpc_metadata_array_destroy(&c->md);
		pthread_mutex_destroy(&c->mu);
		atomic_fetch_sub(&g->live_calls, 1);
		free(c);
	}
}

static void *cq_main(void *arg)
{
	struct gs_grpc *g = arg;

	for (int i = 0; i < 16; i++)
		post_request_call(g);
	for (;;) {
		if (atomic_load(&g->stop) && !g->shutting_down) {
			g->shutting_down = true;
			grpc_server_shutdown_and_notify(g->server, g->cq, &g->shutdown_tag);
			grpc_server_cancel_all_calls(g->server);
		}
		gpr_timespec dl = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(200, GPR_TIMESPAN));
		grpc_event ev = grpc_completion_queue_next(g->cq, dl, NULL);
		if (ev.type == GRPC_QUEUE_SHUTDOWN)
			break;
		if (ev.type != GRPC_OP_COMPLETE)
			continue;
		if (ev.tag == &g->shutdown_tag) {
			grpc_completion_queue_shutdown(g->cq);
			continue;
		}
		struct tag *t = ev.tag;
		struct call *c = t->call;
		bool ok = ev.success != 0;
		if (t->op == OP_NEW) {
			if (!ok) {
				/* server shutting down: the posted call never started */
				grpc_call_details_destroy(&c->details);
				grpc_metadata_array_destroy(&c->md);
				pthread_mutex_destroy(&c->mu);
				atomic_fetch_sub(&g->live_calls, 1);
				free(c);
				continue;
			}
			on_new(c);
		} else if (t->op == OP_RECV) {
			if (on_recv(c, ok))
				continue; /* its image thread completes the batch */
		} else if (t->op == OP_CLOSE) {
			on_close(c);
		} else if (t->op == OP_SEND) {
			on_send(c, ok);
		}
		pthread_mutex_lock(&c->mu);
		bool done = --c->pending == 0 && c->status_started && !c->send_busy;
		if (t->op == OP_STATUS && c->send_bb) {
			grpc_byte_buffer_destroy(c->send_bb);
			c->send_bb = NULL;
		}
		pthread_mutex_unlock(&c->mu);
		if (done)
			call_free(c);
	}
	return NULL;
}

/* Plaintext, or TLS 1.2+ from tls's PEM (gRPC copies it); with a client CA, a client must
 * present a certificate that chains to it or the handshake fails. NULL when out of memory. */
static grpc_server_credentials *grpc_server_creds(const struct gs_tls *tls)
{
	if (!tls)
		return grpc_insecure_server_credentials_create();
	grpc_ssl_pem_key_cert_pair pair = { .private_key = tls->key_pem, .cert_chain = tls->cert_pem };
	return grpc_ssl_server_credentials_create_ex(
		tls->client_ca_pem, &pair, 1,
		tls->client_ca_pem ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
				   : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE,
		NULL);
}

enum gs_status gs_grpc_start(struct gs_coord *coord, const char *addr, const struct gs_tls *tls,
			     struct gs_grpc **out)
{
	struct gs_grpc *g = calloc(1, sizeof(*g));
	grpc_arg args[3];
	*out = NULL;
	if (!g)
		return gs_errorf(GS_ERR_NOMEM, "grpc: out of memory");
	g->coord = coord;
	size_t max_msg = gs_coord_get_limits(coord)->max_body_bytes;
	args[0].type = GRPC_ARG_INTEGER;
	args[0].key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
	args[0].value.integer = max_msg > 0x7fffffff ? 0x7fffffff : (int)max_msg;
	args[1].type = GRPC_ARG_INTEGER;
	args[1].key = (char *)GRPC_ARG_ALLOW_REUSEPORT;
	args[1].value.integer = 0;
	/* concurrent calls per connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS): a client
	 * queues the calls over it until one ends; 0: gRPC's default (no limit) */
	int32_t streams = gs_coord_get_limits(coord)->max_grpc_streams;
	args[2].type = GRPC_ARG_INTEGER;
	args[2].key = (char *)GRPC_ARG_MAX_CONCURRENT_STREAMS;
	args[2].value.integer = streams > 0 ? streams : INT32_MAX;
	grpc_channel_args ca = { .num_args = 3, .args = args };
	g->cq = grpc_completion_queue_create_for_next(NULL);
	g->server = grpc_server_create(&ca, NULL);
	grpc_server_register_completion_queue(g->server, g->cq, NULL);
	grpc_server_credentials *cr = grpc_server_creds(tls);
	int port = cr ? grpc_server_add_http2_port(g->server, addr, cr) : 0;
	if (cr)
		grpc_server_credentials_release(cr);
	if (!port) {
		grpc_server_destroy(g->server);
		grpc_completion_queue_shutdown(g->cq);
		while (grpc_completion_queue_next(g->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type != GRPC_QUEUE_SHUTDOWN)
			;
		grpc_completion_queue_destroy(g->cq);
		free(g);
		return cr ? gs_errorf(GS_ERR_IO, "grpc: cannot listen on %s (address in use or invalid)", addr)
			  : gs_errorf(GS_ERR_INTERNAL, "grpc: cannot make the TLS server credentials");
	}
	grpc_server_start(g->server);
	if (pthread_create(&g->thread, NULL, cq_main, g) != 0) {
		atomic_store(&g->stop, true);
		cq_main(g); /* drains and returns */
		grpc_server_destroy(g->server);
		grpc_completion_queue_destroy(g->cq);
		free(g);
		return gs_errorf(GS_ERR_INTERNAL, "grpc: cannot start the server thread");
	}
	*out = g;
	return GS_OK;
}

void gs_grpc_stop(struct gs_grpc *g)
{
	if (!g)
		return;
	atomic_store(&g->stop, true);
	pthread_join(g->thread, NULL);
	grpc_server_destroy(g->server);
	grpc_completion_queue_destroy(g->cq);
	if (atomic_load(&g->live_calls))
		gs_log(GS_LOG_WARN, "grpc: %d calls still referenced at shutdown", atomic_load(&g->live_calls));
	free(g);
}
