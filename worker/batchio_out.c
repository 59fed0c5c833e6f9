/* Offline batch mode output: results as JSON lines (escaping, shortest floats), the
 * string -> line map of ids, and the resumable, locked output file (scan, cut the torn
 * tail, one write(2) per line). Contracts are in gs_batchio.h. */
#include "batchio_internal.h"
#include "gs_batchio.h"
#include "gs_sbuf.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

/* ---- output text: gs_sbuf (core/gs_sbuf.h) ------------------------------------------------ */

static bool gs_bio_put_i64(struct gs_sbuf *b, int64_t v)
{
	char tmp[24];
	int n = snprintf(tmp, sizeof(tmp), "%" PRId64, v);
	return gs_sbuf_put(b, tmp, (size_t)n);
}

/* Shortest "%.{1..9}g" that strtof() reads back as x: stable bytes, no float noise digits. */
static bool gs_bio_put_float(struct gs_sbuf *b, float x)
{
	char tmp[32];
	int n = 0;

	if (!isfinite(x))
		return gs_sbuf_puts(b, "null");
	for (int prec = 1; prec <= 9; prec++) {
		n = snprintf(tmp, sizeof(tmp), "%.*g", prec, (double)x);
		if (strtof(tmp, NULL) == x)
			break;
	}
	return gs_sbuf_put(b, tmp, (size_t)n);
}

/* Length of the well-formed UTF-8 sequence at s (RFC 3629: no overlongs, no surrogates,
 * nothing above U+10FFFF), or 0. */
static size_t gs_bio_utf8_len(const unsigned char *s, size_t len)
{
	unsigned char c = s[0];
	size_t n;
	unsigned char lo = 0x80, hi = 0xBF;

	if (c < 0x80)
		return 1;
	if (c >= 0xC2 && c <= 0xDF)
		n = 2;
	else if (c >= 0xE0 && c <= 0xEF)
		n = 3;
	else if (c >= 0xF0 && c <= 0xF4)
		n = 4;
	else
		return 0;
	if (n > len)
		return 0;
	if (c == 0xE0)
		lo = 0xA0;
	else if (c == 0xED)
		hi = 0x9F;
	else if (c == 0xF0)
		lo = 0x90;
	else if (c == 0xF4)
		hi = 0x8F;
	if (s[1] < lo || s[1] > hi)
		return 0;
	for (size_t i = 2; i < n; i++)
		if ((s[i] & 0xC0) != 0x80)
			return 0;
	return n;
}

bool gs_bio_utf8_valid(const char *s)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t len = strlen(s), i = 0;

	while (i < len) {
		size_t n = gs_bio_utf8_len(u + i, len - i);
		if (n == 0)
			return false;
		i += n;
	}
	return true;
}

/* s as a JSON string; malformed UTF-8 bytes become \ufffd so the line stays valid JSON. */
static bool gs_bio_put_str(struct gs_sbuf *b, const char *s)
{
	const unsigned char *u = (const unsigned char *)(s ? s : "");
	size_t len = strlen((const char *)u), i = 0, run = 0;
	bool ok = gs_sbuf_put(b, "\"", 1);

	while (ok && i < len) {
		unsigned char c = u[i];
		const char *esc = NULL;
		char tmp[8];
		size_t n = 1;

		if (c == '"')
			esc = "\\\"";
		else if (c == '\\')
			esc = "\\\\";
		else if (c == '\n')
			esc = "\\n";
		else if (c == '\r')
			esc = "\\r";
		else if (c == '\t')
			esc = "\\t";
		else if (c == '\b')
			esc = "\\b";
		else if (c == '\f')
			esc = "\\f";
		else if (c < 0x20) {
			snprintf(tmp, sizeof(tmp), "\\u%04x", c);
			esc = tmp;
		} else if (c >= 0x80) {
			n = gs_bio_utf8_len(u + i, len - i);
			if (n == 0) {
				esc = "\\ufffd";
				n = 1;
			}
		}
		if (esc) {
			/* flush the plain run before the escape */
			ok = gs_sbuf_put(b, (const char *)u + i - run, run) && gs_sbuf_puts(b, esc);
			run = 0;
		} else {
			run += n;
		}
		i += n;
	}
	return ok && gs_sbuf_put(b, (const char *)u + i - run, run) && gs_sbuf_put(b, "\"", 1);
}

