"""The cache and its room: one quota, the disk reserve, holds, access times, and eviction least recently used
first. Part of Store (edge/store/repo.py: its docstring states the rules this keeps)."""

import contextlib
import logging
import os
import threading
import time

from edge.ipld.cid import CID, parse_cid
from edge.store.catalog import LIVE_SQL, key
from edge.store.errors import QuotaExceeded, StoreFull
from edge.units import human

log = logging.getLogger(__name__)

EVICT_SLACK = 64 << 20   # an eviction frees up to this much more than asked (at most a 16th of the quota), so
                         # a fetch at the quota does not evict (and scan the catalog) for every batch
RESERVE_MAX = 1 << 30    # disk_reserve auto: the smaller of 1 GiB ...
RESERVE_SHARE = 0.05     # ... and 5% of the disk
ACCESS_COARSE = 150.0    # relatime: a block whose access time was written less than this long ago (two windows at
                         # most) is not written again; eviction order is coarse by that much, where a cache's
                         # blocks live for hours, and a block served again and again costs the writer nothing
RECENT_MAX = 65536       # ... and one window ends early once this many blocks were written in it (memory bound)


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


class Memo:
    """What the store keeps in memory between writes: access times for the LRU and this process's holds."""

    def __init__(self, access_batch: int):
        self.access: dict = {}              # CID -> time read, not yet written
        self.access_lock = threading.Lock()
        self.access_batch = access_batch
        # relatime: the multihashes of blocks whose time was written in this window and the one before (a
        # multihash is the block's content; a CID of another codec for the same bytes is coarse the same way)
        self.recent: set = set()
        self.recent_old: set = set()
        self.recent_since = time.time()
        self.holds: dict[int, _Hold] = {}
        self.holds_lock = threading.Lock()  # never held while waiting for anything: protect() is Trio-safe
        self.held_keys: set[str] = set()    # blocks found here by a write under a hold (their adds need them)
        self.holds_written = False          # the catalog's holds rows are this Store's current ones
        self.holds_listed = False           # this Store has rows in holds

    def pending(self) -> bool:
        with self.holds_lock:
            holds_changed = not self.holds_written and (self.holds or self.holds_listed)
        return bool(self.access) or holds_changed


