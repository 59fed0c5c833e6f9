/* Regular expressions for structured output (core-private): a pattern compiled to a byte-level
 * DFA over UTF-8, run by gs_grammar's automaton interface when response_format.type is
 * "regex". Syntax and limits in gs_grammar.h. */
#ifndef GS_GRAMMAR_REGEX_H
#define GS_GRAMMAR_REGEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gs_status.h"

#define GS_REGEX_MAX_PATTERN 4096 /* bytes */
#define GS_REGEX_MAX_REPEAT  1000 /* largest m or n of {m,n} */
#define GS_REGEX_MAX_NFA     200000
#define GS_REGEX_MAX_DFA     16384
#define GS_REGEX_MAX_WORK    20000000L /* NFA-state visits while determinising */
#define GS_REGEX_MAX_CELLS   2000000L  /* DFA states x byte classes (the table kept per grammar) */

struct gs_regex;

/* why: "regex: <what> at position <byte offset>" on GS_ERR_INVALID_ARG. */
enum gs_status gs_regex_compile(const char *pat, size_t len, char *why, size_t cap, struct gs_regex **out);
void gs_regex_free(struct gs_regex *re);
int32_t gs_regex_start(const struct gs_regex *re);
int32_t gs_regex_next(const struct gs_regex *re, int32_t state, uint8_t c); /* -1: no match can follow */
bool gs_regex_accepting(const struct gs_regex *re, int32_t state);
int32_t gs_regex_n_states(const struct gs_regex *re);

#endif
