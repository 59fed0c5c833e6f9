/* gemmashard coordinator core (gs_coord.h; ARCHITECTURE.md §1, §6, §7): create and free (the model
 * table with each model's config and tokenizer, engine listener, threads) and the small calls of
 * the front ends (model lookup, token text, tokenize, model info, health, limits). The rest of
 * the coordinator: request.c (a request's life cycle and output), router.c (routing, admission, submit), engine_link.c (engine links and their
 * threads), metrics.c, clients.c (API keys, access log); the shared state and the lock order:
 * coord_internal.h. */
#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "coord_internal.h"
#include "gs_config.h"
#include "gs_util.h"

/* ---- the model table --------------------------------------------------------------------- */

int gs_coord_n_models(const struct gs_coord *c)
{
	return c->n_models;
}

const struct gs_coord_model *gs_coord_model_at(const struct gs_coord *c, int i)
{
	return i >= 0 && i < c->n_models ? &c->models[i] : NULL;
}

/* "a, b, c" (cut short with "..." when long). */
static void model_names(const struct gs_coord *c, char *buf, size_t cap)
{
	size_t n = 0;

	buf[0] = '\0';
	for (int i = 0; i < c->n_models && n < cap; i++) {
		int k = snprintf(buf + n, cap - n, "%s%s", i ? ", " : "", c->models[i].name);
		if (k < 0 || (size_t)k >= cap - n) {
			if (cap > 4)
				snprintf(buf + cap - 4, 4, "...");
			return;
		}
		n += (size_t)k;
	}
}

enum gs_cerr gs_coord_model_find(struct gs_coord *c, const char *name, const struct gs_coord_model **out, char *why,
				 size_t cap)
{
	char names[512];

	*out = NULL;
	if (!name || !name[0]) {
		if (c->n_models == 1) {
			*out = &c->models[0];
			return GS_CERR_NONE;
		}
		model_names(c, names, sizeof(names));
		snprintf(why, cap, "model is required when %d models are served (%s)", c->n_models, names);
		return GS_CERR_INVALID;
	}
	for (int i = 0; i < c->n_models; i++)
		if (strcmp(name, c->models[i].name) == 0) {
			*out = &c->models[i];
			return GS_CERR_NONE;
		}
	model_names(c, names, sizeof(names));
	/* the name is the client's text: quoted, cut short */
	snprintf(why, cap, "The model `%.200s` does not exist (served: %s)", name, names);
	return GS_CERR_NOT_FOUND;
}

enum gs_cerr gs_coord_model_images_ok(const struct gs_coord_model *m, int n_images, char *why, size_t cap)
{
	if (n_images > 0 && !m->vision.present) {
		snprintf(why, cap, "model `%s` does not take images (it has no vision tower); send text only, or name "
			 "a model that takes images", m->name);
		return GS_CERR_INVALID;
	}
	return GS_CERR_NONE;
}

const struct gs_coord_model *gs_creq_model(const struct gs_creq *r)
{
	return r->model;
}

/* ---- misc API ---------------------------------------------------------------------------- */

char *gs_coord_model_token_text(const struct gs_coord_model *m, int32_t id)
{
	int b = gs_tokenizer_byte_value(m->tok, id);
	char *s = NULL;
	size_t n;

	if (b >= 0 && b >= 0x80) {
		if (asprintf(&s, "<0x%02X>", b) < 0)
			return NULL;
		return s;
	}
	if (gs_tokenizer_decode(m->tok, &id, 1, &s, &n) != GS_OK) {
		gs_clear_error();
		return strdup("");
	}
	return s;
}

enum gs_cerr gs_coord_tokenize(struct gs_coord *c, const char *model, const char *text, bool add_bos,
			       int32_t **ids, size_t *n, char *why, size_t cap)
{
	const struct gs_coord_model *m;
	enum gs_cerr e;

	*ids = NULL;
	*n = 0;
	if ((e = gs_coord_model_find(c, model, &m, why, cap)) != GS_CERR_NONE)
		return e;
	if (gs_tokenizer_encode(m->tok, text ? text : "", text ? strlen(text) : 0, add_bos, ids, n) != GS_OK) {
		snprintf(why, cap, "%s", gs_last_error());
		gs_clear_error();
		return GS_CERR_INVALID;
	}
	return GS_CERR_NONE;
}

enum gs_cerr gs_coord_model_info(struct gs_coord *c, const char *model, struct gs_model_info *info)
{
	const struct gs_coord_model *m;
	char why[8];

