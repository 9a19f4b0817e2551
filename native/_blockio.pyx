"""Block files and their names: what serving a block costs besides hashing it.

A block read is an open, an fstat, a read and a close; a block's file name is the base32 of its CID. In
Python those are ~7 and ~3 µs of interpreter work for a 1 KiB block, more than the syscalls themselves; here
they are a fraction of that, with the GIL released around every syscall (a slow card does not stop the other
threads).

Reference: edge/kernels/ref_blockio.py (same functions, same results, same errors).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE

cdef extern from "Python.h":
    bytes PyUnicode_EncodeFSDefault(object text)
from libc.errno cimport EINTR, ENOENT, errno
from libc.stdint cimport uint64_t

cdef extern from "<fcntl.h>" nogil:
    int c_open "open"(const char *path, int flags)
    int O_RDONLY
    int O_CLOEXEC

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


def b32lower(bytes data not None):
    """RFC 4648 base32 of data, lower case, unpadded: base64.b32encode(data).rstrip(b"=").lower().decode()."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t size = (8 * n + 4) // 5
    cdef const unsigned char *src = <const unsigned char *>PyBytes_AS_STRING(data)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, size)
    cdef char *dst = PyBytes_AS_STRING(out)
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
    return out.decode("ascii")


cdef _oserror(int err, path):
    import os
    raise OSError(err, os.strerror(err), path)


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
