/* Length-prefixed frames over a stream (net/gs_net.h: plaintext or TLS): a 4-byte big-endian
 * length, then the payload (a packed protobuf-c message). Every length is checked against the
 * caller's limit before anything is allocated; a bad frame is an error for that connection
 * only. */
#ifndef GS_FRAME_H
#define GS_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include "engine.pb-c.h"
#include "gs_net.h"
#include "gs_status.h"

/* Write one frame (the stream's send timeout applies). GS_ERR_IO on failure. */
enum gs_status gs_frame_write(struct gs_stream *s, const void *buf, size_t len);

/* Read one frame of at most max_len bytes into a malloc'd *buf, waiting at most timeout_ms
 * for each chunk (< 0: forever). Errors, each with a precise message:
 *   GS_ERR_NOT_FOUND  the peer closed the connection at a frame boundary;
 *   GS_ERR_FORMAT     closed in the middle of a frame (truncated);
 *   GS_ERR_RANGE      the announced length exceeds max_len (nothing allocated);
 *   GS_ERR_IO         read failed or timed out ("timed out after N ms"). */
enum gs_status gs_frame_read(struct gs_stream *s, size_t max_len, int timeout_ms, uint8_t **buf, size_t *len);

/* An EngineMessage as one frame (one write, so one TLS record for small messages) / from one
 * frame (GS_ERR_FORMAT: malformed protobuf). Free a received message with
 * gemmashard__engine__engine_message__free_unpacked(m, NULL). */
enum gs_status gs_engine_msg_send(struct gs_stream *s, const Gemmashard__Engine__EngineMessage *m);
enum gs_status gs_engine_msg_recv(struct gs_stream *s, size_t max_len, int timeout_ms,
				  Gemmashard__Engine__EngineMessage **out);

#endif
