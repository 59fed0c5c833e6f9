/* Gemma 3 chat template, a line-by-line transcription of the Jinja in reference/gemma3.md 5.1,
 * and the processor's image expansion (4.4). */
#include "gs_chat.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Python str.isspace() code points: what Jinja's trim strips (ASCII and Unicode White_Space
 * plus the information separators U+001C..U+001F). */
static bool gs_chat_is_space(uint32_t cp)
{
	return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
	       cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
	       cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

/* Decode one UTF-8 character at s (len bytes left); malformed bytes count as one non-space. */
static size_t gs_chat_utf8(const unsigned char *s, size_t len, uint32_t *cp)
{
	size_t n = s[0] < 0x80 ? 1 : (s[0] >> 5) == 6 ? 2 : (s[0] >> 4) == 14 ? 3 : (s[0] >> 3) == 30 ? 4 : 0;

	if (n == 0 || n > len) {
		*cp = 0xFFFD;
		return 1;
	}
	*cp = n == 1 ? s[0] : (uint32_t)(s[0] & (0x7F >> n));
	for (size_t i = 1; i < n; i++) {
		if ((s[i] & 0xC0) != 0x80) {
			*cp = 0xFFFD;
			return 1;
		}
		*cp = (*cp << 6) | (s[i] & 0x3F);
	}
	return n;
}

/* The [begin, end) byte range of s without leading/trailing whitespace. */
static void gs_chat_trim(const char *s, size_t *begin, size_t *end)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t len = strlen(s), i = 0, last = 0;
	uint32_t cp;

	while (i < len) {
		size_t l = gs_chat_utf8(u + i, len - i, &cp);
		if (!gs_chat_is_space(cp))
			break;
		i += l;
	}
	*begin = i;
	last = i;
	while (i < len) {
		size_t l = gs_chat_utf8(u + i, len - i, &cp);
		i += l;
		if (!gs_chat_is_space(cp))
			last = i;
	}
	*end = last;
}

struct gs_chat_buf {
	char  *p;
	size_t n, cap;
};

static bool gs_chat_put(struct gs_chat_buf *b, const char *s, size_t n)
{
	if (b->n + n + 1 > b->cap) {
		size_t cap = 2 * (b->n + n + 1);
		char *p = realloc(b->p, cap);
		if (!p)
			return false;
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->n, s, n);
	b->n += n;
	b->p[b->n] = '\0';
	return true;
}

static bool gs_chat_puts(struct gs_chat_buf *b, const char *s)
{
	return gs_chat_put(b, s, strlen(s));
}