	if (gs_coord_model_find(c, model, &m, why, sizeof(why)) != GS_CERR_NONE)
		return !model || !model[0] ? GS_CERR_INVALID : GS_CERR_NOT_FOUND;
	memset(info, 0, sizeof(*info));
	info->name = m->name;
	info->architecture = m->architecture;
	info->vocab_size = m->vocab_size;
	info->created = c->created;
	info->vision = m->vision.present;
	info->image_size = m->vision.present ? m->vision.image_size : 0;
	info->mm_tokens_per_image = m->vision.present ? m->vision.mm_tokens_per_image : 0;
	pthread_mutex_lock(&c->mu);
	for (struct engine *e = c->engines; e; e = e->next) {
		if (!e->up || e->model != m)
			continue;
		info->engines++;
		if (e->max_context > info->max_context)
			info->max_context = e->max_context;
		if (!info->tensor_parallel)
			info->tensor_parallel = e->tp;
		/* static names, so the list outlives the lock */
		static const char *const modes[] = { "fp32", "bf16", "cuda" };
		for (int k = 0; k < 3; k++) {
			bool seen = false;
			for (int j = 0; j < info->n_numerics; j++)
				seen |= info->numerics[j] == modes[k];
			if (!seen && !strcmp(e->numerics, modes[k]))
				info->numerics[info->n_numerics++] = modes[k];
		}
	}
	pthread_mutex_unlock(&c->mu);
	info->max_model_len = info->max_context > 0 ? info->max_context : m->max_position;
	return GS_CERR_NONE;
}

int gs_coord_healthy_engines(struct gs_coord *c)
{
	int n = 0;
	pthread_mutex_lock(&c->mu);
	for (struct engine *e = c->engines; e; e = e->next)
		n += e->up;
	pthread_mutex_unlock(&c->mu);
	return n;
}

const char *gs_coord_engine_link_mode(const struct gs_coord *c)
{
	return c->tls ? "mtls" : c->link_insecure ? "plaintext-insecure" : "plaintext";
}

const struct gs_coord_limits *gs_coord_get_limits(const struct gs_coord *c)
{
	return &c->limits;
}

/* ---- life cycle -------------------------------------------------------------------------- */

static enum gs_status listen_on(const char *addr, int *out)
{
	char host[256];
	const char *colon = strrchr(addr, ':');
	if (!colon || colon == addr || (size_t)(colon - addr) >= sizeof(host) || !colon[1])
		return gs_errorf(GS_ERR_INVALID_ARG, "engine listen address \"%s\" is not HOST:PORT", addr);
	memcpy(host, addr, (size_t)(colon - addr));
	host[colon - addr] = '\0';
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE }, *ai;
	int rc = getaddrinfo(host, colon + 1, &hints, &ai);
	if (rc != 0)
		return gs_errorf(GS_ERR_INVALID_ARG, "engine listen address \"%s\": %s", addr, gai_strerror(rc));
	int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
	if (fd < 0) {
		freeaddrinfo(ai);
		return gs_errorf(GS_ERR_IO, "socket: %s", strerror(errno));
	}
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 64) != 0) {
		int e = errno;
		freeaddrinfo(ai);
		close(fd);
		return gs_errorf(GS_ERR_IO, "cannot listen for engines on %s: %s", addr, strerror(e));
	}
	freeaddrinfo(ai);
	*out = fd;
	return GS_OK;
}

/* The engine link's security (ARCHITECTURE.md §7 "Security"): mutual TLS with the cluster
 * certificates, or plaintext, which is only allowed on loopback unless --insecure-engine-link. */
static enum gs_status engine_link_security(struct gs_coord *c, const struct gs_coord_config *cfg)
{
	const char *addr = cfg->engine_listen, *colon = strrchr(addr, ':');
	int n = (cfg->cluster_ca && *cfg->cluster_ca) + (cfg->cluster_cert && *cfg->cluster_cert) +
		(cfg->cluster_key && *cfg->cluster_key);
	bool loopback = false;
	char host[256];

