/* net: mutual TLS 1.3 on the engine link, with OpenSSL (gs_net.h): the cluster credentials and
 * the role checks, the handshakes on both sides with a deadline and a reason for every
 * refusal, and the TLS transport of gs_stream.
 *
 * One SSL object per connection, used by at most one thread at a time: every SSL_* call on it
 * is made under its mutex, and the mutex is never held while waiting (the socket is
 * non-blocking; stream.c polls). The error queue of OpenSSL is per thread and is emptied before
 * each call. */
#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "gs_util.h"
#include "net_internal.h"

#define GS_TLS_VERIFY_DEPTH 4 /* CA, intermediates, leaf */

struct gs_cluster_tls {
	SSL_CTX             *ctx;
	enum gs_cluster_role self, peer;
	char                 subject[256];
};

/* One connection. */
struct tls_conn {
	SSL            *ssl;
	pthread_mutex_t mu;
	bool            done;        /* handshake complete */
	bool            confirmed;   /* client: the server sent a session ticket after checking us */
	char            peer_subject[256]; /* the peer's certificate, as verify_cb saw it */
	char            role_why[320]; /* set by verify_cb when the peer's role is wrong */
};

/* ---- names and roles --------------------------------------------------------------------- */

static void name_text(X509_NAME *n, char *buf, size_t cap)
{
	BIO *b = BIO_new(BIO_s_mem());
	int len;

	buf[0] = '\0';
	if (!b)
		return;
	X509_NAME_print_ex(b, n, 0, XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB);
	len = BIO_read(b, buf, (int)cap - 1);
	buf[len > 0 ? len : 0] = '\0';
	BIO_free(b);
}

static void ou_text(X509 *x, char *buf, size_t cap)
{
	X509_NAME *n = X509_get_subject_name(x);
	int i = X509_NAME_get_index_by_NID(n, NID_organizationalUnitName, -1);
	const ASN1_STRING *s = i >= 0 ? X509_NAME_ENTRY_get_data(X509_NAME_get_entry(n, i)) : NULL;

	snprintf(buf, cap, "%.*s", s ? ASN1_STRING_length(s) : 0, s ? (const char *)ASN1_STRING_get0_data(s) : "");
	if (i >= 0 && X509_NAME_get_index_by_NID(n, NID_organizationalUnitName, i) >= 0)
		snprintf(buf, cap, "(several)"); /* one role per certificate */
}

static const char *a_role(enum gs_cluster_role r)
{
	return r == GS_ROLE_ENGINE ? "an engine" : "a coordinator";
}

/* The role x was issued for: extendedKeyUsage exactly serverAuth (coordinator) or exactly
 * clientAuth (engine), and the subject OU naming the same role. -1 otherwise, with why. */
static int cert_role(X509 *x, char *why, size_t cap)
{
	uint32_t xku = (X509_get_extension_flags(x) & EXFLAG_XKUSAGE) ? X509_get_extended_key_usage(x) : 0;
	bool server = xku & XKU_SSL_SERVER, client = xku & XKU_SSL_CLIENT;
	char ou[64], subj[256];
	int role = -1;

	ou_text(x, ou, sizeof(ou));
	if (server && !client && !strcmp(ou, "coordinator"))
		role = GS_ROLE_COORDINATOR;
	else if (client && !server && !strcmp(ou, "engine"))
		role = GS_ROLE_ENGINE;
	if (role < 0) {
		name_text(X509_get_subject_name(x), subj, sizeof(subj));
		snprintf(why, cap, "certificate '%.160s' is not issued for one role (OU=%.40s, extendedKeyUsage %s%s%s)", subj,
			 ou[0] ? ou : "none", !(X509_get_extension_flags(x) & EXFLAG_XKUSAGE) ? "missing" : "",
			 server ? "serverAuth " : "", client ? "clientAuth" : "");
	}
	return role;
}

/* ---- errors ------------------------------------------------------------------------------ */

/* The reason of the most recent OpenSSL error of this thread (the queue is emptied). */
static void openssl_reason(char *buf, size_t cap)
{
	unsigned long e, last = 0;

	while ((e = ERR_get_error()) != 0)
		last = e;
	if (!last) {
		snprintf(buf, cap, "%s", "no further detail from OpenSSL");
		return;
	}
	const char *r = ERR_reason_error_string(last);
	if (r)
		snprintf(buf, cap, "%s", r);
	else
		ERR_error_string_n(last, buf, cap);
}

