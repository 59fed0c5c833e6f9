/* gemmashard batch-merge: join the outputs of a split batch (the tasks of a Slurm job array,
 * gemmashard-worker --batch-split K/N) into one file with every id exactly once.
 *
 *   gemmashard batch-merge [--input IN.jsonl] OUT PART.jsonl...
 *
 * Each part must consist of complete batch records (worker/gs_batchio.h): '\n'-terminated JSON
 * objects with a string "id" and a "finish_reason" or "error". An id found twice with the same
 * bytes is kept once; twice with different bytes is a conflict. With --input, the input is read
 * the way the worker reads it (so ids such as "line-N" match), OUT holds the records in input
 * order, and ids that no part has, or that the input does not have, are reported. OUT is
 * written to a temporary file in its folder and renamed, and only when nothing is wrong, so it
 * never holds a partial merge. Record content is never printed, only ids, file names and line
 * numbers.
 *
 * Exit status: 0 merged; 1 a part is unreadable or holds something that is not a complete
 * record; 2 usage; 3 ids of the input are missing; 4 conflicting records, or ids that are not
 * in the input. */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "gs_batchio.h"
#include "gs_cmds.h"
#include "gs_config.h"
#include "gs_status.h"

#define MERGE_RC_MALFORMED 1
#define MERGE_RC_USAGE     2
#define MERGE_RC_MISSING   3
#define MERGE_RC_CONFLICT  4
#define MERGE_SHOW_MAX     10 /* ids listed per kind of problem */

/* One record line of a part. */
struct merge_rec {
	char       *id;      /* malloc'd copy of the record's "id"       */
	const char *line;    /* into the part's buffer, '\n' excluded    */
	size_t      len;
	int         part;    /* index into the part paths                */
	int64_t     line_no; /* 1-based line in that part                */
	bool        used;    /* matched an input id (with --input)       */
};

struct merge {
	const char      **paths; /* [n_parts] */
	int               n_parts;
	char            **bufs;  /* [n_parts] file contents */
	struct merge_rec *recs;
	size_t            n, cap;
};

static const char *const merge_usage =
	"usage: gemmashard batch-merge [--input IN.jsonl] OUT PART.jsonl...\n"
	"Joins the outputs of a split batch (gemmashard-worker --batch-split K/N, one per task of a job\n"
	"array) into OUT with every id exactly once: identical repeats are kept once; two different\n"
	"records for one id are refused. With --input, OUT is in input order and ids missing from\n"
	"the parts (or absent from the input) are reported. OUT is only written when all is well.\n"
	"options:\n"
	"  --input IN.jsonl   the batch input: check that every id is there exactly once\n"
	"exit status: 0 merged, 1 unreadable or malformed part, 2 usage, 3 missing ids,\n"
	"             4 conflicting records or ids not in the input\n";

/* An id for a message: at most 64 bytes, anything unprintable as '?'. */
static const char *shown_id(const char *id, char *buf, size_t cap)
{
	size_t i = 0;

	for (; id[i] && i + 4 < cap && i < 64; i++)
		buf[i] = id[i] >= 0x20 && id[i] < 0x7f ? id[i] : '?';
	if (id[i])
		buf[i++] = '.', buf[i++] = '.', buf[i++] = '.';
	buf[i] = '\0';
	return buf;
}

static int rec_by_id(const void *a, const void *b)
{
	const struct merge_rec *x = a, *y = b;
	int c = strcmp(x->id, y->id);

	if (c)
		return c;
	if (x->part != y->part)
		return x->part < y->part ? -1 : 1;
	return x->line_no < y->line_no ? -1 : x->line_no > y->line_no;
}

/* For an array of record pointers: file order (part, then line). */
static int rec_ptr_by_place(const void *a, const void *b)
{
	const struct merge_rec *x = *(const struct merge_rec *const *)a, *y = *(const struct merge_rec *const *)b;

	if (x->part != y->part)
		return x->part < y->part ? -1 : 1;
	return x->line_no < y->line_no ? -1 : x->line_no > y->line_no;
}

static bool blank(const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != ' ' && p[i] != '\t' && p[i] != '\r')
			return false;
	return true;
}

/* Reads part k into m->recs. GS_ERR_FORMAT for a torn or foreign line, with the place. */
static enum gs_status merge_load_part(struct merge *m, int k)
{
	const char *path = m->paths[k];
	size_t size = 0, pos = 0;
	int64_t line_no = 0;

