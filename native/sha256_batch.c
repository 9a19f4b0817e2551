/* OpenSSL's SHA256_Init/Update/Final are deprecated in 3.0 in favour of EVP, but they skip EVP's per-call
 * provider lookup and context allocation, which dominates for small blocks, while running the same
 * SHA-NI / ARMv8 crypto-extension code. Nothing here touches Python: callers release the GIL. */
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "sha256_batch.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#elif defined(__aarch64__) && defined(__linux__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#endif

static inline void digest(const uint8_t *data, size_t len, uint8_t *out)
{
    SHA256_CTX ctx;
    SHA256_Init(&ctx);
    SHA256_Update(&ctx, data, len);
    SHA256_Final(out, &ctx);
}

void hearth_sha256_many(const uint8_t *const *data, const size_t *lens, size_t n, uint8_t *out)
{
    for (size_t i = 0; i < n; i++)
        digest(data[i], lens[i], out + 32 * i);
}

void hearth_sha256_spans(const uint8_t *buf, const size_t *ends, size_t n, uint8_t *out)
{
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        digest(buf + start, ends[i] - start, out + 32 * i);
        start = ends[i];
    }
}

const char *hearth_openssl_version(void)
{
    return OpenSSL_version(OPENSSL_VERSION);
}

int hearth_cpu_has_sha256(void)
{
#if defined(__x86_64__) || defined(__i386__)
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return 0;
    return (b >> 29) & 1; /* CPUID.(EAX=7,ECX=0):EBX.SHA */
#elif defined(__aarch64__) && defined(__linux__)
    return (getauxval(AT_HWCAP) & HWCAP_SHA2) != 0;
#else
    return 0;
#endif
}
