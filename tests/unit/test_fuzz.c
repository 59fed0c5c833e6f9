/* Mutation fuzzing of every reader of untrusted bytes, deterministic (fixed seeds, so a failure
 * reproduces): start from a valid input, apply a few random edits (bit flips, bytes set to
 * boundary values, digits and JSON punctuation, deletions, insertions, duplicated spans,
 * truncation), and hand the result to the reader. Each outcome must be GS_OK or an error with
 * a message; a crash, a hang or (in the sanitizer CI pass) any memory error fails the test.
 * The readers:
 *   - a whole model directory: config.json and model.safetensors (header, length prefix,
 *     tensor table, truncated data) through gs_model_load, which checks every shape;
 *   - config.json alone (gs_config_parse);
 *   - a batch input line (gs_batch_parse_line);
 *   - a step plan as followers receive it (gs_plan_unpack);
 *   - an engine-link frame as the coordinator and the engine receive it (gs_engine_msg_recv);
 *   - the coordinator's client requests, with a real coordinator (the real tokenizer.json, no
 *     engine): an HTTP body of /v1/chat/completions and /v1/completions through
 *     gs_http_parse_body (the server's way from bytes to a request) and a gRPC GenerateRequest's
 *     packed bytes through gs_grpc_parse_generate, each then through gs_coord_submit's checks,
 *     chat template and tokenizer; a request that passes them all is refused only for want of
 *     an engine (UNAVAILABLE), which counts as accepted; a gRPC TokenizeRequest through unpack
 *     and gs_coord_tokenize.
 * Each target must also see both outcomes (some mutants accepted, some refused), or the
 * mutations are not reaching it.
 *   test_fuzz [tokenizer.json] SCRATCH_DIR      (env GS_FUZZ_ITERS, default 4000 a target;
 *                                                 GS_FUZZ_SEED for another sequence) */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine.pb-c.h"
#include "gemmashard/v1/inference.pb-c.h"
#include "grpc_internal.h"
#include "gs_batchio.h"
#include "gs_coord.h"
#include "gs_config.h"
#include "gs_frame.h"
#include "gs_model.h"
#include "http_internal.h"
#include "gs_plan.h"
#include "gs_safetensors.h"
#include "gs_test.h"

static uint64_t rng = 0x243f6a8885a308d3ull;

static uint64_t next(void)
{
	return gs_test_splitmix(&rng);
}

static size_t below(size_t n)
{
	return n ? (size_t)(next() % n) : 0;
}

/* A mutant of src[0..n) into dst (capacity cap >= 2n + 64); returns its length. Edits land in
 * [0, focus) with probability 3/4 (the header of a binary format), anywhere otherwise. */
static size_t mutate(uint8_t *dst, size_t cap, const uint8_t *src, size_t n, size_t focus)
{
	static const uint8_t interesting[] = { 0, 1, 0x7f, 0x80, 0xff, '"', '{', '}', '[', ']', ':', ',', '-',
					       '0', '1', '9', 'e', '.', '\\', ' ', '\n' };
	size_t len = n, edits = 1 + below(4);

	memcpy(dst, src, n);
	for (size_t e = 0; e < edits && len > 0; e++) {
		size_t span = focus && focus < len && below(4) ? focus : len;
		size_t at = below(span);
		switch (below(7)) {
		case 0: /* flip a bit */
			dst[at] ^= (uint8_t)(1u << below(8));
			break;
		case 1: /* a boundary value or JSON punctuation */
			dst[at] = interesting[below(sizeof(interesting))];
			break;
		case 2: /* a random byte */
			dst[at] = (uint8_t)next();
			break;
		case 3: { /* delete a span */
			size_t k = 1 + below(len - at < 16 ? len - at : 16);
			memmove(dst + at, dst + at + k, len - at - k);
			len -= k;
			break;
		}
		case 4: { /* insert random bytes */
			size_t k = 1 + below(8);
			if (len + k > cap)
				break;
			memmove(dst + at + k, dst + at, len - at);
			for (size_t i = 0; i < k; i++)
				dst[at + i] = interesting[below(sizeof(interesting))];
			len += k;
			break;
		}
		case 5: { /* duplicate a span */
			size_t k = 1 + below(len - at < 32 ? len - at : 32);
			if (len + k > cap)
				break;
			memmove(dst + at + k, dst + at, len - at);
			len += k;
			break;
		}
		default: /* truncate */
			len = at;
			break;
		}
	}
	return len;
}