class Cache:
    """Store's quota, room, holds and access times (self.catalog, self.files, self.hot, self.memo)."""

    # the one quota and the reserve -------------------------------------------------------------------------

    def _setting(self, name, default=None):
        row = self.catalog.row("SELECT value FROM settings WHERE key = ?", (name,))
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

        def set_quota(db):
            if nbytes is None:
                db.execute("DELETE FROM settings WHERE key = 'quota'")
            else:
                db.execute("INSERT OR REPLACE INTO settings VALUES ('quota', ?)", (nbytes,))
        self.catalog.write(set_quota)

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
        return int(self.catalog.row("SELECT total(size) FROM blocks")[0])

    # making room -------------------------------------------------------------------------------------------

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
        def evict(db):
            self._write_access(db)   # the order is the one readers saw, not the last batch written
            self._write_holds(db)
            since, roots = self._live_holds(db)
            db.execute("CREATE TEMP TABLE IF NOT EXISTS keep (cid TEXT PRIMARY KEY) WITHOUT ROWID")
            db.execute("DELETE FROM temp.keep")
            db.execute(f"INSERT OR IGNORE INTO temp.keep {LIVE_SQL}")
            for root in roots:
                db.execute("INSERT OR IGNORE INTO temp.keep WITH RECURSIVE dag(cid) AS (VALUES(?) UNION SELECT "
                           "links.child FROM links JOIN dag ON links.parent = dag.cid) SELECT cid FROM dag", (root,))
            with self.memo.holds_lock:
                held = [(k,) for k in self.memo.held_keys]
            db.executemany("INSERT OR IGNORE INTO temp.keep VALUES (?)", held)
            rows = db.execute("SELECT blocks.cid, blocks.size FROM blocks LEFT JOIN access ON access.cid = blocks.cid "
                              "WHERE blocks.added < ? AND blocks.cid NOT IN (SELECT cid FROM temp.keep) "
                              "ORDER BY coalesce(access.at, blocks.added)", (since,))
            chosen, total = [], 0
            for k, size in rows:
                if total >= want:
                    break
                chosen.append(k)
                total += size
            db.execute("DELETE FROM temp.keep")
            if total < need:
                return [], total
            db.executemany("DELETE FROM blocks WHERE cid = ?", [(k,) for k in chosen])
            db.executemany("DELETE FROM links WHERE parent = ?", [(k,) for k in chosen])
            db.executemany("DELETE FROM access WHERE cid = ?", [(k,) for k in chosen])
            return chosen, total
        chosen, total = self.catalog.write(evict)
        if not chosen:
            return 0, total
        self._unlink_evicted(chosen)
        log.info("made room: evicted %d cached block(s), %s", len(chosen), human(total))
        self.evicted["blocks"] += len(chosen)
        self.evicted["bytes"] += total
        self.evicted["runs"] += 1
        return total, total

    def _unlink_evicted(self, keys: list[str]) -> None:
        """Remove the files of evicted blocks, under the catalog's write lock and only those no writer has listed
        again since; the evictions counter tells writers in flight to re-check their files."""
        def unlink(db):
            listed = self._present(keys, db)
            for k in keys:
                if k not in listed:
                    cid = parse_cid(k)
                    self.files.remove(cid)
                    if self.hot is not None:
                        self.hot.drop(cid.v1_bytes())
            db.execute("INSERT OR REPLACE INTO settings VALUES ('evictions', ?)", (self._evictions(db) + 1,))
        self.catalog.write(unlink)

    def _evictions(self, db=None) -> int:
        if db is None:
            return int(self._setting("evictions", 0))
        row = db.execute("SELECT value FROM settings WHERE key = 'evictions'").fetchone()
        return int(row[0]) if row else 0

    # holds -------------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def protect(self, root: CID | None = None):
        """While inside, making room evicts nothing this hold protects: blocks added since it began, blocks a
        write found already here, and (given a root) every block under root as far as the catalog's links
        reach. A fetch enters it with its root. Cheap, and never waits for the catalog (the next write, or the
        store's writer thread, records it there for other processes), so a Trio task may enter it."""
        memo = self.memo
        hold = _Hold(key(root) if root is not None else None)
        with memo.holds_lock:
            memo.holds[id(hold)] = hold
            memo.holds_written = False
        if root is not None:
            # a fetch may rely on blocks already here long before it writes: other processes learn of it now.
            # A write's hold is recorded by its first put_many, in the same transaction (no extra write).
            self.catalog.flush()
        try:
            yield hold
        finally:
            with memo.holds_lock:
                del memo.holds[id(hold)]
                memo.holds_written = False
                if not memo.holds:
                    memo.held_keys.clear()
            if memo.holds_listed:
                self.catalog.flush()   # a hold left listed would keep other processes from making room

    def _write_holds(self, db) -> None:
        """Record this Store's holds in the catalog (inside a write transaction) for other processes."""
        memo = self.memo
        with memo.holds_lock:
            if memo.holds_written:
                return
            rows = [(self._owner, os.getpid(), h.since, h.root) for h in memo.holds.values()]
            memo.holds_written = True
        db.execute("DELETE FROM holds WHERE owner = ?", (self._owner,))
        db.executemany("INSERT INTO holds VALUES (?, ?, ?, ?)", rows)
        memo.holds_listed = bool(rows)

    # access times for the LRU ------------------------------------------------------------------------------

    def _touch(self, cids, now: float) -> None:
        """Remember that cids were read (in memory; the writer thread writes them in batches)."""
        memo = self.memo
        with memo.access_lock:
            if now - memo.recent_since >= ACCESS_COARSE or len(memo.recent) >= RECENT_MAX:
                # the window ends; after two windows without a read, neither set holds
                fresh = now - memo.recent_since < 2 * ACCESS_COARSE
                memo.recent_old, memo.recent, memo.recent_since = memo.recent if fresh else set(), set(), now
            recent, old, access = memo.recent, memo.recent_old, memo.access
            for cid in cids:
                mh = cid.multihash
                if mh not in recent and mh not in old:
                    access[cid] = now
            waiting = len(memo.access)
        if waiting >= memo.access_batch:
            self.catalog.flush()

    def _before_write(self, db, flush: bool) -> None:
        """At the start of each write transaction: holds begun or ended; access times when asked or idle."""
        self._write_holds(db)
        if flush:
            self._write_access(db)

    def flush_access(self) -> None:
        """Write the access times read since the last batch, and holds begun or ended (one transaction)."""
        if self.memo.pending():
            self.catalog.write(self._write_access)

    def _write_access(self, db) -> None:
        memo = self.memo
        with memo.access_lock:
            pending, memo.access = memo.access, {}
            memo.recent.update(cid.multihash for cid in pending)
        if not pending:
            return
        # in key order: SQLite's B-trees take sorted keys a page at a time (~20% less CPU a row)
        rows = sorted((key(cid), at) for cid, at in pending.items())
        # written a row a statement, without asking whether each block is still listed: that lookup was a third of
        # the writer's ~3.5 us a block read (measured), paid by every block a node serves. A block removed between
        # its read and this write leaves a row no query reads (eviction joins from blocks; an evicted block's row
        # is deleted with it), until the next gc removes every such row. (An INSERT ... SELECT that checks and
        # writes at once needs a statement journal for each row inside the writer's savepoint: ~5 us a row.)
        db.executemany("INSERT OR REPLACE INTO access VALUES (?, ?)", rows)
