#include "gs_forward.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void *be_alloc(const struct gs_backend *be, size_t bytes)
{
	return be->iface->alloc(be->ctx, bytes);
}

/* The activation slab for batches of up to `rows` rows, and its carving into f's buffers. */
static float *slab_alloc(const struct gs_forward *f, size_t rows)
{
	const struct gs_model *m = f->m;
	size_t H = (size_t)m->cfg.hidden, F = (size_t)m->shard.n_f;
	size_t QD = (size_t)m->shard.n_heads * (size_t)m->cfg.head_dim;
	size_t KD = (size_t)m->shard.n_kv_heads * (size_t)m->cfg.head_dim;

	return be_alloc(&f->be, sizeof(float) * rows * (3 * H + 2 * QD + 2 * KD + 2 * F));
}

static void slab_carve(struct gs_forward *f, size_t rows)
{
	const struct gs_model *m = f->m;
	size_t H = (size_t)m->cfg.hidden, F = (size_t)m->shard.n_f;
	size_t QD = (size_t)m->shard.n_heads * (size_t)m->cfg.head_dim;
	size_t KD = (size_t)m->shard.n_kv_heads * (size_t)m->cfg.head_dim;
	float *p = f->slab;

	f->x = p, p += rows * H;
	f->xn = p, p += rows * H;
	f->o = p, p += rows * H;
	f->q = p, p += rows * QD;
	f->att = p, p += rows * QD;
	f->k = p, p += rows * KD;
	f->v = p, p += rows * KD;
	f->gate = p, p += rows * F;
	f->up = p;
}

enum gs_status gs_forward_create(const struct gs_model *m, struct gs_backend be, int32_t max_tokens,
				 struct gs_forward **out)
{
	size_t C = (size_t)max_tokens;
	struct gs_forward *f;

	*out = NULL;
	if (max_tokens < 1)
		return gs_errorf(GS_ERR_INVALID_ARG, "max_tokens must be >= 1");
	if (!be.iface->alloc || !be.iface->upload || !be.iface->scatter_rows || !be.iface->gather_rows)
		return gs_errorf(GS_ERR_INVALID_ARG, "backend %s has no memory operations", be.iface->name);
	f = calloc(1, sizeof(*f));
	if (!f)
		return gs_errorf(GS_ERR_NOMEM, "out of memory");
	f->m = m;
	f->be = be;
	f->cp_size = 1;
	f->slab = slab_alloc(f, C);
	f->ids = be_alloc(&be, sizeof(int32_t) * C);
	f->pos = be_alloc(&be, sizeof(int32_t) * C);
	f->tok_seq = be_alloc(&be, sizeof(int32_t) * C);
	f->out_rows = be_alloc(&be, sizeof(int32_t) * C);
	f->kv_rows = be_alloc(&be, sizeof(int64_t) * 2 * C);
	f->aseq = be_alloc(&be, sizeof(*f->aseq) * 2 * C);
	f->span = be_alloc(&be, sizeof(int32_t) * 2 * C);
	f->img_dst = be_alloc(&be, sizeof(int64_t) * C);
	f->h_ids = malloc(sizeof(int32_t) * C);
	f->h_span = malloc(sizeof(int32_t) * 2 * C);
	f->h_img_dst = malloc(sizeof(int64_t) * C);
	f->h_pos = malloc(sizeof(int32_t) * C);
	f->h_tok_seq = malloc(sizeof(int32_t) * C);
	f->h_out_rows = malloc(sizeof(int32_t) * C);
	f->h_kv_rows = malloc(sizeof(int64_t) * 2 * C);
	f->h_aseq = malloc(sizeof(*f->h_aseq) * 2 * C);
	if (!f->slab || !f->ids || !f->pos || !f->tok_seq || !f->out_rows || !f->kv_rows || !f->aseq || !f->h_pos ||
	    !f->h_tok_seq || !f->h_out_rows || !f->h_kv_rows || !f->h_aseq || !f->span || !f->img_dst || !f->h_ids ||
	    !f->h_span || !f->h_img_dst) {
		gs_forward_free(f);
		return gs_errorf(GS_ERR_NOMEM, "cannot allocate activations for %d-token batches", max_tokens);
	}
	slab_carve(f, C);
	f->max_tokens = max_tokens;
	*out = f;
	return GS_OK;
}

