"""The store: block files plus a SQLite (WAL) catalog of blocks, links and pins; pins, GC, quota, verify.

Durability rule: a block's file is durable (fsync, rename, fsync of its directory) before the catalog lists
it, and a pin is committed only after every block under it is listed. So after a crash the catalog never
names a block that is not whole on disk; what a crash can leave is unlisted files (swept by GC) and unpinned
blocks of an interrupted add (also GC's). Writers (add, import, pin) share the store lock; GC and verify
take it alone.

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
blocks read, by a thread of the store's own, and at close), never one write per read: SD cards wear.
"""

import contextlib
import fcntl
import json
import logging
import os
import re
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field

from edge.errors import DecodeError
from edge.kernels import read_blocks
from edge.store.blockfiles import BlockFiles
from edge.ipld.cid import CID, DAG_PB, IDENTITY, RAW, parse_cid
from edge.ipld.dagpb import MAX_NODE_BYTES, parse_pbnode
from edge.store.errors import BlockNotFound, CorruptBlock, QuotaExceeded, StoreError, StoreFull, StoreLocked
from edge.store.hotcache import HotBlocks
from edge.units import human

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
CREATE TABLE IF NOT EXISTS access (cid TEXT PRIMARY KEY, at REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS holds (
    owner TEXT NOT NULL, pid INTEGER NOT NULL, since REAL NOT NULL, root TEXT);
"""
SCHEMA_TABLES = frozenset(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", SCHEMA))
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
ACCESS_SECONDS = 60.0    # access times are written at least this often ...
ACCESS_BATCH = 4096      # ... or once this many blocks were read, whichever comes first
EVICT_SLACK = 64 << 20   # an eviction frees up to this much more than asked (at most a 16th of the quota), so
                         # a fetch at the quota does not evict (and scan the catalog) for every batch
RESERVE_MAX = 1 << 30    # disk_reserve auto: the smaller of 1 GiB ...
RESERVE_SHARE = 0.05     # ... and 5% of the disk


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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Hold:
    """A write or fetch in progress: blocks added since it began (and the DAG under its root) are not evicted."""

    def __init__(self, root: str | None):
        self.since = time.time()
        self.root = root


class Store:
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
            # creating or upgrading it writes. Tables added since version 1 (access, holds) are ones an older
            # Hearth ignores, so they keep the version (a rollback to the other A/B slot still opens the
            # store) and are found missing by name instead
            have = {row[0] for row in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if (self.db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION
                    or not SCHEMA_TABLES <= have):
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
        self._quota_override = quota or None
        self.quota_source = quota_source
        self._reserve = reserve
        self._access: dict = {}             # CID -> time read, not yet written
        self._access_lock = threading.Lock()
        self._access_seconds, self._access_batch = access_seconds, access_batch
        self._access_wake = threading.Event()
        self._flusher: threading.Thread | None = None
        self._closing = False
        self._owner = uuid.uuid4().hex      # this Store's rows in holds
        self._holds: dict[int, _Hold] = {}
        self._holds_lock = threading.Lock()   # never held while waiting for anything: protect() is Trio-safe
        self._held_keys: set[str] = set()   # blocks found here by a write under a hold (their adds need them)
        self._holds_written = False         # the catalog's holds rows are this Store's current ones
        self._holds_listed = False          # this Store has rows in holds
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
    def shared(self):
        """For writers: many may write at once, but not while GC or verify runs. What they write meanwhile is
        held: making room never evicts it (the writer pins it at the end, or leaves it to the cache)."""
        with self._mutex:
            if self._lock_depth == 0:
                fcntl.flock(self._lock_fd, fcntl.LOCK_SH)
            self._lock_depth += 1
        try:
            with self.protect():
                yield self
        finally:
            with self._mutex:
                self._lock_depth -= 1
                if self._lock_depth == 0:
                    self.release()

    @contextlib.contextmanager
    def protect(self, root: CID | None = None):
        """While inside, making room evicts nothing this hold protects: blocks added since it began, blocks a
        write found already here, and (given a root) every block under root as far as the catalog's links
        reach. A fetch enters it with its root. Cheap, and never waits for the catalog (the next write, or the
        store's own thread, records it there for other processes), so a Trio task may enter it."""
        hold = _Hold(_key(root) if root is not None else None)
        with self._holds_lock:
            self._holds[id(hold)] = hold
            self._holds_written = False
        if root is not None:
            # a fetch may rely on blocks already here long before it writes: other processes learn of it now.
            # A write's hold is recorded by its first put_many, in the same transaction (no extra write).
            self._write_soon()
        try:
            yield hold
        finally:
            with self._holds_lock:
                del self._holds[id(hold)]
                self._holds_written = False
                if not self._holds:
                    self._held_keys.clear()
            if self._holds_listed:
                self._write_soon()   # a hold left listed would keep other processes from making room

    def _write_holds(self, db) -> None:
        """Record this Store's holds in the catalog (inside a write transaction) for other processes."""
        with self._holds_lock:
            if self._holds_written:
                return
            rows = [(self._owner, os.getpid(), h.since, h.root) for h in self._holds.values()]
            self._holds_written = True
        db.execute("DELETE FROM holds WHERE owner = ?", (self._owner,))
        db.executemany("INSERT INTO holds VALUES (?, ?, ?, ?)", rows)
        self._holds_listed = bool(rows)

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
        self._closing = True
        if self._flusher is not None:
            self._access_wake.set()
            self._flusher.join()
        with self._mutex:
            try:
                if self._access or self._holds_listed:
                    with self._tx() as db:
                        self._write_access(db)
                        db.execute("DELETE FROM holds WHERE owner = ?", (self._owner,))
            except (StoreError, sqlite3.Error) as exc:   # only LRU hints and holds are lost; close goes on
                log.warning("could not record access times at close: %s", exc)
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
        """The one quota: the configuration's if it sets one, else the one `hearth store quota` keeps here."""
        if self._quota_override is not None:
            return self._quota_override
        return self._setting("quota")

    @property
    def quota_origin(self) -> str | None:
        """Where the quota in force comes from: the configuration's source, `hearth store quota`, or None."""
        if self._quota_override is not None:
            return self.quota_source
        return "`hearth store quota`" if self._setting("quota") is not None else None

    @property
    def quota_from_config(self) -> bool:
        """Whether the configuration sets the quota (and so overrides the catalog's)."""
        return self._quota_override is not None

    def set_quota(self, nbytes: int | None) -> None:
        """The catalog's quota (`hearth store quota`); a quota from the configuration overrides it."""
        if nbytes is not None and nbytes < 0:
            raise ValueError("a quota is a number of bytes, 0 or more")
        with self._tx() as db:
            if nbytes is None:
                db.execute("DELETE FROM settings WHERE key = 'quota'")
            else:
                db.execute("INSERT OR REPLACE INTO settings VALUES ('quota', ?)", (nbytes,))

    @property
    def reserve(self) -> int:
        """Free disk to leave: disk_reserve, or the smaller of 1 GiB and 5% of the disk."""
        if self._reserve is not None:
            return self._reserve
        fs = os.statvfs(self.root)
        return min(RESERVE_MAX, int(fs.f_blocks * fs.f_frsize * RESERVE_SHARE))

    def disk_free(self) -> int:
        fs = os.statvfs(self.root)
        return fs.f_bavail * fs.f_frsize

    def used(self) -> int:
        with self._mutex:
            return int(self.db.execute("SELECT total(size) FROM blocks").fetchone()[0])

    def pinned_bytes(self) -> int:
        """Bytes of the blocks pins keep (recursive pins: their whole DAG)."""
        with self._mutex:
            return int(self.db.execute(f"SELECT total(size) FROM blocks WHERE cid IN ({LIVE_SQL})").fetchone()[0])

    def check_room(self, nbytes: int, what: str = "this") -> None:
        """Make room for nbytes more: under the quota, and leaving the disk reserve free. Evicts the least
        recently used unpinned blocks no hold protects; QuotaExceeded (or StoreFull, for the reserve) when
        even that is not enough, evicting nothing."""
        quota = self.quota
        over = self.used() + nbytes - quota if quota is not None else 0
        reserve = self.reserve
        free = self.disk_free() if reserve else 0
        short = reserve - (free - nbytes) if reserve else 0
        need = max(over, short)
        if need <= 0:
            return
        slack = min(EVICT_SLACK, quota // 16) if quota else EVICT_SLACK
        freed, evictable = self._evict(need, need + slack)
        if freed >= need:
            return
        pinned = self.pinned_bytes()
        advice = "unpin content you no longer need (`hearth pin ls`, `hearth pin rm CID`)"
        if over > evictable:
            held = max(0, self.used() - pinned - evictable)
            how = self._quota_how()
            raise QuotaExceeded(
                f"storing {what} needs {human(nbytes)} more, but the quota of {human(quota)} (from "
                f"{self.quota_origin}) is full: pins keep {human(pinned)}"
                + (f" and writes or fetches in progress hold {human(held)}" if held else "")
                + f", and no cached block is left to make room. {advice[0].upper() + advice[1:]}, or raise "
                f"{how}")
        raise StoreFull(
            f"the disk holding {self.root} is nearly full: storing {what} would leave {human(max(0, free - nbytes))} "
            f"free, under the {human(reserve)} it keeps free (disk_reserve), and no cached block is left to make "
            f"room (pins keep {human(pinned)}); nothing stored was lost. Free space on that disk, {advice}, or "
            "lower disk_reserve in hearth.toml")

    def _quota_how(self) -> str:
        """How to raise the quota in force: where it was set."""
        if self._quota_override is not None:
            return f"`quota` in {self.quota_source}"
        return "the quota with `hearth store quota SIZE`"

    def check_fits(self, nbytes: int, what: str = "this") -> None:
        """Before a large write: QuotaExceeded at once if nbytes is more than the whole quota. Anything less is
        left to the write itself, which makes room batch by batch and knows what is already here (re-adding
        pinned content stores nothing new and must not be refused)."""
        quota = self.quota
        if quota is None or nbytes <= quota:
            return
        raise QuotaExceeded(f"storing {what} needs {human(nbytes)}, more than the whole quota of {human(quota)} "
                            f"(from {self.quota_origin}); raise {self._quota_how()}")

    def _live_holds(self, db) -> tuple[float, list[str]]:
        """(the earliest start of a hold in progress, the roots holds protect), over every process; holds of
        processes that died are dropped."""
        since, roots = float("inf"), []
        for owner, pid, start, root in db.execute("SELECT owner, pid, since, root FROM holds").fetchall():
            if owner != self._owner and pid != os.getpid() and not _alive(pid):
                db.execute("DELETE FROM holds WHERE owner = ?", (owner,))
                continue
            since = min(since, start)
            if root is not None:
                roots.append(root)
        return since, roots

    def _evict(self, need: int, want: int) -> tuple[int, int]:
        """Evict least recently used unprotected blocks: want bytes, or as many as there are if that is at least
        need; none if fewer than need are evictable. Returns (bytes evicted, bytes that were evictable, when
        known to be fewer than want)."""
        with self._tx() as db:
            self._write_access(db)   # the order is the one readers saw, not the last batch written
            self._write_holds(db)
            since, roots = self._live_holds(db)
            db.execute("CREATE TEMP TABLE IF NOT EXISTS keep (cid TEXT PRIMARY KEY) WITHOUT ROWID")
            db.execute("DELETE FROM temp.keep")
            db.execute(f"INSERT OR IGNORE INTO temp.keep {LIVE_SQL}")
            for root in roots:
                db.execute("INSERT OR IGNORE INTO temp.keep WITH RECURSIVE dag(cid) AS (VALUES(?) UNION SELECT "
                           "links.child FROM links JOIN dag ON links.parent = dag.cid) SELECT cid FROM dag", (root,))
            with self._holds_lock:
                held = [(k,) for k in self._held_keys]
            db.executemany("INSERT OR IGNORE INTO temp.keep VALUES (?)", held)
            rows = db.execute("SELECT blocks.cid, blocks.size FROM blocks LEFT JOIN access ON access.cid = blocks.cid "
                              "WHERE blocks.added < ? AND blocks.cid NOT IN (SELECT cid FROM temp.keep) "
                              "ORDER BY coalesce(access.at, blocks.added)", (since,))
            chosen, total = [], 0
            for key, size in rows:
                if total >= want:
                    break
                chosen.append(key)
                total += size
            db.execute("DELETE FROM temp.keep")
            if total < need:
                return 0, total
            db.executemany("DELETE FROM blocks WHERE cid = ?", [(k,) for k in chosen])
            db.executemany("DELETE FROM links WHERE parent = ?", [(k,) for k in chosen])
            db.executemany("DELETE FROM access WHERE cid = ?", [(k,) for k in chosen])
        self._unlink_evicted(chosen)
        log.info("made room: evicted %d cached block(s), %s", len(chosen), human(total))
        self.evicted["blocks"] += len(chosen)
        self.evicted["bytes"] += total
        self.evicted["runs"] += 1
        return total, total

    def _unlink_evicted(self, keys: list[str]) -> None:
        """Remove the files of evicted blocks, under the catalog's write lock and only those no writer has listed
        again since; the evictions counter tells writers in flight to re-check their files."""
        with self._tx() as db:
            listed = self._present(keys)
            for key in keys:
                if key not in listed:
                    cid = parse_cid(key)
                    self.files.remove(cid)
                    if self.hot is not None:
                        self.hot.drop(self.files.path(cid))
            db.execute("INSERT OR REPLACE INTO settings VALUES ('evictions', ?)", (self._evictions() + 1,))

    def _evictions(self) -> int:
        return int(self._setting("evictions", 0))

    # access times for the LRU ------------------------------------------------------------------------------

    def _touch(self, cids, now: float) -> None:
        """Remember that cids were read (in memory; the flusher thread writes them in batches)."""
        with self._access_lock:
            for cid in cids:
                self._access[cid] = now
            waiting = len(self._access)
            self._start_flusher()
        if waiting >= self._access_batch:
            self._access_wake.set()

    def _start_flusher(self) -> None:
        """The store's own thread that writes access times and holds, so no reader (a Trio task, say) ever
        waits for SQLite. Called with _access_lock held."""
        if self._flusher is None and not self._closing:
            self._flusher = threading.Thread(target=self._flush_loop, name="hearth-store-access", daemon=True)
            self._flusher.start()

    def _write_soon(self) -> None:
        with self._access_lock:
            self._start_flusher()
        self._access_wake.set()

    def _flush_loop(self) -> None:
        while not self._closing:
            self._access_wake.wait(self._access_seconds)
            self._access_wake.clear()
            if self._closing:
                return
            try:
                self.flush_access()
            except Exception as exc:   # noqa: BLE001 - LRU hints only; the next batch tries again
                log.warning("could not record access times: %s", exc)

    def flush_access(self) -> None:
        """Write the access times read since the last batch, and holds begun or ended (one transaction)."""
        with self._holds_lock:
            holds_changed = not self._holds_written and (self._holds or self._holds_listed)
        if self._access or holds_changed:
            with self._tx() as db:
                self._write_access(db)
                self._write_holds(db)

    def _write_access(self, db) -> None:
        with self._access_lock:
            pending, self._access = self._access, {}
        if pending:
            db.executemany("INSERT OR REPLACE INTO access SELECT cid, ? FROM blocks WHERE cid = ?",
                           [(at, _key(cid)) for cid, at in pending.items()])

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
        present = self._present(todo)
        if present and self._holds:
            with self._holds_lock:   # an add that finds a block here relies on it: keep it until the add ends
                self._held_keys.update(present)
        for key in present:
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
        evictions = self._evictions()
        self.files.write_many(todo.values())
        now = time.time()
        with self._tx() as db:
            self._write_holds(db)
            if self._evictions() != evictions:   # an eviction may have unlinked a file just written: re-check
                gone = [(cid, data) for cid, data in todo.values() if not os.path.exists(self.files.path(cid))]
                if gone:
                    self.files.write_many(gone)
            db.executemany("INSERT OR IGNORE INTO blocks VALUES (?, ?, ?, ?)",
                           [(key, cid.codec, len(data), now) for key, (cid, data) in todo.items()])
            db.executemany("INSERT OR IGNORE INTO links VALUES (?, ?)", links)
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
        path = self.files.path(cid)
        if self.hot is not None:
            data = self.hot.get(path)
            if data is not None:   # checked when it was read, and its file is still the same one
                return data
        got = self.files.read_path(path)
        if got is None:
            found = self._missing(cid)
            if isinstance(found, bytes):
                return found
            raise found
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
        self._touch([cid for cid, got in zip(cids, out) if isinstance(got, bytes) and cid.hash_code != IDENTITY],
                    time.time())
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
            self.hot.drop(self.files.path(cid))
        key = _key(cid)
        with self._tx() as db:
            db.execute("DELETE FROM blocks WHERE cid = ?", (key,))
            db.execute("DELETE FROM links WHERE parent = ?", (key,))
            db.execute("DELETE FROM access WHERE cid = ?", (key,))
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
        """Keep cid (and, recursively, everything under it). StoreError if any block is missing.

        The check and the pin are one transaction: an eviction (which deletes rows in one too) either comes
        first and the check sees the hole, or after and sees the pin."""
        kind = "recursive" if recursive else "direct"
        with self._tx() as db:
            if recursive:
                _, missing = self.dag(cid)
                if missing:
                    raise StoreError(f"cannot pin {cid}: {len(missing)} block(s) under it are not on this node "
                                     f"(first: {missing[0]}); add or import the whole content first")
            elif not self.has(cid):
                raise StoreError(f"cannot pin {cid}: this node does not hold it")
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
                db.execute("DELETE FROM access WHERE cid NOT IN (SELECT cid FROM blocks)")
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
                    self._read(cid)
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

    def stat(self, usage: bool = False) -> dict:
        """What the store holds. usage=True adds pinned_bytes and cached_bytes (a walk of every pin's DAG: for
        `hearth store stat`, not for every status request)."""
        with self._mutex:
            blocks, size = self.db.execute("SELECT count(*), total(size) FROM blocks").fetchone()
            pins = self.db.execute("SELECT count(*) FROM pins").fetchone()[0]
            quarantined = self.db.execute("SELECT count(*) FROM quarantine").fetchone()[0]
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
