/* gemmashard tokenize: token ids of a text, space-separated on one line. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gs_args.h"
#include "gs_cmds.h"
#include "gs_config.h"
#include "gs_tokenizer.h"

int gs_cmd_tokenize(int argc, char **argv)
{
	const char *model_dir = NULL, *text = NULL, *file = NULL;
	bool no_bos = false;
	struct gs_arg args[] = {
		{ "model", GS_ARG_STR, &model_dir, "model directory holding tokenizer.json (or the file itself)" },
		{ "text", GS_ARG_STR, &text, "text to tokenize" },
		{ "file", GS_ARG_STR, &file, "read the text from this file" },
		{ "no-bos", GS_ARG_FLAG, &no_bos, "do not prepend <bos> (= HF add_special_tokens=False)" },
	};
	struct gs_tokenizer *tok = NULL;
	char path[1024], *buf = NULL;
	size_t len;
	int32_t *ids = NULL;
	size_t n = 0;
	int r, rc = 1;

	r = gs_args_parse("usage: gemmashard tokenize --model DIR [--no-bos] (--text TEXT | --file PATH)", args,
			  sizeof(args) / sizeof(args[0]), argc, argv);
	if (r)
		return r == 1 ? 0 : 2;
	if (!model_dir || (!text == !file)) {
		fprintf(stderr, "gemmashard tokenize: --model and exactly one of --text/--file are required\n");
		return 2;
	}
	len = strlen(model_dir);
	if (len > 5 && strcmp(model_dir + len - 5, ".json") == 0)
		snprintf(path, sizeof(path), "%s", model_dir);
	else
		snprintf(path, sizeof(path), "%s/tokenizer.json", model_dir);
	if (gs_tokenizer_load(path, &tok) != GS_OK)
		goto out_fail;
	if (file) {
		if (gs_read_file(file, &buf, &len) != GS_OK)
			goto out_fail;
		text = buf;
	} else {
		len = strlen(text);
	}
	if (gs_tokenizer_encode(tok, text, len, !no_bos, &ids, &n) != GS_OK)
		goto out_fail;
	for (size_t i = 0; i < n; i++)
		printf(i ? " %d" : "%d", ids[i]);
	printf("\n");
	rc = 0;
	goto out_free;

out_fail:
	rc = gs_cmd_fail("tokenize");
out_free:
	free(ids);
	free(buf);
	gs_tokenizer_free(tok);
	return rc;
}
