/* gemmashard-coordinator: clients' gRPC and HTTP endpoints in front of the engines.
 *
 *   gemmashard-coordinator --model DIR [--served-name NAME] [--model DIR [--served-name NAME]]...
 *       [--grpc HOST:PORT]
 *       [--http HOST:PORT] [--engine-listen HOST:PORT] [--api-key-file FILE] [limits...]
 *       [--access-log FILE] [--log-content]
 *       [--tls-cert FILE --tls-key FILE [--tls-client-ca FILE]]
 *       [--cluster-ca FILE --cluster-cert FILE --cluster-key FILE | --insecure-engine-link]
 *
 * Each --model adds a served model (its --served-name follows it); requests pick one by name.
 * Listens on 127.0.0.1 unless told otherwise. Engines (gemmashard-worker --coordinator
 * HOST:PORT) connect to --engine-listen and register. SIGINT/SIGTERM stop it cleanly; SIGHUP
 * reads the API key file again and reopens the access log file (gs_coord_reload). */
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
#include "gs_tls.h"

static void usage(FILE *f)
{
	fprintf(f,
		"usage: gemmashard-coordinator --model DIR [--served-name NAME] [--model DIR [--served-name NAME]]... "
		"[options]\n"
		"  --model DIR               checkpoint folder (config.json, tokenizer.json); repeat it to serve several\n"
		"                            models (at most %d), each with its own engines; requests name one in\n"
		"                            \"model\" (required when more than one is served)\n"
		"  --served-name NAME        name clients use for the --model before it (default: the folder's name;\n"
		"                            before any --model: the first one's)\n"
		"  --grpc HOST:PORT          gRPC endpoint (default 127.0.0.1:50051)\n"
		"  --http HOST:PORT          OpenAI-compatible HTTP endpoint (default 127.0.0.1:8000)\n"
		"  --engine-listen HOST:PORT where engine leaders connect (default 127.0.0.1:50061)\n"
		"  --api-key-file FILE       require \"Authorization: Bearer KEY\" with a KEY from FILE (lines \"NAME KEY\"\n"
		"                            or \"KEY\"; mode 600; SIGHUP reads it again); GEMMASHARD_API_KEY adds one\n"
		"                            key named \"env\"\n"
		"  --access-log FILE         one line per request (never its content) to FILE (default: stderr)\n"
		"  --log-content             ALSO write every prompt and output to the access log (debugging only)\n"
		"  --cluster-ca FILE         engine link: mutual TLS 1.3; engines need certificates from this CA\n"
		"  --cluster-cert FILE       engine link: this coordinator's certificate (coordinator role)\n"
		"  --cluster-key FILE        engine link: its private key (mode 600)\n"
		"  --insecure-engine-link    allow a plaintext, unauthenticated engine link off loopback\n"
		"  --tls-cert FILE           serve gRPC and HTTPS over TLS 1.2+ with this PEM certificate (chain)\n"
		"  --tls-key FILE            its PEM private key (mode 600: no access for group or others)\n"
		"  --tls-client-ca FILE      mutual TLS: clients must present a certificate issued by this CA\n"
		"  --max-body-bytes N        largest HTTP body / gRPC message (default 33554432: room for images)\n"
		"  --max-body-total N        HTTP request bodies held at once, all connections together; a body\n"
		"                            that would pass it gets 503 (default 268435456)\n"
		"  --max-images-per-request N images in one request (default 4; each travels to the engine as\n"
		"                            image_size^2 x 3 bytes, so N x that must fit the 16 MiB engine link frame)\n"
		"  --max-prompt-tokens N     longest prompt accepted (default 131072)\n"
		"  --max-tokens-limit N      largest max_tokens accepted (default 131072)\n"
		"  --default-max-tokens N    max_tokens when a request gives none (default 512)\n"
		"  --max-concurrent N        requests in flight before 429 / RESOURCE_EXHAUSTED (default 1024)\n"
		"  --heartbeat-timeout S     engine marked down after S seconds of silence (default 3)\n"
		"  --request-timeout S       deadline of a request that brings none (default 600)\n"
		"  --http-idle-timeout S     close an HTTP connection silent for S seconds, or whose request body is not\n"
		"                            complete S seconds after its headers (default 60)\n"
		"  --max-http-connections N  open HTTP connections; more are closed at once (default 1024)\n"
		"  --max-http-header-bytes N request line + headers per HTTP request; more get 431 (default 32768)\n"
		"  --max-grpc-streams N      concurrent calls per gRPC connection; clients queue the rest (default 128)\n",
		GS_COORD_MAX_MODELS);
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
			.max_body_bytes = 32u << 20, /* base64 images: 4 x 6 MiB files fit */
			.max_body_total = 256u << 20,
			.max_prompt_tokens = 131072,
			.max_tokens_limit = 131072,
			.default_max_tokens = 512,
			.max_concurrent = 1024,
			.heartbeat_timeout_s = 3.0,
			.default_timeout_s = 600.0,
			.http_idle_timeout_s = 60,
			.max_http_connections = 1024,
			.max_http_header_bytes = 32u << 10,
			.max_grpc_streams = 128,
		},
	};
	const char *grpc_addr = "127.0.0.1:50051", *http_addr = "127.0.0.1:8000";
	const char *tls_cert = NULL, *tls_key = NULL, *tls_client_ca = NULL;
	struct gs_coord_model_dir models[GS_COORD_MAX_MODELS];
	const char *early_name = NULL; /* --served-name before any --model */
	int n_models = 0;
	char http_host[256];
	int http_port;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage(stdout);
			return 0;
		}
		if (!strcmp(a, "--insecure-engine-link")) {
			cfg.insecure_engine_link = true;
			continue;
		}
		if (!strcmp(a, "--log-content")) {
			cfg.log_content = true;
			continue;
		}
		if (!strcmp(a, "--api-key") || !strncmp(a, "--api-key=", 10)) {
			/* never echo the value: it is a secret, now visible in ps to every local user */
			fprintf(stderr, "gemmashard-coordinator: --api-key is no longer accepted, because a key on the "
				"command line can be read by every local user (ps); put the keys in a file of mode 600 and "
				"give --api-key-file FILE, or set the environment variable GEMMASHARD_API_KEY\n");
			return 2;
		}
		if (i + 1 >= argc) {
			fprintf(stderr, "gemmashard-coordinator: %s needs a value (or is unknown)\n", a);
			usage(stderr);
			return 2;
		}
		const char *v = argv[++i];
		double d;
		if (!strcmp(a, "--model")) {
			if (n_models == GS_COORD_MAX_MODELS) {
				fprintf(stderr, "gemmashard-coordinator: at most %d --model flags\n", GS_COORD_MAX_MODELS);
				return 2;
			}
			/* a --served-name before the first --model names that one (the one-model usage) */
			models[n_models] = (struct gs_coord_model_dir){ .dir = v,
									.served_name = n_models ? NULL : early_name };
			n_models++;
		} else if (!strcmp(a, "--served-name")) {
			const char **slot = n_models ? &models[n_models - 1].served_name : &early_name;
			if (*slot) {
				fprintf(stderr, "gemmashard-coordinator: %s%s has two --served-name flags (each names the "
					"--model before it)\n", n_models ? "--model " : "the first --model",
					n_models ? models[n_models - 1].dir : "");
				return 2;
			}
			if (!v[0]) {
				fprintf(stderr, "gemmashard-coordinator: --served-name must not be empty\n");
				return 2;
			}
			*slot = v;
		}
		else if (!strcmp(a, "--grpc"))
			grpc_addr = v;
		else if (!strcmp(a, "--http"))
			http_addr = v;
		else if (!strcmp(a, "--engine-listen"))
			cfg.engine_listen = v;
		else if (!strcmp(a, "--api-key-file"))
			cfg.api_key_file = v;
		else if (!strcmp(a, "--access-log"))
			cfg.access_log = v;
		else if (!strcmp(a, "--cluster-ca"))
			cfg.cluster_ca = v;
		else if (!strcmp(a, "--cluster-cert"))
			cfg.cluster_cert = v;
		else if (!strcmp(a, "--cluster-key"))
			cfg.cluster_key = v;
		else if (!strcmp(a, "--tls-cert"))
			tls_cert = v;
		else if (!strcmp(a, "--tls-key"))
			tls_key = v;
		else if (!strcmp(a, "--tls-client-ca"))
			tls_client_ca = v;
		else if (!strcmp(a, "--max-body-bytes")) {
			if (!num(a, v, 1024, 1 << 30, &d))
				return 2;
			cfg.limits.max_body_bytes = (size_t)d;
		} else if (!strcmp(a, "--max-body-total")) {
			if (!num(a, v, 1024, (double)((size_t)1 << 40), &d))
				return 2;
			cfg.limits.max_body_total = (size_t)d;
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
		} else if (!strcmp(a, "--http-idle-timeout")) {
			if (!num(a, v, 1, 86400, &d))
				return 2;
			if (d != (double)(unsigned)d) {
				fprintf(stderr, "gemmashard-coordinator: --http-idle-timeout is whole seconds, got \"%s\"\n", v);
				return 2;
			}
			cfg.limits.http_idle_timeout_s = d;
		} else if (!strcmp(a, "--max-http-connections")) {
			if (!num(a, v, 1, 65536, &d))
				return 2;
			cfg.limits.max_http_connections = (int32_t)d;
		} else if (!strcmp(a, "--max-http-header-bytes")) {
			if (!num(a, v, 4096, 1 << 24, &d))
				return 2;
			cfg.limits.max_http_header_bytes = (size_t)d;
		} else if (!strcmp(a, "--max-images-per-request")) {
			if (!num(a, v, 0, GS_COORD_MAX_IMAGES, &d))
				return 2;
			cfg.limits.max_images = d == 0 ? -1 : (int32_t)d; /* 0: no images at all */
		} else if (!strcmp(a, "--max-grpc-streams")) {
			if (!num(a, v, 1, 1 << 20, &d))
				return 2;
			cfg.limits.max_grpc_streams = (int32_t)d;
		} else {
			fprintf(stderr, "gemmashard-coordinator: unknown option %s\n", a);
			usage(stderr);
			return 2;
		}
	}
	if (!n_models) {
		fprintf(stderr, "gemmashard-coordinator: --model DIR is required\n");
		usage(stderr);
		return 2;
	}
	cfg.models = models;
	cfg.n_models = n_models;
	if (cfg.limits.default_max_tokens > cfg.limits.max_tokens_limit)
		cfg.limits.default_max_tokens = cfg.limits.max_tokens_limit;
	if (!split_addr(http_addr, http_host, sizeof(http_host), &http_port)) {
		fprintf(stderr, "gemmashard-coordinator: --http must be HOST:PORT, got \"%s\"\n", http_addr);
		return 2;
	}
	if (!tls_cert != !tls_key || (tls_client_ca && !tls_cert)) {
		fprintf(stderr, "gemmashard-coordinator: %s\n",
			!tls_cert != !tls_key ? "--tls-cert and --tls-key go together (give both, or neither)"
					      : "--tls-client-ca needs TLS: give --tls-cert and --tls-key too");
		return 2;
	}

	/* Signals go to sigwait() below only; every thread inherits this mask. */
	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);

	grpc_init();
	struct gs_coord *coord = NULL;
	struct gs_grpc *g = NULL;
	struct gs_http *h = NULL;
	struct gs_tls *tls = NULL;
	int rc = 1;
	if (tls_cert && gs_tls_load(tls_cert, tls_key, tls_client_ca, &tls) != GS_OK) {
		fprintf(stderr, "gemmashard-coordinator: %s\n", gs_last_error());
		goto out;
	}
	if (gs_coord_create(&cfg, &coord) != GS_OK) {
		fprintf(stderr, "gemmashard-coordinator: %s\n", gs_last_error());
		goto out;
	}
	if (gs_grpc_start(coord, grpc_addr, tls, &g) != GS_OK ||
	    gs_http_start(coord, http_host, http_port, tls, &h) != GS_OK) {
		fprintf(stderr, "gemmashard-coordinator: %s\n", gs_last_error());
		goto out;
	}
	for (int i = 0; i < gs_coord_n_models(coord); i++) {
		const struct gs_coord_model *m = gs_coord_model_at(coord, i);
		gs_log(GS_LOG_INFO, "coordinator: serving model \"%s\" (%s, %s%s)", m->name, m->architecture, m->dir,
		       m->vision.present ? ", takes images" : "");
	}
	gs_log(GS_LOG_INFO, "coordinator: gRPC %s%s, HTTP %s://%s:%d, engines connect to %s%s", grpc_addr,
	       tls ? " (TLS)" : "", tls ? "https" : "http", http_host, http_port, cfg.engine_listen,
	       cfg.api_key_file || (cfg.api_key && cfg.api_key[0]) ? ", API key required" : "");
	if (tls)
		gs_log(GS_LOG_INFO, "coordinator: TLS certificate \"%s\"%s", tls->subject,
		       tls->client_ca_pem ? "; clients need a certificate from --tls-client-ca" : "");
	int sig = 0;
	while (sigwait(&sigs, &sig) == 0 && sig == SIGHUP)
		gs_coord_reload(coord);
	gs_log(GS_LOG_INFO, "coordinator: %s, shutting down", strsignal(sig));
	rc = 0;
out:
	gs_http_stop(h);
	gs_grpc_stop(g);
	gs_coord_free(coord);
	grpc_shutdown();
	gs_tls_free(tls);
	return rc;
}
