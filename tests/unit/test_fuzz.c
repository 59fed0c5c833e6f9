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
 *   - an engine-link frame as the coordinator and the engine receive it (gs_engine_msg_recv).
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
#include "gs_batchio.h"
#include "gs_config.h"
#include "gs_frame.h"
#include "gs_model.h"
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
	printf("fuzz %-22s %6d mutants: %6d accepted, %6d refused\n", name, iters, ok, refused);
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

int main(int argc, char **argv)
{
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
	TEST_DONE();
}
