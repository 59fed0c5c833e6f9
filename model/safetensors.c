/* Safetensors reader: mmap every shard read-only, validate every header in full, index
 * tensors by name. Layout of one file: u64 little-endian N, N bytes of JSON header, then the
 * data section that data_offsets are relative to. */
#include "gs_safetensors.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define GS_ST_INDEX_NAME  "model.safetensors.index.json"
#define GS_ST_SINGLE_NAME "model.safetensors"
/* JSON numbers are doubles: integers above 2^53 cannot be represented exactly. */
#define GS_ST_MAX_JSON_INT 9007199254740992.0
/* The Python library refuses headers over 100 MB; an index is smaller still. */
#define GS_ST_MAX_HEADER  (100u << 20)
#define GS_ST_MAX_INDEX   (64u << 20)

struct gs_st_shard {
	char       *path;        /* as opened, for messages */
	const char *base;        /* file name part of path */
	void       *map;         /* whole file, PROT_READ */
	size_t      size;        /* file size in bytes */
	const char *header;      /* JSON header inside map */
	size_t      header_len;  /* N */
};

struct gs_safetensors {
	struct gs_st_shard  *shards;      /* [nshards] */
	int                  nshards;
	struct gs_st_tensor *tensors;     /* [count], shard then name order */
	size_t               count;
	size_t               cap;
	size_t              *slots;       /* [nslots] open addressing, tensor index + 1, 0 = empty */
	size_t               nslots;      /* power of two */
	uint64_t             checksum;
	size_t               total_bytes;
};

static uint64_t gs_st_fnv1a(uint64_t h, const void *p, size_t n)
{
	const unsigned char *b = p;
	for (size_t i = 0; i < n; i++) {
		h ^= b[i];
		h *= 0x100000001b3ull;
	}
	return h;
}

#define GS_ST_FNV_INIT 0xcbf29ce484222325ull

static uint64_t gs_st_hash_name(const char *name)
{
	return gs_st_fnv1a(GS_ST_FNV_INIT, name, strlen(name));
}

static int gs_st_parse_dtype(const char *s, enum gs_dtype *out)
{
	if (strcmp(s, "BF16") == 0)
		*out = GS_DTYPE_BF16;
	else if (strcmp(s, "F16") == 0)
		*out = GS_DTYPE_F16;
	else if (strcmp(s, "F32") == 0)
		*out = GS_DTYPE_F32;
	else
		return 0;
	return 1;
}

/* A JSON number that is an exact non-negative integer below 2^53. */
static int gs_st_json_u64(const cJSON *v, uint64_t *out)
{
	if (!cJSON_IsNumber(v))
		return 0;
	double d = v->valuedouble;
	if (!(d >= 0.0) || d >= GS_ST_MAX_JSON_INT || d != (double)(uint64_t)d)
		return 0;
	*out = (uint64_t)d;
	return 1;
}

static char *gs_st_join(const char *dir, const char *name)
{
	size_t a = strlen(dir), b = strlen(name);
	char *p = malloc(a + b + 2);
	if (!p)
		return NULL;
	memcpy(p, dir, a);
	size_t o = a;
	if (a > 0 && dir[a - 1] != '/')
		p[o++] = '/';
	memcpy(p + o, name, b + 1);
	return p;
}

static enum gs_status gs_st_push_tensor(struct gs_safetensors *st, struct gs_st_tensor **out)
{
	if (st->count == st->cap) {
		size_t ncap = st->cap ? st->cap * 2 : 256;
		struct gs_st_tensor *nt = realloc(st->tensors, ncap * sizeof(*nt));
		if (!nt)
			return gs_errorf(GS_ERR_NOMEM, "safetensors: out of memory for the tensor table");
		st->tensors = nt;
		st->cap = ncap;
	}
	*out = &st->tensors[st->count++];
	memset(*out, 0, sizeof(**out));
	return GS_OK;
}

struct gs_st_range {
	uint64_t begin, end;
	size_t   idx; /* into st->tensors */
};

static int gs_st_cmp_range(const void *a, const void *b)
{
	const struct gs_st_range *x = a, *y = b;
	if (x->begin != y->begin)
		return x->begin < y->begin ? -1 : 1;
	return x->end < y->end ? -1 : x->end > y->end;
}