/* ---- string -> line map (open addressing) ------------------------------------------------ */

uint64_t gs_batch_seed_from_id(const char *id)
{
	uint64_t h = 0xcbf29ce484222325ull;

	for (const unsigned char *p = (const unsigned char *)id; *p; p++)
		h = (h ^ *p) * 0x100000001b3ull;
	return h;
}

static size_t gs_bio_set_slot(const struct gs_bio_set *s, const char *key)
{
	size_t mask = s->cap - 1, i = (size_t)gs_batch_seed_from_id(key) & mask;

	while (s->key[i] && strcmp(s->key[i], key) != 0)
		i = (i + 1) & mask;
	return i;
}

const int64_t *gs_bio_set_find(const struct gs_bio_set *s, const char *key)
{
	if (s->cap == 0)
		return NULL;
	size_t i = gs_bio_set_slot(s, key);
	return s->key[i] ? &s->val[i] : NULL;
}

/* Adds key (copied) unless present. false only on allocation failure. */
bool gs_bio_set_add(struct gs_bio_set *s, const char *key, int64_t val)
{
	if (2 * (s->n + 1) > s->cap) {
		struct gs_bio_set g = { .cap = s->cap ? 2 * s->cap : 64 };
		g.key = calloc(g.cap, sizeof(*g.key));
		g.val = calloc(g.cap, sizeof(*g.val));
		if (!g.key || !g.val) {
			free(g.key);
			free(g.val);
			return false;
		}
		for (size_t i = 0; i < s->cap; i++) {
			if (!s->key[i])
				continue;
			size_t j = gs_bio_set_slot(&g, s->key[i]);
			g.key[j] = s->key[i];
			g.val[j] = s->val[i];
		}
		g.n = s->n;
		free(s->key);
		free(s->val);
		*s = g;
	}
	size_t i = gs_bio_set_slot(s, key);
	if (s->key[i])
		return true;
	s->key[i] = strdup(key);
	if (!s->key[i])
		return false;
	s->val[i] = val;
	s->n++;
	return true;
}

void gs_bio_set_free(struct gs_bio_set *s)
{
	for (size_t i = 0; i < s->cap; i++)
		free(s->key[i]);
	free(s->key);
	free(s->val);
	memset(s, 0, sizeof(*s));
}

/* ---- 2. output and resume ------------------------------------------------------------------- */

struct gs_batch_out {
	int               fd;
	char             *path;
	struct gs_bio_set done;     /* ids with a line in the file                      */
	struct gs_sbuf line;     /* reused line buffer                               */
	off_t             end;      /* file size: where the next line starts            */
	size_t            line_max; /* output line cap, '\n' included                    */
	bool              fsync;    /* GS_BATCH_FSYNC=1                                 */
	bool              broken;   /* a partial line could not be removed: refuse more */
};

static const char *const gs_bio_finish_name[GS_BATCH_FINISH_COUNT] = {
	[GS_BATCH_FINISH_STOP] = "stop",
	[GS_BATCH_FINISH_LENGTH] = "length",
};
_Static_assert(GS_BATCH_FINISH_COUNT == 2, "finish_reason names");

static bool gs_bio_put_error(struct gs_sbuf *b, const char *id, const char *msg, const char *type)
{
	return gs_sbuf_puts(b, "{\"id\":") && gs_bio_put_str(b, id) &&
	       gs_sbuf_puts(b, ",\"finish_reason\":\"error\",\"error\":{\"message\":") && gs_bio_put_str(b, msg) &&
	       gs_sbuf_puts(b, ",\"type\":") && gs_bio_put_str(b, type ? type : "invalid_request_error") &&
	       gs_sbuf_puts(b, "}}");
}

