/* gemmashard-worker: one tensor-parallel engine = one MPI job; every rank runs this.
 *
 *   mpirun -np T gemmashard-worker --model DIR --tokens 2,105,... --dump-logits FILE
 *   mpirun -np T gemmashard-worker --model DIR --tokens ... --generate N [sampling]
 *   mpirun -np T gemmashard-worker --synthetic 1b --bench
 *   mpirun -np T gemmashard-worker --model DIR --coordinator HOST:PORT     (engine mode)
 *
 * Start-up is collective and fails as a group: every rank loads its shard, then all agree
 * on success (one message per distinct error, from the rank that saw it) and on having
 * opened the same checkpoint (config + safetensors header checksums), or all exit. */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "gs_batch.h"
#include "gs_cli_images.h"
#include "gs_comm.h"
#include "gs_config.h"
#include "gs_cpu.h"
#include "gs_cuda.h"
#include "gs_forward.h"
#include "gs_seq.h"
#include "gs_link.h"
#include "gs_net.h"
#include "gs_safetensors.h"
#include "gs_sampler.h"
#include "gs_util.h"
#include "gs_vision.h"
#include "gs_watchdog.h"

#define GS_PATH_MAX 256

struct worker_opts {
	const char *model, *synthetic, *tokens, *dump, *batch, *out;
	const char *coordinator, *engine_id, *served_name, *device;
	const char *numerics;             /* --numerics fp32|bf16 (CPU devices); NULL: fp32 */
	const char *images;               /* --image FILE,... with --tokens (gs_cli_images.h) */
	struct gs_cluster_files cluster;  /* --cluster-ca/--cluster-cert/--cluster-key (engine mode) */
	int generate, chunk, threads, decode_steps, prompt_tokens, max_batch_tokens, max_seqs, ctx;
	int cp;                /* --cp C: context-parallel groups (1: none) */
	int reps;              /* --bench: timed repetitions, the best reported */
	size_t kv_bytes;       /* --kv-mem, per rank (0: the engine's default) */
	bool bench;
	bool no_prefix_cache;        /* --prefix-cache off */
	double collective_timeout;   /* --collective-timeout S (engine mode; 0: no watchdog) */
	bool collective_timeout_set;
	struct gs_sampling_params sp;
	struct gs_batch_split split; /* --batch-split K/N */
};

/* The T × C grid (--cp): the TP group of this rank and its context-parallel peers (the same
 * TP rank in every group); without --cp the TP group is the world. */
struct grid {
	struct gs_comm tp_own, cp_own;
	const struct gs_comm *tp, *cp; /* cp NULL: none */
};

static uint64_t fnv1a(const void *p, size_t n, uint64_t h)
{
	const unsigned char *b = p;
	for (size_t i = 0; i < n; i++)
		h = (h ^ b[i]) * 0x100000001b3ull;
	return h;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: mpirun -np T×C gemmashard-worker [--cp C] (--model DIR | --synthetic SHAPE)\n"
		   "         [--tokens 2,105,...] [--dump-logits FILE] [--generate N] [--bench]\n"
		   "options:\n"
		   "  --model DIR          checkpoint directory (every rank reads only its slices)\n"
		   "  --synthetic SHAPE    random weights in memory: tiny, 1b, 4b, 27b\n"
		   "  --tokens IDS         comma-separated prompt token ids\n"
		   "  --dump-logits FILE   rank 0 writes float32 logits [n_tokens x vocab] of every position\n"
		   "  --generate N         print N generated token ids (greedy unless --temperature > 0)\n"
		   "  --temperature X --top-k N --top-p X --min-p X --repetition-penalty X --seed N\n"
		   "  --chunk N            feed the prompt in chunks of N tokens (1 = decode only; an image in one piece)\n"
		   "  --image FILE,...     with --tokens: one image per <start_of_image> id, expanded to its tokens as\n"
		   "                       `gemmashard logits --image` does (every rank encodes them; TP collective)\n"
		   "  --cp C               context parallelism: the ranks form C groups of T = ranks / C tensor-parallel\n"
		   "                       ranks (group c: ranks c·T .. c·T + T - 1); every group runs each step on its\n"
		   "                       share of the rows, and a long sequence's global-layer KV is split over the\n"
		   "                       groups (ARCHITECTURE.md §4). Default 1; the prefix cache is then off\n"
		   "  --threads N          CPU threads per rank (default: all cores / ranks on this host)\n"
		   "  --device cpu|cuda|cpu-staged  where each rank computes (default cpu); cuda: the GPU of the rank's\n"
		   "                       node-local index, weights moved there, all-reduces over NCCL;\n"
		   "                       cpu-staged: the CPU kernels on the device path (tests without a GPU)\n"
		   "  --numerics fp32|bf16 CPU matmul numerics (default fp32); bf16: x rounded to bf16, vdpbf16ps\n"
		   "                       (needs AVX512_BF16; refused otherwise). Not with --device cuda\n"
		   "  --bench              time prefill (--prompt-tokens, 512) and decode (--decode-steps, 32), the best\n"
		   "                       of --reps runs (2)\n"
		   "  --batch IN.jsonl --out OUT.jsonl   offline batch through the serving engine (resumable)\n"
		   "  --batch-split K/N    --batch: run only the lines L with (L-1) %% N == K (job arrays; ids as in\n"
		   "                       the whole file; join the parts with `gemmashard batch-merge`)\n"
		   "  --coordinator HOST:PORT   engine mode: rank 0 registers with the coordinator and serves it\n"
		   "  --engine-id ID       engine mode: name in the coordinator (default HOSTNAME:PID)\n"
		   "  --served-name NAME   engine mode: model id (default: the model directory's name)\n"
		   "  --cluster-ca FILE --cluster-cert FILE --cluster-key FILE   engine mode: mutual TLS 1.3 with the\n"
		   "                       coordinator (cluster CA, this engine's certificate and its key, mode 600)\n"
		   "  --max-batch-tokens N (256) --max-seqs N (64)   engine limits (--batch, engine mode)\n"
		   "  --ctx N              longest sequence (prompt + max_tokens) one request may have (default: the\n"
		   "                       model's max_position_embeddings; the KV pool may serve less)\n"
		   "  --kv-mem MiB         KV block pool per rank (--batch, engine mode); default: what --max-seqs\n"
		   "                       sequences of min(--ctx, 4096) positions take\n"
		   "  --prefix-cache on|off  automatic prefix caching: reuse the KV blocks of a shared prompt prefix\n"
		   "                       (--batch, engine mode; default on)\n"
		   "  --collective-timeout S   engine mode: a rank that waits this long in a collective (a peer died or\n"
		   "                       is unreachable) exits with status 75; a follower's wait for the next plan\n"
		   "                       gets 10 s more (default 10; 0: off)\n");
}

