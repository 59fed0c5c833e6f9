/* gemmashard generate / chat: terminal clients of the coordinator's public gRPC API
 * (gemmashard.v1.Inference), written against the gRPC C core only. One channel and one pluck
 * completion queue per process; every call is driven to its status before the next starts. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include "gemmashard/v1/inference.pb-c.h"
#include "gs_args.h"
#include "gs_cmds.h"
#include "gs_config.h"
#include "gs_util.h"

#define CLIENT_EXIT_INTERRUPTED 130
#define CLIENT_MAX_STOP         8

static const char client_exit_codes[] =
	"exit codes: 0 ok; 1 other error; 2 bad flags, INVALID_ARGUMENT, NOT_FOUND or OUT_OF_RANGE;\n"
	"  3 UNAVAILABLE (nothing listening, no healthy engine); 4 DEADLINE_EXCEEDED (--timeout);\n"
	"  5 RESOURCE_EXHAUSTED (queue full); 6 UNAUTHENTICATED or PERMISSION_DENIED (--api-key);\n"
	"  130 interrupted (Ctrl-C cancels the call).\n"
	"TLS: --tls-ca FILE makes the channel TLS, trusting only the CA certificates in FILE; add\n"
	"  --tls-cert FILE --tls-key FILE when the server asks for a client certificate, and\n"
	"  --tls-server-name NAME when its certificate names another host than --addr.\n"
	"environment: GEMMASHARD_ADDR (default for --addr), GEMMASHARD_API_KEY (default for --api-key).";

static volatile sig_atomic_t client_interrupted;

static void client_on_sigint(int sig)
{
	client_interrupted = 1;
}

/* Growable NUL-terminated text (assistant replies, assembled streams). */
struct client_text {
	char  *p;
	size_t n, cap;
};

static bool client_text_append(struct client_text *t, const char *s, size_t n)
{
	if (t->n + n + 1 > t->cap) {
		size_t cap = t->cap ? t->cap : 256;
		char *p;
		while (cap < t->n + n + 1)
			cap *= 2;
		p = realloc(t->p, cap);
		if (!p)
			return false;
		t->p = p;
		t->cap = cap;
	}
	memcpy(t->p + t->n, s, n);
	t->n += n;
	t->p[t->n] = '\0';
	return true;
}

/* One generation's result, filled from the unary response or assembled from the chunks. */
struct client_reply {
	struct client_text text;
	int32_t           *token_ids;       /* [n_token_ids] */
	size_t             n_token_ids, cap_token_ids;
	char              *request_id;
	int                finish_reason;   /* Gemmashard__V1__FinishReason */
	int32_t            prompt_tokens, completion_tokens;
	bool               has_usage;
	double             t_start, t_first, t_end;  /* gs_now_s(); t_first: first chunk (stream) */
	size_t             first_chunk_tokens;
	grpc_status_code   status;
	char              *details;         /* malloc'd status details */
};

static void client_reply_free(struct client_reply *r)
{
	free(r->text.p);
	free(r->token_ids);
	free(r->request_id);
	free(r->details);
	memset(r, 0, sizeof(*r));
}

/* Merge one chunk (or the whole unary response: same field layout) into the reply. */
static bool client_reply_add(struct client_reply *r, const char *request_id, const char *text, size_t n_ids,
			     const int32_t *ids, bool has_finish, int finish, const Gemmashard__V1__Usage *usage)
{
	if (request_id && request_id[0] && !r->request_id && !(r->request_id = strdup(request_id)))
		return false;
	if (text && !client_text_append(&r->text, text, strlen(text)))
		return false;
	if (r->n_token_ids + n_ids > r->cap_token_ids) {
		size_t cap = r->cap_token_ids ? r->cap_token_ids : 64;
		int32_t *p;
		while (cap < r->n_token_ids + n_ids)
			cap *= 2;
		if (!(p = realloc(r->token_ids, cap * sizeof(*p))))
			return false;
		r->token_ids = p;
		r->cap_token_ids = cap;
	}
	if (n_ids)
		memcpy(r->token_ids + r->n_token_ids, ids, n_ids * sizeof(*ids));
	r->n_token_ids += n_ids;
	if (has_finish && finish != GEMMASHARD__V1__FINISH_REASON__FINISH_REASON_UNSPECIFIED)
		r->finish_reason = finish;
	if (usage) {
		r->has_usage = true;
		r->prompt_tokens = usage->prompt_tokens;
		r->completion_tokens = usage->completion_tokens;
	}
	return true;
}

static const char *client_finish_name(int f)
{
	switch (f) {
	case GEMMASHARD__V1__FINISH_REASON__STOP:
		return "STOP";
	case GEMMASHARD__V1__FINISH_REASON__LENGTH:
		return "LENGTH";
	case GEMMASHARD__V1__FINISH_REASON__CANCELLED:
		return "CANCELLED";
	case GEMMASHARD__V1__FINISH_REASON__ERROR:
		return "ERROR";
	default:
		return "FINISH_REASON_UNSPECIFIED";
	}
}

