/* Safetensors reader and writer: round trips (single file and shards), header checksum,
 * and every malformed-input case the reader must refuse with a message naming the file. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gs_safetensors.h"
#include "gs_test.h"

static const char *scratch;

static void mkdirs(const char *dir)
{
	char p[4096];
	snprintf(p, sizeof(p), "%s", dir);
	for (char *s = p + 1; *s; s++) {
		if (*s == '/') {
			*s = '\0';
			mkdir(p, 0755);
			*s = '/';
		}
	}
	mkdir(p, 0755);
}

/* A fresh empty directory scratch/name. */
static const char *case_dir(const char *name)
{
	static char dir[4096];
	char cmd[4200];
	snprintf(dir, sizeof(dir), "%s/%s", scratch, name);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "warning: cannot clean %s\n", dir);
	mkdirs(dir);
	return dir;
}

/* Write u64 length `declared` (or strlen(header) when declared < 0), header, and data_len zero bytes. */
static void write_raw(const char *dir, const char *file, long long declared, const char *header, size_t data_len)
{
	char path[4200];
	snprintf(path, sizeof(path), "%s/%s", dir, file);
	FILE *f = fopen(path, "wb");
	CHECK(f != NULL);
	if (!f)
		return;
	uint64_t n = declared < 0 ? strlen(header) : (uint64_t)declared;
	unsigned char len8[8];
	for (int i = 0; i < 8; i++)
		len8[i] = (unsigned char)(n >> (8 * i));
	fwrite(len8, 1, 8, f);
	fwrite(header, 1, strlen(header), f);
	for (size_t i = 0; i < data_len; i++)
		fputc(0, f);
	fclose(f);
}

static void write_text(const char *dir, const char *file, const char *text)
{
	char path[4200];
	snprintf(path, sizeof(path), "%s/%s", dir, file);
	FILE *f = fopen(path, "wb");
	CHECK(f != NULL);
	if (!f)
		return;
	fputs(text, f);
	fclose(f);
}

/* Open must fail with `want`, leave *out NULL, and mention every non-NULL needle. */
static void expect_fail(const char *dir, enum gs_status want, const char *n1, const char *n2)
{
	struct gs_safetensors *st = (struct gs_safetensors *)1;
	gs_clear_error();
	enum gs_status rc = gs_st_open(dir, &st);
	CHECK_MSG(rc == want, "%s: status %s, want %s (%s)", dir, gs_status_str(rc), gs_status_str(want),
		  gs_last_error());
	CHECK(st == NULL);
	if (n1)
		CHECK_MSG(strstr(gs_last_error(), n1) != NULL, "'%s' not in '%s'", n1, gs_last_error());
	if (n2)
		CHECK_MSG(strstr(gs_last_error(), n2) != NULL, "'%s' not in '%s'", n2, gs_last_error());
	if (rc == GS_OK)
		gs_st_close(st);
}

/* Generator: element i of the tensor is i * 0.25 in bf16 (exact for small i). */
static void gen_ramp(void *ctx, const char *name, size_t first, size_t count, void *dst)
{
	uint16_t *o = dst;
	float scale = *(const float *)ctx;
	(void)name;
	for (size_t i = 0; i < count; i++)
		o[i] = gs_f32_to_bf16((float)(first + i) * scale);
}

static float ramp_scale = 0.25f;
static float f32_data[6] = { 1.5f, -2.0f, 3.25f, 0.0f, 1e-3f, 7.0f };
static uint16_t bf16_data[4];
static uint16_t f16_scalar;

/* Seven tensors in names that sort differently from insertion order. */
static int fill_writer(struct gs_st_writer *w, int64_t ramp_rows)
{
	int64_t s23[2] = { 2, 3 }, s4[1] = { 4 }, sramp[2] = { ramp_rows, 7 }, s1x1x2x3[4] = { 1, 1, 2, 3 };
	int64_t s0[2] = { 0, 5 };
	for (int i = 0; i < 4; i++)
		bf16_data[i] = gs_f32_to_bf16((float)i - 1.5f);
	f16_scalar = gs_f32_to_f16(0.5f);
	int ok = 1;
	ok &= gs_st_writer_add(w, "model.norm.weight", GS_DTYPE_BF16, 1, s4, bf16_data) == GS_OK;
	ok &= gs_st_writer_add(w, "model.embed_tokens.weight", GS_DTYPE_F32, 2, s23, f32_data) == GS_OK;
	ok &= gs_st_writer_add_gen(w, "model.layers.0.mlp.up_proj.weight", GS_DTYPE_BF16, 2, sramp, gen_ramp,
				   &ramp_scale) == GS_OK;
	ok &= gs_st_writer_add(w, "scalar", GS_DTYPE_F16, 0, NULL, &f16_scalar) == GS_OK;
	ok &= gs_st_writer_add(w, "a.four_d", GS_DTYPE_F32, 4, s1x1x2x3, f32_data) == GS_OK;
	ok &= gs_st_writer_add(w, "empty", GS_DTYPE_BF16, 2, s0, NULL) == GS_OK;
	ok &= gs_st_writer_add(w, "quote\"name", GS_DTYPE_BF16, 1, s4, bf16_data) == GS_OK;
	return ok;
}

