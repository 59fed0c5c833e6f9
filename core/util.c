#include "gs_util.h"

#include <errno.h>
#include <stdlib.h>
#include <time.h>

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
