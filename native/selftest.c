/* Self-test of the C kernels without Python: every path this CPU runs must match a byte-at-a-time computation
 * straight from gf_mul, for random k, m, lengths and erasure patterns, including decode. Built natively and
 * cross-built for aarch64 (run under qemu-user) by `make selftest-arm`, so the NEON path is tested on x86.
 * Prints "N passed, M failed" and exits non-zero on any failure. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gf256.h"
#include "rs_kernels.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
    /* xorshift64*: reproducible across architectures, unlike rand() */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

static int rnd_range(int lo, int hi) { return lo + (int)(rnd() % (uint64_t)(hi - lo + 1)); }

static void naive_dot(size_t len, int k, int rows, const uint8_t *coefs, uint8_t **in, uint8_t **out)
{
    for (int r = 0; r < rows; r++)
        for (size_t i = 0; i < len; i++) {
            uint8_t acc = 0;
            for (int j = 0; j < k; j++)
                acc ^= gf_mul(coefs[r * k + j], in[j][i]);
            out[r][i] = acc;
        }
}

static int run_path(int path, size_t len, int k, int rows, const uint8_t *coefs, uint8_t **in, uint8_t **out)
{
    uint8_t *tables = malloc((size_t)rows * k * rs_table_bytes(path));
    if (!tables)
        return -1;
    rs_expand_tables(path, rows, k, coefs, tables);
    rs_dot_prod(path, len, k, rows, tables, (const uint8_t *const *)in, out);
    free(tables);
    return 0;
}

/* Shards lie at an offset from a 64-byte boundary: in half the trials one offset shared by all (as Python
 * objects with equal headers do), in the other half an offset of their own (as buffers the allocator placed
 * apart), so the kernels' aligned-step start is exercised for every mix; a 64-byte gap separates them. The
 * block is kept in s[n]. */
static size_t shard_offset;
static int mixed_offsets;

static uint8_t **alloc_shards(int n, size_t len)
{
    uint8_t **s = calloc((size_t)n + 1, sizeof *s);
    size_t stride = (len + 63) / 64 * 64 + 128;
    uint8_t *block = malloc((size_t)n * stride + 128);
    uint8_t *base = (uint8_t *)(((uintptr_t)block + 63) & ~(uintptr_t)63);
    for (int i = 0; i < n; i++)
        s[i] = base + (size_t)i * stride + (mixed_offsets ? rnd() % 64 : shard_offset);
    s[n] = block;
    return s;
}

static void free_shards(uint8_t **s, int n)
{
    free(s[n]);
    free(s);
}

int main(int argc, char **argv)
{
    int trials = argc > 1 ? atoi(argv[1]) : 200;
    int passed = 0, failed = 0;
    static const size_t lengths[] = {1, 2, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 129, 1000, 4099, 65536 + 7};

    printf("paths on this CPU:");
    for (int p = 0; p < RS_NPATHS; p++)
        if (rs_path_supported(p))
            printf(" %s", rs_path_name(p));
    printf(" (best: %s)\n", rs_path_name(rs_best_path()));

    for (int t = 0; t < trials; t++) {
        int k, m;
        switch (t % 5) {
        case 0: k = 1; m = 1; break;
        case 1: k = rnd_range(1, 255); m = 256 - k; break; /* k + m = 256 */
        default: k = rnd_range(1, 24); m = rnd_range(1, 16); break;
        }
        size_t len = lengths[rnd() % (sizeof lengths / sizeof lengths[0])];
        shard_offset = rnd() % 64;
        mixed_offsets = t % 2;
        if (k + m > 64 && len > 4099)
            len = 4099; /* the naive check is O(len * k * m) */
        uint8_t *gen = malloc((size_t)(k + m) * k);
        gf_generator_matrix(k, m, gen);
        uint8_t **shards = alloc_shards(k + m, len);
        for (int j = 0; j < k; j++)
            for (size_t i = 0; i < len; i++)
                shards[j][i] = (uint8_t)rnd();
        naive_dot(len, k, m, gen + k * k, shards, shards + k); /* the expected parity */

        for (int p = 0; p < RS_NPATHS; p++) {
            if (!rs_path_supported(p))
                continue;
            uint8_t **par = alloc_shards(m, len);
            run_path(p, len, k, m, gen + k * k, shards, par);
            int ok = 1;
            for (int r = 0; r < m && ok; r++)
                ok = memcmp(par[r], shards[k + r], len) == 0;

            /* Lose up to m shards at random; rebuild every lost one from k survivors. */
            int lost_n = rnd_range(1, m), *perm = malloc(sizeof(int) * (k + m));
            for (int i = 0; i < k + m; i++)
                perm[i] = i;
            for (int i = k + m - 1; i > 0; i--) {
                int j = (int)(rnd() % (uint64_t)(i + 1)), x = perm[i];
                perm[i] = perm[j];
                perm[j] = x;
            }
            int *lost = perm, *keep = perm + lost_n; /* the first k of keep are the survivors used */
            uint8_t *sub = malloc((size_t)k * k), *coefs = malloc((size_t)lost_n * k);
            for (int i = 0; i < k; i++)
                memcpy(sub + i * k, gen + keep[i] * k, (size_t)k);
            if (gf_invert_matrix(k, sub) != 0) {
                ok = 0;
            } else {
                for (int r = 0; r < lost_n; r++)
                    for (int j = 0; j < k; j++) {
                        uint8_t acc = 0;
                        for (int i = 0; i < k; i++)
                            acc ^= gf_mul(gen[lost[r] * k + i], sub[i * k + j]);
                        coefs[r * k + j] = acc;
                    }
                uint8_t **in = malloc(sizeof(uint8_t *) * k), **rebuilt = alloc_shards(lost_n, len);
                for (int i = 0; i < k; i++)
                    in[i] = shards[keep[i]];
                run_path(p, len, k, lost_n, coefs, in, rebuilt);
                for (int r = 0; r < lost_n && ok; r++)
                    ok = memcmp(rebuilt[r], shards[lost[r]], len) == 0;
                free(in);
                free_shards(rebuilt, lost_n);
            }
            if (ok) {
                passed++;
            } else {
                failed++;
                printf("FAIL path=%s k=%d m=%d len=%zu\n", rs_path_name(p), k, m, len);
            }
            free(sub);
            free(coefs);
            free(perm);
            free_shards(par, m);
        }
        free_shards(shards, k + m);
        free(gen);
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
