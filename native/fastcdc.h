/* FastCDC (2020 revision) content-defined chunking over one in-memory buffer. */
#ifndef HEARTH_FASTCDC_H
#define HEARTH_FASTCDC_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    size_t min_size;   /* no cut before this many bytes; these bytes are not even hashed */
    size_t avg_size;   /* where the strict mask gives way to the loose one */
    size_t max_size;   /* forced cut */
    uint64_t mask_s;   /* strict mask, used below avg_size */
    uint64_t mask_l;   /* loose mask, used from avg_size on */
} hearth_cdc_params;

/* A mask of `bits` one-bits (1..48) spread evenly from bit 62 down over the top 48 bits; 0 if out of range. */
uint64_t hearth_cdc_mask(unsigned bits);

/* Write the end offset of each chunk of buf[0:len] to cuts (room for len / min_size + 2 entries) and return
 * how many. With eof == 0 the last chunk is left out when it ended only because buf did (it would grow if
 * more data followed). Pure computation on caller memory: safe to call without the GIL. */
size_t hearth_fastcdc_cuts(const hearth_cdc_params *p, const uint8_t *buf, size_t len, int eof, size_t *cuts);

#endif /* HEARTH_FASTCDC_H */