/* What a reader did with one mutant: ACCEPTED, REFUSED (with a message), or SILENT (refused
 * without one, a failure). */
enum outcome { SILENT = -1, REFUSED = 0, ACCEPTED = 1 };

static enum outcome status_outcome(enum gs_status st)
{
	return st == GS_OK ? ACCEPTED : gs_last_error()[0] ? REFUSED : SILENT;
}

/* iters mutants of seed[0..n) (edits focused on [0, focus) when focus > 0), each handed to try;
 * every outcome accepted or refused with a message, and both seen. */
static void fuzz(const char *name, const uint8_t *seed, size_t n, size_t focus, int iters,
		 enum outcome (*try)(void *ctx, const uint8_t *buf, size_t n), void *ctx)
{
	size_t cap = 2 * n + 64;
	uint8_t *buf = malloc(cap);
	int ok = 0, refused = 0, silent = 0;

	GS_ASSERT(buf);
	for (int i = 0; i < iters; i++) {
		size_t m = mutate(buf, cap, seed, n, focus);
		gs_clear_error();
		enum outcome o = try(ctx, buf, m);
		ok += o == ACCEPTED, refused += o != ACCEPTED, silent += o == SILENT;
	}
	printf("fuzz %-28s %6d mutants: %6d accepted, %6d refused\n", name, iters, ok, refused);
	CHECK_MSG(silent == 0, "%s: %d refusals without a message", name, silent);
	CHECK_MSG(ok > 0 && refused > 0, "%s: the mutations never %s", name, ok ? "broke it" : "kept it valid");
	free(buf);
}

static void write_file(const char *path, const void *p, size_t n)
{
	FILE *f = fopen(path, "wb");
	GS_ASSERT(f && fwrite(p, 1, n, f) == n);
	fclose(f);
}

static uint8_t *read_all(const char *path, size_t *n)
{
	char *buf;
	GS_ASSERT(gs_read_file(path, &buf, n) == GS_OK);
	return (uint8_t *)buf;
}

/* ---- a valid two-layer model directory, written with the safetensors writer ---- */

static const char config_json[] =
	"{\"architectures\": [\"Gemma3ForCausalLM\"], \"model_type\": \"gemma3_text\", \"hidden_size\": 16, "
	"\"intermediate_size\": 32, \"num_hidden_layers\": 2, \"num_attention_heads\": 2, "
	"\"num_key_value_heads\": 1, \"head_dim\": 8, \"vocab_size\": 128, \"max_position_embeddings\": 128, "
	"\"rms_norm_eps\": 1e-06, \"rope_theta\": 1000000.0, \"rope_local_base_freq\": 10000.0, "
	"\"query_pre_attn_scalar\": 8, \"sliding_window\": 4, \"sliding_window_pattern\": 2, "
	"\"final_logit_softcapping\": null, \"attn_logit_softcapping\": null, \"rope_scaling\": null, "
	"\"hidden_activation\": \"gelu_pytorch_tanh\", \"bos_token_id\": 2, \"eos_token_id\": [1, 106], "
	"\"pad_token_id\": 0, \"tie_word_embeddings\": true, \"torch_dtype\": \"bfloat16\"}";

static void fill_gen(void *ctx, const char *name, size_t first, size_t count, void *dst)
{
	uint16_t *d = dst;
	(void)ctx;
	for (size_t i = 0; i < count; i++)
		d[i] = gs_synth_bf16((uint64_t)strlen(name), first + i, 0.05f);
}