/* Returns 0, 1 for --help (rank 0 prints it), 2 on a usage error (reason in gs_last_error). */
static int parse_args(int argc, char **argv, struct worker_opts *o, int rank)
{
	*o = (struct worker_opts){ .cp = 1, .reps = 2, .chunk = 0, .decode_steps = 32, .prompt_tokens = 512, .max_batch_tokens = 256,
				   .max_seqs = 64, .ctx = 0, .collective_timeout = GS_WATCHDOG_DEFAULT_S };
	o->sp = (struct gs_sampling_params){ .temperature = 0, .top_k = 0, .top_p = 1, .min_p = 0,
					     .repetition_penalty = 1, .seed = 0 };
	o->split = (struct gs_batch_split){ .k = 0, .n = 1 };
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		bool takes = true;
		if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			if (rank == 0)
				usage(stdout);
			return 1;
		} else if (!strcmp(a, "--bench")) {
			o->bench = true, takes = false;
		} else if (!v) {
			goto bad;
		} else if (!strcmp(a, "--model")) {
			o->model = v;
		} else if (!strcmp(a, "--synthetic")) {
			o->synthetic = v;
		} else if (!strcmp(a, "--tokens")) {
			o->tokens = v;
		} else if (!strcmp(a, "--batch")) {
			o->batch = v;
		} else if (!strcmp(a, "--out")) {
			o->out = v;
		} else if (!strcmp(a, "--batch-split")) {
			char *end = NULL;
			long k = strtol(v, &end, 10), n = end && *end == '/' ? strtol(end + 1, &end, 10) : 0;
			if (!end || *end || k < 0 || n < 1 || k >= n || n > 1000000 || !(v[0] >= '0' && v[0] <= '9')) {
				gs_errorf(GS_ERR_INVALID_ARG, "--batch-split wants K/N with 0 <= K < N (e.g. 2/8), got \"%s\"", v);
				return 2;
			}
			o->split = (struct gs_batch_split){ .k = (int)k, .n = (int)n };
		} else if (!strcmp(a, "--coordinator")) {
			o->coordinator = v;
		} else if (!strcmp(a, "--engine-id")) {
			o->engine_id = v;
		} else if (!strcmp(a, "--cluster-ca")) {
			o->cluster.ca = v;
		} else if (!strcmp(a, "--cluster-cert")) {
			o->cluster.cert = v;
		} else if (!strcmp(a, "--cluster-key")) {
			o->cluster.key = v;
		} else if (!strcmp(a, "--served-name")) {
			o->served_name = v;
		} else if (!strcmp(a, "--device")) {
			o->device = v;
		} else if (!strcmp(a, "--numerics")) {
			enum gs_numerics nm;
			if (gs_numerics_parse(v, "--numerics", &nm) != GS_OK)
				return 2;
			o->numerics = v;
		} else if (!strcmp(a, "--max-batch-tokens")) {
			o->max_batch_tokens = atoi(v);
		} else if (!strcmp(a, "--prefix-cache")) {
			if (strcmp(v, "on") && strcmp(v, "off")) {
				gs_errorf(GS_ERR_INVALID_ARG, "--prefix-cache wants on or off, got \"%s\"", v);
				return 2;
			}
			o->no_prefix_cache = !strcmp(v, "off");
		} else if (!strcmp(a, "--cp")) {
			char *end = NULL;
			long c = strtol(v, &end, 10);
			if (end == v || *end || c < 1 || c > GS_KV_MAX_CP) {
				gs_errorf(GS_ERR_INVALID_ARG, "--cp wants a number of context-parallel groups in 1..%d, got "
					  "\"%s\"", GS_KV_MAX_CP, v);
				return 2;
			}
			o->cp = (int)c;
		} else if (!strcmp(a, "--max-seqs")) {
			o->max_seqs = atoi(v);
		} else if (!strcmp(a, "--ctx")) {
			o->ctx = atoi(v);
			if (o->ctx < 2) {
				gs_errorf(GS_ERR_INVALID_ARG, "--ctx wants a length >= 2, got \"%s\"", v);
				return 2;
			}
		} else if (!strcmp(a, "--kv-mem")) {
			char *end = NULL;
			long long mib = strtoll(v, &end, 10);
			if (end == v || *end || mib < 1 || mib > (1LL << 30)) {
				gs_errorf(GS_ERR_INVALID_ARG, "--kv-mem wants MiB per rank in 1..2^30, got \"%s\"", v);
				return 2;
			}
			o->kv_bytes = (size_t)mib << 20;
		} else if (!strcmp(a, "--image")) {
			o->images = v;
		} else if (!strcmp(a, "--dump-logits")) {
			o->dump = v;
		} else if (!strcmp(a, "--generate")) {
			o->generate = atoi(v);
		} else if (!strcmp(a, "--chunk")) {
			o->chunk = atoi(v);
		} else if (!strcmp(a, "--collective-timeout")) {
			char *end;
			o->collective_timeout = strtod(v, &end);
			o->collective_timeout_set = true;
			if (end == v || *end || !isfinite(o->collective_timeout) || o->collective_timeout < 0 ||
			    o->collective_timeout > 86400) {
				gs_errorf(GS_ERR_INVALID_ARG, "--collective-timeout wants seconds in 0..86400 (0: off), "
					  "got \"%s\"", v);
				return 2;
			}
		} else if (!strcmp(a, "--threads")) {
			o->threads = atoi(v);
		} else if (!strcmp(a, "--reps")) {
			o->reps = atoi(v);
			if (o->reps < 1 || o->reps > 100) {
				gs_errorf(GS_ERR_INVALID_ARG, "--reps wants 1..100 timed repetitions, got \"%s\"", v);
				return 2;
			}
		} else if (!strcmp(a, "--decode-steps")) {
			o->decode_steps = atoi(v);
		} else if (!strcmp(a, "--prompt-tokens")) {
			o->prompt_tokens = atoi(v);
		} else if (!strcmp(a, "--temperature")) {
			o->sp.temperature = strtof(v, NULL);
		} else if (!strcmp(a, "--top-k")) {
			o->sp.top_k = atoi(v);
		} else if (!strcmp(a, "--top-p")) {
			o->sp.top_p = strtof(v, NULL);
		} else if (!strcmp(a, "--min-p")) {
			o->sp.min_p = strtof(v, NULL);
		} else if (!strcmp(a, "--repetition-penalty")) {
			o->sp.repetition_penalty = strtof(v, NULL);
		} else if (!strcmp(a, "--seed")) {
			o->sp.seed = strtoull(v, NULL, 10);
		} else {
			goto bad;
		}
		i += takes;
		continue;
