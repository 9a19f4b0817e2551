#include "rs_kernels.h"

#include <string.h>

#include "gf256.h"

#if defined(__x86_64__) || defined(__i386__)
#define RS_X86 1
#include <immintrin.h>
#endif
#if defined(__aarch64__)
#define RS_ARM64 1
#include <arm_neon.h>
#endif

/* Outputs computed in one pass over the inputs: more per pass means fewer passes over memory, bounded by the
 * vector registers that hold the accumulators. */
#define RS_MAX_ROWS_PER_PASS 6
/* Scalar path: positions handled per block, so that the outputs being built stay in L1. */
#define RS_SCALAR_BLOCK 2048

static const char *const path_names[RS_NPATHS] = {
    "scalar", "ssse3", "avx2", "avx512", "gfni", "gfni512", "neon",
};

const char *rs_path_name(int path)
{
    return (path >= 0 && path < RS_NPATHS) ? path_names[path] : "unknown";
}

int rs_path_by_name(const char *name)
{
    for (int i = 0; i < RS_NPATHS; i++)
        if (strcmp(name, path_names[i]) == 0)
            return i;
    return -1;
}

int rs_path_compiled(int path)
{
    switch (path) {
    case RS_SCALAR:
        return 1;
#ifdef RS_X86
    case RS_SSSE3:
    case RS_AVX2:
    case RS_AVX512:
    case RS_GFNI:
    case RS_GFNI512:
        return 1;
#endif
#ifdef RS_ARM64
    case RS_NEON:
        return 1;
#endif
    default:
        return 0;
    }
}

int rs_path_supported(int path)
{
    if (!rs_path_compiled(path))
        return 0;
#ifdef RS_X86
    /* __builtin_cpu_supports also checks that the OS saves the wider registers (XGETBV). */
    __builtin_cpu_init();
    switch (path) {
    case RS_SSSE3:
        return __builtin_cpu_supports("ssse3");
    case RS_AVX2:
        return __builtin_cpu_supports("avx2");
    case RS_AVX512:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
    case RS_GFNI:
        return __builtin_cpu_supports("gfni") && __builtin_cpu_supports("avx2");
    case RS_GFNI512:
        return __builtin_cpu_supports("gfni") && __builtin_cpu_supports("avx512f") &&
               __builtin_cpu_supports("avx512bw");
    default:
        break;
    }
#endif
    return 1; /* scalar everywhere; NEON is part of every aarch64 CPU */
}

int rs_best_path(void)
{
    static const int order[] = {RS_GFNI512, RS_AVX512, RS_GFNI, RS_AVX2, RS_SSSE3, RS_NEON};
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++)
        if (rs_path_supported(order[i]))
            return order[i];
    return RS_SCALAR;
}

/* Table layout per path, for coefficient index i = r * k + j:
 *   scalar:          256-byte product table at tables + 256 * i
 *   nibble paths:    [low-nibble products (16) | high-nibble products (16)] at tables + 32 * i
 *   gfni paths:      the nibble section (for the tail shorter than a vector) followed by one 8-byte bit
 *                    matrix per coefficient, from tables + 32 * rows * k, in the order the kernels read them:
 *                    by pass of rows (rs_pass_rows), within a pass by input, then by row. A pass of n rows
 *                    starting at row r0 has its matrices at 8 * r0 * k on, input j's n matrices side by side
 *                    at 8 * (r0 * k + j * n): one pointer and constant offsets reach them all (indexed by row
 *                    first, the compiler kept a pointer per row in vector registers and moved one to a
 *                    general register before each broadcast: a uop more per matrix) */
size_t rs_table_bytes(int path)
{
    switch (path) {
    case RS_SCALAR:
        return 256;
    case RS_GFNI:
    case RS_GFNI512:
        return 40;
    default:
        return 32;
    }
}

/* Rows go in passes of at most RS_MAX_ROWS_PER_PASS, sized evenly (7 rows: 4 + 3, not 6 + 1): the row count
 * of pass p of `passes`, given `done` rows in the passes before it. */
static inline int rs_pass_rows(int rows, int done, int p, int passes)
{
    return (rows - done) / (passes - p);
}

