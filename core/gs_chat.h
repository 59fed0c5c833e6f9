/* gemmashard core: Gemma 3 / MedGemma chat template (reference/gemma3.md 5.1), rendered
 * without a Jinja engine.
 *
 *   <bos><start_of_turn>user\n{system}\n\n{user}<end_of_turn>\n<start_of_turn>model\n...
 *
 * The system message (first only) is folded into the first user turn, "assistant" is written
 * as "model", message content is trimmed like Jinja's `trim` (Python str.strip()), the system
 * text is not. Tokenize the result with add_bos=false: it already starts with "<bos>". */
#ifndef GS_CHAT_H
#define GS_CHAT_H

#include <stdbool.h>
#include <stddef.h>

#include "gs_status.h"

struct gs_chat_msg {
	const char *role;    /* "system" (first message only), "user", "assistant" */
	const char *content; /* UTF-8, NUL-terminated */
};

/* Render msgs into *out (malloc'd, NUL-terminated; caller frees). add_generation_prompt
 * appends "<start_of_turn>model\n". Errors (GS_ERR_INVALID_ARG, message via gs_errorf):
 * empty list, NULL role/content, unknown role, system not first, roles that do not
 * alternate user/assistant starting with user. */
enum gs_status gs_chat_render(const struct gs_chat_msg *msgs, size_t n, bool add_generation_prompt,
			      char **out);

#endif
