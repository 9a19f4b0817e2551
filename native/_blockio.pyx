"""Block files and their names: reading blocks to serve them.

A block read is an open, an fstat, a read and a close, then a SHA2-256 of what was read; a block's file name is
the base32 of its CID. In Python the interpreter's share of that is several µs for a small block, as much as
the syscalls; read_blocks does a batch of blocks in one call, with the GIL released around the syscalls and
every hash (a slow card does not stop the other threads).

Reference: edge/kernels/ref_blockio.py (same functions, same results, same errors).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE

cdef extern from "Python.h":
    bytes PyUnicode_EncodeFSDefault(object text)
from libc.errno cimport EINTR, ENOENT, errno
from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcmp, memcpy
from cpython.mem cimport PyMem_Free, PyMem_Malloc

cdef extern from "sha256_batch.h" nogil:
    void hearth_sha256_many(const uint8_t *const *data, const size_t *lens, size_t n, uint8_t *out)

cdef extern from "<fcntl.h>" nogil:
    int c_open "open"(const char *path, int flags)
    int c_openat "openat"(int dirfd, const char *path, int flags)
    int O_RDONLY
    int O_CLOEXEC
    int O_DIRECTORY
    int AT_FDCWD

cdef extern from "<unistd.h>" nogil:
    ssize_t c_read "read"(int fd, void *buf, size_t n)
    int c_close "close"(int fd)

cdef extern from "<time.h>" nogil:
    struct timespec:
        long tv_sec
        long tv_nsec

cdef extern from "<sys/stat.h>" nogil:
    ctypedef struct struct_stat "struct stat":
        unsigned long long st_ino
        long long st_size
        timespec st_mtim
    int c_fstat "fstat"(int fd, struct_stat *st)

cdef const char *B32 = b"abcdefghijklmnopqrstuvwxyz234567"


cdef Py_ssize_t b32_into(const unsigned char *src, Py_ssize_t n, char *dst) noexcept nogil:
    """Write the base32 of src[:n] at dst; returns how many characters."""
    cdef Py_ssize_t size = (8 * n + 4) // 5
    cdef Py_ssize_t i = 0, j = 0, k
    cdef uint64_t group
    cdef int bits
    while i < n:
        group = 0
        bits = 0
        for k in range(5):   # one 40-bit group, zero-filled past the end
            group = group << 8
            if i + k < n:
                group |= src[i + k]
                bits += 8
        for k in range(8):
            if j >= size or k * 5 >= bits:
                break
            dst[j] = B32[(group >> (35 - 5 * k)) & 31]
            j += 1
        i += 5
    return size


def b32lower(bytes data not None):
    """RFC 4648 base32 of data, lower case, unpadded: base64.b32encode(data).rstrip(b"=").lower().decode()."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, (8 * n + 4) // 5)
    b32_into(<const unsigned char *>PyBytes_AS_STRING(data), n, PyBytes_AS_STRING(out))
    return out.decode("ascii")


cdef _oserror(int err, path):
    raise _make_oserror(err, path)


cdef _make_oserror(int err, path):
    import os
    return OSError(err, os.strerror(err), path)


DIGEST_HEX = b"0123456789abcdef"
MAX_KEY = 64      # bytes of a binary CIDv1 whose file read_blocks may name (a sha2-256 one is 36)
MAX_FANOUT = 8    # digest bytes a directory name may take
MAX_PREFIX = 8    # characters of a file name's prefix