static const char *client_status_name(grpc_status_code s)
{
	static const char *const names[] = {
		"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
		"ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
		"OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
	};
	_Static_assert(GRPC_STATUS_UNAUTHENTICATED == 16, "grpc status table");
	return (int)s >= 0 && (size_t)s < sizeof(names) / sizeof(names[0]) ? names[s] : "UNKNOWN";
}

/* The exit code table printed by client_exit_codes. */
static int client_status_exit(grpc_status_code s)
{
	switch (s) {
	case GRPC_STATUS_OK:
		return 0;
	case GRPC_STATUS_INVALID_ARGUMENT:
	case GRPC_STATUS_NOT_FOUND:
	case GRPC_STATUS_OUT_OF_RANGE:
		return 2;
	case GRPC_STATUS_UNAVAILABLE:
		return 3;
	case GRPC_STATUS_DEADLINE_EXCEEDED:
		return 4;
	case GRPC_STATUS_RESOURCE_EXHAUSTED:
		return 5;
	case GRPC_STATUS_UNAUTHENTICATED:
	case GRPC_STATUS_PERMISSION_DENIED:
		return 6;
	default:
		return 1;
	}
}

struct client {
	grpc_channel          *channel;
	grpc_completion_queue *cq;
	char                  *authorization;  /* "Bearer KEY" or NULL */
	double                 timeout_s;      /* deadline of each call */
	bool                   stream;         /* GenerateStream, printing chunks as they arrive */
	bool                   json;           /* one JSON line per reply instead of text */
	bool                   quiet;          /* no summary on stderr */
	bool                   cancelled;      /* this call was cancelled on Ctrl-C */
	bool                   tls;            /* the channel is TLS (--tls-ca) */
};

/* --tls-* flags: PEM files read whole. */
struct client_tls {
	const char *ca, *cert, *key, *server_name; /* paths (NULL: not given) and the name override */
	char       *ca_pem, *cert_pem, *key_pem;
};

static void client_tls_free(struct client_tls *t)
{
	free(t->ca_pem);
	free(t->cert_pem);
	if (t->key_pem)
		explicit_bzero(t->key_pem, strlen(t->key_pem));
	free(t->key_pem);
}

/* Reads one --tls-* file and checks that it holds the PEM block it should ("CERTIFICATE",
 * "PRIVATE KEY"); false with a message naming the flag and the file. */
static bool client_tls_read(const char *cmd, const char *flag, const char *path, const char *block, char **out)
{
	char marker[64];
	size_t len;

	if (gs_read_file(path, out, &len) != GS_OK) {
		fprintf(stderr, "gemmashard %s: %s: %s\n", cmd, flag, gs_last_error());
		return false;
	}
	snprintf(marker, sizeof(marker), "%s-----", block);
	if (!strstr(*out, "-----BEGIN ") || !strstr(*out, marker)) {
		fprintf(stderr, "gemmashard %s: %s %s: no PEM %s in it\n", cmd, flag, path,
			strcmp(block, "CERTIFICATE") ? "private key" : "certificate");
		return false;
	}
	return true;
}

/* The channel to addr: plaintext, or TLS trusting t->ca only (with a client certificate when
 * given). NULL after a message when a file is missing or wrong. */
static grpc_channel *client_channel(const char *cmd, const char *addr, struct client_tls *t)
{
	grpc_ssl_pem_key_cert_pair pair;
	grpc_channel_credentials *creds;
	grpc_channel *ch;
	grpc_arg arg;
	grpc_channel_args args = { .num_args = 0, .args = &arg };

	if (!t->ca) {
		creds = grpc_insecure_credentials_create();
		ch = grpc_channel_create(addr, creds, NULL);
		grpc_channel_credentials_release(creds);
		return ch;
	}
	if (!client_tls_read(cmd, "--tls-ca", t->ca, "CERTIFICATE", &t->ca_pem) ||
	    (t->cert && !client_tls_read(cmd, "--tls-cert", t->cert, "CERTIFICATE", &t->cert_pem)) ||
	    (t->key && !client_tls_read(cmd, "--tls-key", t->key, "PRIVATE KEY", &t->key_pem)))
		return NULL;
	pair = (grpc_ssl_pem_key_cert_pair){ .private_key = t->key_pem, .cert_chain = t->cert_pem };
	creds = grpc_ssl_credentials_create(t->ca_pem, t->cert ? &pair : NULL, NULL, NULL);
	if (!creds) {
		fprintf(stderr, "gemmashard %s: cannot make TLS credentials from --tls-ca %s\n", cmd, t->ca);
		return NULL;
	}
	if (t->server_name) {
		arg.type = GRPC_ARG_STRING;
		arg.key = (char *)GRPC_SSL_TARGET_NAME_OVERRIDE_ARG;
		arg.value.string = (char *)t->server_name;
		args.num_args = 1;
	}
	ch = grpc_channel_create(addr, creds, &args);
	grpc_channel_credentials_release(creds);
	return ch;
}

