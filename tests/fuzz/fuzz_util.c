/* Helpers shared by the libFuzzer targets (fuzz_util.h). */
#include "fuzz_util.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gs_status.h"

const char *gs_fuzz_scratch(void)
{
	static char dir[512];

	if (!dir[0]) {
		const char *tmp = getenv("TMPDIR");
		snprintf(dir, sizeof(dir), "%s/gs_fuzz.XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
		if (!mkdtemp(dir)) {
			perror("fuzz: mkdtemp");
			abort();
		}
		gs_log_set_level(GS_LOG_ERROR); /* refusals are logged at WARN: keep the fuzzer's output readable */
	}
	return dir;
}

const char *gs_fuzz_write(const char *name, const uint8_t *data, size_t n)
{
	static char path[1024];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", gs_fuzz_scratch(), name);
	unlink(path);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0 || (n && write(fd, data, n) != (ssize_t)n)) {
		perror("fuzz: writing the input file");
		abort();
	}
	close(fd);
	return path;
}

void gs_fuzz_require(int cond, const char *msg)
{
	if (!cond) {
		fprintf(stderr, "fuzz: invariant broken: %s\n", msg);
		abort();
	}
}
