/* libFuzzer target: a model's config.json (gs_config_parse, as gs_config_load reads it). */
#include <stdint.h>

#include "fuzz_util.h"
#include "gs_config.h"
#include "gs_status.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct gs_config cfg;

	gs_clear_error();
	if (gs_config_parse((const char *)data, size, "config.json", &cfg) == GS_OK) {
		gs_fuzz_require(cfg.n_layers > 0 && cfg.vocab_size > 0, "an accepted config has no layers or vocab");
		/* every per-layer array holds n_layers entries (ASan checks the last one) */
		int32_t l = cfg.n_layers - 1;
		gs_fuzz_require(cfg.window[l] > 0 && cfg.rope_base[l] > 0 && cfg.rope_scale[l] > 0 &&
					(cfg.is_sliding[l] || !cfg.is_sliding[l]),
				"an accepted config has a layer without a window or rope base");
		(void)gs_config_n_global(&cfg);
		gs_config_free(&cfg);
	} else {
		gs_fuzz_require(gs_last_error()[0] != '\0', "config.json refused without a message");
	}
	return 0;
}