static inline int rs_passes(int rows)
{
    return (rows + RS_MAX_ROWS_PER_PASS - 1) / RS_MAX_ROWS_PER_PASS;
}

void rs_expand_tables(int path, int rows, int k, const uint8_t *coefs, uint8_t *tables)
{
    size_t n = (size_t)rows * k;
    if (path == RS_SCALAR) {
        for (size_t i = 0; i < n; i++)
            for (int x = 0; x < 256; x++)
                tables[256 * i + x] = gf_mul(coefs[i], (uint8_t)x);
        return;
    }
    for (size_t i = 0; i < n; i++)
        gf_nibble_table(coefs[i], tables + 32 * i);
    if (path == RS_GFNI || path == RS_GFNI512) {
        uint8_t *aff = tables + 32 * n;
        int passes = rs_passes(rows), done = 0;
        for (int p = 0; p < passes; p++) {
            int np = rs_pass_rows(rows, done, p, passes);
            for (int j = 0; j < k; j++)
                for (int r = 0; r < np; r++) {
                    uint64_t mat = gf_affine_matrix(coefs[(size_t)(done + r) * k + j]);
                    memcpy(aff + 8 * ((size_t)done * k + (size_t)j * np + r), &mat, 8);
                }
            done += np;
        }
    }
}

/* ---- portable paths ---------------------------------------------------------------------------------- */

/* Eight products of the table t, for x[0..8), as one little-endian word of output bytes. */
static inline uint64_t scalar_word(const uint8_t *t, const uint8_t *x)
{
    uint64_t p = (uint64_t)t[x[0]] | (uint64_t)t[x[1]] << 8 | (uint64_t)t[x[2]] << 16 | (uint64_t)t[x[3]] << 24 |
                 (uint64_t)t[x[4]] << 32 | (uint64_t)t[x[5]] << 40 | (uint64_t)t[x[6]] << 48 |
                 (uint64_t)t[x[7]] << 56;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    p = __builtin_bswap64(p);
#endif
    return p;
}

/* Eight lookups assembled into one word: one store of the output per eight (and for the inputs after the
 * first, one load). The first input's products were stored a byte at a time: that loop took 29-42% of a 4+2
 * encode (perf), and how much depended on where the build placed it (4+2 at 1 MiB 515 us in one build, 665 us
 * in another with the same instructions). */
static void dot_scalar(size_t len, int k, int rows, const uint8_t *tables, const uint8_t *const *in,
                       uint8_t *const *out)
{
    for (size_t off = 0; off < len; off += RS_SCALAR_BLOCK) {
        size_t n = len - off < RS_SCALAR_BLOCK ? len - off : RS_SCALAR_BLOCK;
        for (int r = 0; r < rows; r++) {
            uint8_t *o = out[r] + off;
            const uint8_t *t = tables + 256 * ((size_t)r * k);
            const uint8_t *x = in[0] + off;
            size_t i = 0;
            for (; i + 8 <= n; i += 8) {
                uint64_t p = scalar_word(t, x + i);
                memcpy(o + i, &p, 8);
            }
            for (; i < n; i++)
                o[i] = t[x[i]];
            for (int j = 1; j < k; j++) {
                t = tables + 256 * ((size_t)r * k + j);
                x = in[j] + off;
                i = 0;
                for (; i + 8 <= n; i += 8) {
                    uint64_t acc;
                    memcpy(&acc, o + i, 8);
                    acc ^= scalar_word(t, x + i);
                    memcpy(o + i, &acc, 8);
                }
                for (; i < n; i++)
                    o[i] ^= t[x[i]];
            }
        }
    }
}

/* Positions [from, len) with the nibble tables: the tail of a vector path shorter than one vector. */
static void dot_nibble_tail(size_t from, size_t len, int k, int rows, const uint8_t *tables,
                            const uint8_t *const *in, uint8_t *const *out)
{
    for (int r = 0; r < rows; r++) {
        for (size_t i = from; i < len; i++) {
            uint8_t acc = 0;
            for (int j = 0; j < k; j++) {
                const uint8_t *t = tables + 32 * ((size_t)r * k + j);
                uint8_t x = in[j][i];
                acc ^= t[x & 15] ^ t[16 + (x >> 4)];
            }
            out[r][i] = acc;
        }
    }
}

