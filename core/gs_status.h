/* gemmashard core: status codes, error messages, assertions, logging.
 *
 * Two tiers of errors (STYLE.md 6):
 *   - broken invariants: GS_ASSERT -> file:line on stderr, abort();
 *   - anything a file, request, peer or network can cause: return enum gs_status,
 *     with the human-readable reason recorded by gs_errorf() (thread-local) so the
 *     caller at the top can print exactly one clear message. */
#ifndef GS_STATUS_H
#define GS_STATUS_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

enum gs_status {
	GS_OK = 0,
	GS_ERR_INVALID_ARG,   /* bad argument / request field */
	GS_ERR_IO,            /* open/read/mmap failed */
	GS_ERR_FORMAT,        /* malformed file or message */
	GS_ERR_NOMEM,         /* allocation failed */
	GS_ERR_UNSUPPORTED,   /* valid but not supported (dtype, architecture) */
	GS_ERR_NOT_FOUND,     /* missing tensor, file, key */
	GS_ERR_RANGE,         /* value out of range (token id >= vocab, too long) */
	GS_ERR_INTERNAL,      /* unexpected failure of a library call */
	GS_STATUS_COUNT
};

const char *gs_status_str(enum gs_status st);

/* Record a formatted reason for the current thread and return st unchanged:
 *   return gs_errorf(GS_ERR_FORMAT, "%s: header length %llu beyond file size", path, n); */
enum gs_status gs_errorf(enum gs_status st, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* Prefix the recorded reason with context ("loading model X: <old reason>"). Returns st. */
enum gs_status gs_error_prefix(enum gs_status st, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* The last reason recorded on this thread ("" when none). */
const char *gs_last_error(void);
void gs_clear_error(void);

#define GS_TRY(expr)                                  \
	do {                                          \
		enum gs_status gs_try_st_ = (expr);   \
		if (gs_try_st_ != GS_OK)              \
			return gs_try_st_;            \
	} while (0)

void gs_assert_fail(const char *file, int line, const char *expr) __attribute__((noreturn));
#define GS_ASSERT(cond) \
	do { if (!(cond)) gs_assert_fail(__FILE__, __LINE__, #cond); } while (0)

enum gs_log_level { GS_LOG_DEBUG, GS_LOG_INFO, GS_LOG_WARN, GS_LOG_ERROR, GS_LOG_LEVEL_COUNT };

/* Log lines go to stderr as "[gemmashard r<rank>] level: msg". rank < 0 omits it. */
void gs_log_set_rank(int rank);
void gs_log_set_level(enum gs_log_level min_level);
void gs_log(enum gs_log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Checked allocation helpers for start-up code paths (never the token loop). */
void *gs_xmalloc(size_t n); /* aborts on OOM: only for small fixed bookkeeping */

#endif
