/* gemmashard coordinator: the public gRPC API (gemmashard.v1.Inference and
 * grpc.health.v1.Health/Check) on the gRPC C core, in front of gs_coord. */
#ifndef GS_GRPC_H
#define GS_GRPC_H

#include "gs_coord.h"

struct gs_grpc;

struct gs_tls;

/* Serves addr ("127.0.0.1:50051") on a thread of its own. grpc_init() must have been called.
 * tls: NULL for plaintext, else TLS with its certificate (and client CA: mutual TLS, gs_tls.h),
 * which must outlive the server. GS_ERR_IO when the address cannot be bound. */
enum gs_status gs_grpc_start(struct gs_coord *coord, const char *addr, const struct gs_tls *tls,
			     struct gs_grpc **out);
/* Cancels the calls in progress, stops, frees. */
void gs_grpc_stop(struct gs_grpc *g);

#endif