/* The reason code of the first queued error, without taking it off the queue. */
static int first_reason(void)
{
	unsigned long e = ERR_peek_error();
	return e ? ERR_GET_REASON(e) : 0;
}

static bool is_cert_alert(int reason)
{
	switch (reason) {
	case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
	case SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE:
	case SSL_R_SSLV3_ALERT_CERTIFICATE_REVOKED:
	case SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED:
	case SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN:
	case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
	case SSL_R_TLSV1_ALERT_ACCESS_DENIED:
	case SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED:
	case SSL_R_TLSV1_ALERT_DECRYPT_ERROR:
		return true;
	default:
		return false;
	}
}

/* After a failed SSL call: which class, and the reason in gs_errorf. peer names the other side
 * ("the engine", "the coordinator"). */
static enum gs_auth_fail classify(struct tls_conn *c, int ssl_err, int saved_errno, const char *peer)
{
	long vr = SSL_get_verify_result(c->ssl);
	int reason = first_reason();
	const char *subj = c->peer_subject;
	char why[256];

	if (c->role_why[0]) {
		ERR_clear_error();
		gs_errorf(GS_ERR_IO, "%s presented a certificate of the wrong role: %s", peer, c->role_why);
		return GS_AUTH_WRONG_ROLE;
	}
	if (vr != X509_V_OK) {
		ERR_clear_error();
		const char *vs = X509_verify_cert_error_string(vr);
		if (vr == X509_V_ERR_CERT_HAS_EXPIRED || vr == X509_V_ERR_CERT_NOT_YET_VALID) {
			gs_errorf(GS_ERR_IO, "%s's certificate '%s' is not valid now: %s", peer, subj, vs);
			return GS_AUTH_EXPIRED;
		}
		if (vr == X509_V_ERR_INVALID_PURPOSE) {
			gs_errorf(GS_ERR_IO, "%s presented a certificate of the wrong role: '%s': %s (extendedKeyUsage)",
				  peer, subj, vs);
			return GS_AUTH_WRONG_ROLE;
		}
		gs_errorf(GS_ERR_IO, "%s's certificate '%s' is not trusted: %s", peer, subj, vs);
		return GS_AUTH_UNTRUSTED;
	}
	if (ssl_err == SSL_ERROR_ZERO_RETURN || (ssl_err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) ||
	    reason == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
		ERR_clear_error();
		gs_errorf(GS_ERR_IO, "%s closed the connection during the TLS handshake%s%s", peer,
			  saved_errno ? ": " : "", saved_errno ? strerror(saved_errno) : "");
		return GS_AUTH_CLOSED;
	}
	openssl_reason(why, sizeof(why));
	if (reason == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE) {
		gs_errorf(GS_ERR_IO, "%s presented no certificate (%s)", peer, why);
		return GS_AUTH_NO_CERT;
	}
	if (is_cert_alert(reason)) {
		gs_errorf(GS_ERR_IO, "%s refused this side's certificate (TLS alert: %s)", peer, why);
		return GS_AUTH_PEER_REJECTED;
	}
	gs_errorf(GS_ERR_IO, "TLS handshake with %s failed: %s", peer, why);
	return GS_AUTH_PROTOCOL;
}

/* ---- verification callbacks -------------------------------------------------------------- */

static int conn_index = -1; /* SSL ex_data slot of struct tls_conn */
static pthread_once_t conn_index_once = PTHREAD_ONCE_INIT;

static void conn_index_init(void)
{
	conn_index = SSL_get_ex_new_index(0, "gs_tls_conn", NULL, NULL, NULL);
}