/* Wait for the batch tagged `tag`. Ctrl-C cancels the call once; the batch still completes
 * (unsuccessfully), so waiting goes on. Returns the batch's success flag. */
static bool client_wait(struct client *c, grpc_call *call, void *tag)
{
	for (;;) {
		gpr_timespec poll;
		grpc_event ev;

		/* Checked before every wait: a fast stream may never let the poll time out. */
		if (client_interrupted && !c->cancelled) {
			grpc_call_cancel(call, NULL);
			c->cancelled = true;
		}
		poll = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(100, GPR_TIMESPAN));
		ev = grpc_completion_queue_pluck(c->cq, tag, poll, NULL);
		if (ev.type == GRPC_OP_COMPLETE)
			return ev.success != 0;
		GS_ASSERT(ev.type == GRPC_QUEUE_TIMEOUT);
	}
}

static void client_start_batch(grpc_call *call, const grpc_op *ops, size_t n, void *tag)
{
	grpc_call_error e = grpc_call_start_batch(call, ops, n, tag, NULL);
	if (e != GRPC_CALL_OK)
		fprintf(stderr, "gemmashard: grpc_call_start_batch: %s\n", grpc_call_error_to_string(e));
	GS_ASSERT(e == GRPC_CALL_OK);
}

/* Read a received message into a contiguous slice (it may arrive in several). */
static grpc_slice client_read_all(grpc_byte_buffer *bb)
{
	grpc_byte_buffer_reader rd;
	grpc_slice s;

	GS_ASSERT(grpc_byte_buffer_reader_init(&rd, bb));
	s = grpc_byte_buffer_reader_readall(&rd);
	grpc_byte_buffer_reader_destroy(&rd);
	return s;
}

/* One chunk: print its text at once (text mode), merge it into the reply. */
static bool client_on_chunk(struct client *c, struct client_reply *r, grpc_byte_buffer *bb)
{
	grpc_slice s = client_read_all(bb);
	Gemmashard__V1__GenerateChunk *ch =
		gemmashard__v1__generate_chunk__unpack(NULL, GRPC_SLICE_LENGTH(s), GRPC_SLICE_START_PTR(s));
	bool ok = false;

	grpc_slice_unref(s);
	if (!ch) {
		fprintf(stderr, "gemmashard: malformed GenerateChunk from the server\n");
		return false;
	}
	if (r->t_first == 0.0) {
		r->t_first = gs_now_s();
		r->first_chunk_tokens = ch->n_token_ids;
	}
	if (!c->json && ch->text && ch->text[0]) {
		fputs(ch->text, stdout);
		fflush(stdout);
	}
	ok = client_reply_add(r, ch->request_id, ch->text, ch->n_token_ids, ch->token_ids, ch->has_finish_reason,
			      ch->finish_reason, ch->usage);
	if (!ok)
		fprintf(stderr, "gemmashard: out of memory\n");
	gemmashard__v1__generate_chunk__free_unpacked(ch, NULL);
	return ok;
}

static bool client_on_response(struct client_reply *r, grpc_byte_buffer *bb)
{
	grpc_slice s = client_read_all(bb);
	Gemmashard__V1__GenerateResponse *res =
		gemmashard__v1__generate_response__unpack(NULL, GRPC_SLICE_LENGTH(s), GRPC_SLICE_START_PTR(s));
	bool ok;

	grpc_slice_unref(s);
	if (!res) {
		fprintf(stderr, "gemmashard: malformed GenerateResponse from the server\n");
		return false;
	}
	ok = client_reply_add(r, res->request_id, res->text, res->n_token_ids, res->token_ids, res->has_finish_reason,
			      res->finish_reason, res->usage);
	if (!ok)
		fprintf(stderr, "gemmashard: out of memory\n");
	gemmashard__v1__generate_response__free_unpacked(res, NULL);
	return ok;
}

/* Run one Generate / GenerateStream call to its status. Fills r (status, details, the reply);
 * returns false only on a local failure (malformed message, out of memory), after which the
 * call has been cancelled and r->status says so. */
