/* Small helpers over cJSON shared by every JSON reader (batch input, the HTTP API). */
#ifndef GS_JSON_H
#define GS_JSON_H

#include <cjson/cJSON.h>

/* The JSON type name of v for error messages ("string", "number", "boolean", "null",
 * "array", "object"); "nothing" for NULL (an absent field). */
const char *gs_json_type(const cJSON *v);

#endif
