/* gemmashard coordinator: TLS files and client-certificate checks (gs_tls.h), on GnuTLS.
 *
 * The files are parsed here only to refuse bad ones at start-up with a precise message; the
 * front ends then hand the same PEM bytes to gRPC (OpenSSL underneath) and to libmicrohttpd
 * (GnuTLS). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "gs_tls.h"
#include "gs_util.h"

#define GS_TLS_MAX_FILE (1u << 20) /* no certificate bundle or key is larger */

/* Reads a whole PEM file (NUL-terminated); private: a key, refused when group/others may access it. */
static enum gs_status gs_tls_read(const char *flag, const char *path, bool private, char **out, size_t *len)
{
	char what[600];

	snprintf(what, sizeof(what), "%s %.500s", flag, path);
	GS_TRY(gs_read_file_checked(what, path, private, GS_TLS_MAX_FILE, out, len));
	if (*len == 0) {
		free(*out);
		*out = NULL;
		return gs_errorf(GS_ERR_FORMAT, "%s: the file is empty", what);
	}
	return GS_OK;
}

/* Every certificate of a PEM bundle; server: the server's own first, each next one its issuer. */
static enum gs_status gs_tls_certs(const char *flag, const char *path, const char *pem, size_t len, bool server,
				   gnutls_x509_crt_t **crts, unsigned *n)
{
	gnutls_datum_t d = { .data = (unsigned char *)pem, .size = (unsigned)len };
	int rc;

	*crts = NULL;
	*n = 0;
	if (!strstr(pem, "-----BEGIN CERTIFICATE-----"))
		return gs_errorf(GS_ERR_FORMAT, "%s %s: no PEM certificate in it (\"-----BEGIN CERTIFICATE-----\")", flag,
				 path);
	rc = gnutls_x509_crt_list_import2(crts, n, &d, GNUTLS_X509_FMT_PEM,
					  server ? GNUTLS_X509_CRT_LIST_FAIL_IF_UNSORTED : 0);
	if (rc == GNUTLS_E_CERTIFICATE_LIST_UNSORTED)
		return gs_errorf(GS_ERR_FORMAT,
				 "%s %s: the certificates are out of order (the server's own must come first, "
				 "then each one's issuer)", flag, path);
	if (rc < 0 || *n == 0)
		return gs_errorf(GS_ERR_FORMAT, "%s %s: cannot parse the certificate: %s", flag, path,
				 rc < 0 ? gnutls_strerror(rc) : "no certificate");
	return GS_OK;
}

static void gs_tls_certs_free(gnutls_x509_crt_t *crts, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		gnutls_x509_crt_deinit(crts[i]);
	gnutls_free(crts);
}

/* The key parses and is the private half of crt's public key. */
static enum gs_status gs_tls_key_matches(const char *key_path, const char *cert_path, const struct gs_tls *t,
					 gnutls_x509_crt_t crt)
{
	gnutls_datum_t d = { .data = (unsigned char *)t->key_pem, .size = (unsigned)t->key_len };
	gnutls_x509_privkey_t key;
	unsigned char kid[64], cid[64];
	size_t klen = sizeof(kid), clen = sizeof(cid);
	enum gs_status st = GS_OK;
	int rc;

	if (strstr(t->key_pem, "ENCRYPTED"))
		return gs_errorf(GS_ERR_UNSUPPORTED,
				 "--tls-key %s: the private key is encrypted, which is not supported; store it "
				 "decrypted with mode 600 (openssl pkey -in KEY -out PLAIN)", key_path);
	if (!strstr(t->key_pem, "-----BEGIN ") || !strstr(t->key_pem, "PRIVATE KEY-----"))
		return gs_errorf(GS_ERR_FORMAT, "--tls-key %s: no PEM private key in it (\"-----BEGIN ... PRIVATE KEY-----\")",
				 key_path);
	if (gnutls_x509_privkey_init(&key) < 0)
		return gs_errorf(GS_ERR_NOMEM, "--tls-key %s: out of memory", key_path);
	rc = gnutls_x509_privkey_import2(key, &d, GNUTLS_X509_FMT_PEM, NULL, 0);
	if (rc < 0) {
		st = gs_errorf(GS_ERR_FORMAT, "--tls-key %s: cannot parse the private key: %s", key_path,
			       gnutls_strerror(rc));
		goto out_free_key;
	}
	rc = gnutls_x509_privkey_get_key_id(key, 0, kid, &klen);
	if (rc >= 0)
		rc = gnutls_x509_crt_get_key_id(crt, 0, cid, &clen);
	if (rc < 0) {
		st = gs_errorf(GS_ERR_FORMAT, "--tls-key %s / --tls-cert %s: cannot compare the keys: %s", key_path,
			       cert_path, gnutls_strerror(rc));
		goto out_free_key;
	}
	if (klen != clen || memcmp(kid, cid, klen) != 0)
		st = gs_errorf(GS_ERR_INVALID_ARG,
			       "--tls-key %s does not match --tls-cert %s: the key is not the private half of the "
			       "certificate's public key (%s)", key_path, cert_path, t->subject);
out_free_key:
	gnutls_x509_privkey_deinit(key);
	return st;
}