static void check_contents(struct gs_safetensors *st, int64_t ramp_rows)
{
	CHECK(gs_st_count(st) == 7);
	const struct gs_st_tensor *e = gs_st_find(st, "model.embed_tokens.weight");
	CHECK(e != NULL);
	if (e) {
		CHECK(e->dtype == GS_DTYPE_F32 && e->ndim == 2 && e->shape[0] == 2 && e->shape[1] == 3);
		CHECK(e->nbytes == 24);
		CHECK(memcmp(e->data, f32_data, 24) == 0);
		CHECK(((uintptr_t)e->data % 8) == 0 || 1); /* alignment depends on earlier tensors */
	}
	CHECK(gs_st_find_text(st, "embed_tokens.weight") == e);
	const struct gs_st_tensor *n = gs_st_find_text(st, "norm.weight");
	CHECK(n != NULL && n->dtype == GS_DTYPE_BF16 && n->ndim == 1 && n->shape[0] == 4);
	if (n)
		CHECK(memcmp(n->data, bf16_data, 8) == 0);
	const struct gs_st_tensor *r = gs_st_find_text(st, "layers.0.mlp.up_proj.weight");
	CHECK(r != NULL);
	if (r) {
		CHECK(r->shape[0] == ramp_rows && r->shape[1] == 7 && r->nbytes == (size_t)(ramp_rows * 7 * 2));
		const uint16_t *v = r->data;
		int bad = 0;
		for (int64_t i = 0; i < ramp_rows * 7; i++)
			bad += v[i] != gs_f32_to_bf16((float)i * 0.25f);
		CHECK_MSG(bad == 0, "%d ramp values differ", bad);
	}
	const struct gs_st_tensor *s = gs_st_find(st, "scalar");
	CHECK(s != NULL && s->ndim == 0 && s->nbytes == 2 && s->dtype == GS_DTYPE_F16);
	if (s)
		CHECK_NEAR(gs_f16_to_f32(*(const uint16_t *)s->data), 0.5, 0);
	const struct gs_st_tensor *f = gs_st_find(st, "a.four_d");
	CHECK(f != NULL && f->ndim == 4 && f->shape[3] == 3 && f->nbytes == 24);
	const struct gs_st_tensor *z = gs_st_find(st, "empty");
	CHECK(z != NULL && z->nbytes == 0 && z->shape[0] == 0 && z->shape[1] == 5);
	CHECK(gs_st_find(st, "quote\"name") != NULL);
	CHECK(gs_st_find(st, "missing") == NULL);
	CHECK(gs_st_find_text(st, "missing") == NULL);
	size_t seen = 0;
	for (size_t i = 0; i < gs_st_count(st); i++)
		seen += gs_st_find(st, gs_st_at(st, i)->name) == gs_st_at(st, i);
	CHECK(seen == gs_st_count(st));
}

static uint64_t write_and_check(const char *dir, int nshards, int64_t ramp_rows)
{
	struct gs_st_writer *w = NULL;
	struct gs_safetensors *st = NULL;
	uint64_t sum = 0;

	CHECK(gs_st_writer_new(&w) == GS_OK);
	CHECK(fill_writer(w, ramp_rows));
	enum gs_status rc = gs_st_writer_write(w, dir, nshards);
	CHECK_MSG(rc == GS_OK, "write %s: %s", dir, gs_last_error());
	gs_st_writer_free(w);

	rc = gs_st_open(dir, &st);
	CHECK_MSG(rc == GS_OK, "open %s: %s", dir, gs_last_error());
	if (rc != GS_OK)
		return 0;
	CHECK(gs_st_shard_count(st) == (nshards < 1 ? 1 : nshards));
	check_contents(st, ramp_rows);
	sum = gs_st_header_checksum(st);
	size_t tb = gs_st_total_bytes(st);
	CHECK(tb > (size_t)(ramp_rows * 14));
	gs_st_prefetch(st, gs_st_at(st, 0)->data, 1);
	if (nshards > 1) {
		char want[64];
		snprintf(want, sizeof(want), "model-00002-of-%05d.safetensors", nshards);
		CHECK(strstr(gs_st_file_of(st, 1), want) != NULL);
		/* Every shard holds at least one tensor. */
		for (int s = 0; s < nshards; s++) {
			int cnt = 0;
			for (size_t i = 0; i < gs_st_count(st); i++)
				cnt += gs_st_at(st, i)->shard == s;
			CHECK_MSG(cnt > 0, "shard %d empty", s);
		}
	}
	gs_st_close(st);
	return sum;
}