static int gs_st_cmp_tensor_name(const void *a, const void *b)
{
	const struct gs_st_tensor *x = a, *y = b;
	return strcmp(x->name, y->name);
}

/* Validate one tensor entry of a header and append it to st. */
static enum gs_status gs_st_parse_entry(struct gs_safetensors *st, int shard, const cJSON *e,
					uint64_t data_size)
{
	const struct gs_st_shard *sh = &st->shards[shard];
	const char *name = e->string;
	struct gs_st_tensor *t = NULL;

	if (!cJSON_IsObject(e))
		return gs_errorf(GS_ERR_FORMAT, "%s: entry of tensor '%s' is not an object", sh->path, name);
	const cJSON *jd = cJSON_GetObjectItemCaseSensitive(e, "dtype");
	const cJSON *js = cJSON_GetObjectItemCaseSensitive(e, "shape");
	const cJSON *jo = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
	if (!jd)
		return gs_errorf(GS_ERR_FORMAT, "%s: tensor '%s' has no dtype", sh->path, name);
	if (!js)
		return gs_errorf(GS_ERR_FORMAT, "%s: tensor '%s' has no shape", sh->path, name);
	if (!jo)
		return gs_errorf(GS_ERR_FORMAT, "%s: tensor '%s' has no data_offsets", sh->path, name);
	if (!cJSON_IsString(jd))
		return gs_errorf(GS_ERR_FORMAT, "%s: dtype of tensor '%s' is not a string", sh->path, name);

	enum gs_dtype dt;
	if (!gs_st_parse_dtype(jd->valuestring, &dt))
		return gs_errorf(GS_ERR_UNSUPPORTED,
				 "%s: dtype '%s' of tensor %s unsupported (BF16, F16 and F32 are)",
				 sh->path, jd->valuestring, name);

	if (!cJSON_IsArray(js))
		return gs_errorf(GS_ERR_FORMAT, "%s: shape of tensor '%s' is not an array", sh->path, name);
	int ndim = cJSON_GetArraySize(js);
	if (ndim > GS_ST_MAX_DIMS)
		return gs_errorf(GS_ERR_UNSUPPORTED, "%s: tensor '%s' has %d dimensions (at most %d supported)",
				 sh->path, name, ndim, GS_ST_MAX_DIMS);

	GS_TRY(gs_st_push_tensor(st, &t));
	t->dtype = dt;
	t->ndim = ndim;
	t->shard = shard;
	for (int d = 0; d < GS_ST_MAX_DIMS; d++)
		t->shape[d] = 1;

	uint64_t nelem = 1;
	int d = 0;
	const cJSON *jdim;
	cJSON_ArrayForEach(jdim, js) {
		uint64_t v;
		if (!gs_st_json_u64(jdim, &v))
			goto out_bad_shape;
		t->shape[d++] = (int64_t)v;
		if (__builtin_mul_overflow(nelem, v, &nelem))
			goto out_bad_shape;
	}
	uint64_t nbytes;
	if (__builtin_mul_overflow(nelem, (uint64_t)gs_dtype_size(dt), &nbytes) || nbytes > SIZE_MAX)
		goto out_bad_shape;

	uint64_t b, en;
	if (!cJSON_IsArray(jo) || cJSON_GetArraySize(jo) != 2 ||
	    !gs_st_json_u64(cJSON_GetArrayItem(jo, 0), &b) || !gs_st_json_u64(cJSON_GetArrayItem(jo, 1), &en)) {
		st->count--;
		return gs_errorf(GS_ERR_FORMAT, "%s: data_offsets of tensor '%s' are not two non-negative integers",
				 sh->path, name);
	}
	if (b > en || en > data_size) {
		st->count--;
		return gs_errorf(GS_ERR_FORMAT,
				 "%s: data_offsets [%" PRIu64 ", %" PRIu64 "] of tensor '%s' out of range of the "
				 "data section (%" PRIu64 " bytes)", sh->path, b, en, name, data_size);
	}
	if (en - b != nbytes) {
		st->count--;
		return gs_errorf(GS_ERR_FORMAT,
				 "%s: tensor '%s': shape x dtype %s = %" PRIu64 " bytes but data_offsets span %" PRIu64,
				 sh->path, name, jd->valuestring, nbytes, en - b);
	}

	t->name = strdup(name);
	if (!t->name) {
		st->count--;
		return gs_errorf(GS_ERR_NOMEM, "%s: out of memory", sh->path);
	}
	t->data = sh->header + sh->header_len + b;
	t->nbytes = (size_t)nbytes;
	return GS_OK;

out_bad_shape:
	st->count--;
	return gs_errorf(GS_ERR_FORMAT, "%s: shape of tensor '%s' is not a list of non-negative integers "
			 "of representable size", sh->path, name);
}