static void gs_tls_check_dates(const char *cert_path, gnutls_x509_crt_t crt)
{
	time_t now = time(NULL), from = gnutls_x509_crt_get_activation_time(crt),
	       until = gnutls_x509_crt_get_expiration_time(crt);
	char when[64];
	struct tm tm;

	if (until != (time_t)-1 && until < now) {
		strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S UTC", gmtime_r(&until, &tm));
		gs_log(GS_LOG_WARN, "--tls-cert %s: the certificate expired on %s; clients will refuse it", cert_path,
		       when);
	} else if (from != (time_t)-1 && from > now) {
		strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S UTC", gmtime_r(&from, &tm));
		gs_log(GS_LOG_WARN, "--tls-cert %s: the certificate is valid only from %s; clients will refuse it",
		       cert_path, when);
	}
}

enum gs_status gs_tls_load(const char *cert_path, const char *key_path, const char *client_ca_path,
			   struct gs_tls **out)
{
	struct gs_tls *t = calloc(1, sizeof(*t));
	gnutls_x509_crt_t *crts = NULL, *cas = NULL;
	unsigned n_crts = 0, n_cas = 0;
	gnutls_datum_t dn = { 0 };
	size_t len;
	enum gs_status st;

	*out = NULL;
	if (!t)
		return gs_errorf(GS_ERR_NOMEM, "TLS: out of memory");
	st = gs_tls_read("--tls-cert", cert_path, false, &t->cert_pem, &len);
	if (st != GS_OK)
		goto out_free;
	st = gs_tls_certs("--tls-cert", cert_path, t->cert_pem, len, true, &crts, &n_crts);
	if (st != GS_OK)
		goto out_free;
	if (gnutls_x509_crt_get_dn2(crts[0], &dn) >= 0) {
		snprintf(t->subject, sizeof(t->subject), "%.*s", (int)dn.size, (const char *)dn.data);
		gnutls_free(dn.data);
	}
	gs_tls_check_dates(cert_path, crts[0]);
	st = gs_tls_read("--tls-key", key_path, true, &t->key_pem, &t->key_len);
	if (st != GS_OK)
		goto out_free;
	st = gs_tls_key_matches(key_path, cert_path, t, crts[0]);
	if (st != GS_OK)
		goto out_free;
	if (client_ca_path) {
		st = gs_tls_read("--tls-client-ca", client_ca_path, false, &t->client_ca_pem, &len);
		if (st != GS_OK)
			goto out_free;
		st = gs_tls_certs("--tls-client-ca", client_ca_path, t->client_ca_pem, len, false, &cas, &n_cas);
		if (st != GS_OK)
			goto out_free;
		t->n_client_cas = (int)n_cas;
	}
	gs_tls_certs_free(crts, n_crts);
	gs_tls_certs_free(cas, n_cas);
	*out = t;
	return GS_OK;
out_free:
	gs_tls_certs_free(crts, n_crts);
	gs_tls_certs_free(cas, n_cas);
	gs_tls_free(t);
	return st;
}

void gs_tls_free(struct gs_tls *t)
{
	if (!t)
		return;
	if (t->key_pem)
		explicit_bzero(t->key_pem, t->key_len);
	free(t->key_pem);
	free(t->cert_pem);
	free(t->client_ca_pem);
	free(t);
}

enum gs_tls_peer gs_tls_verify_peer(void *gnutls_session, char *why, size_t cap)
{
	gnutls_session_t s = gnutls_session;
	gnutls_typed_vdata_st purpose = { .type = GNUTLS_DT_KEY_PURPOSE_OID, .data = (void *)GNUTLS_KP_TLS_WWW_CLIENT };
	gnutls_datum_t text = { 0 };
	unsigned status = 0, n = 0;
	int rc;

	if (!s || !gnutls_certificate_get_peers(s, &n) || n == 0) {
		snprintf(why, cap, "a client certificate is required: this server accepts only clients with a "
				   "certificate issued by its client CA");
		return GS_TLS_PEER_MISSING;
	}
	rc = gnutls_certificate_verify_peers(s, &purpose, 1, &status);
	if (rc == GNUTLS_E_NO_CERTIFICATE_FOUND) {
		snprintf(why, cap, "a client certificate is required");
		return GS_TLS_PEER_MISSING;
	}
	if (rc < 0) {
		snprintf(why, cap, "the client certificate cannot be verified: %s", gnutls_strerror(rc));
		return GS_TLS_PEER_UNTRUSTED;
	}
	if (status == 0)
		return GS_TLS_PEER_OK;
	if (gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &text, 0) >= 0) {
		int n_text = (int)text.size;
		while (n_text > 0 && (text.data[n_text - 1] == ' ' || text.data[n_text - 1] == '.' ||
				      text.data[n_text - 1] == '\n'))
			n_text--;
		snprintf(why, cap, "the client certificate is not accepted: %.*s", n_text, (const char *)text.data);
		gnutls_free(text.data);
	} else {
		snprintf(why, cap, "the client certificate is not accepted (verification status 0x%x)", status);
	}
	return GS_TLS_PEER_UNTRUSTED;
}
