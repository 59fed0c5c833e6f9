/* The engine link's TLS in a build without OpenSSL (the GPU bundle of tests/gpu/standalone):
 * plaintext streams work as in the full build (net/stream.c); asking for the cluster
 * certificates is refused with a clear message instead of a missing symbol. */
#include "gs_net.h"

#define NO_TLS "this build has no TLS (no OpenSSL; built by tests/gpu/standalone): --cluster-ca, " \
	       "--cluster-cert and --cluster-key need the full build"

enum gs_status gs_cluster_tls_create(const struct gs_cluster_files *f, enum gs_cluster_role self,
				     struct gs_cluster_tls **out)
{
	(void)f, (void)self;
	*out = NULL;
	return gs_errorf(GS_ERR_UNSUPPORTED, NO_TLS);
}

void gs_cluster_tls_free(struct gs_cluster_tls *t)
{
	(void)t;
}

const char *gs_cluster_tls_subject(const struct gs_cluster_tls *t)
{
	(void)t;
	return "";
}

enum gs_status gs_cluster_tls_accept(struct gs_cluster_tls *t, int fd, int timeout_ms, struct gs_stream **out,
				     enum gs_auth_fail *why)
{
	(void)t, (void)fd, (void)timeout_ms;
	*out = NULL;
	*why = GS_AUTH_PROTOCOL;
	return gs_errorf(GS_ERR_UNSUPPORTED, NO_TLS);
}

enum gs_status gs_cluster_tls_connect(struct gs_cluster_tls *t, int fd, const char *host, int timeout_ms,
				      struct gs_stream **out, enum gs_auth_fail *why)
{
	(void)t, (void)fd, (void)host, (void)timeout_ms;
	*out = NULL;
	*why = GS_AUTH_PROTOCOL;
	return gs_errorf(GS_ERR_UNSUPPORTED, NO_TLS);
}