static void write_model(const char *dir)
{
	struct gs_st_writer *w;
	char name[128];
	const int64_t emb[2] = { 128, 16 }, q[2] = { 16, 16 }, kv[2] = { 8, 16 }, o[2] = { 16, 16 };
	const int64_t up[2] = { 32, 16 }, down[2] = { 16, 32 }, h[1] = { 16 }, d[1] = { 8 };

	mkdir(dir, 0755);
	write_file(strcat(strcpy(name, dir), "/config.json"), config_json, strlen(config_json));
	GS_ASSERT(gs_st_writer_new(&w) == GS_OK);
	GS_ASSERT(gs_st_writer_add_gen(w, "model.embed_tokens.weight", GS_DTYPE_BF16, 2, emb, fill_gen, NULL) == GS_OK);
	GS_ASSERT(gs_st_writer_add_gen(w, "model.norm.weight", GS_DTYPE_BF16, 1, h, fill_gen, NULL) == GS_OK);
	for (int l = 0; l < 2; l++) {
		static const char *const lin[] = { "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
						   "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj" };
		const int64_t *shape[] = { q, kv, kv, o, up, up, down };
		static const char *const norms[] = { "input_layernorm", "post_attention_layernorm",
						     "pre_feedforward_layernorm", "post_feedforward_layernorm" };
		for (int i = 0; i < 7; i++) {
			snprintf(name, sizeof(name), "model.layers.%d.%s.weight", l, lin[i]);
			GS_ASSERT(gs_st_writer_add_gen(w, name, GS_DTYPE_BF16, 2, shape[i], fill_gen, NULL) == GS_OK);
		}
		for (int i = 0; i < 4; i++) {
			snprintf(name, sizeof(name), "model.layers.%d.%s.weight", l, norms[i]);
			GS_ASSERT(gs_st_writer_add_gen(w, name, GS_DTYPE_BF16, 1, h, fill_gen, NULL) == GS_OK);
		}
		snprintf(name, sizeof(name), "model.layers.%d.self_attn.q_norm.weight", l);
		GS_ASSERT(gs_st_writer_add_gen(w, name, GS_DTYPE_BF16, 1, d, fill_gen, NULL) == GS_OK);
		snprintf(name, sizeof(name), "model.layers.%d.self_attn.k_norm.weight", l);
		GS_ASSERT(gs_st_writer_add_gen(w, name, GS_DTYPE_BF16, 1, d, fill_gen, NULL) == GS_OK);
	}
	GS_ASSERT(gs_st_writer_write(w, dir, 1) == GS_OK);
	gs_st_writer_free(w);
}

/* The mutant as one file of a model directory (the other file valid), then gs_model_load. */
struct model_try {
	const char *dir, *file;
	int n;
};

static enum outcome try_model(void *vctx, const uint8_t *buf, size_t n)
{
	struct model_try *t = vctx;
	char path[4200];
	struct gs_model *m;

	snprintf(path, sizeof(path), "%s/%s", t->dir, t->file);
	write_file(path, buf, n);
	enum gs_status st = gs_model_load(t->dir, t->n++ % 2 == 0, &m);
	if (st == GS_OK)
		gs_model_free(m);
	return status_outcome(st);
}

static void fuzz_model(const char *scratch, int iters)
{
	char valid[4096], dir[4096], path[4200];
	size_t n_st;
	struct gs_model *m;

	snprintf(valid, sizeof(valid), "%s/valid", scratch);
	snprintf(dir, sizeof(dir), "%s/mutant", scratch);
	write_model(valid);
	mkdir(dir, 0755);
	CHECK_MSG(gs_model_load(valid, false, &m) == GS_OK, "the valid model does not load: %s", gs_last_error());
	gs_model_free(m);
	snprintf(path, sizeof(path), "%s/model.safetensors", valid);
	uint8_t *st = read_all(path, &n_st);
	uint64_t hdr;
	memcpy(&hdr, st, 8); /* little-endian header length: edits focus on 8 + header */

	snprintf(path, sizeof(path), "%s/config.json", dir);
	write_file(path, config_json, strlen(config_json));
	struct model_try ts = { dir, "model.safetensors", 0 };
	fuzz("model.safetensors", st, n_st, (size_t)(8 + hdr), iters, try_model, &ts);

	snprintf(path, sizeof(path), "%s/model.safetensors", dir);
	write_file(path, st, n_st);
	struct model_try tc = { dir, "config.json", 0 };
	fuzz("config.json (model)", (const uint8_t *)config_json, strlen(config_json), 0, iters, try_model, &tc);
	free(st);
}

static enum outcome try_config(void *ctx, const uint8_t *buf, size_t n)
{
	struct gs_config cfg;
	enum gs_status st = gs_config_parse((const char *)buf, n, "config.json", &cfg);
	(void)ctx;
	if (st == GS_OK)
		gs_config_free(&cfg);
	return status_outcome(st);
}

