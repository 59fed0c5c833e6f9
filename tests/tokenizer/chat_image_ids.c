/* Image prompts through our chat template, processor expansion and tokenizer, for
 * chat_images.py to compare with Jinja2 + Hugging Face tokenizers.
 * usage: chat_image_ids tokenizer.json cases.jsonl out.jsonl
 * A case: {"messages": [{"role", "content": "..." | [{"type": "text", "text"} | {"type": "image"}]}],
 *          "n_soft": N}; out: one {"ids": [...], "n_images": k} per case. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gs_chat.h"
#include "gs_config.h"
#include "gs_json.h"
#include "gs_tokenizer.h"

static int one_case(const struct gs_tokenizer *tok, const char *line, FILE *out)
{
	cJSON *root = cJSON_Parse(line), *msgs = cJSON_GetObjectItem(root, "messages"), *m;
	int n = cJSON_GetArraySize(msgs), i = 0, rc = 1;
	struct gs_chat_msg *cm = calloc((size_t)n, sizeof(*cm));
	struct gs_chat_part *parts[64] = { 0 };
	char *text = NULL, *expanded = NULL;
	int32_t *ids = NULL, n_images = 0;
	size_t n_ids = 0;

	if (!root || !cm || n > 64)
		goto out_free;
	cJSON_ArrayForEach(m, msgs) {
		cJSON *c = cJSON_GetObjectItem(m, "content"), *p;
		cm[i].role = cJSON_GetObjectItem(m, "role")->valuestring;
		if (cJSON_IsString(c)) {
			cm[i].content = c->valuestring;
		} else {
			int k = 0;
			parts[i] = calloc((size_t)cJSON_GetArraySize(c) + 1, sizeof(**parts));
			cJSON_ArrayForEach(p, c) {
				bool img = strcmp(cJSON_GetObjectItem(p, "type")->valuestring, "image") == 0;
				parts[i][k].kind = img ? GS_CHAT_PART_IMAGE : GS_CHAT_PART_TEXT;
				parts[i][k].text = img ? NULL : cJSON_GetObjectItem(p, "text")->valuestring;
				k++;
			}
			cm[i].parts = parts[i];
			cm[i].n_parts = (size_t)k;
		}
		i++;
	}
	if (gs_chat_render(cm, (size_t)n, true, &text) != GS_OK ||
	    gs_chat_expand_images(text, (int32_t)cJSON_GetObjectItem(root, "n_soft")->valueint, &expanded, &n_images) !=
		    GS_OK ||
	    gs_tokenizer_encode(tok, expanded, strlen(expanded), false, &ids, &n_ids) != GS_OK) {
		fprintf(stderr, "case failed: %s\n", gs_last_error());
		goto out_free;
	}
	fprintf(out, "{\"n_images\": %d, \"ids\": [", (int)n_images);
	for (size_t k = 0; k < n_ids; k++)
		fprintf(out, "%s%d", k ? ", " : "", (int)ids[k]);
	fprintf(out, "]}\n");
	rc = 0;
out_free:
	free(ids);
	free(expanded);
	free(text);
	for (int k = 0; k < 64; k++)
		free(parts[k]);
	free(cm);
	cJSON_Delete(root);
	return rc;
}

int main(int argc, char **argv)
{
	struct gs_tokenizer *tok;
	char *buf = NULL;
	size_t len;
	int rc = 0;

	if (argc != 4) {
		fprintf(stderr, "usage: chat_image_ids tokenizer.json cases.jsonl out.jsonl\n");
		return 2;
	}
	FILE *out = fopen(argv[3], "w");
	if (!out || gs_tokenizer_load(argv[1], &tok) != GS_OK || gs_read_file(argv[2], &buf, &len) != GS_OK) {
		fprintf(stderr, "chat_image_ids: %s\n", gs_last_error());
		return 1;
	}
	for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n"))
		rc |= one_case(tok, line, out);
	fclose(out);
	free(buf);
	gs_tokenizer_free(tok);
	return rc;
}