enum gs_status gs_forward_set_cp(struct gs_forward *f, const struct gs_comm *cp)
{
	const struct gs_model *m = f->m;
	int32_t C = cp ? gs_comm_size(cp) : 1;
	size_t rows = (size_t)f->max_tokens + (size_t)C - 1; /* C slices of ceil(n / C) rows */
	size_t rec = (size_t)m->shard.n_heads * ((size_t)m->cfg.head_dim + 1);
	float *slab, *parts;

	if (C <= 1)
		return GS_OK;
	if (!f->be.iface->attn_merge)
		return gs_errorf(GS_ERR_UNSUPPORTED, "backend %s has no attn_merge op for context parallelism",
				 f->be.iface->name);
	slab = slab_alloc(f, rows);
	parts = be_alloc(&f->be, sizeof(float) * (size_t)C * (size_t)f->max_tokens * rec);
	if (!slab || !parts) {
		if (slab)
			f->be.iface->release(f->be.ctx, slab);
		if (parts)
			f->be.iface->release(f->be.ctx, parts);
		return gs_errorf(GS_ERR_NOMEM, "cannot allocate context-parallel activations for %d-token batches",
				 f->max_tokens);
	}
	f->be.iface->release(f->be.ctx, f->slab);
	f->slab = slab;
	slab_carve(f, rows);
	f->parts = parts;
	f->cp = cp;
	f->cp_size = C;
	f->cp_rank = gs_comm_rank(cp);
	return GS_OK;
}

void gs_forward_free(struct gs_forward *f)
{
	if (!f)
		return;
	void *dev[] = { f->slab, f->ids, f->pos, f->tok_seq, f->out_rows, f->kv_rows, f->aseq, f->tables, f->logits,
			f->span, f->img_dst, f->parts };
	for (size_t i = 0; i < sizeof(dev) / sizeof(dev[0]); i++)
		if (dev[i])
			f->be.iface->release(f->be.ctx, dev[i]);
	free(f->h_pos);
	free(f->h_tok_seq);
	free(f->h_out_rows);
	free(f->h_kv_rows);
	free(f->h_aseq);
	free(f->h_tables);
	free(f->h_ids);
	free(f->h_span);
	free(f->h_img_dst);
	free(f);
}

/* Sum partial results over the TP group (no-op when T = 1). */
static enum gs_status reduce(struct gs_forward *f, float *buf, size_t n)
{
	if (!f->comm)
		return GS_OK;
	return gs_comm_allreduce_f32(f->comm, buf, n);
}

/* Context parallelism: every group's P rows of buf ([C·P][width], this group's at c·P) to
 * every group, in place. */
static enum gs_status cp_gather(struct gs_forward *f, float *buf, int32_t P, size_t width)
{
	size_t bytes = sizeof(float) * (size_t)P * width;

	return gs_comm_allgather(f->cp, (char *)buf + (size_t)f->cp_rank * bytes, buf, bytes);
}

/* Grow a backend buffer (and optionally its host twin) to hold n elements of size es; old
 * contents are not kept. At least doubling, so never per token in steady state. */
static enum gs_status grow(struct gs_forward *f, void **dev, void **host, size_t *cap, size_t n, size_t es)
{
	if (n <= *cap)
		return GS_OK;
	size_t c = *cap * 2 > n ? *cap * 2 : n;
	void *d = be_alloc(&f->be, c * es), *h = host ? malloc(c * es) : NULL;
	if (!d || (host && !h)) {
		if (d)
			f->be.iface->release(f->be.ctx, d);
		free(h);
		return gs_errorf(GS_ERR_NOMEM, "cannot grow a forward buffer to %zu elements", c);
	}
	if (*dev)
		f->be.iface->release(f->be.ctx, *dev);
	*dev = d;
	if (host) {
		free(*host);
		*host = h;
	}
	*cap = c;
	return GS_OK;
}

