#include "gs_watchdog.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "gs_comm.h"
#include "gs_util.h"

#define WATCHDOG_POLL_NS 50000000L /* 50 ms */

static int watch_rank;
static double watch_bound_s;
static volatile sig_atomic_t *watch_stop;

static void *watchdog_main(void *arg)
{
	double stop_seen = 0;

	(void)arg;
	for (;;) {
		const char *what = NULL;
		bool idle = false;
		double waited = 0, bound, now;

		nanosleep(&(struct timespec){ .tv_nsec = WATCHDOG_POLL_NS }, NULL);
		now = gs_now_s();
		if (watch_stop && *watch_stop && !stop_seen)
			stop_seen = now;
		if (!gs_comm_watch_current(&what, &idle, &waited))
			continue;
		bound = idle ? watch_bound_s + GS_WATCHDOG_LEADER_SILENCE_S : watch_bound_s;
		if (stop_seen) {
			/* count from the stop, not from the start of a long idle wait */
			double since_stop = now - stop_seen, grace = idle ? GS_WATCHDOG_STOP_GRACE_IDLE_S
									  : GS_WATCHDOG_STOP_GRACE_S;
			if (since_stop < waited)
				waited = since_stop;
			if (grace < bound)
				bound = grace;
		}
		if (waited <= bound)
			continue;
		/* No MPI from this thread (MPI_THREAD_FUNNELED), no locks: write and leave. */
		fprintf(stderr, "[gemmashard r%d] fatal: watchdog: %.1f s in %s%s, bound %.2f s: %s; exiting with %d\n",
			watch_rank, waited, what ? what : "a collective", stop_seen ? " after a stop signal" : "", bound,
			idle ? "the leader (rank 0) sends no plan: it died, hangs or is unreachable"
			     : "a peer rank of this engine died, hangs or is unreachable",
			GS_WATCHDOG_EXIT);
		fflush(stderr);
		_exit(GS_WATCHDOG_EXIT);
	}
	return NULL;
}

enum gs_status gs_watchdog_start(int rank, double bound_s, volatile sig_atomic_t *stop)
{
	pthread_t t;
	pthread_attr_t a;
	int rc;

	if (bound_s <= 0)
		return GS_OK;
	watch_rank = rank;
	watch_bound_s = bound_s;
	watch_stop = stop;
	pthread_attr_init(&a);
	pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
	rc = pthread_create(&t, &a, watchdog_main, NULL);
	pthread_attr_destroy(&a);
	if (rc != 0)
		return gs_errorf(GS_ERR_INTERNAL, "starting the watchdog thread: %s", strerror(rc));
	return GS_OK;
}
