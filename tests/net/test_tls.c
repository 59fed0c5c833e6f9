/* The engine link's security layer (net/gs_net.h) over real sockets, with certificates the
 * openssl CLI makes at test time (make_test_certs.sh: deploy/make-cluster-certs.sh, a second
 * CA, an expired and a two-role certificate):
 *   1. credentials: a key that group/others can read, a missing file, a key of another
 *      certificate, a certificate of the other role, of another CA, expired, or of two roles:
 *      each refused with a message naming the flag and the file;
 *   2. a coordinator and an engine agree on TLS 1.3 over TCP loopback; then each side reads in one thread while
 *      another thread writes on the same stream, thousands of frames of up to 64 KiB both ways
 *      (socket buffers fill up: WANT_READ/WANT_WRITE), every byte checked; a reader blocked in
 *      gs_stream_wait returns when another thread calls gs_stream_shutdown;
 *   3. every refusal, with its class: plaintext, no certificate, another CA, the coordinator's
 *      certificate used by a client, a two-role certificate, an expired one, TLS 1.2 only, a
 *      silent peer (timeout), the wrong host name, a coordinator that refuses the engine (seen
 *      by the engine at connect time), a plaintext coordinator (closed).
 * usage: test_tls MAKE_TEST_CERTS_SH SCRATCH */
#include <errno.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "gs_net.h"
#include "gs_test.h"
#include "gs_util.h"

static char certs[1024];

static const char *P(const char *rel)
{
	static char buf[8][1200];
	static int k;
	char *b = buf[k++ & 7];
	snprintf(b, sizeof(buf[0]), "%s/%s", certs, rel);
	return b;
}

static struct gs_cluster_files files(const char *dir, const char *name)
{
	char c[64], k[64];
	snprintf(c, sizeof(c), "%s/%s.crt", dir, name);
	snprintf(k, sizeof(k), "%s/%s.key", dir, name);
	return (struct gs_cluster_files){ .ca = strdup(P("cluster/ca.crt")), .cert = strdup(P(c)), .key = strdup(P(k)) };
}

static void files_free(struct gs_cluster_files *f)
{
	free((void *)f->ca), free((void *)f->cert), free((void *)f->key);
}

/* ---- 1. credentials ---------------------------------------------------------------------- */

static void expect_refused(struct gs_cluster_files f, enum gs_cluster_role role, enum gs_status want, const char *has1,
			   const char *has2)
{
	struct gs_cluster_tls *t = NULL;
	enum gs_status st = gs_cluster_tls_create(&f, role, &t);
	CHECK_MSG(st == want && t == NULL, "status %d, want %d: %s", st, want, gs_last_error());
	CHECK_MSG(strstr(gs_last_error(), has1) && strstr(gs_last_error(), has2), "message: %s (want '%s' and '%s')",
		  gs_last_error(), has1, has2);
	fprintf(stderr, "ok   refused: %s\n", gs_last_error());
	gs_clear_error();
	gs_cluster_tls_free(t);
	files_free(&f);
}

static void test_credentials(const char *scratch)
{
	char loose[1200], cmd[4000];
	struct gs_cluster_files f;

	/* A copy of the engine key that group and others may read. */
	snprintf(loose, sizeof(loose), "%s/loose.key", scratch);
	snprintf(cmd, sizeof(cmd), "cp '%s' '%s' && chmod 644 '%s'", P("cluster/engine.key"), loose, loose);
	CHECK(system(cmd) == 0);
	f = files("cluster", "engine");
	free((void *)f.key);
	f.key = strdup(loose);
	expect_refused(f, GS_ROLE_ENGINE, GS_ERR_INVALID_ARG, "--cluster-key", "loose.key: may be read or written by group or others (mode 0644)");

	f = files("cluster", "engine");
	free((void *)f.cert);
	f.cert = strdup(P("cluster/nothere.crt"));
	expect_refused(f, GS_ROLE_ENGINE, GS_ERR_IO, "--cluster-cert", "nothere.crt: cannot open");

	f = files("cluster", "engine");
	free((void *)f.key);
	f.key = strdup(P("cluster/coordinator.key"));
	expect_refused(f, GS_ROLE_ENGINE, GS_ERR_INVALID_ARG, "coordinator.key is not the key of --cluster-cert", "engine.crt");

	expect_refused(files("cluster", "engine"), GS_ROLE_COORDINATOR, GS_ERR_INVALID_ARG, "engine.crt cannot serve as the coordinator's",
		       "issued to an engine");
	expect_refused(files("cluster", "coordinator"), GS_ROLE_ENGINE, GS_ERR_INVALID_ARG, "cannot serve as the engine's",
		       "issued to a coordinator");
	expect_refused(files("other", "engine"), GS_ROLE_ENGINE, GS_ERR_INVALID_ARG, "does not verify against --cluster-ca",
		       "local issuer");
	expect_refused(files("cluster", "engine-expired"), GS_ROLE_ENGINE, GS_ERR_INVALID_ARG, "is not valid now", "expired");
	expect_refused(files("cluster", "engine-both"), GS_ROLE_ENGINE, GS_ERR_INVALID_ARG, "not issued for one role",
		       "serverAuth");
	f = files("cluster", "engine");
	free((void *)f.ca);
	f.ca = strdup(P("cluster/engine.key"));
	expect_refused(f, GS_ROLE_ENGINE, GS_ERR_FORMAT, "--cluster-ca", "no PEM certificate");
}