bad:
		gs_errorf(GS_ERR_INVALID_ARG, "bad or incomplete option '%s' (see --help)", a);
		return 2;
	}
	if (!o->batch != !o->out) {
		gs_errorf(GS_ERR_INVALID_ARG, "--batch and --out go together");
		return 2;
	}
	if (o->collective_timeout_set && !o->coordinator) {
		gs_errorf(GS_ERR_INVALID_ARG, "--collective-timeout is for engine mode (--coordinator)");
		return 2;
	}
	if (o->kv_bytes && !o->batch && !o->coordinator) {
		gs_errorf(GS_ERR_INVALID_ARG, "--kv-mem sizes the serving engine's KV pool: use it with --batch or "
			  "--coordinator");
		return 2;
	}
	if (o->split.n > 1 && !o->batch) {
		gs_errorf(GS_ERR_INVALID_ARG, "--batch-split needs --batch");
		return 2;
	}
	if (o->device && strcmp(o->device, "cpu") != 0 && strcmp(o->device, "cuda") != 0 &&
	    strcmp(o->device, "cpu-staged") != 0) {
		gs_errorf(GS_ERR_INVALID_ARG, "--device must be cpu or cuda (or cpu-staged), got \"%s\"", o->device);
		return 2;
	}
	if (o->numerics && o->device && !strcmp(o->device, "cuda")) {
		gs_errorf(GS_ERR_INVALID_ARG, "--numerics is a CPU mode; --device cuda has its own (ARCHITECTURE.md §3)");
		return 2;
	}
	if (o->batch && !o->model) {
		gs_errorf(GS_ERR_INVALID_ARG, "--batch needs --model (its tokenizer.json)");
		return 2;
	}
	if (o->coordinator) {
		char host[256], port[16];
		if (o->tokens || o->batch || o->bench || o->dump || o->generate) {
			gs_errorf(GS_ERR_INVALID_ARG, "--coordinator (engine mode) does not combine with --tokens, --batch, "
				  "--bench, --dump-logits or --generate");
			return 2;
		}
		if (gs_link_parse_addr(o->coordinator, host, sizeof(host), port, sizeof(port)) != GS_OK)
			return 2;
	} else if (o->engine_id || o->served_name || o->cluster.ca || o->cluster.cert || o->cluster.key) {
		gs_errorf(GS_ERR_INVALID_ARG, "--engine-id, --served-name and --cluster-* need --coordinator");
		return 2;
	}
	if (!o->cluster.ca != !o->cluster.cert || !o->cluster.ca != !o->cluster.key) {
		gs_errorf(GS_ERR_INVALID_ARG, "--cluster-ca, --cluster-cert and --cluster-key go together (mutual TLS "
			  "with the coordinator)");
		return 2;
	}
	if (!o->model == !o->synthetic || (!o->bench && !o->tokens && !o->batch && !o->coordinator) || o->generate < 0 ||
	    o->chunk < 0) {
		gs_errorf(GS_ERR_INVALID_ARG, "need exactly one of --model/--synthetic, and --tokens unless --bench, "
			  "--batch or --coordinator (see --help)");
		return 2;
	}
	return 0;
}

/* Collective: did every rank succeed? Each failing rank prints its reason unless a lower
 * rank failed with the same text (T ranks hitting one config error say it once). */
static bool all_ok(const struct gs_comm *w, enum gs_status st, const char *what)
{
	int n = gs_comm_size(w), rank = gs_comm_rank(w);
	int64_t mine[2] = { st != GS_OK, st != GS_OK ? (int64_t)(fnv1a(gs_last_error(), strlen(gs_last_error()),
								     0xcbf29ce484222325ull) >> 1) : 0 };
	int64_t *all = calloc((size_t)n * 2, sizeof(*all));
	bool ok = true, print = st != GS_OK;

	GS_ASSERT(all != NULL);
	if (w->iface->allgather(w->ctx, mine, all, sizeof(mine)) != GS_OK) {
		fprintf(stderr, "[gemmashard r%d] error: %s: collective failed: %s\n", rank, what, gs_last_error());
		w->iface->abort(w->ctx, 1);
	}
	for (int r = 0; r < n; r++) {
		if (all[2 * r])
			ok = false;
		if (r < rank && all[2 * r] && all[2 * r + 1] == mine[1])
			print = false;
	}
	if (print)
		fprintf(stderr, "[gemmashard r%d] error: %s: %s\n", rank, what, gs_last_error());
	free(all);
	return ok;
}

static long rss_kb(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long kb = -1;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
			break;
	fclose(f);
	return kb;
}

/* Every rank must have opened the same checkpoint: compare config fields and safetensors
 * header checksums; rank 0 names the odd ones out. */
