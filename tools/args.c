#include "gs_args.h"
#include "gs_util.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void gs_args_usage(const char *usage, const struct gs_arg *args, int n_args)
{
	static const char *const meta[] = { "TEXT", "N", "N", "X", "" };
	_Static_assert(sizeof(meta) / sizeof(meta[0]) == GS_ARG_TYPE_COUNT, "arg meta");

	fprintf(stdout, "%s\n\noptions:\n", usage);
	for (int i = 0; i < n_args; i++)
		fprintf(stdout, "  --%-16s %-5s %s\n", args[i].name, meta[args[i].type], args[i].help);
	fprintf(stdout, "  --%-16s %-5s %s\n", "help", "", "show this help");
}

static int parse_value(const struct gs_arg *a, const char *v)
{
	char *end;

	errno = 0;
	switch (a->type) {
	case GS_ARG_STR:
		*(const char **)a->dst = v;
		return 0;
	case GS_ARG_INT: {
		long x = strtol(v, &end, 10);
		if (errno || *end || end == v || x < -2147483647L || x > 2147483647L)
			break;
		*(int *)a->dst = (int)x;
		return 0;
	}
	case GS_ARG_U64: {
		unsigned long long x = strtoull(v, &end, 10);
		if (errno || *end || end == v || v[0] == '-')
			break;
		*(uint64_t *)a->dst = x;
		return 0;
	}
	case GS_ARG_FLOAT: {
		double x = strtod(v, &end);
		if (errno || *end || end == v || !isfinite(x))
			break;
		*(double *)a->dst = x;
		return 0;
	}
	default:
		break;
	}
	fprintf(stderr, "gemmashard: --%s: invalid value '%s'\n", a->name, v);
	return 2;
}

int gs_args_parse(const char *usage, struct gs_arg *args, int n_args, int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		const char *s = argv[i];
		int j;

		if (strcmp(s, "--help") == 0 || strcmp(s, "-h") == 0) {
			gs_args_usage(usage, args, n_args);
			return 1;
		}
		if (strncmp(s, "--", 2) != 0) {
			fprintf(stderr, "gemmashard %s: unexpected argument '%s' (see --help)\n", argv[0], s);
			return 2;
		}
		for (j = 0; j < n_args; j++)
			if (strcmp(s + 2, args[j].name) == 0)
				break;
		if (j == n_args) {
			fprintf(stderr, "gemmashard %s: unknown option '%s' (see --help)\n", argv[0], s);
			return 2;
		}
		args[j].seen = true;
		if (args[j].type == GS_ARG_FLAG) {
			*(bool *)args[j].dst = true;
			continue;
		}
		if (i + 1 >= argc) {
			fprintf(stderr, "gemmashard %s: option '%s' needs a value\n", argv[0], s);
			return 2;
		}
		if (parse_value(&args[j], argv[++i]))
			return 2;
	}
	return 0;
}

int gs_args_parse_ids(const char *s, int32_t **ids, int32_t *n)
{
	if (gs_parse_id_list(s, ids, n) == GS_OK)
		return 0;
	fprintf(stderr, "gemmashard: %s\n", gs_last_error());
	return 2;
}
