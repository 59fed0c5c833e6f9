/* gemmashard coordinator: a request's images, decoded and resized before admission
 * (gs_coord.h gs_coord_prepare_images; ARCHITECTURE.md "Images"). Every front end calls it, on
 * its own thread, so a bad image is refused before the request takes a slot. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coord_internal.h"
#include "gs_image.h"

#define GS_COORD_DEFAULT_MAX_IMAGES 4

enum gs_cerr gs_coord_prepare_images(struct gs_coord *c, const char *model, const struct gs_coord_image_in *in, int n,
				     uint8_t **out, char *why, size_t cap)
{
	const struct gs_coord_model *m = NULL;
	int32_t max = c->limits.max_images > 0 ? c->limits.max_images :
		      c->limits.max_images < 0 ? 0 : GS_COORD_DEFAULT_MAX_IMAGES;
	enum gs_cerr err;
	uint8_t *px;

	*out = NULL;
	if (n <= 0)
		return GS_CERR_NONE;
	if ((err = gs_coord_model_find(c, model, &m, why, cap)) != GS_CERR_NONE)
		return err;
	if ((err = gs_coord_model_images_ok(m, n, why, cap)) != GS_CERR_NONE)
		return err;
	if (n > max) {
		snprintf(why, cap, "messages: %d images in one request, more than the limit of %d (--max-images-per-request)",
			 n, max);
		return GS_CERR_INVALID;
	}
	int32_t S = m->vision.image_size;
	size_t one = (size_t)S * (size_t)S * 3;
	if (one * (size_t)n > GS_LINK_IMAGE_ROOM) { /* the Submit carries them in one frame */
		snprintf(why, cap, "messages: %d images of %dx%d are more than one request can carry to an engine (at most "
			 "%zu)", n, (int)S, (int)S, (size_t)GS_LINK_IMAGE_ROOM / one);
		return GS_CERR_INVALID;
	}
	if (S < 1) {
		snprintf(why, cap, "model `%s` has no image size", m->name);
		return GS_CERR_INTERNAL;
	}
	if (!(px = malloc(one * (size_t)n))) {
		snprintf(why, cap, "coordinator: out of memory for %d images", n);
		return GS_CERR_INTERNAL;
	}
	for (int i = 0; i < n; i++) {
		struct gs_image_opts o = { .has_window = in[i].has_window,
					   .window_center = in[i].window_center,
					   .window_width = in[i].window_width };
		enum gs_status st = gs_image_prepare(in[i].data, in[i].n, in[i].mime, &o, S, px + one * (size_t)i);
		if (st != GS_OK) {
			snprintf(why, cap, "image %d: %s", i, gs_last_error());
			gs_clear_error();
			free(px);
			return st == GS_ERR_NOMEM ? GS_CERR_INTERNAL : GS_CERR_INVALID;
		}
	}
	*out = px;
	return GS_CERR_NONE;
}