def read_blocks(blocks_dir, keys, int fanout_bytes, str name_prefix not None, int dir_fd=-1):
    """Read and check the block files of keys (binary CIDv1s with a sha2-256 multihash: their digest is their
    last 32 bytes), at the path the store's layout gives (edge/store/blockfiles.py defines it and hands it here):
    blocks_dir/<the digest's first fanout_bytes bytes, hex>/<name_prefix><base32 of the key, lower, unpadded>.
    dir_fd, if given, is blocks_dir opened as a directory (the store holds it open): each file is opened
    relative to it. Without it, blocks_dir is opened once for the call.

    One entry per key: (bytes, whether they hash to the key's digest), None if there is no such file, or the
    OSError reading it raised (returned, not raised: one bad file does not fail the others). ValueError if a key
    is not such a CID, or the layout is out of range."""
    if not 0 <= fanout_bytes <= MAX_FANOUT:
        raise ValueError(f"read_blocks: fanout_bytes must be 0 to {MAX_FANOUT}")
    cdef bytes prefix = name_prefix.encode("ascii")
    cdef Py_ssize_t prefixlen = PyBytes_GET_SIZE(prefix)
    if prefixlen > MAX_PREFIX or b"/" in prefix or b"\0" in prefix:
        raise ValueError(f"read_blocks: name_prefix must be at most {MAX_PREFIX} characters, without / or NUL")
    cdef bytes root = PyUnicode_EncodeFSDefault(blocks_dir) if isinstance(blocks_dir, str) else bytes(blocks_dir)
    cdef Py_ssize_t rootlen = PyBytes_GET_SIZE(root)
    # where the name starts: root, "/", the directory (2 hex digits a byte), "/" if there is one, the prefix
    cdef Py_ssize_t dirlen = 2 * fanout_bytes
    cdef Py_ssize_t namestart = rootlen + 1 + dirlen + (1 if dirlen else 0) + prefixlen
    cdef bytes pathbuf = PyBytes_FromStringAndSize(NULL, namestart + (8 * MAX_KEY + 4) // 5 + 1)
    cdef char *path = PyBytes_AS_STRING(pathbuf)
    cdef const char *croot = PyBytes_AS_STRING(root)
    cdef int dirfd = dir_fd
    cdef bint own = dir_fd < 0
    cdef const char *name   # what openat is given: the path below blocks_dir, or the whole path
    memcpy(path, croot, rootlen)
    path[rootlen] = b"/"
    if dirlen:
        path[rootlen + 1 + dirlen] = b"/"
    memcpy(path + namestart - prefixlen, PyBytes_AS_STRING(prefix), prefixlen)
    # Each open walks only "<dir>/<prefix><name>" from blocks_dir: serving 1 KiB blocks, the opens were ~18% of
    # the serving thread's time (perf), much of it walking the whole path again; and opening blocks_dir itself
    # for each call was another 1.7% of the agent's CPU (the store now holds it open and hands it in). Where
    # blocks_dir cannot be opened, the whole path is walked as before (same results and errors).
    if own:
        with nogil:
            dirfd = c_open(croot, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    name = path + rootlen + 1 if dirfd >= 0 else path
    try:
        return _read_each(keys, path, rootlen, fanout_bytes, namestart, dirfd if dirfd >= 0 else AT_FDCWD, name,
                          PyBytes_GET_SIZE(pathbuf))
    finally:
        if own and dirfd >= 0:
            c_close(dirfd)


cdef enum:
    CHUNK = 16          # files read_blocks has open at once
    SLOT = 16 * 1024    # bytes of each file read before its size is known (a small block: all of it)


cdef list _read_each(keys, char *path, Py_ssize_t rootlen, int fanout_bytes, Py_ssize_t namestart, int dirfd,
                     const char *name, Py_ssize_t pathcap):
    """read_blocks' loop, CHUNK keys at a time: each key's path is written into its own copy of path (which holds
    blocks_dir and the fixed characters); then, without the GIL, each file is opened and read into its slot of a
    scratch buffer. A read that comes back short of the slot is the whole file (a regular file reads to its end),
    so a small block costs an open, one read and a close, no fstat (that was ~0.5 µs of a served 1 KiB block);
    a file that fills its slot is fstat'ed and read on into bytes of its size. Then each block's bytes are
    hashed (one native call for the chunk, GIL released) and compared with its key. A small block whose bytes do
    not match is read again the careful way (fstat, read to its size) before it is called corrupt, so a short
    read from an odd file system can never make a good block look bad. Serving 1 KiB blocks, the GIL went and
    came back twice a block, each time waking whichever thread waited for it (the store's writer, Trio): ~10%
    of an agent's CPU in futex wake-ups and task switches (perf); here it goes twice a chunk."""
    cdef list seq = list(keys)
    cdef Py_ssize_t n = len(seq), first = 0, m, j, k, nhash, skip = name - path
    cdef char *paths = <char *>PyMem_Malloc(CHUNK * pathcap)
    cdef char *scratch = <char *>PyMem_Malloc(CHUNK * SLOT)
    cdef char *p
    cdef const unsigned char *key
    cdef const unsigned char *keyptrs[CHUNK]
    cdef Py_ssize_t keylens[CHUNK]
    cdef Py_ssize_t namelens[CHUNK]
    cdef int fds[CHUNK]
    cdef int errs[CHUNK]
    cdef bint opened[CHUNK]
    cdef long long sizes[CHUNK]    # -1: the file was shorter than its slot, read whole; else its fstat size
    cdef long long totals[CHUNK]   # bytes read
    cdef char *bufs[CHUNK]
    cdef const uint8_t *ptrs[CHUNK]
    cdef size_t lens[CHUNK]
    cdef uint8_t digests[CHUNK * 32]
    cdef struct_stat st
    cdef long long total, want
    cdef Py_ssize_t keylen
    cdef ssize_t got
    cdef list datas = [None] * CHUNK   # the chunk's bytes, while they are filled
    out = []
    if paths == NULL or scratch == NULL:
        PyMem_Free(paths)
        PyMem_Free(scratch)
        raise MemoryError("read_blocks: no memory for a chunk's paths and reads")
    for j in range(CHUNK):
        fds[j] = -1
    try:
        while first < n:
            m = min(<Py_ssize_t>CHUNK, n - first)
            for j in range(m):
                raw = seq[first + j]
                if type(raw) is not bytes:
                    raise ValueError("read_blocks: keys must be bytes")
                key = <const unsigned char *>PyBytes_AS_STRING(raw)
                keylen = PyBytes_GET_SIZE(raw)
                if keylen < 36 or keylen > MAX_KEY or key[0] != 1 or key[keylen - 34] != 0x12 or \
                        key[keylen - 33] != 0x20:
                    raise ValueError("read_blocks: a key is not a binary CIDv1 with a sha2-256 multihash")
                keyptrs[j], keylens[j] = key, keylen
                p = paths + j * pathcap
                memcpy(p, path, namestart)
                for k in range(fanout_bytes):
                    p[rootlen + 1 + 2 * k] = DIGEST_HEX[key[keylen - 32 + k] >> 4]
                    p[rootlen + 2 + 2 * k] = DIGEST_HEX[key[keylen - 32 + k] & 15]
                namelens[j] = namestart + b32_into(key, keylen, p + namestart)
                p[namelens[j]] = 0
            with nogil:
                for j in range(m):
                    errs[j] = 0
                    sizes[j] = -1
                    totals[j] = 0
                    fds[j] = c_openat(dirfd, paths + j * pathcap + skip, O_RDONLY | O_CLOEXEC)
                    opened[j] = fds[j] >= 0
                    if not opened[j]:
                        errs[j] = errno
                        continue
                    while True:
                        got = c_read(fds[j], scratch + j * SLOT, SLOT)
                        if got >= 0 or errno != EINTR:
                            break
                    if got < 0:
                        errs[j] = errno
                    elif got < SLOT:
                        totals[j] = got
                    elif c_fstat(fds[j], &st) < 0:
                        errs[j] = errno
                    else:
                        totals[j] = got
                        sizes[j] = st.st_size if st.st_size > SLOT else SLOT
                    if sizes[j] < 0:   # read whole, or failed: closed now; a large one stays open for the rest
                        c_close(fds[j])
                        fds[j] = -1
            for j in range(m):
                if opened[j] and not errs[j]:
                    if sizes[j] < 0:
                        datas[j] = PyBytes_FromStringAndSize(scratch + j * SLOT, totals[j])
                    else:
                        datas[j] = PyBytes_FromStringAndSize(NULL, sizes[j])
                        memcpy(PyBytes_AS_STRING(datas[j]), scratch + j * SLOT, SLOT)
                    bufs[j] = PyBytes_AS_STRING(datas[j])
            nhash = 0
            with nogil:
                for j in range(m):
                    if not opened[j] or errs[j]:
                        continue
                    if sizes[j] >= 0:
                        total, want = totals[j], sizes[j]
                        while total < want:
                            got = c_read(fds[j], bufs[j] + total, want - total)
                            if got < 0:
                                if errno == EINTR:
                                    continue
                                errs[j] = errno
                                break
                            if got == 0:
                                break
                            total += got
                        c_close(fds[j])
                        fds[j] = -1
                        totals[j] = total
                    if not errs[j]:
                        ptrs[nhash] = <const uint8_t *>bufs[j]
                        lens[nhash] = totals[j]
                        nhash += 1
                if nhash:
                    hearth_sha256_many(ptrs, lens, nhash, digests)
            k = 0
            for j in range(m):
                if not opened[j] and errs[j] == ENOENT:
                    out.append(None)
                elif errs[j]:
                    out.append(_make_oserror(errs[j], (paths + j * pathcap)[:namelens[j]].decode(
                        "utf-8", "surrogateescape")))
                else:
                    data = datas[j]
                    if sizes[j] >= 0 and totals[j] < sizes[j]:
                        data = data[:totals[j]]
                    good = memcmp(digests + 32 * k, keyptrs[j] + keylens[j] - 32, 32) == 0
                    k += 1
                    if not good and sizes[j] < 0:
                        out.append(_read_again(paths + j * pathcap, namelens[j], keyptrs[j] + keylens[j] - 32))
                    else:
                        out.append((data, good))
                datas[j] = None
            first += m
    finally:
        for j in range(CHUNK):
            if fds[j] >= 0:
                c_close(fds[j])
        PyMem_Free(paths)
        PyMem_Free(scratch)
    return out


cdef object _read_again(const char *path, Py_ssize_t pathlen, const unsigned char *digest):
    """A small block whose one read did not match its digest, read again to its fstat size (read_file): its
    (bytes, whether they match), None if it is gone now, or the OSError."""
    cdef const uint8_t *ptr
    cdef size_t size
    cdef uint8_t again[32]
    text = path[:pathlen].decode("utf-8", "surrogateescape")
    try:
        got = read_file(text)
    except OSError as exc:
        return exc
    if got is None:
        return None
    data = got[0]
    ptr, size = <const uint8_t *>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data)
    with nogil:
        hearth_sha256_many(&ptr, &size, 1, again)
    return data, memcmp(again, digest, 32) == 0


def read_file(path):
    """(bytes, (inode, size, mtime in ns)) of the file at path, or None if there is none (ENOENT). Other
    errors raise OSError, as os.open/os.read would. A file that shrinks while it is read gives what was there."""
    cdef bytes raw = PyUnicode_EncodeFSDefault(path) if isinstance(path, str) else bytes(path)
    cdef const char *cpath = PyBytes_AS_STRING(raw)
    cdef int fd, err = 0, rc
    cdef struct_stat st
    cdef ssize_t got
    cdef long long total = 0
    cdef char *buf
    with nogil:
        fd = c_open(cpath, O_RDONLY | O_CLOEXEC)
        if fd < 0:
            err = errno
    if fd < 0:
        if err == ENOENT:
            return None
        _oserror(err, path)
    try:
        with nogil:
            rc = c_fstat(fd, &st)
            if rc < 0:
                err = errno
        if rc < 0:
            _oserror(err, path)
        data = PyBytes_FromStringAndSize(NULL, st.st_size)
        buf = PyBytes_AS_STRING(data)
        while total < st.st_size:
            with nogil:
                got = c_read(fd, buf + total, st.st_size - total)
                if got < 0:
                    err = errno
            if got < 0:
                if err == EINTR:
                    continue
                _oserror(err, path)
            if got == 0:
                break
            total += got
        if total < st.st_size:
            data = data[:total]
        return data, (st.st_ino, st.st_size, st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec)
    finally:
        with nogil:
            c_close(fd)