/* The chain checks are OpenSSL's; at the leaf this adds the role. */
static int verify_cb(int ok, X509_STORE_CTX *xs)
{
	SSL *ssl = X509_STORE_CTX_get_ex_data(xs, SSL_get_ex_data_X509_STORE_CTX_idx());
	struct tls_conn *c = ssl ? SSL_get_ex_data(ssl, conn_index) : NULL;
	struct gs_cluster_tls *t = ssl ? SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl)) : NULL;
	char why[256];
	int role;

	if (c && !c->peer_subject[0] && X509_STORE_CTX_get0_cert(xs))
		name_text(X509_get_subject_name(X509_STORE_CTX_get0_cert(xs)), c->peer_subject, sizeof(c->peer_subject));
	if (!ok || !c || !t || X509_STORE_CTX_get_error_depth(xs) != 0)
		return ok;
	role = cert_role(X509_STORE_CTX_get_current_cert(xs), why, sizeof(why));
	if (role == (int)t->peer)
		return 1;
	if (role >= 0) {
		char subj[256];
		name_text(X509_get_subject_name(X509_STORE_CTX_get_current_cert(xs)), subj, sizeof(subj));
		snprintf(c->role_why, sizeof(c->role_why), "certificate '%.200s' is issued to %s, expected %s", subj,
			 a_role((enum gs_cluster_role)role), a_role(t->peer));
	} else {
		snprintf(c->role_why, sizeof(c->role_why), "%.250s; expected %s", why, a_role(t->peer));
	}
	X509_STORE_CTX_set_error(xs, X509_V_ERR_APPLICATION_VERIFICATION);
	return 0;
}

/* Client: a TLS 1.3 server sends its session ticket only after it has checked our
 * certificate, so the ticket is the server's "accepted". The session is not kept. */
static int new_session_cb(SSL *ssl, SSL_SESSION *sess)
{
	struct tls_conn *c = SSL_get_ex_data(ssl, conn_index);

	(void)sess;
	if (c)
		c->confirmed = true;
	return 0;
}

/* ---- credentials ------------------------------------------------------------------------- */

static const char *const flag_of[] = { "--cluster-ca", "--cluster-cert", "--cluster-key" };

#define PEM_FILE_MAX (1u << 20) /* no certificate bundle or key is larger */

/* Reads a PEM file into memory, with messages naming the flag and the file; private: a key,
 * refused when group or others may access it. The caller frees it (a key: pem_free, which wipes it). */
static enum gs_status read_pem(int which, const char *path, bool private, char **buf, size_t *len)
{
	char what[600];

	*buf = NULL;
	if (!path || !*path)
		return gs_errorf(GS_ERR_INVALID_ARG, "%s: no file given", flag_of[which]);
	snprintf(what, sizeof(what), "%s %.500s", flag_of[which], path);
	return gs_read_file_checked(what, path, private, PEM_FILE_MAX, buf, len);
}

static void pem_free(char *buf, size_t len)
{
	if (buf)
		OPENSSL_cleanse(buf, len);
	free(buf);
}

static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
	(void)buf, (void)size, (void)rwflag;
	*(bool *)u = true;
	return -1;
}

static enum gs_status load_ca(SSL_CTX *ctx, const char *path)
{
	X509_STORE *store = SSL_CTX_get_cert_store(ctx);
	X509 *x;
	BIO *bio;
	char *pem;
	size_t len;
	int n = 0;

	GS_TRY(read_pem(0, path, false, &pem, &len));
	bio = BIO_new_mem_buf(pem, (int)len);
	if (!bio) {
		free(pem);
		return gs_errorf(GS_ERR_NOMEM, "--cluster-ca %s: out of memory", path);
	}
	while ((x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
		if (X509_STORE_add_cert(store, x) != 1) {
			char why[256];

			X509_free(x);
			BIO_free(bio);
			free(pem);
			openssl_reason(why, sizeof(why));
			return gs_errorf(GS_ERR_FORMAT, "--cluster-ca %s: %s", path, why);
		}
		X509_free(x);
		n++;
	}
	BIO_free(bio);
	free(pem);
	ERR_clear_error(); /* the end of the file reads as "no start line" */
	if (n == 0)
		return gs_errorf(GS_ERR_FORMAT, "--cluster-ca %s: no PEM certificate in it", path);
	return GS_OK;
}

static enum gs_status load_cert_and_key(struct gs_cluster_tls *t, const char *cert, const char *key)
{
	char why[256];
	bool wanted_pass = false;
	EVP_PKEY *pk;
	BIO *bio;
	char *pem;
	size_t len;

