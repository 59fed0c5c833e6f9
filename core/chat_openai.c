/* OpenAI chat messages with text and image_url parts into gs_chat messages (gs_chat_openai.h). */
#include "gs_chat_openai.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "gs_image.h"
#include "gs_json.h"

enum gs_status gs_base64_decode(const char *s, size_t n, uint8_t **out, size_t *out_n)
{
	size_t pad = 0, k = 0;
	uint32_t acc = 0;
	int bits = 0;
	uint8_t *b;

	*out = NULL;
	*out_n = 0;
	while (pad < 2 && n > 0 && s[n - 1] == '=') {
		n--;
		pad++;
	}
	if (n % 4 == 1 || (pad && (n + pad) % 4 != 0))
		return gs_errorf(GS_ERR_INVALID_ARG, "invalid base64: the length (%zu characters) is not a whole number "
				 "of 4-character groups", n + pad);
	b = malloc(n / 4 * 3 + 3);
	if (!b)
		return gs_errorf(GS_ERR_NOMEM, "out of memory decoding %zu base64 characters", n);
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		int v = c >= 'A' && c <= 'Z' ? c - 'A' : c >= 'a' && c <= 'z' ? c - 'a' + 26 :
			c >= '0' && c <= '9' ? c - '0' + 52 : c == '+' ? 62 : c == '/' ? 63 : -1;
		if (v < 0) {
			free(b);
			return gs_errorf(GS_ERR_INVALID_ARG, "invalid base64: character %s0x%02x at offset %zu",
					 c == '=' ? "'=' (padding) " : "", c, i);
		}
		acc = (acc << 6) | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			b[k++] = (uint8_t)(acc >> bits);
		}
	}
	*out = b;
	*out_n = k;
	return GS_OK;
}

static enum gs_status bad(char *why, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static enum gs_status bad(char *why, size_t cap, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, cap, fmt, ap);
	va_end(ap);
	return GS_ERR_INVALID_ARG;
}

/* "data:<mime>[;param]*;base64,<data>" into im; f is the field name for messages. */
static enum gs_status parse_data_url(const char *url, const char *f, struct gs_chat_image *im, char *why,
				     size_t cap)
{
	static const char *const types[] = { "image/png", "image/jpeg", "application/dicom" };
	const char *comma, *hdr, *semi;
	size_t mime_len, len;
	bool base64 = false;
	enum gs_status st;

	if (strncasecmp(url, "http://", 7) == 0 || strncasecmp(url, "https://", 8) == 0)
		return bad(why, cap,
			   "%s: http(s) URLs are not supported: the server fetches nothing; send the image inline as a "
			   "data URL (\"data:image/png;base64,...\"; image/png, image/jpeg or application/dicom)", f);
	if (strncasecmp(url, "data:", 5) != 0)
		return bad(why, cap, "%s must be a data URL (\"data:image/png;base64,...\"), got \"%.16s...\"", f, url);
	hdr = url + 5;
	comma = strchr(hdr, ',');
	if (!comma)
		return bad(why, cap, "%s: a data URL needs a ',' before its data", f);
	mime_len = strcspn(hdr, ";,");
	for (semi = hdr + mime_len; semi < comma; semi += 1 + strcspn(semi + 1, ";,")) {
		size_t pl = strcspn(semi + 1, ";,");
		if (pl == 6 && strncasecmp(semi + 1, "base64", 6) == 0)
			base64 = true;
	}
	if (!base64)
		return bad(why, cap, "%s: the data URL must be base64 (\"data:<type>;base64,...\")", f);
	im->mime[0] = '\0';
	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
		if (strlen(types[i]) == mime_len && strncasecmp(hdr, types[i], mime_len) == 0)
			snprintf(im->mime, sizeof(im->mime), "%s", types[i]);
	if (mime_len == 9 && strncasecmp(hdr, "image/jpg", 9) == 0)
		snprintf(im->mime, sizeof(im->mime), "image/jpeg");
	if (!im->mime[0])
		return bad(why, cap, "%s: data URLs of type \"%.*s\" are not supported (image/png, image/jpeg, "
			   "application/dicom)", f, (int)(mime_len > 64 ? 64 : mime_len), hdr);
	len = strlen(comma + 1);
	if (len / 4 * 3 > GS_IMAGE_MAX_BYTES)
		return bad(why, cap, "%s: the image is larger than %u bytes", f, (unsigned)GS_IMAGE_MAX_BYTES);
	if (len == 0)
		return bad(why, cap, "%s: the data URL holds no data", f);
	st = gs_base64_decode(comma + 1, len, &im->data, &im->n);
	if (st == GS_ERR_INVALID_ARG) {
		bad(why, cap, "%s: %s", f, gs_last_error());
		gs_clear_error();
	}
	return st;
}