static bool same_checkpoint(const struct gs_comm *w, const struct gs_model *m, const char *path)
{
	struct ident {
		uint64_t cfg, headers;
		char path[GS_PATH_MAX];
	} me = { 0 }, *all;
	const struct gs_config *c = &m->cfg;
	int n = gs_comm_size(w);
	bool ok = true;
	int32_t f[] = { c->vocab_size, c->hidden, c->intermediate, c->n_layers, c->n_heads, c->n_kv_heads,
			c->head_dim, c->sliding_window, c->max_position, m->n_vocab };

	me.cfg = fnv1a(f, sizeof(f), 0xcbf29ce484222325ull);
	me.cfg = fnv1a(c->is_sliding, (size_t)c->n_layers, me.cfg);
	me.cfg = fnv1a(&c->query_pre_attn_scalar, sizeof(double), me.cfg);
	me.cfg = fnv1a(&c->rope_scale_factor, sizeof(double), me.cfg);
	/* Headers only describe names, shapes and offsets; the norm gains are mirrored on every
	 * rank, so hashing them also tells apart checkpoints with different weights. */
	me.cfg = fnv1a(m->gains, sizeof(float) * gs_model_gains_count(c), me.cfg);
	me.headers = m->st ? gs_st_header_checksum(m->st) : 0;
	snprintf(me.path, sizeof(me.path), "%s", path);
	all = calloc((size_t)n, sizeof(*all));
	GS_ASSERT(all != NULL);
	if (w->iface->allgather(w->ctx, &me, all, sizeof(me)) != GS_OK)
		w->iface->abort(w->ctx, 1);
	for (int r = 1; r < n; r++) {
		if (all[r].cfg == all[0].cfg && all[r].headers == all[0].headers)
			continue;
		ok = false;
		if (gs_comm_rank(w) == 0)
			fprintf(stderr,
				"[gemmashard r0] error: rank %d loaded a different checkpoint than rank 0: '%s' "
				"(config+norms %016llx, headers %016llx) vs '%s' (config+norms %016llx, headers %016llx); "
				"all ranks of an engine must load the same model\n",
				r, all[r].path, (unsigned long long)all[r].cfg, (unsigned long long)all[r].headers,
				all[0].path, (unsigned long long)all[0].cfg, (unsigned long long)all[0].headers);
	}
	free(all);
	return ok;
}

/* Rank 0 receives the full [rows, V] logits from the vocabulary-sharded [rows, n_local]. */
static enum gs_status gather_logits(const struct gs_comm *w, const struct gs_model *m, const float *local,
				    int rows, float *full, float *pad_send, float *pad_recv)
{
	const struct gs_shard *sh = &m->shard;
	int T = gs_comm_size(w);
	size_t stride = (size_t)sh->vocab_stride;

	for (int r = 0; r < rows; r++)
		for (size_t i = 0; i < stride; i++)
			pad_send[(size_t)r * stride + i] = i < (size_t)sh->n_vocab ? local[(size_t)r * sh->n_vocab + i] : 0.0f;
	GS_TRY(w->iface->gather(w->ctx, pad_send, pad_recv, (size_t)rows * stride * sizeof(float), 0));
	if (gs_comm_rank(w) != 0)
		return GS_OK;
	for (int k = 0; k < T; k++) {
		size_t v0 = (size_t)k * stride;
		for (int r = 0; r < rows; r++)
			for (size_t i = 0; i < stride && v0 + i < (size_t)m->n_vocab; i++)
				full[(size_t)r * m->n_vocab + v0 + i] = pad_recv[((size_t)k * rows + r) * stride + i];
	}
	return GS_OK;
}

/* Distributed sampling: each rank reduces its slice to K candidates, rank 0 merges and
 * draws with the request's seed, then broadcasts the token. */
struct dsample {
	struct gs_sampler *smp;
	size_t K;
	int32_t *ids, *all_ids;
	float *lg, *all_lg;
};

static int32_t sample_next(const struct gs_comm *w, struct dsample *d, const struct gs_model *m,
			   const float *local_logits, const int32_t *hist, size_t n_hist)
{
	int T = gs_comm_size(w);
	size_t got = gs_sampler_local_candidates(d->smp, local_logits, m->shard.vocab0, m->shard.n_vocab, hist, n_hist,
						 d->K, d->ids, d->lg);
	int32_t tok = -1;

	for (size_t i = got; i < d->K; i++)
		d->ids[i] = -1, d->lg[i] = -INFINITY; /* padding when a slice is shorter than K */
	if (w->iface->gather(w->ctx, d->ids, d->all_ids, d->K * sizeof(int32_t), 0) != GS_OK ||
	    w->iface->gather(w->ctx, d->lg, d->all_lg, d->K * sizeof(float), 0) != GS_OK)
		return -1;
	if (gs_comm_rank(w) == 0) {
		size_t n = 0;
		for (size_t i = 0; i < (size_t)T * d->K; i++)
			if (d->all_ids[i] >= 0)
				d->all_ids[n] = d->all_ids[i], d->all_lg[n] = d->all_lg[i], n++;
		tok = gs_sampler_sample_candidates(d->smp, d->all_ids, d->all_lg, n, NULL);
	}
	if (w->iface->broadcast(w->ctx, &tok, sizeof(tok), 0) != GS_OK)
		return -1;
	return tok;
}

static int run_bench(const struct gs_comm *w, const struct gs_comm *tp, struct gs_forward *f, struct gs_seq *s,
		     const struct gs_model *m, const struct worker_opts *o, float *logits)
{
	int np = o->prompt_tokens, rank = gs_comm_rank(w);
	int32_t *ids = malloc(sizeof(*ids) * (size_t)np);
	double t0, t_pre = 1e30, t_dec = 1e30;

	GS_ASSERT(ids != NULL);
	for (int i = 0; i < np; i++)
		ids[i] = 2 + (int32_t)((i * 2654435761u) % (uint32_t)(m->n_vocab - 2));
	for (int rep = 0; rep < o->reps; rep++) {
		gs_seq_reset(s);
		w->iface->barrier(w->ctx);
		t0 = gs_now_s();
		if (gs_forward_run(f, s, ids, np, logits, false) != GS_OK)
			return 1;
		w->iface->barrier(w->ctx);
		if (gs_now_s() - t0 < t_pre)
			t_pre = gs_now_s() - t0;
	}
	for (int rep = 0; rep < o->reps; rep++) {
		gs_seq_reset(s);
		if (gs_forward_run(f, s, ids, 16, logits, false) != GS_OK)
			return 1;
		w->iface->barrier(w->ctx);
		t0 = gs_now_s();
		for (int i = 0; i < o->decode_steps; i++)
			if (gs_forward_run(f, s, &ids[16 + i % (np > 17 ? np - 17 : 1)], 1, logits, false) != GS_OK)
				return 1;
		w->iface->barrier(w->ctx);
		if ((gs_now_s() - t0) / o->decode_steps < t_dec)
			t_dec = (gs_now_s() - t0) / o->decode_steps;
	}
	/* Per rank: prefill as matmul FLOP/s (the layers' matmuls over every prompt token, the LM
	 * head once), decode as weight bytes streamed per second. */
	double pre_flops = np * gs_model_layer_flops(m) + 2.0 * (double)m->lm_head.rows * (double)m->lm_head.cols;
	if (rank == 0)
		printf("bench %s TP=%d CP=%d threads/rank=%d numerics=%s: prefill %d tokens %.3f s (%.2f tok/s, %.2f TFLOP/s of "
		       "matmuls); decode %.2f ms/token (%.2f tok/s, weights streamed at %.1f GB/s)\n", m->path,
		       gs_comm_size(tp), o->cp, o->threads,
		       o->device && !strcmp(o->device, "cuda") ? "cuda" : o->numerics ? o->numerics : "fp32", np, t_pre, np / t_pre, pre_flops / t_pre / 1e12, t_dec * 1e3, 1.0 / t_dec,
		       (double)m->weight_bytes / t_dec / 1e9);
	free(ids);
	return 0;
}

