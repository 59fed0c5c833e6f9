/* core/gs_sbuf: the one growable text buffer (metrics, HTTP, batch lines, safetensors headers). */
#include "gs_sbuf.h"
#include "gs_test.h"

#include <stdint.h>
#include <stdlib.h>

int main(void)
{
	struct gs_sbuf b = { 0 };
	char big[1000];

	CHECK(gs_sbuf_put(&b, "", 0) && b.p && b.p[0] == '\0' && b.len == 0); /* empty but allocated */
	CHECK(gs_sbuf_puts(&b, "abc") && b.len == 3 && strcmp(b.p, "abc") == 0);
	CHECK(gs_sbuf_put(&b, "de\0f", 4) && b.len == 7 && memcmp(b.p, "abcde\0f", 8) == 0); /* bytes, NUL kept */
	CHECK(gs_sbuf_printf(&b, "|%d|%s|", 42, "x") && b.len == 13 && strcmp(b.p + 7, "|42|x|") == 0);

	/* a piece longer than printf's stack buffer, and growth over many appends */
	memset(big, 'y', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	gs_sbuf_reset(&b);
	CHECK(b.len == 0 && b.p[0] == '\0');
	CHECK(gs_sbuf_printf(&b, "<%s>", big) && b.len == sizeof(big) + 1 && b.p[0] == '<' && b.p[b.len - 1] == '>' &&
	      b.p[b.len] == '\0' && b.p[500] == 'y');
	for (int i = 0; i < 10000; i++)
		gs_sbuf_printf(&b, "%05d", i);
	CHECK(b.len == sizeof(big) + 1 + 50000 && b.cap > b.len && memcmp(b.p + b.len - 5, "09999", 5) == 0 &&
	      !b.oom);

	/* an impossible size fails, and the failure is sticky until reset */
	CHECK(!gs_sbuf_reserve(&b, SIZE_MAX - 8) && b.oom);
	CHECK(!gs_sbuf_puts(&b, "z") && !gs_sbuf_printf(&b, "%d", 1));
	gs_sbuf_reset(&b);
	CHECK(!b.oom && gs_sbuf_puts(&b, "ok") && strcmp(b.p, "ok") == 0);
	gs_sbuf_free(&b);
	CHECK(b.p == NULL && b.len == 0 && b.cap == 0);
	TEST_DONE();
}
