/* A growable byte string: the one text builder of every layer (metrics, HTTP bodies and SSE,
 * batch output lines, safetensors headers). p is NUL-terminated whenever it is not NULL.
 * Out of memory is sticky: the failing call and every later one return false, and oom stays
 * set, so a caller may build a whole text and check once at the end. */
#ifndef GS_SBUF_H
#define GS_SBUF_H

#include <stdbool.h>
#include <stddef.h>

struct gs_sbuf {
	char  *p;
	size_t len, cap;
	bool   oom;
};

/* Room for `extra` more bytes (and the NUL) without another allocation. */
bool gs_sbuf_reserve(struct gs_sbuf *b, size_t extra);
bool gs_sbuf_put(struct gs_sbuf *b, const void *s, size_t n);
bool gs_sbuf_puts(struct gs_sbuf *b, const char *s);
bool gs_sbuf_printf(struct gs_sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Empty it, keeping the allocation (and clearing oom). */
void gs_sbuf_reset(struct gs_sbuf *b);
void gs_sbuf_free(struct gs_sbuf *b);

#endif
