/* Small helpers shared by every layer: a monotonic clock and parsing of token-id lists. */
#ifndef GS_UTIL_H
#define GS_UTIL_H

#include <stdint.h>

#include "gs_status.h"

/* Monotonic seconds (CLOCK_MONOTONIC). */
double gs_now_s(void);

/* "2,105,2364" (commas and/or spaces) -> malloc'd non-negative ids. GS_ERR_INVALID_ARG with a
 * message quoting the text when it is empty or not a list of ids. */
enum gs_status gs_parse_id_list(const char *s, int32_t **ids, int32_t *n);

#endif
