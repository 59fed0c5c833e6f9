/* gemmashard coordinator: the access log (gs_access_log.h). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "gs_access_log.h"
#include "gs_sbuf.h"

#define GS_ALOG_WARN_EVERY_S 60.0 /* a failing log is reported at most this often */

struct gs_alog {
	pthread_mutex_t mu;      /* fd, warned_at */
	int             fd;      /* 2: stderr */
	char           *path;    /* NULL: stderr */
	time_t          warned_at;
};

static int open_append(const char *path)
{
	return open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
}

enum gs_status gs_alog_open(const char *path, struct gs_alog **out)
{
	struct gs_alog *l = calloc(1, sizeof(*l));

	*out = NULL;
	if (!l)
		return gs_errorf(GS_ERR_NOMEM, "access log: out of memory");
	l->fd = STDERR_FILENO;
	if (path && strcmp(path, "-") != 0) {
		l->path = strdup(path);
		if (!l->path) {
			free(l);
			return gs_errorf(GS_ERR_NOMEM, "access log: out of memory");
		}
		l->fd = open_append(path);
		if (l->fd < 0) {
			enum gs_status s = gs_errorf(GS_ERR_IO, "--access-log %s: cannot open for appending: %s", path,
						     strerror(errno));
			free(l->path);
			free(l);
			return s;
		}
	}
	pthread_mutex_init(&l->mu, NULL);
	*out = l;
	return GS_OK;
}

enum gs_status gs_alog_reopen(struct gs_alog *l)
{
	int fd, old;

	if (!l || !l->path)
		return GS_OK;
	fd = open_append(l->path);
	if (fd < 0)
		return gs_errorf(GS_ERR_IO, "access log %s: cannot open again: %s; still writing to the old file",
				 l->path, strerror(errno));
	pthread_mutex_lock(&l->mu);
	old = l->fd;
	l->fd = fd;
	pthread_mutex_unlock(&l->mu);
	close(old);
	return GS_OK;
}

const char *gs_alog_where(const struct gs_alog *l)
{
	return l && l->path ? l->path : "stderr";
}

void gs_alog_close(struct gs_alog *l)
{
	if (!l)
		return;
	if (l->path)
		close(l->fd);
	free(l->path);
	pthread_mutex_destroy(&l->mu);
	free(l);
}

/* "2026-01-31T09:12:45.120Z " */
static void put_time(struct gs_sbuf *b)
{
	struct timespec ts;
	struct tm tm;
	char t[32];

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	strftime(t, sizeof(t), "%Y-%m-%dT%H:%M:%S", &tm);
	gs_sbuf_printf(b, "%s.%03ldZ ", t, ts.tv_nsec / 1000000);
}

/* One whole line with one write(2), so that lines from many threads never interleave. */
static void emit(struct gs_alog *l, const struct gs_sbuf *b)
{
	const char *p = b->p;
	size_t left = b->len;
	int err = 0;

	if (b->oom || !p)
		return;
	pthread_mutex_lock(&l->mu);
	while (left > 0) {
		ssize_t n = write(l->fd, p, left);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			err = n < 0 ? errno : EIO;
			break;
		}
		p += n;
		left -= (size_t)n;
	}
	if (err && difftime(time(NULL), l->warned_at) >= GS_ALOG_WARN_EVERY_S) {
		l->warned_at = time(NULL);
		gs_log(GS_LOG_WARN, "access log %s: write failed: %s", gs_alog_where(l), strerror(err));
	}
	pthread_mutex_unlock(&l->mu);
}

void gs_alog_request(struct gs_alog *l, const struct gs_access *a, const char *model)
{
	static const char *const api_name[GS_API_COUNT] = { "grpc", "http" };
	const char *finish = gs_cfinish_openai(a->finish);
	struct gs_sbuf b = { 0 };

	if (!l)
		return;
	put_time(&b);
	gs_sbuf_puts(&b, "access id=");
	if (a->request_id)
		gs_sbuf_printf(&b, "%" PRIu64, a->request_id);
	else
		gs_sbuf_puts(&b, "-");
	gs_sbuf_printf(&b, " key=%s user=%s api=%s method=%s route=%s model=%s status=%s finish=%s prompt_tokens=%d "
		       "completion_tokens=%d latency_ms=%.1f\n",
		       a->key && a->key[0] ? a->key : "-", a->user && a->user[0] ? a->user : "-", a->api < GS_API_COUNT ? api_name[a->api] : "-",
		       a->method ? a->method : "-", a->route ? a->route : "-", model && model[0] ? model : "-",
		       a->status ? a->status : "-", finish ? finish : "-", a->prompt_tokens, a->completion_tokens,
		       a->latency_s * 1e3);
	emit(l, &b);
	gs_sbuf_free(&b);
}

/* s as a JSON string (control characters, quotes and backslashes escaped; other bytes as
 * they are, so UTF-8 stays readable). */
static void put_json_string(struct gs_sbuf *b, const char *s, size_t n)
{
	size_t run = 0; /* start of the bytes not yet copied */

	gs_sbuf_put(b, "\"", 1);
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)s[i];

		if (ch != '"' && ch != '\\' && ch >= 0x20 && ch != 0x7f)
			continue;
		gs_sbuf_put(b, s + run, i - run);
		run = i + 1;
		if (ch == '"' || ch == '\\')
			gs_sbuf_put(b, ch == '"' ? "\\\"" : "\\\\", 2);
		else if (ch == '\n')
			gs_sbuf_put(b, "\\n", 2);
		else
			gs_sbuf_printf(b, "\\u%04x", ch);
	}
	gs_sbuf_put(b, s + run, n - run);
	gs_sbuf_put(b, "\"", 1);
}

void gs_alog_content(struct gs_alog *l, uint64_t id, const char *prompt, size_t prompt_len, const char *output,
		     size_t output_len)
{
	struct gs_sbuf b = { 0 };

	if (!l)
		return;
	put_time(&b);
	gs_sbuf_printf(&b, "content id=%" PRIu64 " prompt=", id);
	put_json_string(&b, prompt ? prompt : "", prompt ? prompt_len : 0);
	gs_sbuf_puts(&b, " output=");
	put_json_string(&b, output ? output : "", output ? output_len : 0);
	gs_sbuf_put(&b, "\n", 1);
	emit(l, &b);
	gs_sbuf_free(&b);
}