	GS_TRY(read_pem(1, cert, false, &pem, &len));
	free(pem);
	if (SSL_CTX_use_certificate_chain_file(t->ctx, cert) != 1) {
		openssl_reason(why, sizeof(why));
		return gs_errorf(GS_ERR_FORMAT, "--cluster-cert %s: %s", cert, why);
	}
	GS_TRY(read_pem(2, key, true, &pem, &len));
	bio = BIO_new_mem_buf(pem, (int)len);
	pk = bio ? PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, &wanted_pass) : NULL;
	BIO_free(bio);
	pem_free(pem, len);
	if (!pk) {
		openssl_reason(why, sizeof(why));
		if (wanted_pass)
			return gs_errorf(GS_ERR_UNSUPPORTED, "--cluster-key %s: the key is encrypted; give an unencrypted "
					 "key (readable by its owner only)", key);
		return gs_errorf(GS_ERR_FORMAT, "--cluster-key %s: not a PEM private key (%s)", key, why);
	}
	if (SSL_CTX_use_PrivateKey(t->ctx, pk) != 1 || SSL_CTX_check_private_key(t->ctx) != 1) {
		EVP_PKEY_free(pk);
		ERR_clear_error();
		return gs_errorf(GS_ERR_INVALID_ARG, "--cluster-key %s is not the key of --cluster-cert %s", key, cert);
	}
	EVP_PKEY_free(pk);
	return GS_OK;
}

/* Our own certificate: issued for our role, chained to the CA, valid now. */
static enum gs_status check_own_cert(struct gs_cluster_tls *t, const struct gs_cluster_files *f)
{
	X509 *x = SSL_CTX_get0_certificate(t->ctx);
	STACK_OF(X509) *chain = NULL;
	X509_STORE_CTX *xs;
	char why[320];
	int role, ok;

	name_text(X509_get_subject_name(x), t->subject, sizeof(t->subject));
	role = cert_role(x, why, sizeof(why));
	if (role != (int)t->self) {
		if (role >= 0)
			snprintf(why, sizeof(why), "it is issued to %s (OU=%s)", a_role((enum gs_cluster_role)role),
				 gs_cluster_role_name((enum gs_cluster_role)role));
		return gs_errorf(GS_ERR_INVALID_ARG, "--cluster-cert %s cannot serve as the %s's certificate: %s", f->cert,
				 gs_cluster_role_name(t->self), why);
	}
	SSL_CTX_get0_chain_certs(t->ctx, &chain);
	xs = X509_STORE_CTX_new();
	if (!xs || X509_STORE_CTX_init(xs, SSL_CTX_get_cert_store(t->ctx), x, chain) != 1) {
		X509_STORE_CTX_free(xs);
		return gs_errorf(GS_ERR_NOMEM, "out of memory checking --cluster-cert %s", f->cert);
	}
	X509_STORE_CTX_set_purpose(xs, t->self == GS_ROLE_COORDINATOR ? X509_PURPOSE_SSL_SERVER : X509_PURPOSE_SSL_CLIENT);
	ok = X509_verify_cert(xs);
	int err = X509_STORE_CTX_get_error(xs);
	X509_STORE_CTX_free(xs);
	ERR_clear_error();
	if (ok == 1)
		return GS_OK;
	return gs_errorf(GS_ERR_INVALID_ARG, "--cluster-cert %s %s --cluster-ca %s: %s", f->cert,
			 err == X509_V_ERR_CERT_HAS_EXPIRED || err == X509_V_ERR_CERT_NOT_YET_VALID ? "is not valid now under"
												    : "does not verify against",
			 f->ca, X509_verify_cert_error_string(err));
}

enum gs_status gs_cluster_tls_create(const struct gs_cluster_files *f, enum gs_cluster_role self,
				     struct gs_cluster_tls **out)
{
	struct gs_cluster_tls *t = calloc(1, sizeof(*t));
	enum gs_status st;

