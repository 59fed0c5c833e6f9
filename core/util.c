#include "gs_util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

void *gs_alloc_huge(size_t n)
{
	const size_t huge = (size_t)2 << 20;
	void *p = NULL;

	if (n < 2 * huge)
		return malloc(n ? n : 1);
	if (posix_memalign(&p, huge, n) != 0)
		return NULL;
	(void)madvise(p, n, MADV_HUGEPAGE); /* advice only: without THP the buffer works the same */
	return p;
}

double gs_now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

enum gs_status gs_parse_id_list(const char *s, int32_t **ids, int32_t *n)
{
	size_t cap = 16, cnt = 0;
	int32_t *v = malloc(cap * sizeof(*v));
	const char *p = s;

	if (!v)
		return gs_errorf(GS_ERR_NOMEM, "out of memory");
	while (*p) {
		char *end;
		long x;
		errno = 0;
		x = strtol(p, &end, 10);
		if (end == p || errno || x < 0 || x > INT32_MAX || (*end && *end != ',' && *end != ' ')) {
			free(v);
			return gs_errorf(GS_ERR_INVALID_ARG, "--tokens: '%s' is not a comma-separated list of ids", s);
		}
		if (cnt == cap) {
			int32_t *nv = realloc(v, 2 * cap * sizeof(*v));
			if (!nv) {
				free(v);
				return gs_errorf(GS_ERR_NOMEM, "out of memory");
			}
			v = nv, cap *= 2;
		}
		v[cnt++] = (int32_t)x;
		p = end;
		while (*p == ',' || *p == ' ')
			p++;
	}
	if (cnt == 0) {
		free(v);
		return gs_errorf(GS_ERR_INVALID_ARG, "--tokens: no ids given");
	}
	*ids = v;
	*n = (int32_t)cnt;
	return GS_OK;
}

enum gs_status gs_read_file_checked(const char *what, const char *path, bool secret, size_t max, char **out,
				    size_t *len)
{
	enum gs_status st = GS_OK;
	struct stat sb;
	char *buf = NULL;
	size_t got = 0;
	int fd;

	*out = NULL;
	*len = 0;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return gs_errorf(GS_ERR_IO, "%s: cannot open: %s", what, strerror(errno));
	if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
		st = gs_errorf(GS_ERR_IO, "%s: not a regular file", what);
		goto out;
	}
	if (secret && (sb.st_mode & (S_IRWXG | S_IRWXO))) {
		st = gs_errorf(GS_ERR_INVALID_ARG,
			       "%s: may be read or written by group or others (mode %04o); allow its owner only: "
			       "chmod 600 %s",
			       what, (unsigned)(sb.st_mode & 07777), path);
		goto out;
	}
	if (sb.st_size < 0 || (unsigned long long)sb.st_size > max) {
		st = gs_errorf(GS_ERR_FORMAT, "%s: larger than %zu bytes (%lld bytes)", what, max,
			       (long long)sb.st_size);
		goto out;
	}
	buf = malloc((size_t)sb.st_size + 1);
	if (!buf) {
		st = gs_errorf(GS_ERR_NOMEM, "%s: out of memory", what);
		goto out;
	}
	while (got < (size_t)sb.st_size) {
		ssize_t k = read(fd, buf + got, (size_t)sb.st_size - got);

		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0) {
			st = gs_errorf(GS_ERR_IO, "%s: read failed: %s", what, strerror(errno));
			goto out;
		}
		if (k == 0) /* the file shrank while we read it: take what is there */
			break;
		got += (size_t)k;
	}
	buf[got] = '\0';
	*out = buf;
	*len = got;
	buf = NULL;
out:
	if (buf) {
		if (secret)
			explicit_bzero(buf, got);
		free(buf);
	}
	close(fd);
	return st;
}
