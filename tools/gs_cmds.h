/* gemmashard subcommands: each takes argv with argv[0] = its own name and returns the
 * process exit code (0 ok, 1 runtime error, 2 usage error). */
#ifndef GS_CMDS_H
#define GS_CMDS_H

int gs_cmd_make_test_model(int argc, char **argv);
int gs_cmd_tokenize(int argc, char **argv);
int gs_cmd_logits(int argc, char **argv);
int gs_cmd_run(int argc, char **argv);
int gs_cmd_inspect(int argc, char **argv);
int gs_cmd_bench(int argc, char **argv);
/* Joins the outputs of a split batch; besides 0/1/2 returns 3 (missing ids) and 4 (conflicts). */
int gs_cmd_batch_merge(int argc, char **argv);
/* Clients of a running coordinator's gRPC API (cmd_client.c). Besides 0/1/2 they return
 * 3 UNAVAILABLE, 4 DEADLINE_EXCEEDED, 5 RESOURCE_EXHAUSTED, 6 UNAUTHENTICATED, 130 Ctrl-C. */
int gs_cmd_generate(int argc, char **argv);
int gs_cmd_chat(int argc, char **argv);

/* Print "gemmashard <cmd>: <last error>" on stderr and return 1. */
int gs_cmd_fail(const char *cmd);

#endif