/* GS_OK with req.error set is the reader refusing the request (with that message). */
static enum outcome try_batch_line(void *ctx, const uint8_t *buf, size_t n)
{
	struct gs_batch_req req;
	int *line_no = ctx;
	enum gs_status st = gs_batch_parse_line((const char *)buf, n, ++*line_no, &req);
	if (st != GS_OK)
		return status_outcome(st);
	enum outcome o = !req.error ? ACCEPTED : req.error[0] ? REFUSED : SILENT;
	gs_batch_req_clear(&req);
	return o;
}

static enum outcome try_plan(void *ctx, const uint8_t *buf, size_t n)
{
	struct gs_plan *q = ctx;
	enum gs_status st = gs_plan_unpack(q, buf, n);
	if (st == GS_OK)
		CHECK_MSG(q->n_seqs <= q->max_seqs && q->n_ids <= q->max_tokens && q->n_release <= q->max_seqs,
			  "an accepted plan exceeds the capacity (%d seqs, %d ids, %d releases)", q->n_seqs, q->n_ids,
			  q->n_release);
	return status_outcome(st);
}

/* The mutant frame through a socket pair to the receiver (4 KiB limit); a short one ends in EOF. */
static enum outcome try_frame(void *ctx, const uint8_t *buf, size_t n)
{
	Gemmashard__Engine__EngineMessage *got = NULL;
	struct gs_stream *s;
	int fds[2];
	(void)ctx;

	GS_ASSERT(socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0);
	GS_ASSERT(write(fds[1], buf, n) == (ssize_t)n);
	close(fds[1]);
	GS_ASSERT(gs_stream_plain(fds[0], &s) == GS_OK);
	enum gs_status st = gs_engine_msg_recv(s, 4096, 1000, &got);
	gs_stream_free(s);
	if (st == GS_OK)
		gemmashard__engine__engine_message__free_unpacked(got, NULL);
	return status_outcome(st);
}

static void fuzz_config(int iters)
{
	fuzz("config.json", (const uint8_t *)config_json, strlen(config_json), 0, iters, try_config, NULL);
}

static void fuzz_batch_line(int iters)
{
	static const char line[] =
		"{\"id\": \"req-7\", \"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": "
		"\"user\", \"content\": \"Explain sepsis \\u00e9\"}], \"max_tokens\": 12, \"temperature\": 0.7, "
		"\"top_k\": 40, \"top_p\": 0.9, \"min_p\": 0.05, \"repetition_penalty\": 1.1, \"seed\": 42, "
		"\"stop\": [\"\\n\\n\", \"END\"], \"logprobs\": true, \"top_logprobs\": 3}";
	int line_no = 0;
	fuzz("batch input line", (const uint8_t *)line, strlen(line), 0, iters, try_batch_line, &line_no);
}

static void fuzz_plan(int iters)
{
	struct gs_plan p, q;
	uint8_t *packed = NULL;
	size_t cap = 0;
	uint64_t len = 0;

	GS_ASSERT(gs_plan_init(&p, 8, 64) == GS_OK && gs_plan_init(&q, 8, 64) == GS_OK);
	p.n_release = 2, p.release[0] = 3, p.release[1] = 5;
	for (int i = 0; i < 4; i++) {
		struct gs_plan_seq *s = &p.seqs[p.n_seqs++];
		*s = (struct gs_plan_seq){ .slot = i, .tok0 = p.n_ids, .n_tokens = 1 + i * 3, .want_logits = i != 1,
					   .admit = i % 2 == 0, .id = 1000 + (uint64_t)i, .max_positions = 40 };
		s->params.max_tokens = 8;
		s->params.sp = gs_sampling_params_default();
		for (int k = 0; k < s->n_tokens; k++)
			p.ids[p.n_ids++] = 2 + 7 * k + i;
	}
	GS_ASSERT(gs_plan_pack(&p, &packed, &cap, &len) == GS_OK);
	fuzz("step plan", packed, (size_t)len, 0, iters, try_plan, &q);
	free(packed);
	gs_plan_free(&p), gs_plan_free(&q);
}

