/* gemmashard coordinator: the OpenAI-compatible HTTP front end (ARCHITECTURE.md §1, §6, §7).
 *
 *   POST /v1/chat/completions, POST /v1/completions   (JSON, or server-sent events with
 *                                                      "stream": true)
 *   GET  /v1/models, /v1/models/{id}, /health, /metrics
 *
 * libmicrohttpd with one thread per connection: a handler may block on its request (always
 * with a deadline, and watching for a client that went away). Every route but /health and
 * /metrics needs the API key when the coordinator has one. */
#ifndef GS_HTTP_H
#define GS_HTTP_H

#include "gs_status.h"

struct gs_coord;
struct gs_http;
struct gs_tls;

/* Serves HTTP on host:port (a numeric address or a name; port 0 picks a free one) with
 * threads of its own, until gs_http_stop(). tls: NULL for plaintext, else HTTPS (TLS 1.2+)
 * with its certificate; with a client CA, a request whose client certificate is missing gets
 * 401 and one that does not verify 403 (gs_tls.h). GS_ERR_IO with a message when the address
 * cannot be bound (in use, not local), GS_ERR_INVALID_ARG for a port out of range or a
 * host that does not resolve, GS_ERR_UNSUPPORTED for TLS with a libmicrohttpd built without
 * it. c and tls must outlive the server. */
enum gs_status gs_http_start(struct gs_coord *c, const char *host, int port, const struct gs_tls *tls,
			     struct gs_http **out);
/* The port actually bound (useful after port 0). */
int gs_http_port(const struct gs_http *h);
/* Closes the listening socket and every connection (their requests are cancelled and
 * released), waits for the connection threads, frees. Call before gs_coord_free(). NULL is
 * allowed. */
void gs_http_stop(struct gs_http *h);

#endif