	GS_TRY(gs_read_file(path, &m->bufs[k], &size));
	while (pos < size) {
		const char *p = m->bufs[k] + pos, *nl = memchr(p, '\n', size - pos), *end = NULL;
		size_t n = nl ? (size_t)(nl - p) : size - pos;
		const cJSON *id, *fin, *err;
		cJSON *obj;

		line_no++;
		pos += n + 1;
		if (blank(p, n))
			continue;
		if (!nl)
			return gs_errorf(GS_ERR_FORMAT, "%s:%lld: the last line is incomplete (the task stopped "
				     "mid-write; rerun it with the same arguments and it resumes)", path, (long long)line_no);
		obj = memchr(p, '\0', n) ? NULL : cJSON_ParseWithLengthOpts(p, n, &end, false);
		id = cJSON_GetObjectItemCaseSensitive(obj, "id");
		fin = cJSON_GetObjectItemCaseSensitive(obj, "finish_reason");
		err = cJSON_GetObjectItemCaseSensitive(obj, "error");
		if (!cJSON_IsObject(obj) || !blank(end, n - (size_t)(end - p)) || !cJSON_IsString(id) ||
		    !id->valuestring[0] || (!cJSON_IsString(fin) && !err)) {
			cJSON_Delete(obj);
			return gs_errorf(GS_ERR_FORMAT, "%s:%lld: not a batch result record (JSON object with a "
				     "string \"id\" and a \"finish_reason\")", path, (long long)line_no);
		}
		if (m->n == m->cap) {
			size_t cap = m->cap ? 2 * m->cap : 1024;
			struct merge_rec *r = realloc(m->recs, cap * sizeof(*r));
			if (!r) {
				cJSON_Delete(obj);
				return gs_errorf(GS_ERR_NOMEM, "out of memory for %zu records", cap);
			}
			m->recs = r, m->cap = cap;
		}
		m->recs[m->n] = (struct merge_rec){ .id = strdup(id->valuestring), .line = p, .len = n, .part = k,
						    .line_no = line_no };
		cJSON_Delete(obj);
		if (!m->recs[m->n].id)
			return gs_errorf(GS_ERR_NOMEM, "out of memory");
		m->n++;
	}
	return GS_OK;
}

/* Sorts by id and drops identical repeats; counts (and names a few) conflicting ones. */
static size_t merge_dedup(struct merge *m, size_t *n_dropped)
{
	size_t w = 0, conflicts = 0;
	char a[80];

	qsort(m->recs, m->n, sizeof(*m->recs), rec_by_id);
	*n_dropped = 0;
	for (size_t i = 0; i < m->n; i++) {
		struct merge_rec *r = &m->recs[i];
		if (w > 0 && !strcmp(m->recs[w - 1].id, r->id)) {
			const struct merge_rec *kept = &m->recs[w - 1];
			if (kept->len != r->len || memcmp(kept->line, r->line, r->len) != 0) {
				if (conflicts++ < MERGE_SHOW_MAX)
					fprintf(stderr, "gemmashard batch-merge: id \"%s\": %s:%lld and %s:%lld are "
						"different records\n", shown_id(r->id, a, sizeof(a)), m->paths[kept->part],
						(long long)kept->line_no, m->paths[r->part], (long long)r->line_no);
			}
			(*n_dropped)++;
			free(r->id);
			continue;
		}
		m->recs[w++] = *r;
	}
	m->n = w;
	return conflicts;
}

static struct merge_rec *merge_find(const struct merge *m, const char *id)
{
	struct merge_rec key = { .id = (char *)id, .part = -1 };
	size_t lo = 0, hi = m->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (strcmp(m->recs[mid].id, key.id) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < m->n && !strcmp(m->recs[lo].id, id) ? &m->recs[lo] : NULL;
}

/* Writes the records in order[] to path through a temporary file and rename(2). */
static enum gs_status merge_write(const char *path, struct merge_rec **order, size_t n)
{
	size_t plen = strlen(path);
	char *tmp = malloc(plen + 32);
	enum gs_status st = GS_OK;
	int fd;

