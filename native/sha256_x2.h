/* SHA2-256 of two buffers at once with the x86 SHA extensions: see sha256_x2.c. */
#ifndef HEARTH_SHA256_X2_H
#define HEARTH_SHA256_X2_H

#include <stddef.h>
#include <stdint.h>

/* out_a = sha256(a[0:alen]), out_b = sha256(b[0:blen]); only where hearth_sha256_x2_available() says so. */
void hearth_sha256_x2(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen, uint8_t *out_a,
                      uint8_t *out_b);

/* 1 if this CPU has the instructions hearth_sha256_x2 uses (SHA, SSE4.1, SSSE3), else 0. */
int hearth_sha256_x2_available(void);

#endif /* HEARTH_SHA256_X2_H */