/* The image_url object of part pi of message mi. */
static enum gs_status parse_image_url(const cJSON *iu, int mi, int pi, struct gs_chat_image *im, char *why, size_t cap)
{
	char f[96];
	const cJSON *v;

	snprintf(f, sizeof(f), "messages[%d].content[%d].image_url", mi, pi);
	if (!cJSON_IsObject(iu))
		return bad(why, cap, "%s must be an object {\"url\": \"data:...\"}, got %s", f, gs_json_type(iu));
	for (v = iu->child; v; v = v->next)
		if (strcmp(v->string, "url") != 0 && strcmp(v->string, "detail") != 0 && strcmp(v->string, "window") != 0)
			return bad(why, cap, "%s.%.32s is not supported (url, detail, window)", f, v->string);
	v = cJSON_GetObjectItemCaseSensitive(iu, "detail");
	if (v && !cJSON_IsNull(v) && !(cJSON_IsString(v) && strcmp(v->valuestring, "auto") == 0))
		return bad(why, cap, "%s.detail: only \"auto\" is supported (every image is resized to the model's image "
			   "size)", f);
	v = cJSON_GetObjectItemCaseSensitive(iu, "window");
	if (v && !cJSON_IsNull(v)) {
		const cJSON *c = cJSON_GetObjectItemCaseSensitive(v, "center");
		const cJSON *w = cJSON_GetObjectItemCaseSensitive(v, "width");
		if (!cJSON_IsObject(v) || cJSON_GetArraySize(v) != 2 || !cJSON_IsNumber(c) || !cJSON_IsNumber(w))
			return bad(why, cap, "%s.window must be {\"center\": number, \"width\": number}", f);
		if (!isfinite(c->valuedouble) || !isfinite(w->valuedouble) || w->valuedouble <= 0)
			return bad(why, cap, "%s.window.width must be > 0 and both finite", f);
		im->has_window = true;
		im->window_center = c->valuedouble;
		im->window_width = w->valuedouble;
	}
	v = cJSON_GetObjectItemCaseSensitive(iu, "url");
	snprintf(f, sizeof(f), "messages[%d].content[%d].image_url.url", mi, pi);
	if (!cJSON_IsString(v))
		return bad(why, cap, "%s must be a string, got %s", f, gs_json_type(v));
	return parse_data_url(v->valuestring, f, im, why, cap);
}

void gs_chat_openai_free(struct gs_chat_openai *c)
{
	for (int i = 0; i < c->n_images; i++)
		free(c->images[i].data);
	free(c->images);
	free(c->parts);
	free(c->msgs);
	memset(c, 0, sizeof(*c));
}