static bool gs_bio_put_logprobs(struct gs_sbuf *b, const struct gs_batch_result *r)
{
	bool ok = gs_sbuf_puts(b, ",\"logprobs\":{\"tokens\":[");

	for (size_t i = 0; ok && i < r->n_tokens; i++)
		ok = (i == 0 || gs_sbuf_put(b, ",", 1)) && gs_bio_put_str(b, r->tokens[i]);
	ok = ok && gs_sbuf_puts(b, "],\"token_logprobs\":[");
	for (size_t i = 0; ok && i < r->n_tokens; i++)
		ok = (i == 0 || gs_sbuf_put(b, ",", 1)) && gs_bio_put_float(b, r->token_logprobs[i]);
	ok = ok && gs_sbuf_put(b, "]", 1);
	if (ok && r->top_n > 0) {
		ok = gs_sbuf_puts(b, ",\"top_logprobs\":[");
		for (size_t i = 0; ok && i < r->n_tokens; i++) {
			bool first = true;
			ok = (i == 0 || gs_sbuf_put(b, ",", 1)) && gs_sbuf_put(b, "{", 1);
			for (size_t j = 0; ok && j < r->top_n; j++) {
				size_t k = i * r->top_n + j;
				if (!r->top_tokens[k])
					continue;
				ok = (first || gs_sbuf_put(b, ",", 1)) && gs_bio_put_str(b, r->top_tokens[k]) &&
				     gs_sbuf_put(b, ":", 1) && gs_bio_put_float(b, r->top_logprobs[k]);
				first = false;
			}
			ok = ok && gs_sbuf_put(b, "}", 1);
		}
		ok = ok && gs_sbuf_put(b, "]", 1);
	}
	return ok && gs_sbuf_put(b, "}", 1);
}

static bool gs_bio_put_choices(struct gs_sbuf *b, const struct gs_batch_result *r)
{
	bool ok = true;

	if (!r->n_choices)
		return true;
	ok = gs_sbuf_puts(b, ",\"choices\":[");
	for (size_t i = 0; ok && i < r->n_choices; i++) {
		const struct gs_batch_result *c = &r->choices[i];
		GS_ASSERT(c->finish >= 0 && c->finish < GS_BATCH_FINISH_COUNT);
		ok = (i == 0 || gs_sbuf_put(b, ",", 1)) && gs_sbuf_puts(b, "{\"index\":") &&
		     gs_bio_put_i64(b, (int64_t)i) && gs_sbuf_puts(b, ",\"text\":") && gs_bio_put_str(b, c->text) &&
		     gs_sbuf_puts(b, ",\"finish_reason\":\"") && gs_sbuf_puts(b, gs_bio_finish_name[c->finish]) &&
		     gs_sbuf_puts(b, "\",\"completion_tokens\":") && gs_bio_put_i64(b, c->completion_tokens) &&
		     (!c->has_logprobs || gs_bio_put_logprobs(b, c)) && gs_sbuf_put(b, "}", 1);
	}
	return ok && gs_sbuf_put(b, "]", 1);
}

/* Appends the record (no '\n') to b. Fixed key order: that is what makes resumed and
 * uninterrupted runs byte-identical. */
static bool gs_bio_put_result(struct gs_sbuf *b, const struct gs_batch_result *r)
{
	if (r->error)
		return gs_bio_put_error(b, r->id, r->error, r->error_type);
	GS_ASSERT(r->finish >= 0 && r->finish < GS_BATCH_FINISH_COUNT);
	return gs_sbuf_puts(b, "{\"id\":") && gs_bio_put_str(b, r->id) && gs_sbuf_puts(b, ",\"text\":") &&
	       gs_bio_put_str(b, r->text) && gs_sbuf_puts(b, ",\"finish_reason\":\"") &&
	       gs_sbuf_puts(b, gs_bio_finish_name[r->finish]) &&
	       gs_sbuf_puts(b, "\",\"usage\":{\"prompt_tokens\":") && gs_bio_put_i64(b, r->prompt_tokens) &&
	       gs_sbuf_puts(b, ",\"completion_tokens\":") && gs_bio_put_i64(b, r->completion_tokens) &&
	       gs_sbuf_puts(b, ",\"total_tokens\":") &&
	       gs_bio_put_i64(b, r->prompt_tokens + r->completion_tokens) && gs_sbuf_put(b, "}", 1) &&
	       (!r->has_logprobs || gs_bio_put_logprobs(b, r)) && gs_bio_put_choices(b, r) && gs_sbuf_put(b, "}", 1);
}

enum gs_status gs_batch_result_json(const struct gs_batch_result *r, char **line, size_t *len)
{
	struct gs_sbuf b = { 0 };

