/* net: streams (gs_net.h): the waiting common to every transport (poll with deadlines, outside
 * any lock) and the plaintext transport. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "gs_util.h"
#include "net_internal.h"

/* ---- helpers ----------------------------------------------------------------------------- */

enum gs_status gs_net_set_nonblocking(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return gs_errorf(GS_ERR_IO, "making the socket non-blocking: %s", strerror(errno));
	return GS_OK;
}

int gs_net_ms_left(double deadline)
{
	double left;

	if (deadline < 0)
		return -1;
	left = (deadline - gs_now_s()) * 1e3;
	return left <= 0 ? 0 : left >= 1e9 ? 1000000000 : (int)ceil(left);
}

static double deadline_of(int timeout_ms)
{
	return timeout_ms < 0 ? -1.0 : gs_now_s() + timeout_ms / 1e3;
}

enum gs_status gs_stream_new(int fd, const struct gs_stream_iface *iface, void *ctx, struct gs_stream **out)
{
	struct gs_stream *s = calloc(1, sizeof(*s));

	*out = NULL;
	if (!s)
		return gs_errorf(GS_ERR_NOMEM, "out of memory for a stream");
	s->iface = iface;
	s->ctx = ctx;
	s->fd = fd;
	s->send_timeout_ms = GS_STREAM_SEND_TIMEOUT_MS;
	atomic_init(&s->down, false);
	snprintf(s->desc, sizeof(s->desc), "%s", iface->name);
	*out = s;
	return GS_OK;
}

/* ---- the plaintext transport ------------------------------------------------------------- */

static long plain_read(struct gs_stream *s, void *buf, size_t cap, short *want)
{
	for (;;) {
		ssize_t n = recv(s->fd, buf, cap, 0);
		if (n >= 0)
			return (long)n;
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK) {
			*want = POLLIN;
			return -1;
		}
		gs_errorf(GS_ERR_IO, "%s", strerror(errno));
		return -2;
	}
}

static long plain_write(struct gs_stream *s, const void *buf, size_t len, short *want)
{
	for (;;) {
		ssize_t n = send(s->fd, buf, len, MSG_NOSIGNAL);
		if (n > 0)
			return (long)n;
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			*want = POLLOUT;
			return -1;
		}
		gs_errorf(GS_ERR_IO, "%s", n < 0 ? strerror(errno) : "no progress");
		return -2;
	}
}

static int plain_ready(struct gs_stream *s, short *want)
{
	struct pollfd p = { .fd = s->fd, .events = POLLIN };

	*want = POLLIN;
	return poll(&p, 1, 0) > 0;
}

static const struct gs_stream_iface plain_iface = {
	.name = "plaintext",
	.read = plain_read,
	.write = plain_write,
	.ready = plain_ready,
	.close = NULL,
	.recheck_ms = 0,
};

enum gs_status gs_stream_plain(int fd, struct gs_stream **out)
{
	enum gs_status st = gs_net_set_nonblocking(fd);

	if (st == GS_OK)
		st = gs_stream_new(fd, &plain_iface, NULL, out);
	if (st != GS_OK) {
		close(fd);
		*out = NULL;
	}
	return st;
}

/* ---- any transport ----------------------------------------------------------------------- */

/* Waits for want on the stream's socket until deadline: 1 ready (or time to look again), 0
 * timed out, -1 error (errno). */
static int wait_fd(const struct gs_stream *s, short want, double deadline)
{
	struct pollfd p = { .fd = s->fd, .events = want };
	int left = gs_net_ms_left(deadline), slice = s->iface->recheck_ms, r;

	if (slice > 0 && (left < 0 || left > slice))
		left = slice;
	r = poll(&p, 1, left);
	if (r < 0)
		return -1;
	return r > 0 || (slice > 0 && (deadline < 0 || gs_net_ms_left(deadline) > 0));
}

enum gs_status gs_stream_read(struct gs_stream *s, void *buf, size_t cap, int timeout_ms, size_t *got)
{
	double deadline = deadline_of(timeout_ms);

	*got = 0;
	for (;;) {
		short want = POLLIN;
		long n = s->iface->read(s, buf, cap, &want);
		int r;

		if (n >= 0) {
			*got = (size_t)n;
			return GS_OK;
		}
		if (n == -2)
			return gs_error_prefix(GS_ERR_IO, "reading");
		r = wait_fd(s, want, deadline);
		if (r == 0)
			return gs_errorf(GS_ERR_IO, "timed out after %d ms", timeout_ms);
		if (r < 0 && errno != EINTR)
			return gs_errorf(GS_ERR_IO, "poll: %s", strerror(errno));
	}
}

enum gs_status gs_stream_write(struct gs_stream *s, const void *buf, size_t len)
{
	const unsigned char *p = buf;
	double deadline = deadline_of(s->send_timeout_ms);
	size_t off = 0;

	while (off < len) {
		short want = POLLOUT;
		long n = s->iface->write(s, p + off, len - off, &want);
		int r;

		if (n > 0) {
			off += (size_t)n;
			continue;
		}
		if (n == -2 || n == 0)
			return n == 0 ? gs_errorf(GS_ERR_IO, "writing: no progress") : gs_error_prefix(GS_ERR_IO, "writing");
		r = wait_fd(s, want, deadline);
		if (r == 0)
			return gs_errorf(GS_ERR_IO, "writing: blocked for %d ms (%zu of %zu bytes sent)", s->send_timeout_ms,
					 off, len);
		if (r < 0 && errno != EINTR)
			return gs_errorf(GS_ERR_IO, "poll: %s", strerror(errno));
	}
	return GS_OK;
}

int gs_stream_wait(struct gs_stream *s, int timeout_ms)
{
	double deadline = deadline_of(timeout_ms);

	for (;;) {
		short want = POLLIN;
		int r;

		if (s->iface->ready(s, &want))
			return 1;
		if (deadline >= 0 && gs_net_ms_left(deadline) == 0)
			return 0;
		r = wait_fd(s, want, deadline);
		if (r <= 0)
			return r;
	}
}

void gs_stream_shutdown(struct gs_stream *s)
{
	if (!s)
		return;
	atomic_store(&s->down, true);
	shutdown(s->fd, SHUT_RDWR);
}

void gs_stream_free(struct gs_stream *s)
{
	if (!s)
		return;
	if (s->iface->close)
		s->iface->close(s);
	close(s->fd);
	free(s);
}

void gs_stream_set_send_timeout(struct gs_stream *s, int timeout_ms)
{
	s->send_timeout_ms = timeout_ms;
}

bool gs_stream_is_tls(const struct gs_stream *s)
{
	return s->iface != &plain_iface;
}

const char *gs_stream_describe(const struct gs_stream *s)
{
	return s->desc;
}
