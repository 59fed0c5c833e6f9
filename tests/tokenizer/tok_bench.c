/* Tokenizer figures: load time, encode MB/s, 128K-token prompt. Not a timed test: it prints.
 * usage: tok_bench tokenizer.json */
#include "gs_tokenizer.h"

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: %s tokenizer.json\n", argv[0]);
		return 2;
	}
	if (gs_tokenizer_bench(argv[1], stdout) != GS_OK) {
		fprintf(stderr, "tok_bench: %s\n", gs_last_error());
		return 1;
	}
	return 0;
}
