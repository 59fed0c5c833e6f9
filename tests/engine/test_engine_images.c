/* Requests with images through the serving engine, on a tiny-vision checkpoint (argv[1], made by
 * `gemmashard make-test-model --preset tiny-vision`: 4 soft tokens per image, window 8):
 *   - each request's greedy tokens equal an independent greedy decode through gs_forward_run
 *     (the CLI path the float64 reference checks), alone and batched beside text and other
 *     image requests, with a token budget that puts chunk boundaries next to the images;
 *   - the same on the CPU backend presenting its memory as a device's (the device path: spans
 *     and projector rows uploaded, rows scattered in backend memory);
 *   - prefix cache: the same prompt ids with a different image take no block at or after the
 *     image, the same image (another buffer, same pixels) takes them, and both decode what they
 *     decode without the cache; the pool is whole at the end;
 *   - bad submissions: image count mismatch, a broken image run, images without pixels.
 * Under `mpirun -np 2` (argv[2] = "tp"): rank 0 leads, rank 1 follows; the images travel in the
 * step plan and the tokens equal the T = 1 greedy decode of rank 0's own model. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gs_comm.h"
#include "gs_engine.h"
#include "gs_model.h"
#include "gs_seq.h"
#include "gs_test.h"
#include "gs_vision.h"

#define N_GEN 12
#define MAX_P 128
#define N_IMG 3

struct ireq {
	uint64_t id;
	int32_t prompt[MAX_P], n_prompt;
	const uint8_t *px;       /* n_img images */
	int32_t n_img;
	int32_t want[N_GEN];     /* independent greedy decode */
	int32_t out[N_GEN], n_out;
};

static uint64_t rng = 77;

static const struct gs_vision_config *V;
static size_t img_bytes;

/* text ids, then per image: boi, mm x image token, eoi, then more text */
static int32_t make_prompt(int32_t *p, int32_t n_text, int32_t n_img)
{
	int32_t n = 0;
	p[n++] = 2;
	for (int32_t i = 0; i < n_text; i++)
		p[n++] = 10 + (int32_t)(gs_test_splitmix(&rng) % 5000);
	for (int32_t k = 0; k < n_img; k++) {
		p[n++] = 108;
		p[n++] = V->boi_id;
		for (int32_t t = 0; t < V->mm_tokens_per_image; t++)
			p[n++] = V->image_token_id;
		p[n++] = V->eoi_id;
		p[n++] = 108;
		for (int32_t i = 0; i < 3; i++)
			p[n++] = 10 + (int32_t)(gs_test_splitmix(&rng) % 5000);
	}
	return n;
}

static int32_t argmax(const float *x, int32_t n)
{
	int32_t b = 0;
	for (int32_t i = 1; i < n; i++)
		if (x[i] > x[b])
			b = i;
	return b;
}

/* Greedy tokens of r through one gs_forward_run sequence (whole prompt, then one token at a time). */
static void reference_decode(const struct gs_model *m, struct gs_backend be, struct ireq *r)
{
	struct gs_forward *f = NULL;
	struct gs_seq *s = NULL;
	struct gs_vision *vis = NULL;
	size_t rows = (size_t)r->n_img * (size_t)V->mm_tokens_per_image;
	float *lg = malloc(sizeof(float) * (size_t)m->n_vocab), *img = NULL;

	GS_ASSERT(gs_forward_create(m, be, MAX_P, &f) == GS_OK && gs_seq_create(f, MAX_P + N_GEN + 1, &s) == GS_OK);
	if (r->n_img) {
		img = be.iface->alloc(be.ctx, rows * (size_t)m->cfg.hidden * sizeof(float));
		GS_ASSERT(img && gs_vision_create(m, be, NULL, &vis) == GS_OK);
		GS_ASSERT(gs_vision_encode(vis, r->px, r->n_img, img) == GS_OK);
		gs_seq_set_images(s, img, (int32_t)rows);
	}
	CHECK(gs_forward_run(f, s, r->prompt, r->n_prompt, lg, false) == GS_OK);
	gs_seq_set_images(s, NULL, 0);
	for (int32_t g = 0; g < N_GEN; g++) {
		r->want[g] = argmax(lg, m->n_vocab);
		if (g + 1 < N_GEN)
			CHECK(gs_forward_run(f, s, &r->want[g], 1, lg, false) == GS_OK);
	}
	if (vis)
		gs_vision_free(vis);
	if (img)
		be.iface->release(be.ctx, img);
	gs_seq_free(s);
	gs_forward_free(f);
	free(lg);
}

