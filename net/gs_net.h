/* net: the engine link's transport and its security layer (ARCHITECTURE.md §2, §6, §7
 * "Security"): a byte stream over a connected socket that is either plaintext or mutual TLS
 * 1.3 (OpenSSL), the cluster's credentials (a cluster CA, this process's certificate and key)
 * and the peer checks. The coordinator and the worker both decide here whether a peer is let
 * in; proto/gs_frame.h frames messages over a gs_stream.
 *
 * Roles. Every certificate of a cluster is issued by the cluster CA for exactly one role
 * (deploy/make-cluster-certs.sh): the coordinator's carries extendedKeyUsage serverAuth only
 * and subject OU=coordinator, an engine's clientAuth only and OU=engine. The coordinator
 * accepts only engine certificates and an engine accepts only a coordinator certificate, so
 * neither can stand in for the other.
 *
 * Threads. A stream may be read by one thread while another writes to it (the coordinator's
 * reader thread and its submitters). Concurrent reads, or concurrent writes, need the
 * caller's own serialisation. Inside, TLS calls are serialised by a mutex that is never held
 * while waiting: the socket is non-blocking and waits happen in poll(). gs_stream_shutdown may
 * be called from any thread at any time. A peer that goes away can raise SIGPIPE inside
 * OpenSSL's writes: processes using streams ignore SIGPIPE (both programs do). */
#ifndef GS_NET_H
#define GS_NET_H

#include <stdbool.h>
#include <stddef.h>

#include "gs_status.h"

/* ---- streams ----------------------------------------------------------------------------- */

struct gs_stream;

#define GS_STREAM_SEND_TIMEOUT_MS 5000 /* default: a write blocked this long fails */

/* Wraps a connected socket as a plaintext stream; the stream owns fd from here on (also on
 * failure: GS_ERR_NOMEM closes it). Makes the socket non-blocking. */
enum gs_status gs_stream_plain(int fd, struct gs_stream **out);

/* Up to cap bytes, waiting at most timeout_ms (< 0: forever) for the first one. *got = 0 means
 * the peer closed the stream. GS_ERR_IO: failure, or "timed out after N ms"; a signal does not
 * end the wait. */
enum gs_status gs_stream_read(struct gs_stream *s, void *buf, size_t cap, int timeout_ms, size_t *got);

/* All len bytes, or GS_ERR_IO (the peer is gone, or the send timeout passed; the stream is then
 * unusable). */
enum gs_status gs_stream_write(struct gs_stream *s, const void *buf, size_t len);

/* Waits until a read would not block (data, end of stream or an error is there): 1; 0 after
 * timeout_ms (< 0: forever); -1 with errno set (EINTR: a signal arrived). For TLS, bytes of
 * the protocol itself that carry no data do not count. */
int gs_stream_wait(struct gs_stream *s, int timeout_ms);

/* Ends both directions at once so that every wait on the stream returns; any thread. */
void gs_stream_shutdown(struct gs_stream *s);
/* Closes the socket and frees (NULL is fine). */
void gs_stream_free(struct gs_stream *s);

void gs_stream_set_send_timeout(struct gs_stream *s, int timeout_ms);
bool gs_stream_is_tls(const struct gs_stream *s);
/* One line for logs: "plaintext", or "TLS 1.3 TLS_AES_256_GCM_SHA384, peer CN=engine-0 OU=engine". */
const char *gs_stream_describe(const struct gs_stream *s);

/* ---- cluster credentials ----------------------------------------------------------------- */

enum gs_cluster_role { GS_ROLE_COORDINATOR, GS_ROLE_ENGINE, GS_ROLE_COUNT };
const char *gs_cluster_role_name(enum gs_cluster_role r); /* "coordinator", "engine" */

struct gs_cluster_files {
	const char *ca;    /* --cluster-ca: the cluster CA certificate (PEM) */
	const char *cert;  /* --cluster-cert: this process's certificate, then any intermediates */
	const char *key;   /* --cluster-key: its private key, not accessible by group or others */
};

struct gs_cluster_tls;

/* Loads and checks the files for a process of role self, once at start-up. Refused, each with
 * one message naming the flag and the file: a file that cannot be read or parsed
 * (GS_ERR_IO / GS_ERR_FORMAT); a key that group or others may access, a key that is not the
 * certificate's, a certificate that does not chain to the CA, is expired or not yet valid, or
 * is issued for the other role (GS_ERR_INVALID_ARG); a build without OpenSSL
 * (GS_ERR_UNSUPPORTED). */
enum gs_status gs_cluster_tls_create(const struct gs_cluster_files *f, enum gs_cluster_role self,
				     struct gs_cluster_tls **out);
void gs_cluster_tls_free(struct gs_cluster_tls *t);
/* This process's certificate subject ("CN=..., OU=...") for the start-up log. */
const char *gs_cluster_tls_subject(const struct gs_cluster_tls *t);

/* Why a peer was refused (the label of gemmashard_engine_auth_failures_total). */
enum gs_auth_fail {
	GS_AUTH_OK,
	GS_AUTH_NOT_TLS,        /* the peer spoke something other than TLS (plaintext frames) */
	GS_AUTH_TLS_UNEXPECTED, /* the peer started TLS on a plaintext link */
	GS_AUTH_NO_CERT,        /* it presented no certificate */
	GS_AUTH_UNTRUSTED,      /* its certificate does not chain to the cluster CA (or names another host) */
	GS_AUTH_EXPIRED,        /* its certificate is expired or not yet valid */
	GS_AUTH_WRONG_ROLE,     /* its certificate is for the other role */
	GS_AUTH_PEER_REJECTED,  /* the peer refused our certificate */
	GS_AUTH_PROTOCOL,       /* no TLS 1.3, or another handshake failure */
	GS_AUTH_TIMEOUT,        /* the handshake did not finish in time */
	GS_AUTH_CLOSED,         /* the peer closed the connection during the handshake */
	GS_AUTH_COUNT
};
const char *gs_auth_fail_label(enum gs_auth_fail f); /* "not_tls", "wrong_role", ... */

/* Server side (the coordinator): the TLS 1.3 handshake on an accepted socket, within
 * timeout_ms, requiring a certificate of the other role chained to the CA. On success *out
 * owns fd. On failure *why says which class, gs_last_error() has the reason (the OpenSSL
 * reason, never key material) and the caller still owns fd, so that it can answer a plaintext
 * peer. */
enum gs_status gs_cluster_tls_accept(struct gs_cluster_tls *t, int fd, int timeout_ms, struct gs_stream **out,
				     enum gs_auth_fail *why);

/* Client side (an engine): the handshake on a connected socket, within timeout_ms, requiring
 * a coordinator certificate chained to the CA that names host (a DNS name or an IP address)
 * in its subjectAltName. It returns only once the server has accepted this side's
 * certificate, so a refusal is reported here and not on the first read. Ownership of fd as
 * for gs_cluster_tls_accept. */
enum gs_status gs_cluster_tls_connect(struct gs_cluster_tls *t, int fd, const char *host, int timeout_ms,
				      struct gs_stream **out, enum gs_auth_fail *why);

/* ---- addresses --------------------------------------------------------------------------- */

/* Whether every address host resolves to is a loopback address (127.0.0.0/8, ::1). An empty
 * host, 0.0.0.0 and :: are not. GS_ERR_INVALID_ARG when host does not resolve. */
enum gs_status gs_net_host_is_loopback(const char *host, bool *loopback);

/* Whether the first bytes a peer sent look like a TLS handshake record (0x16 0x03 ...). */
bool gs_net_looks_like_tls(const unsigned char *b, size_t n);

#endif
