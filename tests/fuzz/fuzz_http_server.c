/* libFuzzer target: raw bytes on a connection to the coordinator's HTTP/1.1 server (the real
 * gs_http_start on 127.0.0.1, libmicrohttpd and our handlers: request line, headers,
 * Authorization, routes, chunked and sized bodies, the completion routes). Each input is sent
 * on a fresh connection, the sending side is shut, the answer read to the end; the next input
 * waits until the server has let go of the connection, so a leak is charged to its input. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "fuzz_util.h"
#include "gs_http.h"
#include "http_internal.h"

static struct gs_http *server;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc, (void)argv;
	gs_fuzz_require(gs_http_start(gs_fuzz_coord(), "127.0.0.1", 0, NULL, &server) == GS_OK,
			"the HTTP server does not start");
	return 0;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static unsigned open_connections(void)
{
	const union MHD_DaemonInfo *di = MHD_get_daemon_info(server->daemon, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
	return di ? di->num_connections : 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)gs_http_port(server)) };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	char buf[16384];
	double t0;

	if (size > 65536)
		return 0;
	/* The server closes first, so every connection leaves a TIME_WAIT that holds its client
	 * port for a minute: spread the clients over 127.1.0.0/16 to never run out of ports. */
	static uint32_t src;
	struct sockaddr_in from = { .sin_family = AF_INET };
	src = (src + 1) % 65534;
	from.sin_addr.s_addr = htonl(0x7f010000u + 1 + src);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	gs_fuzz_require(fd >= 0 && bind(fd, (struct sockaddr *)&from, sizeof(from)) == 0 &&
				connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0,
			"connect to the HTTP server");
	for (size_t off = 0; off < size;) {
		ssize_t n = send(fd, data + off, size - off, MSG_NOSIGNAL);
		if (n <= 0)
			break; /* the server closed early (a refusal): fine */
		off += (size_t)n;
	}
	shutdown(fd, SHUT_WR);
	t0 = now_s();
	for (;;) { /* the answer, to the end; the server must finish within its idle timeout */
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (poll(&p, 1, 100) > 0 && recv(fd, buf, sizeof(buf), 0) <= 0)
			break;
		gs_fuzz_require(now_s() - t0 < 10, "the HTTP server kept a finished connection open for 10 s");
	}
	close(fd);
	t0 = now_s();
	while (open_connections() > 0) {
		gs_fuzz_require(now_s() - t0 < 10, "the HTTP server did not let go of a closed connection in 10 s");
		usleep(200);
	}
	return 0;
}
