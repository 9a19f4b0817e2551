/* FastCDC as revised in 2020 (Xia et al., "The Design of Fast Content-Defined Chunking for Data
 * Deduplication Based Storage Systems"): gear hash, cut-point skipping (min_size), normalized chunking
 * (strict mask below avg_size, loose above), and two bytes rolled per step.
 *
 * Rolling two bytes: after bytes a, b the hash is (h << 2) + (GEAR[a] << 1) + GEAR[b]. The hash after a
 * alone, x = (h << 1) + GEAR[a], is tested as (x << 1) & (mask << 1) == (h << 2) + GEAR_LS[a] masked: the
 * same test, because masks never use bit 63. So this scan gives exactly the cuts of the byte-at-a-time loop
 * in edge/kernels/ref_chunking.py, which the tests check. */
#include "fastcdc.h"
#include "fastcdc_gear.h"

#define MASK_TOP_BIT 62
#define MASK_SPAN 48

uint64_t hearth_cdc_mask(unsigned bits)
{
    uint64_t mask = 0;
    if (bits < 1 || bits > MASK_SPAN)
        return 0;
    for (unsigned k = 0; k < bits; k++)
        mask |= UINT64_C(1) << (MASK_TOP_BIT - (k * MASK_SPAN) / bits);
    return mask;
}

/* One two-byte step at q: roll q[0] with the shifted table and test it against the shifted mask, then
 * roll q[1]. Returns from scan() on a match. */
#define STEP2(q)                                   \
    do {                                           \
        h = (h << 2) + GEAR_LS[(q)[0]];            \
        if (!(h & mask_ls))                        \
            return (size_t)((q) - p) + 1;          \
        h += GEAR[(q)[1]];                         \
        if (!(h & mask))                           \
            return (size_t)((q) - p) + 2;          \
    } while (0)

/* Scan p[i..end) with one mask, two bytes per step; a trailing odd byte is rolled alone. Returns the cut
 * (offset just past the byte that matched) or 0, leaving the hash for the next region. */
static inline size_t scan(const uint8_t *p, size_t i, size_t end, uint64_t *hash, uint64_t mask)
{
    const uint64_t mask_ls = mask << 1;
    uint64_t h = *hash;
    const uint8_t *q = p + i;
    /* Loop control is a real share of this loop's few instructions (the scan is bound by instruction
     * throughput, not by the hash's dependency chain): run four steps per iteration, bounds as pointers. */
    const uint8_t *octets_end = q + ((end - i) & ~(size_t)7);
    for (; q < octets_end; q += 8) {
        STEP2(q);
        STEP2(q + 2);
        STEP2(q + 4);
        STEP2(q + 6);
    }
    for (; q + 2 <= p + end; q += 2)
        STEP2(q);
    if (q < p + end) {
        h = (h << 1) + GEAR[q[0]];
        if (!(h & mask))
            return end;
    }
    *hash = h;
    return 0;
}

#undef STEP2

/* Length of the chunk at p[0:remaining], or 0 when only the end of the data ended it. */
static size_t find_cut(const hearth_cdc_params *prm, const uint8_t *p, size_t remaining)
{
    if (remaining <= prm->min_size) /* nothing to hash; final only when min_size == max_size */
        return remaining >= prm->max_size ? remaining : 0;
    size_t limit = remaining < prm->max_size ? remaining : prm->max_size;
    size_t center = prm->avg_size < limit ? prm->avg_size : limit;
    uint64_t h = 0;
    size_t cut = scan(p, prm->min_size, center, &h, prm->mask_s);
    if (cut)
        return cut;
    cut = scan(p, center, limit, &h, prm->mask_l);
    if (cut)
        return cut;
    return remaining >= prm->max_size ? limit : 0;
}

size_t hearth_fastcdc_cuts(const hearth_cdc_params *prm, const uint8_t *buf, size_t len, int eof, size_t *cuts)
{
    size_t n = 0, start = 0;
    while (start < len) {
        size_t length = find_cut(prm, buf + start, len - start);
        if (!length) {
            if (eof)
                cuts[n++] = len;
            break;
        }
        start += length;
        cuts[n++] = start;
    }
    return n;
}
