/* Safetensors writer: tensors in sorted-name order, header padded with spaces to 8 bytes
 * (as the Python library writes it), data streamed so a multi-GB model never sits in memory.
 * Each file is written under a temporary name and renamed, so a crash never leaves a
 * half-written checkpoint that looks complete. */
#include "gs_safetensors.h"
#include "gs_sbuf.h"

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define GS_STW_CHUNK (4u << 20) /* bytes per generator call */

struct gs_stw_tensor {
	char         *name;
	enum gs_dtype dtype;
	int           ndim;
	int64_t       shape[GS_ST_MAX_DIMS];
	uint64_t      nbytes;
	const void   *data;  /* either data ... */
	gs_st_gen_fn  gen;   /* ... or gen(ctx) */
	void         *ctx;
	int           shard; /* assigned by gs_st_writer_write */
};

struct gs_st_writer {
	struct gs_stw_tensor *t;   /* [n] */
	size_t                n;
	size_t                cap;
	uint64_t              total;
};

/* A JSON string literal: tensor names are caller data and may hold quotes or controls. */
static void gs_stw_json_str(struct gs_sbuf *b, const char *s)
{
	gs_sbuf_put(b, "\"", 1);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\') {
			char esc[2] = { '\\', (char)c };
			gs_sbuf_put(b, esc, 2);
		} else if (c < 0x20) {
			gs_sbuf_printf(b, "\\u%04x", c);
		} else {
			gs_sbuf_put(b, (const char *)&c, 1);
		}
	}
	gs_sbuf_put(b, "\"", 1);
}

enum gs_status gs_st_writer_new(struct gs_st_writer **out)
{
	*out = calloc(1, sizeof(**out));
	if (!*out)
		return gs_errorf(GS_ERR_NOMEM, "safetensors writer: out of memory");
	return GS_OK;
}

void gs_st_writer_free(struct gs_st_writer *w)
{
	if (!w)
		return;
	for (size_t i = 0; i < w->n; i++)
		free(w->t[i].name);
	free(w->t);
	free(w);
}

static enum gs_status gs_stw_add(struct gs_st_writer *w, const char *name, enum gs_dtype dtype, int ndim,
				 const int64_t *shape, const void *data, gs_st_gen_fn gen, void *ctx)
{
	if (!name || !name[0])
		return gs_errorf(GS_ERR_INVALID_ARG, "safetensors writer: empty tensor name");
	if (strcmp(name, "__metadata__") == 0)
		return gs_errorf(GS_ERR_INVALID_ARG, "safetensors writer: '__metadata__' is reserved");
	if (dtype != GS_DTYPE_F32 && dtype != GS_DTYPE_F16 && dtype != GS_DTYPE_BF16)
		return gs_errorf(GS_ERR_UNSUPPORTED, "safetensors writer: tensor '%s': dtype %s not writable", name,
				 gs_dtype_name(dtype));
	if (ndim < 0 || ndim > GS_ST_MAX_DIMS)
		return gs_errorf(GS_ERR_INVALID_ARG, "safetensors writer: tensor '%s': %d dimensions", name, ndim);
	uint64_t nb = gs_dtype_size(dtype);
	for (int d = 0; d < ndim; d++) {
		if (shape[d] < 0 || __builtin_mul_overflow(nb, (uint64_t)shape[d], &nb))
			return gs_errorf(GS_ERR_INVALID_ARG, "safetensors writer: tensor '%s': bad shape", name);
	}
	if (w->n == w->cap) {
		size_t nc = w->cap ? w->cap * 2 : 64;
		struct gs_stw_tensor *nt = realloc(w->t, nc * sizeof(*nt));
		if (!nt)
			return gs_errorf(GS_ERR_NOMEM, "safetensors writer: out of memory");
		w->t = nt;
		w->cap = nc;
	}
	struct gs_stw_tensor *t = &w->t[w->n];
	memset(t, 0, sizeof(*t));
	t->name = strdup(name);
	if (!t->name)
		return gs_errorf(GS_ERR_NOMEM, "safetensors writer: out of memory");
	t->dtype = dtype;
	t->ndim = ndim;
	for (int d = 0; d < ndim; d++)
		t->shape[d] = shape[d];
	t->nbytes = nb;
	t->data = data;
	t->gen = gen;
	t->ctx = ctx;
	w->n++;
	w->total += nb;
	return GS_OK;
}

enum gs_status gs_st_writer_add(struct gs_st_writer *w, const char *name, enum gs_dtype dtype, int ndim,
				const int64_t *shape, const void *data)
{
	return gs_stw_add(w, name, dtype, ndim, shape, data, NULL, NULL);
}

enum gs_status gs_st_writer_add_gen(struct gs_st_writer *w, const char *name, enum gs_dtype dtype, int ndim,
				    const int64_t *shape, gs_st_gen_fn gen, void *ctx)
{
	GS_ASSERT(gen != NULL);
	return gs_stw_add(w, name, dtype, ndim, shape, NULL, gen, ctx);
}