static struct gs_engine *make_engine(const struct gs_model *m, struct gs_backend be, const struct gs_comm *comm,
				     int32_t budget, bool cache)
{
	struct gs_engine_config c = { .max_batch_tokens = budget, .max_seqs = 4, .max_context = 256,
				      .candidates = 64, .no_prefix_cache = !cache };
	struct gs_engine *e = NULL;
	if (gs_engine_create(m, be, comm, &c, &e) != GS_OK) {
		fprintf(stderr, "engine: %s\n", gs_last_error());
		exit(1);
	}
	return e;
}

static struct gs_req_params greedy(void)
{
	struct gs_req_params p = { .max_tokens = N_GEN, .ignore_eos = true };
	p.sp = gs_sampling_params_default();
	p.sp.temperature = 0; /* greedy */
	return p;
}

/* Submit r[0, n) at once, run until idle; the pool is checked after every step. */
static void run(struct gs_engine *e, struct ireq *r, int n)
{
	static struct gs_token_event ev[64];
	struct gs_req_params p = greedy();
	int steps = 0;

	for (int k = 0; k < n; k++) {
		r[k].n_out = 0;
		CHECK_MSG(gs_engine_submit_images(e, r[k].id, r[k].prompt, r[k].n_prompt, &p, r[k].px, r[k].n_img) == GS_OK,
			  "submit %llu: %s", (unsigned long long)r[k].id, gs_last_error());
	}
	while (!gs_engine_idle(e) && steps++ < 500) {
		int32_t n_ev;
		GS_ASSERT(gs_engine_step(e, ev, 64, &n_ev) == GS_OK);
		CHECK(gs_engine_kv_consistent(e));
		for (int32_t i = 0; i < n_ev; i++)
			for (int k = 0; k < n; k++)
				if (r[k].id == ev[i].id && ev[i].token >= 0 && r[k].n_out < N_GEN)
					r[k].out[r[k].n_out++] = ev[i].token;
	}
}

static void expect_tokens(const char *what, const struct ireq *r)
{
	bool same = r->n_out == N_GEN && !memcmp(r->out, r->want, sizeof(r->want));
	CHECK_MSG(same, "%s: request %llu decoded differently from its independent greedy decode", what,
		  (unsigned long long)r->id);
	if (!same && getenv("GS_TEST_VERBOSE"))
		for (int32_t g = 0; g < N_GEN; g++)
			fprintf(stderr, "  %d: got %d want %d\n", g, g < r->n_out ? r->out[g] : -1, r->want[g]);
}

static void check_pool_whole(struct gs_engine *e)
{
	struct gs_engine_stats st;
	gs_engine_get_stats(e, &st);
	CHECK(gs_engine_kv_consistent(e));
	CHECK_MSG(st.running == 0 && st.kv_global_used == 0 && st.kv_global_reserved == 0 && st.kv_local_used == 0,
		  "pool not whole: %d running, %d used, %d reserved, %d local used", st.running, st.kv_global_used,
		  st.kv_global_reserved, st.kv_local_used);
}

static void test_bad_submits(struct gs_engine *e, const struct ireq *r2)
{
	struct gs_req_params p = greedy();
	int32_t bad[MAX_P];

	CHECK(gs_engine_submit_images(e, 900, r2->prompt, r2->n_prompt, &p, r2->px, 1) == GS_ERR_INVALID_ARG);
	CHECK(strstr(gs_last_error(), "holds 2 images") != NULL);
	CHECK(gs_engine_submit(e, 901, r2->prompt, r2->n_prompt, &p) == GS_ERR_INVALID_ARG);
	CHECK(gs_engine_submit_images(e, 902, r2->prompt, r2->n_prompt, &p, NULL, 2) == GS_ERR_INVALID_ARG);
	memcpy(bad, r2->prompt, sizeof(int32_t) * (size_t)r2->n_prompt);
	for (int32_t i = 0; i < r2->n_prompt; i++)
		if (bad[i] == V->boi_id) {
			bad[i] = 108; /* a run without its <start_of_image> */
			break;
		}
	CHECK(gs_engine_submit_images(e, 903, bad, r2->n_prompt, &p, r2->px, 2) == GS_ERR_INVALID_ARG);
	CHECK(strstr(gs_last_error(), "<start_of_image>") != NULL);
	CHECK(gs_engine_idle(e));
}

/* Cancelled while waiting, right after admission (images encoded, prompt not in), and while
 * decoding: every image buffer and block comes back. */
