/* gemmashard coordinator: who may call, and what each call did (gs_coord.h; ARCHITECTURE.md §7,
 * "Security"): the API keys (authorization, reload on SIGHUP) and the access log (one line per
 * request; the content lines of --log-content). Key sets and the log itself: apikeys.c,
 * access_log.c. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "coord_internal.h"
#include "gs_sbuf.h"

/* ---- API keys ---------------------------------------------------------------------------- */

bool gs_coord_authorized(struct gs_coord *c, const char *authorization, char *key_name, size_t cap)
{
	bool ok;
	long i;

	if (cap)
		key_name[0] = '\0';
	pthread_rwlock_rdlock(&c->keys_lock);
	if (!c->keys) {
		ok = true;
	} else if (!authorization || strncasecmp(authorization, "Bearer ", 7) != 0) {
		ok = false;
	} else {
		i = gs_apikeys_match(c->keys, authorization + 7, strlen(authorization + 7));
		ok = i >= 0;
		if (ok && cap)
			snprintf(key_name, cap, "%s", gs_apikeys_name(c->keys, (size_t)i));
	}
	pthread_rwlock_unlock(&c->keys_lock);
	return ok;
}

/* "3 keys (alice, bob, key-7)": names only, never keys. */
static void describe_keys(const struct gs_apikeys *k, char *buf, size_t cap)
{
	size_t n = gs_apikeys_count(k), len;

	snprintf(buf, cap, "%zu key%s (", n, n == 1 ? "" : "s");
	for (size_t i = 0; i < n; i++) {
		len = strlen(buf);
		if (len + GS_APIKEY_NAME_MAX + 8 >= cap) {
			snprintf(buf + len, cap - len, "...");
			break;
		}
		snprintf(buf + len, cap - len, "%s%s", i ? ", " : "", gs_apikeys_name(k, i));
	}
	len = strlen(buf);
	snprintf(buf + len, cap - len, ")");
}

enum gs_status gs_coord_reload(struct gs_coord *c)
{
	struct gs_apikeys *fresh = NULL, *old;
	enum gs_status st = GS_OK;
	char names[1024];

	if (gs_alog_reopen(c->alog) != GS_OK) {
		gs_log(GS_LOG_WARN, "coordinator: %s", gs_last_error());
		st = GS_ERR_IO;
	}
	if (!c->key_file) {
		gs_log(GS_LOG_INFO, "coordinator: SIGHUP: access log reopened; no --api-key-file to read again");
		return st;
	}
	if (gs_apikeys_load(c->key_file, c->env_key, &fresh) != GS_OK) {
		pthread_rwlock_rdlock(&c->keys_lock);
		describe_keys(c->keys, names, sizeof(names));
		pthread_rwlock_unlock(&c->keys_lock);
		gs_log(GS_LOG_ERROR, "coordinator: SIGHUP: API keys not reloaded: %s; still serving the %s loaded before",
		       gs_last_error(), names);
		return GS_ERR_INVALID_ARG;
	}
	describe_keys(fresh, names, sizeof(names));
	pthread_rwlock_wrlock(&c->keys_lock);
	old = c->keys;
	c->keys = fresh;
	pthread_rwlock_unlock(&c->keys_lock);
	gs_apikeys_free(old);
	gs_log(GS_LOG_INFO, "coordinator: SIGHUP: API keys reloaded from %s: %s", c->key_file, names);
	return st;
}

/* ---- access log -------------------------------------------------------------------------- */

void gs_coord_request_done(struct gs_coord *c, const struct gs_access *a)
{
	coord_count_request(c, a);
	if (!a->probe)
		gs_alog_request(c->alog, a, a->model ? a->model : a->request_id && c->n_models == 1 ? c->models[0].name : NULL);
}

void coord_log_content(struct gs_creq *r)
{
	struct gs_coord *c = r->c;
	char *prompt = NULL;
	size_t prompt_len = 0;

	if (!c->log_content)
		return;
	if (gs_tokenizer_decode(r->model->tok, r->prompt, (size_t)r->n_prompt, &prompt, &prompt_len) != GS_OK)
		gs_clear_error();
	pthread_mutex_lock(&r->mu);
	gs_alog_content(c->alog, r->id, prompt, prompt_len, r->text, r->len);
	pthread_mutex_unlock(&r->mu);
	free(prompt);
}

/* ---- life cycle -------------------------------------------------------------------------- */

enum gs_status coord_clients_init(struct gs_coord *c, const struct gs_coord_config *cfg)
{
	char names[1024];

	pthread_rwlock_init(&c->keys_lock, NULL);
	c->log_content = cfg->log_content;
	if ((cfg->api_key_file && !(c->key_file = strdup(cfg->api_key_file))) ||
	    (cfg->api_key && cfg->api_key[0] && !(c->env_key = strdup(cfg->api_key))))
		return gs_errorf(GS_ERR_NOMEM, "coordinator: out of memory");
	if (c->key_file || c->env_key) {
		GS_TRY(gs_apikeys_load(c->key_file, c->env_key, &c->keys));
		describe_keys(c->keys, names, sizeof(names));
		gs_log(GS_LOG_INFO, "coordinator: API keys required: %s from %s%s%s", names,
		       c->key_file ? c->key_file : "", c->key_file && c->env_key ? " and " : "",
		       c->env_key ? "GEMMASHARD_API_KEY" : "");
	} else {
		gs_log(GS_LOG_WARN, "coordinator: no API key (--api-key-file or GEMMASHARD_API_KEY): every client that "
		       "can reach the endpoints is served");
	}
	GS_TRY(gs_alog_open(cfg->access_log, &c->alog));
	if (c->log_content) {
		for (int i = 0; i < 3; i++)
			gs_log(GS_LOG_WARN, "coordinator: !!! --log-content: the prompt and output of EVERY request are "
			       "written to the access log (%s); they may hold patient data. Never use this in "
			       "production. !!!", gs_alog_where(c->alog));
	}
	return GS_OK;
}

void coord_clients_free(struct gs_coord *c)
{
	gs_apikeys_free(c->keys);
	c->keys = NULL;
	if (c->env_key)
		explicit_bzero(c->env_key, strlen(c->env_key));
	free(c->env_key);
	free(c->key_file);
	gs_alog_close(c->alog);
	pthread_rwlock_destroy(&c->keys_lock);
}
