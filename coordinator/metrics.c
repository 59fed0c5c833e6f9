/* gemmashard coordinator: metrics (gs_coord.h): client requests counted by API and status (and
 * by API key name), the time-to-first-token and time-per-output-token histograms, and the Prometheus text of
 * /metrics (these plus the engines' last heartbeats). Everything here is under c->mu. */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coord_internal.h"
#include "gs_sbuf.h"

#define GS_N_TTFT_BUCKETS 14
#define GS_N_TPOT_BUCKETS 14
static const double ttft_buckets[GS_N_TTFT_BUCKETS] = { 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
							 0.25,  0.5,    1,     2.5,  5,     10,  30 };
static const double tpot_buckets[GS_N_TPOT_BUCKETS] = { 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
							 0.075,  0.1,   0.25,   0.5,   1,    2.5,   5 };

/* ---- counts and histograms --------------------------------------------------------------- */

/* With c->mu held: the request under its key name (series beyond GS_MAX_KEY_COUNTS are not
 * counted; key names and statuses are few, so that takes thousands of keys). */
static void count_key_locked(struct gs_coord *c, const struct gs_access *a)
{
	int i;

	for (i = 0; i < c->n_key_counts; i++)
		if (c->key_counts[i].api == a->api && strcmp(c->key_counts[i].key, a->key) == 0 &&
		    strcmp(c->key_counts[i].status, a->status) == 0)
			break;
	if (i == c->n_key_counts) {
		if (i == GS_MAX_KEY_COUNTS)
			return;
		if (i == c->cap_key_counts) {
			int cap = c->cap_key_counts ? 2 * c->cap_key_counts : 16;
			struct key_count *p = realloc(c->key_counts, (size_t)cap * sizeof(*p));

			if (!p)
				return;
			c->key_counts = p;
			c->cap_key_counts = cap;
		}
		c->key_counts[i].api = a->api;
		snprintf(c->key_counts[i].key, sizeof(c->key_counts[i].key), "%s", a->key);
		snprintf(c->key_counts[i].status, sizeof(c->key_counts[i].status), "%s", a->status);
		c->key_counts[i].n = 0;
		c->n_key_counts++;
	}
	c->key_counts[i].n++;
}

void coord_count_request(struct gs_coord *c, const struct gs_access *a)
{
	const char *status = a->status ? a->status : "";

	pthread_mutex_lock(&c->mu);
	int i;
	for (i = 0; i < c->n_counts; i++)
		if (c->counts[i].api == a->api && strcmp(c->counts[i].status, status) == 0)
			break;
	if (i == c->n_counts && c->n_counts < (int)(sizeof(c->counts) / sizeof(c->counts[0]))) {
		c->counts[i].api = a->api;
		snprintf(c->counts[i].status, sizeof(c->counts[i].status), "%s", status);
		c->n_counts++;
	}
	if (i < c->n_counts)
		c->counts[i].n++;
	if (a->key && a->key[0] && a->status)
		count_key_locked(c, a);
	pthread_mutex_unlock(&c->mu);
}

static void hist_add(struct hist *h, const double *bounds, int nb, double v, uint64_t n)
{
	for (int i = 0; i < nb; i++)
		if (v <= bounds[i])
			h->b[i] += n;
	h->count += n;
	h->sum += v * (double)n;
}

void gs_coord_observe_tpot(struct gs_coord *c, double seconds_per_token, int32_t n_tokens)
{
	if (n_tokens <= 0)
		return;
	pthread_mutex_lock(&c->mu);
	hist_add(&c->tpot, tpot_buckets, GS_N_TPOT_BUCKETS, seconds_per_token, (uint64_t)n_tokens);
	pthread_mutex_unlock(&c->mu);
}

void gs_coord_observe_ttft(struct gs_coord *c, double seconds)
{
	pthread_mutex_lock(&c->mu);
	hist_add(&c->ttft, ttft_buckets, GS_N_TTFT_BUCKETS, seconds, 1);
	pthread_mutex_unlock(&c->mu);
}

/* ---- metrics ----------------------------------------------------------------------------- */