	if (!tmp)
		return gs_errorf(GS_ERR_NOMEM, "out of memory");
	snprintf(tmp, plen + 32, "%s.tmp.%ld", path, (long)getpid());
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0) {
		st = gs_errorf(GS_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
		goto out_free_tmp;
	}
	for (size_t i = 0; i < n && st == GS_OK; i++) {
		const struct merge_rec *r = order[i];
		for (size_t off = 0; off <= r->len && st == GS_OK;) {
			/* the line, then its '\n' (the byte after it in the part's buffer) */
			ssize_t k = write(fd, r->line + off, r->len + 1 - off);
			if (k < 0 && errno == EINTR)
				continue;
			if (k <= 0)
				st = gs_errorf(GS_ERR_IO, "%s: write failed: %s", tmp, k < 0 ? strerror(errno) : "no progress");
			else
				off += (size_t)k;
		}
	}
	if (st == GS_OK && fsync(fd) != 0)
		st = gs_errorf(GS_ERR_IO, "%s: fsync failed: %s", tmp, strerror(errno));
	if (close(fd) != 0 && st == GS_OK)
		st = gs_errorf(GS_ERR_IO, "%s: close failed: %s", tmp, strerror(errno));
	if (st == GS_OK && rename(tmp, path) != 0)
		st = gs_errorf(GS_ERR_IO, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
	if (st != GS_OK)
		unlink(tmp);
out_free_tmp:
	free(tmp);
	return st;
}

static bool same_file(const char *a, const char *b)
{
	struct stat sa, sb;
	return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

int gs_cmd_batch_merge(int argc, char **argv)
{
	const char *input = NULL, *out = NULL;
	struct merge m = { 0 };
	struct gs_batch_req *reqs = NULL;
	struct merge_rec **order = NULL;
	size_t n_reqs = 0, n_order = 0, n_dropped = 0, conflicts = 0, missing = 0, unknown = 0;
	char a[80];
	int rc = MERGE_RC_MALFORMED;

	m.paths = calloc((size_t)(argc > 1 ? argc : 1), sizeof(*m.paths));
	if (!m.paths)
		return gs_cmd_fail("batch-merge");
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			fputs(merge_usage, stdout);
			rc = 0;
			goto out_free;
		} else if (!strcmp(argv[i], "--input") && i + 1 < argc) {
			input = argv[++i];
		} else if (!strncmp(argv[i], "--", 2)) {
			fprintf(stderr, "gemmashard batch-merge: unknown or incomplete option '%s' (see --help)\n", argv[i]);
			rc = MERGE_RC_USAGE;
			goto out_free;
		} else if (!out) {
			out = argv[i];
		} else {
			m.paths[m.n_parts++] = argv[i];
		}
	}
	if (!out || m.n_parts == 0) {
		fprintf(stderr, "gemmashard batch-merge: need OUT and at least one PART (see --help)\n");
		rc = MERGE_RC_USAGE;
		goto out_free;
	}
	for (int k = 0; k < m.n_parts; k++) {
		if (same_file(out, m.paths[k]) || (input && same_file(out, input))) {
			fprintf(stderr, "gemmashard batch-merge: OUT %s is also %s; write the merge elsewhere\n", out,
				same_file(out, m.paths[k]) ? "one of the parts" : "the input");
			rc = MERGE_RC_USAGE;
			goto out_free;
		}
	}
	m.bufs = calloc((size_t)argc, sizeof(*m.bufs)); /* n_parts < argc */
	if (!m.bufs) {
		rc = gs_cmd_fail("batch-merge");
		goto out_free;
	}
	for (int k = 0; k < m.n_parts; k++)
		if (merge_load_part(&m, k) != GS_OK) {
			rc = gs_cmd_fail("batch-merge");
			goto out_free;
		}
	conflicts = merge_dedup(&m, &n_dropped);

	order = calloc(m.n ? m.n : 1, sizeof(*order));
	if (!order) {
		rc = gs_cmd_fail("batch-merge");
		goto out_free;
	}
	if (input) {
		if (gs_batch_read(input, &reqs, &n_reqs) != GS_OK) {
			rc = gs_cmd_fail("batch-merge");
			goto out_free;
		}
		for (size_t i = 0; i < n_reqs; i++) {
			struct merge_rec *r = merge_find(&m, reqs[i].id);
			if (r && !r->used) {
				r->used = true;
				order[n_order++] = r;
			} else if (!r && missing++ < MERGE_SHOW_MAX) {
				fprintf(stderr, "gemmashard batch-merge: id \"%s\" (input line %lld) is in no part\n",
					shown_id(reqs[i].id, a, sizeof(a)), (long long)reqs[i].line_no);
			}
		}
		for (size_t i = 0; i < m.n; i++)
			if (!m.recs[i].used && unknown++ < MERGE_SHOW_MAX)
				fprintf(stderr, "gemmashard batch-merge: id \"%s\" (%s:%lld) is not in %s\n",
					shown_id(m.recs[i].id, a, sizeof(a)), m.paths[m.recs[i].part],
					(long long)m.recs[i].line_no, input);
	} else {
		for (size_t i = 0; i < m.n; i++)
			order[n_order++] = &m.recs[i];
		qsort(order, n_order, sizeof(*order), rec_ptr_by_place); /* where each id first appears */
	}
	if (conflicts || unknown || missing) {
		fprintf(stderr, "gemmashard batch-merge: %s not written: %zu conflicting id(s), %zu id(s) not in the "
			"input, %zu input id(s) missing (%zu records in %d parts)\n", out, conflicts, unknown, missing,
			m.n + n_dropped, m.n_parts);
		rc = conflicts || unknown ? MERGE_RC_CONFLICT : MERGE_RC_MISSING;
		goto out_free;
	}
	if (merge_write(out, order, n_order) != GS_OK) {
		rc = gs_cmd_fail("batch-merge");
		goto out_free;
	}
	fprintf(stderr, "gemmashard batch-merge: %zu records from %d parts into %s (%zu identical repeats dropped%s)\n",
		n_order, m.n_parts, out, n_dropped, input ? ", every input id once" : "");
	rc = 0;

out_free:
	gs_batch_free(reqs, n_reqs);
	free(order);
	for (size_t i = 0; i < m.n; i++)
		free(m.recs[i].id);
	free(m.recs);
	for (int k = 0; m.bufs && k < m.n_parts; k++)
		free(m.bufs[k]);
	free(m.bufs);
	free(m.paths);
	return rc;
}