	*line = NULL;
	if (len)
		*len = 0;
	if (!gs_bio_put_result(&b, r) || !gs_sbuf_reserve(&b, 0)) {
		gs_sbuf_free(&b);
		return gs_errorf(GS_ERR_NOMEM, "batch: out of memory rendering a result");
	}
	*line = b.p;
	if (len)
		*len = b.len;
	return GS_OK;
}

enum gs_bio_line_kind {
	GS_BIO_LINE_GOOD,    /* a batch record: its id is done                 */
	GS_BIO_LINE_BLANK,   /* whitespace only: kept, ignored                 */
	GS_BIO_LINE_TORN,    /* not JSON: a torn or zeroed tail, or corruption */
	GS_BIO_LINE_FOREIGN, /* JSON, but not one of our records               */
};

static enum gs_bio_line_kind gs_bio_classify(const char *p, size_t n, struct gs_bio_set *done,
					     int64_t line_no, bool *nomem)
{
	const char *end = NULL;
	const cJSON *id;
	cJSON *obj;
	size_t k = 0;
	enum gs_bio_line_kind kind = GS_BIO_LINE_FOREIGN;

	while (k < n && gs_bio_is_ws(p[k]))
		k++;
	if (k == n)
		return GS_BIO_LINE_BLANK;
	if (memchr(p, '\0', n))
		return GS_BIO_LINE_TORN;
	obj = cJSON_ParseWithLengthOpts(p, n, &end, false);
	if (!obj)
		return GS_BIO_LINE_TORN;
	for (; end < p + n; end++)
		if (!gs_bio_is_ws(*end)) {
			cJSON_Delete(obj);
			return GS_BIO_LINE_TORN;
		}
	id = cJSON_GetObjectItemCaseSensitive(obj, "id");
	if (cJSON_IsObject(obj) && cJSON_IsString(id) &&
	    (cJSON_GetObjectItemCaseSensitive(obj, "finish_reason") ||
	     cJSON_GetObjectItemCaseSensitive(obj, "error"))) {
		kind = GS_BIO_LINE_GOOD;
		if (!gs_bio_set_add(done, id->valuestring, line_no))
			*nomem = true;
	}
	cJSON_Delete(obj);
	return kind;
}

/* Reads the existing file, fills o->done and sets o->end to the end of the last line worth
 * keeping; cuts the torn tail off. */
static enum gs_status gs_bio_scan(struct gs_batch_out *o)
{
	struct gs_sbuf cur = { 0 };
	char *chunk;
	const size_t chunk_cap = 1u << 20;
	off_t off = 0, line_start = 0, keep_end = 0, size;
	int64_t line_no = 0, torn_line = 0;
	enum gs_status st = GS_OK;
	bool nomem = false;
	struct stat sb;

