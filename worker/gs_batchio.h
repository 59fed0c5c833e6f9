/* gemmashard worker: offline batch mode I/O (`gemmashard-worker --batch in.jsonl --out out.jsonl`).
 *
 * Three parts, none of which touches the engine:
 *
 * 1. Input. One JSON object per line, OpenAI-style:
 *      {"id": "q1", "messages": [{"role": "user", "content": "..."}], "max_tokens": 64}
 *      {"id": 7, "prompt": "raw text", "temperature": 0, "stop": ["\n\n"]}
 *    Fields (null means "default"; unknown fields are ignored, so OpenAI extras like "model"
 *    pass): id (string or integer; missing -> "line-N"), exactly one of prompt / messages,
 *    max_tokens (1..2^20, default 256), temperature (1.0), top_k (0), top_p (1.0), min_p (0),
 *    repetition_penalty (1.0), seed (0..2^53; default FNV-1a 64 of the id, so a rerun draws
 *    the same tokens), stop (string or list of at most 8 non-empty strings), logprobs (bool),
 *    top_logprobs (0..20, needs logprobs: true). Strings may not contain \u0000 (cJSON would
 *    cut them short). Blank lines are skipped (they still count for N); CRLF and a UTF-8 BOM
 *    are accepted. A bad line becomes a request with .error set ("line N: <what is wrong>"); the
 *    caller writes an error record for it and goes on with the rest.
 *    Ids are unique in the result: a repeated id, and a generated "line-N" that some explicit
 *    id already took, become an error request whose id is "line-N" (suffixed "#2", "#3", ...
 *    if even that is taken) and whose message names the original id. So the output file is
 *    a map id -> exactly one record, which is what resume relies on.
 *
 * 2. Output with resume. Each result is one JSON line, keys in a fixed order, so a run that
 *    was killed and resumed produces per id the same bytes as one that never stopped:
 *      {"id":"q1","text":"...","finish_reason":"stop",
 *       "usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42},
 *       "logprobs":{"tokens":[...],"token_logprobs":[...],"top_logprobs":[{"tok":-0.1},...]}}
 *      {"id":"line-9","finish_reason":"error",
 *       "error":{"message":"line 9: top_p must be in (0, 1], got 1.5","type":"invalid_request_error"}}
 *    Opening an existing file marks the id of every complete line done and cuts off a torn
 *    tail, so a rerun with the same arguments finishes the job and never duplicates a line.
 *    The file is locked (flock) while open: a second process on the same file is refused.
 *
 * 3. Progress: one line at most once per second,
 *      "batch: 120/2000 done (6.0%), 153.2 tok/s, ETA 00:12:31"
 *    ending in '\r' on a terminal (overwritten in place) and '\n' otherwise (Slurm logs).
 *
 * Typical loop (the engine part belongs to the caller):
 *
 *	GS_TRY(gs_batch_read(in_path, &reqs, &n));
 *	GS_TRY(gs_batch_out_open(out_path, &out));
 *	struct gs_batch_progress prog = { 0 };
 *	size_t done = 0;
 *	for (i = 0; i < n; i++) done += gs_batch_out_done(out, reqs[i].id);
 *	gs_batch_progress_update(&prog, done, n, 0, stderr);   // fixes the start
 *	for (i = 0; i < n; i++) {
 *		if (gs_batch_out_done(out, reqs[i].id)) continue;
 *		if (reqs[i].error) r = (struct gs_batch_result){ .id = reqs[i].id, .error = reqs[i].error };
 *		else { run the engine, fill r, tokens += r.completion_tokens; }
 *		if ((st = gs_batch_out_write(out, &r)) != GS_OK) break;  // GS_ERR_IO: a rerun resumes
 *		gs_batch_progress_update(&prog, ++done, n, tokens, stderr);
 *	}
 *	gs_batch_progress_finish(&prog, n_errors, stderr);
 *	gs_batch_out_close(out);
 *	gs_batch_free(reqs, n);
 *
 * Numbers are printed with the C locale's '.'; nobody in the worker calls setlocale(). */
#ifndef GS_BATCHIO_H
#define GS_BATCHIO_H

#include "gs_chat_openai.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "gs_sampler.h"
#include "gs_status.h"

#define GS_BATCH_MAX_STOP          8           /* stop strings per request                  */
#define GS_BATCH_MAX_TOP_LOGPROBS  20          /* OpenAI's limit                            */
#define GS_BATCH_MAX_TOKENS_LIMIT  (1 << 20)   /* max_tokens upper bound                    */
#define GS_BATCH_DEFAULT_MAX_TOKENS 256
#define GS_BATCH_MAX_N             8           /* "n": choices of one line (GS_MAX_N)        */
#define GS_BATCH_MAX_IMAGES        8           /* image_url parts of one line               */
#define GS_BATCH_MAX_ID_BYTES      1024        /* longer ids are refused                    */
#define GS_BATCH_MAX_STOP_BYTES    1024        /* longer stop strings are refused           */
#define GS_BATCH_MAX_LINE_IN       (64u << 20) /* input lines above 64 MiB are refused      */
#define GS_BATCH_MAX_LINE_OUT      (1u << 30)  /* output line cap (write(2) takes < 2 GiB)  */