/* ---- handshakes between two threads ----------------------------------------------------- */

struct side {
	struct gs_cluster_tls *t;
	int                    fd;
	const char            *host;    /* client: the name to check; NULL: server */
	int                    timeout_ms;
	enum gs_status         st;
	enum gs_auth_fail      why;
	struct gs_stream      *s;
	char                   err[512];
	double                 seconds;
};

static void *side_run(void *arg)
{
	struct side *x = arg;
	double t0 = gs_now_s();

	x->st = x->host ? gs_cluster_tls_connect(x->t, x->fd, x->host, x->timeout_ms, &x->s, &x->why)
			: gs_cluster_tls_accept(x->t, x->fd, x->timeout_ms, &x->s, &x->why);
	x->seconds = gs_now_s() - t0;
	snprintf(x->err, sizeof(x->err), "%s", gs_last_error());
	if (x->st != GS_OK)
		close(x->fd);
	gs_clear_error();
	return NULL;
}

/* A peer written with OpenSSL directly, to behave as our code never would. */
struct raw {
	SSL_CTX *ctx;
	int      fd;
	bool     server;
	int      result;       /* SSL_do_handshake */
	bool     got_alert;    /* client: the first read failed (the server refused us) */
};

static SSL_CTX *raw_ctx(bool server, const char *cert, const char *key, const char *verify_ca, int max_version)
{
	SSL_CTX *ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
	GS_ASSERT(ctx != NULL);
	if (max_version)
		SSL_CTX_set_max_proto_version(ctx, max_version);
	if (cert) {
		GS_ASSERT(SSL_CTX_use_certificate_chain_file(ctx, cert) == 1);
		GS_ASSERT(SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) == 1);
	}
	if (verify_ca) {
		GS_ASSERT(SSL_CTX_load_verify_locations(ctx, verify_ca, NULL) == 1);
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
	}
	return ctx;
}

