/* net: addresses and names that need no TLS library (gs_net.h): whether a listen address is
 * loopback only, what the first bytes of a peer look like, role and refusal names. */
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#include "gs_net.h"

const char *gs_cluster_role_name(enum gs_cluster_role r)
{
	static const char *const names[] = { [GS_ROLE_COORDINATOR] = "coordinator", [GS_ROLE_ENGINE] = "engine" };
	_Static_assert(sizeof(names) / sizeof(names[0]) == GS_ROLE_COUNT, "role names");
	return (unsigned)r < GS_ROLE_COUNT ? names[r] : "?";
}

const char *gs_auth_fail_label(enum gs_auth_fail f)
{
	static const char *const labels[] = {
		[GS_AUTH_OK] = "ok",
		[GS_AUTH_NOT_TLS] = "not_tls",
		[GS_AUTH_TLS_UNEXPECTED] = "tls_on_plaintext_link",
		[GS_AUTH_NO_CERT] = "no_certificate",
		[GS_AUTH_UNTRUSTED] = "untrusted",
		[GS_AUTH_EXPIRED] = "expired",
		[GS_AUTH_WRONG_ROLE] = "wrong_role",
		[GS_AUTH_PEER_REJECTED] = "peer_rejected",
		[GS_AUTH_PROTOCOL] = "protocol",
		[GS_AUTH_TIMEOUT] = "timeout",
		[GS_AUTH_CLOSED] = "closed",
	};
	_Static_assert(sizeof(labels) / sizeof(labels[0]) == GS_AUTH_COUNT, "auth failure labels");
	return (unsigned)f < GS_AUTH_COUNT ? labels[f] : "?";
}

bool gs_net_looks_like_tls(const unsigned char *b, size_t n)
{
	/* A TLS record: content type 22 (handshake), then the legacy version 3.x. */
	return n >= 1 && b[0] == 0x16 && (n < 2 || b[1] == 0x03);
}

static bool addr_is_loopback(const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET)
		return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
	if (sa->sa_family == AF_INET6) {
		const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
		if (IN6_IS_ADDR_LOOPBACK(a))
			return true;
		/* ::ffff:127.x.y.z */
		return IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127;
	}
	return false;
}

enum gs_status gs_net_host_is_loopback(const char *host, bool *loopback)
{
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE }, *res;
	int rc;

	*loopback = false;
	if (!host || !*host || !strcmp(host, "*"))
		return GS_OK; /* every interface */
	rc = getaddrinfo(host, NULL, &hints, &res);
	if (rc != 0)
		return gs_errorf(GS_ERR_INVALID_ARG, "address \"%s\": %s", host, gai_strerror(rc));
	*loopback = true;
	for (struct addrinfo *ai = res; ai; ai = ai->ai_next)
		if (!addr_is_loopback(ai->ai_addr))
			*loopback = false;
	freeaddrinfo(res);
	return GS_OK;
}