/* ---- 1. input ---------------------------------------------------------------------------- */

struct gs_batch_req {
	char    *id;                        /* unique within the file; "line-N" when missing      */
	char    *text;                      /* chat: rendered template (starts with "<bos>",
					       tokenize with add_bos = false); else the raw
					       prompt (tokenize with add_bos = true)           */
	bool     chat;                      /* request came with "messages"                       */
	int32_t  max_tokens;                /* 1 .. GS_BATCH_MAX_TOKENS_LIMIT                     */
	struct gs_sampling_params sp;       /* validated with gs_sampling_params_validate()       */
	char    *stop[GS_BATCH_MAX_STOP];   /* [n_stop] non-empty stop strings                    */
	int      n_stop;
	bool     logprobs;                  /* report the chosen token's logprob                  */
	int      top_logprobs;              /* 0 .. GS_BATCH_MAX_TOP_LOGPROBS alternatives         */
	int32_t  stop_ids[GS_BATCH_MAX_STOP]; /* stop_token_ids [n_stop_ids], end like eos       */
	int      n_stop_ids;
	bool     ignore_eos;                /* eos and <end_of_turn> do not end the answer        */
	char    *response_format;           /* structured output (gs_grammar.h), NULL: none       */
	int      n;                         /* choices 1 .. GS_BATCH_MAX_N, seeds seed + i         */
	int64_t  line_no;                   /* 1-based line in the input file                     */
	struct gs_chat_image *images;       /* image_url parts [n_images], still encoded: decoded
					       at submission (gs_image_prepare), then freed; the
					       chat text holds one "<start_of_image>" each      */
	int      n_images;
	char    *error;                     /* non-NULL: invalid; write an error record with it.
					       text/stop are then NULL/0 and must not be used  */
};

/* Reads every non-blank line of path into *reqs (n_out entries; free with gs_batch_free()).
 * Per-line problems never fail the call: they set .error on that request. Errors (message
 * via gs_errorf): GS_ERR_IO if the file cannot be opened or read, GS_ERR_NOMEM. An empty
 * file gives *n_out == 0 and *reqs == NULL. */
enum gs_status gs_batch_read(const char *path, struct gs_batch_req **reqs, size_t *n_out);
void gs_batch_free(struct gs_batch_req *reqs, size_t n); /* NULL is fine */

/* One line (len bytes, no trailing '\n' needed; it need not be NUL-terminated) into *req,
 * which is overwritten. GS_OK also for an invalid request (then req->error is set); only
 * GS_ERR_NOMEM fails, leaving *req empty. Ids are not checked for uniqueness here (that is
 * gs_batch_read()'s second pass). Exposed for tests and the fuzz target. */
enum gs_status gs_batch_parse_line(const char *line, size_t len, int64_t line_no,
				   struct gs_batch_req *req);
void gs_batch_req_clear(struct gs_batch_req *req); /* frees the fields, zeroes *req */

/* The default seed for an id: FNV-1a 64 of its bytes. */
uint64_t gs_batch_seed_from_id(const char *id);

/* ---- 2. output and resume ---------------------------------------------------------------- */

enum gs_batch_finish {
	GS_BATCH_FINISH_STOP,   /* "stop": end-of-turn/eos token or a stop string */
	GS_BATCH_FINISH_LENGTH, /* "length": max_tokens or the context ran out    */
	GS_BATCH_FINISH_COUNT
};

/* What one record says. All pointers are borrowed for the duration of the write. */
struct gs_batch_result {
	const char          *id;
	const char          *error;         /* non-NULL: an error record; only id, error and
					       error_type are used                             */
	const char          *error_type;    /* NULL: "invalid_request_error"; the engine can say
					       e.g. "server_error" or "context_length_exceeded" */
	const char          *text;          /* generated text (NULL: "")                          */
	enum gs_batch_finish finish;
	int64_t              prompt_tokens;
	int64_t              completion_tokens;
	/* logprobs (OpenAI completions style), written only when has_logprobs: */
	bool                 has_logprobs;
	size_t               n_tokens;       /* generated tokens                                  */
	const char *const   *tokens;         /* [n_tokens] token text                             */
	const float         *token_logprobs; /* [n_tokens]                                        */
	size_t               top_n;          /* alternatives per token; 0: no "top_logprobs"      */
	const char *const   *top_tokens;     /* [n_tokens * top_n], row-major; a NULL entry is
					        skipped (fewer than top_n candidates)            */
	const float         *top_logprobs;   /* [n_tokens * top_n]                                */
	/* n > 1: every choice (text, finish, completion_tokens and logprobs of each are used),
	 * written after the rest as "choices": [{"index", "text", "finish_reason",
	 * "completion_tokens", "logprobs"?}]; the fields above are then choice 0's, with usage
	 * summed over the choices (the prompt counted once). */
	size_t                         n_choices;
	const struct gs_batch_result  *choices;
};
/* Strings are escaped as JSON; invalid UTF-8 (a token that is half a character) is written as
 * U+FFFD so every line stays valid JSON. Floats use the shortest form that reads back as the
 * same float; a non-finite logprob is written as null. */

