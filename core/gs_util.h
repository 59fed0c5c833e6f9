/* Small helpers shared by every layer: a monotonic clock, parsing of token-id lists, and reading
 * a whole file that may hold a secret. */
#ifndef GS_UTIL_H
#define GS_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gs_status.h"

/* Monotonic seconds (CLOCK_MONOTONIC). */
double gs_now_s(void);

/* Memory for big buffers streamed over and over (weights, images): from 4 MiB on, 2 MiB aligned
 * and advised for transparent huge pages, so a pass over it does not miss the TLB every 4 KiB
 * (the bandwidth `gemmashard bench` measures is read from such a buffer). Freed with free();
 * NULL when out of memory. */
void *gs_alloc_huge(size_t n);

/* "2,105,2364" (commas and/or spaces) -> malloc'd non-negative ids. GS_ERR_INVALID_ARG with a
 * message quoting the text when it is empty or not a list of ids. */
enum gs_status gs_parse_id_list(const char *s, int32_t **ids, int32_t *n);

/* Reads the whole regular file at path into a malloc'd, NUL-terminated buffer (*len bytes before
 * the NUL). Messages start with `what` ("--tls-key /etc/k.pem", "api key file /etc/keys"): cannot
 * open, not a regular file, larger than max bytes, and, when secret is set, a file group or
 * others may read or write ("(mode 0644); allow its owner only: chmod 600 PATH"). A secret's
 * buffer is wiped before it is freed on a failed read; the caller wipes it after use. */
enum gs_status gs_read_file_checked(const char *what, const char *path, bool secret, size_t max, char **out,
				    size_t *len);

#endif
