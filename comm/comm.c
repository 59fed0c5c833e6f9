#include <stdlib.h>

#include "gs_comm.h"

void gs_comm_free(struct gs_comm *c)
{
	if (c && c->ctx && c->iface->free)
		c->iface->free(c->ctx);
	if (c)
		c->ctx = NULL;
}