	if (n != 0 && n != 3)
		return gs_errorf(GS_ERR_INVALID_ARG, "--cluster-ca, --cluster-cert and --cluster-key go together (mutual "
				 "TLS on the engine link); %d of the 3 given", n);
	if (n == 3 && cfg->insecure_engine_link)
		return gs_errorf(GS_ERR_INVALID_ARG, "--insecure-engine-link contradicts --cluster-ca/--cluster-cert/"
				 "--cluster-key: give one or the other");
	if (!colon || (size_t)(colon - addr) >= sizeof(host))
		return gs_errorf(GS_ERR_INVALID_ARG, "engine listen address \"%s\" is not HOST:PORT", addr);
	memcpy(host, addr, (size_t)(colon - addr));
	host[colon - addr] = '\0';
	if (n == 3) {
		struct gs_cluster_files f = { .ca = cfg->cluster_ca, .cert = cfg->cluster_cert, .key = cfg->cluster_key };
		GS_TRY(gs_cluster_tls_create(&f, GS_ROLE_COORDINATOR, &c->tls));
		gs_log(GS_LOG_INFO, "coordinator: engine link on %s: mutual TLS 1.3 as '%s'; engines must present a "
		       "certificate of the engine role from the cluster CA %s", addr, gs_cluster_tls_subject(c->tls),
		       cfg->cluster_ca);
		return GS_OK;
	}
	GS_TRY(gs_net_host_is_loopback(host, &loopback));
	if (!loopback && !cfg->insecure_engine_link)
		return gs_errorf(GS_ERR_INVALID_ARG,
				 "--engine-listen %s is not a loopback address, and the engine link carries prompts and "
				 "completions: give --cluster-ca, --cluster-cert and --cluster-key for mutual TLS "
				 "(deploy/make-cluster-certs.sh makes them), or --insecure-engine-link to send them in "
				 "plaintext on a network you trust", addr);
	if (!loopback) {
		c->link_insecure = true;
		gs_log(GS_LOG_WARN, "coordinator: WARNING: INSECURE ENGINE LINK (--insecure-engine-link): %s is not "
		       "loopback, and engines connect in plaintext without authentication: anyone who can reach it can "
		       "register as an engine and receive prompts, and the network can read them. Use --cluster-ca, "
		       "--cluster-cert and --cluster-key.", addr);
	} else {
		gs_log(GS_LOG_WARN, "coordinator: the engine link on %s is plaintext and unauthenticated (loopback only: "
		       "any local process can register as an engine); --cluster-ca, --cluster-cert and --cluster-key "
		       "make it mutual TLS", addr);
	}
	return GS_OK;
}

static const char *base_name(const char *dir, char *buf, size_t cap)
{
	size_t n = strlen(dir);
	while (n > 1 && dir[n - 1] == '/')
		n--;
	size_t s = n;
	while (s > 0 && dir[s - 1] != '/')
		s--;
	snprintf(buf, cap, "%.*s", (int)(n - s), dir + s);
	return buf;
}

static void free_models(struct gs_coord *c)
{
	for (int i = 0; i < c->n_models; i++) {
		struct gs_coord_model *m = &c->models[i];
		bool shared = false;
		for (int j = 0; j < i; j++)
			shared |= c->models[j].tok == m->tok;
		if (!shared)
			gs_tokenizer_free(m->tok);
		free((char *)m->name);
		free((char *)m->dir);
		free((char *)m->architecture);
	}
	free(c->models);
	free(c->mstats);
	c->models = NULL;
	c->mstats = NULL;
	c->n_models = 0;
}

/* Loads the model table: each model's config.json and tokenizer.json (a tokenizer file whose
 * bytes equal an earlier model's is loaded once and shared). Names must differ. */
static enum gs_status load_models(struct gs_coord *c, const struct gs_coord_config *cfg)
{
	struct gs_coord_model_dir one = { cfg->model_dir, cfg->served_name };
	const struct gs_coord_model_dir *dirs = cfg->n_models > 0 ? cfg->models : &one;
	int n = cfg->n_models > 0 ? cfg->n_models : 1;

	if (n > GS_COORD_MAX_MODELS)
		return gs_errorf(GS_ERR_INVALID_ARG, "coordinator: at most %d models, got %d", GS_COORD_MAX_MODELS, n);
	char **tok_text = calloc((size_t)n, sizeof(*tok_text));
	size_t *tok_len = calloc((size_t)n, sizeof(*tok_len));
	enum gs_status st = GS_OK;

