/* libFuzzer target: the request messages of the gRPC API as the server gets them (the bytes
 * of one message): the first byte picks the method, the rest is the message.
 *   'g' Generate/GenerateStream: gs_grpc_parse_generate (unpack and the message's own checks),
 *       then gs_coord_submit (checks, chat template, tokenizer; no engine is connected, so a
 *       request that passes every check is refused with UNAVAILABLE);
 *   't' Tokenize: unpack, then gs_coord_tokenize;
 *   'm' ModelInfo and anything else Health/Check: unpack, then what the server looks up. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "gemmashard/v1/inference.pb-c.h"
#include "grpc/health/v1/health.pb-c.h"
#include "grpc_internal.h"
#include "gs_coord.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc, (void)argv;
	gs_fuzz_coord();
	return 0;
}

static void generate(struct gs_coord *c, const uint8_t *data, size_t size)
{
	struct gs_grpc_gen g;
	struct gs_creq *r = NULL;
	char why[600];

	enum gs_cerr e = gs_grpc_parse_generate(&g, data, size, gs_coord_get_limits(c), why, sizeof(why));
	if (e == GS_CERR_NONE) {
		e = gs_coord_submit(c, GS_API_GRPC, &g.spec, NULL, NULL, &r, why, sizeof(why));
		gs_fuzz_require(e != GS_CERR_NONE && !r, "a request was submitted with no engine connected");
	}
	gs_fuzz_require(why[0] != '\0', "a GenerateRequest refused without a message");
	gs_grpc_gen_free(&g);
}

static void tokenize(struct gs_coord *c, const uint8_t *data, size_t size)
{
	Gemmashard__V1__TokenizeRequest *req = gemmashard__v1__tokenize_request__unpack(NULL, size, data);
	int32_t *ids = NULL;
	size_t n = 0;
	char why[600] = "";

	if (!req)
		return;
	enum gs_cerr e = gs_coord_tokenize(c, req->model, req->text,
					   req->has_add_special_tokens ? req->add_special_tokens : true, &ids, &n, why,
					   sizeof(why));
	gs_fuzz_require(e == GS_CERR_NONE || why[0] != '\0', "a TokenizeRequest refused without a message");
	gemmashard__v1__tokenize_request__free_unpacked(req, NULL);
	free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct gs_coord *c = gs_fuzz_coord();

	if (size < 1)
		return 0;
	switch (data[0]) {
	case 'g':
		generate(c, data + 1, size - 1);
		break;
	case 't':
		tokenize(c, data + 1, size - 1);
		break;
	case 'm': {
		Gemmashard__V1__ModelInfoRequest *req = gemmashard__v1__model_info_request__unpack(NULL, size - 1, data + 1);
		struct gs_model_info info;
		if (req) {
			(void)gs_coord_model_info(c, req->model, &info);
			gemmashard__v1__model_info_request__free_unpacked(req, NULL);
		}
		break;
	}
	default: {
		Grpc__Health__V1__HealthCheckRequest *req =
			grpc__health__v1__health_check_request__unpack(NULL, size - 1, data + 1);
		if (req)
			grpc__health__v1__health_check_request__free_unpacked(req, NULL);
		break;
	}
	}
	return 0;
}