	*out = NULL;
	pthread_once(&conn_index_once, conn_index_init);
	if (!t || conn_index < 0) {
		free(t);
		return gs_errorf(GS_ERR_NOMEM, "out of memory for the cluster TLS context");
	}
	t->self = self;
	t->peer = self == GS_ROLE_COORDINATOR ? GS_ROLE_ENGINE : GS_ROLE_COORDINATOR;
	ERR_clear_error();
	t->ctx = SSL_CTX_new(self == GS_ROLE_COORDINATOR ? TLS_server_method() : TLS_client_method());
	if (!t->ctx) {
		free(t);
		return gs_errorf(GS_ERR_INTERNAL, "OpenSSL cannot make a TLS context");
	}
	SSL_CTX_set_app_data(t->ctx, t);
	if (SSL_CTX_set_min_proto_version(t->ctx, TLS1_3_VERSION) != 1 ||
	    SSL_CTX_set_max_proto_version(t->ctx, TLS1_3_VERSION) != 1) {
		st = gs_errorf(GS_ERR_UNSUPPORTED, "this OpenSSL cannot do TLS 1.3");
		goto out_free_ctx;
	}
	SSL_CTX_set_options(t->ctx, SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_COMPRESSION);
	SSL_CTX_set_mode(t->ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	SSL_CTX_clear_mode(t->ctx, SSL_MODE_AUTO_RETRY);
	SSL_CTX_set_verify(t->ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, verify_cb);
	SSL_CTX_set_verify_depth(t->ctx, GS_TLS_VERIFY_DEPTH);
	/* The peer's certificate must be usable for its side of TLS (extendedKeyUsage). */
	X509_VERIFY_PARAM_set_purpose(SSL_CTX_get0_param(t->ctx), t->peer == GS_ROLE_ENGINE ? X509_PURPOSE_SSL_CLIENT
											  : X509_PURPOSE_SSL_SERVER);
	if (self == GS_ROLE_COORDINATOR) {
		/* One ticket, never resumable (no cache, and resumed sessions are refused): it only
		 * tells the engine that its certificate was accepted. */
		SSL_CTX_set_session_cache_mode(t->ctx, SSL_SESS_CACHE_OFF);
		SSL_CTX_set_num_tickets(t->ctx, 1);
	} else {
		SSL_CTX_set_session_cache_mode(t->ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
		SSL_CTX_sess_set_new_cb(t->ctx, new_session_cb);
	}
	if ((st = load_ca(t->ctx, f->ca)) != GS_OK || (st = load_cert_and_key(t, f->cert, f->key)) != GS_OK ||
	    (st = check_own_cert(t, f)) != GS_OK)
		goto out_free_ctx;
	*out = t;
	return GS_OK;

out_free_ctx:
	ERR_clear_error();
	SSL_CTX_free(t->ctx);
	free(t);
	return st;
}

void gs_cluster_tls_free(struct gs_cluster_tls *t)
{
	if (!t)
		return;
	SSL_CTX_free(t->ctx);
	free(t);
}

const char *gs_cluster_tls_subject(const struct gs_cluster_tls *t)
{
	return t->subject;
}

/* ---- the TLS transport ------------------------------------------------------------------- */

static long tls_io(struct gs_stream *s, void *rbuf, const void *wbuf, size_t n, short *want)
{
	struct tls_conn *c = s->ctx;
	int chunk = n > (1u << 30) ? 1 << 30 : (int)n, r, err;
	char why[256];

	pthread_mutex_lock(&c->mu);
	ERR_clear_error();
	errno = 0;
	r = rbuf ? SSL_read(c->ssl, rbuf, chunk) : SSL_write(c->ssl, wbuf, chunk);
	if (r > 0) {
		pthread_mutex_unlock(&c->mu);
		return r;
	}
	err = SSL_get_error(c->ssl, r);
	int saved = errno;
	switch (err) {
	case SSL_ERROR_WANT_READ:
		*want = POLLIN;
		r = -1;
		break;
	case SSL_ERROR_WANT_WRITE:
		*want = POLLOUT;
		r = -1;
		break;
	case SSL_ERROR_ZERO_RETURN:
		r = rbuf ? 0 : -2;
		if (r == -2)
			gs_errorf(GS_ERR_IO, "the peer closed the TLS stream");
		break;
	case SSL_ERROR_SYSCALL:
		r = -2;
		if (ERR_peek_error() == 0 && saved == 0 && rbuf) {
			r = 0; /* EOF */
			break;
		}
		openssl_reason(why, sizeof(why));
		gs_errorf(GS_ERR_IO, "%s", saved ? strerror(saved) : why);
		break;
	default:
		r = -2;
		openssl_reason(why, sizeof(why));
		gs_errorf(GS_ERR_IO, "TLS: %s", why);
		break;
	}
	ERR_clear_error();
	pthread_mutex_unlock(&c->mu);
	return r;
}

static long tls_read(struct gs_stream *s, void *buf, size_t cap, short *want)
{
	return tls_io(s, buf, NULL, cap, want);
}

static long tls_write(struct gs_stream *s, const void *buf, size_t len, short *want)
{
	return tls_io(s, NULL, buf, len, want);
}

static int tls_ready(struct gs_stream *s, short *want)
{
	struct tls_conn *c = s->ctx;
	unsigned char b;
	int r, ready = 1;

	pthread_mutex_lock(&c->mu);
	if (SSL_pending(c->ssl) <= 0) {
		ERR_clear_error();
		r = SSL_peek(c->ssl, &b, 1);
		if (r <= 0) {
			int err = SSL_get_error(c->ssl, r);
			if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
				*want = err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT;
				ready = 0;
			}
		}
		ERR_clear_error();
	}
	pthread_mutex_unlock(&c->mu);
	return ready;
}

static void conn_free(struct tls_conn *c)
{
	SSL_free(c->ssl);
	pthread_mutex_destroy(&c->mu);
	free(c);
}

static void tls_close(struct gs_stream *s)
{
	struct tls_conn *c = s->ctx;

	pthread_mutex_lock(&c->mu);
	if (c->done && !atomic_load(&s->down)) {
		ERR_clear_error();
		SSL_shutdown(c->ssl); /* close_notify if the socket takes it now; never waits */
		ERR_clear_error();
	}
	pthread_mutex_unlock(&c->mu);
	conn_free(c);
}

static const struct gs_stream_iface tls_iface = {
	.name = "TLS",
	.read = tls_read,
	.write = tls_write,
	.ready = tls_ready,
	.close = tls_close,
	.recheck_ms = 100,
};

/* ---- handshakes -------------------------------------------------------------------------- */

static struct tls_conn *conn_new(struct gs_cluster_tls *t, int fd)
{
	struct tls_conn *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->ssl = SSL_new(t->ctx);
	if (!c->ssl || SSL_set_fd(c->ssl, fd) != 1 || SSL_set_ex_data(c->ssl, conn_index, c) != 1) {
		SSL_free(c->ssl);
		free(c);
		return NULL;
	}
	pthread_mutex_init(&c->mu, NULL);
	return c;
}

/* Waits for want on fd until deadline; GS_OK, or GS_AUTH_TIMEOUT in *why. */
static enum gs_status hs_wait(int fd, short want, double deadline, int timeout_ms, const char *peer,
			      enum gs_auth_fail *why)
{
	for (;;) {
		struct pollfd p = { .fd = fd, .events = want };
		int left = gs_net_ms_left(deadline), r;

		if (left == 0)
			break;
		r = poll(&p, 1, left);
		if (r > 0)
			return GS_OK;
		if (r < 0 && errno != EINTR) {
			*why = GS_AUTH_CLOSED;
			return gs_errorf(GS_ERR_IO, "poll during the TLS handshake with %s: %s", peer, strerror(errno));
		}
	}
	*why = GS_AUTH_TIMEOUT;
	return gs_errorf(GS_ERR_IO, "the TLS handshake with %s did not finish within %d ms", peer, timeout_ms);
}

/* Drives the handshake (and, client side, waits for the server's acceptance). */
static enum gs_status handshake(struct tls_conn *c, int fd, bool client, double deadline, int timeout_ms,
				const char *peer, enum gs_auth_fail *why)
{
	for (;;) {
		unsigned char b;
		int r, err, saved;

		ERR_clear_error();
		errno = 0;
		if (!c->done) {
			r = SSL_do_handshake(c->ssl);
			if (r == 1) {
				c->done = true;
				continue;
			}
		} else if (!client || c->confirmed) {
			return GS_OK;
		} else {
			r = SSL_peek(c->ssl, &b, 1);
			if (r > 0 || c->confirmed)
				return GS_OK;
		}
		err = SSL_get_error(c->ssl, r);
		saved = errno;
		if (c->confirmed)
			return GS_OK;
		if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
			GS_TRY(hs_wait(fd, err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline, timeout_ms, peer, why));
			continue;
		}
		*why = classify(c, err, saved, peer);
		return GS_ERR_IO;
	}
}

