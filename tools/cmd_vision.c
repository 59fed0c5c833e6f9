/* gemmashard vision-embed: the projector outputs of the vision tower for preprocessed images
 * (image_size² × 3 RGB bytes each, `gemmashard image-prep`'s output), float32
 * [n_images · mm_tokens_per_image, hidden] with no header. With --mpi it runs as one rank of a
 * tensor-parallel group (mpirun -np T gemmashard vision-embed --mpi ...): every rank encodes
 * with its slice, rank 0 writes the file.
 *
 * Benchmark: --synthetic 4b draws the 4B tower (SigLIP-So400m/14 at 896, no text weights) and
 * times --images random images, reported against the fp32 FMA peak of the ranks' CPU threads
 * measured in the same run (every rank at once, summed over the group). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gs_args.h"
#include "gs_cmds.h"
#include "gs_comm.h"
#include "gs_cpu.h"
#include "gs_cuda.h"
#include "gs_model.h"
#include "gs_util.h"
#include "gs_vision.h"

/* Read the comma-separated list of raw RGB files, each exactly bytes long, into *out. */
static enum gs_status read_images(const char *list, size_t bytes, uint8_t **out, int32_t *n)
{
	char *copy = strdup(list), *save = NULL;
	uint8_t *px = NULL;
	int32_t k = 0;

	if (!copy)
		return gs_errorf(GS_ERR_NOMEM, "out of memory");
	for (char *f = strtok_r(copy, ",", &save); f; f = strtok_r(NULL, ",", &save)) {
		char *buf;
		size_t len;
		enum gs_status st = gs_read_file(f, &buf, &len);
		if (st != GS_OK)
			goto out_fail;
		if (len != bytes) {
			free(buf);
			st = gs_errorf(GS_ERR_INVALID_ARG, "%s: %zu bytes, the model takes %zu (image_size² × 3 RGB; "
				       "see gemmashard image-prep)", f, len, bytes);
			goto out_fail;
		}
		uint8_t *p = realloc(px, bytes * (size_t)(k + 1));
		if (!p) {
			free(buf);
			st = gs_errorf(GS_ERR_NOMEM, "out of memory");
			goto out_fail;
		}
		px = p;
		memcpy(px + bytes * (size_t)k++, buf, bytes);
		free(buf);
		continue;
out_fail:
		free(px);
		free(copy);
		return st;
	}
	free(copy);
	if (k == 0)
		return gs_errorf(GS_ERR_INVALID_ARG, "--image-rgb names no file");
	*out = px;
	*n = k;
	return GS_OK;
}

