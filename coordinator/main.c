/* gemmashard-coordinator: clients' gRPC and HTTP endpoints in front of the engines.
 *
 *   gemmashard-coordinator --model DIR [--served-name NAME] [--grpc HOST:PORT]
 *       [--http HOST:PORT] [--engine-listen HOST:PORT] [--api-key KEY] [limits...]
 *
 * Listens on 127.0.0.1 unless told otherwise. Engines (gemmashard-worker --coordinator
 * HOST:PORT) connect to --engine-listen and register. SIGINT/SIGTERM stop it cleanly. */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/grpc.h>

#include "gs_coord.h"
#include "gs_grpc.h"
#include "gs_http.h"

static void usage(FILE *f)
{
	fprintf(f,
		"usage: gemmashard-coordinator --model DIR [options]\n"
		"  --model DIR               checkpoint folder (config.json, tokenizer.json)\n"
		"  --served-name NAME        model name clients use (default: the folder's name)\n"
		"  --grpc HOST:PORT          gRPC endpoint (default 127.0.0.1:50051)\n"
		"  --http HOST:PORT          OpenAI-compatible HTTP endpoint (default 127.0.0.1:8000)\n"
		"  --engine-listen HOST:PORT where engine leaders connect (default 127.0.0.1:50061)\n"
		"  --api-key KEY             require \"Authorization: Bearer KEY\" (env GEMMASHARD_API_KEY)\n"
		"  --max-body-bytes N        largest HTTP body / gRPC message (default 4194304)\n"
		"  --max-prompt-tokens N     longest prompt accepted (default 131072)\n"
		"  --max-tokens-limit N      largest max_tokens accepted (default 131072)\n"
		"  --default-max-tokens N    max_tokens when a request gives none (default 512)\n"
		"  --max-concurrent N        requests in flight before 429 / RESOURCE_EXHAUSTED (default 1024)\n"
		"  --heartbeat-timeout S     engine marked down after S seconds of silence (default 3)\n"
		"  --request-timeout S       deadline of a request that brings none (default 600)\n");
}

static bool split_addr(const char *s, char *host, size_t cap, int *port)
{
	const char *colon = strrchr(s, ':');
	char *end;
	if (!colon || colon == s || (size_t)(colon - s) >= cap)
		return false;
	long p = strtol(colon + 1, &end, 10);
	if (*end || p < 0 || p > 65535 || end == colon + 1)
		return false;
	memcpy(host, s, (size_t)(colon - s));
	host[colon - s] = '\0';
	*port = (int)p;
	return true;
}

static bool num(const char *flag, const char *v, double lo, double hi, double *out)
{
	char *end;
	errno = 0;
	double d = strtod(v, &end);
	if (errno || *end || end == v || !(d >= lo && d <= hi)) {
		fprintf(stderr, "gemmashard-coordinator: %s must be a number in [%g, %g], got \"%s\"\n", flag, lo, hi, v);
		return false;
	}
	*out = d;
	return true;
}

