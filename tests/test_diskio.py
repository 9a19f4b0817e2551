"""Images written around the page cache and read back from the medium (edge/provisioning/diskio.py): on ext4,
where O_DIRECT is allowed; on ramfs, which refuses it (the same bytes through the cache); and on a loop device,
where a read-back through the cache is shown to return what the disk no longer holds and the medium's read does
not."""

import fcntl
import hashlib
import io
import os
import random
import shutil
import subprocess

import pytest

from edge.provisioning.diskio import ALIGN, CHUNK, set_direct, sha256_of_medium, write_stream

from tests.conftest import mounted

SIZES = [0, 1, ALIGN - 1, ALIGN, ALIGN + 1, CHUNK - 1, CHUNK, CHUNK + ALIGN, 2 * CHUNK + 3 * ALIGN + 7]


class Trickle(io.RawIOBase):
    """A pipe's way of reading: at most `step` bytes a call (zstd's stdout gives what it has)."""

    def __init__(self, data: bytes, step: int):
        self.data, self.pos, self.step = data, 0, step

    def readable(self):
        return True

    def readinto(self, b):
        n = min(len(b), self.step, len(self.data) - self.pos)
        b[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n


@pytest.fixture
def ramfs(tmp_path):
    """A ramfs mount: a file system that refuses O_DIRECT."""
    yield from mounted(tmp_path / "ramfs", "ramfs")


def _roundtrip(path, data, step):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        h = hashlib.sha256()
        assert write_stream(Trickle(data, step), fd, h) == len(data)
        digest, n = sha256_of_medium(fd, len(data))
        # asked for more than there is, the count says how much there was
        longer = sha256_of_medium(fd, len(data) + 3 * ALIGN)
    finally:
        os.close(fd)
    want = hashlib.sha256(data).hexdigest()
    assert h.hexdigest() == want and (digest, n) == (want, len(data)) and longer == (want, len(data))
    with open(path, "rb") as f:
        assert f.read() == data


@pytest.mark.parametrize("size", SIZES)
def test_direct_writes_and_reads_every_size_on_ext4(tmp_path, size):
    data = random.Random(size).randbytes(size)
    probe = os.open(tmp_path / "probe", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if not set_direct(probe, True):
            pytest.skip(f"{tmp_path}'s file system refuses O_DIRECT (the cache path is tested on ramfs)")
    finally:
        os.close(probe)
    for step in (CHUNK, 65536, 4093):    # whole chunks, a pipe's 64 KiB, pieces that are not whole blocks
        _roundtrip(tmp_path / "slot", data, step)


@pytest.mark.parametrize("size", [0, ALIGN - 1, CHUNK + ALIGN, 2 * CHUNK + 3 * ALIGN + 7])
def test_a_file_system_that_refuses_o_direct_gets_the_same_bytes_through_the_cache(ramfs, size):
    fd = os.open(ramfs / "probe", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        assert set_direct(fd, True) is False         # what makes this case
        assert fcntl.fcntl(fd, fcntl.F_GETFL) == flags   # and the descriptor is left as it was
    finally:
        os.close(fd)
    _roundtrip(ramfs / "slot", random.Random(size).randbytes(size), 65536)


def test_the_read_back_sees_the_disk_where_the_cache_still_holds_what_was_written(tmp_path):
    """A loop device's own page cache keeps the bytes written through it; its backing file (the "disk") is then
    changed behind it, as a card that dropped or mangled the writes would be. A read through the cache returns
    the old bytes; sha256_of_medium returns what the disk holds."""
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        pytest.skip("loop devices need root and losetup")
    backing = tmp_path / "disk.img"
    size = 3 * CHUNK
    backing.write_bytes(b"\0" * size)
    r = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"no loop device here: {r.stderr.strip()}")
    loop = r.stdout.strip()
    try:
        data = random.Random(5).randbytes(size)
        fd = os.open(loop, os.O_RDWR)
        try:
            os.write(fd, data)               # through the loop device's page cache, which keeps it
            os.fsync(fd)
            with open(backing, "r+b") as disk:   # the disk changes behind the cache
                disk.seek(CHUNK + 12345)
                disk.write(b"\xff" * 100)
                disk.flush()
                os.fsync(disk.fileno())
            held = os.pread(fd, size, 0)
            assert held == data              # the cache still says "as written": a read-back through it proves nothing
            damaged = bytearray(data)
            damaged[CHUNK + 12345:CHUNK + 12445] = b"\xff" * 100
            assert sha256_of_medium(fd, size) == (hashlib.sha256(damaged).hexdigest(), size)
        finally:
            os.close(fd)
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)
