/* gemmashard coordinator: API keys (ARCHITECTURE.md §7, "Security").
 *
 * A key set is immutable once loaded; the coordinator swaps in a new one on SIGHUP
 * (gs_coord_reload) and keeps the old one when the new file is bad. Keys come from a key
 * file (--api-key-file) and/or the environment (GEMMASHARD_API_KEY, named "env"). They are
 * never written anywhere: every message about a bad file names the file and the line, never
 * a key or anything else on the line.
 *
 * Key file format, one key per line:
 *
 *     # comments and blank lines are ignored
 *     alice   3b4f0c7e9a2d41d8b6f1e0c2a9d7e5f3      NAME KEY
 *     9c1e4b7a2f6d8e0c3a5b7d9f1e2c4a6b               KEY alone: named "key-<line number>"
 *
 * Fields are separated by spaces or tabs; a line whose first field starts with '#' is a comment
 * (so a key alone on its line cannot start with '#'). A name is 1..64 characters of A-Z a-z 0-9 . _ -
 * ("env" is reserved); a key is 16..1024 characters of printable ASCII without spaces. Names
 * and keys must be unique. The file must be a regular file of at most 1 MiB that neither
 * group nor others may access (chmod 600), with at least one key. */
#ifndef GS_APIKEYS_H
#define GS_APIKEYS_H

#include <stddef.h>

#include "gs_status.h"

#define GS_APIKEY_NAME_MAX 64   /* characters of a key name */
#define GS_APIKEY_MIN_LEN  16   /* characters of a key */
#define GS_APIKEY_MAX_LEN  1024
#define GS_APIKEY_MAX_KEYS 4096 /* keys in one file */
#define GS_APIKEY_ENV_NAME "env"

struct gs_apikeys;

/* Reads the key file at path (NULL: none) and adds env_key (NULL or "": none) as "env".
 * GS_ERR_IO: the file cannot be opened or read; GS_ERR_INVALID_ARG: permissions, size, or a
 * bad, duplicate or missing key, with "api key file PATH line N: ..." (or a message naming
 * GEMMASHARD_API_KEY) and nothing from the line itself. On success *out is freed with
 * gs_apikeys_free(). */
enum gs_status gs_apikeys_load(const char *path, const char *env_key, struct gs_apikeys **out);
/* Wipes the keys and frees. NULL is allowed. */
void gs_apikeys_free(struct gs_apikeys *k);

size_t gs_apikeys_count(const struct gs_apikeys *k);
/* The name of key i (i < count). */
const char *gs_apikeys_name(const struct gs_apikeys *k, size_t i);
/* The index of the key equal to token[0..len), or -1. Compares against every key, each in
 * full, with no early exit: the time taken depends on the number and lengths of the keys and
 * on len, never on which bytes match. */
long gs_apikeys_match(const struct gs_apikeys *k, const char *token, size_t len);

#endif
