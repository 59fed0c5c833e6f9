/* Length-prefixed frames and EngineMessages over a real socketpair (plaintext gs_net streams):
 * round trips, an oversized length refused before allocation, truncation, malformed protobuf,
 * EOF, timeout. */
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "gs_frame.h"
#include "gs_test.h"

int main(int argc, char **argv)
{
	int sv[2];
	struct gs_stream *w, *rd;
	uint8_t *buf;
	size_t len;
	Gemmashard__Engine__EngineMessage m = GEMMASHARD__ENGINE__ENGINE_MESSAGE__INIT, *r;
	Gemmashard__Engine__Submit sub = GEMMASHARD__ENGINE__SUBMIT__INIT;
	Gemmashard__Engine__SamplingParams sp = GEMMASHARD__ENGINE__SAMPLING_PARAMS__INIT;
	int32_t prompt[5] = { 2, 105, 2364, 107, 106 };

	CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
	CHECK(gs_stream_plain(sv[0], &w) == GS_OK && gs_stream_plain(sv[1], &rd) == GS_OK);

	/* Submit round trip. */
	sp.temperature = 0.5f, sp.top_k = 40, sp.seed = 99, sp.max_tokens = 17;
	sub.request_id = 123456789012ull, sub.n_prompt = 5, sub.prompt = prompt, sub.params = &sp;
	m.body_case = GEMMASHARD__ENGINE__ENGINE_MESSAGE__BODY_SUBMIT, m.submit = &sub;
	CHECK(gs_engine_msg_send(w, &m) == GS_OK);
	CHECK(gs_engine_msg_recv(rd, 1 << 20, 1000, &r) == GS_OK);
	CHECK(r && r->body_case == GEMMASHARD__ENGINE__ENGINE_MESSAGE__BODY_SUBMIT);
	CHECK(r->submit->request_id == 123456789012ull && r->submit->n_prompt == 5 && r->submit->prompt[2] == 2364 &&
	      r->submit->params->top_k == 40 && r->submit->params->seed == 99 && r->submit->params->max_tokens == 17);
	gemmashard__engine__engine_message__free_unpacked(r, NULL);

	/* A length far beyond the limit: refused at once, before any allocation. */
	{
		uint8_t hdr[4] = { 0x7f, 0xff, 0xff, 0xff };
		CHECK(write(sv[0], hdr, 4) == 4);
		CHECK(gs_frame_read(rd, 1 << 20, 1000, &buf, &len) == GS_ERR_RANGE);
		CHECK(strstr(gs_last_error(), "exceeds the limit") != NULL);
		CHECK(buf == NULL);
	}
	/* Malformed protobuf payload. */
	{
		uint8_t junk[16];
		memset(junk, 0xff, sizeof(junk));
		CHECK(gs_frame_write(w, junk, sizeof(junk)) == GS_OK);
		CHECK(gs_engine_msg_recv(rd, 1 << 20, 1000, &r) == GS_ERR_FORMAT && r == NULL);
		CHECK(strstr(gs_last_error(), "malformed EngineMessage") != NULL);
	}
	/* Nothing arrives: timeout. */
	CHECK(gs_frame_read(rd, 1 << 20, 50, &buf, &len) == GS_ERR_IO);
	CHECK(strstr(gs_last_error(), "timed out") != NULL);
	/* Truncated frame, then EOF. */
	{
		uint8_t part[6] = { 0, 0, 0, 10, 'a', 'b' };
		CHECK(write(sv[0], part, sizeof(part)) == (ssize_t)sizeof(part));
		gs_stream_free(w);
		CHECK(gs_frame_read(rd, 1 << 20, 1000, &buf, &len) == GS_ERR_FORMAT);
		CHECK(strstr(gs_last_error(), "truncated frame (2 of 10 bytes)") != NULL);
		CHECK(gs_frame_read(rd, 1 << 20, 1000, &buf, &len) == GS_ERR_NOT_FOUND);
	}
	gs_stream_free(rd);
	TEST_DONE();
}