/* Is row t of part b an image token that takes a projector row? */
static inline bool is_img_row(const struct gs_model *m, const struct gs_batch_seq *b, const int32_t *ids, int32_t t)
{
	return b->img_rows && ids[t] == m->cfg.vision.image_token_id;
}

/* A part's image tokens: runs that start and end on image boundaries, rows that exist. */
static enum gs_status check_images(const struct gs_model *m, const struct gs_batch_seq *b, const int32_t *ids,
				   int32_t row)
{
	int32_t mm = m->cfg.vision.mm_tokens_per_image, k = b->img_row0;

	if (!m->cfg.vision.present || mm < 1)
		return gs_errorf(GS_ERR_INVALID_ARG, "image rows given to a model without a vision tower");
	if (b->img_row0 < 0 || b->n_img_rows < b->img_row0)
		return gs_errorf(GS_ERR_INVALID_ARG, "image row %d of %d", b->img_row0, b->n_img_rows);
	for (int32_t t = 0; t < b->n_tokens; t++) {
		if (!is_img_row(m, b, ids, t))
			continue;
		if ((t == 0 || !is_img_row(m, b, ids, t - 1)) && k % mm)
			return gs_errorf(GS_ERR_INVALID_ARG, "image tokens at index %d start inside an image "
					 "(projector row %d, %d per image)", row + t, k, mm);
		if (++k > b->n_img_rows)
			return gs_errorf(GS_ERR_INVALID_ARG, "more image tokens than the %d projector rows given",
					 b->n_img_rows);
		if ((t == b->n_tokens - 1 || !is_img_row(m, b, ids, t + 1)) && k % mm)
			return gs_errorf(GS_ERR_INVALID_ARG, "image tokens at index %d end inside an image (a chunk "
					 "may not cut an image's %d tokens)", row + t, mm);
	}
	return GS_OK;
}

enum gs_status gs_forward_check(const struct gs_forward *f, const int32_t *ids, const struct gs_batch_seq *seqs,
				int32_t n_seqs)
{
	const struct gs_model *m = f->m;
	int32_t row = 0;

	for (int32_t i = 0; i < n_seqs; i++) {
		const struct gs_batch_seq *b = &seqs[i];
		if (b->n_tokens < 1 || (int64_t)row + b->n_tokens > f->max_tokens)
			return gs_errorf(GS_ERR_INVALID_ARG, "batch of more than %d rows", f->max_tokens);
		if ((int64_t)b->kv->n_past + b->n_tokens > b->kv->max_positions)
			return gs_errorf(GS_ERR_RANGE, "sequence of %lld positions exceeds its reservation of %d",
					 (long long)b->kv->n_past + b->n_tokens, b->kv->max_positions);
		if (b->img_rows)
			GS_TRY(check_images(m, b, ids + row, row));
		for (int32_t t = 0; t < b->n_tokens; t++)
			if ((ids[row + t] < 0 || ids[row + t] >= m->n_vocab) && !is_img_row(m, b, ids + row, t))
				return gs_errorf(GS_ERR_RANGE, "token id %d at index %d is outside the vocabulary (0..%d)",
						 ids[row + t], row + t, m->n_vocab - 1);
		row += b->n_tokens;
	}
	return GS_OK;
}

int32_t gs_forward_chunk_len(const struct gs_model *m, const int32_t *ids, int32_t n, int32_t start, int32_t want)
{
	int32_t end = n - start < want ? n : start + want, img = m->cfg.vision.image_token_id;

	if (!m->cfg.vision.present || end >= n || end <= start)
		return end > start ? end - start : 0;
	/* the boundary between end - 1 and end cuts a run: back to the run's start */
	if (ids[end - 1] == img && ids[end] == img)
		while (end > start && ids[end - 1] == img)
			end--;
	return end - start;
}

