/* gemmashard coordinator: TLS for the client-facing endpoints, gRPC and HTTP (ARCHITECTURE.md §7,
 * "Security").
 *
 * The certificate, key and client CA files are read and checked once, at start-up, before any
 * socket is opened: both front ends then serve from the same bytes. gs_tls_load() refuses (with
 * one message naming the flag and the file) a file that cannot be read or parsed, a private key
 * that group or others may access, a key that is not the certificate's, and an encrypted key.
 *
 * Both front ends accept TLS 1.2 and 1.3 only. With a client CA, every client must present a
 * certificate that chains to it: gRPC checks during the handshake (a client without one never
 * gets a call through), HTTP asks for one during the handshake and checks it per request with
 * gs_tls_verify_peer(), so that a refused client gets a JSON error (401 no certificate, 403 an
 * untrusted one) instead of a bare handshake failure. */
#ifndef GS_TLS_H
#define GS_TLS_H

#include <stdbool.h>
#include <stddef.h>

#include "gs_status.h"

/* GnuTLS priorities of the HTTP server: TLS 1.3 and 1.2, GnuTLS's default ciphers. (gRPC's
 * SSL credentials already refuse anything below TLS 1.2.) */
#define GS_TLS_HTTP_PRIORITIES "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2"

struct gs_tls {
	char  *cert_pem;       /* server certificate, then any intermediates (PEM, NUL-terminated) */
	char  *key_pem;        /* its private key (PEM); wiped when freed */
	size_t key_len;
	char  *client_ca_pem;  /* CA certificates a client's must chain to; NULL: none asked for */
	char   subject[256];   /* the server certificate's subject (for the start-up log) */
	int    n_client_cas;   /* certificates in client_ca_pem */
};

/* Reads and checks cert_path (--tls-cert), key_path (--tls-key) and, if not NULL,
 * client_ca_path (--tls-client-ca). GS_ERR_IO: unreadable; GS_ERR_INVALID_ARG: a key file
 * that group/others may access, or a key that does not match the certificate; GS_ERR_FORMAT:
 * not PEM, or no certificate in it; GS_ERR_UNSUPPORTED: an encrypted key. A certificate that
 * is expired or not yet valid is loaded with a warning. On success *out is freed with
 * gs_tls_free(). */
enum gs_status gs_tls_load(const char *cert_path, const char *key_path, const char *client_ca_path,
			   struct gs_tls **out);
void gs_tls_free(struct gs_tls *t);

enum gs_tls_peer {
	GS_TLS_PEER_OK,        /* a certificate that chains to the client CA, valid now, usable by a client */
	GS_TLS_PEER_MISSING,   /* the client sent no certificate (or the connection is not TLS) */
	GS_TLS_PEER_UNTRUSTED, /* it sent one that does not verify; why says how */
	GS_TLS_PEER_COUNT
};
/* Verifies the client certificate of a GnuTLS session (a gnutls_session_t, as
 * MHD_CONNECTION_INFO_GNUTLS_SESSION gives it) against the trust list of the session's
 * credentials. why (cap bytes) gets a one-line reason unless the result is OK. */
enum gs_tls_peer gs_tls_verify_peer(void *gnutls_session, char *why, size_t cap);

#endif
