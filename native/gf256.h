/* Arithmetic over GF(2^8) with the polynomial x^8 + x^4 + x^3 + x^2 + 1 (0x11d), the field ISA-L and most
 * storage systems use, and the coding matrices built from it. Shared by the extension and the C self-test. */
#ifndef HEARTH_GF256_H
#define HEARTH_GF256_H

#include <stddef.h>
#include <stdint.h>

#define GF_POLY 0x11d

uint8_t gf_mul(uint8_t a, uint8_t b);
uint8_t gf_inv(uint8_t a); /* gf_inv(0) == 0 by convention; callers never ask for it */

/* The (k + m) x k systematic generator: identity on top, then the Cauchy rows 1 / (i ^ j) for i = k..k+m-1,
 * j = 0..k-1 (every square submatrix of a Cauchy matrix is invertible, so any k rows rebuild the data). */
void gf_generator_matrix(int k, int m, uint8_t *out);

/* Invert the n x n matrix in place (Gauss-Jordan); returns 0, or -1 when it is singular. */
int gf_invert_matrix(int n, uint8_t *a);

/* Per-coefficient tables the kernels use: the split-nibble pair (16 products of the low nibble, 16 of the high
 * nibble) and the 8x8 bit matrix of multiplication by c, in the layout GF2P8AFFINEQB expects. */
void gf_nibble_table(uint8_t c, uint8_t out[32]);
uint64_t gf_affine_matrix(uint8_t c);

#endif