/* Rows, positions and block tables of this batch; checks everything before any work, then
 * uploads the step's index arrays to the backend. */
static enum gs_status plan_rows(struct gs_forward *f, const struct gs_kv_cache *cache, const int32_t *ids,
				const struct gs_batch_seq *seqs, int32_t n_seqs, int32_t *n_rows, int32_t *n_out,
				int32_t *n_img)
{
	const struct gs_backend_i *be = f->be.iface;
	size_t C = (size_t)f->max_tokens, n_tab = 0;
	int32_t row = 0, out = 0, img = 0;

	GS_TRY(gs_forward_check(f, ids, seqs, n_seqs));
	for (int32_t i = 0; i < n_seqs; i++) {
		const struct gs_kv_seq *kv = seqs[i].kv;
		if (!gs_kv_seq_holds(cache, kv, seqs[i].n_tokens))
			return gs_errorf(GS_ERR_RANGE, "sequence %d has KV blocks for %lld positions, the batch needs %lld",
					 i, (long long)kv->g_used * GS_KV_BLOCK, (long long)kv->n_past + seqs[i].n_tokens);
		n_tab += (size_t)kv->g_used + (kv->ring ? (size_t)cache->ring_blocks : 0);
	}
	for (int32_t i = 0; i < n_seqs; i++) {
		const struct gs_batch_seq *b = &seqs[i];
		for (int32_t t = 0; t < b->n_tokens; t++) {
			f->h_pos[row + t] = b->kv->n_past + t;
			f->h_tok_seq[row + t] = i;
			f->h_ids[row + t] = ids[row + t];
			f->h_span[2 * (row + t)] = f->h_span[2 * (row + t) + 1] = 0;
			if (b->all_logits || (b->want_logits && t == b->n_tokens - 1))
				f->h_out_rows[out++] = row + t;
		}
		/* Image tokens: looked up as id 0 (the row is replaced; HF does the same for an id past
		 * the vocabulary), their x rows listed in order, each run one bidirectional span. */
		for (int32_t t = 0; b->img_rows && t < b->n_tokens; t++) {
			int32_t e = t;
			if (!is_img_row(f->m, b, ids + row, t))
				continue;
			while (e + 1 < b->n_tokens && is_img_row(f->m, b, ids + row, e + 1))
				e++;
			for (int32_t u = t; u <= e; u++) {
				f->h_ids[row + u] = 0;
				f->h_img_dst[img++] = row + u;
				f->h_span[2 * (row + u)] = b->kv->n_past + t;
				f->h_span[2 * (row + u) + 1] = b->kv->n_past + e + 1;
			}
			t = e;
		}
		row += b->n_tokens;
	}
	GS_TRY(grow(f, (void **)&f->tables, (void **)&f->h_tables, &f->tables_cap, n_tab, sizeof(int32_t)));

	/* Block tables packed one after the other; each sequence's two attention entries point at
	 * its tables in backend memory. Slab rows of each new position's K/V, per layer type. */
	size_t off = 0;
	row = 0;
	for (int32_t i = 0; i < n_seqs; i++) {
		const struct gs_kv_seq *kv = seqs[i].kv;
		struct gs_attn_seq a = { .tok0 = row, .n_tokens = seqs[i].n_tokens, .pos0 = kv->n_past };
		struct gs_attn_seq *g = &f->h_aseq[i], *l = &f->h_aseq[C + i];
		*g = a, *l = a;
		memcpy(f->h_tables + off, kv->gtable, sizeof(int32_t) * (size_t)kv->g_used);
		g->table = f->tables + off, g->ring = 0;
		off += (size_t)kv->g_used;
		if (kv->ring) {
			memcpy(f->h_tables + off, kv->ring, sizeof(int32_t) * (size_t)cache->ring_blocks);
			l->table = f->tables + off, l->ring = cache->ring_blocks;
			off += (size_t)cache->ring_blocks;
		} else {
			l->table = NULL, l->ring = 0;
		}
		for (int32_t t = 0; t < seqs[i].n_tokens; t++) {
			f->h_kv_rows[row + t] = gs_kv_slab_row(cache, kv, false, kv->n_past + t);
			f->h_kv_rows[C + row + t] = kv->ring ? gs_kv_slab_row(cache, kv, true, kv->n_past + t) : 0;
		}
		row += seqs[i].n_tokens;
	}
	be->upload(f->be.ctx, f->ids, f->h_ids, sizeof(int32_t) * (size_t)row);
	if (img) {
		be->upload(f->be.ctx, f->img_dst, f->h_img_dst, sizeof(int64_t) * (size_t)img);
		be->upload(f->be.ctx, f->span, f->h_span, sizeof(int32_t) * 2 * (size_t)row);
	}
	be->upload(f->be.ctx, f->pos, f->h_pos, sizeof(int32_t) * (size_t)row);
	be->upload(f->be.ctx, f->tok_seq, f->h_tok_seq, sizeof(int32_t) * (size_t)row);
	be->upload(f->be.ctx, f->out_rows, f->h_out_rows, sizeof(int32_t) * (size_t)out);
	be->upload(f->be.ctx, f->kv_rows, f->h_kv_rows, sizeof(int64_t) * (size_t)row);
	be->upload(f->be.ctx, f->kv_rows + C, f->h_kv_rows + C, sizeof(int64_t) * (size_t)row);
	be->upload(f->be.ctx, f->aseq, f->h_aseq, sizeof(*f->aseq) * (size_t)n_seqs);
	be->upload(f->be.ctx, f->aseq + C, f->h_aseq + C, sizeof(*f->aseq) * (size_t)n_seqs);
	be->upload(f->be.ctx, f->tables, f->h_tables, sizeof(int32_t) * off);
	*n_rows = row;
	*n_out = out;
	*n_img = img;
	return GS_OK;
}

