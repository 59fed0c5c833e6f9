/* Gemma 3 tokenizer encoding: added-token matching (the trie) and gs_tokenizer_find, BPE
 * with byte fallback (gs_tokenizer_encode), and the encode benchmark. */
#include "tokenizer_internal.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- added tokens ---------------------------------------------------------------------- */

/* Longest added token starting at s, or -1; its length in *mlen. */
static int32_t gs_tok_added_match(const struct gs_tokenizer *t, const uint8_t *s, size_t n, size_t *mlen)
{
	int32_t node, best = -1;

	if (n == 0 || (node = t->trie_root[s[0]]) < 0)
		return -1;
	for (size_t i = 1;; i++) {
		if (t->trie_term[node] >= 0) {
			best = t->trie_term[node];
			*mlen = i;
		}
		if (i == n || (node = gs_tok_edge_get(t, node, s[i])) < 0)
			return best;
	}
}

int32_t gs_tokenizer_find(const struct gs_tokenizer *t, const char *piece)
{
	size_t n = strlen(piece), mlen = 0;
	int32_t id = gs_tok_added_match(t, (const uint8_t *)piece, n, &mlen);

	if (id >= 0 && mlen == n)
		return id;
	return gs_tok_vocab_get(t, piece, n);
}

/* ---- encoding -------------------------------------------------------------------------- */

struct gs_bpe_entry {
	int32_t rank;
	int32_t pos;    /* index of the left symbol */
	int32_t new_id;
};

struct gs_bpe_work {
	int32_t             *sym;   /* [cap] id per symbol, -1 once merged into its left neighbour */
	int32_t             *prev;  /* [cap] */
	int32_t             *next;  /* [cap] -1 = last */
	struct gs_bpe_entry *heap;  /* min-heap on (rank, pos), lazily invalidated */
	size_t               heap_n, heap_cap;
};

static inline bool gs_bpe_less(const struct gs_bpe_entry *a, const struct gs_bpe_entry *b)
{
	return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static bool gs_bpe_push(struct gs_bpe_work *w, int32_t rank, int32_t pos, int32_t new_id)
{
	size_t i;

	if (w->heap_n == w->heap_cap) {
		size_t cap = w->heap_cap ? 2 * w->heap_cap : 64;
		struct gs_bpe_entry *h = realloc(w->heap, cap * sizeof(*h));
		if (!h)
			return false;
		w->heap = h;
		w->heap_cap = cap;
	}
	i = w->heap_n++;
	struct gs_bpe_entry e = { rank, pos, new_id };
	while (i > 0) {
		size_t p = (i - 1) / 2;
		if (!gs_bpe_less(&e, &w->heap[p]))
			break;
		w->heap[i] = w->heap[p];
		i = p;
	}
	w->heap[i] = e;
	return true;
}

static struct gs_bpe_entry gs_bpe_pop(struct gs_bpe_work *w)
{
	struct gs_bpe_entry top = w->heap[0], last = w->heap[--w->heap_n];
	size_t i = 0, n = w->heap_n;

	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= n)
			break;
		if (c + 1 < n && gs_bpe_less(&w->heap[c + 1], &w->heap[c]))
			c++;
		if (!gs_bpe_less(&w->heap[c], &last))
			break;
		w->heap[i] = w->heap[c];
		i = c;
	}
	if (n)
		w->heap[i] = last;
	return top;
}

static int32_t gs_tok_char_id(const struct gs_tokenizer *t, uint32_t cp, const char *s, int clen)
{
	if (cp == ' ' && t->space_to_meta)
		cp = 0x2581;
	if (cp < GS_TOK_BMP)
		return t->bmp_id[cp];
	return gs_tok_vocab_get(t, s, (size_t)clen);
}

/* BPE one word (text between added tokens, already valid UTF-8), HF Word::merge_all order:
 * pop the lowest (rank, pos); skip entries whose symbol died or whose current pair no longer
 * yields the same new id. Appends the ids to ids[*n]. */
static enum gs_status gs_bpe_word(const struct gs_tokenizer *t, const char *s, size_t len,
				  struct gs_bpe_work *w, int32_t *ids, size_t *n)
{
	int32_t nsym = 0;
	bool last_unk = false;

