"""The store: block files plus a SQLite (WAL) catalog of blocks, links and pins; pins, GC, quota, verify.

Durability rule: a block's file is durable (fsync, rename, fsync of its directory) before the catalog lists
it, and a pin is committed only after every block under it is listed. So after a crash the catalog never
names a block that is not whole on disk; what a crash can leave is unlisted files (swept by GC) and unpinned
blocks of an interrupted add (also GC's). Writers (add, import, pin) share the store lock; GC and verify
take it alone.
"""

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field

from edge.errors import DecodeError
from edge.kernels import read_blocks
from edge.store.blockfiles import BlockFiles
from edge.store.cid import CID, DAG_PB, IDENTITY, RAW, parse_cid
from edge.store.dagpb import MAX_NODE_BYTES, parse_pbnode
from edge.store.errors import BlockNotFound, CorruptBlock, QuotaExceeded, StoreError, StoreFull, StoreLocked
from edge.store.hotcache import HotBlocks

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    cid TEXT PRIMARY KEY, codec INTEGER NOT NULL, size INTEGER NOT NULL, added REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS links (
    parent TEXT NOT NULL, child TEXT NOT NULL, PRIMARY KEY (parent, child)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pins (
    cid TEXT PRIMARY KEY, kind TEXT NOT NULL CHECK (kind IN ('recursive', 'direct')), name TEXT,
    created REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS quarantine (
    cid TEXT NOT NULL, path TEXT, reason TEXT NOT NULL, found REAL NOT NULL);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS names (
    name TEXT PRIMARY KEY, cid TEXT NOT NULL, kind TEXT NOT NULL, updated REAL NOT NULL, meta TEXT) WITHOUT ROWID;
"""
LIVE_SQL = """
WITH RECURSIVE live(cid) AS (
    SELECT cid FROM pins WHERE kind = 'recursive'
    UNION SELECT links.child FROM links JOIN live ON links.parent = live.cid)
SELECT cid FROM live UNION SELECT cid FROM pins WHERE kind = 'direct'
"""
DAG_SQL = """
WITH RECURSIVE dag(cid) AS (VALUES(?) UNION SELECT links.child FROM links JOIN dag ON links.parent = dag.cid)
SELECT dag.cid, blocks.size FROM dag LEFT JOIN blocks ON blocks.cid = dag.cid
"""
ACCEPTED_CODECS = (RAW, DAG_PB)
LOCK_WAIT = 30.0


@dataclass
class VerifyReport:
    checked: int = 0
    bytes: int = 0
    corrupt: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    orphans: int = 0
    damaged_pins: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.corrupt or self.missing or self.damaged_pins)


def _key(cid: CID) -> str:
    return str(cid.to_v1())


def _name_row(row) -> dict:
    name, cid, kind, updated, meta = row
    return {"name": name, "cid": cid, "kind": kind, "updated": updated, "meta": json.loads(meta or "{}")}


def _full(exc: sqlite3.Error) -> bool:
    return "full" in str(exc).lower()


class Store:
    """A block store rooted at a directory. Thread-safe; several processes may share it.

    hot_bytes > 0 keeps up to that many bytes of blocks read more than once in memory (edge/store/hotcache.py):
    for the agent, which serves popular blocks again and again; a command that reads once has no use for it."""

    def __init__(self, root: str, *, quota: int | None = None, hot_bytes: int = 0):
        self.root = os.path.abspath(root)
        self.hot = HotBlocks(hot_bytes) if hot_bytes > 0 else None
        try:
            os.makedirs(self.root, exist_ok=True)
            self.files = BlockFiles(self.root)
        except OSError as exc:
            raise StoreError(f"cannot use {self.root} as a store: {exc.strerror}") from exc
        self._lock_fd = os.open(os.path.join(self.root, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._lock_depth = 0
        self._mutex = threading.RLock()
        try:
            self.db = sqlite3.connect(os.path.join(self.root, "store.db"), timeout=LOCK_WAIT,
                                      isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            # a current catalog is opened without writing: on a full disk reads (`hearth cat`) still work; only
            # creating or upgrading it writes (a change to SCHEMA must raise SCHEMA_VERSION to reach old stores)
            if self.db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                with self._tx():
                    version = self.db.execute("PRAGMA user_version").fetchone()[0]
                    if version > SCHEMA_VERSION:
                        raise StoreError(f"{self.root} was written by a newer Hearth (catalog version {version}); "
                                         "upgrade Hearth to open it")
                    for statement in SCHEMA.split(";"):
                        if statement.strip():
                            self.db.execute(statement)
                    self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"the catalog {self.root}/store.db cannot be opened ({exc}); if the disk is "
                             "full, free space; otherwise restore it from a backup or re-add the content") from exc
        self._quota_override = quota
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
    def shared(self):
        """For writers: many may write at once, but not while GC or verify runs."""
        with self._mutex:
            if self._lock_depth == 0:
                fcntl.flock(self._lock_fd, fcntl.LOCK_SH)
            self._lock_depth += 1
        try:
            yield self
        finally:
            with self._mutex:
                self._lock_depth -= 1
                if self._lock_depth == 0:
                    self.release()

    @contextlib.contextmanager
    def _tx(self):
        """One SQLite write transaction; a full disk at commit becomes StoreFull."""
        with self._mutex:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                if self.db.in_transaction:   # SQLite has already rolled back after some errors (a full disk)
                    self.db.execute("ROLLBACK")
                raise
            try:
                self.db.execute("COMMIT")
            except sqlite3.OperationalError as err:
                if self.db.in_transaction:   # after SQLITE_FULL it is already rolled back: say "full", not
                    self.db.execute("ROLLBACK")   # "cannot rollback - no transaction is active"
                if _full(err):
                    raise StoreFull(f"the disk holding {self.root} is full: the catalog could not record the "
                                    "change, and nothing stored was lost. Free space and try again") from err
                raise StoreError(f"the catalog could not commit: {err}") from err

    def close(self):
        with self._mutex:
            self.files.close()
            self.db.close()
            os.close(self._lock_fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # settings and usage ----------------------------------------------------------------------------------------

    def _setting(self, key, default=None):
        with self._mutex:
            row = self.db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    @property
    def quota(self) -> int | None:
        if self._quota_override is not None:
            return self._quota_override
        return self._setting("quota")

    def set_quota(self, nbytes: int | None) -> None:
        if nbytes is not None and nbytes < 0:
            raise ValueError("a quota is a number of bytes, 0 or more")
        with self._tx() as db:
            if nbytes is None:
                db.execute("DELETE FROM settings WHERE key = 'quota'")
            else:
                db.execute("INSERT OR REPLACE INTO settings VALUES ('quota', ?)", (nbytes,))

    def used(self) -> int:
        with self._mutex:
            return int(self.db.execute("SELECT total(size) FROM blocks").fetchone()[0])

    def check_room(self, nbytes: int, what: str = "this") -> None:
        """Raise QuotaExceeded if nbytes more would pass the quota."""
        quota = self.quota
        if quota is None:
            return
        used = self.used()
        if used + nbytes > quota:
            raise QuotaExceeded(f"storing {what} needs {nbytes:,} bytes, but the store holds {used:,} of its "
                                f"{quota:,}-byte quota; remove pins and run `hearth gc`, or raise the quota "
                                "with `hearth store quota SIZE`")

    # blocks -----------------------------------------------------------------------------------------------------

    def has(self, cid: CID) -> bool:
        if cid.hash_code == IDENTITY:
            return True
        with self._mutex:
            return self.db.execute("SELECT 1 FROM blocks WHERE cid = ?", (_key(cid),)).fetchone() is not None

    def _present(self, keys) -> set[str]:
        found = set()
        keys = list(keys)
        with self._mutex:
            for i in range(0, len(keys), 500):
                part = keys[i:i + 500]
                rows = self.db.execute(f"SELECT cid FROM blocks WHERE cid IN ({','.join('?' * len(part))})", part)
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
            todo.setdefault(_key(cid), (cid, data))
        if not todo:
            return 0
        for key in self._present(todo):
            del todo[key]
        if not todo:
            return 0
        links = []
        for key, (cid, data) in todo.items():
            if cid.codec == DAG_PB:
                node = parse_pbnode(data)   # our own nodes parse; a foreign one that does not is refused
                links.extend((key, _key(link.cid)) for link in node.links)
        nbytes = sum(len(data) for _, data in todo.values())
        self.check_room(nbytes, f"{len(todo)} block(s)")
        self.files.write_many(todo.values())
        now = time.time()
        with self._tx() as db:
            db.executemany("INSERT OR IGNORE INTO blocks VALUES (?, ?, ?, ?)",
                           [(key, cid.codec, len(data), now) for key, (cid, data) in todo.items()])
            db.executemany("INSERT OR IGNORE INTO links VALUES (?, ?)", links)
        return nbytes

    def put(self, cid: CID, data, *, verify: bool = True) -> int:
        return self.put_many([(cid, data)], verify=verify)

    def get(self, cid: CID) -> bytes:
        """The block's bytes, checked against its CID. CorruptBlock (and quarantine) if they do not match."""
        if cid.hash_code == IDENTITY:
            return cid.digest
        path = self.files.path(cid)
        if self.hot is not None:
            data = self.hot.get(path)
            if data is not None:   # checked when it was read, and its file is still the same one
                return data
        got = self.files.read_path(path)
        if got is None:
            raise self._missing(cid)
        data, identity = got
        if not cid.matches(data):
            raise self._corrupt(cid)
        if self.hot is not None:
            self.hot.offer(path, data, identity)
        return data

    def get_many(self, cids) -> list:
        """For each CID, what get would give: its bytes, or the exception get would raise (returned, not raised).
        The files of sha2-256 blocks are read and checked in one call of the native kernel: serving many small
        blocks costs little more than the syscalls."""
        out: list = [None] * len(cids)
        todo, keys, paths = [], [], []
        for i, cid in enumerate(cids):
            if cid.multihash[:2] != b"\x12\x20":   # identity and the rest: as get does
                try:
                    out[i] = self.get(cid)
                except Exception as exc:   # noqa: BLE001 - handed back to the caller, as get would raise it
                    out[i] = exc
                continue
            if self.hot is not None:
                path = self.files.path(cid)
                data = self.hot.get(path)
                if data is not None:
                    out[i] = data
                    continue
                paths.append(path)
            todo.append(i)
            keys.append(bytes(cid.to_v1()))
        for n, (i, got) in enumerate(zip(todo, read_blocks(self.files.blocks_dir, keys))):
            cid = cids[i]
            if got is None:
                out[i] = self._missing(cid)
            elif isinstance(got, OSError):
                out[i] = got
            elif not got[2]:
                out[i] = self._corrupt(cid)
            else:
                out[i] = got[0]
                if self.hot is not None:
                    self.hot.offer(paths[n], got[0], got[1])
        return out

    def _missing(self, cid: CID) -> StoreError:
        """What to say of a block with no file (struck from the catalog if it was listed)."""
        if self.has(cid):
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
            self.hot.drop(self.files.path(cid))
        key = _key(cid)
        with self._tx() as db:
            db.execute("DELETE FROM blocks WHERE cid = ?", (key,))
            db.execute("DELETE FROM links WHERE parent = ?", (key,))
            db.execute("INSERT INTO quarantine VALUES (?, ?, ?, ?)", (key, where, reason, time.time()))

    # pins -------------------------------------------------------------------------------------------------------

    def dag(self, cid: CID) -> tuple[int, list[str]]:
        """(bytes held, CIDs missing) for the DAG under cid, as far as the catalog's links reach."""
        with self._mutex:
            rows = self.db.execute(DAG_SQL, (_key(cid),)).fetchall()
        held = sum(size for _, size in rows if size is not None)
        missing = [c for c, size in rows if size is None and parse_cid(c).hash_code != IDENTITY]
        return held, missing

    def pin(self, cid: CID, *, recursive: bool = True, name: str | None = None) -> None:
        """Keep cid (and, recursively, everything under it). StoreError if any block is missing."""
        if recursive:
            _, missing = self.dag(cid)
            if missing:
                raise StoreError(f"cannot pin {cid}: {len(missing)} block(s) under it are not on this node "
                                 f"(first: {missing[0]}); add or import the whole content first")
        elif not self.has(cid):
            raise StoreError(f"cannot pin {cid}: this node does not hold it")
        kind = "recursive" if recursive else "direct"
        with self._tx() as db:
            row = db.execute("SELECT kind FROM pins WHERE cid = ?", (_key(cid),)).fetchone()
            if row and row[0] == "recursive" and kind == "direct":
                return   # a recursive pin already keeps it
            db.execute("INSERT OR REPLACE INTO pins VALUES (?, ?, ?, ?)", (_key(cid), kind, name, time.time()))

    def unpin(self, cid: CID) -> None:
        with self._tx() as db:
            if db.execute("DELETE FROM pins WHERE cid = ?", (_key(cid),)).rowcount == 0:
                raise StoreError(f"{cid} is not pinned")

    def unpin_named(self, name: str, keep: set[str] | None = None) -> int:
        """Drop every pin made under name (except the CIDs in keep); how many were dropped."""
        keep = keep or set()
        with self._tx() as db:
            rows = [r[0] for r in db.execute("SELECT cid FROM pins WHERE name = ?", (name,)) if r[0] not in keep]
            db.executemany("DELETE FROM pins WHERE cid = ? AND name = ?", [(c, name) for c in rows])
        return len(rows)

    def pins(self) -> list[dict]:
        with self._mutex:
            rows = self.db.execute("SELECT cid, kind, name, created FROM pins ORDER BY created").fetchall()
        return [{"cid": c, "kind": k, "name": n, "created": t} for c, k, n, t in rows]

    def is_pinned(self, cid: CID) -> bool:
        with self._mutex:
            return self.db.execute("SELECT 1 FROM pins WHERE cid = ?", (_key(cid),)).fetchone() is not None

    # names: a stable name for a root that changes (a stream and its current manifest) ---------------------

    def set_name(self, name: str, cid: CID, kind: str, meta: dict | None = None, *, pin: bool = True) -> None:
        """Point name at cid (pinned recursively); the root it pointed at before is unpinned unless another
        name or a pin of the user's keeps it."""
        if pin:
            self.pin(cid, name=f"{kind} {name}")
        with self._tx() as db:
            old = db.execute("SELECT cid FROM names WHERE name = ?", (name,)).fetchone()
            db.execute("INSERT OR REPLACE INTO names VALUES (?, ?, ?, ?, ?)",
                       (name, _key(cid), kind, time.time(), json.dumps(meta or {})))
            if old and old[0] != _key(cid):
                others = db.execute("SELECT 1 FROM names WHERE cid = ?", (old[0],)).fetchone()
                if not others:
                    db.execute("DELETE FROM pins WHERE cid = ? AND name = ?", (old[0], f"{kind} {name}"))

    def name(self, name: str) -> dict | None:
        with self._mutex:
            row = self.db.execute("SELECT name, cid, kind, updated, meta FROM names WHERE name = ?",
                                  (name,)).fetchone()
        return _name_row(row) if row else None

    def names(self, kind: str | None = None) -> list[dict]:
        with self._mutex:
            rows = self.db.execute("SELECT name, cid, kind, updated, meta FROM names"
                                   + (" WHERE kind = ?" if kind else "") + " ORDER BY name",
                                   (kind,) if kind else ()).fetchall()
        return [_name_row(r) for r in rows]

    def drop_name(self, name: str) -> None:
        """Forget name and unpin its root (GC may then take the blocks)."""
        with self._tx() as db:
            row = db.execute("SELECT cid, kind FROM names WHERE name = ?", (name,)).fetchone()
            if not row:
                raise StoreError(f"no stream or name {name!r} here; `hearth media ls` lists them")
            db.execute("DELETE FROM names WHERE name = ?", (name,))
            db.execute("DELETE FROM pins WHERE cid = ? AND name = ?", (row[0], f"{row[1]} {name}"))

    def scratch_dir(self, prefix: str) -> str:
        """A new private directory inside the store's temporary area (removed at the next open after a crash)."""
        return self.files.scratch_dir(prefix)

    # maintenance ------------------------------------------------------------------------------------------------

    def gc(self) -> tuple[int, int]:
        """Remove every block no pin keeps, and stray files; returns (blocks removed, bytes freed)."""
        self._exclusive("gc")
        try:
            with self._tx() as db:
                db.execute(f"CREATE TEMP TABLE IF NOT EXISTS live_now AS {LIVE_SQL}")
                db.execute("DELETE FROM temp.live_now")
                db.execute(f"INSERT INTO temp.live_now {LIVE_SQL}")
                dead = db.execute("SELECT cid, size FROM blocks WHERE cid NOT IN (SELECT cid FROM temp.live_now)"
                                  ).fetchall()
                db.execute("DELETE FROM blocks WHERE cid NOT IN (SELECT cid FROM temp.live_now)")
                db.execute("DELETE FROM links WHERE parent NOT IN (SELECT cid FROM blocks)")
                db.execute("DROP TABLE temp.live_now")
            for key, _ in dead:
                self.files.remove(parse_cid(key))
                if self.hot is not None:
                    self.hot.drop(self.files.path(parse_cid(key)))
            freed = sum(size for _, size in dead)
            removed = len(dead)
            listed = None
            for name, path in self.files.iter_files():   # files no catalog row names: a crash's leftovers
                if listed is None:
                    with self._mutex:
                        listed = {r[0] for r in self.db.execute("SELECT cid FROM blocks")}
                if name not in listed:
                    size = os.path.getsize(path)
                    os.unlink(path)
                    removed += 1
                    freed += size
            self.files.clean_stale_tmp()
            return removed, freed
        finally:
            self.release()

    def verify(self, progress=None) -> VerifyReport:
        """Re-hash every block; quarantine and report the corrupt ones; report pins whose DAG is incomplete."""
        self._exclusive("verify")
        try:
            report = VerifyReport()
            with self._mutex:
                rows = self.db.execute("SELECT cid, size FROM blocks").fetchall()
            listed = set()
            for key, size in rows:
                listed.add(key)
                cid = parse_cid(key)
                try:
                    self.get(cid)
                    report.checked += 1
                    report.bytes += size
                except CorruptBlock as exc:
                    (report.missing if "gone" in str(exc) else report.corrupt).append(key)
                if progress:
                    progress(size)
            report.orphans = sum(1 for name, _ in self.files.iter_files() if name not in listed)
            for pin in self.pins():
                if pin["kind"] == "recursive":
                    _, missing = self.dag(parse_cid(pin["cid"]))
                else:
                    missing = [] if self.has(parse_cid(pin["cid"])) else [pin["cid"]]
                if missing:
                    report.damaged_pins.append(pin["cid"])
            return report
        finally:
            self.release()

    def stat(self) -> dict:
        with self._mutex:
            blocks, size = self.db.execute("SELECT count(*), total(size) FROM blocks").fetchone()
            pins = self.db.execute("SELECT count(*) FROM pins").fetchone()[0]
            quarantined = self.db.execute("SELECT count(*) FROM quarantine").fetchone()[0]
        fs = os.statvfs(self.root)
        return {"path": self.root, "blocks": blocks, "bytes": int(size), "pins": pins, "quota": self.quota,
                "quarantined": quarantined, "disk_free": fs.f_bavail * fs.f_frsize,
                "hot": self.hot.stat() if self.hot is not None else None,
                "disk_size": fs.f_blocks * fs.f_frsize}