/* Where this rank computes: the CPU backend, or a GPU (which then holds the model's weights,
 * moved or drawn there) and, for T > 1, an NCCL communicator for the forward pass's all-reduces
 * (plans and sampling candidates stay on the MPI world). */
struct rank_backend {
	struct gs_backend be;
	bool              cuda;
	struct gs_comm    nccl;
	bool              have_nccl;
	/* --cp on GPUs: NCCL communicators of the grid (the forward pass's all-reduces over the TP
	 * group, its all-gathers over the context-parallel peers) */
	struct gs_comm    nccl_tp, nccl_cp;
	bool              have_grid;
};

/* Collective: every rank calls it; all succeed or all fail with one message. Before the model is
 * loaded: synthetic weights are drawn where they will be used. */
static bool rank_backend_open(const struct gs_comm *w, const struct worker_opts *o, struct rank_backend *rb)
{
	enum gs_status st = GS_OK;
	int dev = 0;

	memset(rb, 0, sizeof(*rb));
	if (!o->device || !strcmp(o->device, "cpu") || !strcmp(o->device, "cpu-staged")) {
		/* cpu-staged: weights, KV, index arrays and sampling candidates on the device path;
		 * the forward pass's all-reduces over the MPI world (its "device" memory is host memory) */
		enum gs_numerics nm = GS_NUMERICS_FP32;
		bool staged = o->device && !strcmp(o->device, "cpu-staged");
		st = staged ? gs_backend_cpu_create_staged(o->threads, &rb->be) : gs_backend_cpu_create(o->threads, &rb->be);
		if (st == GS_OK && o->numerics && (st = gs_numerics_parse(o->numerics, "--numerics", &nm)) == GS_OK)
			st = gs_backend_cpu_set_numerics(&rb->be, nm);
		if (st != GS_OK && rb->be.ctx)
			gs_backend_cpu_free(&rb->be);
		/* every rank checks its own CPU: a mixed cluster cannot run bf16 on some ranks only */
		return all_ok(w, st, staged ? "creating the staged CPU backend" : "creating the CPU backend");
	}
	{
		int n = gs_cuda_device_count();
		const char *lr = getenv("OMPI_COMM_WORLD_LOCAL_RANK");
		dev = (lr ? atoi(lr) : gs_comm_rank(w)) % (n > 0 ? n : 1);
		if (n < 1)
			st = gs_errorf(GS_ERR_UNSUPPORTED, "--device cuda: %s",
				       gs_cuda_built() ? "no CUDA device on this host" : "this build has no CUDA backend");
		else if ((st = gs_backend_cuda_create(dev, &rb->be)) == GS_OK)
			rb->cuda = true;
	}
	if (!all_ok(w, st, "setting up the device"))
		return false;
	if (gs_comm_size(w) > 1) {
		st = gs_comm_nccl_create(w, dev, &rb->nccl);
		if (st == GS_OK) {
			rb->have_nccl = true;
			st = gs_comm_nccl_set_compute_stream(&rb->nccl, gs_backend_cuda_stream(&rb->be));
		}
		if (!all_ok(w, st, "creating the NCCL communicator"))
			return false;
	}
	if (o->cp > 1) { /* T = world / C ranks per group, as the MPI grid (main) */
		int r = gs_comm_rank(w), T = gs_comm_size(w) / o->cp;
		st = gs_comm_split(&rb->nccl, r / T, r % T, &rb->nccl_tp);
		if (st == GS_OK && (st = gs_comm_split(&rb->nccl, r % T, r / T, &rb->nccl_cp)) != GS_OK)
			gs_comm_free(&rb->nccl_tp);
		if (!all_ok(w, st, "splitting the NCCL communicator into the context-parallel grid"))
			return false;
		rb->have_grid = true;
	}
	return true;
}

/* After the model (whose device weights the backend owns) is freed. */
static void rank_backend_close(struct rank_backend *rb)
{
	if (rb->have_grid) {
		gs_comm_free(&rb->nccl_tp);
		gs_comm_free(&rb->nccl_cp);
	}
	if (rb->have_nccl)
		gs_comm_free(&rb->nccl);
	if (rb->be.ctx && rb->cuda)
		gs_backend_cuda_free(&rb->be);
	else if (rb->be.ctx)
		gs_backend_cpu_free(&rb->be);
}

/* The engine of this rank on rb's backend; its forward pass all-reduces over NCCL on a GPU. */
static enum gs_status rank_engine(const struct gs_comm *w, const struct grid *gr, const struct gs_model *m,
				  struct rank_backend *rb, struct gs_engine_config *ec, struct gs_engine **e)
{
	ec->tp_comm = gr->cp ? gr->tp : NULL;
	ec->cp_comm = rb->have_grid ? &rb->nccl_cp : gr->cp; /* the forward pass's all-gathers */
	GS_TRY(gs_engine_create(m, rb->be, gs_comm_size(w) > 1 ? w : NULL, ec, e));
	if (rb->have_grid && gs_comm_size(gr->tp) > 1)
		gs_engine_set_device_comm(*e, &rb->nccl_tp);
	else if (rb->have_nccl && !rb->have_grid)
		gs_engine_set_device_comm(*e, &rb->nccl);
	return GS_OK;
}

/* Offline batch: the leader reads, tokenizes and schedules; every rank executes the plans. */
static int run_batch(const struct gs_comm *w, const struct grid *gr, const struct gs_model *m,
		     struct rank_backend *rb, const struct worker_opts *o)
{
	struct gs_engine_config ec = { .max_batch_tokens = o->max_batch_tokens, .max_seqs = o->max_seqs,
				       .max_context = o->ctx > 0 ? o->ctx : m->cfg.max_position, .kv_bytes = o->kv_bytes,
				       .candidates = 64, .no_prefix_cache = o->no_prefix_cache };
	struct gs_engine *e = NULL;
	struct gs_tokenizer *tok = NULL;
	char path[1024];
	enum gs_status st;
	int rc = 1;

