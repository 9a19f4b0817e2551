/* Reed-Solomon dot-product kernels: out[r] = sum_j coef[r][j] * in[j] over GF(2^8), for every byte position.
 * Encoding (parity rows) and decoding (rows of an inverted submatrix) are both this one operation.
 *
 * Each SIMD path is a function compiled with its own target attribute, so the module runs on any CPU of its
 * architecture and picks the best path at run time; nothing is built with -mavx2 for the whole file. */
#ifndef HEARTH_RS_KERNELS_H
#define HEARTH_RS_KERNELS_H

#include <stddef.h>
#include <stdint.h>

enum rs_path {
    RS_SCALAR = 0, /* portable C, 256-byte product tables */
    RS_SSSE3,      /* split-nibble PSHUFB, 16 bytes a step */
    RS_AVX2,       /* split-nibble VPSHUFB, 32 bytes a step */
    RS_AVX512,     /* split-nibble VPSHUFB on AVX-512BW, 64 bytes a step */
    RS_GFNI,       /* GF2P8AFFINEQB on 256-bit vectors (GFNI + AVX2) */
    RS_GFNI512,    /* GF2P8AFFINEQB on 512-bit vectors (GFNI + AVX-512BW) */
    RS_NEON,       /* split-nibble TBL on aarch64 */
    RS_NPATHS
};

const char *rs_path_name(int path);
int rs_path_by_name(const char *name); /* -1 when unknown */
int rs_path_compiled(int path);        /* built into this binary for this architecture */
int rs_path_supported(int path);       /* compiled and the CPU (and OS) can run it */
int rs_best_path(void);

/* Bytes of expanded table per coefficient on this path. */
size_t rs_table_bytes(int path);

/* Expand a rows x k coefficient matrix (row-major) into the path's tables (rows * k * rs_table_bytes). */
void rs_expand_tables(int path, int rows, int k, const uint8_t *coefs, uint8_t *tables);

/* out[r][0..len) = sum_j coefs[r][j] * in[j][0..len) for r < rows, with tables from rs_expand_tables.
 * Outputs are overwritten (not accumulated) and may not alias inputs. Safe to call without the GIL. */
void rs_dot_prod(int path, size_t len, int k, int rows, const uint8_t *tables, const uint8_t *const *in,
                 uint8_t *const *out);

#endif
