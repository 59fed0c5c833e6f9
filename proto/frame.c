#include "gs_frame.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum gs_status gs_frame_write(int fd, const void *buf, size_t len)
{
	uint8_t hdr[4] = { (uint8_t)(len >> 24), (uint8_t)(len >> 16), (uint8_t)(len >> 8), (uint8_t)len };
	const uint8_t *parts[2] = { hdr, buf };
	size_t sizes[2] = { 4, len };

	if (len > UINT32_MAX)
		return gs_errorf(GS_ERR_RANGE, "frame of %zu bytes cannot be sent", len);
	for (int i = 0; i < 2; i++) {
		size_t off = 0;
		while (off < sizes[i]) {
			ssize_t n = write(fd, parts[i] + off, sizes[i] - off);
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0)
				return gs_errorf(GS_ERR_IO, "writing a frame: %s", n < 0 ? strerror(errno) : "no progress");
			off += (size_t)n;
		}
	}
	return GS_OK;
}

/* Exactly n bytes; *got tells how many arrived before EOF. */
static enum gs_status read_full(int fd, uint8_t *dst, size_t n, int timeout_ms, size_t *got)
{
	*got = 0;
	while (*got < n) {
		ssize_t r;
		if (timeout_ms >= 0) {
			struct pollfd p = { .fd = fd, .events = POLLIN };
			int pr = poll(&p, 1, timeout_ms);
			if (pr < 0 && errno == EINTR)
				continue;
			if (pr == 0)
				return gs_errorf(GS_ERR_IO, "timed out after %d ms waiting for a frame", timeout_ms);
			if (pr < 0)
				return gs_errorf(GS_ERR_IO, "poll: %s", strerror(errno));
		}
		r = read(fd, dst + *got, n - *got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return gs_errorf(GS_ERR_IO, "reading a frame: %s", strerror(errno));
		if (r == 0)
			return GS_OK; /* EOF: caller looks at *got */
		*got += (size_t)r;
	}
	return GS_OK;
}

enum gs_status gs_frame_read(int fd, size_t max_len, int timeout_ms, uint8_t **buf, size_t *len)
{
	uint8_t hdr[4];
	size_t got, n;
	uint8_t *b;

	*buf = NULL;
	*len = 0;
	GS_TRY(read_full(fd, hdr, 4, timeout_ms, &got));
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
	if (read_full(fd, b, n, timeout_ms, &got) != GS_OK) {
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

enum gs_status gs_engine_msg_send(int fd, const Gemmashard__Engine__EngineMessage *m)
{
	size_t n = gemmashard__engine__engine_message__get_packed_size(m);
	uint8_t *b = malloc(n ? n : 1);
	enum gs_status st;

	if (!b)
		return gs_errorf(GS_ERR_NOMEM, "out of memory for a %zu-byte message", n);
	gemmashard__engine__engine_message__pack(m, b);
	st = gs_frame_write(fd, b, n);
	free(b);
	return st;
}

enum gs_status gs_engine_msg_recv(int fd, size_t max_len, int timeout_ms, Gemmashard__Engine__EngineMessage **out)
{
	uint8_t *b;
	size_t n;

	*out = NULL;
	GS_TRY(gs_frame_read(fd, max_len, timeout_ms, &b, &n));
	*out = gemmashard__engine__engine_message__unpack(NULL, n, b);
	free(b);
	if (!*out)
		return gs_errorf(GS_ERR_FORMAT, "malformed EngineMessage (%zu bytes)", n);
	return GS_OK;
}
