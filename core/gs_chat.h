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
#include <stdint.h>

#include "gs_status.h"

/* One item of a list content (Jinja: `message['content'] is iterable`). */
enum gs_chat_part_kind {
	GS_CHAT_PART_TEXT,  /* {"type": "text"}: rendered trimmed */
	GS_CHAT_PART_IMAGE, /* {"type": "image"}: rendered "<start_of_image>" */
};
struct gs_chat_part {
	enum gs_chat_part_kind kind;
	const char            *text; /* TEXT: UTF-8, NUL-terminated; IMAGE: unused */
};

struct gs_chat_msg {
	const char *role;    /* "system" (first message only), "user", "assistant" */
	const char *content; /* UTF-8, NUL-terminated; NULL when the content is parts */
	const struct gs_chat_part *parts; /* the content as a list [n_parts] (content NULL) */
	size_t      n_parts;
};

/* Render msgs into *out (malloc'd, NUL-terminated; caller frees). add_generation_prompt
 * appends "<start_of_turn>model\n". A list content renders each text part trimmed and each
 * image part as "<start_of_image>", in order, nothing between them; a system message's list
 * must be one text part (the template reads only content[0]['text'], untrimmed). Errors
 * (GS_ERR_INVALID_ARG, message via gs_errorf): empty list, NULL role/content, unknown role,
 * system not first, roles that do not alternate user/assistant starting with user, a system
 * list that is not one text part. */
enum gs_status gs_chat_render(const struct gs_chat_msg *msgs, size_t n, bool add_generation_prompt,
			      char **out);

/* The processor step (reference/gemma3.md 4.4, Gemma3Processor): every "<start_of_image>" in
 * the rendered text becomes "\n\n<start_of_image>" + n_soft x "<image_soft_token>" +
 * "<end_of_image>\n\n", in the TEXT, so that tokenizing merges these newlines with their
 * neighbours (after "user\n" the ids are 109, not 107 108). *out is malloc'd; *n_images gets
 * the number of markers replaced. GS_ERR_INVALID_ARG when n_soft < 1, GS_ERR_NOMEM. */
enum gs_status gs_chat_expand_images(const char *text, int32_t n_soft, char **out, int32_t *n_images);

#endif
