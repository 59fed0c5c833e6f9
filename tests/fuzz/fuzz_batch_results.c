/* libFuzzer target: an existing batch output file as a resumed run finds it: gs_batch_out_open
 * scans every line for finished ids and cuts a torn tail off. Accepted, or refused with a
 * message; after a successful open, writing the next result works. */
#include <stdint.h>
#include <string.h>

#include "fuzz_util.h"
#include "gs_batchio.h"
#include "gs_status.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct gs_batch_out *o;
	const char *path = gs_fuzz_write("results.jsonl", data, size);

	gs_clear_error();
	if (gs_batch_out_open(path, &o) != GS_OK) {
		gs_fuzz_require(gs_last_error()[0] != '\0', "a results file refused without a message");
		return 0;
	}
	struct gs_batch_result r = { .id = "fuzz-next-id-\x01", .text = "ok", .finish = GS_BATCH_FINISH_STOP };
	if (!gs_batch_out_done(o, r.id)) {
		size_t before = gs_batch_out_n_done(o);
		gs_fuzz_require(gs_batch_out_write(o, &r) == GS_OK, "writing a result after a successful open failed");
		gs_fuzz_require(gs_batch_out_done(o, r.id) && gs_batch_out_n_done(o) == before + 1,
				"a written result is not counted done");
	}
	gs_batch_out_close(o);
	return 0;
}
