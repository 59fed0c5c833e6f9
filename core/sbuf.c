#include "gs_sbuf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool gs_sbuf_reserve(struct gs_sbuf *b, size_t extra)
{
	if (b->oom)
		return false;
	if (b->p && b->len < b->cap && extra < b->cap - b->len) /* no overflow: cap > len + extra */
		return true;
	if (extra > ((size_t)-1) / 2 - b->len) {
		b->oom = true;
		return false;
	}
	size_t cap = b->cap ? b->cap : 256;
	while (cap < b->len + extra + 1)
		cap *= 2;
	char *p = realloc(b->p, cap);
	if (!p) {
		b->oom = true;
		return false;
	}
	if (!b->p)
		p[0] = '\0';
	b->p = p;
	b->cap = cap;
	return true;
}

bool gs_sbuf_put(struct gs_sbuf *b, const void *s, size_t n)
{
	if (!gs_sbuf_reserve(b, n))
		return false;
	if (n)
		memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
	return true;
}

bool gs_sbuf_puts(struct gs_sbuf *b, const char *s)
{
	return gs_sbuf_put(b, s, strlen(s));
}

bool gs_sbuf_printf(struct gs_sbuf *b, const char *fmt, ...)
{
	va_list ap;
	char tmp[256];

	/* most pieces are short: format once into the stack, copy */
	va_start(ap, fmt);
	int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	if (n < 0) {
		b->oom = true;
		return false;
	}
	if ((size_t)n < sizeof(tmp))
		return gs_sbuf_put(b, tmp, (size_t)n);
	if (!gs_sbuf_reserve(b, (size_t)n))
		return false;
	va_start(ap, fmt);
	vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
	return true;
}

void gs_sbuf_reset(struct gs_sbuf *b)
{
	b->len = 0;
	b->oom = false;
	if (b->p)
		b->p[0] = '\0';
}

void gs_sbuf_free(struct gs_sbuf *b)
{
	free(b->p);
	*b = (struct gs_sbuf){ 0 };
}
