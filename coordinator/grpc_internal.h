/* gemmashard coordinator, gRPC front end internals: a GenerateRequest message's bytes to a
 * struct gs_gen_spec. grpc_server.c serves every Generate and GenerateStream call through it;
 * the fuzz tests (tests/unit/test_fuzz_api.c, tests/fuzz/fuzz_grpc_request.c) drive it
 * directly, without a server or a socket. */
#ifndef GS_GRPC_INTERNAL_H
#define GS_GRPC_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "gemmashard/v1/inference.pb-c.h"
#include "gs_chat.h"
#include "gs_coord.h"

struct gs_grpc_gen {
	Gemmashard__V1__GenerateRequest *req; /* unpacked; spec borrows its strings */
	struct gs_gen_spec               spec;
	struct gs_chat_msg              *msgs;               /* [spec.n_messages] (spec.messages) */
	struct gs_chat_part             *parts;              /* every message's parts */
	struct gs_coord_image_in        *images_in;          /* [n_images_in], borrowed from req */
	int                              n_images_in;
	char                             user[64];           /* OpenAI "user", sanitised (label) */
	char                            *response_format;    /* owned: spec.response_format */
	int                              n;                  /* choices, 1..GS_COORD_MAX_N */
};

/* Unpacks data[0..len) and checks what the message itself can be checked for (max_tokens
 * against L, the count of stop strings, prompt or messages); the rest is gs_coord_submit's.
 * GS_CERR_NONE, or the error class with its message in why (cap bytes). Either way the caller
 * frees g with gs_grpc_gen_free(). */
enum gs_cerr gs_grpc_parse_generate(struct gs_grpc_gen *g, const uint8_t *data, size_t len,
				    const struct gs_coord_limits *L, char *why, size_t cap);
void gs_grpc_gen_free(struct gs_grpc_gen *g);

#endif