	if (fstat(o->fd, &sb) != 0)
		return gs_errorf(GS_ERR_IO, "batch output %s: stat: %s", o->path, strerror(errno));
	size = sb.st_size;
	chunk = malloc(chunk_cap);
	if (!chunk)
		return gs_errorf(GS_ERR_NOMEM, "batch output %s: out of memory", o->path);
	while (off < size) {
		ssize_t got = pread(o->fd, chunk, chunk_cap, off);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0) {
			st = gs_errorf(GS_ERR_IO, "batch output %s: read: %s", o->path, strerror(errno));
			goto out_free_chunk;
		}
		if (got == 0)
			break; /* shrank under us; what we have is all there is */
		for (ssize_t i = 0; i < got;) {
			const char *nl = memchr(chunk + i, '\n', (size_t)(got - i));
			size_t take = nl ? (size_t)(nl - (chunk + i)) : (size_t)(got - i);

			if (cur.len + take > GS_BATCH_MAX_LINE_OUT) {
				/* Longer than we ever write: junk; keep counting bytes only. */
				cur.len = GS_BATCH_MAX_LINE_OUT + 1;
			} else if (!gs_sbuf_put(&cur, chunk + i, take)) {
				st = gs_errorf(GS_ERR_NOMEM, "batch output %s: out of memory", o->path);
				goto out_free_chunk;
			}
			i += (ssize_t)take;
			if (!nl)
				break;
			i++; /* the '\n' */
			line_no++;
			enum gs_bio_line_kind kind =
				cur.len > GS_BATCH_MAX_LINE_OUT
					? GS_BIO_LINE_TORN
					: gs_bio_classify(cur.p, cur.len, &o->done, line_no, &nomem);
			off_t line_end = off + i;

			if (nomem) {
				st = gs_errorf(GS_ERR_NOMEM, "batch output %s: out of memory", o->path);
				goto out_free_chunk;
			}
			if (kind == GS_BIO_LINE_FOREIGN) {
				st = gs_errorf(GS_ERR_FORMAT,
					       "batch output %s: line %" PRId64 " is JSON but not a batch result "
					       "(no string \"id\" with \"finish_reason\" or \"error\"); is --out "
					       "pointing at the wrong file? Left unchanged", o->path, line_no);
				goto out_free_chunk;
			}
			if (kind == GS_BIO_LINE_GOOD && torn_line) {
				st = gs_errorf(GS_ERR_FORMAT,
					       "batch output %s: line %" PRId64 " is not valid JSON but later lines "
					       "are; fix or delete it, then rerun. Left unchanged", o->path, torn_line);
				goto out_free_chunk;
			}
			if (kind == GS_BIO_LINE_TORN && !torn_line)
				torn_line = line_no;
			if (!torn_line)
				keep_end = line_end;
			line_start = line_end;
			gs_sbuf_reset(&cur);
		}
		off += got;
	}
	/* An unterminated tail is always torn: every record we write ends in '\n'. A foreign
	 * JSON object there still means "wrong file", so it is not cut. */
	if (off > line_start && cur.len <= GS_BATCH_MAX_LINE_OUT) {
		struct gs_bio_set scratch = { 0 };
		enum gs_bio_line_kind kind = gs_bio_classify(cur.p, cur.len, &scratch, line_no + 1, &nomem);
		gs_bio_set_free(&scratch);
		if (kind == GS_BIO_LINE_FOREIGN) {
			st = gs_errorf(GS_ERR_FORMAT,
				       "batch output %s: last line is JSON but not a batch result; is --out "
				       "pointing at the wrong file? Left unchanged", o->path);
			goto out_free_chunk;
		}
	}
	if (keep_end < off) {
		if (ftruncate(o->fd, keep_end) != 0) {
			st = gs_errorf(GS_ERR_IO, "batch output %s: cannot cut off the torn tail at byte %lld: %s",
				       o->path, (long long)keep_end, strerror(errno));
			goto out_free_chunk;
		}
		gs_log(GS_LOG_WARN, "batch output %s: removed %lld bytes of torn output after byte %lld "
		       "(an interrupted write); those requests run again", o->path,
		       (long long)(off - keep_end), (long long)keep_end);
	}
	o->end = keep_end;
out_free_chunk:
	gs_sbuf_free(&cur);
	free(chunk);
	return st;
}

enum gs_status gs_batch_out_open(const char *path, struct gs_batch_out **out)
{
	struct gs_batch_out *o;
	const char *env = getenv("GS_BATCH_FSYNC");
	enum gs_status st;

	*out = NULL;
	o = calloc(1, sizeof(*o));
	if (!o)
		return gs_errorf(GS_ERR_NOMEM, "batch output %s: out of memory", path);
	o->fd = -1;
	o->line_max = GS_BATCH_MAX_LINE_OUT;
	o->fsync = env && strcmp(env, "1") == 0;
	o->path = strdup(path);
	if (!o->path) {
		st = gs_errorf(GS_ERR_NOMEM, "batch output %s: out of memory", path);
		goto out_free_o;
	}
	o->fd = open(path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (o->fd < 0) {
		st = gs_errorf(GS_ERR_IO, "batch output %s: %s", path, strerror(errno));
		goto out_free_o;
	}
	/* Two writers (a requeued job while the old one still runs) would interleave lines. */
	if (flock(o->fd, LOCK_EX | LOCK_NB) != 0) {
		if (errno == EWOULDBLOCK) {
			st = gs_errorf(GS_ERR_IO, "batch output %s is in use by another process", path);
			goto out_free_o;
		}
		gs_log(GS_LOG_WARN, "batch output %s: cannot lock (%s); make sure only one job writes it",
		       path, strerror(errno));
	}
	st = gs_bio_scan(o);
	if (st != GS_OK)
		goto out_free_o;
	*out = o;
	return GS_OK;
out_free_o:
	gs_batch_out_close(o);
	return st;
}

bool gs_batch_out_done(const struct gs_batch_out *o, const char *id)
{
	return id && gs_bio_set_find(&o->done, id) != NULL;
}

size_t gs_batch_out_n_done(const struct gs_batch_out *o)
{
	return o->done.n;
}

void gs_batch_out_set_line_max(struct gs_batch_out *o, size_t max_bytes)
{
	GS_ASSERT(max_bytes >= 256 && max_bytes <= GS_BATCH_MAX_LINE_OUT);
	o->line_max = max_bytes;
}

enum gs_status gs_batch_out_write(struct gs_batch_out *o, const struct gs_batch_result *r)
{
	struct gs_sbuf *b = &o->line;
	ssize_t w;

