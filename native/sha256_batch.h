/* SHA2-256 of many buffers per call, on OpenSSL's low-level API. */
#ifndef HEARTH_SHA256_BATCH_H
#define HEARTH_SHA256_BATCH_H

#include <stddef.h>
#include <stdint.h>

/* out[32*i : 32*i+32] = sha256(data[i][0 : lens[i]]) for i < n. */
void hearth_sha256_many(const uint8_t *const *data, const size_t *lens, size_t n, uint8_t *out);

/* The same for consecutive spans of buf: span i is buf[ends[i-1] : ends[i]], span 0 starts at 0.
 * ends must be increasing; the caller checks. */
void hearth_sha256_spans(const uint8_t *buf, const size_t *ends, size_t n, uint8_t *out);

/* 1 if batches hash two buffers at a time with the x86 SHA extensions (sha256_x2.c), else 0. */
int hearth_sha256_x2_in_use(void);

/* The OpenSSL in use, as its version string, for diagnostics. */
const char *hearth_openssl_version(void);

/* 1 if the CPU has SHA2-256 instructions (x86 SHA-NI, ARMv8 SHA2), which OpenSSL then uses; 0 if not or
 * unknown on this architecture. */
int hearth_cpu_has_sha256(void);

#endif /* HEARTH_SHA256_BATCH_H */