/* Tensors of one shard must not share bytes. Empty tensors occupy nothing. */
static enum gs_status gs_st_check_overlap(struct gs_safetensors *st, int shard, size_t first)
{
	const struct gs_st_shard *sh = &st->shards[shard];
	const char *data0 = sh->header + sh->header_len;
	size_t n = st->count - first;
	enum gs_status rc = GS_OK;

	if (n < 2)
		return GS_OK;
	struct gs_st_range *r = malloc(n * sizeof(*r));
	if (!r)
		return gs_errorf(GS_ERR_NOMEM, "%s: out of memory", sh->path);
	size_t m = 0;
	for (size_t i = first; i < st->count; i++) {
		const struct gs_st_tensor *t = &st->tensors[i];
		if (t->nbytes == 0)
			continue;
		uint64_t b = (uint64_t)((const char *)t->data - data0);
		r[m++] = (struct gs_st_range){ b, b + t->nbytes, i };
	}
	qsort(r, m, sizeof(*r), gs_st_cmp_range);
	for (size_t i = 1; i < m; i++) {
		if (r[i].begin < r[i - 1].end) {
			rc = gs_errorf(GS_ERR_FORMAT,
				       "%s: tensors '%s' [%" PRIu64 ", %" PRIu64 ") and '%s' [%" PRIu64 ", %" PRIu64
				       ") overlap", sh->path, st->tensors[r[i - 1].idx].name, r[i - 1].begin,
				       r[i - 1].end, st->tensors[r[i].idx].name, r[i].begin, r[i].end);
			break;
		}
	}
	free(r);
	return rc;
}

/* Map path as shard number `shard` (already reserved in st->shards) and parse its header. */
static enum gs_status gs_st_load_shard(struct gs_safetensors *st, int shard, const char *path)
{
	struct gs_st_shard *sh = &st->shards[shard];
	struct stat sb;
	enum gs_status rc;
	cJSON *root = NULL;

