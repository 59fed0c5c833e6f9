/* Structured output through the engine (T = 1, in process): the "tiny" random-weight model,
 * whose free output is never JSON, generates 40 schemas x 5 seeds under response_format; every
 * finished text parses and validates (tests/unit/grammar_cases.h, a validator independent of
 * the automaton), every text cut by max_tokens (finish length) is a valid prefix; greedy and
 * sampled runs; refusals by name. Prints the mask's share of the step time at batch 1 and 16.
 * argv[1]: tokenizer.json. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gs_cpu.h"
#include "gs_engine.h"
#include "gs_grammar.h"
#include "gs_test.h"
#include "grammar_cases.h"

#define MAX_GEN 40
/* Seeds per schema: 5 (200 generations); 2 under AddressSanitizer, whose run of the whole
 * suite (CI) would otherwise spend a minute here. */
#if defined(__SANITIZE_ADDRESS__)
#define N_SEEDS 2
#else
#define N_SEEDS 5
#endif
#define N_REQ (N_SCHEMAS * N_SEEDS)

struct req {
	uint64_t id;
	int32_t prompt[8];
	struct gs_req_params p;
	char rf[4096];
	int32_t out[MAX_GEN + 1];
	int32_t n_out;
	enum gs_finish finish;
};

static struct req reqs[N_REQ];

static struct gs_engine *make_engine(const struct gs_model *m, struct gs_backend be, int32_t max_seqs,
				     const struct gs_tokenizer *t)
{
	struct gs_engine_config c = { .max_batch_tokens = 256, .max_seqs = max_seqs, .max_context = 128,
				      .candidates = 64, .no_prefix_cache = true };
	struct gs_engine *e = NULL;
	if (gs_engine_create(m, be, NULL, &c, &e) != GS_OK) {
		fprintf(stderr, "engine: %s\n", gs_last_error());
		exit(1);
	}
	gs_engine_set_tokenizer(e, t);
	return e;
}

static void run_all(struct gs_engine *e, struct req *r, int n)
{
	static struct gs_token_event ev[256];
	for (int steps = 0; !gs_engine_idle(e) && steps < 100000; steps++) {
		int32_t n_ev;
		if (gs_engine_step(e, ev, 256, &n_ev) != GS_OK) {
			fprintf(stderr, "step: %s\n", gs_last_error());
			exit(1);
		}
		for (int32_t i = 0; i < n_ev; i++) {
			struct req *x = &r[ev[i].id];
			if (ev[i].token >= 0 && x->n_out <= MAX_GEN)
				x->out[x->n_out++] = ev[i].token;
			if (ev[i].finish)
				x->finish = ev[i].finish;
		}
	}
}

static void set_req(struct req *r, uint64_t id, const char *schema, uint64_t seed, float temp)
{
	memset(r, 0, sizeof *r);
	r->id = id;
	for (int k = 0; k < 8; k++)
		r->prompt[k] = 1000 + (int32_t)((id * 7919 + (uint64_t)k * 104729) % 200000);
	r->p.sp = gs_sampling_params_default();
	r->p.sp.temperature = temp;
	r->p.sp.seed = seed;
	r->p.max_tokens = MAX_GEN;
	if (schema) {
		snprintf(r->rf, sizeof r->rf, "{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"t\",\"strict\":true,"
			 "\"schema\":%s}}", schema);
		r->p.response_format = r->rf;
	}
}

static void submit(struct gs_engine *e, struct req *r)
{
	enum gs_status st = gs_engine_submit(e, r->id, r->prompt, 8, &r->p);
	CHECK_MSG(st == GS_OK, "submit %llu: %s", (unsigned long long)r->id, gs_last_error());
}

/* The text of the generated ids without the final eos; NULL when the tokenizer fails. */
static char *text_of(const struct gs_tokenizer *t, const struct gs_model *m, const struct req *r, size_t *len)
{
	int32_t n = r->n_out;
	if (r->finish == GS_FINISH_STOP && n > 0 && gs_config_is_eos(&m->cfg, r->out[n - 1]))
		n--;
	char *s = NULL;
	if (gs_tokenizer_decode(t, r->out, (size_t)n, &s, len) != GS_OK)
		return NULL;
	return s;
}