/* logits: the caller's host buffer, or NULL; dev_logits (may be NULL): the rows stay in backend
 * memory (f->logits) and *dev_logits points at them. */
static enum gs_status forward(struct gs_forward *f, const struct gs_kv_cache *cache, const int32_t *ids,
			      const struct gs_batch_seq *seqs, int32_t n_seqs, float *logits, const float **dev_logits)
{
	const struct gs_model *m = f->m;
	const struct gs_config *cfg = &m->cfg;
	const struct gs_backend_i *be = f->be.iface;
	void *bc = f->be.ctx;
	int H = cfg->hidden, D = cfg->head_dim, Nq = m->shard.n_heads, Nkv = m->shard.n_kv_heads;
	size_t KD = (size_t)Nkv * D, F = (size_t)m->shard.n_f, C = (size_t)f->max_tokens;
	float eps = (float)cfg->rms_eps;
	int32_t n = 0, n_out = 0, n_img = 0;

	/* Logits of the rows that want them: straight into the caller's buffer when the backend
	 * works in host memory, else into a backend buffer downloaded at the end. */
	if ((logits && !be->host_memory) || dev_logits) {
		size_t want = 0;
		for (int32_t i = 0; i < n_seqs; i++)
			want += seqs[i].all_logits ? (size_t)seqs[i].n_tokens : seqs[i].want_logits ? 1 : 0;
		GS_TRY(grow(f, (void **)&f->logits, NULL, &f->logits_cap, want, sizeof(float) * (size_t)m->shard.n_vocab));
	}
	GS_TRY(plan_rows(f, cache, ids, seqs, n_seqs, &n, &n_out, &n_img));

	/* Token embeddings times bf16(sqrt(H)) (HF rounds the normalizer to the model dtype);
	 * with a vocabulary split the owning rank writes the row, the others zeros, then sum. */
	be->embed(bc, f->x, &m->embed, f->ids, n, m->embed_scale, m->shard.vocab0);
	GS_TRY(reduce(f, f->x, (size_t)n * H));

	/* Image soft tokens: each sequence's projector rows, in order, replace those rows as they
	 * are (every rank holds all of them). */
	for (int32_t i = 0, r = 0, k = 0; n_img && i < n_seqs; r += seqs[i].n_tokens, i++) {
		int32_t c = 0;
		for (int32_t t = 0; seqs[i].img_rows && t < seqs[i].n_tokens; t++)
			c += is_img_row(m, &seqs[i], ids + r, t);
		if (c)
			be->scatter_rows(bc, f->x, GS_DTYPE_F32, seqs[i].img_rows + (size_t)seqs[i].img_row0 * H,
					 f->img_dst + k, c, (size_t)H);
		k += c;
	}

	/* Context parallelism: this group's rows [r0, r0 + nr) of every row-wise op (all of them
	 * without it); P rows per group, the last groups may have fewer or none. */
	const int32_t P = (n + f->cp_size - 1) / f->cp_size;
	const int32_t r0 = P * f->cp_rank < n ? P * f->cp_rank : n;
	const int32_t nr = n - r0 < P ? n - r0 : P;
	const size_t QD = (size_t)Nq * D;

	for (int l = 0; l < cfg->n_layers; l++) {
		const struct gs_layer_weights *lw = &m->layers[l];
		bool sliding = cache->layer_sliding[l];
		void *kc = gs_kv_k(cache, l), *vc = gs_kv_v(cache, l); /* the backend's kv_dtype */
		float *xr = f->x + (size_t)r0 * H, *xnr = f->xn + (size_t)r0 * H, *or = f->o + (size_t)r0 * H;

		/* Attention block: pre-norm, projections, per-head QK-norm, RoPE with this layer's base. */
		if (nr) {
			float *qr = f->q + (size_t)r0 * QD, *kr = f->k + (size_t)r0 * KD, *vr = f->v + (size_t)r0 * KD;
			be->rmsnorm(bc, xnr, xr, lw->attn_norm, nr, H, eps);
			float *const qkv[] = { qr, kr, vr };
			const struct gs_tensor *const wqkv[] = { &lw->q, &lw->k, &lw->v };
			gs_matmul_n(be, bc, 3, qkv, xnr, wqkv, nr);
			be->rmsnorm(bc, qr, qr, lw->q_norm, nr * Nq, D, eps);
			be->rmsnorm(bc, kr, kr, lw->k_norm, nr * Nkv, D, eps);
			be->rope(bc, qr, nr, Nq, D, f->pos + r0, cfg->rope_base[l], cfg->rope_scale[l]);
			be->rope(bc, kr, nr, Nkv, D, f->pos + r0, cfg->rope_base[l], cfg->rope_scale[l]);
		}
		if (f->cp) { /* every group's rows of q, k and v */
			GS_TRY(cp_gather(f, f->q, P, QD));
			GS_TRY(cp_gather(f, f->k, P, KD));
			GS_TRY(cp_gather(f, f->v, P, KD));
		}

		/* History from the paged cache, this step's keys from the activations; sliding layers
		 * read their ring of blocks. */
		struct gs_attn_args a = {
			.out = f->att, .q = f->q, .k_new = f->k, .v_new = f->v, .k_cache = kc, .v_cache = vc,
			.kv_dtype = cache->dtype, .block = GS_KV_BLOCK, .seqs = f->aseq + (sliding ? C : 0),
			.n_seqs = n_seqs,
			.tok_seq = f->tok_seq, .n_tokens = n, .n_heads = Nq, .n_kv_heads = Nkv, .head_dim = D,
			.window = cfg->window[l], .scale = (float)(1.0 / sqrt(cfg->query_pre_attn_scalar)),
			.softcap = (float)cfg->attn_softcap, .span = n_img ? f->span : NULL,
		};
		if (f->cp && !sliding) {
			/* Global layer, sharded KV: (o, lse) of every row over this group's keys, then
			 * every group's records, merged in group order (the same bits on each group). */
			size_t rec = (size_t)n * Nq, bytes = sizeof(float) * rec * (size_t)(D + 1);
			a.part = f->parts + (size_t)f->cp_rank * rec * (size_t)(D + 1);
			be->attention(bc, &a);
			GS_TRY(gs_comm_allgather(f->cp, a.part, f->parts, bytes));
			be->attn_merge(bc, f->att, NULL, f->parts, f->cp_size, (int)rec, D);
		} else {
			be->attention(bc, &a);
		}

		/* Then append this step's K/V (a sliding ring overwrites what left the window; a
		 * global position another group holds has row -1 and is not stored here). */
		be->scatter_rows(bc, kc, cache->dtype, f->k, f->kv_rows + (sliding ? C : 0), n, KD);
		be->scatter_rows(bc, vc, cache->dtype, f->v, f->kv_rows + (sliding ? C : 0), n, KD);
		if (!nr)
			continue;

		/* o_proj is ROW-split: each rank holds a partial sum over its heads. */
		be->matmul(bc, or, f->att + (size_t)r0 * QD, &lw->o, nr);
		GS_TRY(reduce(f, or, (size_t)nr * H));

		/* Sandwich norm: the post-norm applies to the branch before the residual add. */
		be->rmsnorm_add(bc, xr, or, lw->post_attn_norm, nr, H, eps);

		/* MLP block: GeGLU with tanh GELU; down_proj is ROW-split like o_proj. */
		float *gr = f->gate + (size_t)r0 * F, *ur = f->up + (size_t)r0 * F;
		be->rmsnorm(bc, xnr, xr, lw->pre_ffn_norm, nr, H, eps);
		float *const gu[] = { gr, ur };
		const struct gs_tensor *const wgu[] = { &lw->gate, &lw->up };
		gs_matmul_n(be, bc, 2, gu, xnr, wgu, nr);
		be->geglu(bc, gr, gr, ur, (size_t)nr * F);
		be->matmul(bc, or, gr, &lw->down, nr);
		GS_TRY(reduce(f, or, (size_t)nr * H));
		be->rmsnorm_add(bc, xr, or, lw->post_ffn_norm, nr, H, eps);
	}
	for (int32_t i = 0; i < n_seqs; i++)
		seqs[i].kv->n_past += seqs[i].n_tokens;

	if ((!logits && !dev_logits) || n_out == 0)
		return GS_OK;
	/* Context parallelism: every group's final rows, so each group makes the same logits. */
	if (f->cp)
		GS_TRY(cp_gather(f, f->x, P, (size_t)H));
	/* Final norm and the tied LM head over this rank's vocabulary rows, only for the rows
	 * that want logits; logits stay sharded. */
	float *lg = be->host_memory && !dev_logits ? logits : f->logits;
	be->gather_rows(bc, f->o, f->x, f->out_rows, n_out, (size_t)H);
	be->rmsnorm(bc, f->xn, f->o, m->final_norm, n_out, H, eps);
	be->matmul(bc, lg, f->xn, &m->lm_head, n_out);
	if (cfg->final_softcap > 0)
		be->softcap(bc, lg, (size_t)n_out * m->shard.n_vocab, (float)cfg->final_softcap);
	if (dev_logits)
		*dev_logits = lg;
	else if (lg != logits)
		be->download(bc, logits, lg, sizeof(float) * (size_t)n_out * (size_t)m->shard.n_vocab);
	return GS_OK;
}

enum gs_status gs_forward_batch(struct gs_forward *f, const struct gs_kv_cache *cache, const int32_t *ids,
				const struct gs_batch_seq *seqs, int32_t n_seqs, float *logits)
{
	return forward(f, cache, ids, seqs, n_seqs, logits, NULL);
}

enum gs_status gs_forward_batch_dev(struct gs_forward *f, const struct gs_kv_cache *cache, const int32_t *ids,
				    const struct gs_batch_seq *seqs, int32_t n_seqs, const float **logits)
{
	*logits = NULL;
	return forward(f, cache, ids, seqs, n_seqs, NULL, logits);
}
