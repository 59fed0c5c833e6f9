/* libFuzzer target: an engine-link frame (4-byte length, protobuf-c EngineMessage) as the
 * coordinator reads it from an engine and the engine from the coordinator: gs_engine_msg_recv
 * over a socket pair, 64 KiB limit, frame after frame. */
#include <stdint.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "engine.pb-c.h"
#include "fuzz_util.h"
#include "gs_frame.h"
#include "gs_net.h"
#include "gs_status.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	Gemmashard__Engine__EngineMessage *got = NULL;
	struct gs_stream *s;
	int fds[2];

	if (size > 200000) /* beyond the socket buffer: a write would block */
		return 0;
	gs_fuzz_require(socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0, "socketpair");
	int buf = 1 << 20;
	setsockopt(fds[1], SOL_SOCKET, SO_SNDBUF, &buf, sizeof(buf));
	gs_fuzz_require(size == 0 || write(fds[1], data, size) == (ssize_t)size, "write to the socket pair");
	close(fds[1]);
	gs_fuzz_require(gs_stream_plain(fds[0], &s) == GS_OK, "gs_stream_plain");
	gs_clear_error();
	/* frame after frame, as a link reader does, until the input ends (EOF) or one is refused */
	enum gs_status st;
	while ((st = gs_engine_msg_recv(s, 64 * 1024, 1000, &got)) == GS_OK) {
		gemmashard__engine__engine_message__free_unpacked(got, NULL);
		got = NULL;
	}
	gs_fuzz_require(gs_last_error()[0] != '\0', "the link reader stopped without a message");
	gs_stream_free(s);
	return 0;
}
