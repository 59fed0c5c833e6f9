/* libFuzzer target: an API key file (--api-key-file; gs_apikeys_load reads it, mode 0600) and
 * then Authorization tokens against the keys it holds: the input's first line as a token and
 * every key it loaded, each of which must match itself. */
#include <stdint.h>
#include <string.h>

#include "fuzz_util.h"
#include "gs_apikeys.h"
#include "gs_status.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct gs_apikeys *k;
	const char *path = gs_fuzz_write("keys", data, size);

	gs_clear_error();
	if (gs_apikeys_load(path, NULL, &k) != GS_OK) {
		gs_fuzz_require(gs_last_error()[0] != '\0', "a key file refused without a message");
		return 0;
	}
	gs_fuzz_require(gs_apikeys_count(k) > 0, "an accepted key file holds no key");
	for (size_t i = 0; i < gs_apikeys_count(k); i++) {
		const char *name = gs_apikeys_name(k, i);
		gs_fuzz_require(name && name[0] && strlen(name) <= GS_APIKEY_NAME_MAX, "a key without a proper name");
	}
	const uint8_t *nl = memchr(data, '\n', size);
	(void)gs_apikeys_match(k, (const char *)data, nl ? (size_t)(nl - data) : size);
	gs_apikeys_free(k);
	return 0;
}
