/* gemmashard coordinator: API key sets (gs_apikeys.h): the key file, its checks, and the
 * constant-time match. */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gs_apikeys.h"
#include "gs_util.h"

#define GS_APIKEY_FILE_MAX (1u << 20) /* bytes of a key file */

struct gs_apikey {
	char   name[GS_APIKEY_NAME_MAX + 1];
	char  *key;   /* NUL-terminated, len characters; wiped when freed */
	size_t len;
	int    line;  /* in the file; 0: GEMMASHARD_API_KEY */
};

struct gs_apikeys {
	struct gs_apikey *keys;
	size_t            n, cap;
};

void gs_apikeys_free(struct gs_apikeys *k)
{
	if (!k)
		return;
	for (size_t i = 0; i < k->n; i++) {
		explicit_bzero(k->keys[i].key, k->keys[i].len);
		free(k->keys[i].key);
	}
	free(k->keys);
	free(k);
}

size_t gs_apikeys_count(const struct gs_apikeys *k)
{
	return k ? k->n : 0;
}

const char *gs_apikeys_name(const struct gs_apikeys *k, size_t i)
{
	return k->keys[i].name;
}

long gs_apikeys_match(const struct gs_apikeys *k, const char *token, size_t len)
{
	uint64_t found = UINT64_MAX;

	for (size_t i = 0; i < k->n; i++) {
		const struct gs_apikey *a = &k->keys[i];
		uint64_t ne = (uint64_t)(a->len ^ len);
		unsigned char acc = 0;

		for (size_t j = 0; j < a->len; j++)
			acc |= (unsigned char)(a->key[j] ^ (j < len ? token[j] : 0));
		ne |= acc;
		/* mask: all ones when this key matched (ne == 0), else zero; no branch on it */
		uint64_t mask = ((ne | (0 - ne)) >> 63) - 1;
		found = (found & ~mask) | ((uint64_t)i & mask);
	}
	return found == UINT64_MAX ? -1 : (long)found;
}

/* ---- loading ----------------------------------------------------------------------------- */

static bool name_char(char ch)
{
	return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '.' ||
	       ch == '_' || ch == '-';
}

/* A key's characters: printable ASCII, no space (it travels in an HTTP header and in gRPC
 * metadata). NULL when fine, else the reason. */
static const char *key_problem(const char *key, size_t len)
{
	if (len < GS_APIKEY_MIN_LEN)
		return "the key is shorter than 16 characters";
	if (len > GS_APIKEY_MAX_LEN)
		return "the key is longer than 1024 characters";
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)key[i] < 0x21 || (unsigned char)key[i] > 0x7e)
			return "the key has a character that is not printable ASCII";
	return NULL;
}

/* Adds a checked key; the duplicate checks compare with every key so far (load time only). */
static enum gs_status add_key(struct gs_apikeys *k, const char *src, const char *name, size_t name_len,
			      const char *key, size_t key_len, int line)
{
	struct gs_apikey *a;

	for (size_t i = 0; i < k->n; i++) {
		const struct gs_apikey *b = &k->keys[i];

		/* (the name "env" of GEMMASHARD_API_KEY is refused in the file, so line > 0 here) */
		if (strlen(b->name) == name_len && memcmp(b->name, name, name_len) == 0)
			return gs_errorf(GS_ERR_INVALID_ARG, "%s line %d: duplicate key name (also on line %d)", src,
					 line, b->line);
		if (b->len == key_len && memcmp(b->key, key, key_len) == 0)
			return line ? gs_errorf(GS_ERR_INVALID_ARG, "%s line %d: the same key as line %d", src, line,
						b->line)
				    : gs_errorf(GS_ERR_INVALID_ARG, "GEMMASHARD_API_KEY is the same key as %s line %d",
						src, b->line);
	}
	if (k->n == GS_APIKEY_MAX_KEYS)
		return gs_errorf(GS_ERR_INVALID_ARG, "%s has more than %d keys", src, GS_APIKEY_MAX_KEYS);
	if (k->n == k->cap) {
		size_t cap = k->cap ? 2 * k->cap : 16;
		struct gs_apikey *p = realloc(k->keys, cap * sizeof(*p));

		if (!p)
			return gs_errorf(GS_ERR_NOMEM, "api keys: out of memory");
		k->keys = p;
		k->cap = cap;
	}
	a = &k->keys[k->n];
	a->key = malloc(key_len + 1);
	if (!a->key)
		return gs_errorf(GS_ERR_NOMEM, "api keys: out of memory");
	memcpy(a->key, key, key_len);
	a->key[key_len] = '\0';
	a->len = key_len;
	memcpy(a->name, name, name_len);
	a->name[name_len] = '\0';
	a->line = line;
	k->n++;
	return GS_OK;
}

