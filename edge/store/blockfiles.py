"""Blocks as files: one file per block, written atomically and durably, read back and checked.

Layout under the store root (defined here once: `path`, and `read_many` hands it to the native kernel):
blocks/<the digest's first FANOUT_BYTES bytes, hex>/<NAME_PREFIX><base32 of the binary CIDv1>, the file name
being the CIDv1's text (the catalog's key). A write goes to a private
temporary directory, is made durable, renamed into place, and the rename is made durable. A batch does each
step for all its blocks before the next. On Linux "made durable" is one syncfs(2) for the whole batch (one
device flush instead of one per file and per directory: 4,096 fdatasync calls cost this machine's virtual disk
8 s a GiB); elsewhere it is fdatasync of each file and fsync of each directory. Writers at once share flushes:
one that needs its writes durable waits for a syncfs begun after they were done, and starts one only if none
is pending, so the two batches an add writes side by side (or a fetch beside a neighbour's Put) cost one
flush where they meet, not two.
"""

import ctypes
import ctypes.util
import errno
import fcntl
import os
import itertools
import shutil
import tempfile
import threading
import uuid
import weakref

from edge.atomic import fsync_dir
from edge.kernels import b32lower, read_blocks, read_file
from edge.ipld.cid import CID, cid_from_bytes
from edge.store.errors import StoreError, StoreFull

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
FANOUT_BYTES = 1   # a block's directory: this many bytes of its digest, in hex (256 directories)
NAME_PREFIX = "b"  # a block's file name: this prefix (multibase's for base32) and the base32 of its binary
                   # CIDv1, lower case, unpadded: its CIDv1 text