	sh->path = strdup(path);
	if (!sh->path)
		return gs_errorf(GS_ERR_NOMEM, "%s: out of memory", path);
	const char *slash = strrchr(sh->path, '/');
	sh->base = slash ? slash + 1 : sh->path;

	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return gs_errorf(errno == ENOENT ? GS_ERR_NOT_FOUND : GS_ERR_IO, "%s: cannot open: %s", path,
				 strerror(errno));
	if (fstat(fd, &sb) != 0) {
		rc = gs_errorf(GS_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
		goto out_close_fd;
	}
	if (!S_ISREG(sb.st_mode)) {
		rc = gs_errorf(GS_ERR_FORMAT, "%s: not a regular file", path);
		goto out_close_fd;
	}
	if (sb.st_size < 8) {
		rc = gs_errorf(GS_ERR_FORMAT, "%s: file is %lld bytes, shorter than the 8-byte header length",
			       path, (long long)sb.st_size);
		goto out_close_fd;
	}
	sh->size = (size_t)sb.st_size;
	sh->map = mmap(NULL, sh->size, PROT_READ, MAP_PRIVATE, fd, 0);
	if (sh->map == MAP_FAILED) {
		sh->map = NULL;
		rc = gs_errorf(GS_ERR_IO, "%s: mmap of %zu bytes failed: %s", path, sh->size, strerror(errno));
		goto out_close_fd;
	}
	/* The mapping keeps the file alive; the descriptor is no longer needed. */
	close(fd);
	st->total_bytes += sh->size;

	const unsigned char *p = sh->map;
	uint64_t hlen = 0;
	for (int i = 7; i >= 0; i--)
		hlen = (hlen << 8) | p[i];
	if (hlen > sh->size - 8)
		return gs_errorf(GS_ERR_FORMAT, "%s: header length %" PRIu64 " exceeds file size %zu", path, hlen,
				 sh->size);
	if (hlen > GS_ST_MAX_HEADER)
		return gs_errorf(GS_ERR_FORMAT, "%s: header length %" PRIu64 " exceeds the %u-byte limit", path,
				 hlen, GS_ST_MAX_HEADER);
	sh->header = (const char *)p + 8;
	sh->header_len = (size_t)hlen;
	st->checksum = gs_st_fnv1a(st->checksum, sh->header, sh->header_len);

	const char *end = NULL;
	root = cJSON_ParseWithLengthOpts(sh->header, sh->header_len, &end, 0);
	if (!root) {
		size_t at = end && end >= sh->header ? (size_t)(end - sh->header) : 0;
		return gs_errorf(GS_ERR_FORMAT, "%s: header is not valid JSON (error near byte %zu of %zu)", path,
				 at, sh->header_len);
	}
	/* The writer pads with spaces; anything else after the JSON value is garbage. */
	for (const char *q = end; q && q < sh->header + sh->header_len; q++) {
		if (*q != ' ' && *q != '\t' && *q != '\n' && *q != '\r' && *q != '\0') {
			rc = gs_errorf(GS_ERR_FORMAT, "%s: trailing bytes after the JSON header at byte %zu", path,
				       (size_t)(q - sh->header));
			goto out_free_json;
		}
	}
	if (!cJSON_IsObject(root)) {
		rc = gs_errorf(GS_ERR_FORMAT, "%s: header is not a JSON object", path);
		goto out_free_json;
	}

	uint64_t data_size = sh->size - 8 - hlen;
	size_t first = st->count;
	const cJSON *e;
	rc = GS_OK;
	cJSON_ArrayForEach(e, root) {
		if (strcmp(e->string, "__metadata__") == 0) {
			if (!cJSON_IsObject(e)) {
				rc = gs_errorf(GS_ERR_FORMAT, "%s: __metadata__ is not an object", path);
				goto out_free_json;
			}
			continue;
		}
		rc = gs_st_parse_entry(st, shard, e, data_size);
		if (rc != GS_OK)
			goto out_free_json;
	}
	rc = gs_st_check_overlap(st, shard, first);
	if (rc == GS_OK && st->count > first) /* a header without tensors: st->tensors may be NULL */
		qsort(st->tensors + first, st->count - first, sizeof(*st->tensors), gs_st_cmp_tensor_name);
out_free_json:
	cJSON_Delete(root);
	return rc;

out_close_fd:
	close(fd);
	return rc;
}

/* Build the name hash; a name seen twice (within a header or across shards) is an error. */
static enum gs_status gs_st_build_hash(struct gs_safetensors *st)
{
	size_t n = 16;
	while (n < st->count * 2)
		n *= 2;
	st->slots = calloc(n, sizeof(*st->slots));
	if (!st->slots)
		return gs_errorf(GS_ERR_NOMEM, "safetensors: out of memory for the name hash");
	st->nslots = n;
	for (size_t i = 0; i < st->count; i++) {
		const struct gs_st_tensor *t = &st->tensors[i];
		size_t s = (size_t)gs_st_hash_name(t->name) & (n - 1);
		while (st->slots[s]) {
			const struct gs_st_tensor *o = &st->tensors[st->slots[s] - 1];
			if (strcmp(o->name, t->name) == 0)
				return gs_errorf(GS_ERR_FORMAT, "duplicate tensor '%s' in %s and %s", t->name,
						 st->shards[o->shard].path, st->shards[t->shard].path);
			s = (s + 1) & (n - 1);
		}
		st->slots[s] = i + 1;
	}
	return GS_OK;
}

static enum gs_status gs_st_alloc_shards(struct gs_safetensors *st, int n)
{
	st->shards = calloc((size_t)n, sizeof(*st->shards));
	if (!st->shards)
		return gs_errorf(GS_ERR_NOMEM, "safetensors: out of memory");
	st->nshards = n;
	return GS_OK;
}

static enum gs_status gs_st_read_small_file(const char *path, char **out, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return gs_errorf(errno == ENOENT ? GS_ERR_NOT_FOUND : GS_ERR_IO, "%s: cannot open: %s", path,
				 strerror(errno));
	enum gs_status rc = GS_OK;
	struct stat sb;
	/* sized by the file (an index is a few KiB), one byte more to see it grow past the limit */
	size_t want = fstat(fileno(f), &sb) == 0 && sb.st_size >= 0 && (uint64_t)sb.st_size < GS_ST_MAX_INDEX
			      ? (size_t)sb.st_size + 1 : (size_t)GS_ST_MAX_INDEX + 1;
	char *buf = malloc(want + 1);
	if (!buf) {
		rc = gs_errorf(GS_ERR_NOMEM, "%s: out of memory", path);
		goto out_close_file;
	}
	size_t n = fread(buf, 1, want, f);
	if (ferror(f)) {
		rc = gs_errorf(GS_ERR_IO, "%s: read error", path);
		goto out_free_buf;
	}
	if (n > GS_ST_MAX_INDEX) {
		rc = gs_errorf(GS_ERR_FORMAT, "%s: larger than %u bytes", path, GS_ST_MAX_INDEX);
		goto out_free_buf;
	}
	if (n == want) {
		rc = gs_errorf(GS_ERR_IO, "%s: grew while it was read", path);
		goto out_free_buf;
	}
	buf[n] = '\0';
	*out = buf;
	*len = n;
	fclose(f);
	return GS_OK;

out_free_buf:
	free(buf);
out_close_file:
	fclose(f);
	return rc;
}

static int gs_st_cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* model.safetensors.index.json: map each distinct shard once (sorted by file name), then
 * check that every weight_map entry is really in the shard it names. */
static enum gs_status gs_st_open_index(struct gs_safetensors *st, const char *dir, const char *ipath)
{
	char *text = NULL;
	size_t len = 0;
	const char **names = NULL;
	enum gs_status rc;

