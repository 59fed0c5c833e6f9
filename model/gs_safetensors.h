/* Safetensors checkpoints: a zero-copy reader over mmap and a streaming writer.
 *
 * Reader: gs_st_open() maps every shard of a model directory read-only and validates each
 * header completely (sizes, dtypes, offsets, overlaps, index consistency) before anything
 * else looks at it, so later code may trust every gs_st_tensor it is handed. Tensor data
 * is never copied: gs_st_tensor.data points into the mapping and lives until gs_st_close().
 *
 * Writer: collects tensor descriptions (a data pointer or a generator callback) and
 * streams them to one file or N shards plus model.safetensors.index.json, in sorted-name
 * order like the Python library, without holding the model in memory. */
#ifndef GS_SAFETENSORS_H
#define GS_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "gs_dtype.h"
#include "gs_status.h"

#define GS_ST_MAX_DIMS 4

/* One tensor of an opened checkpoint. Plain data: hot loops may index it directly. */
struct gs_st_tensor {
	const char   *name;                    /* exact name as stored in the header */
	enum gs_dtype dtype;                   /* F32, F16 or BF16 */
	int           ndim;                    /* 0..GS_ST_MAX_DIMS */
	int64_t       shape[GS_ST_MAX_DIMS];   /* [ndim], row-major; unused dims are 1 */
	const void   *data;                    /* into the read-only mmap; may be unaligned
	                                          only if the file itself is */
	size_t        nbytes;                  /* product(shape) * dtype size */
	int           shard;                   /* index for gs_st_file_of() */
};

struct gs_safetensors; /* opaque: mappings, tensor table, name hash */

/* Open a checkpoint. model_dir is a directory holding model.safetensors, or
 * model.safetensors.index.json with its shards, or exactly one *.safetensors file; it may
 * also be the path of a .safetensors file itself. On failure *out is NULL, nothing stays
 * mapped and gs_last_error() names the file and the problem:
 *   GS_ERR_IO (cannot open/map), GS_ERR_NOT_FOUND (no checkpoint, shard absent),
 *   GS_ERR_FORMAT (malformed header or index), GS_ERR_UNSUPPORTED (dtype, >4 dims),
 *   GS_ERR_NOMEM. */
enum gs_status gs_st_open(const char *model_dir, struct gs_safetensors **out);
void           gs_st_close(struct gs_safetensors *st); /* NULL is allowed */

/* Exact-name lookup (hash); NULL when absent. */
const struct gs_st_tensor *gs_st_find(const struct gs_safetensors *st, const char *name);
/* Text-decoder lookup across the three naming schemes, tried in this order:
 *   "model." suffix, "language_model.model." suffix, "model.language_model." suffix
 * e.g. suffix "layers.3.self_attn.q_proj.weight" or "embed_tokens.weight". */
const struct gs_st_tensor *gs_st_find_text(const struct gs_safetensors *st, const char *suffix);

size_t                     gs_st_count(const struct gs_safetensors *st);
const struct gs_st_tensor *gs_st_at(const struct gs_safetensors *st, size_t i); /* i < count, in
                                                                                  shard then name order */
size_t      gs_st_total_bytes(const struct gs_safetensors *st);  /* sum of mapped file sizes */
int         gs_st_shard_count(const struct gs_safetensors *st);
const char *gs_st_file_of(const struct gs_safetensors *st, int shard); /* path, for messages */

/* FNV-1a 64 over the JSON header bytes of every shard, in shard order (shards sorted by
 * file name). Ranks compare it to make sure they opened the same checkpoint. */
uint64_t gs_st_header_checksum(const struct gs_safetensors *st);

/* Hint the kernel to read [p, p+n) ahead (madvise WILLNEED); p must lie in a mapping. */
void gs_st_prefetch(const struct gs_safetensors *st, const void *p, size_t n);
/* Drop [p, p+n) from this process's resident set (madvise DONTNEED) once it has been copied:
 * a tensor-parallel rank copies its columns of ROW-split weights and must not keep the whole
 * source resident. Data stays valid (refaulted from the page cache on access). */
void gs_st_evict(const struct gs_safetensors *st, const void *p, size_t n);

/* ---- writer ------------------------------------------------------------------------- */

struct gs_st_writer; /* opaque */

/* Fills dst with elements [first, first+count) of tensor `name` (row-major, in the tensor's
 * dtype). Called in chunks, in order; must not fail. */
typedef void (*gs_st_gen_fn)(void *ctx, const char *name, size_t first, size_t count, void *dst);

enum gs_status gs_st_writer_new(struct gs_st_writer **out);
void           gs_st_writer_free(struct gs_st_writer *w); /* NULL is allowed */

/* Add a tensor whose bytes are at data (must stay valid until gs_st_writer_write). */
enum gs_status gs_st_writer_add(struct gs_st_writer *w, const char *name, enum gs_dtype dtype,
				int ndim, const int64_t *shape, const void *data);
/* Add a tensor produced on the fly by gen(ctx, ...) while writing. */
enum gs_status gs_st_writer_add_gen(struct gs_st_writer *w, const char *name, enum gs_dtype dtype,
				    int ndim, const int64_t *shape, gs_st_gen_fn gen, void *ctx);

/* Sum of the tensor bytes added so far (the index's metadata.total_size). */
uint64_t gs_st_writer_total_bytes(const struct gs_st_writer *w);

/* Write dir/model.safetensors when nshards <= 1, else dir/model-0000i-of-0000N.safetensors and
 * dir/model.safetensors.index.json; tensors are split in sorted-name order, balanced by
 * bytes. dir must exist. Duplicate names fail with GS_ERR_INVALID_ARG; I/O errors with
 * GS_ERR_IO naming the file. */
enum gs_status gs_st_writer_write(struct gs_st_writer *w, const char *dir, int nshards);

#endif