static void sb_hist(struct gs_sbuf *b, const char *name, const char *help, const struct hist *h, const double *bounds,
		    int nb)
{
	gs_sbuf_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
	for (int i = 0; i < nb; i++)
		gs_sbuf_printf(b, "%s_bucket{le=\"%g\"} %" PRIu64 "\n", name, bounds[i], h->b[i]);
	gs_sbuf_printf(b, "%s_bucket{le=\"+Inf\"} %" PRIu64 "\n%s_sum %.9g\n%s_count %" PRIu64 "\n", name, h->count, name,
		  h->sum, name, h->count);
}

char *gs_coord_metrics(struct gs_coord *c)
{
	static const char *const api_name[GS_API_COUNT] = { "grpc", "http" };
	struct gs_sbuf b = { 0 };

	pthread_mutex_lock(&c->mu);
	gs_sbuf_printf(&b, "# HELP gemmashard_requests_total Client requests finished, by API and status.\n"
		      "# TYPE gemmashard_requests_total counter\n");
	for (int i = 0; i < c->n_counts; i++)
		gs_sbuf_printf(&b, "gemmashard_requests_total{api=\"%s\",status=\"%s\"} %" PRIu64 "\n",
			  api_name[c->counts[i].api], c->counts[i].status, c->counts[i].n);
	gs_sbuf_printf(&b, "# HELP gemmashard_key_requests_total Client requests finished, by API key name (never the "
		       "key), API and status.\n# TYPE gemmashard_key_requests_total counter\n");
	for (int i = 0; i < c->n_key_counts; i++)
		gs_sbuf_printf(&b, "gemmashard_key_requests_total{api=\"%s\",key=\"%s\",status=\"%s\"} %" PRIu64 "\n",
			       api_name[c->key_counts[i].api], c->key_counts[i].key, c->key_counts[i].status,
			       c->key_counts[i].n);
	sb_hist(&b, "gemmashard_time_to_first_token_seconds", "Time from request to its first token.", &c->ttft,
		ttft_buckets, GS_N_TTFT_BUCKETS);
	sb_hist(&b, "gemmashard_time_per_output_token_seconds", "Time between streamed tokens.", &c->tpot, tpot_buckets,
		GS_N_TPOT_BUCKETS);
	/* per model (ARCHITECTURE.md §6 "Several models"): each series once per served model */
	static const struct {
		const char *name, *type, *help;
	} per_model[] = {
		{ "gemmashard_queue_depth", "gauge", "Requests waiting for admission in the engines." },
		{ "gemmashard_requests_running", "gauge", "Requests running in the engines." },
		{ "gemmashard_engines_healthy", "gauge", "Engines registered and healthy." },
		{ "gemmashard_model_kv_blocks_used", "gauge", "KV blocks (global layers, per rank) in use, summed over the "
		  "model's engines and their context-parallel groups." },
		{ "gemmashard_model_kv_blocks_free", "gauge", "KV blocks (global layers, per rank) free, summed over the "
		  "model's engines and their context-parallel groups." },
		{ "gemmashard_model_requests_total", "counter",
		  "Client requests accepted for the model (n choices count n)." },
		{ "gemmashard_model_generated_tokens_total", "counter", "Tokens generated for the model's clients." },
		{ "gemmashard_model_info", "gauge", "1 per served model, labelled with whether it takes images." },
	};
	for (size_t k = 0; k < sizeof(per_model) / sizeof(per_model[0]); k++) {
		gs_sbuf_printf(&b, "# HELP %s %s\n# TYPE %s %s\n", per_model[k].name, per_model[k].help, per_model[k].name,
			       per_model[k].type);
		for (int i = 0; i < c->n_models; i++) {
			const struct gs_coord_model *m = &c->models[i];
			int64_t waiting = 0, running = 0, up = 0, used = 0, free_b = 0;
			for (struct engine *e = c->engines; e; e = e->next) {
				if (!e->up || e->model != m)
					continue;
				up++;
				waiting += e->hb_waiting;
				running += e->hb_running;
				used += e->kv_blocks_total - e->hb_kv_free;
				free_b += e->hb_kv_free;
			}
			if (k == 7) {
				gs_sbuf_printf(&b, "%s{model=\"%s\",vision=\"%s\"} 1\n", per_model[k].name, m->name,
					       m->vision.present ? "true" : "false");
				continue;
			}
			gs_sbuf_printf(&b, "%s{model=\"%s\"} ", per_model[k].name, m->name);
			switch (k) {
			case 0: gs_sbuf_printf(&b, "%" PRId64 "\n", waiting); break;
			case 1: gs_sbuf_printf(&b, "%" PRId64 "\n", running); break;
			case 2: gs_sbuf_printf(&b, "%" PRId64 "\n", up); break;
			case 3: gs_sbuf_printf(&b, "%" PRId64 "\n", used); break;
			case 4: gs_sbuf_printf(&b, "%" PRId64 "\n", free_b); break;
			case 5: gs_sbuf_printf(&b, "%" PRIu64 "\n", c->mstats[i].requests); break;
			default: gs_sbuf_printf(&b, "%" PRIu64 "\n", c->mstats[i].generated_tokens); break;
			}
		}
	}
	gs_sbuf_printf(&b, "# HELP gemmashard_requests_in_flight Client requests accepted and not yet finished.\n"
		      "# TYPE gemmashard_requests_in_flight gauge\ngemmashard_requests_in_flight %d\n", c->running);
	gs_sbuf_printf(&b, "# HELP gemmashard_engines_lost_total Engines marked down (link lost or heartbeats stopped).\n"
		      "# TYPE gemmashard_engines_lost_total counter\ngemmashard_engines_lost_total %" PRIu64 "\n",
		  c->engines_lost);
	gs_sbuf_printf(&b, "# HELP gemmashard_engine_auth_failures_total Engine connections refused before their hello, "
		      "by reason.\n# TYPE gemmashard_engine_auth_failures_total counter\n");
	for (int k = GS_AUTH_OK + 1; k < GS_AUTH_COUNT; k++)
		gs_sbuf_printf(&b, "gemmashard_engine_auth_failures_total{reason=\"%s\"} %" PRIu64 "\n",
			       gs_auth_fail_label((enum gs_auth_fail)k), c->auth_failures[k]);
	gs_sbuf_printf(&b, "# HELP gemmashard_engine_link_secure 1 when engines must authenticate with mutual TLS; 0 "
		      "for a plaintext link (mode says which).\n# TYPE gemmashard_engine_link_secure gauge\n"
		      "gemmashard_engine_link_secure{mode=\"%s\"} %d\n", gs_coord_engine_link_mode(c), c->tls != NULL);
	gs_sbuf_printf(&b, "# HELP gemmashard_engines_refused_total Engines refused at their hello (a model this "
		       "coordinator does not serve, a vision shape or vocabulary that does not match its config).\n"
		       "# TYPE gemmashard_engines_refused_total counter\ngemmashard_engines_refused_total %" PRIu64 "\n",
		       c->hello_refused);
	gs_sbuf_printf(&b, "# HELP gemmashard_requests_moved_total Requests resubmitted to another engine.\n"
		      "# TYPE gemmashard_requests_moved_total counter\ngemmashard_requests_moved_total %" PRIu64 "\n",
		  c->moved);
	gs_sbuf_printf(&b, "# HELP gemmashard_generated_tokens_total Tokens generated for clients.\n"
		      "# TYPE gemmashard_generated_tokens_total counter\ngemmashard_generated_tokens_total %" PRIu64 "\n",
		  c->generated_tokens);
	static const struct {
		const char *name, *type, *help;
	} per_engine[] = {
		{ "gemmashard_kv_blocks_used", "gauge", "KV blocks (global layers, per rank) in use, summed over the "
		  "engine's context-parallel groups." },
		{ "gemmashard_kv_blocks_free", "gauge", "KV blocks (global layers, per rank) free, summed over the "
		  "engine's context-parallel groups." },
		{ "gemmashard_engine_steps_total", "counter", "Engine steps." },
		{ "gemmashard_engine_step_seconds_total", "counter", "Engine time spent in steps." },
		{ "gemmashard_engine_tokens_total", "counter", "Tokens the engine sampled." },
		{ "gemmashard_engine_numerics", "gauge", "1, labelled with the engine's matmul numerics (fp32, bf16, cuda)." },
		{ "gemmashard_engine_info", "gauge", "1 per healthy engine, labelled with its model, matmul numerics, "
		  "tensor-parallel degree and whether it takes images." },
		{ "gemmashard_prefix_cache_hit_tokens_total", "counter",
		  "Prompt tokens whose KV came from the prefix cache (admitted requests)." },
		{ "gemmashard_prefix_cache_query_tokens_total", "counter",
		  "Prompt tokens of requests admitted with the prefix cache on (hit rate: hit / query)." },
		{ "gemmashard_prefix_cache_evictions_total", "counter",
		  "Cached KV blocks (global layers, per rank) evicted for new use." },
		{ "gemmashard_prefix_cache_enabled", "gauge", "1 when the engine runs with automatic prefix caching." },
		{ "gemmashard_engine_tp", "gauge", "Tensor-parallel degree T of the engine (ranks per context-parallel "
		  "group)." },
		{ "gemmashard_engine_cp", "gauge", "Context-parallel degree C of the engine (groups of T ranks; 1: none)." },
		{ "gemmashard_engine_kv_group_blocks_free", "gauge", "KV blocks (global layers, per rank) free in each "
		  "context-parallel group of the engine." },
		{ "gemmashard_engine_kv_group_blocks_used", "gauge", "KV blocks (global layers, per rank) held or reserved "
		  "in each context-parallel group of the engine." },
		{ "gemmashard_engine_sharded_sequences_running", "gauge", "Sequences running with their KV spread over "
		  "more than one context-parallel group." },
	};
	_Static_assert(sizeof(per_engine) / sizeof(per_engine[0]) == 16, "the switch below numbers the series");
	for (size_t k = 0; k < sizeof(per_engine) / sizeof(per_engine[0]); k++) {
		gs_sbuf_printf(&b, "# HELP %s %s\n# TYPE %s %s\n", per_engine[k].name, per_engine[k].help, per_engine[k].name,
			  per_engine[k].type);
		for (struct engine *e = c->engines; e; e = e->next) {
			if (!e->up)
				continue;
			if (k == 5) {
				gs_sbuf_printf(&b, "%s{engine=\"%s\",numerics=\"%s\"} 1\n", per_engine[k].name, e->id,
					       e->numerics);
				continue;
			}
			if (k == 6) {
				gs_sbuf_printf(&b, "%s{engine=\"%s\",model=\"%s\",numerics=\"%s\",tp=\"%d\","
					       "vision=\"%s\"} 1\n", per_engine[k].name, e->id, e->model->name,
					       e->numerics, e->tp, e->vision ? "true" : "false");
				continue;
			}
			if (k == 13 || k == 14) { /* one series per context-parallel group */
				for (int32_t g = 0; g < e->cp; g++)
					gs_sbuf_printf(&b, "%s{engine=\"%s\",group=\"%d\"} %d\n", per_engine[k].name, e->id, g,
						       k == 13 ? e->hb_group_free[g] : e->hb_group_used[g]);
				continue;
			}
			gs_sbuf_printf(&b, "%s{engine=\"%s\"} ", per_engine[k].name, e->id);
			switch (k) {
			case 0: gs_sbuf_printf(&b, "%d\n", e->kv_blocks_total - e->hb_kv_free); break;
			case 1: gs_sbuf_printf(&b, "%d\n", e->hb_kv_free); break;
			case 2: gs_sbuf_printf(&b, "%" PRIu64 "\n", e->hb_steps); break;
			case 3: gs_sbuf_printf(&b, "%.9g\n", e->hb_step_s); break;
			case 4: gs_sbuf_printf(&b, "%" PRIu64 "\n", e->hb_tokens); break;
			case 7: gs_sbuf_printf(&b, "%" PRIu64 "\n", e->hb_prefix_hit); break;
			case 8: gs_sbuf_printf(&b, "%" PRIu64 "\n", e->hb_prefix_query); break;
			case 9: gs_sbuf_printf(&b, "%" PRIu64 "\n", e->hb_prefix_evictions); break;
			case 10: gs_sbuf_printf(&b, "%d\n", e->prefix_cache ? 1 : 0); break;
			case 11: gs_sbuf_printf(&b, "%d\n", e->tp); break;
			case 12: gs_sbuf_printf(&b, "%d\n", e->cp); break;
			default: gs_sbuf_printf(&b, "%d\n", e->hb_sharded); break;
			}
		}
	}
	pthread_mutex_unlock(&c->mu);
	if (b.oom) {
		free(b.p);
		return NULL;
	}
	return b.p;
}
