#include "gs_status.h"

#include <string.h>

static _Thread_local char gs_err_buf[1024];
static int gs_log_rank = -1;
static enum gs_log_level gs_log_min = GS_LOG_INFO;

static const char *const gs_status_names[] = {
	[GS_OK] = "ok",
	[GS_ERR_INVALID_ARG] = "invalid argument",
	[GS_ERR_IO] = "i/o error",
	[GS_ERR_FORMAT] = "malformed input",
	[GS_ERR_NOMEM] = "out of memory",
	[GS_ERR_UNSUPPORTED] = "unsupported",
	[GS_ERR_NOT_FOUND] = "not found",
	[GS_ERR_RANGE] = "out of range",
	[GS_ERR_INTERNAL] = "internal error",
};
_Static_assert(sizeof(gs_status_names) / sizeof(gs_status_names[0]) == GS_STATUS_COUNT,
	       "status name table out of sync");

const char *gs_status_str(enum gs_status st)
{
	if ((unsigned)st >= GS_STATUS_COUNT)
		return "unknown status";
	return gs_status_names[st];
}

enum gs_status gs_errorf(enum gs_status st, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(gs_err_buf, sizeof(gs_err_buf), fmt, ap);
	va_end(ap);
	return st;
}

enum gs_status gs_error_prefix(enum gs_status st, const char *fmt, ...)
{
	char old[sizeof(gs_err_buf)];
	char pre[512];
	va_list ap;

	memcpy(old, gs_err_buf, sizeof(old));
	va_start(ap, fmt);
	vsnprintf(pre, sizeof(pre), fmt, ap);
	va_end(ap);
	snprintf(gs_err_buf, sizeof(gs_err_buf), "%s: %s", pre, old[0] ? old : gs_status_str(st));
	return st;
}

const char *gs_last_error(void)
{
	return gs_err_buf;
}

void gs_clear_error(void)
{
	gs_err_buf[0] = '\0';
}

void gs_assert_fail(const char *file, int line, const char *expr)
{
	fprintf(stderr, "gemmashard: assertion failed at %s:%d: %s\n", file, line, expr);
	fflush(stderr);
	abort();
}

void gs_log_set_rank(int rank)
{
	gs_log_rank = rank;
}

void gs_log_set_level(enum gs_log_level min_level)
{
	gs_log_min = min_level;
}

void gs_log(enum gs_log_level lvl, const char *fmt, ...)
{
	static const char *const names[] = { "debug", "info", "warn", "error" };
	_Static_assert(sizeof(names) / sizeof(names[0]) == GS_LOG_LEVEL_COUNT, "log names");
	char msg[2048];
	va_list ap;

	if (lvl < gs_log_min)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (gs_log_rank >= 0)
		fprintf(stderr, "[gemmashard r%d] %s: %s\n", gs_log_rank, names[lvl], msg);
	else
		fprintf(stderr, "[gemmashard] %s: %s\n", names[lvl], msg);
}

void *gs_xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (!p)
		gs_assert_fail(__FILE__, __LINE__, "allocation failed");
	return p;
}