static bool client_call(struct client *c, const Gemmashard__V1__GenerateRequest *req, struct client_reply *r)
{
	const char *method = c->stream ? "/gemmashard.v1.Inference/GenerateStream" : "/gemmashard.v1.Inference/Generate";
	gpr_timespec deadline = gpr_time_add(gpr_now(GPR_CLOCK_REALTIME),
					     gpr_time_from_millis((int64_t)(c->timeout_s * 1000.0), GPR_TIMESPAN));
	grpc_slice method_slice = grpc_slice_from_static_string(method);
	grpc_call *call = grpc_channel_create_call(c->channel, NULL, GRPC_PROPAGATE_DEFAULTS, c->cq, method_slice, NULL,
						   deadline, NULL);
	grpc_slice payload = grpc_slice_malloc(gemmashard__v1__generate_request__get_packed_size(req));
	grpc_byte_buffer *send_bb, *recv_bb = NULL;
	grpc_metadata auth = { 0 };
	grpc_metadata_array initial_md, trailing_md;
	grpc_slice details = grpc_empty_slice();
	const char *error_string = NULL;
	grpc_op ops[6];
	size_t n = 0;
	bool local_ok = true;

	GS_ASSERT(call);
	gemmashard__v1__generate_request__pack(req, GRPC_SLICE_START_PTR(payload));
	send_bb = grpc_raw_byte_buffer_create(&payload, 1);
	grpc_slice_unref(payload);
	grpc_metadata_array_init(&initial_md);
	grpc_metadata_array_init(&trailing_md);
	if (c->authorization) {
		auth.key = grpc_slice_from_static_string("authorization");
		auth.value = grpc_slice_from_copied_string(c->authorization);
	}
	c->cancelled = false;
	r->status = GRPC_STATUS_UNKNOWN;
	r->t_start = gs_now_s();

	memset(ops, 0, sizeof(ops));
	ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
	ops[n].data.send_initial_metadata.count = c->authorization ? 1 : 0;
	ops[n++].data.send_initial_metadata.metadata = c->authorization ? &auth : NULL;
	ops[n].op = GRPC_OP_SEND_MESSAGE;
	ops[n++].data.send_message.send_message = send_bb;
	ops[n++].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
	ops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
	ops[n++].data.recv_initial_metadata.recv_initial_metadata = &initial_md;
	if (!c->stream) {
		ops[n].op = GRPC_OP_RECV_MESSAGE;
		ops[n++].data.recv_message.recv_message = &recv_bb;
	}
	client_start_batch(call, ops, n, (void *)1);
	client_wait(c, call, (void *)1);

	if (!c->stream) {
		if (recv_bb) {
			local_ok = client_on_response(r, recv_bb);
			grpc_byte_buffer_destroy(recv_bb);
		}
	} else {
		/* One RECV_MESSAGE in flight at a time; a NULL buffer ends the stream. */
		for (;;) {
			memset(ops, 0, sizeof(ops));
			ops[0].op = GRPC_OP_RECV_MESSAGE;
			ops[0].data.recv_message.recv_message = &recv_bb;
			recv_bb = NULL;
			client_start_batch(call, ops, 1, (void *)2);
			client_wait(c, call, (void *)2);
			if (!recv_bb)
				break;
			local_ok = client_on_chunk(c, r, recv_bb);
			grpc_byte_buffer_destroy(recv_bb);
			if (!local_ok) {
				grpc_call_cancel(call, NULL);
				break;
			}
		}
	}
	if (!local_ok && !c->stream)
		grpc_call_cancel(call, NULL);

	memset(ops, 0, sizeof(ops));
	ops[0].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
	ops[0].data.recv_status_on_client.trailing_metadata = &trailing_md;
	ops[0].data.recv_status_on_client.status = &r->status;
	ops[0].data.recv_status_on_client.status_details = &details;
	ops[0].data.recv_status_on_client.error_string = &error_string;
	client_start_batch(call, ops, 1, (void *)3);
	client_wait(c, call, (void *)3);
	r->t_end = gs_now_s();

	r->details = grpc_slice_to_c_string(details);
	grpc_slice_unref(details);
	gpr_free((void *)error_string);
	if (c->authorization)
		grpc_slice_unref(auth.value);
	grpc_metadata_array_destroy(&initial_md);
	grpc_metadata_array_destroy(&trailing_md);
	grpc_byte_buffer_destroy(send_bb);
	grpc_call_unref(call);
	return local_ok;
}

/* --json: the reply as one line, field names as in the proto. */
static void client_print_json(const struct client_reply *r)
{
	cJSON *o = cJSON_CreateObject(), *ids = cJSON_CreateArray(), *u;
	char *s;

	GS_ASSERT(o && ids);
	cJSON_AddStringToObject(o, "request_id", r->request_id ? r->request_id : "");
	cJSON_AddStringToObject(o, "text", r->text.p ? r->text.p : "");
	for (size_t i = 0; i < r->n_token_ids; i++)
		cJSON_AddItemToArray(ids, cJSON_CreateNumber(r->token_ids[i]));
	cJSON_AddItemToObject(o, "token_ids", ids);
	cJSON_AddStringToObject(o, "finish_reason", client_finish_name(r->finish_reason));
	if (r->has_usage) {
		u = cJSON_AddObjectToObject(o, "usage");
		cJSON_AddNumberToObject(u, "prompt_tokens", r->prompt_tokens);
		cJSON_AddNumberToObject(u, "completion_tokens", r->completion_tokens);
	}
	s = cJSON_PrintUnformatted(o);
	GS_ASSERT(s);
	puts(s);
	fflush(stdout);
	cJSON_free(s);
	cJSON_Delete(o);
}