	st = rank_engine(w, gr, m, rb, &ec, &e);
	if (st == GS_OK) { /* every rank: structured output masks with the token bytes */
		snprintf(path, sizeof(path), "%s/tokenizer.json", o->model);
		st = gs_tokenizer_load(path, &tok);
		if (st == GS_OK)
			gs_engine_set_tokenizer(e, tok);
	}
	if (!all_ok(w, st, "setting up the batch engine"))
		goto out_free;
	if (gs_comm_rank(w) == 0) {
		struct gs_engine_stats es;
		st = gs_batch_run(e, m, tok, o->batch, o->out, o->split);
		gs_engine_get_stats(e, &es);
		if (es.prefix_cache)
			fprintf(stderr, "prefix cache: %llu of %llu prompt tokens hit, %llu blocks evicted\n",
				(unsigned long long)es.prefix_hit_tokens, (unsigned long long)es.prefix_query_tokens,
				(unsigned long long)es.prefix_evictions);
	} else {
		st = gs_engine_follow(e);
	}
	rc = all_ok(w, st, "batch") ? 0 : 1;
	if (rc == 0 && getenv("GS_KV_CHECK") && !strcmp(getenv("GS_KV_CHECK"), "1")) { /* tests */
		st = gs_engine_kv_whole(e) ? GS_OK : gs_errorf(GS_ERR_INTERNAL, "KV check: blocks still held at the end");
		rc = all_ok(w, st, "KV check") ? 0 : 1;
		if (rc == 0 && gs_comm_rank(w) == 0)
			fprintf(stderr, "[gemmashard r0] KV check: the pool is whole on all %d ranks\n", gs_comm_size(w));
	}
out_free:
	gs_tokenizer_free(tok);
	gs_engine_free(e);
	return rc;
}

static volatile sig_atomic_t stop_requested;

static void on_stop_signal(int sig)
{
	stop_requested = 1;
}

/* The served model name: the model directory's last component, or synthetic-SHAPE. */
static void default_model_id(const struct worker_opts *o, char *buf, size_t cap)
{
	const char *d = o->model;
	size_t n;

	if (!d) {
		snprintf(buf, cap, "synthetic-%s", o->synthetic);
		return;
	}
	n = strlen(d);
	while (n > 1 && d[n - 1] == '/')
		n--;
	for (size_t i = n; i > 0; i--) {
		if (d[i - 1] == '/' && i < n) {
			d += i, n -= i;
			break;
		}
	}
	snprintf(buf, cap, "%.*s", (int)n, d);
}

/* Engine mode: the leader serves the coordinator (gs_link_serve), the other ranks execute
 * its plans. SIGTERM/SIGINT on any rank: the leader shuts the engine down, everyone exits 0.
 * An engine failure ends the whole job (the launcher restarts it; it registers again). */
static int run_engine(const struct gs_comm *w, const struct grid *gr, const struct gs_model *m,
		      struct rank_backend *rb, const struct worker_opts *o, struct gs_cluster_tls *tls)
{
	struct gs_engine_config ec = { .max_batch_tokens = o->max_batch_tokens, .max_seqs = o->max_seqs,
				       .max_context = o->ctx > 0 ? o->ctx : m->cfg.max_position, .kv_bytes = o->kv_bytes,
				       .candidates = 64, .no_prefix_cache = o->no_prefix_cache };
	struct sigaction sa = { .sa_handler = on_stop_signal }; /* no SA_RESTART: waits see EINTR */
	struct gs_engine *e = NULL;
	struct gs_tokenizer *tok = NULL;
	char model_id[256];
	enum gs_status st;
	int rc = 1;

	st = rank_engine(w, gr, m, rb, &ec, &e);
	if (st == GS_OK && o->model) { /* every rank: structured output masks with the token bytes */
		char path[1024];
		snprintf(path, sizeof(path), "%s/tokenizer.json", o->model);
		st = gs_tokenizer_load(path, &tok);
		if (st == GS_OK)
			gs_engine_set_tokenizer(e, tok);
	}
	if (!all_ok(w, st, "setting up the engine"))
		goto out_free;
	/* From here on every rank waits only on its peers' steps, not on loading. */
	if (gs_comm_size(w) > 1 && !all_ok(w, gs_watchdog_start(gs_comm_rank(w), o->collective_timeout, &stop_requested), "watchdog"))
		goto out_free;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN); /* a dead coordinator is a write error, not a signal */
	if (gs_comm_rank(w) == 0) {
		struct gs_link_config lc = { .coordinator = o->coordinator, .engine_id = o->engine_id, .tp = gs_comm_size(gr->tp),
					     .cp = o->cp, .vocab_size = m->n_vocab, .model_id = o->served_name, .tls = tls,
					     .numerics = rb->cuda ? "cuda" : gs_numerics_name(gs_backend_cpu_numerics(&rb->be)),
					     .vision = m->cfg.vision.present, .image_size = m->cfg.vision.image_size,
					     .mm_tokens_per_image = m->cfg.vision.mm_tokens_per_image };
		if (!lc.model_id || !*lc.model_id) {
			default_model_id(o, model_id, sizeof(model_id));
			lc.model_id = model_id;
		}
		st = gs_link_serve(e, &lc, &stop_requested);
	} else {
		st = gs_engine_follow(e);
	}
	if (st != GS_OK) {
		fprintf(stderr, "[gemmashard r%d] error: engine: %s\n", gs_comm_rank(w), gs_last_error());
		gs_comm_abort(w, 1);
	}
	if (gs_comm_rank(w) == 0)
		gs_log(GS_LOG_INFO, "engine stopped");
	rc = 0;
out_free:
	gs_engine_free(e);
	gs_tokenizer_free(tok);
	return rc;
}