int main(int argc, char **argv)
{
	struct gs_coord_config cfg = {
		.engine_listen = "127.0.0.1:50061",
		.api_key = getenv("GEMMASHARD_API_KEY"),
		.limits = {
			.max_body_bytes = 4u << 20,
			.max_prompt_tokens = 131072,
			.max_tokens_limit = 131072,
			.default_max_tokens = 512,
			.max_concurrent = 1024,
			.heartbeat_timeout_s = 3.0,
			.default_timeout_s = 600.0,
		},
	};
	const char *grpc_addr = "127.0.0.1:50051", *http_addr = "127.0.0.1:8000";
	char http_host[256];
	int http_port;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage(stdout);
			return 0;
		}
		if (i + 1 >= argc) {
			fprintf(stderr, "gemmashard-coordinator: %s needs a value (or is unknown)\n", a);
			usage(stderr);
			return 2;
		}
		const char *v = argv[++i];
		double d;
		if (!strcmp(a, "--model"))
			cfg.model_dir = v;
		else if (!strcmp(a, "--served-name"))
			cfg.served_name = v;
		else if (!strcmp(a, "--grpc"))
			grpc_addr = v;
		else if (!strcmp(a, "--http"))
			http_addr = v;
		else if (!strcmp(a, "--engine-listen"))
			cfg.engine_listen = v;
		else if (!strcmp(a, "--api-key"))
			cfg.api_key = v;
		else if (!strcmp(a, "--max-body-bytes")) {
			if (!num(a, v, 1024, 1 << 30, &d))
				return 2;
			cfg.limits.max_body_bytes = (size_t)d;
		} else if (!strcmp(a, "--max-prompt-tokens")) {
			if (!num(a, v, 1, INT_MAX, &d))
				return 2;
			cfg.limits.max_prompt_tokens = (int32_t)d;
		} else if (!strcmp(a, "--max-tokens-limit")) {
			if (!num(a, v, 1, 1 << 20, &d))
				return 2;
			cfg.limits.max_tokens_limit = (int32_t)d;
		} else if (!strcmp(a, "--default-max-tokens")) {
			if (!num(a, v, 1, 1 << 20, &d))
				return 2;
			cfg.limits.default_max_tokens = (int32_t)d;
		} else if (!strcmp(a, "--max-concurrent")) {
			if (!num(a, v, 1, 1 << 20, &d))
				return 2;
			cfg.limits.max_concurrent = (int32_t)d;
		} else if (!strcmp(a, "--heartbeat-timeout")) {
			if (!num(a, v, 0.1, 3600, &d))
				return 2;
			cfg.limits.heartbeat_timeout_s = d;
		} else if (!strcmp(a, "--request-timeout")) {
			if (!num(a, v, 0.1, 86400 * 7, &d))
				return 2;
			cfg.limits.default_timeout_s = d;
		} else {
			fprintf(stderr, "gemmashard-coordinator: unknown option %s\n", a);
			usage(stderr);
			return 2;
		}
	}
	if (!cfg.model_dir) {
		fprintf(stderr, "gemmashard-coordinator: --model DIR is required\n");
		usage(stderr);
		return 2;
	}
	if (cfg.limits.default_max_tokens > cfg.limits.max_tokens_limit)
		cfg.limits.default_max_tokens = cfg.limits.max_tokens_limit;
	if (!split_addr(http_addr, http_host, sizeof(http_host), &http_port)) {
		fprintf(stderr, "gemmashard-coordinator: --http must be HOST:PORT, got \"%s\"\n", http_addr);
		return 2;
	}

	/* Signals go to sigwait() below only; every thread inherits this mask. */
	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);

	grpc_init();
	struct gs_coord *coord = NULL;
	struct gs_grpc *g = NULL;
	struct gs_http *h = NULL;
	int rc = 1;
	if (gs_coord_create(&cfg, &coord) != GS_OK) {
		fprintf(stderr, "gemmashard-coordinator: %s\n", gs_last_error());
		goto out;
	}
	if (gs_grpc_start(coord, grpc_addr, &g) != GS_OK || gs_http_start(coord, http_host, http_port, &h) != GS_OK) {
		fprintf(stderr, "gemmashard-coordinator: %s\n", gs_last_error());
		goto out;
	}
	struct gs_model_info info;
	gs_coord_model_info(coord, NULL, &info);
	gs_log(GS_LOG_INFO, "coordinator: serving model \"%s\" (%s): gRPC %s, HTTP http://%s:%d, engines connect to %s%s",
	       info.name, info.architecture, grpc_addr, http_host, http_port, cfg.engine_listen,
	       cfg.api_key && cfg.api_key[0] ? ", API key required" : "");
	int sig = 0;
	sigwait(&sigs, &sig);
	gs_log(GS_LOG_INFO, "coordinator: %s, shutting down", strsignal(sig));
	rc = 0;
out:
	gs_http_stop(h);
	gs_grpc_stop(g);
	gs_coord_free(coord);
	grpc_shutdown();
	return rc;
}
