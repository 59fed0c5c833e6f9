/* gemmashard subcommands: each takes argv with argv[0] = its own name and returns the
 * process exit code (0 ok, 1 runtime error, 2 usage error). */
#ifndef GS_CMDS_H
#define GS_CMDS_H

#include "gs_kernels.h"

int gs_cmd_make_test_model(int argc, char **argv);
int gs_cmd_tokenize(int argc, char **argv);
int gs_cmd_logits(int argc, char **argv);
/* image RGB bytes -> the vision tower's projector rows (cmd_vision.c) */
int gs_cmd_vision_embed(int argc, char **argv);
int gs_cmd_run(int argc, char **argv);
int gs_cmd_inspect(int argc, char **argv);
int gs_cmd_bench(int argc, char **argv);
/* image file -> the S x S x 3 RGB bytes the engines receive (cmd_image.c) */
int gs_cmd_image_prep(int argc, char **argv);
/* Joins the outputs of a split batch; besides 0/1/2 returns 3 (missing ids) and 4 (conflicts). */
int gs_cmd_batch_merge(int argc, char **argv);
/* Clients of a running coordinator's gRPC API (cmd_client.c). Besides 0/1/2 they return
 * 3 UNAVAILABLE, 4 DEADLINE_EXCEEDED, 5 RESOURCE_EXHAUSTED, 6 UNAUTHENTICATED, 130 Ctrl-C. */
int gs_cmd_generate(int argc, char **argv);
int gs_cmd_chat(int argc, char **argv);

/* Print "gemmashard <cmd>: <last error>" on stderr and return 1. */
int gs_cmd_fail(const char *cmd);

/* --numerics fp32|bf16 (ARCHITECTURE.md §3) of the commands that compute. The default: */
#define GS_NUMERICS_DEFAULT "fp32"
#define GS_NUMERICS_HELP "matmul numerics: fp32 (default) or bf16 (x rounded to bf16, vdpbf16ps; needs AVX512_BF16)"
/* Parse the flag's value: 0, or 2 with "gemmashard <cmd>: --numerics must be ..." on stderr. */
int gs_cmd_numerics(const char *cmd, const char *s, enum gs_numerics *out);
/* A CPU backend in that mode; a CPU without AVX512_BF16 refuses bf16 (the error names it), and
 * then nothing is left to free. */
enum gs_status gs_cmd_cpu_backend(int threads, enum gs_numerics numerics, struct gs_backend *be);

#endif