static void *raw_run(void *arg)
{
	struct raw *r = arg;
	SSL *ssl = SSL_new(r->ctx);
	char b[16];

	SSL_set_fd(ssl, r->fd);
	r->result = r->server ? SSL_accept(ssl) : SSL_connect(ssl);
	if (r->result == 1 && !r->server) {
		/* TLS 1.3: a refusal of our certificate arrives after our handshake is done. */
		struct timeval tv = { .tv_sec = 5 };
		setsockopt(r->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		SSL_write(ssl, "\0\0\0\0", 4);
		r->got_alert = SSL_read(ssl, b, sizeof(b)) <= 0;
	}
	if (r->result == 1 && r->server) {
		struct timeval tv = { .tv_sec = 2 };
		setsockopt(r->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		SSL_read(ssl, b, sizeof(b));
	}
	ERR_clear_error();
	SSL_free(ssl);
	close(r->fd);
	return NULL;
}

static void socket_pair(int sv[2])
{
	GS_ASSERT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
}

/* Our coordinator against a raw client. */
static void server_vs_raw(struct gs_cluster_tls *coord, SSL_CTX *raw_client, enum gs_auth_fail want, const char *has,
			  const char *what)
{
	int sv[2];
	pthread_t a, b;
	struct side srv = { .t = coord, .timeout_ms = 3000 };
	struct raw cli = { .ctx = raw_client, .server = false };

	socket_pair(sv);
	srv.fd = sv[0], cli.fd = sv[1];
	pthread_create(&a, NULL, side_run, &srv);
	pthread_create(&b, NULL, raw_run, &cli);
	pthread_join(a, NULL);
	pthread_join(b, NULL);
	CHECK_MSG(srv.st != GS_OK && srv.why == want && srv.s == NULL, "%s: status %d class %s (want %s): %s", what,
		  srv.st, gs_auth_fail_label(srv.why), gs_auth_fail_label(want), srv.err);
	CHECK_MSG(strstr(srv.err, has) != NULL, "%s: message '%s' lacks '%s'", what, srv.err, has);
	fprintf(stderr, "ok   %s: refused (%s): %s\n", what, gs_auth_fail_label(srv.why), srv.err);
	SSL_CTX_free(raw_client);
}

/* ---- 2. a good link, read and written by two threads on each side ------------------------ */

#define N_MSG   1500
#define MAX_MSG (64 << 10)

struct pump {
	struct gs_stream *s;
	uint64_t          seed;
	bool              ok;
	size_t            bytes;
};

static void fill(uint8_t *b, size_t n, uint64_t *st)
{
	for (size_t i = 0; i < n; i++)
		b[i] = (uint8_t)gs_test_splitmix(st);
}

static void *writer(void *arg)
{
	struct pump *p = arg;
	uint64_t st = p->seed;
	uint8_t *b = malloc(MAX_MSG + 4);

	p->ok = b != NULL;
	for (int i = 0; i < N_MSG && p->ok; i++) {
		size_t n = 1 + (size_t)(gs_test_splitmix(&st) % MAX_MSG);
		b[0] = (uint8_t)(n >> 24), b[1] = (uint8_t)(n >> 16), b[2] = (uint8_t)(n >> 8), b[3] = (uint8_t)n;
		fill(b + 4, n, &st);
		p->ok = gs_stream_write(p->s, b, n + 4) == GS_OK;
		p->bytes += n + 4;
	}
	if (!p->ok)
		fprintf(stderr, "writer: %s\n", gs_last_error());
	free(b);
	return NULL;
}

static bool read_exact(struct gs_stream *s, uint8_t *b, size_t n)
{
	size_t got = 0, r;
	while (got < n) {
		if (gs_stream_read(s, b + got, n - got, 10000, &r) != GS_OK || r == 0)
			return false;
		got += r;
	}
	return true;
}

static void *reader(void *arg)
{
	struct pump *p = arg;
	uint64_t st = p->seed;
	uint8_t *b = malloc(MAX_MSG), *want = malloc(MAX_MSG), hdr[4];

	p->ok = b && want;
	for (int i = 0; i < N_MSG && p->ok; i++) {
		size_t n = 1 + (size_t)(gs_test_splitmix(&st) % MAX_MSG), m;
		fill(want, n, &st);
		/* wait first, as the link's readers do */
		p->ok = gs_stream_wait(p->s, 10000) == 1 && read_exact(p->s, hdr, 4);
		m = (size_t)hdr[0] << 24 | (size_t)hdr[1] << 16 | (size_t)hdr[2] << 8 | hdr[3];
		p->ok = p->ok && m == n && read_exact(p->s, b, n) && memcmp(b, want, n) == 0;
		p->bytes += n + 4;
	}
	if (!p->ok)
		fprintf(stderr, "reader: %s\n", gs_last_error());
	free(b), free(want);
	return NULL;
}

static void *shutdown_later(void *arg)
{
	struct timespec ts = { .tv_nsec = 200 * 1000 * 1000 };
	nanosleep(&ts, NULL);
	gs_stream_shutdown(arg);
	return NULL;
}

/* A TCP connection over loopback, as the engine link has: sv[0] accepted, sv[1] connected. */
static void tcp_pair(int sv[2])
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(a);
	int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;

	GS_ASSERT(l >= 0 && bind(l, (struct sockaddr *)&a, sizeof(a)) == 0 && listen(l, 1) == 0);
	GS_ASSERT(getsockname(l, (struct sockaddr *)&a, &len) == 0);
	sv[1] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	GS_ASSERT(sv[1] >= 0 && connect(sv[1], (struct sockaddr *)&a, sizeof(a)) == 0);
	sv[0] = accept4(l, NULL, NULL, SOCK_CLOEXEC);
	GS_ASSERT(sv[0] >= 0);
	setsockopt(sv[0], IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(sv[1], IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	close(l);
}

/* Both ends of one link over TCP loopback: TLS (coord and eng given) or plaintext. */
static bool link_pair(struct gs_cluster_tls *coord, struct gs_cluster_tls *eng, struct side *srv, struct side *cli)
{
	int sv[2];
	pthread_t a, b;

	tcp_pair(sv);
	*srv = (struct side){ .t = coord, .timeout_ms = 5000, .fd = sv[0] };
	*cli = (struct side){ .t = eng, .host = "127.0.0.1", .timeout_ms = 5000, .fd = sv[1] };
	if (!coord) {
		srv->st = gs_stream_plain(sv[0], &srv->s);
		cli->st = gs_stream_plain(sv[1], &cli->s);
		return srv->st == GS_OK && cli->st == GS_OK;
	}
	pthread_create(&a, NULL, side_run, srv);
	pthread_create(&b, NULL, side_run, cli);
	pthread_join(a, NULL);
	pthread_join(b, NULL);
	return srv->st == GS_OK && cli->st == GS_OK;
}

struct small {
	struct gs_stream *s;
	int               n;
	bool              ok;
};

static void *small_reader(void *arg)
{
	struct small *x = arg;
	uint8_t b[64];
	x->ok = true;
	for (int i = 0; i < x->n && x->ok; i++)
		x->ok = read_exact(x->s, b, sizeof(b)) && b[0] == (uint8_t)i;
	return NULL;
}

#define BULK_BYTES ((size_t)256 << 20)

struct bulk {
	struct gs_stream *s;
	size_t            n;
	bool              ok;
};

static void *bulk_reader(void *arg)
{
	struct bulk *x = arg;
	uint8_t *b = malloc(64 << 10);
	size_t got = 0, r;

	x->ok = b != NULL;
	while (x->ok && got < x->n) {
		x->ok = gs_stream_read(x->s, b, 64 << 10, 10000, &r) == GS_OK && r > 0;
		got += r;
	}
	free(b);
	return NULL;
}

/* For the record: handshake time, small-frame rate and bulk throughput, TLS against
 * plaintext, over TCP loopback (the engine link's frames are mostly small: heartbeats and
 * token events of tens of bytes). */
static void measure(struct gs_cluster_tls *coord, struct gs_cluster_tls *eng)
{
	struct side srv, cli;
	double hs[15], t0;
	const int n_small = 20000;

	for (int i = 0; i < 15; i++) {
		t0 = gs_now_s();
		CHECK(link_pair(coord, eng, &srv, &cli));
		hs[i] = gs_now_s() - t0;
		gs_stream_free(srv.s), gs_stream_free(cli.s);
	}
	for (int i = 1; i < 15; i++) /* insertion sort for the median */
		for (int j = i; j > 0 && hs[j] < hs[j - 1]; j--) {
			double t = hs[j];
			hs[j] = hs[j - 1], hs[j - 1] = t;
		}
	fprintf(stderr, "     TLS handshake over TCP loopback (both sides, engine waits for acceptance): median %.2f ms\n",
		hs[7] * 1e3);
	for (int tls = 0; tls < 2; tls++) {
		pthread_t th[2];
		CHECK(link_pair(tls ? coord : NULL, tls ? eng : NULL, &srv, &cli));
		struct small rd = { .s = srv.s, .n = n_small };
		uint8_t b[64] = { 0 };
		bool ok = true;
		t0 = gs_now_s();
		pthread_create(&th[0], NULL, small_reader, &rd);
		for (int i = 0; i < n_small && ok; i++) {
			b[0] = (uint8_t)i;
			ok = gs_stream_write(cli.s, b, sizeof(b)) == GS_OK;
		}
		pthread_join(th[0], NULL);
		double small_s = gs_now_s() - t0;
		CHECK(ok && rd.ok);
		struct bulk r = { .s = srv.s, .n = BULK_BYTES };
		uint8_t *chunk = calloc(1, 64 << 10);
		GS_ASSERT(chunk != NULL);
		t0 = gs_now_s();
		pthread_create(&th[1], NULL, bulk_reader, &r);
		for (size_t off = 0; off < BULK_BYTES && ok; off += 64 << 10)
			ok = gs_stream_write(cli.s, chunk, 64 << 10) == GS_OK;
		pthread_join(th[1], NULL);
		double bulk_s = gs_now_s() - t0;
		free(chunk);
		CHECK(ok && r.ok);
		fprintf(stderr, "     %-9s 64-byte frames: %.1f us each (%d); bulk (64 KiB writes): %.0f MB/s\n",
			tls ? "TLS 1.3" : "plaintext", small_s / n_small * 1e6, n_small, BULK_BYTES / 1e6 / bulk_s);
		gs_stream_free(srv.s), gs_stream_free(cli.s);
	}
}

static void test_good_link(struct gs_cluster_tls *coord, struct gs_cluster_tls *eng)
{
	pthread_t a, th[4];
	struct side srv, cli;

	link_pair(coord, eng, &srv, &cli);
	CHECK_MSG(srv.st == GS_OK && cli.st == GS_OK, "server %s, client %s", srv.err, cli.err);
	if (srv.st != GS_OK || cli.st != GS_OK) {
		gs_stream_free(srv.s), gs_stream_free(cli.s);
		return;
	}
	CHECK(gs_stream_is_tls(srv.s) && gs_stream_is_tls(cli.s));
	CHECK_MSG(strstr(gs_stream_describe(srv.s), "TLSv1.3") && strstr(gs_stream_describe(srv.s), "OU=engine"), "%s",
		  gs_stream_describe(srv.s));
	CHECK_MSG(strstr(gs_stream_describe(cli.s), "OU=coordinator"), "%s", gs_stream_describe(cli.s));
	fprintf(stderr, "ok   handshake: server sees %s (%.1f ms); engine sees %s (%.1f ms)\n", gs_stream_describe(srv.s),
		srv.seconds * 1e3, gs_stream_describe(cli.s), cli.seconds * 1e3);

	/* Both directions at once, each stream read by one thread and written by another. */
	struct pump sw = { .s = srv.s, .seed = 1 }, cr = { .s = cli.s, .seed = 1 };
	struct pump cw = { .s = cli.s, .seed = 2 }, sr = { .s = srv.s, .seed = 2 };
	double t0 = gs_now_s();
	pthread_create(&th[0], NULL, writer, &sw);
	pthread_create(&th[1], NULL, reader, &cr);
	pthread_create(&th[2], NULL, writer, &cw);
	pthread_create(&th[3], NULL, reader, &sr);
	for (int i = 0; i < 4; i++)
		pthread_join(th[i], NULL);
	double dt = gs_now_s() - t0;
	CHECK(sw.ok && cr.ok && cw.ok && sr.ok);
	CHECK(sw.bytes == cr.bytes && cw.bytes == sr.bytes);
	fprintf(stderr, "ok   %d frames each way at once, %.1f MB, every byte checked (%.0f MB/s both ways)\n", N_MSG,
		(sw.bytes + cw.bytes) / 1e6, (sw.bytes + cw.bytes) / 1e6 / dt);

	/* Nothing to read: a wait ends when another thread shuts the stream down. */
	CHECK(gs_stream_wait(cli.s, 0) == 0);
	pthread_create(&a, NULL, shutdown_later, cli.s);
	t0 = gs_now_s();
	CHECK(gs_stream_wait(cli.s, 5000) == 1);
	CHECK(gs_now_s() - t0 < 2.0);
	pthread_join(a, NULL);
	size_t got = 1;
	uint8_t byte;
	gs_stream_read(cli.s, &byte, 1, 1000, &got);
	CHECK(got == 0);
	gs_clear_error();
	fprintf(stderr, "ok   gs_stream_shutdown wakes a waiting reader\n");
	gs_stream_free(srv.s);
	gs_stream_free(cli.s);
}

/* The engine (our client) against a peer. */
static void client_vs(struct gs_cluster_tls *eng, const char *host, void *(*peer)(void *), void *peer_arg,
		      enum gs_auth_fail want, const char *has, const char *what, int *peer_fd)
{
	int sv[2];
	pthread_t a, b;
	struct side cli = { .t = eng, .host = host, .timeout_ms = 3000 };

	socket_pair(sv);
	cli.fd = sv[0];
	*peer_fd = sv[1];
	pthread_create(&b, NULL, peer, peer_arg);
	pthread_create(&a, NULL, side_run, &cli);
	pthread_join(a, NULL);
	pthread_join(b, NULL);
	CHECK_MSG(cli.st != GS_OK && cli.why == want && cli.s == NULL, "%s: status %d class %s (want %s): %s", what,
		  cli.st, gs_auth_fail_label(cli.why), gs_auth_fail_label(want), cli.err);
	CHECK_MSG(strstr(cli.err, has) != NULL, "%s: message '%s' lacks '%s'", what, cli.err, has);
	fprintf(stderr, "ok   %s: engine refused (%s): %s\n", what, gs_auth_fail_label(cli.why), cli.err);
}

static void *run_server_side(void *arg)
{
	return side_run(arg);
}

static void *plaintext_coordinator(void *arg)
{
	int fd = *(int *)arg;
	uint8_t b[4];
	/* reads a "frame header" out of the ClientHello, finds it absurd, closes */
	ssize_t n = read(fd, b, sizeof(b));
	(void)n;
	close(fd);
	return NULL;
}

int main(int argc, char **argv)
{
	struct gs_cluster_tls *coord = NULL, *eng = NULL, *eng_other = NULL;
	struct gs_cluster_files f;
	char cmd[4000];

	if (argc < 3) {
		fprintf(stderr, "usage: test_tls MAKE_TEST_CERTS_SH SCRATCH\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s' && mkdir -p '%s' && bash '%s' '%s/certs'", argv[2], argv[2], argv[1],
		 argv[2]);
	if (system(cmd) != 0) {
		fprintf(stderr, "FAIL: %s\n", cmd);
		return 1;
	}
	snprintf(certs, sizeof(certs), "%s/certs", argv[2]);

	test_credentials(argv[2]);

	f = files("cluster", "coordinator");
	CHECK_MSG(gs_cluster_tls_create(&f, GS_ROLE_COORDINATOR, &coord) == GS_OK, "%s", gs_last_error());
	files_free(&f);
	f = files("cluster", "engine-e0");
	CHECK_MSG(gs_cluster_tls_create(&f, GS_ROLE_ENGINE, &eng) == GS_OK, "%s", gs_last_error());
	files_free(&f);
	f = (struct gs_cluster_files){ .ca = strdup(P("other/ca.crt")), .cert = strdup(P("other/engine.crt")),
				       .key = strdup(P("other/engine.key")) };
	CHECK_MSG(gs_cluster_tls_create(&f, GS_ROLE_ENGINE, &eng_other) == GS_OK, "%s", gs_last_error());
	files_free(&f);
	if (!coord || !eng || !eng_other) {
		gs_cluster_tls_free(coord), gs_cluster_tls_free(eng), gs_cluster_tls_free(eng_other);
		TEST_DONE();
	}
	CHECK_MSG(strstr(gs_cluster_tls_subject(coord), "OU=coordinator"), "%s", gs_cluster_tls_subject(coord));

	test_good_link(coord, eng);
	measure(coord, eng);

	/* ---- 3. refusals on the coordinator's side ---- */
	{
		int sv[2];
		pthread_t a;
		struct side srv = { .t = coord, .timeout_ms = 3000 };
		const uint8_t frame[8] = { 0, 0, 0, 4, 0x0a, 0x02, 0x08, 0x01 }; /* a plaintext hello-ish frame */
		socket_pair(sv);
		srv.fd = sv[0];
		CHECK(write(sv[1], frame, sizeof(frame)) == (ssize_t)sizeof(frame));
		pthread_create(&a, NULL, side_run, &srv);
		pthread_join(a, NULL);
		CHECK_MSG(srv.st != GS_OK && srv.why == GS_AUTH_NOT_TLS, "%s", srv.err);
		CHECK(strstr(srv.err, "did not start a TLS handshake") != NULL);
		fprintf(stderr, "ok   plaintext frame: refused (%s): %s\n", gs_auth_fail_label(srv.why), srv.err);
		close(sv[1]);

		/* a silent peer holds nothing for longer than the deadline */
		socket_pair(sv);
		srv = (struct side){ .t = coord, .timeout_ms = 300, .fd = sv[0] };
		pthread_create(&a, NULL, side_run, &srv);
		pthread_join(a, NULL);
		CHECK_MSG(srv.why == GS_AUTH_TIMEOUT && srv.seconds >= 0.25 && srv.seconds < 2.0, "%s after %.2f s", srv.err,
			  srv.seconds);
		fprintf(stderr, "ok   silent peer: refused (%s) after %.0f ms\n", gs_auth_fail_label(srv.why), srv.seconds * 1e3);
		close(sv[1]);
	}
	server_vs_raw(coord, raw_ctx(false, NULL, NULL, NULL, 0), GS_AUTH_NO_CERT, "no certificate", "no client certificate");
	server_vs_raw(coord, raw_ctx(false, P("other/engine.crt"), P("other/engine.key"), NULL, 0), GS_AUTH_UNTRUSTED,
		      "not trusted", "engine certificate of another CA");
	server_vs_raw(coord, raw_ctx(false, P("cluster/coordinator.crt"), P("cluster/coordinator.key"), NULL, 0),
		      GS_AUTH_WRONG_ROLE, "wrong role", "the coordinator's certificate used by a client");
	server_vs_raw(coord, raw_ctx(false, P("cluster/engine-both.crt"), P("cluster/engine-both.key"), NULL, 0),
		      GS_AUTH_WRONG_ROLE, "not issued for one role", "a certificate of two roles");
	server_vs_raw(coord, raw_ctx(false, P("cluster/engine-expired.crt"), P("cluster/engine-expired.key"), NULL, 0),
		      GS_AUTH_EXPIRED, "expired", "an expired engine certificate");
	server_vs_raw(coord, raw_ctx(false, P("cluster/engine.crt"), P("cluster/engine.key"), NULL, TLS1_2_VERSION),
		      GS_AUTH_PROTOCOL, "TLS handshake with the engine failed", "TLS 1.2 only");
	/* our engine, trusting another CA: it refuses the coordinator, which sees the alert */
	{
		int sv[2];
		pthread_t a, b;
		struct side srv = { .t = coord, .timeout_ms = 3000 }, cli = { .t = eng_other, .host = "127.0.0.1", .timeout_ms = 3000 };
		socket_pair(sv);
		srv.fd = sv[0], cli.fd = sv[1];
		pthread_create(&a, NULL, side_run, &srv);
		pthread_create(&b, NULL, side_run, &cli);
		pthread_join(a, NULL);
		pthread_join(b, NULL);
		CHECK_MSG(cli.why == GS_AUTH_UNTRUSTED && strstr(cli.err, "coordinator's certificate"), "%s", cli.err);
		CHECK_MSG(srv.why == GS_AUTH_PEER_REJECTED && strstr(srv.err, "unknown ca"), "%s", srv.err);
		fprintf(stderr, "ok   engine of another cluster: engine says (%s) %s; coordinator says (%s) %s\n",
			gs_auth_fail_label(cli.why), cli.err, gs_auth_fail_label(srv.why), srv.err);
	}

	/* ---- refusals on the engine's side ---- */
	{
		struct side srv = { .t = coord, .timeout_ms = 3000 };
		struct raw rs = { .server = true };

		/* the certificate names 127.0.0.1, localhost and ::1, not this address */
		client_vs(eng, "10.9.9.9", run_server_side, &srv, GS_AUTH_UNTRUSTED, "not trusted", "wrong host name", &srv.fd);
		/* a coordinator (with the right certificate) that trusts another CA: the engine learns
		 * of the refusal during its connect, not on its first read */
		rs.ctx = raw_ctx(true, P("cluster/coordinator.crt"), P("cluster/coordinator.key"), P("other/ca.crt"), 0);
		SSL_CTX_set_min_proto_version(rs.ctx, TLS1_3_VERSION);
		client_vs(eng, "127.0.0.1", raw_run, &rs, GS_AUTH_PEER_REJECTED, "refused this side's certificate",
			  "coordinator refuses the engine", &rs.fd);
		SSL_CTX_free(rs.ctx);
		/* a plaintext coordinator */
		int pfd;
		client_vs(eng, "127.0.0.1", plaintext_coordinator, &pfd, GS_AUTH_CLOSED, "closed the connection",
			  "plaintext coordinator", &pfd);
	}

	gs_cluster_tls_free(coord);
	gs_cluster_tls_free(eng);
	gs_cluster_tls_free(eng_other);
	TEST_DONE();
}
