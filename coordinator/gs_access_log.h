/* gemmashard coordinator: the access log (ARCHITECTURE.md §7, "Security").
 *
 * One line per client request, written with a single write(2) to stderr or to a file
 * (--access-log FILE, opened O_APPEND and created mode 600):
 *
 *   2026-01-31T09:12:45.120Z access id=42 key=alice api=http method=POST route=/v1/chat/completions
 *       model=medgemma-27b-it status=200 finish=stop prompt_tokens=31 completion_tokens=128 latency_ms=2711.4
 *
 * (one line in the file). Every value is either a number or a name the server chose (route,
 * method and model are fixed strings, key names are checked when the key file is read), so
 * nothing a client sends reaches the log. id is the request id the client sees in its answer
 * ("-" for a request refused before it was submitted); key is "-" without one. Prompts and
 * outputs are never written, except with --log-content: then one more line per submitted
 * request,
 *
 *   2026-01-31T09:12:45.120Z content id=42 prompt="<rendered prompt, JSON string>" output="<JSON string>"
 *
 * Thread safety: every call may come from any thread. */
#ifndef GS_ACCESS_LOG_H
#define GS_ACCESS_LOG_H

#include <stddef.h>
#include <stdint.h>

#include "gs_coord.h"
#include "gs_status.h"

struct gs_alog;

/* path NULL or "-": stderr. GS_ERR_IO when the file cannot be opened for appending. */
enum gs_status gs_alog_open(const char *path, struct gs_alog **out);
/* Opens the file again by its name (after log rotation moved it away); on failure keeps
 * writing to the old one and returns GS_ERR_IO. Nothing to do for stderr. */
enum gs_status gs_alog_reopen(struct gs_alog *l);
/* "stderr", or the file's path. */
const char *gs_alog_where(const struct gs_alog *l);
/* NULL is allowed. */
void gs_alog_close(struct gs_alog *l);

/* The access line of a; model: the served model name, or NULL for "-". */
void gs_alog_request(struct gs_alog *l, const struct gs_access *a, const char *model);
/* The content line of request id (--log-content only). */
void gs_alog_content(struct gs_alog *l, uint64_t id, const char *prompt, size_t prompt_len, const char *output,
		     size_t output_len);

#endif