/* 200 generations: every finished text valid, every cut one a prefix. */
static void test_schemas(const struct gs_model *m, struct gs_backend be, const struct gs_tokenizer *t, float temp,
			 int *n_valid, int *n_cut)
{
	struct gs_engine *e = make_engine(m, be, 16, t);
	/* greedy: one request per schema (seeds would not change it) */
	size_t step = temp == 0.0f ? N_SEEDS : 1;
	for (size_t i = 0; i < N_REQ; i += step) {
		set_req(&reqs[i], i, SCHEMAS[i / N_SEEDS], i % N_SEEDS, temp);
		submit(e, &reqs[i]);
	}
	run_all(e, reqs, N_REQ);
	for (size_t i = 0; i < N_REQ; i += step) {
		struct req *r = &reqs[i];
		size_t len = 0;
		char *txt = text_of(t, m, r, &len);
		CHECK(txt != NULL);
		if (!txt)
			continue;
		CHECK_MSG(r->finish == GS_FINISH_STOP || r->finish == GS_FINISH_LENGTH, "request %zu finish %d", i,
			  r->finish);
		if (r->finish == GS_FINISH_STOP) {
			cJSON *sch = cJSON_Parse(SCHEMAS[i / N_SEEDS]);
			cJSON *doc = cJSON_ParseWithLength(txt, len);
			CHECK_MSG(doc && valid(sch, sch, doc), "schema %zu seed %zu: %s", i / N_SEEDS, i % N_SEEDS, txt);
			*n_valid += doc != NULL;
			cJSON_Delete(doc);
			cJSON_Delete(sch);
		} else {
			char rf[4096];
			struct gs_grammar *g = NULL;
			snprintf(rf, sizeof rf, "%s", r->rf);
			CHECK(gs_grammar_compile(rf, strlen(rf), NULL, 0, &g) == GS_OK && g);
			CHECK_MSG(g && gs_grammar_prefix_ok(g, txt, len), "cut text of %zu not a prefix: %s", i, txt);
			gs_grammar_free(g);
			(*n_cut)++;
		}
		free(txt);
	}
	CHECK(gs_engine_kv_consistent(e));
	gs_engine_free(e);
}

/* Regular expressions (core/grammar_regex.c) take the same path: a few of them join the staged
 * comparison. Their outputs are checked against python's re in test_structured_tp.py. */
static const char *const RX[] = {
	"{\"type\":\"regex\",\"regex\":\"\\\\d{3}-[A-Z]{2}\"}",
	"{\"type\":\"regex\",\"regex\":\"(yes|no|maybe)\"}",
	"{\"type\":\"regex\",\"regex\":\"[^\\\\n]{2,12}\\\\.\"}",
	"{\"type\":\"regex\",\"regex\":\"[α-ω]+ ?\\\\w*\"}",
};
#define N_RX (sizeof RX / sizeof RX[0])

/* The device path (the staged CPU backend: candidates made by the backend's op, the masks
 * uploaded with the rows' parameters) gives the host path's tokens, for every schema and the
 * regular expressions, greedy and sampled with logprobs. */
