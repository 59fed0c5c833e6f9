/* `gemmashard generate` and `chat` in a build without the gRPC client (the GPU bundle of
 * tests/gpu/standalone): a clear refusal instead of a missing command. */
#include <stdio.h>

#include "gs_cmds.h"

static int no_grpc(const char *cmd)
{
	fprintf(stderr, "gemmashard %s: this build has no gRPC client (built by tests/gpu/standalone)\n", cmd);
	return 2;
}

int gs_cmd_generate(int argc, char **argv)
{
	(void)argc, (void)argv;
	return no_grpc("generate");
}

int gs_cmd_chat(int argc, char **argv)
{
	(void)argc, (void)argv;
	return no_grpc("chat");
}