/* "[finish STOP, 12 prompt + 34 completion tokens, first token 0.120 s, 41.3 tok/s]" */
static void client_print_summary(const struct client *c, const struct client_reply *r)
{
	double total = r->t_end - r->t_start, rate = 0.0;
	int completion = r->has_usage ? r->completion_tokens : (int)r->n_token_ids;

	if (c->quiet)
		return;
	/* Streaming: the decode rate after the first chunk; unary: completion tokens / wall time. */
	if (c->stream && r->t_first > 0.0 && completion > (int)r->first_chunk_tokens && r->t_end > r->t_first)
		rate = (completion - (double)r->first_chunk_tokens) / (r->t_end - r->t_first);
	else if (total > 0.0)
		rate = completion / total;
	fprintf(stderr, "[finish %s, %d prompt + %d completion tokens, ", client_finish_name(r->finish_reason),
		r->has_usage ? r->prompt_tokens : 0, completion);
	if (c->stream)
		fprintf(stderr, "first token %.3f s, ", r->t_first > 0.0 ? r->t_first - r->t_start : total);
	else
		fprintf(stderr, "%.3f s, ", total);
	fprintf(stderr, "%.1f tok/s]\n", rate);
}

/* What an UNAVAILABLE that comes from TLS most likely means, in the terms of our flags. */
static void client_hint(const struct client *c, const struct client_reply *r)
{
	const char *d = r->details ? r->details : "";
	bool closed = strcasestr(d, "socket closed") || strcasestr(d, "connection reset") || strcasestr(d, "eof");

	if (r->status != GRPC_STATUS_UNAVAILABLE)
		return;
	if (c->tls && (strcasestr(d, "ssl") || strcasestr(d, "handshake") || strcasestr(d, "certificate")))
		fprintf(stderr, "gemmashard: the TLS handshake failed: the server's certificate must be issued by "
				"the CA in --tls-ca and name the host of --addr (else pass --tls-server-name NAME)\n");
	else if (c->tls && closed)
		fprintf(stderr, "gemmashard: the server closed the connection during the TLS handshake: if it requires "
				"client certificates, pass --tls-cert and --tls-key (issued by its client CA)\n");
	else if (closed)
		fprintf(stderr, "gemmashard: the server closed the connection: if it serves TLS, pass --tls-ca FILE\n");
}

/* Run one request and print its reply. Returns the process exit code for it. */
static int client_generate(struct client *c, const Gemmashard__V1__GenerateRequest *req, struct client_reply *r)
{
	bool ok = client_call(c, req, r);

	/* Text mode ends the reply with a newline: after the streamed text, or with the whole text. */
	if (!c->json && c->stream && (r->text.n > 0 || r->status == GRPC_STATUS_OK))
		fputs("\n", stdout);
	if (!c->json && !c->stream && r->status == GRPC_STATUS_OK)
		printf("%s\n", r->text.p ? r->text.p : "");
	fflush(stdout);
	if (c->cancelled) {
		fprintf(stderr, "gemmashard: interrupted\n");
		return CLIENT_EXIT_INTERRUPTED;
	}
	if (!ok)
		return 1;
	if (r->status != GRPC_STATUS_OK) {
		fprintf(stderr, "gemmashard: %s: %s\n", client_status_name(r->status),
			r->details && r->details[0] ? r->details : "(no details)");
		client_hint(c, r);
		return client_status_exit(r->status);
	}
	if (c->json)
		client_print_json(r);
	client_print_summary(c, r);
	if (r->finish_reason == GEMMASHARD__V1__FINISH_REASON__ERROR) {
		fprintf(stderr, "gemmashard: the server ended the generation with finish_reason ERROR\n");
		return 1;
	}
	return 0;
}

/* A conversation: role/content pairs, content owned. */
struct client_chat {
	Gemmashard__V1__Message  *msgs;   /* [n] */
	Gemmashard__V1__Message **ptrs;   /* [n] -> msgs, rebuilt before each call */
	size_t                    n, cap;
};

static bool client_chat_push(struct client_chat *h, const char *role, const char *content, size_t len)
{
	Gemmashard__V1__Message init = GEMMASHARD__V1__MESSAGE__INIT;
	char *copy;

	if (h->n == h->cap) {
		size_t cap = h->cap ? 2 * h->cap : 8;
		Gemmashard__V1__Message *m = realloc(h->msgs, cap * sizeof(*m));
		Gemmashard__V1__Message **p;
		if (!m)
			return false;
		h->msgs = m;
		if (!(p = realloc(h->ptrs, cap * sizeof(*p))))
			return false;
		h->ptrs = p;
		h->cap = cap;
	}
	if (!(copy = strndup(content, len)))
		return false;
	h->msgs[h->n] = init;
	h->msgs[h->n].role = (char *)role;
	h->msgs[h->n++].content = copy;
	return true;
}

static void client_chat_pop(struct client_chat *h)
{
	free(h->msgs[--h->n].content);
}

static void client_chat_free(struct client_chat *h)
{
	while (h->n)
		client_chat_pop(h);
	free(h->msgs);
	free(h->ptrs);
}

