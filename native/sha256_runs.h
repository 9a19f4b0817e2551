/* SHA2-256 of a prefix followed by each fixed-width run of one buffer: a Merkle tree's leaves or one level of
 * its nodes in one call, with no per-hash buffer or Python object. */
#ifndef HEARTH_SHA256_RUNS_H
#define HEARTH_SHA256_RUNS_H

#include <stddef.h>
#include <stdint.h>

/* For i < ceil(len / width): out[32*i : 32*i+32] = sha256(prefix[0 : plen] || buf[i*width : min((i+1)*width, len)])
 * (the last run is the short one). width > 0; the caller checks. */
void hearth_sha256_runs(const uint8_t *buf, size_t len, size_t width, const uint8_t *prefix, size_t plen,
                        uint8_t *out);

#endif /* HEARTH_SHA256_RUNS_H */