enum gs_status gs_chat_render(const struct gs_chat_msg *msgs, size_t n, bool add_generation_prompt,
			      char **out)
{
	struct gs_chat_buf b = { 0 };
	const char *system = NULL;
	size_t first = 0;
	bool ok;

	*out = NULL;
	if (!msgs || n == 0)
		return gs_errorf(GS_ERR_INVALID_ARG, "chat: no messages");
	for (size_t i = 0; i < n; i++) {
		if (!msgs[i].role || (!msgs[i].content && !msgs[i].parts))
			return gs_errorf(GS_ERR_INVALID_ARG, "chat: message %zu has no %s", i,
					 msgs[i].role ? "content" : "role");
		for (size_t k = 0; !msgs[i].content && k < msgs[i].n_parts; k++)
			if (msgs[i].parts[k].kind == GS_CHAT_PART_TEXT && !msgs[i].parts[k].text)
				return gs_errorf(GS_ERR_INVALID_ARG, "chat: message %zu part %zu has no text", i, k);
		if (strcmp(msgs[i].role, "system") != 0 && strcmp(msgs[i].role, "user") != 0 &&
		    strcmp(msgs[i].role, "assistant") != 0)
			return gs_errorf(GS_ERR_INVALID_ARG, "chat: message %zu has unknown role '%s'", i,
					 msgs[i].role);
	}
	/* {%- if messages[0]['role'] == 'system' -%} first_user_prefix = content + '\n\n' */
	if (strcmp(msgs[0].role, "system") == 0) {
		system = msgs[0].content;
		/* else: messages[0]['content'][0]['text']; further parts would be dropped, so refused */
		if (!system) {
			if (msgs[0].n_parts != 1 || msgs[0].parts[0].kind != GS_CHAT_PART_TEXT)
				return gs_errorf(GS_ERR_INVALID_ARG,
						 "chat: a system message's content must be a string or one text part "
						 "(the Gemma 3 template reads only the first part's text; got %zu parts%s)",
						 msgs[0].n_parts,
						 msgs[0].n_parts && msgs[0].parts[0].kind == GS_CHAT_PART_IMAGE ?
							 ", the first an image" : "");
			system = msgs[0].parts[0].text;
		}
		first = 1;
	}
	ok = gs_chat_puts(&b, "<bos>");
	for (size_t i = first; i < n && ok; i++) {
		const struct gs_chat_msg *m = &msgs[i];
		bool is_user = strcmp(m->role, "user") == 0;
		size_t lo, hi;

		/* raise_exception when (role == 'user') != (loop.index0 % 2 == 0) */
		if (strcmp(m->role, "system") == 0 || is_user != ((i - first) % 2 == 0)) {
			free(b.p);
			if (strcmp(m->role, "system") == 0)
				return gs_errorf(GS_ERR_INVALID_ARG,
						 "chat: a system message is only allowed first (message %zu)", i);
			return gs_errorf(GS_ERR_INVALID_ARG,
					 "chat: conversation roles must alternate user/assistant/user/assistant/... "
					 "(message %zu is '%s')", i, m->role);
		}
		ok = gs_chat_puts(&b, "<start_of_turn>") && gs_chat_puts(&b, is_user ? "user" : "model") &&
		     gs_chat_puts(&b, "\n");
		if (ok && system && i == first)
			ok = gs_chat_puts(&b, system) && gs_chat_puts(&b, "\n\n");
		if (m->content) { /* {{ message['content'] | trim }} */
			gs_chat_trim(m->content, &lo, &hi);
			ok = ok && gs_chat_put(&b, m->content + lo, hi - lo);
		}
		for (size_t k = 0; !m->content && k < m->n_parts && ok; k++) {
			const struct gs_chat_part *p = &m->parts[k];
			if (p->kind == GS_CHAT_PART_IMAGE) {
				ok = gs_chat_puts(&b, "<start_of_image>");
			} else {
				gs_chat_trim(p->text, &lo, &hi);
				ok = gs_chat_put(&b, p->text + lo, hi - lo);
			}
		}
		ok = ok && gs_chat_puts(&b, "<end_of_turn>\n");
	}
	if (ok && add_generation_prompt)
		ok = gs_chat_puts(&b, "<start_of_turn>model\n");
	if (!ok) {
		free(b.p);
		return gs_errorf(GS_ERR_NOMEM, "chat: out of memory rendering %zu messages", n);
	}
	*out = b.p;
	return GS_OK;
}

enum gs_status gs_chat_expand_images(const char *text, int32_t n_soft, char **out, int32_t *n_images)
{
	static const char boi[] = "<start_of_image>", soft[] = "<image_soft_token>", eoi[] = "<end_of_image>";
	struct gs_chat_buf b = { 0 };
	const char *p = text, *hit;
	int32_t count = 0;
	bool ok = true;

	*out = NULL;
	*n_images = 0;
	if (n_soft < 1)
		return gs_errorf(GS_ERR_INVALID_ARG, "chat: mm_tokens_per_image must be >= 1, got %d", (int)n_soft);
	ok = gs_chat_put(&b, "", 0);
	while (ok && (hit = strstr(p, boi)) != NULL) {
		ok = gs_chat_put(&b, p, (size_t)(hit - p)) && gs_chat_puts(&b, "\n\n") && gs_chat_puts(&b, boi);
		for (int32_t i = 0; i < n_soft && ok; i++)
			ok = gs_chat_put(&b, soft, sizeof(soft) - 1);
		ok = ok && gs_chat_puts(&b, eoi) && gs_chat_puts(&b, "\n\n");
		p = hit + sizeof(boi) - 1;
		count++;
	}
	ok = ok && gs_chat_puts(&b, p);
	if (!ok) {
		free(b.p);
		return gs_errorf(GS_ERR_NOMEM, "chat: out of memory expanding %d images", (int)count);
	}
	*out = b.p;
	*n_images = count;
	return GS_OK;
}