def _load_syncfs():
    """Linux's syncfs(2): one flush makes every write on the file system durable (files, renames, directories)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]

    def syncfs(fd: int) -> None:
        if fn(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    return syncfs


_syncfs = None if os.environ.get("HEARTH_NO_SYNCFS") else _load_syncfs()


def file_identity(st: os.stat_result) -> tuple:
    """What tells one block file from another at the same path (a removed and re-written one, say)."""
    return st.st_ino, st.st_size, st.st_mtime_ns


class BlockFiles:
    def __init__(self, root: str):
        self.root = root
        self.blocks_dir = os.path.join(root, "blocks")
        self.tmp_root = os.path.join(root, "tmp")
        self.quarantine_dir = os.path.join(root, "quarantine")
        for d in (self.blocks_dir, self.tmp_root, self.quarantine_dir):
            os.makedirs(d, exist_ok=True)
        self._tmp = None
        self._tmp_lock_fd = None
        self._tmp_guard = threading.Lock()
        self._names = itertools.count()   # temporary names, unique across concurrent batches
        self._known_dirs: set[str] = set()
        self._flushes = threading.Condition()
        self._flush_started = 0     # syncfs calls begun ...
        self._flush_done = 0        # ... and the last one that succeeded
        self._flushing = False
        # blocks_dir held open for the life of this object, so read_many opens each file relative to it (opening
        # blocks_dir for each read was 1.7% of a serving agent's CPU). Closed when the object goes, not by close():
        # a reader in another thread may still be using it then, and a reused descriptor number would point its
        # opens at another directory.
        try:
            self._dir_fd = os.open(self.blocks_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            self._dir_fd = -1
        else:
            weakref.finalize(self, os.close, self._dir_fd)

    # paths ---------------------------------------------------------------------------------------------------

    def path(self, cid: CID) -> str:
        return self.key_path(cid.v1_bytes())

    def key_path(self, key: bytes) -> str:
        """The path of the block whose binary CIDv1 is key (CID.v1_bytes): the layout, written here only."""
        # sha2-256 (nearly every block): the digest is the key's last 32 bytes
        digest = key[4:] if len(key) == 36 and key[2:4] == b"\x12\x20" else cid_from_bytes(key).digest
        return f"{self.blocks_dir}/{digest[:FANOUT_BYTES].hex()}/{NAME_PREFIX}{b32lower(key)}"

    # temporary area ----------------------------------------------------------------------------------------------

    def _tmpdir(self) -> str:
        """This process's private temporary directory, held by a lock so a cleaner knows it is alive."""
        with self._tmp_guard:
            if self._tmp is None:
                path = os.path.join(self.tmp_root, uuid.uuid4().hex)
                os.mkdir(path)
                fd = os.open(os.path.join(path, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._tmp, self._tmp_lock_fd = path, fd
            return self._tmp

    def scratch_dir(self, prefix: str) -> str:
        """A new directory in this process's temporary area, for work that becomes blocks later."""
        return tempfile.mkdtemp(prefix=prefix, dir=self._tmpdir())

    def clean_stale_tmp(self) -> int:
        """Remove temporary directories left by processes that died (their lock is free); returns how many."""
        removed = 0
        for name in os.listdir(self.tmp_root):
            path = os.path.join(self.tmp_root, name)
            if path == self._tmp:
                continue
            try:
                fd = os.open(os.path.join(path, ".lock"), os.O_RDWR)
            except FileNotFoundError:
                shutil.rmtree(path, ignore_errors=True)   # died before taking its lock
                removed += 1
                continue
            except NotADirectoryError:
                os.unlink(path)
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            finally:
                os.close(fd)
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
        return removed

    def close(self):
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            os.close(self._tmp_lock_fd)
            self._tmp = self._tmp_lock_fd = None

    # writing -----------------------------------------------------------------------------------------------------

    def write_many(self, blocks) -> None:
        """Make each (CID, bytes) durable at its path: write all, make them durable, rename all, make the renames
        durable. One file is open at a time (with syncfs a file is closed as soon as it is written).

        On a full disk, removes what it wrote to the temporary area and raises StoreFull; blocks already
        renamed into place are complete and valid (the catalog simply does not list them yet).
        """
        tmpdir = self._tmpdir()
        staged = []   # (temporary path, CID)
        try:
            for cid, data in blocks:
                tmp = os.path.join(tmpdir, str(next(self._names)))
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
                staged.append((tmp, cid))
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    if _syncfs is None:
                        os.fdatasync(fd)
                finally:
                    os.close(fd)
            if _syncfs is not None and staged:
                self._syncfs()
            new_dirs = set()
            for tmp, cid in staged:
                final = self.path(cid)
                parent = os.path.dirname(final)
                if parent not in self._known_dirs:
                    if not os.path.isdir(parent):
                        os.makedirs(parent, exist_ok=True)
                        new_dirs.add(self.blocks_dir)
                    self._known_dirs.add(parent)
                os.rename(tmp, final)
                new_dirs.add(parent)
            staged = []
            if _syncfs is not None and new_dirs:
                self._syncfs()
            else:
                for d in new_dirs:
                    fsync_dir(d)
        except OSError as exc:
            for tmp, _ in staged:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
            if exc.errno in FULL_ERRNOS:
                raise StoreFull(f"the disk holding {self.root} is full ({exc.strerror}); nothing stored was lost. "
                                "Free space (`hearth gc` removes unpinned blocks) or set a quota below the "
                                "disk's size") from exc
            raise StoreError(f"cannot write blocks under {self.root}: {exc}") from exc

    def _syncfs(self) -> None:
        """Make every write this thread has done durable: by a syncfs begun after now, this one's or another
        writer's (a failed one counts for no one: each of its waiters tries again)."""
        with self._flushes:
            need = self._flush_started + 1   # the flush in progress, if any, may have begun before our writes
            while self._flush_done < need:
                if not self._flushing:
                    self._flushing = True
                    self._flush_started += 1
                    mine = self._flush_started
                    break
                self._flushes.wait()
            else:
                return
        ok = False
        try:
            fd = os.open(self.blocks_dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                _syncfs(fd)
            finally:
                os.close(fd)
            ok = True
        finally:
            with self._flushes:
                self._flushing = False
                if ok:
                    self._flush_done = mine
                self._flushes.notify_all()

    # reading -----------------------------------------------------------------------------------------------------

    @staticmethod
    def read_path(path: str):
        """(bytes, the file's identity: inode, size, mtime) of a block file, or None if there is none."""
        return read_file(path)   # open, fstat, read, close in the native kernel: µs for a small block

    def read_many(self, keys: list[bytes]) -> list:
        """The native kernel's read_blocks over this layout: for each binary sha2-256 CIDv1, (bytes, whether they
        match) or None (no file) or the OSError reading it raised."""
        return read_blocks(self.blocks_dir, keys, FANOUT_BYTES, NAME_PREFIX, self._dir_fd)

    def size(self, cid: CID) -> int | None:
        try:
            return os.stat(self.path(cid)).st_size
        except FileNotFoundError:
            return None

    def remove(self, cid: CID) -> None:
        try:
            os.unlink(self.path(cid))
        except FileNotFoundError:
            pass

    def quarantine(self, cid: CID) -> str | None:
        """Move a bad block's file aside (kept for inspection, never served); returns where it went."""
        src = self.path(cid)
        dest = os.path.join(self.quarantine_dir, f"{cid.to_v1()}.{uuid.uuid4().hex[:8]}")
        try:
            os.rename(src, dest)
        except FileNotFoundError:
            return None
        fsync_dir(self.quarantine_dir)
        fsync_dir(os.path.dirname(src))
        return dest

    def iter_files(self):
        """Yield (CID text, path) for every block file on disk."""
        for shard in sorted(os.listdir(self.blocks_dir)):
            d = os.path.join(self.blocks_dir, shard)
            if not os.path.isdir(d):
                continue
            for name in os.listdir(d):
                yield name, os.path.join(d, name)