static void fuzz_frames(int iters)
{
	Gemmashard__Engine__EngineMessage m = GEMMASHARD__ENGINE__ENGINE_MESSAGE__INIT;
	Gemmashard__Engine__Submit sub = GEMMASHARD__ENGINE__SUBMIT__INIT;
	int32_t toks[6] = { 2, 105, 2364, 107, 9, 106 };
	uint8_t frame[4096];
	int fds[2];

	sub.request_id = 77;
	sub.n_prompt = 6;
	sub.prompt = toks;
	m.body_case = GEMMASHARD__ENGINE__ENGINE_MESSAGE__BODY_SUBMIT;
	m.submit = &sub;
	struct gs_stream *ws;
	GS_ASSERT(socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0);
	GS_ASSERT(gs_stream_plain(fds[1], &ws) == GS_OK);
	GS_ASSERT(gs_engine_msg_send(ws, &m) == GS_OK);
	ssize_t len = read(fds[0], frame, sizeof(frame));
	GS_ASSERT(len > 4);
	close(fds[0]);
	gs_stream_free(ws);
	fuzz("engine-link frame", frame, (size_t)len, 4, iters, try_frame, NULL);
}

/* ---- client requests, against a coordinator without engines ---- */

/* What gs_coord_submit made of a spec: UNAVAILABLE (no engine) means every check passed. */
static enum outcome submit_outcome(struct gs_coord *c, enum gs_api api, const struct gs_gen_spec *spec)
{
	struct gs_creq *r = NULL;
	char why[600];
	enum gs_cerr e = gs_coord_submit(c, api, spec, NULL, NULL, &r, why, sizeof(why));

	GS_ASSERT(e != GS_CERR_NONE && !r); /* no engine is connected */
	if (e == GS_CERR_UNAVAILABLE)
		return ACCEPTED;
	return why[0] ? REFUSED : SILENT;
}

struct http_try {
	struct gs_coord *c;
	bool             chat;
};

static enum outcome try_http_body(void *vctx, const uint8_t *buf, size_t n)
{
	struct http_try *t = vctx;
	struct gs_http_gen g = { .chat = t->chat };
	cJSON *root;
	enum outcome o;

	if (gs_http_parse_body(&g, (const char *)buf, n, &root)) {
		/* a list of prompts is submitted prompt by prompt, as the server does */
		o = ACCEPTED;
		for (int i = 0; i < (g.n_prompts > 1 ? g.n_prompts : 1) && o == ACCEPTED; i++) {
			if (g.n_prompts > 1)
				gs_http_use_prompt(&g, i);
			o = submit_outcome(t->c, GS_API_HTTP, &g.spec);
		}
	} else
		o = g.err != GS_CERR_NONE && g.why[0] ? REFUSED : SILENT;
	gs_http_gen_free(&g);
	cJSON_Delete(root);
	return o;
}

static enum outcome try_grpc_generate(void *vctx, const uint8_t *buf, size_t n)
{
	struct gs_coord *c = vctx;
	struct gs_grpc_gen g;
	char why[600];
	enum outcome o;

	if (gs_grpc_parse_generate(&g, buf, n, gs_coord_get_limits(c), why, sizeof(why)) == GS_CERR_NONE)
		o = submit_outcome(c, GS_API_GRPC, &g.spec);
	else
		o = why[0] ? REFUSED : SILENT;
	gs_grpc_gen_free(&g);
	return o;
}

static enum outcome try_grpc_tokenize(void *vctx, const uint8_t *buf, size_t n)
{
	struct gs_coord *c = vctx;
	Gemmashard__V1__TokenizeRequest *req = gemmashard__v1__tokenize_request__unpack(NULL, n, buf);
	int32_t *ids = NULL;
	size_t n_ids = 0;
	char why[600] = "";

	if (!req)
		return REFUSED; /* the server answers "malformed TokenizeRequest" */
	enum gs_cerr e = gs_coord_tokenize(c, req->model, req->text,
					   req->has_add_special_tokens ? req->add_special_tokens : true, &ids, &n_ids,
					   why, sizeof(why));
	gemmashard__v1__tokenize_request__free_unpacked(req, NULL);
	free(ids);
	return e == GS_CERR_NONE ? ACCEPTED : why[0] ? REFUSED : SILENT;
}

static uint8_t *pack_msg(const ProtobufCMessage *m, size_t *n)
{
	uint8_t *p = malloc(protobuf_c_message_get_packed_size(m) + 1);
	GS_ASSERT(p);
	*n = protobuf_c_message_pack(m, p);
	return p;
}

