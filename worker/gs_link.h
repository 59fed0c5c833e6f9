/* The engine leader's link to the coordinator (ARCHITECTURE.md §1, §6, §7): "engine mode" of
 * gemmashard-worker.
 *
 * Rank 0 connects over TCP (length-prefixed EngineMessage frames, proto/gs_frame.h), with
 * mutual TLS 1.3 when it has the cluster certificates (net/gs_net.h: the coordinator must
 * present a coordinator certificate of the cluster CA naming the address it was given, and
 * accept this engine's), says EngineHello, then serves: Submit → gs_engine_submit (with images:
 * gs_engine_submit_images, each image checked to be image_size² × 3 bytes), Cancel → gs_engine_cancel; after each
 * engine step one TokenEvents frame (one TokenEvent per request of the step); a Heartbeat at
 * least every 250 ms, busy or idle. A request the engine refuses gets a TokenEvent with
 * FINISH_ERROR and the reason at once.
 *
 * Failure behaviour: a lost link (EOF, read/write error, a write blocked for 5 s), a malformed
 * frame or a message an engine never receives is logged and ends the link: every request in
 * flight is cancelled in the engine, the engine is stepped until idle, and the leader
 * reconnects and registers again with a new hello (the coordinator sees a new engine).
 * Connecting retries forever (backoff 0.1 s .. 1 s, a log line at most every 5 s), also when
 * the TLS handshake fails (the reason is logged: an untrusted coordinator, a refused
 * certificate, a coordinator without TLS) or the coordinator turns the engine away at once. */
#ifndef GS_LINK_H
#define GS_LINK_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gs_engine.h"
#include "gs_net.h"

#define GS_LINK_MAX_FRAME      (16u << 20)  /* largest frame accepted from the coordinator (a Submit
						with its images: the coordinator keeps those under
						15 MiB, coordinator/coord_internal.h) */
#define GS_LINK_HEARTBEAT_S    0.2          /* heartbeat period (the promise is 250 ms) */
#define GS_LINK_SEND_TIMEOUT_S 5            /* a write blocked this long is a lost link */

struct gs_link_config {
	const char *coordinator;   /* "HOST:PORT" or "[IPV6]:PORT" */
	const char *engine_id;     /* NULL: "<hostname>:<pid>" */
	const char *model_id;      /* served model name (EngineHello.model_id) */
	int32_t     tp, cp;        /* parallel degrees of this engine (world = tp × cp) */
	int32_t     vocab_size;    /* ids the engine accepts: 0 .. vocab_size-1 */
	struct gs_cluster_tls *tls; /* engine-role credentials: mutual TLS; NULL: plaintext */
	const char *numerics;      /* matmul numerics (EngineHello.numerics): "fp32", "bf16", "cuda" */
	bool        vision;        /* a vision tower is loaded (EngineHello.vision) ... */
	int32_t     image_size;    /* ... taking image_size^2 RGB images ... */
	int32_t     mm_tokens_per_image; /* ... as this many soft tokens each */
};

/* Split "host:port" / "[v6]:port" into host[host_cap] and port[port_cap]. GS_ERR_INVALID_ARG
 * with a message quoting the text when it is not of that shape (port 1..65535). */
enum gs_status gs_link_parse_addr(const char *addr, char *host, size_t host_cap, char *port, size_t port_cap);

/* Leader only. Serve the coordinator until *stop becomes non-zero (set by a SIGTERM/SIGINT
 * handler; signals interrupt every wait here), then gs_engine_shutdown (followers return
 * from gs_engine_follow). Link problems never end it. Returns GS_OK after a requested stop,
 * GS_ERR_INVALID_ARG for an unusable address (followers shut down too), or the engine's
 * status when a step failed: then the followers are NOT shut down (they may wait in another
 * collective) and the caller ends the job (gs_comm_abort). */
enum gs_status gs_link_serve(struct gs_engine *e, const struct gs_link_config *cfg, volatile sig_atomic_t *stop);

#endif