uint64_t gs_st_writer_total_bytes(const struct gs_st_writer *w)
{
	return w->total;
}

static int gs_stw_cmp(const void *a, const void *b)
{
	return strcmp(((const struct gs_stw_tensor *)a)->name, ((const struct gs_stw_tensor *)b)->name);
}

static const char *gs_stw_dtype_str(enum gs_dtype dt)
{
	switch (dt) {
	case GS_DTYPE_F32:
		return "F32";
	case GS_DTYPE_F16:
		return "F16";
	case GS_DTYPE_BF16:
		return "BF16";
	default:
		GS_ASSERT(0);
	}
	return NULL;
}

/* Consecutive runs of the sorted tensors, each shard non-empty, cut where the running byte
 * count passes k/N of the total. */
static void gs_stw_assign_shards(struct gs_st_writer *w, int nshards)
{
	uint64_t cum = 0;
	int s = 0;
	size_t in_shard = 0;
	for (size_t i = 0; i < w->n; i++) {
		size_t left = w->n - i;
		if (in_shard > 0 && s < nshards - 1) {
			double target = (double)w->total * (double)(s + 1) / (double)nshards;
			if ((double)cum + (double)w->t[i].nbytes / 2.0 > target || left <= (size_t)(nshards - 1 - s)) {
				s++;
				in_shard = 0;
			}
		}
		w->t[i].shard = s;
		in_shard++;
		cum += w->t[i].nbytes;
	}
}

static enum gs_status gs_stw_write_data(FILE *f, const char *path, const struct gs_stw_tensor *t, void *chunk)
{
	if (t->nbytes == 0)
		return GS_OK;
	if (t->data) {
		if (fwrite(t->data, 1, t->nbytes, f) != t->nbytes)
			return gs_errorf(GS_ERR_IO, "%s: write failed: %s", path, strerror(errno));
		return GS_OK;
	}
	size_t esz = gs_dtype_size(t->dtype);
	size_t per = GS_STW_CHUNK / esz;
	size_t total = (size_t)(t->nbytes / esz);
	for (size_t first = 0; first < total; first += per) {
		size_t cnt = total - first < per ? total - first : per;
		t->gen(t->ctx, t->name, first, cnt, chunk);
		if (fwrite(chunk, esz, cnt, f) != cnt)
			return gs_errorf(GS_ERR_IO, "%s: write failed: %s", path, strerror(errno));
	}
	return GS_OK;
}

/* Write tensors [lo, hi) of the sorted list as one safetensors file at path. */
static enum gs_status gs_stw_write_file(struct gs_st_writer *w, size_t lo, size_t hi, const char *path,
				       void *chunk)
{
	struct gs_sbuf h = { 0 };
	enum gs_status rc = GS_OK;
	char tmp[4096];
	FILE *f = NULL;

	static const char meta[] = "{\"__metadata__\":{\"format\":\"pt\"}";
	gs_sbuf_put(&h, meta, sizeof(meta) - 1);
	uint64_t off = 0;
	for (size_t i = lo; i < hi; i++) {
		const struct gs_stw_tensor *t = &w->t[i];
		gs_sbuf_put(&h, ",", 1);
		gs_stw_json_str(&h, t->name);
		gs_sbuf_printf(&h, ":{\"dtype\":\"%s\",\"shape\":[", gs_stw_dtype_str(t->dtype));
		for (int d = 0; d < t->ndim; d++)
			gs_sbuf_printf(&h, d ? ",%" PRId64 : "%" PRId64, t->shape[d]);
		gs_sbuf_printf(&h, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", off, off + t->nbytes);
		off += t->nbytes;
	}
	gs_sbuf_put(&h, "}", 1);
	/* Pad so the data section starts 8-byte aligned (8 + len is a multiple of 8). */
	while (!h.oom && h.len % 8 != 0)
		gs_sbuf_put(&h, " ", 1);
	if (h.oom) {
		rc = gs_errorf(GS_ERR_NOMEM, "%s: out of memory for the header", path);
		goto out_free_header;
	}

	if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp)) {
		rc = gs_errorf(GS_ERR_INVALID_ARG, "%s: path too long", path);
		goto out_free_header;
	}
	f = fopen(tmp, "wb");
	if (!f) {
		rc = gs_errorf(GS_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
		goto out_free_header;
	}
	unsigned char len8[8];
	for (int i = 0; i < 8; i++)
		len8[i] = (unsigned char)((uint64_t)h.len >> (8 * i));
	if (fwrite(len8, 1, 8, f) != 8 || fwrite(h.p, 1, h.len, f) != h.len) {
		rc = gs_errorf(GS_ERR_IO, "%s: write failed: %s", tmp, strerror(errno));
		goto out_close_file;
	}
	for (size_t i = lo; i < hi; i++) {
		rc = gs_stw_write_data(f, tmp, &w->t[i], chunk);
		if (rc != GS_OK)
			goto out_close_file;
	}
	if (fclose(f) != 0) {
		f = NULL;
		rc = gs_errorf(GS_ERR_IO, "%s: write failed: %s", tmp, strerror(errno));
		goto out_unlink_tmp;
	}
	f = NULL;
	if (rename(tmp, path) != 0) {
		rc = gs_errorf(GS_ERR_IO, "%s: cannot rename to %s: %s", tmp, path, strerror(errno));
		goto out_unlink_tmp;
	}
	goto out_free_header;

out_close_file:
	if (f)
		fclose(f);
out_unlink_tmp:
	unlink(tmp);
out_free_header:
	gs_sbuf_free(&h);
	return rc;
}

