#include "gf256.h"

#include <string.h>

static uint8_t gf_exp[512];
static uint8_t gf_log[256];
static int gf_ready;

static void gf_init(void)
{
    unsigned x = 1;
    for (int i = 0; i < 255; i++) {
        gf_exp[i] = (uint8_t)x;
        gf_log[x] = (uint8_t)i;
        x <<= 1;
        if (x & 0x100)
            x ^= GF_POLY;
    }
    for (int i = 255; i < 512; i++)
        gf_exp[i] = gf_exp[i - 255];
    /* Written last: a racing reader that sees gf_ready also sees the tables (x86 and the tables are idempotent
     * anyway, so a second initialisation writes the same bytes). */
    __atomic_store_n(&gf_ready, 1, __ATOMIC_RELEASE);
}

uint8_t gf_mul(uint8_t a, uint8_t b)
{
    if (!__atomic_load_n(&gf_ready, __ATOMIC_ACQUIRE))
        gf_init();
    if (a == 0 || b == 0)
        return 0;
    return gf_exp[gf_log[a] + gf_log[b]];
}

uint8_t gf_inv(uint8_t a)
{
    if (!__atomic_load_n(&gf_ready, __ATOMIC_ACQUIRE))
        gf_init();
    if (a == 0)
        return 0;
    return gf_exp[255 - gf_log[a]];
}

void gf_generator_matrix(int k, int m, uint8_t *out)
{
    memset(out, 0, (size_t)(k + m) * k);
    for (int i = 0; i < k; i++)
        out[i * k + i] = 1;
    for (int i = k; i < k + m; i++)
        for (int j = 0; j < k; j++)
            out[i * k + j] = gf_inv((uint8_t)(i ^ j));
}

int gf_invert_matrix(int n, uint8_t *a)
{
    /* Augment with the identity in a scratch copy: n <= 256, so 2 * 64 KiB on the heap would also do, but
     * callers pass small matrices and the stack keeps this allocation-free. */
    uint8_t inv[256 * 256];
    if (n < 1 || n > 256)
        return -1;
    memset(inv, 0, (size_t)n * n);
    for (int i = 0; i < n; i++)
        inv[i * n + i] = 1;
    for (int col = 0; col < n; col++) {
        int piv = col;
        while (piv < n && a[piv * n + col] == 0)
            piv++;
        if (piv == n)
            return -1;
        if (piv != col) {
            for (int j = 0; j < n; j++) {
                uint8_t t = a[col * n + j];
                a[col * n + j] = a[piv * n + j];
                a[piv * n + j] = t;
                t = inv[col * n + j];
                inv[col * n + j] = inv[piv * n + j];
                inv[piv * n + j] = t;
            }
        }
        uint8_t s = gf_inv(a[col * n + col]);
        for (int j = 0; j < n; j++) {
            a[col * n + j] = gf_mul(a[col * n + j], s);
            inv[col * n + j] = gf_mul(inv[col * n + j], s);
        }
        for (int r = 0; r < n; r++) {
            uint8_t f = a[r * n + col];
            if (r == col || f == 0)
                continue;
            for (int j = 0; j < n; j++) {
                a[r * n + j] ^= gf_mul(f, a[col * n + j]);
                inv[r * n + j] ^= gf_mul(f, inv[col * n + j]);
            }
        }
    }
    memcpy(a, inv, (size_t)n * n);
    return 0;
}

void gf_nibble_table(uint8_t c, uint8_t out[32])
{
    for (int i = 0; i < 16; i++) {
        out[i] = gf_mul(c, (uint8_t)i);
        out[16 + i] = gf_mul(c, (uint8_t)(i << 4));
    }
}

uint64_t gf_affine_matrix(uint8_t c)
{
    /* GF2P8AFFINEQB computes result bit i = parity(byte[7 - i] of the matrix AND x). Multiplication by c is
     * linear over GF(2): bit i of c*x is the XOR over j of x_j * bit i of (c * 2^j). */
    uint64_t mat = 0;
    for (int i = 0; i < 8; i++) {
        uint8_t row = 0;
        for (int j = 0; j < 8; j++)
            row |= (uint8_t)(((gf_mul(c, (uint8_t)(1u << j)) >> i) & 1u) << j);
        mat |= (uint64_t)row << (8 * (7 - i));
    }
    return mat;
}
