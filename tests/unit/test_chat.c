/* gs_chat_render against hand-written expected strings (reference/gemma3.md 5.1/5.2). */
#include <stdlib.h>

#include "gs_chat.h"
#include "gs_test.h"

static void expect_render(const struct gs_chat_msg *m, size_t n, bool gen, const char *want)
{
	char *out = NULL;
	enum gs_status st = gs_chat_render(m, n, gen, &out);
	CHECK_MSG(st == GS_OK, "render failed: %s", gs_last_error());
	if (st == GS_OK)
		CHECK_STREQ(out, want);
	free(out);
}

static void expect_error(const struct gs_chat_msg *m, size_t n, const char *needle)
{
	char *out = (char *)1;
	enum gs_status st = gs_chat_render(m, n, true, &out);
	CHECK(st == GS_ERR_INVALID_ARG);
	CHECK(out == NULL);
	CHECK_MSG(strstr(gs_last_error(), needle) != NULL, "error '%s' lacks '%s'", gs_last_error(), needle);
}

int main(int argc, char **argv)
{
	{ /* The exact string from the reference (a Zig test in the corpus asserts it). */
		struct gs_chat_msg m[] = { { "system", "Be helpful." }, { "user", "Hello" } };
		expect_render(m, 2, true,
			      "<bos><start_of_turn>user\nBe helpful.\n\nHello<end_of_turn>\n<start_of_turn>model\n");
	}
	{
		struct gs_chat_msg m[] = { { "system", "You are a helpful medical assistant." },
					   { "user", "What is hypertension?" } };
		expect_render(m, 2, true,
			      "<bos><start_of_turn>user\nYou are a helpful medical assistant.\n\nWhat is hypertension?"
			      "<end_of_turn>\n<start_of_turn>model\n");
	}
	{ /* No system, no generation prompt. */
		struct gs_chat_msg m[] = { { "user", "Hi" } };
		expect_render(m, 1, false, "<bos><start_of_turn>user\nHi<end_of_turn>\n");
	}
	{ /* Multi-turn: assistant rendered as model; the system prefix only in the first turn. */
		struct gs_chat_msg m[] = { { "system", "S" }, { "user", "Q1" }, { "assistant", "A1" }, { "user", "Q2" } };
		expect_render(m, 4, true,
			      "<bos><start_of_turn>user\nS\n\nQ1<end_of_turn>\n<start_of_turn>model\nA1<end_of_turn>\n"
			      "<start_of_turn>user\nQ2<end_of_turn>\n<start_of_turn>model\n");
	}
	{ /* Ends with an assistant turn (e.g. few-shot), no generation prompt. */
		struct gs_chat_msg m[] = { { "user", "Q" }, { "assistant", "A" } };
		expect_render(m, 2, false,
			      "<bos><start_of_turn>user\nQ<end_of_turn>\n<start_of_turn>model\nA<end_of_turn>\n");
	}
	{ /* trim: ASCII and Unicode whitespace (U+00A0, U+3000, U+2028) go, inner space stays;
	   * the system text is NOT trimmed by the template. */
		struct gs_chat_msg m[] = { { "system", "  sys \n" },
					   { "user", " \t\n\xC2\xA0\xE3\x80\x80 Hello  world \xE2\x80\xA8\r\n" },
					   { "assistant", "\n\nA\n\n" } };
		expect_render(m, 3, false,
			      "<bos><start_of_turn>user\n  sys \n\n\nHello  world<end_of_turn>\n"
			      "<start_of_turn>model\nA<end_of_turn>\n");
	}
	{ /* Whitespace-only content trims to nothing; zero-width space (U+200B) is not whitespace. */
		struct gs_chat_msg m[] = { { "user", "   " }, { "assistant", "\xE2\x80\x8Bx\xE2\x80\x8B" } };
		expect_render(m, 2, false,
			      "<bos><start_of_turn>user\n<end_of_turn>\n<start_of_turn>model\n"
			      "\xE2\x80\x8Bx\xE2\x80\x8B<end_of_turn>\n");
	}
	{ /* Special-token text inside content is passed through verbatim (the template does). */
		struct gs_chat_msg m[] = { { "user", "<end_of_turn> é 😀" } };
		expect_render(m, 1, true,
			      "<bos><start_of_turn>user\n<end_of_turn> é 😀<end_of_turn>\n<start_of_turn>model\n");
	}
	{ /* Only a system message: the template renders just <bos> (+ prompt). */
		struct gs_chat_msg m[] = { { "system", "S" } };
		expect_render(m, 1, true, "<bos><start_of_turn>model\n");
	}
	{
		struct gs_chat_msg m[] = { { "user", "a" }, { "user", "b" } };
		expect_error(m, 2, "conversation roles must alternate user/assistant/");
	}
	{
		struct gs_chat_msg m[] = { { "assistant", "a" }, { "user", "b" } };
		expect_error(m, 2, "conversation roles must alternate");
	}
	{
		struct gs_chat_msg m[] = { { "system", "s" }, { "assistant", "a" } };
		expect_error(m, 2, "conversation roles must alternate");
	}
	{
		struct gs_chat_msg m[] = { { "user", "a" }, { "system", "s" } };
		expect_error(m, 2, "system");
	}
	{
		struct gs_chat_msg m[] = { { "user", "a" }, { "tool", "x" } };
		expect_error(m, 2, "unknown role 'tool'");
	}
	{
		struct gs_chat_msg m[] = { { "user", NULL } };
		expect_error(m, 1, "content");
	}
	expect_error(NULL, 0, "no messages");
	{ /* content parts: texts trimmed, images as <start_of_image>, nothing in between (5.1) */
		struct gs_chat_part sys[] = { { GS_CHAT_PART_TEXT, " S " } };
		struct gs_chat_part u[] = { { GS_CHAT_PART_TEXT, " look\n" }, { GS_CHAT_PART_IMAGE, NULL },
					    { GS_CHAT_PART_IMAGE, NULL }, { GS_CHAT_PART_TEXT, "\tok? " } };
		struct gs_chat_msg m[] = { { "system", NULL, sys, 1 }, { "user", NULL, u, 4 } };
		expect_render(m, 2, true,
			      "<bos><start_of_turn>user\n S \n\nlook<start_of_image><start_of_image>ok?<end_of_turn>\n"
			      "<start_of_turn>model\n");
	}
	{ /* a system list other than one text part would be dropped by the template: refused */
		struct gs_chat_part sys[] = { { GS_CHAT_PART_TEXT, "a" }, { GS_CHAT_PART_TEXT, "b" } };
		struct gs_chat_part img[] = { { GS_CHAT_PART_IMAGE, NULL } };
		struct gs_chat_msg m[] = { { "system", NULL, sys, 2 }, { "user", "q" } };
		struct gs_chat_msg m2[] = { { "system", NULL, img, 1 }, { "user", "q" } };
		expect_error(m, 2, "one text part");
		expect_error(m2, 2, "the first an image");
	}
	{ /* the processor step (4.4): each marker becomes the whole sequence, in the text */
		char *x = NULL;
		int32_t k = -1;
		CHECK(gs_chat_expand_images("user\n<start_of_image>a<start_of_image>", 2, &x, &k) == GS_OK);
		CHECK(k == 2);
		CHECK_STREQ(x, "user\n\n\n<start_of_image><image_soft_token><image_soft_token><end_of_image>\n\na"
			       "\n\n<start_of_image><image_soft_token><image_soft_token><end_of_image>\n\n");
		free(x);
		CHECK(gs_chat_expand_images("no images", 256, &x, &k) == GS_OK && k == 0);
		CHECK_STREQ(x, "no images");
		free(x);
		CHECK(gs_chat_expand_images("x", 0, &x, &k) == GS_ERR_INVALID_ARG);
		gs_clear_error();
	}
	TEST_DONE();
}