static enum gs_status gs_stw_write_index(struct gs_st_writer *w, const char *dir, int nshards)
{
	struct gs_sbuf b = { 0 };
	enum gs_status rc = GS_OK;
	char path[4096], shard[64];

	gs_sbuf_printf(&b, "{\n  \"metadata\": {\n    \"total_size\": %" PRIu64 "\n  },\n  \"weight_map\": {",
			  w->total);
	for (size_t i = 0; i < w->n; i++) {
		snprintf(shard, sizeof(shard), "model-%05d-of-%05d.safetensors", w->t[i].shard + 1, nshards);
		gs_sbuf_put(&b, i ? ",\n    " : "\n    ", i ? 6 : 5);
		gs_stw_json_str(&b, w->t[i].name);
		gs_sbuf_put(&b, ": ", 2);
		gs_stw_json_str(&b, shard);
	}
	gs_sbuf_put(&b, "\n  }\n}\n", 7);
	if (b.oom) {
		rc = gs_errorf(GS_ERR_NOMEM, "%s: out of memory for the index", dir);
		goto out_free_buf;
	}
	snprintf(path, sizeof(path), "%s/model.safetensors.index.json", dir);
	FILE *f = fopen(path, "wb");
	if (!f) {
		rc = gs_errorf(GS_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
		goto out_free_buf;
	}
	size_t wn = fwrite(b.p, 1, b.len, f);
	if (fclose(f) != 0 || wn != b.len)
		rc = gs_errorf(GS_ERR_IO, "%s: write failed: %s", path, strerror(errno));
out_free_buf:
	gs_sbuf_free(&b);
	return rc;
}

enum gs_status gs_st_writer_write(struct gs_st_writer *w, const char *dir, int nshards)
{
	char path[4096];
	enum gs_status rc = GS_OK;

	if (nshards < 1)
		nshards = 1;
	if (nshards > 99999)
		return gs_errorf(GS_ERR_INVALID_ARG, "safetensors writer: %d shards is too many", nshards);
	if (w->n == 0)
		return gs_errorf(GS_ERR_INVALID_ARG, "safetensors writer: no tensors to write");
	if ((size_t)nshards > w->n)
		return gs_errorf(GS_ERR_INVALID_ARG, "safetensors writer: cannot split %zu tensors into %d shards",
				 w->n, nshards);
	if (strlen(dir) > sizeof(path) - 64)
		return gs_errorf(GS_ERR_INVALID_ARG, "%s: path too long", dir);

	qsort(w->t, w->n, sizeof(*w->t), gs_stw_cmp);
	for (size_t i = 1; i < w->n; i++)
		if (strcmp(w->t[i].name, w->t[i - 1].name) == 0)
			return gs_errorf(GS_ERR_INVALID_ARG, "safetensors writer: tensor '%s' added twice", w->t[i].name);
	gs_stw_assign_shards(w, nshards);

	void *chunk = malloc(GS_STW_CHUNK);
	if (!chunk)
		return gs_errorf(GS_ERR_NOMEM, "safetensors writer: out of memory");

	/* The reader prefers model.safetensors over an index: remove whichever layout we are not
	 * writing so a re-run in the same directory cannot leave the old one in charge. */
	snprintf(path, sizeof(path), "%s/%s", dir, nshards == 1 ? "model.safetensors.index.json" : "model.safetensors");
	if (unlink(path) != 0 && errno != ENOENT) {
		rc = gs_errorf(GS_ERR_IO, "%s: cannot remove stale file: %s", path, strerror(errno));
		goto out_free_chunk;
	}

	size_t lo = 0;
	for (int s = 0; s < nshards; s++) {
		size_t hi = lo;
		while (hi < w->n && w->t[hi].shard == s)
			hi++;
		if (nshards == 1)
			snprintf(path, sizeof(path), "%s/model.safetensors", dir);
		else
			snprintf(path, sizeof(path), "%s/model-%05d-of-%05d.safetensors", dir, s + 1, nshards);
		rc = gs_stw_write_file(w, lo, hi, path, chunk);
		if (rc != GS_OK)
			goto out_free_chunk;
		lo = hi;
	}
	if (nshards > 1)
		rc = gs_stw_write_index(w, dir, nshards);
out_free_chunk:
	free(chunk);
	return rc;
}
