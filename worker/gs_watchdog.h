/* The collective watchdog of a worker rank (ARCHITECTURE.md §7): a thread that ends this
 * process when it has waited inside a collective (gs_comm_watch_current) for too long, because
 * a peer died, hangs or dropped off the network, instead of spinning on it forever. The exit
 * is non-zero, so the launcher (mpirun, srun --kill-on-bad-exit) takes down the rest of the
 * engine and whatever supervises it starts it again. */
#ifndef GS_WATCHDOG_H
#define GS_WATCHDOG_H

#include <signal.h>

#include "gs_status.h"

#define GS_WATCHDOG_EXIT 75          /* exit status of a rank the watchdog ends */
#define GS_WATCHDOG_DEFAULT_S 10.0   /* --collective-timeout */
/* A follower's wait for the next plan also spans the leader's longest silence: the keepalive
 * period (GS_ENGINE_TICK_S) plus one reconnect attempt (backoff, connect, TLS handshake). */
#define GS_WATCHDOG_LEADER_SILENCE_S 10.0
/* After a stop signal (SIGTERM/SIGINT: mpirun sends it to every rank when one dies) a wait
 * that goes on this long means a peer is gone: exit without waiting for the bound. */
#define GS_WATCHDOG_STOP_GRACE_S 0.25
#define GS_WATCHDOG_STOP_GRACE_IDLE_S 1.0

/* Start the thread: a collective may wait bound_s, a follower's plan wait bound_s +
 * GS_WATCHDOG_LEADER_SILENCE_S; once *stop is set, the grace periods above. bound_s <= 0:
 * nothing (off). */
enum gs_status gs_watchdog_start(int rank, double bound_s, volatile sig_atomic_t *stop);

#endif