	for (size_t i = 0; i < len;) {
		uint32_t cp;
		int clen = gs_utf8_len((const uint8_t *)s + i, len - i, &cp);
		int32_t id = gs_tok_char_id(t, cp, s + i, clen);
		bool bytes_ok = t->byte_fallback;

		if (id >= 0) {
			w->sym[nsym++] = id;
			last_unk = false;
		} else {
			for (int b = 0; b < clen && bytes_ok; b++)
				bytes_ok = t->byte_id[(uint8_t)s[i + b]] >= 0;
			if (bytes_ok) {
				for (int b = 0; b < clen; b++)
					w->sym[nsym++] = t->byte_id[(uint8_t)s[i + b]];
				last_unk = false;
			} else if (t->unk_id < 0) {
				return gs_errorf(GS_ERR_UNSUPPORTED, "character U+%04X is not in the vocab and there is no unk token", cp);
			} else if (!(t->fuse_unk && last_unk)) {
				w->sym[nsym++] = t->unk_id;
				last_unk = true;
			}
		}
		i += (size_t)clen;
	}
	if (nsym == 0)
		return GS_OK;
	w->heap_n = 0;
	for (int32_t i = 0; i < nsym; i++) {
		w->prev[i] = i - 1;
		w->next[i] = i + 1 < nsym ? i + 1 : -1;
		if (i + 1 < nsym) {
			const struct gs_tok_merge *m = gs_tok_merge_get(t, w->sym[i], w->sym[i + 1]);
			if (m && !gs_bpe_push(w, m->rank, i, m->new_id))
				return gs_errorf(GS_ERR_NOMEM, "out of memory encoding %zu bytes", len);
		}
	}
	while (w->heap_n) {
		struct gs_bpe_entry top = gs_bpe_pop(w);
		int32_t pos = top.pos, nx, pv;
		const struct gs_tok_merge *m;

		if (w->sym[pos] < 0 || (nx = w->next[pos]) < 0)
			continue;
		m = gs_tok_merge_get(t, w->sym[pos], w->sym[nx]);
		if (!m || m->new_id != top.new_id)
			continue;
		w->sym[pos] = top.new_id;
		w->sym[nx] = -1;
		w->next[pos] = w->next[nx];
		if (w->next[nx] >= 0)
			w->prev[w->next[nx]] = pos;
		pv = w->prev[pos];
		if (pv >= 0 && (m = gs_tok_merge_get(t, w->sym[pv], w->sym[pos])) &&
		    !gs_bpe_push(w, m->rank, pv, m->new_id))
			return gs_errorf(GS_ERR_NOMEM, "out of memory encoding %zu bytes", len);
		nx = w->next[pos];
		if (nx >= 0 && (m = gs_tok_merge_get(t, w->sym[pos], w->sym[nx])) &&
		    !gs_bpe_push(w, m->rank, pos, m->new_id))
			return gs_errorf(GS_ERR_NOMEM, "out of memory encoding %zu bytes", len);
	}
	for (int32_t i = 0; i >= 0; i = w->next[i])
		ids[(*n)++] = w->sym[i];
	return GS_OK;
}

enum gs_status gs_tokenizer_encode(const struct gs_tokenizer *t, const char *text, size_t len,
				   bool add_bos, int32_t **ids_out, size_t *n_out)
{
	const uint8_t *u = (const uint8_t *)text;
	struct gs_bpe_work w = { 0 };
	int32_t *ids;
	size_t n = 0, seg = 0, pos = 0;
	enum gs_status st = GS_OK;

	*ids_out = NULL;
	*n_out = 0;
	for (size_t i = 0; i < len;) {
		uint32_t cp;
		int l = gs_utf8_len(u + i, len - i, &cp);
		if (l <= 0)
			return gs_errorf(GS_ERR_INVALID_ARG, "text is not valid UTF-8 at byte %zu", i);
		i += (size_t)l;
	}
	if (add_bos && t->bos_id < 0)
		return gs_errorf(GS_ERR_UNSUPPORTED, "add_bos requested but the tokenizer has no <bos>");
	/* Every token covers at least one input byte: len + 1 ids is a hard bound. */
	ids = malloc((len + 1) * sizeof(int32_t));
	w.sym = malloc((len + 1) * sizeof(int32_t));
	w.prev = malloc((len + 1) * sizeof(int32_t));
	w.next = malloc((len + 1) * sizeof(int32_t));
	if (!ids || !w.sym || !w.prev || !w.next) {
		st = gs_errorf(GS_ERR_NOMEM, "out of memory encoding %zu bytes", len);
		goto out_free_work;
	}
	if (add_bos)
		ids[n++] = t->bos_id;
	while (pos < len) {
		size_t mlen = 0;
		int32_t id = gs_tok_added_match(t, u + pos, len - pos, &mlen);
		if (id < 0) {
			pos++;
			continue;
		}
		if (pos > seg && (st = gs_bpe_word(t, text + seg, pos - seg, &w, ids, &n)) != GS_OK)
			goto out_free_work;
		ids[n++] = id;
		pos += mlen;
		seg = pos;
	}
	if (len > seg && (st = gs_bpe_word(t, text + seg, len - seg, &w, ids, &n)) != GS_OK)
		goto out_free_work;
	*ids_out = ids;
	*n_out = n;
	ids = NULL;
out_free_work:
	free(w.heap);
	free(w.sym);
	free(w.prev);
	free(w.next);
	free(ids);
	return st;
}