static void test_staged(const struct gs_tokenizer *t)
{
	struct gs_model *mh, *md;
	struct gs_backend cpu, dev;
	static struct req a[N_SCHEMAS + N_RX], b[N_SCHEMAS + N_RX];
	if (gs_model_synthetic("tiny", 7, &mh) != GS_OK || gs_model_synthetic("tiny", 7, &md) != GS_OK ||
	    gs_backend_cpu_create(2, &cpu) != GS_OK || gs_backend_cpu_create_staged(2, &dev) != GS_OK ||
	    gs_model_to_backend(md, dev) != GS_OK) {
		fprintf(stderr, "staged: %s\n", gs_last_error());
		CHECK(false);
		return;
	}
	struct req *runs[2] = { a, b };
	for (int k = 0; k < 2; k++) {
		struct gs_engine *e = make_engine(k ? md : mh, k ? dev : cpu, 16, t);
		struct gs_engine_stats st;
		gs_engine_get_stats(e, &st);
		CHECK(st.device_candidates == (k == 1));
		for (size_t i = 0; i < N_SCHEMAS; i++) { /* every schema, half greedy, half sampled */
			set_req(&runs[k][i], i, SCHEMAS[i], i, i % 2 ? 0.0f : 1.0f);
			runs[k][i].p.sp.top_k = 40;
			runs[k][i].p.logprobs = i % 3 == 0;
			submit(e, &runs[k][i]);
		}
		for (size_t j = 0; j < N_RX; j++) {
			struct req *r = &runs[k][N_SCHEMAS + j];
			set_req(r, N_SCHEMAS + j, NULL, j, j % 2 ? 0.0f : 1.0f);
			snprintf(r->rf, sizeof r->rf, "%s", RX[j]);
			r->p.response_format = r->rf;
			r->p.sp.top_k = 40;
			r->p.logprobs = j == 0;
			submit(e, r);
		}
		run_all(e, runs[k], N_SCHEMAS + N_RX);
		gs_engine_free(e);
	}
	int same = 0;
	for (size_t i = 0; i < N_SCHEMAS + N_RX; i++)
		same += a[i].n_out == b[i].n_out && a[i].finish == b[i].finish &&
			!memcmp(a[i].out, b[i].out, sizeof(int32_t) * (size_t)a[i].n_out);
	CHECK_MSG(same == (int)(N_SCHEMAS + N_RX), "staged device path equals the host path in %d of %d", same,
		  (int)(N_SCHEMAS + N_RX));
	int rx_stop = 0;
	for (size_t j = 0; j < N_RX; j++)
		rx_stop += a[N_SCHEMAS + j].finish == GS_FINISH_STOP;
	printf("staged: %d of %d regex requests finished (stop)\n", rx_stop, (int)N_RX);
	CHECK(rx_stop >= 2);
	gs_model_free(mh);
	gs_model_free(md);
	gs_backend_cpu_free(&cpu);
	gs_backend_cpu_free(&dev);
}

/* Without response_format the same model's text is not a JSON document. */
static void test_unconstrained(const struct gs_model *m, struct gs_backend be, const struct gs_tokenizer *t)
{
	struct gs_engine *e = make_engine(m, be, 8, t);
	for (int i = 0; i < 5; i++) {
		set_req(&reqs[i], (uint64_t)i, NULL, (uint64_t)i, 1.0f);
		submit(e, &reqs[i]);
	}
	run_all(e, reqs, 5);
	int json = 0;
	for (int i = 0; i < 5; i++) {
		size_t len;
		char *txt = text_of(t, m, &reqs[i], &len);
		cJSON *doc = txt ? cJSON_ParseWithLength(txt, len) : NULL;
		json += doc != NULL;
		cJSON_Delete(doc);
		free(txt);
	}
	CHECK_MSG(json == 0, "%d of 5 unconstrained outputs parse as JSON", json);
	gs_engine_free(e);
}

static void test_refusals(const struct gs_model *m, struct gs_backend be, const struct gs_tokenizer *t)
{
	struct gs_engine *e = make_engine(m, be, 4, t);
	struct req r;
	set_req(&r, 0, "{\"type\":\"string\",\"pattern\":\"a+\"}", 0, 1.0f);
	CHECK(gs_engine_submit(e, 0, r.prompt, 8, &r.p) == GS_ERR_INVALID_ARG &&
	      strstr(gs_last_error(), "unsupported keyword 'pattern'"));
	set_req(&r, 0, "{\"type\":\"object\"}", 0, 1.0f);
	r.p.ignore_eos = true;
	CHECK(gs_engine_submit(e, 0, r.prompt, 8, &r.p) == GS_ERR_INVALID_ARG &&
	      strstr(gs_last_error(), "response_format cannot be combined with ignore_eos"));
	set_req(&r, 0, "{\"type\":\"object\"}", 0, 1.0f);
	r.p.sp.min_tokens = 3;
	CHECK(gs_engine_submit(e, 0, r.prompt, 8, &r.p) == GS_ERR_INVALID_ARG &&
	      strstr(gs_last_error(), "response_format cannot be combined with min_tokens"));
	gs_engine_free(e);
	/* without a tokenizer */
	e = make_engine(m, be, 4, NULL);
	set_req(&r, 0, "{\"type\":\"object\"}", 0, 1.0f);
	CHECK(gs_engine_submit(e, 0, r.prompt, 8, &r.p) == GS_ERR_INVALID_ARG &&
	      strstr(gs_last_error(), "no tokenizer"));
	gs_engine_free(e);
}

