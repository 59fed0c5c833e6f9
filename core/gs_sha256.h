/* SHA-256 (FIPS 180-4), for content keys (the prefix cache's image keys): our own few lines, so
 * the engine needs no crypto library (the GPU bundle builds without OpenSSL). */
#ifndef GS_SHA256_H
#define GS_SHA256_H

#include <stddef.h>
#include <stdint.h>

/* out = SHA-256 of data[0, n). */
void gs_sha256(const void *data, size_t n, uint8_t out[32]);

#endif
