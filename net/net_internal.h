/* net internals: the stream vtable (one static const instance per transport: plain in
 * stream.c, TLS in tls.c) and the stream object both fill in. */
#ifndef GS_NET_INTERNAL_H
#define GS_NET_INTERNAL_H

#include <stdatomic.h>
#include <stddef.h>

#include "gs_net.h"

/* Each member makes one attempt and never blocks; the waiting is done in stream.c. */
struct gs_stream_iface {
	const char *name;
	/* > 0 bytes moved; 0 the peer closed the stream (read only); -1 would block (*want:
	 * POLLIN or POLLOUT); -2 failed (reason recorded with gs_errorf). */
	long (*read)(struct gs_stream *s, void *buf, size_t cap, short *want);
	long (*write)(struct gs_stream *s, const void *buf, size_t len, short *want);
	/* 1: a read would not block (data, end or error); 0: not yet, wait for *want. */
	int (*ready)(struct gs_stream *s, short *want);
	/* Releases ctx before the socket is closed (optional, may be NULL). */
	void (*close)(struct gs_stream *s);
	/* > 0: retry the operation at least this often while waiting, because another thread may
	 * have consumed what the socket's readiness would have announced (TLS: a record read into
	 * OpenSSL's buffer by the other direction). 0: the socket alone tells. */
	int recheck_ms;
};

struct gs_stream {
	const struct gs_stream_iface *iface;
	void       *ctx;               /* the transport's state (TLS: struct tls_conn) */
	int         fd;                /* non-blocking, owned */
	int         send_timeout_ms;
	atomic_bool down;              /* gs_stream_shutdown was called */
	char        desc[192];         /* gs_stream_describe */
};

/* A stream of the given transport over fd and ctx, which it owns from here on. On GS_ERR_NOMEM
 * the caller still owns both. */
enum gs_status gs_stream_new(int fd, const struct gs_stream_iface *iface, void *ctx, struct gs_stream **out);
/* O_NONBLOCK on fd; GS_ERR_IO with the reason on failure. */
enum gs_status gs_net_set_nonblocking(int fd);
/* Milliseconds left until deadline (gs_now_s clock), never negative; -1 when deadline < 0
 * (no deadline). */
int gs_net_ms_left(double deadline);

#endif
