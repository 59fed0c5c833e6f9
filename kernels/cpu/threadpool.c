/* Fork-join thread pool for the per-layer kernels.
 *
 * One run = one generation: the caller publishes (fn, ctx), bumps `gen`, runs tid 0 itself and
 * waits for `pending` to reach 0. Workers and the caller spin for a short while before falling
 * back to a futex, because a forward pass issues runs every few microseconds and a syscall
 * round trip per run would dominate decode. Sleep/wake uses the Dekker pattern on seq_cst
 * atomics (announce the sleeper, re-check, futex_wait on the value seen), so no wake is lost. */
#include "gs_cpu.h"

#include "gs_status.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define GS_CACHELINE 64

struct gs_threadpool {
	/* written by the caller once per run, read by all workers */
	_Alignas(GS_CACHELINE) _Atomic uint32_t gen; /* run counter; futex word for workers */
	_Atomic int n_sleeping;                      /* workers inside futex_wait on gen */
	gs_task_fn fn;
	void *ctx;
	int stop;

	/* written by workers once per run */
	_Alignas(GS_CACHELINE) _Atomic uint32_t pending; /* workers still running; futex word */
	_Atomic int caller_sleeping;

	_Alignas(GS_CACHELINE) int n_threads;
	int64_t spin_ns;
	struct gs_worker *workers; /* [n_threads - 1] */
};

struct gs_worker {
	struct gs_threadpool *tp;
	int tid;
	pthread_t thread;
};

static long gs_futex(_Atomic uint32_t *addr, int op, uint32_t val)
{
	return syscall(SYS_futex, (uint32_t *)addr, op | FUTEX_PRIVATE_FLAG, val, NULL, NULL, 0);
}

static int64_t gs_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline void gs_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ volatile("yield");
#endif
}

/* Spin until *word != old or the spin budget runs out. Returns the last value seen. */
static uint32_t gs_spin_while_eq(_Atomic uint32_t *word, uint32_t old, int64_t spin_ns)
{
	uint32_t v = atomic_load_explicit(word, memory_order_acquire);
	if (v != old || spin_ns <= 0)
		return v;
	int64_t deadline = gs_now_ns() + spin_ns;
	for (;;) {
		/* clock_gettime is a vDSO call (~20 ns): check it only every 64 pauses */
		for (int i = 0; i < 64; i++) {
			gs_cpu_relax();
			v = atomic_load_explicit(word, memory_order_acquire);
			if (v != old)
				return v;
		}
		if (gs_now_ns() > deadline)
			return v;
	}
}

static void *gs_worker_main(void *arg)
{
	struct gs_worker *wk = arg;
	struct gs_threadpool *tp = wk->tp;
	/* gen is 0 at creation; reading it here instead could already see run 1 and skip it */
	uint32_t seen = 0;

	for (;;) {
		uint32_t g = gs_spin_while_eq(&tp->gen, seen, tp->spin_ns);
		while (g == seen) {
			atomic_fetch_add(&tp->n_sleeping, 1);
			g = atomic_load(&tp->gen);
			if (g == seen)
				gs_futex(&tp->gen, FUTEX_WAIT, seen);
			atomic_fetch_sub(&tp->n_sleeping, 1);
			g = atomic_load(&tp->gen);
		}
		seen = g;
		if (tp->stop)
			break;
		tp->fn(tp->ctx, wk->tid, tp->n_threads);
		if (atomic_fetch_sub(&tp->pending, 1) == 1 && atomic_load(&tp->caller_sleeping))
			gs_futex(&tp->pending, FUTEX_WAKE, 1);
	}
	return NULL;
}

static int gs_env_int(const char *name, int dflt)
{
	const char *s = getenv(name);
	if (!s || !*s)
		return dflt;
	char *end;
	long v = strtol(s, &end, 10);
	if (*end || v < 0 || v > INT_MAX) {
		gs_log(GS_LOG_WARN, "ignoring %s=%s (not a non-negative integer)", name, s);
		return dflt;
	}
	return (int)v;
}

/* Publish a new generation and wake sleepers. pending must be set before. */
static void gs_publish(struct gs_threadpool *tp)
{
	atomic_fetch_add(&tp->gen, 1);
	if (atomic_load(&tp->n_sleeping) > 0)
		gs_futex(&tp->gen, FUTEX_WAKE, INT_MAX);
}

static void gs_wait_workers(struct gs_threadpool *tp)
{
	uint32_t p = gs_spin_while_eq(&tp->pending, tp->n_threads - 1, tp->spin_ns);
	/* pending only decreases: spin on "!= 0" by re-reading the latest value */
	while (p != 0) {
		p = gs_spin_while_eq(&tp->pending, p, tp->spin_ns);
		if (p == 0)
			break;
		atomic_store(&tp->caller_sleeping, 1);
		p = atomic_load(&tp->pending);
		if (p != 0)
			gs_futex(&tp->pending, FUTEX_WAIT, p);
		atomic_store(&tp->caller_sleeping, 0);
		p = atomic_load(&tp->pending);
	}
}

struct gs_threadpool *gs_threadpool_create(int n_threads)
{
	if (n_threads <= 0)
		n_threads = gs_env_int("GS_THREADS", 0);
	if (n_threads <= 0) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);
		n_threads = n > 0 ? (int)n : 1;
	}
	struct gs_threadpool *tp;
	if (posix_memalign((void **)&tp, GS_CACHELINE, sizeof(*tp))) {
		gs_errorf(GS_ERR_NOMEM, "threadpool: out of memory");
		return NULL;
	}
	memset(tp, 0, sizeof(*tp));
	tp->n_threads = n_threads;
	tp->spin_ns = (int64_t)gs_env_int("GS_SPIN_US", 100) * 1000;
	tp->workers = calloc(n_threads > 1 ? n_threads - 1 : 1, sizeof(*tp->workers));
	if (!tp->workers) {
		free(tp);
		gs_errorf(GS_ERR_NOMEM, "threadpool: out of memory");
		return NULL;
	}
	for (int i = 0; i < n_threads - 1; i++) {
		struct gs_worker *wk = &tp->workers[i];
		wk->tp = tp;
		wk->tid = i + 1;
		int rc = pthread_create(&wk->thread, NULL, gs_worker_main, wk);
		if (rc) {
			/* stop the ones already running, as gs_threadpool_free would */
			tp->n_threads = i + 1;
			gs_threadpool_free(tp);
			gs_errorf(GS_ERR_INTERNAL, "threadpool: pthread_create: %s", strerror(rc));
			return NULL;
		}
	}
	return tp;
}

void gs_threadpool_free(struct gs_threadpool *tp)
{
	if (!tp)
		return;
	tp->stop = 1;
	atomic_store(&tp->pending, tp->n_threads - 1);
	gs_publish(tp);
	for (int i = 0; i < tp->n_threads - 1; i++)
		pthread_join(tp->workers[i].thread, NULL);
	free(tp->workers);
	free(tp);
}

int gs_threadpool_size(const struct gs_threadpool *tp)
{
	return tp ? tp->n_threads : 1;
}

void gs_threadpool_run(struct gs_threadpool *tp, gs_task_fn fn, void *ctx)
{
	if (!tp || tp->n_threads == 1) {
		fn(ctx, 0, 1);
		return;
	}
	tp->fn = fn;
	tp->ctx = ctx;
	atomic_store(&tp->pending, tp->n_threads - 1);
	gs_publish(tp); /* seq_cst RMW: orders fn/ctx/pending before the new gen */
	fn(ctx, 0, tp->n_threads);
	gs_wait_workers(tp);
}