/* One line (without its newline). Fields: "KEY" or "NAME KEY". */
static enum gs_status parse_line(struct gs_apikeys *k, const char *src, const char *p, const char *end, int line)
{
	const char *f[3], *fe[3];
	int nf = 0;
	char auto_name[32];
	const char *why;

	if (end > p && end[-1] == '\r')
		end--;
	if (end > p && memchr(p, '\0', (size_t)(end - p)))
		return gs_errorf(GS_ERR_INVALID_ARG, "%s line %d: has a NUL byte", src, line);
	while (p < end) {
		while (p < end && (*p == ' ' || *p == '\t'))
			p++;
		if (p == end)
			break;
		if (nf == 0 && *p == '#')
			return GS_OK;
		if (nf == 3)
			break;
		f[nf] = p;
		while (p < end && *p != ' ' && *p != '\t')
			p++;
		fe[nf++] = p;
	}
	if (nf == 0)
		return GS_OK;
	if (nf > 2)
		return gs_errorf(GS_ERR_INVALID_ARG, "%s line %d: expected \"NAME KEY\" or \"KEY\", found more than two "
				 "fields", src, line);
	const char *key = f[nf - 1];
	size_t key_len = (size_t)(fe[nf - 1] - key);
	if ((why = key_problem(key, key_len)))
		return gs_errorf(GS_ERR_INVALID_ARG, "%s line %d: %s", src, line, why);
	if (nf == 1) {
		snprintf(auto_name, sizeof(auto_name), "key-%d", line);
		return add_key(k, src, auto_name, strlen(auto_name), key, key_len, line);
	}
	size_t name_len = (size_t)(fe[0] - f[0]);
	bool ok = name_len >= 1 && name_len <= GS_APIKEY_NAME_MAX;
	for (size_t i = 0; ok && i < name_len; i++)
		ok = name_char(f[0][i]);
	if (!ok)
		return gs_errorf(GS_ERR_INVALID_ARG, "%s line %d: a key name is 1 to %d characters of A-Z a-z 0-9 . _ -",
				 src, line, GS_APIKEY_NAME_MAX);
	if (name_len == strlen(GS_APIKEY_ENV_NAME) && memcmp(f[0], GS_APIKEY_ENV_NAME, name_len) == 0)
		return gs_errorf(GS_ERR_INVALID_ARG, "%s line %d: the name \"" GS_APIKEY_ENV_NAME "\" is reserved for "
				 "GEMMASHARD_API_KEY", src, line);
	return add_key(k, src, f[0], name_len, key, key_len, line);
}

enum gs_status gs_apikeys_load(const char *path, const char *env_key, struct gs_apikeys **out)
{
	struct gs_apikeys *k = calloc(1, sizeof(*k));
	enum gs_status s = GS_OK;
	char src[600];
	char *buf = NULL;
	size_t len = 0;
	const char *why;

	*out = NULL;
	if (!k)
		return gs_errorf(GS_ERR_NOMEM, "api keys: out of memory");
	if (path) {
		snprintf(src, sizeof(src), "api key file %.500s", path);
		if ((s = gs_read_file_checked(src, path, true, GS_APIKEY_FILE_MAX, &buf, &len)) != GS_OK)
			goto out_free;
		const char *p = buf, *end = buf + len;
		for (int line = 1; p < end && s == GS_OK; line++) {
			const char *nl = memchr(p, '\n', (size_t)(end - p));
			const char *le = nl ? nl : end;

			s = parse_line(k, src, p, le, line);
			p = nl ? nl + 1 : end;
		}
		if (s != GS_OK)
			goto out_free;
		if (k->n == 0) {
			s = gs_errorf(GS_ERR_INVALID_ARG, "%s has no keys (only comments and blank lines)", src);
			goto out_free;
		}
	}
	if (env_key && env_key[0]) {
		if ((why = key_problem(env_key, strlen(env_key)))) {
			s = gs_errorf(GS_ERR_INVALID_ARG, "GEMMASHARD_API_KEY: %s", why);
			goto out_free;
		}
		s = add_key(k, path ? src : "GEMMASHARD_API_KEY", GS_APIKEY_ENV_NAME, strlen(GS_APIKEY_ENV_NAME),
			    env_key, strlen(env_key), 0);
		if (s != GS_OK)
			goto out_free;
	}
	*out = k;
	k = NULL;
out_free:
	if (buf) {
		explicit_bzero(buf, len);
		free(buf);
	}
	gs_apikeys_free(k);
	return s;
}