	if (o->broken)
		return gs_errorf(GS_ERR_IO, "batch output %s: an earlier failed write left it unusable",
				 o->path);
	if (!r->id || !r->id[0])
		return gs_errorf(GS_ERR_INVALID_ARG, "batch output %s: a result without an id", o->path);
	if (gs_batch_out_done(o, r->id))
		return gs_errorf(GS_ERR_INVALID_ARG, "batch output %s: id \"%s\" was written already",
				 o->path, r->id);
	gs_sbuf_reset(b);
	if (!gs_bio_put_result(b, r) || !gs_sbuf_put(b, "\n", 1))
		return gs_errorf(GS_ERR_NOMEM, "batch output %s: out of memory for the result of %s",
				 o->path, r->id);
	if (b->len > o->line_max) {
		char msg[160];
		size_t big = b->len;

		snprintf(msg, sizeof(msg), "result too large: %zu bytes exceeds the %zu-byte line limit "
			 "(lower max_tokens or top_logprobs)", big, o->line_max);
		gs_log(GS_LOG_WARN, "batch output %s: id %s: %s", o->path, r->id, msg);
		gs_sbuf_reset(b);
		if (!gs_bio_put_error(b, r->id, msg, "server_error") || !gs_sbuf_put(b, "\n", 1))
			return gs_errorf(GS_ERR_NOMEM, "batch output %s: out of memory", o->path);
	}

	/* One write(2) per line. Continuing a short write would make a second, separate append
	 * that a kill in between could tear; instead the partial bytes are removed below. */
	do
		w = write(o->fd, b->p, b->len);
	while (w < 0 && errno == EINTR);
	if (w < 0)
		return gs_errorf(GS_ERR_IO, "batch output %s: write: %s", o->path, strerror(errno));
	if ((size_t)w != b->len) {
		if (ftruncate(o->fd, o->end) != 0) {
			o->broken = true;
			return gs_errorf(GS_ERR_IO, "batch output %s: short write (%zd of %zu bytes) and the "
					 "partial line could not be removed (%s); a rerun will cut it off",
					 o->path, w, b->len, strerror(errno));
		}
		return gs_errorf(GS_ERR_IO, "batch output %s: short write (%zd of %zu bytes: disk full or "
				 "file size limit?); the partial line was removed", o->path, w, b->len);
	}
	o->end += (off_t)b->len;
	if (!gs_bio_set_add(&o->done, r->id, 0))
		return gs_errorf(GS_ERR_NOMEM, "batch output %s: out of memory", o->path);
	if (o->fsync && fdatasync(o->fd) != 0)
		return gs_errorf(GS_ERR_IO, "batch output %s: fdatasync: %s", o->path, strerror(errno));
	return GS_OK;
}

void gs_batch_out_close(struct gs_batch_out *o)
{
	if (!o)
		return;
	if (o->fd >= 0) {
		if (fdatasync(o->fd) != 0 && errno != EINVAL)
			gs_log(GS_LOG_WARN, "batch output %s: fdatasync: %s", o->path, strerror(errno));
		close(o->fd); /* drops the flock */
	}
	gs_bio_set_free(&o->done);
	gs_sbuf_free(&o->line);
	free(o->path);
	free(o);
}
