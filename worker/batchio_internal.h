/* Batch mode I/O internals shared by batchio_in.c and batchio_out.c (not part of the API;
 * gs_batchio.h is): the string -> line map both keep ids in, and two text checks. */
#ifndef GS_BATCHIO_INTERNAL_H
#define GS_BATCHIO_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- string -> line map (open addressing), batchio_out.c ------------------------------------ */

struct gs_bio_set {
	char   **key;  /* [cap] owned; NULL: empty slot */
	int64_t *val;  /* [cap] line number of the key  */
	size_t   cap;  /* power of two, or 0            */
	size_t   n;
};

/* The value stored with key, or NULL when key is absent. */
const int64_t *gs_bio_set_find(const struct gs_bio_set *s, const char *key);
/* Adds key (copied) unless present. false only on allocation failure. */
bool gs_bio_set_add(struct gs_bio_set *s, const char *key, int64_t val);
/* Frees the keys and tables and zeroes *s. */
void gs_bio_set_free(struct gs_bio_set *s);

/* ---- text checks ---------------------------------------------------------------------------- */

/* s (NUL-terminated) is well-formed UTF-8 (batchio_out.c). */
bool gs_bio_utf8_valid(const char *s);

static inline bool gs_bio_is_ws(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

#endif
