"""The store: block files plus a SQLite (WAL) catalog of blocks, links and pins; pins, GC, quota, verify.

Durability rule: a block's file is durable (fsync, rename, fsync of its directory) before the catalog lists
it, and a pin is committed only after every block under it is listed. So after a crash the catalog never
names a block that is not whole on disk; what a crash can leave is unlisted files (swept by GC) and unpinned
blocks of an interrupted add (also GC's). Writers (every put, and add and import for their whole run) share the
store lock; GC and verify take it alone.

The cache makes room: unpinned blocks (fetched for this node or its viewers, or added with --no-pin) are a
cache. When a write needs room under the quota, or free disk would fall under the reserve, the least recently
used unpinned blocks are evicted, never a block a pin keeps (recursive pins keep their whole DAG, as for GC)
nor one a write or fetch in progress holds (`shared()` and `protect(root)`: blocks added since it began, the
DAG under its root, and blocks it found already here). Only when that is not enough is the write refused.
Eviction keeps the durability rule as GC does: the catalog rows go first (one transaction), then the files,
each unlinked under the catalog's write lock only if no writer has listed it again meanwhile; a writer that
raced an eviction (the `evictions` counter moved) re-checks its files before listing them. A crash between
the two steps leaves unlisted files, which GC sweeps. Holds are in the catalog too (`holds`, by process), so
an add in one process and a fetch in the agent protect their blocks from each other.

Access times for the LRU are kept in memory and written in batches (every ACCESS_SECONDS or ACCESS_BATCH
blocks read, by the catalog's writer thread, and at close), never one write per read: SD cards wear. As with
relatime, a block whose time was written in the last few minutes (cache.ACCESS_COARSE) is not written again.

The catalog (edge/store/catalog.py) has one writer thread per process, which runs every write; readers use
read-only connections of their own. The parts of Store live by responsibility: pins and names (pins.py), the
cache's room, holds and access times (cache.py), GC and verify (maintenance.py); this module holds blocks,
the lock and the whole. Trio code uses the async face (edge/store/service.py), never these blocking methods.
"""
import contextlib
import fcntl
import logging
import os
import threading
import time
import uuid

from edge.errors import DecodeError
from edge.ipld.cid import CID, DAG_PB, IDENTITY, RAW
from edge.ipld.dagpb import MAX_NODE_BYTES, parse_pbnode
from edge.store.blockfiles import BlockFiles
from edge.store.cache import Cache, Memo
from edge.store.catalog import LOCK_WAIT, Catalog, key
from edge.store.errors import BlockNotFound, CorruptBlock, StoreError, StoreLocked
from edge.store.hotcache import HotBlocks
from edge.store.maintenance import Maintenance
from edge.store.pins import Pins

log = logging.getLogger(__name__)

ACCEPTED_CODECS = (RAW, DAG_PB)
ACCESS_SECONDS = 60.0    # access times are written at least this often ...
ACCESS_BATCH = 4096      # ... or once this many blocks were read, whichever comes first