/* ---- benchmark ------------------------------------------------------------------------- */

static double gs_tok_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Deterministic clinical-note text of about n bytes (ASCII plus a few multi-byte units). */
static char *gs_tok_bench_text(size_t n, size_t *len_out)
{
	static const char *const drug[] = { "metoprolol", "lisinopril", "atorvastatin", "metformin",
					    "apixaban", "furosemide", "amoxicillin-clavulanate", "levothyroxine" };
	static const char *const freq[] = { "PO BID", "PO daily", "IV q8h", "PO TID", "SC qHS", "PRN" };
	static const char *const line[] = {
		"Patient is a %d y/o M with hx of HTN, T2DM and CKD stage %d, presenting with SOB x%d days.\n",
		("Vitals: BP %d/%d mmHg, HR %d bpm, SpO2 %d%% on RA, T 37.%d \xC2\xB0" "C.\n"),
		"Labs: Na %d, K 4.%d, Cr 1.%d mg/dL, eGFR %d mL/min/1.73m\xC2\xB2, troponin <0.0%d ng/mL.\n",
		"Assessment/Plan:\t#%d Acute on chronic HFrEF (EF %d%%) - diurese, daily weights, strict I/O.\n",
		"  - Continue home meds; f/u in %d weeks with cardiology.  Pt verbalized understanding (%d/%d).\n",
	};
	char *buf = malloc(n + 512);
	size_t k = 0;
	uint32_t s = 12345;

	if (!buf)
		return NULL;
	while (k < n) {
		uint32_t r[6];
		for (int i = 0; i < 6; i++) {
			s = s * 1664525u + 1013904223u;
			r[i] = s >> 8;
		}
		if (r[5] % 3 == 0)
			k += (size_t)snprintf(buf + k, 512, "%s %u mg %s\n", drug[r[0] % 8], 5 * (1 + r[1] % 40),
					      freq[r[2] % 6]);
		else
			k += (size_t)snprintf(buf + k, 512, line[r[5] % 5], (int)(20 + r[0] % 70), (int)(r[1] % 9),
					      (int)(60 + r[2] % 100), (int)(r[3] % 100), (int)(r[4] % 10), 3);
	}
	buf[k] = '\0';
	*len_out = k;
	return buf;
}

enum gs_status gs_tokenizer_bench(const char *tokenizer_path, FILE *out)
{
	struct gs_tokenizer *t;
	char *text;
	int32_t *ids = NULL;
	size_t len, n = 0, cut;
	double t0, t_load, t_enc, t_long;
	enum gs_status st;

	t0 = gs_tok_now();
	GS_TRY(gs_tokenizer_load(tokenizer_path, &t));
	t_load = gs_tok_now() - t0;
	text = gs_tok_bench_text((size_t)1 << 20, &len);
	if (!text) {
		st = gs_errorf(GS_ERR_NOMEM, "bench: out of memory");
		goto out_free_tok;
	}
	t0 = gs_tok_now();
	if ((st = gs_tokenizer_encode(t, text, len, true, &ids, &n)) != GS_OK)
		goto out_free_text;
	t_enc = gs_tok_now() - t0;
	fprintf(out, "tokenizer load:    %.3f s (%d ids)\n", t_load, t->n_vocab);
	fprintf(out, "encode 1 MiB text: %.3f s, %.1f MB/s, %zu tokens (%.2f bytes/token)\n", t_enc,
		(double)len / 1e6 / t_enc, n, (double)len / (double)n);
	free(ids);
	ids = NULL;

	/* A prefix holding about 128K tokens, cut at a character boundary. */
	cut = (size_t)(131072.0 * (double)len / (double)n * 1.01);
	if (cut > len)
		cut = len;
	while (cut < len && ((uint8_t)text[cut] & 0xC0) == 0x80)
		cut++;
	t0 = gs_tok_now();
	if ((st = gs_tokenizer_encode(t, text, cut, true, &ids, &n)) != GS_OK)
		goto out_free_text;
	t_long = gs_tok_now() - t0;
	fprintf(out, "encode long prompt: %zu tokens (%zu bytes) in %.3f s\n", n, cut, t_long);
	free(ids);
out_free_text:
	free(text);
out_free_tok:
	gs_tokenizer_free(t);
	return st;
}