/* Every vector path walks the positions in steps of one vector; the last, partial step is redone as a whole
 * vector ending at len (the outputs are overwritten, so recomputing a few positions is harmless). Buffers
 * shorter than one vector take the nibble tail. Each kernel is written once as a macro body over a constant
 * number of rows N, so the compiler keeps the N accumulators in registers. */
#define RS_FOR_EACH_STEP(START, VL, BODY)                                                                    \
    do {                                                                                                     \
        if (len < (VL)) {                                                                                    \
            dot_nibble_tail(0, len, k, N, tables, in, out);                                                  \
            break;                                                                                           \
        }                                                                                                    \
        for (size_t pos = (START);; pos += (VL)) {                                                           \
            if (pos + (VL) > len) {                                                                          \
                if (pos == len)                                                                              \
                    break;                                                                                   \
                pos = len - (VL);                                                                            \
            }                                                                                                \
            BODY                                                                                             \
        }                                                                                                    \
    } while (0)

#ifdef RS_X86

#define RS_DEFINE_PSHUFB(NAME, TARGET, VEC, VL, ZERO, LOAD, STORE, SET1, AND, XOR, SRLI, SHUF, BCAST)         \
    __attribute__((target(TARGET))) static inline __attribute__((always_inline)) void NAME##_n(              \
        size_t len, int k, const int N, const uint8_t *tables, const uint8_t *aff, const uint8_t *const *in,    \
        uint8_t *const *out)                                                                                 \
    {                                                                                                        \
        const VEC mask = SET1(0x0f);                                                                         \
        size_t start = 0;                                                                                    \
        /* Few rows leave registers free: two vectors a step, so each table load serves twice the bytes. */  \
        if (N <= 3) {                                                                                        \
            for (; start + 2 * (VL) <= len; start += 2 * (VL)) {                                             \
                VEC acc0[3], acc1[3];                                                                        \
                for (int r = 0; r < N; r++)                                                                  \
                    acc0[r] = acc1[r] = ZERO();                                                              \
                for (int j = 0; j < k; j++) {                                                                \
                    VEC x0 = LOAD((const void *)(in[j] + start));                                            \
                    VEC x1 = LOAD((const void *)(in[j] + start + (VL)));                                     \
                    VEC lo0 = AND(x0, mask), hi0 = AND(SRLI(x0, 4), mask);                                   \
                    VEC lo1 = AND(x1, mask), hi1 = AND(SRLI(x1, 4), mask);                                   \
                    for (int r = 0; r < N; r++) {                                                            \
                        const uint8_t *t = tables + 32 * ((size_t)r * k + j);                                \
                        VEC tl = BCAST(t), th = BCAST(t + 16);                                               \
                        acc0[r] = XOR(acc0[r], XOR(SHUF(tl, lo0), SHUF(th, hi0)));                           \
                        acc1[r] = XOR(acc1[r], XOR(SHUF(tl, lo1), SHUF(th, hi1)));                           \
                    }                                                                                        \
                }                                                                                            \
                for (int r = 0; r < N; r++) {                                                                \
                    STORE((void *)(out[r] + start), acc0[r]);                                                \
                    STORE((void *)(out[r] + start + (VL)), acc1[r]);                                         \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
        RS_FOR_EACH_STEP(start, VL, {                                                                        \
            VEC acc[RS_MAX_ROWS_PER_PASS];                                                                   \
            for (int r = 0; r < N; r++)                                                                      \
                acc[r] = ZERO();                                                                             \
            for (int j = 0; j < k; j++) {                                                                    \
                VEC x = LOAD((const void *)(in[j] + pos));                                                   \
                VEC lo = AND(x, mask);                                                                       \
                VEC hi = AND(SRLI(x, 4), mask);                                                              \
                for (int r = 0; r < N; r++) {                                                                \
                    const uint8_t *t = tables + 32 * ((size_t)r * k + j);                                    \
                    acc[r] = XOR(acc[r], XOR(SHUF(BCAST(t), lo), SHUF(BCAST(t + 16), hi)));                  \
                }                                                                                            \
            }                                                                                                \
            for (int r = 0; r < N; r++)                                                                      \
                STORE((void *)(out[r] + pos), acc[r]);                                                       \
        });                                                                                                  \
    }

#define RS_LOAD128(p) _mm_loadu_si128((const __m128i *)(p))
#define RS_STORE128(p, v) _mm_storeu_si128((__m128i *)(p), (v))
#define RS_BCAST128(p) _mm_loadu_si128((const __m128i *)(p))
RS_DEFINE_PSHUFB(dot_ssse3, "ssse3", __m128i, 16, _mm_setzero_si128, RS_LOAD128, RS_STORE128, _mm_set1_epi8,
                 _mm_and_si128, _mm_xor_si128, _mm_srli_epi64, _mm_shuffle_epi8, RS_BCAST128)

#define RS_LOAD256(p) _mm256_loadu_si256((const __m256i *)(p))
#define RS_STORE256(p, v) _mm256_storeu_si256((__m256i *)(p), (v))
#define RS_BCAST256(p) _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(p)))
RS_DEFINE_PSHUFB(dot_avx2, "avx2", __m256i, 32, _mm256_setzero_si256, RS_LOAD256, RS_STORE256,
                 _mm256_set1_epi8, _mm256_and_si256, _mm256_xor_si256, _mm256_srli_epi64, _mm256_shuffle_epi8,
                 RS_BCAST256)

#define RS_LOAD512(p) _mm512_loadu_si512((const void *)(p))
#define RS_STORE512(p, v) _mm512_storeu_si512((void *)(p), (v))
#define RS_BCAST512(p) _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(p)))
RS_DEFINE_PSHUFB(dot_avx512, "avx512f,avx512bw", __m512i, 64, _mm512_setzero_si512, RS_LOAD512, RS_STORE512,
                 _mm512_set1_epi8, _mm512_and_si512, _mm512_xor_si512, _mm512_srli_epi64, _mm512_shuffle_epi8,
                 RS_BCAST512)

/* The GFNI kernels are bound by loop overhead and by the loads, not by the affine instruction itself:
 *  - with few rows, each step covers U vectors of every input (U * N accumulators), so one broadcast of a bit
 *    matrix serves U vectors and the loop runs U times less often (ISA-L's AVX2 GFNI kernels do the same);
 *  - when the inputs share one misalignment (Python objects usually do: equal headers), one vector is done
 *    first and the steps then start where every load is aligned, so no load straddles two cache lines. */
#define RS_GFNI_UNROLL(N, NREGS)                                                                             \
    ((NREGS) == 16 ? ((N) <= 2 ? 4 : (N) <= 3 ? 3 : (N) <= 4 ? 2 : 1) : ((N) <= 2 ? 4 : (N) <= 4 ? 2 : 1))
/* ... except that with 32 registers and three or four rows, two vectors a step pay in cache only: 10+4 on
 * GFNI-512 on a Zen 4 (erasure.py, 3 runs each, alternating builds), against ISA-L's avx512_gfni: at 1 MiB
 * 1.00x -> 1.08x (median), at 64 MiB (inputs streamed from memory, with prefetches) 1.24x -> 1.03x. So the
 * prefetching passes keep one vector a step. */
#define RS_GFNI_UNROLL_STREAMED(N, NREGS) ((NREGS) == 32 && (N) >= 3 ? 1 : RS_GFNI_UNROLL(N, NREGS))
#define RS_GFNI_MAX_UNROLL 4
/* Many inputs are more streams than the hardware prefetcher follows: from RS_GFNI_PREFETCH_MIN_K inputs on,
 * each load is preceded by a prefetch RS_GFNI_PREFETCH bytes ahead. Measured on a Zen 5 against no prefetch:
 * 10+4 at 1 MiB (from L3) +5-10%, at 64 MiB (from memory) about 2x, 8+4 at 64 MiB +20%; 6+3 even; 4+2 at
 * 64 MiB -20% (the hardware keeps up with four streams and the extra requests only compete).
 * In cache the prefetches only cost: on a Zen 4 (EPYC, 1 MiB of L2 a core) 10+4 at 1 MiB measured 0.98x of
 * ISA-L's avx512_gfni with them and 1.01x without, at 4 MiB 0.98x with and 0.96x without. So they are issued
 * only from RS_GFNI_PREFETCH_MIN_BYTES of input on. */
#define RS_GFNI_PREFETCH 512
#define RS_GFNI_PREFETCH_MIN_K 8
#define RS_GFNI_PREFETCH_MIN_BYTES ((size_t)2 << 20)
/* Up to this many inputs, the GFNI-512 kernel is instantiated per k (NAME##_kn). Measured on a Zen 4 against
 * ISA-L's avx512_gfni (medians of 8, old and new alternating): 4+2 at 1 MiB 0.99x -> 1.09x, at 64 MiB
 * 0.92x -> 0.98x (from memory, noisy: single runs 0.78-1.03x). Keeping the bit matrices in registers as
 * well (instead of a broadcast at each use) measured no faster.
 * The 256-bit kernel is instantiated per k only for passes of at most RS_GFNI256_CONST_NMAX rows, and then
 * steps two vectors at a time (RS_GFNI256_CONST_U): on a Zen 4 EPYC at 1 MiB against ISA-L's avx2_gfni
 * (medians of 3-5, C harness, inputs of mixed alignment) 4+2 0.92x -> 1.00x, 2+2 0.95x -> 1.00x, 3+1
 * 0.98x -> 1.03x; with four vectors a step per k 4+2 was 0.87x, with three 0.90x; more rows per k were
 * slower than the generic kernel (4+4 1.16x -> 0.92x, 6+3 1.09x -> 0.89x). */
#define RS_GFNI_CONST_KMAX 6
#define RS_GFNI256_CONST_NMAX 2
#define RS_GFNI256_CONST_U 2

/* One step of UU vectors at position P; UU is a constant, so the loops unroll and acc stays in registers. */
#define RS_GFNI_STEP(VEC, VL, ZERO, LOAD, STORE, XOR, AFFINE, BCAST64, UU, P)                                \
    do {                                                                                                     \
        VEC acc[RS_GFNI_MAX_UNROLL][RS_MAX_ROWS_PER_PASS];                                                   \
        for (int u = 0; u < (UU); u++)                                                                       \
            for (int r = 0; r < N; r++)                                                                      \
                acc[u][r] = ZERO();                                                                          \
        for (int j = 0; j < k; j++) {                                                                        \
            VEC x[RS_GFNI_MAX_UNROLL];                                                                       \
            for (int u = 0; u < (UU); u++)                                                                   \
                x[u] = LOAD((const void *)(in[j] + (P) + u * (VL)));                                         \
            /* Short of registers for U * N accumulators, GCC loads an input vector again for each row that  \
             * uses it (4+2 on GFNI-512: 26 loads a step for 16 vectors). The empty asm makes each loaded      \
             * vector a value held in a register, so each is loaded once (16 loads, 85 instructions a step    \
             * instead of 96; 4+2 at 1 MiB +3% against ISA-L, 64 MiB even). Only where k is a constant of a   \
             * per-k instance: in the generic kernel (10+4) it cost 10+4 at 64 MiB about 12% on GFNI-512. */   \
            if (__builtin_constant_p(k) && k <= RS_GFNI_CONST_KMAX)                                          \
                for (int u = 0; u < (UU); u++)                                                               \
                    __asm__("" : "+v"(x[u]));                                                                \
            if (pf)                                                                                          \
                for (int u = 0; u < (UU) * (VL); u += 64)                                                    \
                    _mm_prefetch((const char *)(in[j] + (P) + RS_GFNI_PREFETCH + u), _MM_HINT_T0);           \
            /* The N broadcasts first, then the N affines into N temporaries, then the N XORs, as            \
             * ISA-L's kernels order them: interleaved (broadcast, affine, XOR per row through one           \
             * temporary) the broadcasts stalled behind the affines. 10+4 at 1 MiB on GFNI-512               \
             * 0.88x -> 1.02x of ISA-L (C harness, medians of 5). */                                         \
            VEC m[RS_MAX_ROWS_PER_PASS];                                                                     \
            for (int r = 0; r < N; r++) {                                                                    \
                uint64_t mat;                                                                                \
                memcpy(&mat, aff + 8 * ((size_t)j * N + r), 8);                                              \
                m[r] = BCAST64((long long)mat);                                                              \
            }                                                                                                \
            for (int u = 0; u < (UU); u++) {                                                                 \
                VEC t[RS_MAX_ROWS_PER_PASS];                                                                 \
                for (int r = 0; r < N; r++)                                                                  \
                    t[r] = AFFINE(x[u], m[r], 0);                                                            \
                for (int r = 0; r < N; r++)                                                                  \
                    acc[u][r] = XOR(acc[u][r], t[r]);                                                        \
            }                                                                                                \
        }                                                                                                    \
        for (int r = 0; r < N; r++)                                                                          \
            for (int u = 0; u < (UU); u++)                                                                   \
                STORE((void *)(out[r] + (P) + u * (VL)), acc[u][r]);                                         \
    } while (0)

#define RS_DEFINE_GFNI(NAME, TARGET, VEC, VL, NREGS, ZERO, LOAD, STORE, XOR, AFFINE, BCAST64)               \
    __attribute__((target(TARGET))) static inline __attribute__((always_inline)) void NAME##_anyk_n(         \
        size_t len, int k, const int N, const uint8_t *tables, const uint8_t *aff, const uint8_t *const *in,    \
        uint8_t *const *out)                                                                                 \
    {                                                                                                        \
        const int U = (NREGS) == 16 && __builtin_constant_p(k) ? RS_GFNI256_CONST_U                          \
                                                                : RS_GFNI_UNROLL(N, NREGS);                  \
        const int pf = k >= RS_GFNI_PREFETCH_MIN_K && (size_t)k * len >= RS_GFNI_PREFETCH_MIN_BYTES;         \
        size_t start = 0;                                                                                    \
        if (len >= 4 * (VL)) {                                                                               \
            size_t mis = (uintptr_t)in[0] & ((VL) - 1);                                                      \
            for (int j = 1; j < k && mis; j++)                                                               \
                if (((uintptr_t)in[j] & ((VL) - 1)) != mis)                                                  \
                    mis = 0;                                                                                 \
            if (mis) {                                                                                       \
                RS_GFNI_STEP(VEC, VL, ZERO, LOAD, STORE, XOR, AFFINE, BCAST64, 1, 0);                        \
                start = (VL) - mis;                                                                          \
            }                                                                                                \
        }                                                                                                    \
        if (pf && RS_GFNI_UNROLL_STREAMED(N, NREGS) != U)                                                    \
            for (; start + (VL) <= len; start += (VL))                                                       \
                RS_GFNI_STEP(VEC, VL, ZERO, LOAD, STORE, XOR, AFFINE, BCAST64, 1, start);                    \
        for (; start + U * (VL) <= len; start += U * (VL))                                                   \
            RS_GFNI_STEP(VEC, VL, ZERO, LOAD, STORE, XOR, AFFINE, BCAST64, U, start);                        \
        RS_FOR_EACH_STEP(start, VL, { RS_GFNI_STEP(VEC, VL, ZERO, LOAD, STORE, XOR, AFFINE, BCAST64, 1, pos); }); \
    }                                                                                                        \
    /* The same kernel for a constant k up to RS_GFNI_CONST_KMAX: the loops over the inputs unroll, and the     \
     * pointers are copied into locals first. The caller's pointer arrays could alias the outputs (uint8_t),  \
     * so the compiler would reload every pointer after each store; the locals stay in registers. */        \
    __attribute__((target(TARGET))) static inline __attribute__((always_inline)) void NAME##_kn(             \
        size_t len, const int k, const int N, const uint8_t *tables, const uint8_t *aff,                     \
        const uint8_t *const *in, uint8_t *const *out)                                                       \
    {                                                                                                        \
        const uint8_t *in_local[RS_GFNI_CONST_KMAX];                                                         \
        uint8_t *out_local[RS_MAX_ROWS_PER_PASS];                                                            \
        for (int j = 0; j < k; j++)                                                                          \
            in_local[j] = in[j];                                                                             \
        for (int r = 0; r < N; r++)                                                                          \
            out_local[r] = out[r];                                                                           \
        NAME##_anyk_n(len, k, N, tables, aff, in_local, out_local);                                          \
    }

RS_DEFINE_GFNI(dot_gfni, "gfni,avx2", __m256i, 32, 16, _mm256_setzero_si256, RS_LOAD256, RS_STORE256,
               _mm256_xor_si256, _mm256_gf2p8affine_epi64_epi8, _mm256_set1_epi64x)
RS_DEFINE_GFNI(dot_gfni512, "gfni,avx512f,avx512bw", __m512i, 64, 32, _mm512_setzero_si512, RS_LOAD512,
               RS_STORE512, _mm512_xor_si512, _mm512_gf2p8affine_epi64_epi8, _mm512_set1_epi64)

#endif /* RS_X86 */

#ifdef RS_ARM64
static inline __attribute__((always_inline)) void dot_neon_n(size_t len, int k, const int N,
                                                               const uint8_t *tables, const uint8_t *aff,
                                                               const uint8_t *const *in, uint8_t *const *out)
{
    const uint8x16_t mask = vdupq_n_u8(0x0f);
    RS_FOR_EACH_STEP(0, 16, {
        uint8x16_t acc[RS_MAX_ROWS_PER_PASS];
        for (int r = 0; r < N; r++)
            acc[r] = vdupq_n_u8(0);
        for (int j = 0; j < k; j++) {
            uint8x16_t x = vld1q_u8(in[j] + pos);
            uint8x16_t lo = vandq_u8(x, mask);
            uint8x16_t hi = vshrq_n_u8(x, 4);
            for (int r = 0; r < N; r++) {
                const uint8_t *t = tables + 32 * ((size_t)r * k + j);
                acc[r] = veorq_u8(acc[r], veorq_u8(vqtbl1q_u8(vld1q_u8(t), lo), vqtbl1q_u8(vld1q_u8(t + 16), hi)));
            }
        }
        for (int r = 0; r < N; r++)
            vst1q_u8(out[r] + pos, acc[r]);
    });
}
#endif

/* One non-inlined entry per (path, N): the switch instantiates each kernel with a constant row count. */
#define RS_DISPATCH_N(NAME, TARGET)                                                                          \
    TARGET static void NAME(size_t len, int k, int n, const uint8_t *tables, const uint8_t *aff,            \
                            const uint8_t *const *in, uint8_t *const *out)                                   \
    {                                                                                                        \
        switch (n) {                                                                                         \
        case 1: NAME##_n(len, k, 1, tables, aff, in, out); break;                                                 \
        case 2: NAME##_n(len, k, 2, tables, aff, in, out); break;                                                 \
        case 3: NAME##_n(len, k, 3, tables, aff, in, out); break;                                                 \
        case 4: NAME##_n(len, k, 4, tables, aff, in, out); break;                                                 \
        case 5: NAME##_n(len, k, 5, tables, aff, in, out); break;                                                 \
        default: NAME##_n(len, k, 6, tables, aff, in, out); break;                                                \
        }                                                                                                    \
    }

#ifdef RS_X86
RS_DISPATCH_N(dot_ssse3, __attribute__((target("ssse3"))))
RS_DISPATCH_N(dot_avx2, __attribute__((target("avx2"))))
RS_DISPATCH_N(dot_avx512, __attribute__((target("avx512f,avx512bw"))))
/* The GFNI entries also take k as a constant up to KMAX (see NAME##_kn); more inputs take the generic one. */
#define RS_DISPATCH_GFNI_K(NAME, TARGET, K, NMAX)                                                            \
    TARGET static void NAME##_k##K(size_t len, int n, const uint8_t *tables, const uint8_t *aff,             \
                                   const uint8_t *const *in, uint8_t *const *out)                            \
    {                                                                                                        \
        switch (n < (NMAX) ? n : (NMAX)) { /* (the dispatcher sends no more rows: no instances past them) */ \
        case 1: NAME##_kn(len, K, 1, tables, aff, in, out); break;                                           \
        case 2: NAME##_kn(len, K, 2, tables, aff, in, out); break;                                           \
        case 3: NAME##_kn(len, K, 3, tables, aff, in, out); break;                                           \
        case 4: NAME##_kn(len, K, 4, tables, aff, in, out); break;                                           \
        case 5: NAME##_kn(len, K, 5, tables, aff, in, out); break;                                           \
        default: NAME##_kn(len, K, 6, tables, aff, in, out); break;                                          \
        }                                                                                                    \
    }