	GS_TRY(gs_st_read_small_file(ipath, &text, &len));
	cJSON *root = cJSON_ParseWithLength(text, len);
	if (!root) {
		rc = gs_errorf(GS_ERR_FORMAT, "%s: not valid JSON", ipath);
		goto out_free_text;
	}
	const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
	if (!cJSON_IsObject(root) || !cJSON_IsObject(wm)) {
		rc = gs_errorf(GS_ERR_FORMAT, "%s: no \"weight_map\" object", ipath);
		goto out_free_json;
	}
	int nw = cJSON_GetArraySize(wm);
	if (nw == 0) {
		rc = gs_errorf(GS_ERR_FORMAT, "%s: weight_map is empty", ipath);
		goto out_free_json;
	}
	names = malloc((size_t)nw * sizeof(*names));
	if (!names) {
		rc = gs_errorf(GS_ERR_NOMEM, "%s: out of memory", ipath);
		goto out_free_json;
	}
	int k = 0;
	const cJSON *e;
	cJSON_ArrayForEach(e, wm) {
		if (!cJSON_IsString(e) || !e->valuestring[0]) {
			rc = gs_errorf(GS_ERR_FORMAT, "%s: weight_map entry of '%s' is not a file name", ipath, e->string);
			goto out_free_names;
		}
		/* Shards live beside the index; a path could point anywhere. */
		if (strchr(e->valuestring, '/') || strcmp(e->valuestring, "..") == 0) {
			rc = gs_errorf(GS_ERR_FORMAT, "%s: shard name '%s' of tensor '%s' is not a plain file name",
				       ipath, e->valuestring, e->string);
			goto out_free_names;
		}
		names[k++] = e->valuestring;
	}
	qsort(names, (size_t)k, sizeof(*names), gs_st_cmp_str);
	int nuniq = 0;
	for (int i = 0; i < k; i++)
		if (i == 0 || strcmp(names[i], names[i - 1]) != 0)
			names[nuniq++] = names[i];