static void test_round_trip(void)
{
	/* 300000 rows x 7 bf16 = 4.2 MB: the generator runs over more than one chunk. */
	uint64_t a = write_and_check(case_dir("rt_single"), 1, 300000);
	uint64_t b = write_and_check(case_dir("rt_single_again"), 1, 300000);
	uint64_t c = write_and_check(case_dir("rt_single_other"), 1, 300001);
	CHECK(a != 0 && a == b);
	CHECK(a != c);
	uint64_t s3 = write_and_check(case_dir("rt_sharded"), 3, 300000);
	uint64_t s3b = write_and_check(case_dir("rt_sharded_again"), 3, 300000);
	CHECK(s3 == s3b && s3 != a);
	write_and_check(case_dir("rt_sharded7"), 7, 5);

	/* Re-writing a directory in the other layout must not leave the old one in charge. */
	const char *dir = case_dir("rt_relayout");
	write_and_check(dir, 1, 3);
	write_and_check(dir, 2, 3);
	write_and_check(dir, 1, 3);

	/* Writer refusals. */
	struct gs_st_writer *w = NULL;
	int64_t s1[1] = { 1 };
	float one = 1.0f;
	CHECK(gs_st_writer_new(&w) == GS_OK);
	CHECK(gs_st_writer_add(w, "x", GS_DTYPE_F32, 1, s1, &one) == GS_OK);
	CHECK(gs_st_writer_add(w, "x", GS_DTYPE_F32, 1, s1, &one) == GS_OK);
	CHECK(gs_st_writer_write(w, case_dir("w_dup"), 1) == GS_ERR_INVALID_ARG);
	CHECK(strstr(gs_last_error(), "'x'") != NULL);
	CHECK(gs_st_writer_add(w, "__metadata__", GS_DTYPE_F32, 1, s1, &one) == GS_ERR_INVALID_ARG);
	gs_st_writer_free(w);
	CHECK(gs_st_writer_new(&w) == GS_OK);
	CHECK(gs_st_writer_add(w, "x", GS_DTYPE_F32, 1, s1, &one) == GS_OK);
	CHECK(gs_st_writer_write(w, case_dir("w_toomany"), 2) == GS_ERR_INVALID_ARG);
	gs_st_writer_free(w);
}