	c->models = calloc((size_t)n, sizeof(*c->models));
	c->mstats = calloc((size_t)n, sizeof(*c->mstats));
	if (!c->models || !c->mstats || !tok_text || !tok_len) {
		st = gs_errorf(GS_ERR_NOMEM, "coordinator: out of memory");
		goto out;
	}
	/* names first, so that a bad command line fails before anything is loaded */
	for (int i = 0; i < n; i++) {
		struct gs_coord_model *m = &c->models[i];
		char name[256];

		if (!dirs[i].dir || !dirs[i].dir[0]) {
			st = gs_errorf(GS_ERR_INVALID_ARG, "coordinator: model %d has no folder (--model DIR)", i + 1);
			goto out;
		}
		c->n_models = i + 1;
		m->index = i;
		m->name = strdup(dirs[i].served_name && dirs[i].served_name[0]
					 ? dirs[i].served_name
					 : base_name(dirs[i].dir, name, sizeof(name)));
		m->dir = strdup(dirs[i].dir);
		if (!m->name || !m->dir) {
			st = gs_errorf(GS_ERR_NOMEM, "coordinator: out of memory");
			goto out;
		}
		for (const unsigned char *p = (const unsigned char *)m->name; *p; p++)
			if (*p <= ' ' || *p == '"' || *p == '\\' || *p == 0x7f) {
				st = gs_errorf(GS_ERR_INVALID_ARG, "coordinator: the model name \"%s\" (%s) has a space, "
					       "quote, backslash or control character; give --served-name NAME", m->name,
					       m->dir);
				goto out;
			}
		for (int j = 0; j < i; j++)
			if (strcmp(c->models[j].name, m->name) == 0) {
				st = gs_errorf(GS_ERR_INVALID_ARG, "coordinator: two models are served as \"%s\" (%s and "
					       "%s): give each a different --served-name", m->name, c->models[j].dir, m->dir);
				goto out;
			}
	}
	for (int i = 0; i < n && st == GS_OK; i++) {
		struct gs_coord_model *m = &c->models[i];
		struct gs_config mc;
		char path[4096];

		snprintf(path, sizeof(path), "%s/config.json", m->dir);
		if ((st = gs_config_load(path, &mc)) != GS_OK)
			break;
		m->architecture = strdup(mc.architecture);
		m->vocab_size = mc.vocab_size;
		m->max_position = mc.max_position;
		m->vision = mc.vision;
		gs_config_free(&mc);
		if (!m->architecture) {
			st = gs_errorf(GS_ERR_NOMEM, "coordinator: out of memory");
			break;
		}
		snprintf(path, sizeof(path), "%s/tokenizer.json", m->dir);
		if ((st = gs_read_file(path, &tok_text[i], &tok_len[i])) != GS_OK)
			break;
		for (int j = 0; j < i && !m->tok; j++)
			if (tok_len[j] == tok_len[i] && memcmp(tok_text[j], tok_text[i], tok_len[i]) == 0)
				m->tok = c->models[j].tok;
		if (!m->tok && (st = gs_tokenizer_load(path, &m->tok)) != GS_OK)
			break;
		m->end_of_turn = gs_tokenizer_find(m->tok, "<end_of_turn>");
		m->detok_cap = gs_detok_max_out(m->tok);
	}
out:
	for (int i = 0; tok_text && i < n; i++)
		free(tok_text[i]);
	free(tok_text);
	free(tok_len);
	return st;
}

enum gs_status gs_coord_create(const struct gs_coord_config *cfg, struct gs_coord **out)
{
	struct gs_coord *c = calloc(1, sizeof(*c));
	enum gs_status st;

	*out = NULL;
	if (!c)
		return gs_errorf(GS_ERR_NOMEM, "coordinator: out of memory");
	c->listen_fd = -1;
	c->limits = cfg->limits;
	c->created = (double)time(NULL);
	pthread_mutex_init(&c->mu, NULL);
	atomic_init(&c->handshaking, 0);
	if ((st = coord_clients_init(c, cfg)) != GS_OK)
		goto fail;

	if ((st = engine_link_security(c, cfg)) != GS_OK)
		goto fail;
	if ((st = load_models(c, cfg)) != GS_OK)
		goto fail;
	if ((st = listen_on(cfg->engine_listen, &c->listen_fd)) != GS_OK)
		goto fail;
	if (pthread_create(&c->listener, NULL, coord_listener_main, c) != 0) {
		st = gs_errorf(GS_ERR_INTERNAL, "coordinator: cannot start the listener thread");
		goto fail;
	}
	if (pthread_create(&c->monitor, NULL, coord_monitor_main, c) != 0) {
		atomic_store(&c->stopping, true);
		pthread_join(c->listener, NULL);
		st = gs_errorf(GS_ERR_INTERNAL, "coordinator: cannot start the monitor thread");
		goto fail;
	}
	*out = c;
	return GS_OK;
fail:
	if (c->listen_fd >= 0)
		close(c->listen_fd);
	free_models(c);
	gs_cluster_tls_free(c->tls);
	coord_clients_free(c);
	pthread_mutex_destroy(&c->mu);
	free(c);
	return st;
}

void gs_coord_free(struct gs_coord *c)
{
	if (!c)
		return;
	atomic_store(&c->stopping, true);
	pthread_join(c->listener, NULL);
	pthread_join(c->monitor, NULL);
	close(c->listen_fd);
	/* Readers see `stopping` within 200 ms; each fails what is left on its engine. */
	coord_reap_engines(c, true);
	gs_cluster_tls_free(c->tls);
	free_models(c);
	coord_clients_free(c);
	free(c->key_counts);
	pthread_mutex_destroy(&c->mu);
	free(c);
}