int main(int argc, char **argv)
{
	struct gs_comm world;
	struct grid gr = { 0 };
	struct worker_opts o;
	struct gs_model *m = NULL;
	struct gs_cluster_tls *tls = NULL;
	struct rank_backend rb = { 0 };
	struct gs_forward *f = NULL;
	struct gs_seq *s = NULL;
	struct dsample ds = { 0 };
	int32_t *ids = NULL, n = 0, n_img = 0;
	float *logits = NULL, *full = NULL, *pad_s = NULL, *pad_r = NULL;
	uint8_t *px = NULL;          /* --image: the images, then their projector rows */
	struct gs_vision *vis = NULL;
	float *img_rows = NULL;
	enum gs_status st;
	int rank, T, rc = 1;

	if (gs_comm_mpi_init(&argc, &argv, &world) != GS_OK) {
		fprintf(stderr, "gemmashard-worker: %s\n", gs_last_error());
		return 1;
	}
	rank = gs_comm_rank(&world);
	T = gs_comm_size(&world);
	gs_log_set_rank(rank);
	gr.tp = &world;
	/* Ranks may get different arguments (MPMD): agree on the outcome before any collective. */
	{
		int64_t mine = parse_args(argc, argv, &o, rank);
		bool ok = all_ok(&world, mine == 2 ? GS_ERR_INVALID_ARG : GS_OK, "arguments");
		if (world.iface->allreduce_max_i64(world.ctx, &mine, 1) != GS_OK || !ok || mine) {
			rc = ok && mine == 1 ? 0 : 2;
			goto out_finalize;
		}
	}
	if (o.cp > 1) { /* T = world / C ranks per group; group c is ranks c·T .. c·T + T - 1 */
		st = T % o.cp ? gs_errorf(GS_ERR_INVALID_ARG, "--cp %d does not divide the %d ranks into groups of equal size "
					  "(mpirun -np T×C)", o.cp, T) : GS_OK;
		if (!all_ok(&world, st, "arguments")) {
			rc = 2;
			goto out_finalize;
		}
		T /= o.cp;
		st = gs_comm_split(&world, rank / T, rank % T, &gr.tp_own);
		if (st == GS_OK)
			st = gs_comm_split(&world, rank % T, rank / T, &gr.cp_own);
		if (!all_ok(&world, st, "forming the context-parallel grid"))
			goto out_finalize;
		gr.tp = &gr.tp_own;
		gr.cp = &gr.cp_own;
	}
	if (o.threads <= 0) {
		/* Ranks share the host's cores: oversubscribing spin-waiting pools wrecks latency. */
		long cores = sysconf(_SC_NPROCESSORS_ONLN);
		char *local = getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
		int per_host = local ? atoi(local) : gs_comm_size(&world);
		o.threads = (int)(cores / (per_host > 0 ? per_host : 1));
		if (o.threads < 1)
			o.threads = 1;
	}

	/* The leader's cluster certificates: checked before any weights are read. */
	if (o.cluster.ca) {
		st = rank == 0 ? gs_cluster_tls_create(&o.cluster, GS_ROLE_ENGINE, &tls) : GS_OK;
		if (!all_ok(&world, st, "cluster certificates"))
			goto out_finalize;
	}
	if (!rank_backend_open(&world, &o, &rb))
		goto out_free;
	/* Load this rank's shard; agree on success; then into the device's memory (a no-op on the
	 * CPU) once the ranks agree they hold the same checkpoint. */
	st = o.model ? gs_model_load_tp(o.model, gs_comm_rank(gr.tp), T, true, &m)
		     : gs_model_synthetic_on(o.synthetic, 1234, gs_comm_rank(gr.tp), T, &rb.be, &m);
	if (!all_ok(&world, st, "loading the model"))
		goto out_free;
	if (!same_checkpoint(&world, m, o.model ? o.model : o.synthetic))
		goto out_free;
	if (!all_ok(&world, gs_model_to_backend(m, rb.be), "moving the model to the device"))
		goto out_free;
	{
		long kb = rss_kb();
		int64_t mine = kb, *all = calloc((size_t)gs_comm_size(&world), sizeof(*all));
		GS_ASSERT(all != NULL);
		world.iface->allgather(world.ctx, &mine, all, sizeof(mine));
		if (rank == 0) {
			fprintf(stderr, "[gemmashard r0] TP=%d CP=%d, model %s: %.1f MB of weights per rank "
					"(%d/%d query heads, %d KV heads, %d MLP columns, %d vocab rows)\n",
				T, o.cp, m->path, m->weight_bytes / 1e6, m->shard.n_heads, m->cfg.n_heads, m->shard.n_kv_heads,
				m->shard.n_f, m->shard.n_vocab);
			for (int k = 0; k < gs_comm_size(&world); k++)
				fprintf(stderr, "[gemmashard r0] rank %d resident memory %.1f MiB\n", k, all[k] / 1024.0);
		}
		free(all);
	}

	if (o.batch) {
		rc = run_batch(&world, &gr, m, &rb, &o);
		goto out_free;
	}
	if (o.coordinator) {
		rc = run_engine(&world, &gr, m, &rb, &o, tls);
		goto out_free;
	}

	st = GS_OK;
	if (o.tokens)
		st = gs_parse_id_list(o.tokens, &ids, &n);
	if (st == GS_OK && o.images) { /* each <start_of_image> expanded, then one image each */
		int32_t *x = NULL, nx = 0, markers = 0;
		st = o.tokens ? gs_cli_expand_images(&m->cfg.vision, ids, n, &x, &nx, &markers)
			      : gs_errorf(GS_ERR_INVALID_ARG, "--image needs --tokens");
		if (st == GS_OK) {
			free(ids);
			ids = x, n = nx;
			st = gs_cli_load_images(o.images, m->cfg.vision.image_size, &px, &n_img);
		}
		if (st == GS_OK && n_img != markers)
			st = gs_errorf(GS_ERR_INVALID_ARG, "--tokens has %d <start_of_image> (%d) markers but --image gives %d "
				       "images", markers, m->cfg.vision.boi_id, n_img);
	}
	if (st == GS_OK && o.tokens && (int64_t)n + o.generate > m->cfg.max_position)
		st = gs_errorf(GS_ERR_RANGE, "%d prompt + %d generated tokens exceed max_position_embeddings (%d)", n,
			       o.generate, m->cfg.max_position);
	if (st == GS_OK) {
		int32_t ctx = o.bench ? o.prompt_tokens + o.decode_steps + 1 : n + o.generate + 1;
		int32_t chunk = o.bench ? (o.prompt_tokens < 512 ? o.prompt_tokens : 512) : (n < 256 ? n : 256);
		if (n_img && chunk < m->cfg.vision.mm_tokens_per_image)
			chunk = m->cfg.vision.mm_tokens_per_image; /* an image is fed in one piece */
		if (ctx > m->cfg.max_position)
			ctx = m->cfg.max_position;
		st = gs_forward_create(m, rb.be, chunk, &f);
		if (st == GS_OK && gr.cp)
			st = gs_forward_set_cp(f, rb.have_grid ? &rb.nccl_cp : gr.cp);
		if (st == GS_OK)
			st = gs_seq_create(f, ctx, &s);
	}
	if (st == GS_OK) {
		size_t rows = o.dump ? (size_t)n : 1, stride = (size_t)m->shard.vocab_stride;
		logits = malloc(rows * (size_t)m->shard.n_vocab * sizeof(float));
		pad_s = malloc(rows * stride * sizeof(float));
		pad_r = malloc((size_t)T * rows * stride * sizeof(float));
		full = malloc(rows * (size_t)m->n_vocab * sizeof(float));
		if (!logits || !pad_s || !pad_r || !full)
			st = gs_errorf(GS_ERR_NOMEM, "cannot allocate logits for %zu x %d", rows, m->n_vocab);
	}
	if (st == GS_OK && o.generate > 0) {
		ds.K = o.sp.top_k > 0 ? (size_t)o.sp.top_k : 256;
		if (ds.K > (size_t)m->shard.vocab_stride)
			ds.K = (size_t)m->shard.vocab_stride;
		ds.ids = malloc(ds.K * sizeof(int32_t));
		ds.lg = malloc(ds.K * sizeof(float));
		ds.all_ids = malloc((size_t)T * ds.K * sizeof(int32_t));
		ds.all_lg = malloc((size_t)T * ds.K * sizeof(float));
		ids = realloc(ids, ((size_t)n + o.generate) * sizeof(*ids));
		if (!ds.ids || !ds.lg || !ds.all_ids || !ds.all_lg || !ids)
			st = gs_errorf(GS_ERR_NOMEM, "out of memory");
		else
			st = gs_sampler_create(&o.sp, m->n_vocab, &ds.smp);
	}
	if (!all_ok(&world, st, "setting up"))
		goto out_free;
	if (T > 1)
		gs_forward_set_comm(f, rb.have_grid ? &rb.nccl_tp : rb.have_nccl ? &rb.nccl : gr.tp);
	if (n_img) { /* every rank encodes every image (collective over the forward's group) */
		size_t rows = (size_t)n_img * (size_t)m->cfg.vision.mm_tokens_per_image;
		st = gs_vision_create(m, rb.be, f->comm, &vis);
		if (st == GS_OK && !(img_rows = rb.be.iface->alloc(rb.be.ctx, rows * (size_t)m->cfg.hidden * sizeof(float))))
			st = gs_errorf(GS_ERR_NOMEM, "cannot allocate the projector rows of %d images", n_img);
		if (st == GS_OK)
			st = gs_vision_encode(vis, px, n_img, img_rows);
		if (st == GS_OK)
			gs_seq_set_images(s, img_rows, (int32_t)rows);
		if (!all_ok(&world, st, "encoding the images"))
			goto out_free;
	}

	if (o.bench) {
		rc = run_bench(&world, gr.tp, f, s, m, &o, logits);
		goto out_free;
	}

	/* Prompt: the whole thing at once, or in --chunk pieces through the KV cache. */
	{
		int32_t chunk = o.chunk > 0 ? o.chunk : n;
		for (int32_t done = 0, c; done < n; done += c) {
			c = gs_seq_next_chunk(m, ids, n, done, chunk); /* never inside an image */
			float *out = o.dump ? logits + (size_t)done * m->shard.n_vocab : logits;
			st = gs_forward_run(f, s, ids + done, c, out, o.dump != NULL);
			if (st != GS_OK)
				break;
		}
	}
	if (!all_ok(&world, st, "prefill"))
		goto out_free;
	gs_seq_set_images(s, NULL, 0); /* generated tokens are never image rows */
	if (o.dump) {
		st = gather_logits(gr.tp, m, logits, n, full, pad_s, pad_r);
		if (st == GS_OK && rank == 0) {
			FILE *fo = fopen(o.dump, "wb");
			if (!fo || fwrite(full, sizeof(float), (size_t)n * m->n_vocab, fo) != (size_t)n * m->n_vocab)
				st = gs_errorf(GS_ERR_IO, "%s: cannot write logits", o.dump);
			if (fo && fclose(fo) != 0 && st == GS_OK)
				st = gs_errorf(GS_ERR_IO, "%s: cannot write logits", o.dump);
			if (st == GS_OK)
				fprintf(stderr, "[gemmashard r0] wrote %d x %d float32 logits to %s\n", n, m->n_vocab, o.dump);
		}
		if (!all_ok(&world, st, "writing logits"))
			goto out_free;
		/* The last row of the dump is what generation continues from. */
		if (o.generate > 0)
			memmove(logits, logits + (size_t)(n - 1) * m->shard.n_vocab, m->shard.n_vocab * sizeof(float));
	}

	/* Generation: distributed sampling, every rank runs the chosen token. */
	for (int g = 0; g < o.generate; g++) {
		int32_t tok = sample_next(gr.tp, &ds, m, logits, ids, (size_t)n + g); /* every group alike */
		if (tok < 0) {
			st = gs_errorf(GS_ERR_INTERNAL, "sampling failed: %s", gs_last_error());
			break;
		}
		ids[n + g] = tok;
		if (rank == 0) {
			printf(g ? " %d" : "%d", tok);
			fflush(stdout);
		}
		if (g + 1 < o.generate && (st = gs_forward_run(f, s, &tok, 1, logits, false)) != GS_OK)
			break;
	}
	if (rank == 0 && o.generate > 0)
		printf("\n");
	rc = all_ok(&world, st, "generating") ? 0 : 1;

out_free:
	free(ds.ids), free(ds.lg), free(ds.all_ids), free(ds.all_lg);
	gs_sampler_free(ds.smp);
	free(logits), free(full), free(pad_s), free(pad_r), free(ids), free(px);
	gs_seq_free(s);
	gs_forward_free(f);
	if (img_rows && rb.be.iface->release)
		rb.be.iface->release(rb.be.ctx, img_rows);
	if (vis)
		gs_vision_free(vis);
	gs_model_free(m);
	rank_backend_close(&rb);
	gs_cluster_tls_free(tls);
out_finalize:
	if (gr.cp) {
		gs_comm_free(&gr.tp_own);
		gs_comm_free(&gr.cp_own);
	}
	gs_comm_free(&world);
	gs_comm_mpi_finalize();
	return rc;
}