/* The connection as a stream, once the peer passed every check. */
static enum gs_status finish(struct gs_cluster_tls *t, struct tls_conn *c, int fd, const char *peer,
			     struct gs_stream **out, enum gs_auth_fail *why)
{
	X509 *pc = SSL_get0_peer_certificate(c->ssl);
	char role_why[256], subj[256];
	struct gs_stream *s;

	if (SSL_version(c->ssl) != TLS1_3_VERSION || SSL_session_reused(c->ssl)) {
		*why = GS_AUTH_PROTOCOL;
		return gs_errorf(GS_ERR_IO, "%s: %s", peer, SSL_session_reused(c->ssl) ? "a resumed session" : "not TLS 1.3");
	}
	if (!pc || SSL_get_verify_result(c->ssl) != X509_V_OK) {
		*why = pc ? GS_AUTH_UNTRUSTED : GS_AUTH_NO_CERT;
		return gs_errorf(GS_ERR_IO, "%s: %s", peer, pc ? "certificate not verified" : "no certificate");
	}
	if (cert_role(pc, role_why, sizeof(role_why)) != (int)t->peer) {
		*why = GS_AUTH_WRONG_ROLE;
		return gs_errorf(GS_ERR_IO, "%s presented a certificate of the wrong role", peer);
	}
	if (gs_stream_new(fd, &tls_iface, c, &s) != GS_OK) {
		*why = GS_AUTH_OK;
		return GS_ERR_NOMEM;
	}
	name_text(X509_get_subject_name(pc), subj, sizeof(subj));
	snprintf(s->desc, sizeof(s->desc), "%s %s, peer %.120s", SSL_get_version(c->ssl),
		 SSL_get_cipher_name(c->ssl), subj);
	*out = s;
	*why = GS_AUTH_OK;
	return GS_OK;
}