static void test_cancel(const struct gs_model *m, struct gs_backend be, const struct ireq *r2)
{
	struct gs_engine *e = make_engine(m, be, NULL, 8, true);
	struct gs_req_params p = greedy();
	static struct gs_token_event ev[64];
	int32_t n_ev;

	for (int when = 0; when < 3; when++) {
		CHECK(gs_engine_submit_images(e, 700, r2->prompt, r2->n_prompt, &p, r2->px, r2->n_img) == GS_OK);
		for (int i = 0; i < (when == 0 ? 0 : when == 1 ? 1 : 6); i++)
			CHECK(gs_engine_step(e, ev, 64, &n_ev) == GS_OK);
		CHECK(gs_engine_cancel(e, 700) == GS_OK);
		for (int i = 0; i < 3 && !gs_engine_idle(e); i++)
			CHECK(gs_engine_step(e, ev, 64, &n_ev) == GS_OK);
		CHECK(gs_engine_idle(e));
		check_pool_whole(e);
	}
	gs_engine_free(e);
}

/* The same ids with another image share no block from the image on; the same pixels do. */
static void test_prefix_cache(const struct gs_model *m, struct gs_backend be, const uint8_t *px)
{
	struct gs_engine *e = make_engine(m, be, NULL, 16, true);
	static struct ireq a, b, c;
	struct gs_engine_stats s0, s1;
	int32_t boi = 0;
	uint8_t *copy = malloc(img_bytes);

	memcpy(copy, px, img_bytes); /* image 0 again, another buffer */
	a.id = 50, a.n_prompt = make_prompt(a.prompt, 45, 1), a.px = px, a.n_img = 1;
	while (a.n_prompt < 80) /* whole blocks after the image, for the cache to hold */
		a.prompt[a.n_prompt++] = 10 + (int32_t)(gs_test_splitmix(&rng) % 5000);
	b = a, b.id = 51, b.px = px + img_bytes;     /* same ids, image 1 */
	c = a, c.id = 52, c.px = copy;               /* same ids, same pixels */
	while (a.prompt[boi] != V->boi_id)
		boi++;
	reference_decode(m, be, &a);
	reference_decode(m, be, &b);
	memcpy(c.want, a.want, sizeof(a.want));
	CHECK_MSG(memcmp(a.want, b.want, sizeof(a.want)) != 0, "two images gave the same tokens: the check is blind");

	run(e, &a, 1);
	expect_tokens("cache, first image", &a);
	gs_engine_get_stats(e, &s0);
	run(e, &b, 1);
	gs_engine_get_stats(e, &s1);
	expect_tokens("cache, same ids, other image", &b);
	uint64_t hit_b = s1.prefix_hit_tokens - s0.prefix_hit_tokens;
	CHECK_MSG(hit_b > 0 && hit_b <= (uint64_t)(boi + 1), "other image: %llu cached tokens, the image's tokens start "
		  "at %d", (unsigned long long)hit_b, boi + 1);
	run(e, &c, 1);
	gs_engine_get_stats(e, &s0);
	expect_tokens("cache, same pixels", &c);
	uint64_t hit_c = s0.prefix_hit_tokens - s1.prefix_hit_tokens;
	CHECK_MSG(hit_c > (uint64_t)(boi + 1 + V->mm_tokens_per_image), "same image: only %llu cached tokens (image "
		  "ends at %d)", (unsigned long long)hit_c, boi + 1 + V->mm_tokens_per_image);
	printf("prefix cache: other image reuses %llu tokens (image at %d), same image %llu of %d\n",
	       (unsigned long long)hit_b, boi + 1, (unsigned long long)hit_c, c.n_prompt);
	check_pool_whole(e);
	gs_engine_free(e);
	free(copy);
}

