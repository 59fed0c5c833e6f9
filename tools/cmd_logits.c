/* gemmashard logits: float32 logits of every position, [n_tokens × vocab], no header. With
 * --image, each <start_of_image> id of --tokens becomes an image's plain token recipe
 * (gs_cli_expand_images) and the rows are those of the expanded ids. */
#include <stdio.h>
#include <stdlib.h>

#include <string.h>

#include "gs_args.h"
#include "gs_cli_images.h"
#include "gs_cmds.h"
#include "gs_cuda.h"
#include "gs_forward.h"
#include "gs_seq.h"
#include "gs_vision.h"

int gs_cmd_logits(int argc, char **argv)
{
	const char *model_dir = NULL, *tokens = NULL, *out_path = NULL, *device = "cpu", *numerics_s = GS_NUMERICS_DEFAULT;
	const char *images = NULL;
	enum gs_numerics numerics;
	int chunk = 0, threads = 0, rc = 1;
	bool cuda = false;
	struct gs_arg args[] = {
		{ "model", GS_ARG_STR, &model_dir, "checkpoint directory (config.json + safetensors)" },
		{ "tokens", GS_ARG_STR, &tokens, "comma-separated token ids, e.g. 2,105,2364" },
		{ "out", GS_ARG_STR, &out_path, "output file: float32 [n_tokens x vocab], row-major" },
		{ "chunk", GS_ARG_INT, &chunk, "feed the tokens through the KV cache in chunks of N (1 = decode; an image goes in one piece)" },
		{ "threads", GS_ARG_INT, &threads, "CPU threads (default: all)" },
		{ "device", GS_ARG_STR, &device, "cpu (default) or cuda (GPU 0: weights, KV and activations there)" },
		{ "numerics", GS_ARG_STR, &numerics_s, GS_NUMERICS_HELP " (cpu only)" },
		{ "image", GS_ARG_STR, &images, "FILE[,FILE...]: one image per <start_of_image> (255999) of --tokens, "
					       "which becomes 108, 255999, N x 262144, 256000, 108; PNG, JPEG, DICOM, "
					       "or raw preprocessed S x S x 3 RGB named *.rgb" },
	};
	struct gs_arg *numerics_arg = &args[6];
	const int n_args = sizeof(args) / sizeof(args[0]);
	struct gs_model *m = NULL;
	struct gs_backend be = { 0 };
	struct gs_forward *f = NULL;
	struct gs_seq *s = NULL;
	int32_t *ids = NULL, n = 0, n_img = 0;
	uint8_t *px = NULL;
	struct gs_vision *vis = NULL;
	float *img_rows = NULL;
	float *logits = NULL;
	FILE *fo;
	int r;

	r = gs_args_parse("usage: gemmashard logits --model DIR --tokens 2,105,2364 --out FILE [--chunk N] [--device cpu|cuda] "
			  "[--image FILE,...]",
			  args, n_args, argc, argv);
	if (r)
		return r == 1 ? 0 : 2;
	if (!model_dir || !tokens || !out_path) {
		fprintf(stderr, "gemmashard logits: --model, --tokens and --out are required\n");
		return 2;
	}
	cuda = strcmp(device, "cuda") == 0;
	if (!cuda && strcmp(device, "cpu") != 0) {
		fprintf(stderr, "gemmashard logits: --device must be cpu or cuda, got \"%s\"\n", device);
		return 2;
	}
	if (gs_cmd_numerics("logits", numerics_s, &numerics))
		return 2;
	if (cuda && numerics_arg->seen) {
		fprintf(stderr, "gemmashard logits: --numerics is a CPU mode; --device cuda has its own (ARCHITECTURE.md §3)\n");
		return 2;
	}
	if (chunk < 0) {
		fprintf(stderr, "gemmashard logits: --chunk must be >= 1\n");
		return 2;
	}
	if (gs_args_parse_ids(tokens, &ids, &n))
		return 2;
	if (gs_model_load(model_dir, false, &m) != GS_OK)
		goto out_fail;
	if (images) { /* the markers expanded, then one image each */
		int32_t *x = NULL, nx = 0, markers = 0;
		if (gs_cli_expand_images(&m->cfg.vision, ids, n, &x, &nx, &markers) != GS_OK)
			goto out_fail;
		free(ids);
		ids = x, n = nx;
		if (gs_cli_load_images(images, m->cfg.vision.image_size, &px, &n_img) != GS_OK)
			goto out_fail;
		if (n_img != markers) {
			gs_errorf(GS_ERR_INVALID_ARG, "--tokens has %d <start_of_image> (%d) markers but --image gives %d "
				  "images", markers, m->cfg.vision.boi_id, n_img);
			goto out_fail;
		}
	}
	if (n > m->cfg.max_position) {
		gs_errorf(GS_ERR_RANGE, "%d tokens exceed max_position_embeddings (%d) of %s", n,
			  m->cfg.max_position, model_dir);
		goto out_fail;
	}
	if ((cuda ? gs_backend_cuda_create(0, &be) : gs_cmd_cpu_backend(threads, numerics, &be)) != GS_OK ||
	    gs_model_to_backend(m, be) != GS_OK)
		goto out_fail;
	{
		int32_t max_chunk = n < 256 ? n : 256;
		if (n_img && max_chunk < m->cfg.vision.mm_tokens_per_image)
			max_chunk = m->cfg.vision.mm_tokens_per_image; /* an image is fed in one piece */
		if (gs_forward_create(m, be, max_chunk, &f) != GS_OK || gs_seq_create(f, n, &s) != GS_OK)
			goto out_fail;
	}
	if (n_img) { /* the projector rows of every image, then fed in place of the image tokens */
		size_t rows = (size_t)n_img * (size_t)m->cfg.vision.mm_tokens_per_image;
		if (gs_vision_create(m, be, NULL, &vis) != GS_OK)
			goto out_fail;
		img_rows = be.iface->alloc(be.ctx, rows * (size_t)m->cfg.hidden * sizeof(float));
		if (!img_rows) {
			gs_errorf(GS_ERR_NOMEM, "cannot allocate the projector rows of %d images", n_img);
			goto out_fail;
		}
		if (gs_vision_encode(vis, px, n_img, img_rows) != GS_OK)
			goto out_fail;
		gs_seq_set_images(s, img_rows, (int32_t)rows);
	}
	logits = malloc((size_t)n * (size_t)m->n_vocab * sizeof(float));
	if (!logits) {
		gs_errorf(GS_ERR_NOMEM, "cannot allocate logits for %d x %d", n, m->n_vocab);
		goto out_fail;
	}
	if (chunk <= 0)
		chunk = n;
	for (int32_t done = 0, c; done < n; done += c) {
		c = gs_seq_next_chunk(m, ids, n, done, chunk); /* never inside an image */
		if (gs_forward_run(f, s, ids + done, c, logits + (size_t)done * m->n_vocab, true) != GS_OK)
			goto out_fail;
	}
	fo = fopen(out_path, "wb");
	if (!fo) {
		gs_errorf(GS_ERR_IO, "%s: cannot create", out_path);
		goto out_fail;
	}
	if (fwrite(logits, sizeof(float), (size_t)n * m->n_vocab, fo) != (size_t)n * m->n_vocab ||
	    fclose(fo) != 0) {
		gs_errorf(GS_ERR_IO, "%s: write failed", out_path);
		goto out_fail;
	}
	fprintf(stderr, "wrote %d x %d float32 logits to %s\n", n, m->n_vocab, out_path);
	rc = 0;
	goto out_free;

out_fail:
	rc = gs_cmd_fail("logits");
out_free:
	free(logits);
	gs_seq_free(s);
	gs_forward_free(f);
	if (img_rows && be.iface->release)
		be.iface->release(be.ctx, img_rows);
	if (vis)
		gs_vision_free(vis);
	free(px);
	gs_model_free(m); /* before its backend: a GPU holds its weights */
	if (cuda)
		gs_backend_cuda_free(&be);
	else if (be.ctx)
		gs_backend_cpu_free(&be);
	free(ids);
	return rc;
}