class Store(Pins, Cache, Maintenance):
    """A block store rooted at a directory. Thread-safe; several processes may share it.

    hot_bytes > 0 keeps up to that many bytes of blocks read more than once in memory (edge/store/hotcache.py):
    for the agent, which serves popular blocks again and again; a command that reads once has no use for it."""

    def __init__(self, root: str, *, quota: int | None = None, hot_bytes: int = 0, reserve: int | None = None,
                 quota_source: str = "the configuration", access_seconds: float = ACCESS_SECONDS,
                 access_batch: int = ACCESS_BATCH):
        """quota: a quota from the configuration (hearth.toml, HEARTH_QUOTA, a flag), which wins over the one
        `set_quota` keeps in the catalog; None or 0: the catalog's applies. reserve: free disk to leave (None:
        the smaller of 1 GiB and 5% of the disk; 0: none)."""
        self.root = os.path.abspath(root)
        try:
            os.makedirs(self.root, exist_ok=True)
            self.files = BlockFiles(self.root)
        except OSError as exc:
            raise StoreError(f"cannot use {self.root} as a store: {exc.strerror}") from exc
        self.hot = HotBlocks(hot_bytes, self.files.key_path) if hot_bytes > 0 else None
        self._lock_fd = os.open(os.path.join(self.root, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._lock_depth = 0
        self._lock_mutex = threading.Lock()
        self.memo = Memo(access_batch)
        self._owner = uuid.uuid4().hex      # this Store's rows in holds
        try:
            self.catalog = Catalog(self.root, before_write=self._before_write, pending=self.memo.pending,
                                   idle_seconds=access_seconds)
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._quota_override = quota or None
        self.quota_source = quota_source
        self._reserve = reserve
        self.evicted = {"blocks": 0, "bytes": 0, "runs": 0}
        if self.try_exclusive():
            try:
                self.files.clean_stale_tmp()
            finally:
                self.release()

    # locking ---------------------------------------------------------------------------------------------

    def try_exclusive(self) -> bool:
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def release(self):
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _exclusive(self, what: str, wait: float = LOCK_WAIT):
        deadline = time.monotonic() + wait
        while not self.try_exclusive():
            if time.monotonic() > deadline:
                raise StoreLocked(f"{what} needs the store to itself, and another hearth process is still "
                                  f"adding or importing into {self.root}; try again when it has finished")
            time.sleep(0.05)

    @contextlib.contextmanager
    def _writing(self):
        """The store lock, shared: every writer holds it from its first file until its blocks are listed, so GC
        and verify (which take it alone, in any process) never sweep a file a writer has not listed yet."""
        with self._lock_mutex:
            if self._lock_depth == 0:
                fcntl.flock(self._lock_fd, fcntl.LOCK_SH)
            self._lock_depth += 1
        try:
            yield
        finally:
            with self._lock_mutex:
                self._lock_depth -= 1
                if self._lock_depth == 0:
                    self.release()

    @contextlib.contextmanager
    def shared(self):
        """For writers of many batches (add, import): many may write at once, but not while GC or verify runs.
        What they write meanwhile is held: making room never evicts it (the writer pins it at the end, or leaves
        it to the cache)."""
        with self._writing(), self.protect():
            yield self

    def close(self):
        def last(db):   # only LRU hints and holds are lost if this fails; close goes on
            self._write_access(db)
            db.execute("DELETE FROM holds WHERE owner = ?", (self._owner,))
        try:
            if self.memo.access or self.memo.holds_listed:
                self.catalog.write(last)
        except Exception as exc:   # noqa: BLE001 - see above
            log.warning("could not record access times at close: %s", exc)
        self.catalog.close()
        self.files.close()
        os.close(self._lock_fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # blocks -----------------------------------------------------------------------------------------------------

    def has(self, cid: CID) -> bool:
        if cid.hash_code == IDENTITY:
            return True
        return self.catalog.row("SELECT 1 FROM blocks WHERE cid = ?", (key(cid),)) is not None

    def _present(self, keys, db=None) -> set[str]:
        found = set()
        keys = list(keys)
        with contextlib.nullcontext(db) if db is not None else self.catalog.read() as db:
            for i in range(0, len(keys), 500):
                part = keys[i:i + 500]
                rows = db.execute(f"SELECT cid FROM blocks WHERE cid IN ({','.join('?' * len(part))})", part)
                found.update(r[0] for r in rows)
        return found

    def put_many(self, blocks, *, verify: bool = False) -> int:
        """Store (CID, bytes) blocks not already held; returns the bytes newly stored.

        verify=True checks each block against its CID and its codec first (for anything from outside: a CAR
        file, a peer); a mismatch raises DecodeError and stores nothing of this batch.
        """
        todo = {}
        for cid, data in blocks:
            if cid.hash_code == IDENTITY:
                continue
            if cid.codec not in ACCEPTED_CODECS:
                raise DecodeError(f"block {cid} is {cid.codec_name}; this node stores raw and dag-pb blocks")
            if len(data) > MAX_NODE_BYTES:
                raise DecodeError(f"block {cid} is {len(data):,} bytes, over the {MAX_NODE_BYTES:,}-byte limit")
            if verify and not cid.matches(data):
                raise DecodeError(f"block {cid} does not match its CID (its bytes hash to something else); "
                                  "the source is corrupt or lying, and nothing from it was stored")
            todo.setdefault(key(cid), (cid, data))
        if not todo:
            return 0
        with self._writing():
            return self._put_new(todo)

    def _put_new(self, todo: dict) -> int:
        """put_many's writing part, under the store lock: files first, then the catalog lists them."""
        memo = self.memo
        present = self._present(todo)
        if present and memo.holds:
            with memo.holds_lock:   # an add that finds a block here relies on it: keep it until the add ends
                memo.held_keys.update(present)
        for k in present:
            del todo[k]
        if not todo:
            return 0
        links = []
        for k, (cid, data) in todo.items():
            if cid.codec == DAG_PB:
                node = parse_pbnode(data)   # our own nodes parse; a foreign one that does not is refused
                links.extend((k, key(link.cid)) for link in node.links)
        nbytes = sum(len(data) for _, data in todo.values())
        self.check_room(nbytes, f"{len(todo)} block(s)")
        evictions = self._evictions()
        self.files.write_many(todo.values())
        now = time.time()

        def list_blocks(db):
            if self._evictions(db) != evictions:   # an eviction may have unlinked a file just written: re-check
                gone = [(cid, data) for cid, data in todo.values() if not os.path.exists(self.files.path(cid))]
                if gone:
                    self.files.write_many(gone)
            db.executemany("INSERT OR IGNORE INTO blocks VALUES (?, ?, ?, ?)",
                           [(k, cid.codec, len(data), now) for k, (cid, data) in todo.items()])
            db.executemany("INSERT OR IGNORE INTO links VALUES (?, ?)", links)
        # not durable at once: a listing lost to a power cut leaves a durable, unlisted file (GC's); the pin
        # that follows an add is durable, and so makes this listing durable too
        self.catalog.write(list_blocks, durable=False)   # the transaction also records this writer's hold
        return nbytes

    def put(self, cid: CID, data, *, verify: bool = True) -> int:
        return self.put_many([(cid, data)], verify=verify)

    def get(self, cid: CID) -> bytes:
        """The block's bytes, checked against its CID. CorruptBlock (and quarantine) if they do not match."""
        data = self._read(cid)
        if cid.hash_code != IDENTITY:
            self._touch((cid,), time.time())
        return data

    def _read(self, cid: CID) -> bytes:
        """get without counting as a use for the LRU (verify reads everything once)."""
        if cid.hash_code == IDENTITY:
            return cid.digest
        key = cid.v1_bytes()
        if self.hot is not None:
            data = self.hot.get(key)
            if data is not None:   # checked when it was read, and its file is still the same one
                return data
        got = self.files.read_path(self.files.key_path(key))
        if got is None:
            found = self._missing(cid)
            if isinstance(found, bytes):
                return found
            raise found
        data, identity = got
        if not cid.matches(data):
            raise self._corrupt(cid)
        if self.hot is not None:
            self.hot.offer(key, data, identity)
        return data

    def get_many(self, cids) -> list:
        """For each CID, what get would give: its bytes, or the exception get would raise (returned, not raised).
        The files of sha2-256 blocks are read and checked in one call of the native kernel: serving many small
        blocks costs little more than the syscalls."""
        out: list = [None] * len(cids)
        todo, keys, read = [], [], []   # read: the sha2-256 blocks read (get touches the others)
        hot = self.hot
        for i, cid in enumerate(cids):
            if cid.multihash[:2] != b"\x12\x20":   # identity and the rest: as get does
                try:
                    out[i] = self.get(cid)
                except Exception as exc:   # noqa: BLE001 - handed back to the caller, as get would raise it
                    out[i] = exc
                continue
            key = cid.v1_bytes()
            if hot is not None:
                data = hot.get(key)
                if data is not None:
                    out[i] = data
                    read.append(cid)
                    continue
            todo.append(i)
            keys.append(key)
        for n, (i, got) in enumerate(zip(todo, self.files.read_many(keys))):
            cid = cids[i]
            if got is None:
                out[i] = found = self._missing(cid)
                if isinstance(found, bytes):
                    read.append(cid)
            elif isinstance(got, OSError):
                out[i] = got
            elif not got[1]:
                out[i] = self._corrupt(cid)
            else:
                out[i] = got[0]
                read.append(cid)
                if hot is not None:   # its file's identity is taken only if it is kept (read_blocks does no fstat)
                    hot.offer(keys[n], got[0])
        self._touch(read, time.time())
        return out

    def _missing(self, cid: CID) -> "StoreError | bytes":
        """What to say of a block with no file (struck from the catalog if it was listed), or its bytes if it
        was stored between the read and now: a fetch or an add lists a block only once its file is whole, so a
        block listed now whose file is there is one that arrived meanwhile (common when the cache makes room
        and a fetch brings a block back while a reader waits), not a missing one."""
        if self.has(cid):
            got = self.files.read_path(self.files.path(cid))
            if got is not None:
                return got[0] if cid.matches(got[0]) else self._corrupt(cid)
            self._drop(cid, "missing", None)
            return CorruptBlock(f"block {cid} is listed but its file is gone; it was struck from the catalog. "
                                "Re-add the content or fetch it again", cid)
        return BlockNotFound(f"this node does not hold block {cid}", cid)

    def _corrupt(self, cid: CID) -> StoreError:
        """Quarantine a block whose bytes do not match its CID; what to say of it."""
        where = self.files.quarantine(cid)
        self._drop(cid, "corrupt: bytes do not match the CID", where)
        return CorruptBlock(f"block {cid} on disk is corrupt (its bytes do not hash to its CID); it was moved "
                            f"to {where} and will not be served. Re-add the content or fetch it again; "
                            "`hearth store verify` checks every block", cid)

    def _drop(self, cid: CID, reason: str, where) -> None:
        log.error("block %s: %s%s", cid, reason, f" (moved to {where})" if where else "")
        if self.hot is not None:
            self.hot.drop(cid.v1_bytes())
        k = key(cid)

        def drop(db):
            db.execute("DELETE FROM blocks WHERE cid = ?", (k,))
            db.execute("DELETE FROM links WHERE parent = ?", (k,))
            db.execute("DELETE FROM access WHERE cid = ?", (k,))
            db.execute("INSERT INTO quarantine VALUES (?, ?, ?, ?)", (k, where, reason, time.time()))
        self.catalog.write(drop)

    def scratch_dir(self, prefix: str) -> str:
        """A new private directory inside the store's temporary area (removed at the next open after a crash)."""
        return self.files.scratch_dir(prefix)

    def stat(self, usage: bool = False) -> dict:
        """What the store holds. usage=True adds pinned_bytes and cached_bytes (a walk of every pin's DAG: for
        `hearth store stat`, not for every status request). Blocking (SQLite, statvfs): Trio code awaits the
        async face's stat instead."""
        with self.catalog.read() as db:
            blocks, size = db.execute("SELECT count(*), total(size) FROM blocks").fetchone()
            pins = db.execute("SELECT count(*) FROM pins").fetchone()[0]
            quarantined = db.execute("SELECT count(*) FROM quarantine").fetchone()[0]
        fs = os.statvfs(self.root)
        out = {"path": self.root, "blocks": blocks, "bytes": int(size), "pins": pins, "quota": self.quota,
               "quota_from": self.quota_origin, "reserve": self.reserve, "evicted": dict(self.evicted),
               "quarantined": quarantined, "disk_free": fs.f_bavail * fs.f_frsize,
               "hot": self.hot.stat() if self.hot is not None else None,
               "disk_size": fs.f_blocks * fs.f_frsize}
        if usage:
            out["pinned_bytes"] = self.pinned_bytes()
            out["cached_bytes"] = out["bytes"] - out["pinned_bytes"]
        return out
