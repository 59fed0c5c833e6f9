/* gemmashard core: OpenAI chat messages (JSON) into chat-template messages with content parts
 * (gs_chat.h), shared by the HTTP API and batch files.
 *
 *   {"role": "user", "content": "text"}
 *   {"role": "user", "content": [{"type": "text", "text": "..."},
 *                                {"type": "image_url", "image_url": {"url": "data:image/png;base64,...",
 *                                                                    "detail": "auto",
 *                                                                    "window": {"center": 40, "width": 400}}}]}
 *
 * Images come only as data: URLs (base64; image/png, image/jpeg, application/dicom); nothing is
 * ever fetched. "detail" is accepted as "auto" only (every image is resized to the model's
 * image_size); "window" is our extension: the DICOM VOI window to use instead of the file's.
 * The base64 is decoded here; the file itself is decoded later (gs_image_prepare), once the
 * model and its image size are known. */
#ifndef GS_CHAT_OPENAI_H
#define GS_CHAT_OPENAI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "gs_chat.h"
#include "gs_status.h"

/* One image part as sent: the file's bytes (not yet pixels). */
struct gs_chat_image {
	uint8_t *data;          /* malloc'd [n], the decoded base64 */
	size_t   n;
	char     mime[24];      /* "image/png", "image/jpeg", "application/dicom" */
	bool     has_window;    /* "window": {"center", "width"} was given */
	double   window_center, window_width;
};

/* Messages parsed from JSON. Roles and texts are borrowed from the cJSON tree (keep it alive
 * while msgs is used); parts and images are owned. */
struct gs_chat_openai {
	struct gs_chat_msg   *msgs;     /* [n_msgs] */
	int                   n_msgs;
	struct gs_chat_part  *parts;    /* every list content's parts; msgs[i].parts point in */
	struct gs_chat_image *images;   /* [n_images], in prompt order (one per image part) */
	int                   n_images;
};

/* Parse the "messages" array. "developer" is read as "system". At most max_images image parts
 * (over all messages). Errors: GS_ERR_INVALID_ARG with why = a message naming the field
 * ("messages[1].content[0].image_url.url: ...") and param (param_cap bytes, may be NULL) =
 * "messages[i]..." the field to report; GS_ERR_NOMEM. *out is zeroed first and always freed
 * with gs_chat_openai_free. */
enum gs_status gs_chat_openai_parse(const cJSON *messages, int max_images, struct gs_chat_openai *out, char *why,
				    size_t cap, char *param, size_t param_cap);
void gs_chat_openai_free(struct gs_chat_openai *c);

/* RFC 4648 base64 (standard alphabet; padding optional, never inside) of s[0..n) into a
 * malloc'd buffer. GS_ERR_INVALID_ARG naming the first bad character's offset; GS_ERR_NOMEM. */
enum gs_status gs_base64_decode(const char *s, size_t n, uint8_t **out, size_t *out_n);

#endif