/* The mask's share of the step at batch b: json_object, decode steps only. */
static void figure(const struct gs_model *m, struct gs_backend be, const struct gs_tokenizer *t, int b)
{
	struct gs_engine *e = make_engine(m, be, b, t);
	struct gs_engine_stats s0, s1;
	for (int i = 0; i < b; i++) {
		set_req(&reqs[i], (uint64_t)i, "{\"type\":\"object\",\"properties\":{\"note\":{\"type\":\"string\"}},"
			"\"required\":[\"note\"]}", (uint64_t)i, 1.0f);
		reqs[i].p.max_tokens = 12;
		submit(e, &reqs[i]);
	}
	static struct gs_token_event ev[64];
	int32_t n_ev;
	gs_engine_step(e, ev, 64, &n_ev); /* prefill (and the trie build) */
	gs_engine_get_stats(e, &s0);
	while (!gs_engine_idle(e))
		if (gs_engine_step(e, ev, 64, &n_ev) != GS_OK)
			break;
	gs_engine_get_stats(e, &s1);
	double mask = s1.grammar_mask_s_total - s0.grammar_mask_s_total, step = s1.step_s_total - s0.step_s_total;
	uint64_t nm = s1.grammar_masks - s0.grammar_masks;
	fprintf(stderr, "structured: batch %d: mask+advance %.3f ms per row-step, %.1f%% of decode step time "
		"(%.2f ms per step, one rank, full vocabulary)\n", b, nm ? mask * 1e3 / (double)nm : 0,
		step > 0 ? 100 * mask / step : 0, 1e3 * step / (double)(s1.steps - s0.steps));
	gs_engine_free(e);
}

int main(int argc, char **argv)
{
	struct gs_model *m;
	struct gs_backend be;
	struct gs_tokenizer *t = NULL;

	if (argc < 2 || gs_tokenizer_load(argv[1], &t) != GS_OK) {
		printf("Skipped: no tokenizer.json given\n");
		return 77;
	}
	if (gs_model_synthetic("tiny", 7, &m) != GS_OK || gs_backend_cpu_create(2, &be) != GS_OK) {
		fprintf(stderr, "%s\n", gs_last_error());
		return 1;
	}
	int valid_greedy = 0, cut_greedy = 0, valid_t1 = 0, cut_t1 = 0;
	test_refusals(m, be, t);
	test_unconstrained(m, be, t);
	test_schemas(m, be, t, 0.0f, &valid_greedy, &cut_greedy);
	test_schemas(m, be, t, 1.0f, &valid_t1, &cut_t1);
	test_staged(t);
	fprintf(stderr, "structured: greedy %d valid + %d cut (of %zu); temperature 1: %d valid + %d cut (of %zu)\n",
		valid_greedy, cut_greedy, N_SCHEMAS, valid_t1, cut_t1, (size_t)N_REQ);
	CHECK(valid_t1 >= (int)N_REQ / 2); /* the validation above ran on many documents */
	if (argc > 2 && !strcmp(argv[2], "figures")) { /* figures [PRESET]: not part of the ctest */
		struct gs_model *fm = m;
		if (argc > 3 && gs_model_synthetic(argv[3], 7, &fm) != GS_OK) {
			fprintf(stderr, "%s\n", gs_last_error());
			return 1;
		}
		fprintf(stderr, "structured: figures on the %s shape\n", argc > 3 ? argv[3] : "tiny");
		figure(fm, be, t, 1);
		figure(fm, be, t, 16);
		if (fm != m)
			gs_model_free(fm);
	}
	gs_backend_cpu_free(&be);
	gs_model_free(m);
	gs_tokenizer_free(t);
	TEST_DONE();
}