static void fuzz_requests(const char *tokenizer, const char *scratch, int iters)
{
	static const char *const chat_bodies[] = {
		"{\"model\": \"tiny\", \"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": "
		"\"user\", \"content\": \"Explain sepsis \\u00e9\"}], \"max_tokens\": 12, \"temperature\": 0.7, "
		"\"top_k\": 40, \"top_p\": 0.9, \"min_p\": 0.05, \"repetition_penalty\": 1.1, \"seed\": 42, "
		"\"stop\": [\"\\n\\n\", \"END\"], \"logprobs\": true, \"top_logprobs\": 3}",
		"{\"messages\": [{\"role\": \"developer\", \"content\": [{\"type\": \"text\", \"text\": \" hi \"}]}, "
		"{\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"a\"}, {\"type\": \"text\", "
		"\"text\": \"b\"}]}, {\"role\": \"assistant\", \"content\": \"ok\"}, {\"role\": \"user\", \"content\": "
		"\"go\"}], \"stream\": true, \"stream_options\": {\"include_usage\": true}, \"n\": 1, "
		"\"max_completion_tokens\": 5, \"stop\": \"x\", \"seed\": null}",
		/* structured output: mutants reach the schema compiler (every refusal names a keyword) */
		"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"response_format\": {\"type\": "
		"\"json_schema\", \"json_schema\": {\"name\": \"p\", \"schema\": {\"$defs\": {\"n\": {\"type\": "
		"[\"string\", \"null\"], \"maxLength\": 4}}, \"type\": \"object\", \"properties\": {\"a\": "
		"{\"type\": \"integer\", \"minimum\": -3}, \"b\": {\"enum\": [\"x\", 1]}, \"c\": {\"type\": "
		"\"array\", \"items\": {\"$ref\": \"#/$defs/n\"}, \"maxItems\": 2}, \"d\": {\"anyOf\": "
		"[{\"type\": \"boolean\"}, {\"type\": \"object\"}]}}, \"required\": [\"a\"]}}}}",
	};
	static const char *const completion_bodies[] = {
		"{\"model\": \"tiny\", \"prompt\": \"The patient presented with\", \"max_tokens\": 16, \"temperature\": 0, "
		"\"logprobs\": 2, \"stop\": [\".\"], \"seed\": -7, \"top_k\": -1}",
		"{\"prompt\": [\"Hello \\\"world\\\" \\ud83d\\ude00\"], \"stream\": false, \"top_p\": 1, \"min_p\": 0}",
	};
	char dir[4096], path[4200];
	struct gs_coord *c;
	struct gs_coord_config cfg = {
		.model_dir = dir, .served_name = "tiny", .engine_listen = "127.0.0.1:0",
		.limits = { .max_body_bytes = 1 << 20, .max_prompt_tokens = 4096, .max_tokens_limit = 4096,
			    .default_max_tokens = 64, .max_concurrent = 64, .heartbeat_timeout_s = 5,
			    .default_timeout_s = 60, .http_idle_timeout_s = 30, .max_http_connections = 64,
			    .max_http_header_bytes = 16384, .max_grpc_streams = 64 },
	};

	snprintf(dir, sizeof(dir), "%s/coord", scratch);
	mkdir(dir, 0755);
	snprintf(path, sizeof(path), "%s/config.json", dir);
	write_file(path, config_json, strlen(config_json));
	snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
	char *abs = realpath(tokenizer, NULL); /* the link must not depend on the working directory */
	GS_ASSERT(abs && symlink(abs, path) == 0);
	free(abs);
	if (gs_coord_create(&cfg, &c) != GS_OK) {
		CHECK_MSG(false, "the coordinator does not start: %s", gs_last_error());
		return;
	}

	for (int chat = 0; chat < 2; chat++) {
		const char *const *bodies = chat ? chat_bodies : completion_bodies;
		struct http_try t = { c, chat };
		int n_bodies = chat ? (int)(sizeof(chat_bodies) / sizeof(chat_bodies[0]))
				    : (int)(sizeof(completion_bodies) / sizeof(completion_bodies[0]));
		for (int i = 0; i < n_bodies; i++) {
			char name[32];
			snprintf(name, sizeof(name), "http %s body %d", chat ? "chat" : "completions", i);
			/* the seed itself passes every check */
			CHECK_MSG(try_http_body(&t, (const uint8_t *)bodies[i], strlen(bodies[i])) == ACCEPTED,
				  "%s: the valid body is refused", name);
			fuzz(name, (const uint8_t *)bodies[i], strlen(bodies[i]), 0, iters / 2, try_http_body, &t);
		}
	}

	Gemmashard__V1__GenerateRequest req = GEMMASHARD__V1__GENERATE_REQUEST__INIT;
	Gemmashard__V1__Messages msgs = GEMMASHARD__V1__MESSAGES__INIT;
	Gemmashard__V1__Message m[2] = { GEMMASHARD__V1__MESSAGE__INIT, GEMMASHARD__V1__MESSAGE__INIT };
	Gemmashard__V1__Message *mp[2] = { &m[0], &m[1] };
	char *stops[2] = { "\n\n", "END" };
	size_t n;

	req.model = "tiny";
	req.input_case = GEMMASHARD__V1__GENERATE_REQUEST__INPUT_PROMPT;
	req.prompt = "The patient presented with";
	req.has_max_tokens = req.has_temperature = req.has_top_k = req.has_top_p = req.has_seed = true;
	req.max_tokens = 16, req.temperature = 0.7f, req.top_k = 40, req.top_p = 0.9f, req.seed = 42;
	req.n_stop = 2, req.stop = stops;
	req.has_logprobs = req.has_top_logprobs = true;
	req.logprobs = true, req.top_logprobs = 3;
	uint8_t *packed = pack_msg(&req.base, &n);
	CHECK(try_grpc_generate(c, packed, n) == ACCEPTED);
	fuzz("grpc generate (prompt)", packed, n, 0, iters / 2, try_grpc_generate, c);
	free(packed);

	m[0].role = "system", m[0].content = "Be brief.";
	m[1].role = "user", m[1].content = "Explain sepsis \xc3\xa9";
	msgs.n_messages = 2, msgs.messages = mp;
	req.input_case = GEMMASHARD__V1__GENERATE_REQUEST__INPUT_MESSAGES;
	req.messages = &msgs;
	req.has_min_p = req.has_repetition_penalty = true;
	req.min_p = 0.05f, req.repetition_penalty = 1.1f;
	packed = pack_msg(&req.base, &n);
	CHECK(try_grpc_generate(c, packed, n) == ACCEPTED);
	fuzz("grpc generate (messages)", packed, n, 0, iters / 2, try_grpc_generate, c);
	free(packed);

	Gemmashard__V1__TokenizeRequest tr = GEMMASHARD__V1__TOKENIZE_REQUEST__INIT;
	tr.model = "tiny", tr.text = "<start_of_turn>user\nHello \xf0\x9f\x98\x80<end_of_turn>";
	tr.has_add_special_tokens = true, tr.add_special_tokens = false;
	packed = pack_msg(&tr.base, &n);
	CHECK(try_grpc_tokenize(c, packed, n) == ACCEPTED);
	fuzz("grpc tokenize", packed, n, 0, iters / 4, try_grpc_tokenize, c);
	free(packed);
	gs_coord_free(c);
}