int gs_cmd_vision_embed(int argc, char **argv)
{
	const char *model_dir = NULL, *images = NULL, *out_path = NULL, *device = "cpu", *synthetic = NULL;
	int threads = 0, rc = 1, rank = 0, size = 1, n_bench = 1;
	bool mpi = false, cuda;
	struct gs_arg args[] = {
		{ "model", GS_ARG_STR, &model_dir, "checkpoint directory of a Gemma3ForConditionalGeneration model" },
		{ "image-rgb", GS_ARG_STR, &images, "comma-separated files of image_size x image_size x 3 RGB bytes" },
		{ "out", GS_ARG_STR, &out_path, "output file: float32 [n_images * mm_tokens_per_image x hidden]" },
		{ "threads", GS_ARG_INT, &threads, "CPU threads (default: all)" },
		{ "device", GS_ARG_STR, &device, "cpu (default), cpu-staged (the device code paths on the CPU) or cuda" },
		{ "mpi", GS_ARG_FLAG, &mpi, "one rank of a tensor-parallel group under mpirun; rank 0 writes" },
		{ "synthetic", GS_ARG_STR, &synthetic, "benchmark: a random tower of this shape (4b) instead of --model" },
		{ "images", GS_ARG_INT, &n_bench, "--synthetic: random images to time (default 1)" },
	};
	struct gs_comm comm = { 0 };
	struct gs_model *m = NULL;
	struct gs_backend be = { 0 };
	struct gs_vision *v = NULL;
	uint8_t *px = NULL;
	float *rows = NULL, *dev = NULL;
	int32_t n = 0;
	size_t n_out = 0;

	int r = gs_args_parse("usage: [mpirun -np T] gemmashard vision-embed --model DIR --image-rgb A.rgb[,B.rgb] --out FILE "
			      "[--mpi] [--device cpu|cpu-staged|cuda]",
			      args, sizeof(args) / sizeof(args[0]), argc, argv);
	if (r)
		return r == 1 ? 0 : 2;
	if (synthetic ? model_dir || n_bench < 1 : !model_dir || !images || !out_path) {
		fprintf(stderr, "gemmashard vision-embed: --model, --image-rgb and --out are required (or --synthetic "
			"SHAPE [--images N >= 1] without --model)\n");
		return 2;
	}
	cuda = strcmp(device, "cuda") == 0;
	if (!cuda && strcmp(device, "cpu") != 0 && strcmp(device, "cpu-staged") != 0) {
		fprintf(stderr, "gemmashard vision-embed: --device must be cpu, cpu-staged or cuda, got \"%s\"\n", device);
		return 2;
	}
	if (mpi) {
		if (gs_comm_mpi_init(&argc, &argv, &comm) != GS_OK)
			return gs_cmd_fail("vision-embed");
		rank = gs_comm_rank(&comm), size = gs_comm_size(&comm);
	}
	if (synthetic ? gs_vision_synthetic_model(synthetic, 1234, rank, size, &m) != GS_OK
		      : gs_model_load_tp(model_dir, rank, size, false, &m) != GS_OK)
		goto out_fail;
	if (!m->cfg.vision.present) {
		gs_errorf(GS_ERR_INVALID_ARG, "%s: no vision_config: a text-only model takes no images", model_dir);
		goto out_fail;
	}
	size_t S = (size_t)m->cfg.vision.image_size;
	if (images && read_images(images, S * S * 3, &px, &n) != GS_OK)
		goto out_fail;
	if (!images) { /* --synthetic: the same random images on every rank */
		n = n_bench;
		px = malloc(S * S * 3 * (size_t)n);
		if (!px) {
			gs_errorf(GS_ERR_NOMEM, "out of memory");
			goto out_fail;
		}
		for (size_t i = 0; i < S * S * 3 * (size_t)n; i++)
			px[i] = (uint8_t)((i * 2654435761u) >> 24);
	}
	if (cuda ? gs_backend_cuda_create(0, &be) != GS_OK
		 : strcmp(device, "cpu-staged") == 0 ? gs_backend_cpu_create_staged(threads, &be) != GS_OK
						     : gs_backend_cpu_create(threads, &be) != GS_OK)
		goto out_fail;
	if (synthetic) /* no text weights to move */
		m->dev = be;
	if ((synthetic ? gs_vision_to_backend(m, be) : gs_model_to_backend(m, be)) != GS_OK ||
	    gs_vision_create(m, be, size > 1 ? &comm : NULL, &v) != GS_OK)
		goto out_fail;
	n_out = (size_t)n * (size_t)m->cfg.vision.mm_tokens_per_image * (size_t)m->cfg.hidden;
	rows = malloc(n_out * sizeof(float));
	dev = be.iface->host_memory ? rows : be.iface->alloc(be.ctx, n_out * sizeof(float));
	if (!rows || !dev) {
		gs_errorf(GS_ERR_NOMEM, "cannot allocate %zu output floats", n_out);
		goto out_fail;
	}
	double t0 = gs_now_s();
	if (gs_vision_encode(v, px, n, dev) != GS_OK)
		goto out_fail;
	if (dev != rows)
		be.iface->download(be.ctx, rows, dev, n_out * sizeof(float));
	double secs = gs_now_s() - t0;
	if (synthetic) {
		/* every rank's threads at once: the peak the group shares on this machine */
		float peak = cuda ? 0.0f : (float)gs_cpu_measure_fma_peak(gs_backend_cpu_pool(&be));
		if (size > 1 && gs_comm_allreduce_f32(&comm, &peak, 1) != GS_OK)
			goto out_fail;
		double fl = gs_vision_flops(m);
		if (rank == 0) {
			printf("vision tower %s: T = %d, %d thread(s) per rank, ISA %s: %.3f s per image, %.1f GFLOP "
			       "per image, %.2f GFLOP/s", m->path, size, be.iface->n_threads ? be.iface->n_threads(be.ctx) : 0,
			       gs_cpu_isa_name(), secs / n, fl / 1e9, fl * n / secs / 1e9);
			if (peak > 0)
				printf(" = %.3f of the fp32 FMA peak (%.1f GFLOP/s over all ranks)", fl * n / secs / peak,
				       peak / 1e9);
			printf("\n");
		}
		rc = 0;
		goto out_free;
	}
	if (rank == 0) {
		FILE *fo = fopen(out_path, "wb");
		if (!fo) {
			gs_errorf(GS_ERR_IO, "%s: cannot create", out_path);
			goto out_fail;
		}
		if (fwrite(rows, sizeof(float), n_out, fo) != n_out || fclose(fo) != 0) {
			gs_errorf(GS_ERR_IO, "%s: write failed", out_path);
			goto out_fail;
		}
		fprintf(stderr, "wrote %d x %d x %d float32 rows to %s (T = %d, %.3f s per image)\n", n,
			m->cfg.vision.mm_tokens_per_image, m->cfg.hidden, out_path, size, secs / n);
	}
	rc = 0;
	goto out_free;

out_fail:
	rc = gs_cmd_fail("vision-embed");
out_free:
	if (dev && dev != rows)
		be.iface->release(be.ctx, dev);
	free(rows);
	free(px);
	gs_vision_free(v);
	gs_model_free(m); /* before its backend: a GPU holds its weights */
	if (cuda && be.ctx)
		gs_backend_cuda_free(&be);
	else if (be.ctx)
		gs_backend_cpu_free(&be);
	if (mpi) {
		if (rc != 0 && size > 1)
			gs_comm_abort(&comm, rc); /* the other ranks may wait in a collective */
		gs_comm_free(&comm);
		gs_comm_mpi_finalize();
	}
	return rc;
}
