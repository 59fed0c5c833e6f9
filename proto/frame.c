#include "gs_frame.h"

#include <stdlib.h>
#include <string.h>

static void put_len(uint8_t hdr[4], size_t len)
{
	hdr[0] = (uint8_t)(len >> 24), hdr[1] = (uint8_t)(len >> 16), hdr[2] = (uint8_t)(len >> 8), hdr[3] = (uint8_t)len;
}

enum gs_status gs_frame_write(struct gs_stream *s, const void *buf, size_t len)
{
	uint8_t hdr[4];

	if (len > UINT32_MAX)
		return gs_errorf(GS_ERR_RANGE, "frame of %zu bytes cannot be sent", len);
	put_len(hdr, len);
	if (gs_stream_write(s, hdr, 4) != GS_OK || gs_stream_write(s, buf, len) != GS_OK)
		return gs_error_prefix(GS_ERR_IO, "writing a frame");
	return GS_OK;
}

/* Exactly n bytes; *got tells how many arrived before EOF. */
static enum gs_status read_full(struct gs_stream *s, uint8_t *dst, size_t n, int timeout_ms, size_t *got)
{
	*got = 0;
	while (*got < n) {
		size_t r;
		if (gs_stream_read(s, dst + *got, n - *got, timeout_ms, &r) != GS_OK) {
			if (strstr(gs_last_error(), "timed out"))
				return gs_errorf(GS_ERR_IO, "timed out after %d ms waiting for a frame", timeout_ms);
			return gs_error_prefix(GS_ERR_IO, "reading a frame");
		}
		if (r == 0)
			return GS_OK; /* EOF: caller looks at *got */
		*got += r;
	}
	return GS_OK;
}

enum gs_status gs_frame_read(struct gs_stream *s, size_t max_len, int timeout_ms, uint8_t **buf, size_t *len)
{
	uint8_t hdr[4];
	size_t got, n;
	uint8_t *b;

	*buf = NULL;
	*len = 0;
	GS_TRY(read_full(s, hdr, 4, timeout_ms, &got));
	if (got == 0)
		return gs_errorf(GS_ERR_NOT_FOUND, "peer closed the connection");
	if (got < 4)
		return gs_errorf(GS_ERR_FORMAT, "truncated frame header (%zu of 4 bytes)", got);
	n = (size_t)hdr[0] << 24 | (size_t)hdr[1] << 16 | (size_t)hdr[2] << 8 | hdr[3];
	if (n > max_len)
		return gs_errorf(GS_ERR_RANGE, "frame of %zu bytes exceeds the limit of %zu", n, max_len);
	b = malloc(n ? n : 1);
	if (!b)
		return gs_errorf(GS_ERR_NOMEM, "out of memory for a %zu-byte frame", n);
	if (read_full(s, b, n, timeout_ms, &got) != GS_OK) {
		free(b);
		return GS_ERR_IO;
	}
	if (got < n) {
		free(b);
		return gs_errorf(GS_ERR_FORMAT, "truncated frame (%zu of %zu bytes)", got, n);
	}
	*buf = b;
	*len = n;
	return GS_OK;
}

enum gs_status gs_engine_msg_send(struct gs_stream *s, const Gemmashard__Engine__EngineMessage *m)
{
	size_t n = gemmashard__engine__engine_message__get_packed_size(m);
	uint8_t *b;
	enum gs_status st;

	if (n > UINT32_MAX)
		return gs_errorf(GS_ERR_RANGE, "message of %zu bytes cannot be sent", n);
	b = malloc(n + 4);
	if (!b)
		return gs_errorf(GS_ERR_NOMEM, "out of memory for a %zu-byte message", n);
	put_len(b, n);
	gemmashard__engine__engine_message__pack(m, b + 4);
	st = gs_stream_write(s, b, n + 4);
	free(b);
	return st == GS_OK ? GS_OK : gs_error_prefix(st, "writing a frame");
}

enum gs_status gs_engine_msg_recv(struct gs_stream *s, size_t max_len, int timeout_ms,
				  Gemmashard__Engine__EngineMessage **out)
{
	uint8_t *b;
	size_t n;

	*out = NULL;
	GS_TRY(gs_frame_read(s, max_len, timeout_ms, &b, &n));
	*out = gemmashard__engine__engine_message__unpack(NULL, n, b);
	free(b);
	if (!*out)
		return gs_errorf(GS_ERR_FORMAT, "malformed EngineMessage (%zu bytes)", n);
	return GS_OK;
}