static void client_chat_attach(struct client_chat *h, Gemmashard__V1__Messages *wrap, Gemmashard__V1__GenerateRequest *req)
{
	for (size_t i = 0; i < h->n; i++)
		h->ptrs[i] = &h->msgs[i];
	wrap->n_messages = h->n;
	wrap->messages = h->ptrs;
	req->input_case = GEMMASHARD__V1__GENERATE_REQUEST__INPUT_MESSAGES;
	req->messages = wrap;
}

/* Interactive chat: each line is a user turn, each reply an assistant turn, kept as history.
 * A failed turn is dropped from the history; Ctrl-C exits 130, "/quit" or EOF exits 0. */
static int client_chat_loop(struct client *c, Gemmashard__V1__GenerateRequest *req, struct client_chat *h)
{
	Gemmashard__V1__Messages wrap = GEMMASHARD__V1__MESSAGES__INIT;
	bool tty = isatty(STDIN_FILENO);
	char *line = NULL;
	size_t line_cap = 0;
	int rc = 0;

	for (;;) {
		struct client_reply r = { 0 };
		ssize_t len;

		if (tty) {
			fputs(">>> ", stdout);
			fflush(stdout);
		}
		len = getline(&line, &line_cap, stdin);
		if (client_interrupted) {
			rc = CLIENT_EXIT_INTERRUPTED;
			break;
		}
		if (len < 0)
			break;
		while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
			line[--len] = '\0';
		if (len == 0)
			continue;
		if (strcmp(line, "/quit") == 0 || strcmp(line, "/exit") == 0)
			break;
		if (!client_chat_push(h, "user", line, (size_t)len)) {
			fprintf(stderr, "gemmashard: out of memory\n");
			rc = 1;
			break;
		}
		client_chat_attach(h, &wrap, req);
		rc = client_generate(c, req, &r);
		if (rc == 0 && !client_chat_push(h, "assistant", r.text.p ? r.text.p : "", r.text.n)) {
			fprintf(stderr, "gemmashard: out of memory\n");
			rc = 1;
		}
		if (rc != 0)
			client_chat_pop(h);
		client_reply_free(&r);
		/* At a terminal the user may retry; piped input has no one to read the error. */
		if (rc == CLIENT_EXIT_INTERRUPTED || (rc != 0 && !tty))
			break;
		rc = 0;
	}
	if (tty && rc == 0 && !client_interrupted)
		fputs("\n", stdout);
	free(line);
	return rc;
}

/* Whole stdin as one text (generate with no PROMPT and stdin not a terminal). */
static char *client_read_stdin(void)
{
	struct client_text t = { 0 };
	char buf[4096];
	size_t k;

	while ((k = fread(buf, 1, sizeof(buf), stdin)) > 0)
		if (!client_text_append(&t, buf, k)) {
			free(t.p);
			return NULL;
		}
	if (!t.p && !client_text_append(&t, "", 0))
		return NULL;
	return t.p;
}