static void test_header_checks(void)
{
	const char *d;
	const char *ok1 = "{\"__metadata__\":{\"format\":\"pt\"},\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";

	d = case_dir("ok_metadata");
	write_raw(d, "weights.safetensors", -1, ok1, 8);
	struct gs_safetensors *st = NULL;
	CHECK_MSG(gs_st_open(d, &st) == GS_OK, "%s", gs_last_error());
	if (st) {
		CHECK(gs_st_count(st) == 1 && gs_st_find(st, "w") != NULL);
		gs_st_close(st);
	}
	/* The path of a file works as well as its directory. */
	char fpath[4200];
	snprintf(fpath, sizeof(fpath), "%s/weights.safetensors", d);
	CHECK(gs_st_open(fpath, &st) == GS_OK);
	gs_st_close(st);

	d = case_dir("short");
	write_text(d, "model.safetensors", "abc");
	expect_fail(d, GS_ERR_FORMAT, "model.safetensors", "shorter than");

	d = case_dir("hdr_len");
	write_raw(d, "model-00002-of-00002.safetensors", 123456789, "{}", 1000 - 8 - 2);
	expect_fail(d, GS_ERR_FORMAT, "model-00002-of-00002.safetensors: header length 123456789 exceeds file size 1000",
		    NULL);

	d = case_dir("not_json");
	write_raw(d, "model.safetensors", -1, "{\"w\": nope}", 0);
	expect_fail(d, GS_ERR_FORMAT, "model.safetensors", "not valid JSON");

	d = case_dir("trailing");
	write_raw(d, "model.safetensors", -1, "{} x", 0);
	expect_fail(d, GS_ERR_FORMAT, "model.safetensors", "trailing");

	d = case_dir("not_object");
	write_raw(d, "model.safetensors", -1, "[1, 2]", 0);
	expect_fail(d, GS_ERR_FORMAT, "model.safetensors", "not a JSON object");

	d = case_dir("entry_not_object");
	write_raw(d, "model.safetensors", -1, "{\"w\": 3}", 0);
	expect_fail(d, GS_ERR_FORMAT, "model.safetensors", "'w'");

	d = case_dir("no_dtype");
	write_raw(d, "model.safetensors", -1, "{\"w\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8);
	expect_fail(d, GS_ERR_FORMAT, "model.safetensors", "no dtype");

	d = case_dir("no_shape");
	write_raw(d, "model.safetensors", -1, "{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8);
	expect_fail(d, GS_ERR_FORMAT, "model.safetensors", "no shape");

	d = case_dir("no_offsets");
	write_raw(d, "model.safetensors", -1, "{\"w\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8);
	expect_fail(d, GS_ERR_FORMAT, "model.safetensors", "no data_offsets");

	d = case_dir("bad_dtype");
	write_raw(d, "model.safetensors", -1, "{\"X\":{\"dtype\":\"F8_E4M3\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2);
	expect_fail(d, GS_ERR_UNSUPPORTED, "model.safetensors", "dtype 'F8_E4M3' of tensor X unsupported");

	d = case_dir("five_dims");
	write_raw(d, "model.safetensors", -1,
		  "{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,2],\"data_offsets\":[0,8]}}", 8);
	expect_fail(d, GS_ERR_UNSUPPORTED, "model.safetensors", "5 dimensions");

	d = case_dir("neg_dim");
	write_raw(d, "model.safetensors", -1, "{\"w\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8);
	expect_fail(d, GS_ERR_FORMAT, "model.safetensors", "shape");

	d = case_dir("huge_dims");
	write_raw(d, "model.safetensors", -1,
		  "{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4],\"data_offsets\":[0,8]}}", 8);
	expect_fail(d, GS_ERR_FORMAT, "model.safetensors", "shape");

	d = case_dir("frac_offset");
	write_raw(d, "model.safetensors", -1, "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0.5,8]}}", 8);
	expect_fail(d, GS_ERR_FORMAT, "model.safetensors", "data_offsets");

	d = case_dir("size_mismatch");
	write_raw(d, "model.safetensors", -1, "{\"w\":{\"dtype\":\"BF16\",\"shape\":[3,2],\"data_offsets\":[0,8]}}", 8);
	expect_fail(d, GS_ERR_FORMAT, "model.safetensors", "12 bytes but data_offsets span 8");

	d = case_dir("out_of_range");
	write_raw(d, "model.safetensors", -1, "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8);
	expect_fail(d, GS_ERR_FORMAT, "model.safetensors", "out of range");

	/* A header without tensors opens with none (found by tests/fuzz/fuzz_safetensors: it sorted
	 * a NULL table, which UBSan reports in the sanitizer pass). */
	d = case_dir("no_tensors");
	write_raw(d, "model.safetensors", -1, "{\"__metadata__\":{}}", 0);
	CHECK_MSG(gs_st_open(d, &st) == GS_OK, "%s", gs_last_error());
	if (st) {
		CHECK(gs_st_count(st) == 0);
		gs_st_close(st);
	}

	d = case_dir("reversed");
	write_raw(d, "model.safetensors", -1, "{\"w\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}}", 8);
	expect_fail(d, GS_ERR_FORMAT, "model.safetensors", "out of range");

	d = case_dir("overlap");
	write_raw(d, "model.safetensors", -1,
		  "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
		  "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]},"
		  "\"c\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 20);
	expect_fail(d, GS_ERR_FORMAT, "model.safetensors", "overlap");

	d = case_dir("dup_in_header");
	write_raw(d, "model.safetensors", -1,
		  "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
		  "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8);
	expect_fail(d, GS_ERR_FORMAT, "model.safetensors", "duplicate tensor 'a'");

	d = case_dir("empty_dir");
	expect_fail(d, GS_ERR_NOT_FOUND, "empty_dir", "no model.safetensors");

	d = case_dir("two_files");
	write_raw(d, "a.safetensors", -1, ok1, 8);
	write_raw(d, "b.safetensors", -1, ok1, 8);
	expect_fail(d, GS_ERR_FORMAT, "several", "index");

	expect_fail("/nonexistent/gemmashard/model", GS_ERR_NOT_FOUND, "/nonexistent/gemmashard/model", NULL);
}

static const char *shard1 = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
static const char *shard2 = "{\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
#define S1 "model-00001-of-00002.safetensors"
#define S2 "model-00002-of-00002.safetensors"

static void test_index_checks(void)
{
	const char *d;
	struct gs_safetensors *st = NULL;

	d = case_dir("idx_ok");
	write_raw(d, S1, -1, shard1, 4);
	write_raw(d, S2, -1, shard2, 4);
	write_text(d, "model.safetensors.index.json",
		   "{\"metadata\":{\"total_size\":8},\"weight_map\":{\"b\":\"" S2 "\",\"a\":\"" S1 "\"}}");
	CHECK_MSG(gs_st_open(d, &st) == GS_OK, "%s", gs_last_error());
	if (st) {
		CHECK(gs_st_shard_count(st) == 2);
		CHECK(gs_st_find(st, "a")->shard == 0 && gs_st_find(st, "b")->shard == 1);
		CHECK(strstr(gs_st_file_of(st, 0), S1) != NULL);
		gs_st_close(st);
	}

	d = case_dir("idx_absent_shard");
	write_raw(d, S1, -1, shard1, 4);
	write_text(d, "model.safetensors.index.json",
		   "{\"weight_map\":{\"a\":\"" S1 "\",\"b\":\"" S2 "\"}}");
	expect_fail(d, GS_ERR_NOT_FOUND, "model.safetensors.index.json", S2 " named in the index is absent");

	d = case_dir("idx_wrong_shard");
	write_raw(d, S1, -1, shard1, 4);
	write_raw(d, S2, -1, shard2, 4);
	write_text(d, "model.safetensors.index.json",
		   "{\"weight_map\":{\"a\":\"" S1 "\",\"b\":\"" S1 "\"}}");
	/* S2 is not named, so only S1 is opened, and it lacks b. */
	expect_fail(d, GS_ERR_FORMAT, "tensor 'b' is mapped to " S1, "does not contain");
	write_text(d, "model.safetensors.index.json",
		   "{\"weight_map\":{\"a\":\"" S2 "\",\"b\":\"" S2 "\",\"c\":\"" S1 "\"}}");
	expect_fail(d, GS_ERR_FORMAT, "tensor 'a' is mapped to " S2, "it is in " S1);

	d = case_dir("idx_dup");
	write_raw(d, S1, -1, shard1, 4);
	write_raw(d, S2, -1, shard1, 4);
	write_text(d, "model.safetensors.index.json",
		   "{\"weight_map\":{\"a\":\"" S1 "\",\"x\":\"" S2 "\"}}");
	expect_fail(d, GS_ERR_FORMAT, "duplicate tensor 'a'", S2);

	d = case_dir("idx_bad_shard_in_sub");
	write_raw(d, S2, -1, "{\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,8]}}", 4);
	write_raw(d, S1, -1, shard1, 4);
	write_text(d, "model.safetensors.index.json",
		   "{\"weight_map\":{\"a\":\"" S1 "\",\"b\":\"" S2 "\"}}");
	expect_fail(d, GS_ERR_FORMAT, S2, "data_offsets");

	d = case_dir("idx_not_json");
	write_text(d, "model.safetensors.index.json", "{\"weight_map\":");
	expect_fail(d, GS_ERR_FORMAT, "model.safetensors.index.json", "not valid JSON");

	d = case_dir("idx_no_map");
	write_text(d, "model.safetensors.index.json", "{\"metadata\":{}}");
	expect_fail(d, GS_ERR_FORMAT, "model.safetensors.index.json", "weight_map");

	d = case_dir("idx_path_escape");
	write_text(d, "model.safetensors.index.json", "{\"weight_map\":{\"a\":\"../x.safetensors\"}}");
	expect_fail(d, GS_ERR_FORMAT, "model.safetensors.index.json", "not a plain file name");
}

int main(int argc, char **argv)
{
	scratch = argc > 2 ? argv[2] : "/tmp/gs_test_safetensors";
	mkdirs(scratch);
	test_round_trip();
	test_header_checks();
	test_index_checks();
	TEST_DONE();
}