enum gs_status gs_chat_openai_parse(const cJSON *messages, int max_images, struct gs_chat_openai *out, char *why,
				    size_t cap, char *param, size_t param_cap)
{
	const cJSON *m, *p;
	int n_parts = 0, n_images = 0, mi = 0;
	char pbuf[64];
	enum gs_status st;

	memset(out, 0, sizeof(*out));
	if (!param) {
		param = pbuf;
		param_cap = sizeof(pbuf);
	}
	snprintf(param, param_cap, "messages");
	if (!cJSON_IsArray(messages))
		return bad(why, cap, "messages must be an array of {\"role\", \"content\"} objects, got %s",
			   gs_json_type(messages));
	if (cJSON_GetArraySize(messages) == 0)
		return bad(why, cap, "messages must not be empty");
	/* first pass: sizes */
	cJSON_ArrayForEach(m, messages) {
		const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
		if (cJSON_IsArray(content))
			cJSON_ArrayForEach(p, content) {
				const cJSON *t = cJSON_GetObjectItemCaseSensitive(p, "type");
				n_parts++;
				n_images += cJSON_IsString(t) && strcmp(t->valuestring, "image_url") == 0;
			}
	}
	if (n_images > max_images)
		return bad(why, cap, "messages: %d images in one request, more than the limit of %d", n_images, max_images);
	out->msgs = calloc((size_t)cJSON_GetArraySize(messages), sizeof(*out->msgs));
	out->parts = calloc((size_t)n_parts + 1, sizeof(*out->parts));
	out->images = calloc((size_t)n_images + 1, sizeof(*out->images));
	if (!out->msgs || !out->parts || !out->images)
		return gs_errorf(GS_ERR_NOMEM, "out of memory for %d messages", cJSON_GetArraySize(messages));
	n_parts = 0;
	cJSON_ArrayForEach(m, messages) {
		const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
		const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
		struct gs_chat_msg *cm = &out->msgs[mi];
		int pi = 0;

		snprintf(param, param_cap, "messages[%d]", mi);
		if (!cJSON_IsObject(m))
			return bad(why, cap, "messages[%d] must be an object, got %s", mi, gs_json_type(m));
		snprintf(param, param_cap, "messages[%d].role", mi);
		if (!cJSON_IsString(role))
			return bad(why, cap, "messages[%d].role must be a string, got %s", mi, gs_json_type(role));
		/* OpenAI's newer name for the system prompt */
		cm->role = strcmp(role->valuestring, "developer") == 0 ? "system" : role->valuestring;
		snprintf(param, param_cap, "messages[%d].content", mi);
		out->n_msgs = ++mi;
		if (cJSON_IsString(content)) {
			cm->content = content->valuestring;
			continue;
		}
		if (!cJSON_IsArray(content))
			return bad(why, cap, "messages[%d].content must be a string or an array of content parts, got %s",
				   mi - 1, gs_json_type(content));
		cm->parts = &out->parts[n_parts];
		cJSON_ArrayForEach(p, content) {
			const cJSON *type = cJSON_GetObjectItemCaseSensitive(p, "type");
			struct gs_chat_part *cp = &out->parts[n_parts];

			if (!cJSON_IsObject(p))
				return bad(why, cap, "messages[%d].content[%d] must be an object, got %s", mi - 1, pi,
					   gs_json_type(p));
			if (!cJSON_IsString(type))
				return bad(why, cap, "messages[%d].content[%d].type must be a string, got %s", mi - 1, pi,
					   gs_json_type(type));
			if (strcmp(type->valuestring, "text") == 0) {
				const cJSON *text = cJSON_GetObjectItemCaseSensitive(p, "text");
				if (!cJSON_IsString(text))
					return bad(why, cap, "messages[%d].content[%d].text must be a string, got %s", mi - 1,
						   pi, gs_json_type(text));
				cp->kind = GS_CHAT_PART_TEXT;
				cp->text = text->valuestring;
			} else if (strcmp(type->valuestring, "image_url") == 0) {
				st = parse_image_url(cJSON_GetObjectItemCaseSensitive(p, "image_url"), mi - 1, pi,
						     &out->images[out->n_images], why, cap);
				if (out->images[out->n_images].data)
					out->n_images++;
				if (st != GS_OK)
					return st;
				cp->kind = GS_CHAT_PART_IMAGE;
			} else {
				return bad(why, cap,
					   "messages[%d].content[%d]: content parts of type \"%.64s\" are not supported "
					   "(\"text\", \"image_url\")", mi - 1, pi, type->valuestring);
			}
			n_parts++;
			pi++;
		}
		cm->n_parts = (size_t)pi;
	}
	snprintf(param, param_cap, "messages");
	return GS_OK;
}
