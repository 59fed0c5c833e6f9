/* Gemma 3 tokenizer decoding: ids -> text (gs_tokenizer_decode), the incremental,
 * UTF-8-safe detokenizer (gs_detok_*) and the UTF-8 decoder they and encoding share. */
#include "tokenizer_internal.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- UTF-8 ----------------------------------------------------------------------------- */

/* Length of the valid UTF-8 character at s (Rust/HF rules: no overlongs, no surrogates,
 * <= U+10FFFF); 0 when the bytes are complete but invalid, -1 when n is too short to tell. */
int gs_utf8_len(const uint8_t *s, size_t n, uint32_t *cp)
{
	uint8_t c = s[0];
	uint8_t lo = 0x80, hi = 0xBF;
	int len;
	uint32_t v;

	if (c < 0x80) {
		*cp = c;
		return 1;
	}
	if (c >= 0xC2 && c <= 0xDF) {
		len = 2;
		v = c & 0x1F;
	} else if (c >= 0xE0 && c <= 0xEF) {
		len = 3;
		v = c & 0x0F;
		if (c == 0xE0)
			lo = 0xA0;
		if (c == 0xED)
			hi = 0x9F;
	} else if (c >= 0xF0 && c <= 0xF4) {
		len = 4;
		v = c & 0x07;
		if (c == 0xF0)
			lo = 0x90;
		if (c == 0xF4)
			hi = 0x8F;
	} else {
		return 0;
	}
	for (int i = 1; i < len; i++) {
		if ((size_t)i >= n)
			return -1;
		if (s[i] < lo || s[i] > hi)
			return 0;
		lo = 0x80;
		hi = 0xBF;
		v = (v << 6) | (s[i] & 0x3F);
	}
	*cp = v;
	return len;
}

static bool gs_utf8_valid(const uint8_t *s, size_t n)
{
	uint32_t cp;
	for (size_t i = 0; i < n;) {
		int l = gs_utf8_len(s + i, n - i, &cp);
		if (l <= 0)
			return false;
		i += (size_t)l;
	}
	return true;
}

static const char gs_tok_fffd[] = "\xEF\xBF\xBD";

/* ---- decoding -------------------------------------------------------------------------- */

/* Text of a non-byte piece with U+2581 turned back into ' '; o must hold piece_len bytes. */
static size_t gs_tok_piece_text(const struct gs_tokenizer *t, int32_t id, char *o)
{
	const char *p = t->piece[id];
	uint32_t n = t->piece_len[id];
	size_t k = 0;

	for (uint32_t i = 0; i < n; i++) {
		if (i + 2 < n && memcmp(p + i, gs_tok_meta, 3) == 0) {
			o[k++] = ' ';
			i += 2;
		} else {
			o[k++] = p[i];
		}
	}
	return k;
}

/* A finished <0xNN> run: its bytes when valid UTF-8, else U+FFFD per byte (HF ByteFallback). */
static size_t gs_tok_run_text(const uint8_t *run, size_t n, char *o)
{
	if (gs_utf8_valid(run, n)) {
		memcpy(o, run, n);
		return n;
	}
	for (size_t i = 0; i < n; i++)
		memcpy(o + 3 * i, gs_tok_fffd, 3);
	return 3 * n;
}

