/* gemmashard: command-line tools (coordinator clients, local engine, model utilities, benchmarks). */
#include <stdio.h>
#include <string.h>

#include "gs_cmds.h"
#include "gs_status.h"

static const struct {
	const char *name;
	int (*fn)(int argc, char **argv);
	const char *help;
} gs_commands[] = {
	{ "generate", gs_cmd_generate, "complete a prompt on a running coordinator (gRPC; streams the text)" },
	{ "chat", gs_cmd_chat, "chat with a running coordinator (gRPC; interactive with no MESSAGE)" },
	{ "run", gs_cmd_run, "generate locally from a prompt or a chat message (streams the answer)" },
	{ "logits", gs_cmd_logits, "write float32 logits of every position for a token list" },
	{ "vision-embed", gs_cmd_vision_embed, "write the vision tower's projector rows for RGB images (tests)" },
	{ "tokenize", gs_cmd_tokenize, "print the token ids of a text" },
	{ "inspect", gs_cmd_inspect, "config summary, tensor table, memory per rank" },
	{ "bench", gs_cmd_bench, "memory bandwidth, decode and prefill throughput, tokenizer speed" },
	{ "image-prep", gs_cmd_image_prep, "decode and resize an image file to the RGB bytes the model gets" },
	{ "make-test-model", gs_cmd_make_test_model, "write a random-weight checkpoint in the HF layout" },
	{ "batch-merge", gs_cmd_batch_merge, "join the outputs of a split batch (job array), every id exactly once" },
};

int gs_cmd_fail(const char *cmd)
{
	fprintf(stderr, "gemmashard %s: %s\n", cmd, gs_last_error()[0] ? gs_last_error() : "failed");
	return 1;
}

int gs_cmd_numerics(const char *cmd, const char *s, enum gs_numerics *out)
{
	if (gs_numerics_parse(s, "--numerics", out) == GS_OK)
		return 0;
	fprintf(stderr, "gemmashard %s: %s\n", cmd, gs_last_error());
	return 2;
}

enum gs_status gs_cmd_cpu_backend(int threads, enum gs_numerics numerics, struct gs_backend *be)
{
	GS_TRY(gs_backend_cpu_create(threads, be));
	enum gs_status st = gs_backend_cpu_set_numerics(be, numerics);
	if (st != GS_OK)
		gs_backend_cpu_free(be); /* leaves be->ctx NULL; the error stays */
	return st;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: gemmashard <command> [options]   (gemmashard <command> --help)\n\ncommands:\n");
	for (size_t i = 0; i < sizeof(gs_commands) / sizeof(gs_commands[0]); i++)
		fprintf(f, "  %-16s %s\n", gs_commands[i].name, gs_commands[i].help);
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
		usage(stdout);
		return 0;
	}
	for (size_t i = 0; i < sizeof(gs_commands) / sizeof(gs_commands[0]); i++)
		if (strcmp(argv[1], gs_commands[i].name) == 0)
			return gs_commands[i].fn(argc - 1, argv + 1);
	fprintf(stderr, "gemmashard: unknown command '%s'\n", argv[1]);
	usage(stderr);
	return 2;
}