static void test_t1(const char *dir, bool staged)
{
	struct gs_model *m = NULL;
	struct gs_backend be;
	static struct ireq r[6];
	uint8_t *px;

	GS_ASSERT((staged ? gs_backend_cpu_create_staged(2, &be) : gs_backend_cpu_create(2, &be)) == GS_OK);
	if (gs_model_load(dir, false, &m) != GS_OK || gs_model_to_backend(m, be) != GS_OK) {
		fprintf(stderr, "%s: %s\n", dir, gs_last_error());
		exit(1);
	}
	V = &m->cfg.vision;
	img_bytes = (size_t)V->image_size * (size_t)V->image_size * 3;
	px = malloc(img_bytes * N_IMG);
	for (size_t i = 0; i < img_bytes * N_IMG; i++)
		px[i] = (uint8_t)gs_test_splitmix(&rng);
	/* one image after a short text, two images, one image first, text only, two images again */
	r[0].n_prompt = make_prompt(r[0].prompt, 5, 1), r[0].px = px, r[0].n_img = 1;
	r[1].n_prompt = make_prompt(r[1].prompt, 9, 2), r[1].px = px + img_bytes, r[1].n_img = 2;
	r[2].n_prompt = make_prompt(r[2].prompt, 0, 1), r[2].px = px + 2 * img_bytes, r[2].n_img = 1;
	r[3].n_prompt = make_prompt(r[3].prompt, 30, 0), r[3].px = NULL, r[3].n_img = 0;
	r[4].n_prompt = make_prompt(r[4].prompt, 2, 2), r[4].px = px, r[4].n_img = 2;
	for (int k = 0; k < 5; k++) {
		r[k].id = 10 + (uint64_t)k;
		reference_decode(m, be, &r[k]);
	}
	/* budgets: 7 (one image + 3 decodes, raised to it from 4), 9, 64; alone, then all at once */
	static const int32_t budgets[] = { 4, 9, 64 };
	for (int i = 0; i < 3; i++) {
		int32_t budget = budgets[i];
		struct gs_engine *e = make_engine(m, be, NULL, budget, false);
		char what[64];
		for (int k = 0; k < 5; k++) {
			snprintf(what, sizeof(what), "%s budget %d alone", staged ? "staged" : "cpu", budget);
			run(e, &r[k], 1);
			expect_tokens(what, &r[k]);
		}
		run(e, r, 5);
		for (int k = 0; k < 5; k++) {
			snprintf(what, sizeof(what), "%s budget %d batched", staged ? "staged" : "cpu", budget);
			expect_tokens(what, &r[k]);
		}
		if (budget == 4)
			test_bad_submits(e, &r[1]);
		check_pool_whole(e);
		gs_engine_free(e);
	}
	if (!staged) {
		test_prefix_cache(m, be, px);
		test_cancel(m, be, &r[1]);
	}
	free(px);
	gs_model_free(m);
	gs_backend_cpu_free(&be);
}

/* mpirun -np 2: the leader's images reach the follower in the plan. */
static int test_tp(const char *dir, int *argc, char ***argv)
{
	struct gs_comm world;
	struct gs_model *m = NULL, *m1 = NULL;
	struct gs_backend be;
	static struct ireq r[3];
	uint8_t *px;
	int rank;

	GS_ASSERT(gs_comm_mpi_init(argc, argv, &world) == GS_OK && gs_comm_size(&world) == 2);
	rank = gs_comm_rank(&world);
	GS_ASSERT(gs_backend_cpu_create(1, &be) == GS_OK);
	if (gs_model_load_tp(dir, rank, 2, false, &m) != GS_OK || gs_model_to_backend(m, be) != GS_OK) {
		fprintf(stderr, "%s: %s\n", dir, gs_last_error());
		return 1;
	}
	V = &m->cfg.vision;
	img_bytes = (size_t)V->image_size * (size_t)V->image_size * 3;
	px = malloc(img_bytes * N_IMG);
	for (size_t i = 0; i < img_bytes * N_IMG; i++)
		px[i] = (uint8_t)gs_test_splitmix(&rng);
	r[0].n_prompt = make_prompt(r[0].prompt, 5, 1), r[0].px = px, r[0].n_img = 1;
	r[1].n_prompt = make_prompt(r[1].prompt, 9, 2), r[1].px = px + img_bytes, r[1].n_img = 2;
	r[2].n_prompt = make_prompt(r[2].prompt, 20, 0), r[2].n_img = 0;
	if (rank == 0) { /* the T = 1 decode, on a whole model of its own */
		GS_ASSERT(gs_model_load(dir, false, &m1) == GS_OK);
		for (int k = 0; k < 3; k++) {
			r[k].id = 30 + (uint64_t)k;
			reference_decode(m1, be, &r[k]);
		}
		gs_model_free(m1);
	}
	struct gs_engine *e = make_engine(m, be, &world, 8, true);
	if (rank == 0) {
		run(e, r, 3);
		for (int k = 0; k < 3; k++)
			expect_tokens("T = 2", &r[k]);
		GS_ASSERT(gs_engine_shutdown(e) == GS_OK);
		check_pool_whole(e);
	} else {
		CHECK(gs_engine_follow(e) == GS_OK);
		CHECK(gs_engine_kv_consistent(e));
	}
	gs_engine_free(e);
	free(px);
	gs_model_free(m);
	gs_backend_cpu_free(&be);
	gs_comm_free(&world);
	gs_comm_mpi_finalize();
	if (rank)
		gs_test_checks++; /* the follower's checks are its own */
	TEST_DONE();
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: test_engine_images TINY_VISION_DIR [tp]\n");
		return 2;
	}
	if (argc > 2 && !strcmp(argv[2], "tp"))
		return test_tp(argv[1], &argc, &argv);
	test_t1(argv[1], false);
	test_t1(argv[1], true);
	TEST_DONE();
}