int main(int argc, char **argv)
{
	const char *tokenizer = argc > 1 ? argv[1] : NULL;
	const char *scratch = argc > 2 ? argv[2] : "scratch_test_fuzz";
	char cmd[4200];
	int iters = getenv("GS_FUZZ_ITERS") ? atoi(getenv("GS_FUZZ_ITERS")) : 4000;

	if (getenv("GS_FUZZ_SEED")) /* longer hunts: another seed, more iterations */
		rng = strtoull(getenv("GS_FUZZ_SEED"), NULL, 0);

	snprintf(cmd, sizeof(cmd), "rm -rf '%s' && mkdir -p '%s'", scratch, scratch);
	GS_ASSERT(system(cmd) == 0);
	fuzz_config(iters);
	fuzz_batch_line(iters);
	fuzz_plan(iters);
	fuzz_frames(iters);
	fuzz_model(scratch, iters / 2);
	if (tokenizer) {
		CHECK_MSG(access(tokenizer, R_OK) == 0, "%s: not readable (deploy/install-deps.sh fetches it)", tokenizer);
		if (access(tokenizer, R_OK) == 0)
			fuzz_requests(tokenizer, scratch, iters);
	} else {
		printf("fuzz client requests: Skipped (no tokenizer.json argument)\n");
	}
	TEST_DONE();
}
