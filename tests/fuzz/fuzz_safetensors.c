/* libFuzzer target: a checkpoint as gs_st_open reads it, which validates every header entry
 * (dtypes, shapes, offsets, overlaps) and, for a sharded one, the index against the shards;
 * then every tensor it hands out is read (ASan checks the ranges) and found by its name.
 *   - an input starting with '{': model.safetensors.index.json of a directory that holds two
 *     valid shards (model-00001-of-00002.safetensors with a.weight and b.weight,
 *     model-00002-of-00002.safetensors with c);
 *   - anything else: a model.safetensors file (8-byte header length, JSON header, data). */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz_util.h"
#include "gs_safetensors.h"
#include "gs_status.h"

static const char *index_dir(void)
{
	static char dir[600];
	/* shard = 8-byte little-endian header length, header, data */
	static const char h1[] = "{\"a.weight\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[0,8]},"
				 "\"b.weight\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[8,12]}}";
	static const char h2[] = "{\"__metadata__\":{\"format\":\"pt\"},\"c\":{\"dtype\":\"F32\",\"shape\":[],"
				 "\"data_offsets\":[0,4]}}";
	uint8_t buf[256];

	if (dir[0])
		return dir;
	snprintf(dir, sizeof(dir), "%s/sharded", gs_fuzz_scratch());
	mkdir(dir, 0700);
	const char *hs[2] = { h1, h2 };
	const size_t data[2] = { 12, 4 };
	for (int s = 0; s < 2; s++) {
		uint64_t n = strlen(hs[s]);
		char name[64];
		for (int i = 0; i < 8; i++)
			buf[i] = (uint8_t)(n >> (8 * i));
		memcpy(buf + 8, hs[s], n);
		memset(buf + 8 + n, 0x3f, data[s]);
		snprintf(name, sizeof(name), "sharded/model-0000%d-of-00002.safetensors", s + 1);
		gs_fuzz_write(name, buf, 8 + n + data[s]);
	}
	return dir;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct gs_safetensors *st;
	const char *path;

	if (size > 0 && data[0] == '{') {
		path = index_dir();
		gs_fuzz_write("sharded/model.safetensors.index.json", data, size);
	} else {
		path = gs_fuzz_write("model.safetensors", data, size);
	}
	gs_clear_error();
	if (gs_st_open(path, &st) != GS_OK) {
		gs_fuzz_require(gs_last_error()[0] != '\0', "a checkpoint refused without a message");
		return 0;
	}
	uint64_t sum = 0;
	for (size_t i = 0; i < gs_st_count(st); i++) {
		const struct gs_st_tensor *t = gs_st_at(st, i);
		gs_fuzz_require(gs_st_find(st, t->name) == t, "a tensor is not found by its own name");
		gs_fuzz_require(t->ndim >= 0 && t->ndim <= GS_ST_MAX_DIMS, "a tensor has too many dims");
		gs_fuzz_require(t->shard >= 0 && t->shard < gs_st_shard_count(st), "a tensor of no shard");
		if (t->nbytes) /* ASan: the whole range is inside the mapping */
			sum += ((const uint8_t *)t->data)[0] + ((const uint8_t *)t->data)[t->nbytes - 1];
	}
	(void)sum;
	(void)gs_st_header_checksum(st);
	gs_st_close(st);
	return 0;
}