enum gs_status gs_cluster_tls_accept(struct gs_cluster_tls *t, int fd, int timeout_ms, struct gs_stream **out,
				     enum gs_auth_fail *why)
{
	double deadline = gs_now_s() + timeout_ms / 1e3;
	unsigned char first[2];
	struct tls_conn *c;
	ssize_t n;
	enum gs_status st;

	*out = NULL;
	*why = GS_AUTH_PROTOCOL;
	GS_TRY(gs_net_set_nonblocking(fd));
	/* Whatever the peer sends first tells a plaintext engine from a TLS one. */
	for (;;) {
		n = recv(fd, first, sizeof(first), MSG_PEEK);
		if (n > 0 || n == 0)
			break;
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK) {
			*why = GS_AUTH_CLOSED;
			return gs_errorf(GS_ERR_IO, "the engine's connection failed: %s", strerror(errno));
		}
		GS_TRY(hs_wait(fd, POLLIN, deadline, timeout_ms, "the engine", why));
	}
	if (n == 0) {
		*why = GS_AUTH_CLOSED;
		return gs_errorf(GS_ERR_IO, "the engine closed the connection before the TLS handshake");
	}
	if (!gs_net_looks_like_tls(first, (size_t)n)) {
		*why = GS_AUTH_NOT_TLS;
		return gs_errorf(GS_ERR_IO, "the engine did not start a TLS handshake (first bytes %02x %02x: plaintext "
				 "engine-link frames?); this link requires mutual TLS", first[0], n > 1 ? first[1] : 0);
	}
	c = conn_new(t, fd);
	if (!c)
		return gs_errorf(GS_ERR_NOMEM, "out of memory for a TLS connection");
	SSL_set_accept_state(c->ssl);
	st = handshake(c, fd, false, deadline, timeout_ms, "the engine", why);
	if (st == GS_OK)
		st = finish(t, c, fd, "the engine", out, why);
	if (st != GS_OK)
		conn_free(c);
	return st;
}

enum gs_status gs_cluster_tls_connect(struct gs_cluster_tls *t, int fd, const char *host, int timeout_ms,
				      struct gs_stream **out, enum gs_auth_fail *why)
{
	double deadline = gs_now_s() + timeout_ms / 1e3;
	unsigned char ip[16];
	struct tls_conn *c;
	enum gs_status st;
	bool is_ip = inet_pton(AF_INET, host, ip) == 1 || inet_pton(AF_INET6, host, ip) == 1;

	*out = NULL;
	*why = GS_AUTH_PROTOCOL;
	GS_TRY(gs_net_set_nonblocking(fd));
	c = conn_new(t, fd);
	if (!c)
		return gs_errorf(GS_ERR_NOMEM, "out of memory for a TLS connection");
	/* The coordinator's certificate must name the address this engine was given. */
	if (is_ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), host) != 1
		  : (SSL_set1_host(c->ssl, host) != 1 || SSL_set_tlsext_host_name(c->ssl, host) != 1)) {
		conn_free(c);
		ERR_clear_error();
		*why = GS_AUTH_PROTOCOL;
		return gs_errorf(GS_ERR_INVALID_ARG, "cannot check the coordinator's certificate against \"%s\"", host);
	}
	SSL_set_connect_state(c->ssl);
	st = handshake(c, fd, true, deadline, timeout_ms, "the coordinator", why);
	if (st == GS_OK)
		st = finish(t, c, fd, "the coordinator", out, why);
	if (st != GS_OK)
		conn_free(c);
	return st;
}
