/* SHA2-256 of two buffers at once with the x86 SHA extensions (SHA-NI).
 *
 * One SHA-256 stream is a chain: each SHA256RNDS2 needs the state the one before it made, so a core's SHA unit
 * waits on its own latency most of the time. Two independent streams interleaved keep it busy: on the Zen 4
 * this was measured on, two 256 KiB blocks hash in about the time OpenSSL (also SHA-NI) takes for one and a
 * bit. Written from the instructions' definitions in Intel's SDM (SHA256RNDS2, SHA256MSG1, SHA256MSG2); the
 * padding is FIPS 180-4's. Every result is checked against OpenSSL's in tests/kernels/test_hashing.py.
 *
 * The state lives in two registers as the instructions want it: ABEF (words A, B, E, F, high to low) and CDGH. */
#include "sha256_x2.h"

#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>

#define TARGET __attribute__((target("sha,sse4.1,ssse3")))

static const uint32_t K[64] __attribute__((aligned(16))) = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static const uint32_t IV[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                               0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};

typedef struct {
    __m128i abef, cdgh;
} state_t;

TARGET static inline state_t state_load(const uint32_t h[8])
{
    __m128i dcba = _mm_loadu_si128((const __m128i *)&h[0]);   /* words a b c d, low to high */
    __m128i hgfe = _mm_loadu_si128((const __m128i *)&h[4]);
    __m128i cdab = _mm_shuffle_epi32(dcba, 0xB1);
    __m128i efgh = _mm_shuffle_epi32(hgfe, 0x1B);
    state_t s;
    s.abef = _mm_alignr_epi8(cdab, efgh, 8);
    s.cdgh = _mm_blend_epi16(efgh, cdab, 0xF0);
    return s;
}

TARGET static inline void state_store(state_t s, uint32_t h[8])
{
    __m128i feba = _mm_shuffle_epi32(s.abef, 0x1B);
    __m128i dchg = _mm_shuffle_epi32(s.cdgh, 0xB1);
    _mm_storeu_si128((__m128i *)&h[0], _mm_blend_epi16(feba, dchg, 0xF0));
    _mm_storeu_si128((__m128i *)&h[4], _mm_alignr_epi8(dchg, feba, 8));
}

/* Four rounds with message words w (W[4g .. 4g+3]). */
#define ROUNDS4(s, w, g)                                                                 \
    do {                                                                                 \
        __m128i wk_ = _mm_add_epi32((w), _mm_load_si128((const __m128i *)&K[4 * (g)])); \
        (s).cdgh = _mm_sha256rnds2_epu32((s).cdgh, (s).abef, wk_);                       \
        wk_ = _mm_shuffle_epi32(wk_, 0x0E);                                              \
        (s).abef = _mm_sha256rnds2_epu32((s).abef, (s).cdgh, wk_);                       \
    } while (0)

/* The next four message words from the last sixteen (w4 oldest .. w1 newest). */
#define NEXT_W(w4, w3, w2, w1) \
    _mm_sha256msg2_epu32(_mm_add_epi32(_mm_sha256msg1_epu32((w4), (w3)), _mm_alignr_epi8((w1), (w2), 4)), (w1))

/* nblocks blocks of each of `lanes` streams (1 or 2), the lanes' rounds side by side so the chains overlap.
 * Inlined with a constant lanes, and fully unrolled, everything stays in registers. */
TARGET static inline __attribute__((always_inline)) void blocks_n(state_t *st, const uint8_t *const *p, int lanes,
                                                                  size_t nblocks)
{
    const __m128i swap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    state_t s[2], save[2];
    __m128i w[2][4];
    for (int l = 0; l < lanes; l++)
        s[l] = st[l];
    for (size_t blk = 0; blk < nblocks; blk++) {
#pragma GCC unroll 2
        for (int l = 0; l < lanes; l++) {
            save[l] = s[l];
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++)
                w[l][i] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p[l] + 64 * blk + 16 * i)), swap);
        }
#pragma GCC unroll 16
        for (int g = 0; g < 16; g++) {
#pragma GCC unroll 2
            for (int l = 0; l < lanes; l++) {
                if (g >= 4)   /* W[4g..4g+3] replaces W[4g-16..4g-13] in the ring of four */
                    w[l][g & 3] = NEXT_W(w[l][g & 3], w[l][(g + 1) & 3], w[l][(g + 2) & 3], w[l][(g + 3) & 3]);
                ROUNDS4(s[l], w[l][g & 3], g);
            }
        }
#pragma GCC unroll 2
        for (int l = 0; l < lanes; l++) {
            s[l].abef = _mm_add_epi32(s[l].abef, save[l].abef);
            s[l].cdgh = _mm_add_epi32(s[l].cdgh, save[l].cdgh);
        }
    }
    for (int l = 0; l < lanes; l++)
        st[l] = s[l];
}

TARGET static void blocks_x1(state_t *s, const uint8_t *p, size_t nblocks)
{
    blocks_n(s, &p, 1, nblocks);
}

TARGET static void blocks_x2(state_t s[2], const uint8_t *pa, const uint8_t *pb, size_t nblocks)
{
    const uint8_t *p[2] = {pa, pb};
    blocks_n(s, p, 2, nblocks);
}

/* The last partial block of data (len bytes in all), padded: one or two blocks through blocks_x1, then the
 * digest, big-endian. */
TARGET static void finish(state_t *s, const uint8_t *data, size_t len, uint8_t *out)
{
    uint8_t tail[128];
    size_t rest = len % 64, n = rest < 56 ? 64 : 128;
    memcpy(tail, data + len - rest, rest);
    tail[rest] = 0x80;
    memset(tail + rest + 1, 0, n - rest - 1 - 8);
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++)
        tail[n - 1 - i] = (uint8_t)(bits >> (8 * i));
    blocks_x1(s, tail, n / 64);
    uint32_t h[8];
    state_store(*s, h);
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (uint8_t)(h[i] >> 24);
        out[4 * i + 1] = (uint8_t)(h[i] >> 16);
        out[4 * i + 2] = (uint8_t)(h[i] >> 8);
        out[4 * i + 3] = (uint8_t)h[i];
    }
}

TARGET void hearth_sha256_x2(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen, uint8_t *out_a,
                             uint8_t *out_b)
{
    state_t s[2] = {state_load(IV), state_load(IV)};
    size_t na = alen / 64, nb = blen / 64, both = na < nb ? na : nb;
    blocks_x2(s, a, b, both);
    blocks_x1(&s[0], a + 64 * both, na - both);
    blocks_x1(&s[1], b + 64 * both, nb - both);
    finish(&s[0], a, alen, out_a);
    finish(&s[1], b, blen, out_b);
}

int hearth_sha256_x2_available(void)
{
    return __builtin_cpu_supports("sha") && __builtin_cpu_supports("sse4.1") && __builtin_cpu_supports("ssse3");
}

#else

void hearth_sha256_x2(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen, uint8_t *out_a,
                      uint8_t *out_b)
{
    (void)a, (void)alen, (void)b, (void)blen, (void)out_a, (void)out_b;
}

int hearth_sha256_x2_available(void)
{
    return 0;
}

#endif
