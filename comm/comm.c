/* Helpers shared by every communicator implementation. */
#include <stdlib.h>

#include "gs_comm.h"

enum gs_status gs_comm_split(const struct gs_comm *c, int color, int key, struct gs_comm *out)
{
	if (!c->iface->split)
		return gs_errorf(GS_ERR_UNSUPPORTED, "%s communicator cannot be split", c->iface->name);
	return c->iface->split(c->ctx, color, key, out);
}

void gs_comm_abort(const struct gs_comm *c, int code)
{
	if (c && c->iface && c->iface->abort)
		c->iface->abort(c->ctx, code);
	/* abort returned (or there is none): this process at least must end. */
	exit(code);
}

void gs_comm_free(struct gs_comm *c)
{
	if (!c || !c->ctx)
		return;
	if (c->iface->free)
		c->iface->free(c->ctx);
	c->ctx = NULL;
}