struct gs_batch_out; /* opaque: fd, lock, done-id set, line buffer */

/* Opens (creating if needed, mode 0644) path for appending results, locked with flock().
 * An existing file is scanned: every complete line ('\n'-terminated JSON object with a string
 * "id" and a "finish_reason" or "error" key) marks its id done. Torn tail: lines after the
 * last good one that lack the '\n' or are not JSON (a kill during a write, a crash that left
 * zeros) are cut off with ftruncate() and logged. Errors (message via gs_errorf):
 *   GS_ERR_IO      cannot open/read/truncate, or another process holds the lock;
 *   GS_ERR_FORMAT  a bad line with good lines after it, or a JSON line that is not a batch
 *                  record (e.g. --out pointing at the input file): the file is left as is;
 *   GS_ERR_NOMEM.
 * Environment: GS_BATCH_FSYNC=1 adds fdatasync() after every line (survives power loss;
 * default: a line is in the page cache once write(2) returns, which survives SIGKILL and
 * scancel of the process, not a node crash). */
enum gs_status gs_batch_out_open(const char *path, struct gs_batch_out **out);

bool   gs_batch_out_done(const struct gs_batch_out *o, const char *id); /* written already? */
size_t gs_batch_out_n_done(const struct gs_batch_out *o);                /* distinct ids     */

/* Appends r as one line with a single write(2) on the O_APPEND descriptor: the whole line is
 * built in memory first, then written in one call. A short write is NOT continued (a second
 * write would not be atomic with the first): the partial bytes are cut off again with
 * ftruncate() and GS_ERR_IO is returned (disk full, file size limit); stop the run, a rerun
 * resumes. A line longer than the output cap (GS_BATCH_MAX_LINE_OUT) is replaced by an error
 * record for the same id ("result too large"), logged, and GS_OK returned. Errors:
 *   GS_ERR_INVALID_ARG  r->id NULL/empty, or the id was written already (nothing written);
 *   GS_ERR_IO           write/fdatasync failed (after a failed truncate the handle refuses
 *                       further writes);
 *   GS_ERR_NOMEM. */
enum gs_status gs_batch_out_write(struct gs_batch_out *o, const struct gs_batch_result *r);

/* Test hook: lower the output line cap (bytes, >= 256) to exercise the oversized path. */
void gs_batch_out_set_line_max(struct gs_batch_out *o, size_t max_bytes);

/* Renders r exactly as gs_batch_out_write() would, without the trailing '\n', into *line
 * (malloc'd; caller frees). For tests and for printing one result. GS_ERR_NOMEM only. */
enum gs_status gs_batch_result_json(const struct gs_batch_result *r, char **line, size_t *len);

/* fdatasync()s, unlocks and closes (NULL is fine). A failing final sync is logged. */
void gs_batch_out_close(struct gs_batch_out *o);

/* ---- 3. progress -------------------------------------------------------------------------- */

/* Plain state; zero-initialise it ({0}). The first update fixes the start: rates and the ETA
 * count only what this run did, so records found done on resume do not inflate them. */
struct gs_batch_progress {
	double   t0;          /* monotonic seconds of the first update                  */
	double   t_last;      /* when the last progress line was printed                */
	bool     started;     /* t0, done0, tokens0 are set                             */
	bool     printed;     /* some progress line was printed (t_last is valid)       */
	bool     tty_checked; /* tty is valid (set both to force a mode in tests)       */
	bool     tty;         /* f is a terminal: lines end in '\r', not '\n'           */
	size_t   done0;     /* done at the first update (resumed records)               */
	uint64_t tokens0;   /* gen_tokens at the first update                           */
	size_t   done;      /* last values seen                                         */
	size_t   total;
	uint64_t tokens;
	size_t   last_len;  /* length of the last '\r' line, to blank a longer leftover  */
};

/* Records done/total/gen_tokens (cumulative counts) and prints a line to f if none was
 * printed in the last second. */
void gs_batch_progress_update(struct gs_batch_progress *p, size_t done, size_t total,
			      uint64_t gen_tokens, FILE *f);
/* Same, with the clock given (monotonic seconds): for tests. */
void gs_batch_progress_update_at(struct gs_batch_progress *p, size_t done, size_t total,
				 uint64_t gen_tokens, double now, FILE *f);
/* The progress line for time now into buf (no line ending); returns its length (as
 * snprintf). "batch: 120/2000 done (6.0%), 153.2 tok/s, ETA 00:12:31"; ETA "--:--:--" until
 * something finished in this run. */
int gs_batch_progress_format(const struct gs_batch_progress *p, double now, char *buf, size_t cap);
/* Final summary on its own line:
 * "batch: finished 2000/2000 (1880 this run, 3 errors) in 00:12:31, 240000 tokens, 153.2 tok/s" */
void gs_batch_progress_finish(struct gs_batch_progress *p, size_t n_errors, FILE *f);
int gs_batch_progress_summary(const struct gs_batch_progress *p, size_t n_errors, double now,
			      char *buf, size_t cap);

#endif