static int client_main(int argc, char **argv, bool chat)
{
	const char *cmd = argv[0], *addr = getenv("GEMMASHARD_ADDR"), *api_key = getenv("GEMMASHARD_API_KEY");
	const char *model = NULL, *system = NULL, *stop_help = NULL;
	int max_tokens = 0, top_k = 0;
	double temperature = 0, top_p = 0, min_p = 0, rep = 0, timeout_s = 120.0;
	uint64_t seed = 0;
	bool no_stream = false, json = false, quiet = false;
	struct client_tls tls = { 0 };
	struct gs_arg args[] = {
		{ "addr", GS_ARG_STR, &addr, "coordinator HOST:PORT (default $GEMMASHARD_ADDR or 127.0.0.1:50051)" },
		{ "model", GS_ARG_STR, &model, "served model name (default: the only one)" },
		{ "max-tokens", GS_ARG_INT, &max_tokens, "tokens to generate at most (default: the server's)" },
		{ "temperature", GS_ARG_FLOAT, &temperature, "0 = greedy (default: the server's)" },
		{ "top-k", GS_ARG_INT, &top_k, "keep the k most likely tokens, 0 = off" },
		{ "top-p", GS_ARG_FLOAT, &top_p, "nucleus sampling mass, 1 = off" },
		{ "min-p", GS_ARG_FLOAT, &min_p, "drop tokens below min_p x the top probability" },
		{ "repetition-penalty", GS_ARG_FLOAT, &rep, "HF repetition penalty, 1 = off" },
		{ "seed", GS_ARG_U64, &seed, "sampling seed" },
		{ "stop", GS_ARG_STR, &stop_help, "stop string (repeatable, at most 8)" },
		{ "timeout", GS_ARG_FLOAT, &timeout_s, "deadline of each call in seconds (default 120)" },
		{ "api-key", GS_ARG_STR, &api_key, "sent as \"authorization: Bearer KEY\" (default $GEMMASHARD_API_KEY)" },
		{ "tls-ca", GS_ARG_STR, &tls.ca, "TLS: trust only the CA certificates in this PEM file" },
		{ "tls-cert", GS_ARG_STR, &tls.cert, "TLS client certificate (PEM), for servers that require one" },
		{ "tls-key", GS_ARG_STR, &tls.key, "its private key (PEM)" },
		{ "tls-server-name", GS_ARG_STR, &tls.server_name, "name expected in the server's certificate (default: the host of --addr)" },
		{ "no-stream", GS_ARG_FLAG, &no_stream, "unary Generate: print the text when it is complete" },
		{ "json", GS_ARG_FLAG, &json, "print each reply as one JSON line instead of text" },
		{ "quiet", GS_ARG_FLAG, &quiet, "no summary line on stderr" },
		{ "system", GS_ARG_STR, &system, "system text (folded into the first user turn by the server)" },
	};
	const int n_args = (int)(sizeof(args) / sizeof(args[0])) - (chat ? 0 : 1); /* --system: chat only */
	enum { A_MAX_TOKENS = 2, A_TEMPERATURE, A_TOP_K, A_TOP_P, A_MIN_P, A_REP, A_SEED };
	char usage[2048];
	char **flags = NULL, **pos = NULL, *stops[CLIENT_MAX_STOP + 1], *stdin_prompt = NULL;
	int n_flags = 0, n_pos = 0, n_stop = 0, rc = 2, r;
	Gemmashard__V1__GenerateRequest req = GEMMASHARD__V1__GENERATE_REQUEST__INIT;
	Gemmashard__V1__Messages wrap = GEMMASHARD__V1__MESSAGES__INIT;
	struct client_chat history = { 0 };
	struct client c = { 0 };
	struct sigaction sa = { 0 }, old_sa;
	grpc_event ev;

	snprintf(usage, sizeof(usage), "%s\n\n%s",
		 chat ? "usage: gemmashard chat [options] [--system TEXT] [MESSAGE...]\n"
			"  MESSAGE...: the conversation, alternating user/assistant, starting and ending with a\n"
			"  user turn. With none: interactive, one user turn per stdin line (\"/quit\" or EOF\n"
			"  ends), the history kept; a \">>> \" prompt when stdin is a terminal."
		      : "usage: gemmashard generate [options] PROMPT\n"
			"  PROMPT: raw text (the server prepends <bos>); with none, stdin is read when it is not\n"
			"  a terminal. Text streams to stdout; a summary line goes to stderr.",
		 client_exit_codes);

	/* Split argv: --stop is repeatable and positionals may sit between the options, neither of
	 * which gs_args_parse handles; everything else goes to it unchanged. */
	flags = calloc((size_t)argc + 1, sizeof(*flags));
	pos = calloc((size_t)argc + 1, sizeof(*pos));
	if (!flags || !pos) {
		fprintf(stderr, "gemmashard %s: out of memory\n", cmd);
		rc = 1;
		goto out_free_argv;
	}
	flags[n_flags++] = argv[0];
	for (int i = 1; i < argc; i++) {
		const char *s = argv[i];
		int j;

		if (strcmp(s, "--") == 0) {
			while (++i < argc)
				pos[n_pos++] = argv[i];
			break;
		}
		if (strcmp(s, "--stop") == 0) {
			if (i + 1 >= argc) {
				fprintf(stderr, "gemmashard %s: option '--stop' needs a value\n", cmd);
				goto out_free_argv;
			}
			if (n_stop == CLIENT_MAX_STOP) {
				fprintf(stderr, "gemmashard %s: at most %d --stop strings\n", cmd, CLIENT_MAX_STOP);
				goto out_free_argv;
			}
			stops[n_stop++] = argv[++i];
			continue;
		}
		if (strncmp(s, "--", 2) != 0 && strcmp(s, "-h") != 0) {
			pos[n_pos++] = argv[i];
			continue;
		}
		flags[n_flags++] = argv[i];
		for (j = 0; j < n_args; j++)
			if (strcmp(s + 2, args[j].name) == 0)
				break;
		if (j < n_args && args[j].type != GS_ARG_FLAG && i + 1 < argc)
			flags[n_flags++] = argv[++i];
	}
	r = gs_args_parse(usage, args, n_args, n_flags, flags);
	if (r) {
		rc = r == 1 ? 0 : 2;
		goto out_free_argv;
	}

	/* Flag checks the server cannot make for us. */
	if (!addr || !addr[0])
		addr = "127.0.0.1:50051";
	if (!(timeout_s > 0.0) || timeout_s > 1e6) {
		fprintf(stderr, "gemmashard %s: --timeout must be > 0 seconds\n", cmd);
		goto out_free_argv;
	}
	if (args[A_MAX_TOKENS].seen && max_tokens < 1) {
		fprintf(stderr, "gemmashard %s: --max-tokens must be >= 1\n", cmd);
		goto out_free_argv;
	}
	if (api_key && !api_key[0])
		api_key = NULL;
	if (!tls.cert != !tls.key) {
		fprintf(stderr, "gemmashard %s: --tls-cert and --tls-key go together (give both, or neither)\n", cmd);
		goto out_free_argv;
	}
	if (!tls.ca && (tls.cert || tls.server_name)) {
		fprintf(stderr, "gemmashard %s: %s needs --tls-ca FILE (the CA that issued the server's certificate)\n",
			cmd, tls.cert ? "--tls-cert" : "--tls-server-name");
		goto out_free_argv;
	}
	if (!chat) {
		if (n_pos > 1) {
			fprintf(stderr, "gemmashard generate: one PROMPT expected, got %d arguments (quote it)\n", n_pos);
			goto out_free_argv;
		}
		if (n_pos == 0 && isatty(STDIN_FILENO)) {
			fprintf(stderr, "gemmashard generate: PROMPT is required (or pipe it on stdin)\n");
			goto out_free_argv;
		}
	} else if (n_pos > 0 && n_pos % 2 == 0) {
		fprintf(stderr, "gemmashard chat: MESSAGE... alternates user/assistant and must end with a user turn "
				"(got %d messages)\n", n_pos);
		goto out_free_argv;
	}

	/* The request: only what was given, so the server's defaults apply to the rest. */
	req.model = model && model[0] ? (char *)model : NULL;
	req.has_max_tokens = args[A_MAX_TOKENS].seen;
	req.max_tokens = max_tokens;
	req.has_temperature = args[A_TEMPERATURE].seen;
	req.temperature = (float)temperature;
	req.has_top_k = args[A_TOP_K].seen;
	req.top_k = top_k;
	req.has_top_p = args[A_TOP_P].seen;
	req.top_p = (float)top_p;
	req.has_min_p = args[A_MIN_P].seen;
	req.min_p = (float)min_p;
	req.has_repetition_penalty = args[A_REP].seen;
	req.repetition_penalty = (float)rep;
	req.has_seed = args[A_SEED].seen;
	req.seed = seed;
	req.n_stop = (size_t)n_stop;
	req.stop = n_stop ? stops : NULL;
	rc = 1;
	if (!chat) {
		if (n_pos == 0 && !(stdin_prompt = client_read_stdin())) {
			fprintf(stderr, "gemmashard generate: cannot read the prompt from stdin\n");
			goto out_free_argv;
		}
		req.input_case = GEMMASHARD__V1__GENERATE_REQUEST__INPUT_PROMPT;
		req.prompt = n_pos ? pos[0] : stdin_prompt;
	} else {
		if (system && !client_chat_push(&history, "system", system, strlen(system)))
			goto out_nomem;
		for (int i = 0; i < n_pos; i++)
			if (!client_chat_push(&history, i % 2 ? "assistant" : "user", pos[i], strlen(pos[i])))
				goto out_nomem;
		client_chat_attach(&history, &wrap, &req);
	}

	if (api_key) {
		size_t k = strlen(api_key) + sizeof("Bearer ");
		if (!(c.authorization = malloc(k)))
			goto out_nomem;
		snprintf(c.authorization, k, "Bearer %s", api_key);
	}

	/* Channel, queue, Ctrl-C. */
	grpc_init();
	c.channel = client_channel(cmd, addr, &tls);
	if (!c.channel) {
		grpc_shutdown_blocking();
		rc = 2;
		goto out_free_argv;
	}
	c.tls = tls.ca != NULL;
	c.cq = grpc_completion_queue_create_for_pluck(NULL);
	c.timeout_s = timeout_s;
	c.stream = !no_stream;
	c.json = json;
	c.quiet = quiet;
	sa.sa_handler = client_on_sigint;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = 0; /* no SA_RESTART: Ctrl-C must interrupt a blocking getline */
	sigaction(SIGINT, &sa, &old_sa);

	if (chat && n_pos == 0) {
		rc = client_chat_loop(&c, &req, &history);
	} else {
		struct client_reply reply = { 0 };
		rc = client_generate(&c, &req, &reply);
		client_reply_free(&reply);
	}
	sigaction(SIGINT, &old_sa, NULL);

	/* Every call has reached its status, so the queue drains at once. */
	grpc_channel_destroy(c.channel);
	grpc_completion_queue_shutdown(c.cq);
	ev = grpc_completion_queue_pluck(c.cq, NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
	GS_ASSERT(ev.type == GRPC_QUEUE_SHUTDOWN);
	grpc_completion_queue_destroy(c.cq);
	grpc_shutdown_blocking();
	goto out_free_argv;
out_nomem:
	fprintf(stderr, "gemmashard %s: out of memory\n", cmd);
	rc = 1;
out_free_argv:
	client_tls_free(&tls);
	free(c.authorization);
	client_chat_free(&history);
	free(stdin_prompt);
	free(flags);
	free(pos);
	return rc;
}

int gs_cmd_generate(int argc, char **argv)
{
	return client_main(argc, argv, false);
}

int gs_cmd_chat(int argc, char **argv)
{
	return client_main(argc, argv, true);
}
