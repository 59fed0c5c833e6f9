/* Helpers shared by every communicator implementation. */
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#include "gs_comm.h"

enum gs_status gs_comm_split(const struct gs_comm *c, int color, int key, struct gs_comm *out)
{
	if (!c->iface->split)
		return gs_errorf(GS_ERR_UNSUPPORTED, "%s communicator cannot be split", c->iface->name);
	return c->iface->split(c->ctx, color, key, out);
}

void gs_comm_abort(const struct gs_comm *c, int code)
{
	if (c && c->iface && c->iface->abort)
		c->iface->abort(c->ctx, code);
	/* abort returned (or there is none): this process at least must end. */
	exit(code);
}

void gs_comm_free(struct gs_comm *c)
{
	if (!c || !c->ctx)
		return;
	if (c->iface->free)
		c->iface->free(c->ctx);
	c->ctx = NULL;
}

/* ---- collective watchdog: what this process waits for, since when (gs_comm.h) ---------- */

static _Atomic int64_t       watch_since_ns; /* 0: not inside a collective */
static _Atomic(const char *) watch_what;
static _Atomic int           watch_idle;

static int64_t watch_now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

void gs_comm_watch_enter(const char *what, bool idle)
{
	atomic_store_explicit(&watch_what, what, memory_order_relaxed);
	atomic_store_explicit(&watch_idle, idle, memory_order_relaxed);
	atomic_store_explicit(&watch_since_ns, watch_now_ns(), memory_order_release);
}

void gs_comm_watch_leave(void)
{
	atomic_store_explicit(&watch_since_ns, 0, memory_order_release);
}

bool gs_comm_watch_current(const char **what, bool *idle, double *waited_s)
{
	int64_t since = atomic_load_explicit(&watch_since_ns, memory_order_acquire);

	if (!since)
		return false;
	*what = atomic_load_explicit(&watch_what, memory_order_relaxed);
	*idle = atomic_load_explicit(&watch_idle, memory_order_relaxed);
	*waited_s = (double)(watch_now_ns() - since) / 1e9;
	/* the wait may have ended, and another begun, while we read */
	return atomic_load_explicit(&watch_since_ns, memory_order_acquire) == since;
}