	rc = gs_st_alloc_shards(st, nuniq);
	if (rc != GS_OK)
		goto out_free_names;
	for (int i = 0; i < nuniq; i++) {
		char *path = gs_st_join(dir, names[i]);
		if (!path) {
			rc = gs_errorf(GS_ERR_NOMEM, "%s: out of memory", ipath);
			goto out_free_names;
		}
		if (access(path, F_OK) != 0) {
			rc = gs_errorf(GS_ERR_NOT_FOUND, "%s: shard %s named in the index is absent", ipath, names[i]);
			free(path);
			goto out_free_names;
		}
		rc = gs_st_load_shard(st, i, path);
		free(path);
		if (rc != GS_OK)
			goto out_free_names;
	}
	rc = gs_st_build_hash(st);
	if (rc != GS_OK)
		goto out_free_names;
	cJSON_ArrayForEach(e, wm) {
		const struct gs_st_tensor *t = gs_st_find(st, e->string);
		if (!t || strcmp(st->shards[t->shard].base, e->valuestring) != 0) {
			rc = gs_errorf(GS_ERR_FORMAT, "%s: tensor '%s' is mapped to %s, which does not contain it%s%s",
				       ipath, e->string, e->valuestring, t ? "; it is in " : "",
				       t ? st->shards[t->shard].base : "");
			goto out_free_names;
		}
	}
out_free_names:
	free(names);
out_free_json:
	cJSON_Delete(root);
out_free_text:
	free(text);
	return rc;
}

static int gs_st_has_suffix(const char *s, const char *suf)
{
	size_t a = strlen(s), b = strlen(suf);
	return a >= b && strcmp(s + a - b, suf) == 0;
}

/* No index and no model.safetensors: accept exactly one *.safetensors file. */
static enum gs_status gs_st_find_single(const char *dir, char **out)
{
	DIR *d = opendir(dir);
	if (!d)
		return gs_errorf(errno == ENOENT ? GS_ERR_NOT_FOUND : GS_ERR_IO, "%s: cannot open directory: %s", dir,
				 strerror(errno));
	char *found = NULL;
	enum gs_status rc = GS_OK;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.' || !gs_st_has_suffix(de->d_name, ".safetensors"))
			continue;
		if (found) {
			rc = gs_errorf(GS_ERR_FORMAT, "%s: several *.safetensors files (%s, %s) but no %s", dir,
				       strrchr(found, '/') + 1, de->d_name, GS_ST_INDEX_NAME);
			goto out_close_dir;
		}
		found = gs_st_join(dir, de->d_name);
		if (!found) {
			rc = gs_errorf(GS_ERR_NOMEM, "%s: out of memory", dir);
			goto out_close_dir;
		}
	}
	if (!found)
		rc = gs_errorf(GS_ERR_NOT_FOUND, "%s: no %s, %s or *.safetensors file", dir, GS_ST_SINGLE_NAME,
			       GS_ST_INDEX_NAME);
out_close_dir:
	closedir(d);
	if (rc != GS_OK) {
		free(found);
		return rc;
	}
	*out = found;
	return GS_OK;
}

static enum gs_status gs_st_open_single(struct gs_safetensors *st, const char *path)
{
	GS_TRY(gs_st_alloc_shards(st, 1));
	GS_TRY(gs_st_load_shard(st, 0, path));
	return gs_st_build_hash(st);
}

enum gs_status gs_st_open(const char *model_dir, struct gs_safetensors **out)
{
	struct stat sb;
	enum gs_status rc;
	char *path = NULL;

	*out = NULL;
	struct gs_safetensors *st = calloc(1, sizeof(*st));
	if (!st)
		return gs_errorf(GS_ERR_NOMEM, "safetensors: out of memory");
	st->checksum = GS_ST_FNV_INIT;

