/* Image files and image token recipes for the command-line modes (gs_cli_images.h). */
#include "gs_cli_images.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gs_image.h"

#define GS_TOKEN_NEWLINE2 108 /* "\n\n" in the Gemma 3 vocabulary */

static bool ends_with(const char *s, size_t n, const char *suffix)
{
	size_t k = strlen(suffix);
	return n >= k && memcmp(s + n - k, suffix, k) == 0;
}

/* One file into out (size*size*3 bytes). */
static enum gs_status load_one(const char *path, int32_t size, uint8_t *out)
{
	size_t want = (size_t)size * (size_t)size * 3, len = 0;
	char *data = NULL;
	enum gs_status st;

	GS_TRY(gs_read_file(path, &data, &len));
	if (ends_with(path, strlen(path), ".rgb")) {
		st = len == want ? GS_OK
				 : gs_errorf(GS_ERR_INVALID_ARG, "%s: %zu bytes, a preprocessed .rgb image of this model "
					     "is %d x %d x 3 = %zu", path, len, size, size, want);
		if (st == GS_OK)
			memcpy(out, data, want);
	} else {
		st = gs_image_prepare(data, len, NULL, NULL, size, out);
		if (st != GS_OK)
			gs_error_prefix(st, "%s", path);
	}
	free(data);
	return st;
}

enum gs_status gs_cli_load_images(const char *list, int32_t size, uint8_t **px, int32_t *n)
{
	size_t one = (size_t)size * (size_t)size * 3;
	int32_t count = 1, k = 0;
	uint8_t *buf;
	enum gs_status st = GS_OK;

	*px = NULL, *n = 0;
	if (size < 1)
		return gs_errorf(GS_ERR_INVALID_ARG, "this model takes no images");
	for (const char *c = list; *c; c++)
		count += *c == ',';
	buf = malloc(one * (size_t)count);
	if (!buf)
		return gs_errorf(GS_ERR_NOMEM, "out of memory for %d images", count);
	for (const char *s = list; st == GS_OK; k++) {
		const char *e = strchr(s, ',');
		size_t len = e ? (size_t)(e - s) : strlen(s);
		char path[4096];
		if (len == 0 || len >= sizeof(path)) {
			st = gs_errorf(GS_ERR_INVALID_ARG, "image %d of \"%s\": empty or too long a file name", k + 1, list);
			break;
		}
		memcpy(path, s, len);
		path[len] = 0;
		st = load_one(path, size, buf + (size_t)k * one);
		if (!e)
			break;
		s = e + 1;
	}
	if (st != GS_OK) {
		free(buf);
		return st;
	}
	*px = buf, *n = count;
	return GS_OK;
}

enum gs_status gs_cli_expand_images(const struct gs_vision_config *v, const int32_t *ids, int32_t n, int32_t **out,
				    int32_t *n_out, int32_t *n_markers)
{
	int32_t markers = 0, k = 0;
	int32_t *o;

	*out = NULL, *n_out = 0, *n_markers = 0;
	if (!v->present)
		return gs_errorf(GS_ERR_INVALID_ARG, "this model has no vision tower: it takes no images");
	for (int32_t i = 0; i < n; i++) {
		if (ids[i] == v->image_token_id)
			return gs_errorf(GS_ERR_INVALID_ARG, "token %d at index %d is the image token: give <start_of_image> "
					 "(%d) once per image instead, it is expanded", ids[i], i, v->boi_id);
		markers += ids[i] == v->boi_id;
	}
	o = malloc(sizeof(int32_t) * ((size_t)n + (size_t)markers * ((size_t)v->mm_tokens_per_image + 4)));
	if (!o)
		return gs_errorf(GS_ERR_NOMEM, "out of memory");
	for (int32_t i = 0; i < n; i++) {
		if (ids[i] != v->boi_id) {
			o[k++] = ids[i];
			continue;
		}
		o[k++] = GS_TOKEN_NEWLINE2;
		o[k++] = v->boi_id;
		for (int32_t t = 0; t < v->mm_tokens_per_image; t++)
			o[k++] = v->image_token_id;
		o[k++] = v->eoi_id;
		o[k++] = GS_TOKEN_NEWLINE2;
	}
	*out = o, *n_out = k, *n_markers = markers;
	return GS_OK;
}
