/* OpenSSL's SHA256_Init/Update/Final are deprecated in 3.0 in favour of EVP, but they skip EVP's per-call
 * provider lookup and context allocation, which dominates for small blocks, while running the same
 * SHA-NI / ARMv8 crypto-extension code. Nothing here touches Python: callers release the GIL. */
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "sha256_batch.h"
#include "sha256_x2.h"

#include <stdlib.h>

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

/* Whether batches go through the two-lane SHA-NI kernel (sha256_x2.c): where the CPU has it, unless
 * HEARTH_SHA256_X2=0 (the tests run both paths). Decided once; a race only decides it twice alike. */
static int x2_state = -1;

int hearth_sha256_x2_in_use(void)
{
    if (x2_state < 0) {
        const char *env = getenv("HEARTH_SHA256_X2");
        x2_state = hearth_sha256_x2_available() && !(env && env[0] == '0');
    }
    return x2_state;
}

/* Buffers under this go one at a time through OpenSSL: two lanes gain nothing on a block or two. */
#define X2_MIN 1024

void hearth_sha256_many(const uint8_t *const *data, const size_t *lens, size_t n, uint8_t *out)
{
    size_t i = 0, pending = n;   /* pending: index of a large buffer waiting for a partner, n if none */
    int x2 = n > 1 && hearth_sha256_x2_in_use();
    for (; i < n; i++) {
        if (!x2 || lens[i] < X2_MIN) {
            digest(data[i], lens[i], out + 32 * i);
        } else if (pending == n) {
            pending = i;
        } else {
            hearth_sha256_x2(data[pending], lens[pending], data[i], lens[i], out + 32 * pending, out + 32 * i);
            pending = n;
        }
    }
    if (pending != n)
        digest(data[pending], lens[pending], out + 32 * pending);
}

void hearth_sha256_spans(const uint8_t *buf, const size_t *ends, size_t n, uint8_t *out)
{
    size_t start = 0, pending = n, pending_start = 0;   /* as in hearth_sha256_many */
    int x2 = n > 1 && hearth_sha256_x2_in_use();
    for (size_t i = 0; i < n; i++) {
        size_t len = ends[i] - start;
        if (!x2 || len < X2_MIN) {
            digest(buf + start, len, out + 32 * i);
        } else if (pending == n) {
            pending = i;
            pending_start = start;
        } else {
            hearth_sha256_x2(buf + pending_start, ends[pending] - pending_start, buf + start, len,
                             out + 32 * pending, out + 32 * i);
            pending = n;
        }
        start = ends[i];
    }
    if (pending != n)
        digest(buf + pending_start, ends[pending] - pending_start, out + 32 * pending);
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
