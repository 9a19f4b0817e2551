/* See sha256_runs.h. On OpenSSL's low-level SHA256_* for the reason sha256_batch.c gives (no EVP lookup and
 * context allocation per small hash). The context after the prefix is built once and copied per run. Nothing
 * here touches Python: callers release the GIL. */
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/sha.h>

#include "sha256_runs.h"

void hearth_sha256_runs(const uint8_t *buf, size_t len, size_t width, const uint8_t *prefix, size_t plen,
                        uint8_t *out)
{
    SHA256_CTX start, ctx;
    SHA256_Init(&start);
    SHA256_Update(&start, prefix, plen);
    for (size_t off = 0; off < len; off += width, out += 32) {
        size_t n = len - off < width ? len - off : width;
        ctx = start;
        SHA256_Update(&ctx, buf + off, n);
        SHA256_Final(out, &ctx);
    }
}
