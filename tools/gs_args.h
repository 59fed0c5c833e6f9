/* Tiny "--name value" option parser shared by the gemmashard subcommands. */
#ifndef GS_ARGS_H
#define GS_ARGS_H

#include <stdbool.h>
#include <stdint.h>

enum gs_arg_type { GS_ARG_STR, GS_ARG_INT, GS_ARG_U64, GS_ARG_FLOAT, GS_ARG_FLAG, GS_ARG_TYPE_COUNT };

struct gs_arg {
	const char      *name;     /* without the leading "--" */
	enum gs_arg_type type;
	void            *dst;      /* const char **, int *, uint64_t *, double *, bool * */
	const char      *help;
	bool             seen;     /* set by the parser */
};

/* Parse argv[1..]; argv[0] is the subcommand. Returns 0 on success, 1 when --help was
 * printed (the caller exits 0), 2 on a usage error (message printed on stderr). */
int gs_args_parse(const char *usage, struct gs_arg *args, int n_args, int argc, char **argv);
void gs_args_usage(const char *usage, const struct gs_arg *args, int n_args);

/* "2,105,2364" -> malloc'd ids; returns 0, or 2 with a message. */
int gs_args_parse_ids(const char *s, int32_t **ids, int32_t *n);

#endif
