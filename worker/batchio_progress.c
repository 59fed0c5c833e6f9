/* Offline batch mode progress: a rate-limited "batch: done/total, tok/s, ETA" line ('\r' on
 * a terminal, '\n' in logs) and the final summary. Contracts are in gs_batchio.h. */
#include "gs_batchio.h"

#include <inttypes.h>
#include <time.h>
#include <unistd.h>

/* ---- 3. progress ---------------------------------------------------------------------------- */

static double gs_bio_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* HH:MM:SS (hours grow past 99), or "--:--:--" for unknown/absurd. */
static void gs_bio_hms(double s, char *buf, size_t cap)
{
	if (!(s >= 0) || s > 3.6e8) {
		snprintf(buf, cap, "--:--:--");
		return;
	}
	unsigned long long t = (unsigned long long)(s + 0.5);
	snprintf(buf, cap, "%02llu:%02llu:%02llu", t / 3600, t / 60 % 60, t % 60);
}

static void gs_bio_progress_record(struct gs_batch_progress *p, size_t done, size_t total,
				   uint64_t tokens, double now)
{
	if (!p->started) {
		p->started = true;
		p->t0 = now;
		p->done0 = done;
		p->tokens0 = tokens;
	}
	p->done = done;
	p->total = total;
	p->tokens = tokens;
}

static double gs_bio_tok_rate(const struct gs_batch_progress *p, double elapsed)
{
	if (elapsed <= 0 || p->tokens < p->tokens0)
		return 0.0;
	return (double)(p->tokens - p->tokens0) / elapsed;
}

int gs_batch_progress_format(const struct gs_batch_progress *p, double now, char *buf, size_t cap)
{
	double elapsed = now - p->t0, eta = -1;
	double pct = p->total ? 100.0 * (double)p->done / (double)p->total : 100.0;
	size_t ran = p->done > p->done0 ? p->done - p->done0 : 0;
	char hms[32];

	if (ran > 0 && elapsed > 0)
		eta = (double)(p->total > p->done ? p->total - p->done : 0) * elapsed / (double)ran;
	gs_bio_hms(eta, hms, sizeof(hms));
	return snprintf(buf, cap, "batch: %zu/%zu done (%.1f%%), %.1f tok/s, ETA %s", p->done, p->total,
			pct, gs_bio_tok_rate(p, elapsed), hms);
}

static void gs_bio_progress_tty(struct gs_batch_progress *p, FILE *f)
{
	if (!p->tty_checked) {
		p->tty = isatty(fileno(f)) == 1;
		p->tty_checked = true;
	}
}

void gs_batch_progress_update_at(struct gs_batch_progress *p, size_t done, size_t total,
				 uint64_t gen_tokens, double now, FILE *f)
{
	char line[256];
	int len;

	gs_bio_progress_record(p, done, total, gen_tokens, now);
	if (!f || (p->printed && now - p->t_last < 1.0))
		return;
	gs_bio_progress_tty(p, f);
	len = gs_batch_progress_format(p, now, line, sizeof(line));
	if (len < 0)
		return;
	if ((size_t)len >= sizeof(line))
		len = (int)sizeof(line) - 1;
	if (p->tty) {
		/* pad with blanks over a longer previous line, stay on the line */
		int pad = p->last_len > (size_t)len ? (int)(p->last_len - (size_t)len) : 0;
		fprintf(f, "\r%s%*s", line, pad, "");
	} else {
		fprintf(f, "%s\n", line);
	}
	fflush(f);
	p->last_len = (size_t)len;
	p->t_last = now;
	p->printed = true;
}

void gs_batch_progress_update(struct gs_batch_progress *p, size_t done, size_t total,
			      uint64_t gen_tokens, FILE *f)
{
	gs_batch_progress_update_at(p, done, total, gen_tokens, gs_bio_now(), f);
}

int gs_batch_progress_summary(const struct gs_batch_progress *p, size_t n_errors, double now,
			      char *buf, size_t cap)
{
	double elapsed = p->started ? now - p->t0 : 0;
	char hms[32];

	gs_bio_hms(elapsed, hms, sizeof(hms));
	return snprintf(buf, cap,
			"batch: finished %zu/%zu (%zu this run, %zu error%s) in %s, %" PRIu64 " tokens, %.1f tok/s",
			p->done, p->total, p->done > p->done0 ? p->done - p->done0 : 0, n_errors,
			n_errors == 1 ? "" : "s", hms,
			p->tokens >= p->tokens0 ? p->tokens - p->tokens0 : 0, gs_bio_tok_rate(p, elapsed));
}

void gs_batch_progress_finish(struct gs_batch_progress *p, size_t n_errors, FILE *f)
{
	char line[256];
	double now = gs_bio_now();

	if (!f)
		return;
	gs_bio_progress_tty(p, f);
	gs_batch_progress_summary(p, n_errors, now, line, sizeof(line));
	fprintf(f, "%s%s\n", p->tty && p->printed ? "\n" : "", line);
	fflush(f);
}