enum gs_status gs_tokenizer_decode(const struct gs_tokenizer *t, const int32_t *ids, size_t n,
				   char **text_out, size_t *len_out)
{
	size_t cap = 1, k = 0, run_start = 0, run_n = 0;
	char *o;

	*text_out = NULL;
	*len_out = 0;
	for (size_t i = 0; i < n; i++) {
		if (ids[i] < 0 || ids[i] >= t->n_vocab)
			return gs_errorf(GS_ERR_RANGE, "token id %d at position %zu is outside [0, %d)", ids[i], i,
					 t->n_vocab);
		/* A byte token may become 3 bytes of U+FFFD. */
		cap += t->byte_val[ids[i]] >= 0 ? 3 : t->piece_len[ids[i]];
	}
	o = malloc(cap);
	if (!o)
		return gs_errorf(GS_ERR_NOMEM, "out of memory decoding %zu tokens", n);
	for (size_t i = 0; i <= n; i++) {
		int b = i < n ? t->byte_val[ids[i]] : -1;
		/* HF drops ids without a piece before decoding, so they do not end a byte run. */
		if (i < n && !t->piece[ids[i]])
			continue;
		if (b >= 0) {
			if (run_n++ == 0)
				run_start = k;
			o[k++] = (char)b;
			continue;
		}
		if (run_n && !gs_utf8_valid((const uint8_t *)o + run_start, run_n)) {
			k = run_start;
			for (size_t j = 0; j < run_n; j++, k += 3)
				memcpy(o + k, gs_tok_fffd, 3);
		}
		run_n = 0;
		if (i < n)
			k += gs_tok_piece_text(t, ids[i], o + k);
	}
	o[k] = '\0';
	*text_out = o;
	*len_out = k;
	return GS_OK;
}

/* ---- incremental detokenizer ----------------------------------------------------------- */

size_t gs_detok_max_out(const struct gs_tokenizer *t)
{
	return 3 * GS_DETOK_PENDING + t->max_piece_len;
}

void gs_detok_init(struct gs_detok *d, const struct gs_tokenizer *t)
{
	d->tok = t;
	d->n_pending = 0;
}

size_t gs_detok_flush(struct gs_detok *d, char *out, size_t cap)
{
	size_t need;

	if (d->n_pending == 0)
		return 0;
	need = gs_utf8_valid(d->pending, d->n_pending) ? d->n_pending : 3 * (size_t)d->n_pending;
	if (need > cap)
		return need;
	gs_tok_run_text(d->pending, d->n_pending, out);
	d->n_pending = 0;
	return need;
}

/* The pending run is full: emit its complete valid characters (or all of it as U+FFFD when
 * it holds an impossible sequence) and keep an incomplete tail. */
static size_t gs_detok_spill(struct gs_detok *d, char *out, size_t cap)
{
	size_t i = 0, keep;
	uint32_t cp;

	while (i < d->n_pending) {
		int l = gs_utf8_len(d->pending + i, d->n_pending - i, &cp);
		if (l == 0)
			return gs_detok_flush(d, out, cap);
		if (l < 0)
			break;
		i += (size_t)l;
	}
	if (i > cap)
		return i;
	memcpy(out, d->pending, i);
	keep = d->n_pending - i;
	memmove(d->pending, d->pending + i, keep);
	d->n_pending = (uint32_t)keep;
	return i;
}

size_t gs_detok_push(struct gs_detok *d, int32_t id, char *out, size_t cap)
{
	const struct gs_tokenizer *t = d->tok;
	size_t need, run, k;
	int b;

	if (id < 0 || id >= t->n_vocab || !t->piece[id])
		return 0;
	b = t->byte_val[id];
	if (b >= 0) {
		k = 0;
		if (d->n_pending == GS_DETOK_PENDING) {
			k = gs_detok_spill(d, out, cap);
			if (k > cap)
				return k; /* nothing consumed */
		}
		d->pending[d->n_pending++] = (uint8_t)b;
		return k;
	}
	run = d->n_pending == 0 ? 0 : gs_utf8_valid(d->pending, d->n_pending) ? d->n_pending : 3 * (size_t)d->n_pending;
	need = run + t->piece_len[id]; /* decoded piece is never longer than the raw piece */
	if (need > cap) {
		char tmp[512];
		/* Compute the exact size only when the cheap bound does not fit. */
		need = run + (t->piece_len[id] <= sizeof(tmp) ? gs_tok_piece_text(t, id, tmp) : t->piece_len[id]);
		if (need > cap)
			return need;
	}
	k = d->n_pending ? gs_tok_run_text(d->pending, d->n_pending, out) : 0;
	d->n_pending = 0;
	return k + gs_tok_piece_text(t, id, out + k);
}