	if (stat(model_dir, &sb) != 0) {
		rc = gs_errorf(errno == ENOENT ? GS_ERR_NOT_FOUND : GS_ERR_IO, "%s: %s", model_dir, strerror(errno));
		goto out_close_st;
	}
	if (S_ISREG(sb.st_mode)) {
		rc = gs_st_open_single(st, model_dir);
		goto out_check;
	}
	path = gs_st_join(model_dir, GS_ST_SINGLE_NAME);
	if (!path) {
		rc = gs_errorf(GS_ERR_NOMEM, "safetensors: out of memory");
		goto out_close_st;
	}
	if (access(path, F_OK) == 0) {
		rc = gs_st_open_single(st, path);
		goto out_check;
	}
	free(path);
	path = gs_st_join(model_dir, GS_ST_INDEX_NAME);
	if (!path) {
		rc = gs_errorf(GS_ERR_NOMEM, "safetensors: out of memory");
		goto out_close_st;
	}
	if (access(path, F_OK) == 0) {
		rc = gs_st_open_index(st, model_dir, path);
		goto out_check;
	}
	free(path);
	path = NULL;
	rc = gs_st_find_single(model_dir, &path);
	if (rc == GS_OK)
		rc = gs_st_open_single(st, path);
out_check:
	free(path);
	if (rc == GS_OK) {
		*out = st;
		return GS_OK;
	}
out_close_st:
	gs_st_close(st);
	return rc;
}

void gs_st_close(struct gs_safetensors *st)
{
	if (!st)
		return;
	for (size_t i = 0; i < st->count; i++)
		free((char *)st->tensors[i].name);
	for (int i = 0; i < st->nshards; i++) {
		if (st->shards[i].map)
			munmap(st->shards[i].map, st->shards[i].size);
		free(st->shards[i].path);
	}
	free(st->shards);
	free(st->tensors);
	free(st->slots);
	free(st);
}

const struct gs_st_tensor *gs_st_find(const struct gs_safetensors *st, const char *name)
{
	if (!st->nslots)
		return NULL;
	size_t s = (size_t)gs_st_hash_name(name) & (st->nslots - 1);
	while (st->slots[s]) {
		const struct gs_st_tensor *t = &st->tensors[st->slots[s] - 1];
		if (strcmp(t->name, name) == 0)
			return t;
		s = (s + 1) & (st->nslots - 1);
	}
	return NULL;
}

const struct gs_st_tensor *gs_st_find_text(const struct gs_safetensors *st, const char *suffix)
{
	static const char *const prefixes[] = { "model.", "language_model.model.", "model.language_model." };
	char buf[512];

	for (size_t i = 0; i < sizeof(prefixes) / sizeof(prefixes[0]); i++) {
		int n = snprintf(buf, sizeof(buf), "%s%s", prefixes[i], suffix);
		if (n < 0 || (size_t)n >= sizeof(buf))
			return NULL;
		const struct gs_st_tensor *t = gs_st_find(st, buf);
		if (t)
			return t;
	}
	return NULL;
}

size_t gs_st_count(const struct gs_safetensors *st)
{
	return st->count;
}

const struct gs_st_tensor *gs_st_at(const struct gs_safetensors *st, size_t i)
{
	GS_ASSERT(i < st->count);
	return &st->tensors[i];
}

size_t gs_st_total_bytes(const struct gs_safetensors *st)
{
	return st->total_bytes;
}

int gs_st_shard_count(const struct gs_safetensors *st)
{
	return st->nshards;
}

const char *gs_st_file_of(const struct gs_safetensors *st, int shard)
{
	if (shard < 0 || shard >= st->nshards)
		return "?";
	return st->shards[shard].path;
}

uint64_t gs_st_header_checksum(const struct gs_safetensors *st)
{
	return st->checksum;
}

/* madvise over the pages covering [p, p+n): advisory, a failure costs speed only. */
static void advise_pages(const void *p, size_t n, int advice)
{
	long pg = sysconf(_SC_PAGESIZE);
	uintptr_t a = (uintptr_t)p & ~(uintptr_t)(pg - 1);

	if (n)
		(void)madvise((void *)a, (uintptr_t)p + n - a, advice);
}

void gs_st_prefetch(const struct gs_safetensors *st, const void *p, size_t n)
{
	advise_pages(p, n, MADV_WILLNEED);
}

/* The mapping is private and never written: dropping pages only costs a refault from the page
 * cache if anything reads them again (a neighbouring tensor's edge page). */
void gs_st_evict(const struct gs_safetensors *st, const void *p, size_t n)
{
	advise_pages(p, n, MADV_DONTNEED);
}
