/* gemmashard coordinator core (gs_coord.h; ARCHITECTURE.md §1, §6, §7): create and free (tokenizer,
 * engine listener, threads) and the small calls of the front ends (token text, tokenize, model
 * info, health, limits). The rest of the coordinator: request.c (a request's life cycle and
 * output), router.c (routing, admission, submit), engine_link.c (engine links and their
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

/* ---- misc API ---------------------------------------------------------------------------- */

char *gs_coord_token_text(struct gs_coord *c, int32_t id)
{
	int b = gs_tokenizer_byte_value(c->tok, id);
	char *s = NULL;
	size_t n;

	if (b >= 0 && b >= 0x80) {
		if (asprintf(&s, "<0x%02X>", b) < 0)
			return NULL;
		return s;
	}
	if (gs_tokenizer_decode(c->tok, &id, 1, &s, &n) != GS_OK) {
		gs_clear_error();
		return strdup("");
	}
	return s;
}

enum gs_cerr gs_coord_tokenize(struct gs_coord *c, const char *model, const char *text, bool add_bos,
			       int32_t **ids, size_t *n, char *why, size_t cap)
{
	*ids = NULL;
	*n = 0;
	if (!coord_model_matches(c, model)) {
		snprintf(why, cap, "The model `%s` does not exist; this server serves `%s`", model, c->served_name);
		return GS_CERR_NOT_FOUND;
	}
	if (gs_tokenizer_encode(c->tok, text ? text : "", text ? strlen(text) : 0, add_bos, ids, n) != GS_OK) {
		snprintf(why, cap, "%s", gs_last_error());
		gs_clear_error();
		return GS_CERR_INVALID;
	}
	return GS_CERR_NONE;
}

enum gs_cerr gs_coord_model_info(struct gs_coord *c, const char *model, struct gs_model_info *info)
{
	if (!coord_model_matches(c, model))
		return GS_CERR_NOT_FOUND;
	memset(info, 0, sizeof(*info));
	info->name = c->served_name;
	info->architecture = c->architecture;
	info->vocab_size = c->vocab;
	info->created = c->created;
	pthread_mutex_lock(&c->mu);
	for (struct engine *e = c->engines; e; e = e->next) {
		if (!e->up)
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

enum gs_status gs_coord_create(const struct gs_coord_config *cfg, struct gs_coord **out)
{
	struct gs_coord *c = calloc(1, sizeof(*c));
	struct gs_config mc;
	char path[4096], name[256];
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
	snprintf(path, sizeof(path), "%s/config.json", cfg->model_dir);
	if ((st = gs_config_load(path, &mc)) != GS_OK)
		goto fail;
	snprintf(c->architecture, sizeof(c->architecture), "%s", mc.architecture);
	c->vocab = mc.vocab_size;
	gs_config_free(&mc);
	snprintf(path, sizeof(path), "%s/tokenizer.json", cfg->model_dir);
	if ((st = gs_tokenizer_load(path, &c->tok)) != GS_OK)
		goto fail;
	c->end_of_turn = gs_tokenizer_find(c->tok, "<end_of_turn>");
	c->detok_cap = gs_detok_max_out(c->tok);
	c->served_name = strdup(cfg->served_name && cfg->served_name[0] ? cfg->served_name
								       : base_name(cfg->model_dir, name, sizeof(name)));
	if (!c->served_name) {
		st = gs_errorf(GS_ERR_NOMEM, "coordinator: out of memory");
		goto fail;
	}
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
	gs_tokenizer_free(c->tok);
	gs_cluster_tls_free(c->tls);
	free(c->served_name);
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
	gs_tokenizer_free(c->tok);
	free(c->served_name);
	coord_clients_free(c);
	free(c->key_counts);
	pthread_mutex_destroy(&c->mu);
	free(c);
}
