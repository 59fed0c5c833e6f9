/* Small helpers over cJSON shared by every JSON reader (batch input, the HTTP API). */
#ifndef GS_JSON_H
#define GS_JSON_H

#include <stddef.h>

#include <cjson/cJSON.h>

/* The JSON type name of v for error messages ("string", "number", "boolean", "null",
 * "array", "object"); "nothing" for NULL (an absent field). */
const char *gs_json_type(const cJSON *v);

/* 1-based offset of a "\u0000" escape inside a string of the JSON text p[0..n), or 0. cJSON hands
 * strings over NUL-terminated, so it would silently cut such a string (an id, a prompt, a pattern)
 * short: readers refuse the text instead. */
size_t gs_json_find_nul_escape(const char *p, size_t n);

#endif
