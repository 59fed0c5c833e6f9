/* Images for the command-line modes that take token ids (gemmashard logits --image, the
 * worker's --tokens --image): image files read and preprocessed, and the plain token recipe
 * of an image spliced in at each <start_of_image> marker of an id list. */
#ifndef GS_CLI_IMAGES_H
#define GS_CLI_IMAGES_H

#include <stdint.h>

#include "gs_config.h"
#include "gs_status.h"

/* Read the comma-separated files of `list` as images of size x size: a file named *.rgb is
 * taken as already preprocessed (exactly size*size*3 bytes of RGB, seam 1), anything else goes
 * through gs_image_prepare (PNG, JPEG, DICOM; format sniffed). *px (malloc'd) gets *n images
 * one after another. Errors name the file: GS_ERR_IO, GS_ERR_INVALID_ARG (wrong size, bad image). */
enum gs_status gs_cli_load_images(const char *list, int32_t size, uint8_t **px, int32_t *n);

/* Replace each boi_id in ids[0, n) by 108 ("\n\n"), boi_id, mm_tokens_per_image x
 * image_token_id, eoi_id, 108 (what the reference processor's text expansion gives between
 * words; a chat prompt is tokenized by the chat path instead). *out (malloc'd) gets *n_out ids;
 * *n_markers the number of images the result takes. GS_ERR_INVALID_ARG without a vision config,
 * or when ids already hold image tokens. */
enum gs_status gs_cli_expand_images(const struct gs_vision_config *v, const int32_t *ids, int32_t n, int32_t **out,
				    int32_t *n_out, int32_t *n_markers);

#endif