#define RS_DISPATCH_GFNI(NAME, TARGET, KMAX, NMAX)                                                           \
    RS_DISPATCH_N(NAME##_anyk, TARGET)                                                                       \
    RS_DISPATCH_GFNI_K(NAME, TARGET, 1, NMAX)                                                                \
    RS_DISPATCH_GFNI_K(NAME, TARGET, 2, NMAX)                                                                \
    RS_DISPATCH_GFNI_K(NAME, TARGET, 3, NMAX)                                                                \
    RS_DISPATCH_GFNI_K(NAME, TARGET, 4, NMAX)                                                                \
    RS_DISPATCH_GFNI_K(NAME, TARGET, 5, NMAX)                                                                \
    RS_DISPATCH_GFNI_K(NAME, TARGET, 6, NMAX)                                                                \
    static void NAME(size_t len, int k, int n, const uint8_t *tables, const uint8_t *aff,                    \
                     const uint8_t *const *in, uint8_t *const *out)                                          \
    {                                                                                                        \
        switch (k <= (KMAX) && n <= (NMAX) ? k : 0) {                                                        \
        case 1: NAME##_k1(len, n, tables, aff, in, out); break;                                              \
        case 2: NAME##_k2(len, n, tables, aff, in, out); break;                                              \
        case 3: NAME##_k3(len, n, tables, aff, in, out); break;                                              \
        case 4: NAME##_k4(len, n, tables, aff, in, out); break;                                              \
        case 5: NAME##_k5(len, n, tables, aff, in, out); break;                                              \
        case 6: NAME##_k6(len, n, tables, aff, in, out); break;                                              \
        default: NAME##_anyk(len, k, n, tables, aff, in, out); break;                                        \
        }                                                                                                    \
    }
RS_DISPATCH_GFNI(dot_gfni, __attribute__((target("gfni,avx2"))), RS_GFNI_CONST_KMAX, RS_GFNI256_CONST_NMAX)
RS_DISPATCH_GFNI(dot_gfni512, __attribute__((target("gfni,avx512f,avx512bw"))), RS_GFNI_CONST_KMAX,
                 RS_MAX_ROWS_PER_PASS)
#endif
#ifdef RS_ARM64
RS_DISPATCH_N(dot_neon, )
#endif

typedef void (*rs_group_fn)(size_t, int, int, const uint8_t *, const uint8_t *, const uint8_t *const *,
                            uint8_t *const *);

void rs_dot_prod(int path, size_t len, int k, int rows, const uint8_t *tables, const uint8_t *const *in,
                 uint8_t *const *out)
{
    if (path == RS_SCALAR || !rs_path_compiled(path)) {
        dot_scalar(len, k, rows, tables, in, out);
        return;
    }
    rs_group_fn fn = 0;
    switch (path) {
#ifdef RS_X86
    case RS_SSSE3: fn = dot_ssse3; break;
    case RS_AVX2: fn = dot_avx2; break;
    case RS_AVX512: fn = dot_avx512; break;
    case RS_GFNI: fn = dot_gfni; break;
    case RS_GFNI512: fn = dot_gfni512; break;
#endif
#ifdef RS_ARM64
    case RS_NEON: fn = dot_neon; break;
#endif
    default: break;
    }
    /* Rows in passes (rs_pass_rows); each pass reads the tables of its own rows. */
    int passes = rs_passes(rows);
    const uint8_t *aff = tables + 32 * (size_t)rows * k; /* only the GFNI paths have this section */
    int done = 0;
    for (int p = 0; p < passes; p++) {
        int n = rs_pass_rows(rows, done, p, passes);
        fn(len, k, n, tables + 32 * (size_t)done * k, aff + 8 * (size_t)done * k, in, out + done);
        done += n;
    }
}
