"""The store's SQLite catalog (WAL): its schema, and the connections one process holds to it.

One owner of writes per process: a writer thread holds the process's only writing connection and runs every
write (puts, pins, names, evictions, access times, holds) as a job. Jobs queued while a transaction commits go
into the next one together, each under a savepoint of its own: one job's error undoes that job only, and many
concurrent writers (a fetch, a neighbour's Put, the access times) cost one commit, one WAL fsync, between them.
Readers take read-only connections from a small pool (one per thread at a time), so a read never waits for a
write and no connection is shared between threads. Another process (the CLI beside a running agent) has its own
writer; SQLite's locking keeps the two consistent.

The writer thread also writes what the store keeps in memory between writes (access times for the LRU, and
holds) when it has been idle for a while or is asked to (`flush`), so no reader ever writes.

A commit is durable (synchronous=FULL: the WAL is fsynced) when any job in it needs that: pins, names, the
quota, evictions (their files are unlinked after), quarantine. A batch of only block listings (and LRU hints)
commits without the fsync (synchronous=NORMAL): losing it to a power cut leaves unlisted block files, as a
crash in the middle of an add does (GC sweeps them), never a listed block without its file, since every file is
durable before it is listed; and the next durable commit makes every earlier one durable too (one WAL). A
durable add of a GiB so costs one device flush fewer per batch.
"""

import contextlib
import logging
import os
import queue
import re
import sqlite3
import threading
import urllib.parse

from edge.ipld.cid import CID
from edge.store.errors import StoreError, StoreFull

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
LOCK_WAIT = 30.0
MAX_JOBS = 256       # write jobs in one transaction at most
IDLE_READERS = 8     # read-only connections kept open between reads


def key(cid: CID) -> str:
    """A block's key in the catalog: its CIDv1 text."""
    return str(cid.to_v1())


def full(exc: sqlite3.Error) -> bool:
    return "full" in str(exc).lower()


class _Job:
    __slots__ = ("fn", "durable", "done", "result", "error")

    def __init__(self, fn, durable: bool):
        self.fn = fn
        self.durable = durable
        self.done = threading.Event()
        self.result = None
        self.error: BaseException | None = None


_FLUSH = object()   # write what the store keeps in memory (access times, holds), even if no job waits
_CLOSE = object()


class Catalog:
    """The catalog of the store at root, as this process uses it: `write(fn)` runs fn(connection) in a write
    transaction on the writer thread and returns its result (or raises its error); `read()` lends a read-only
    connection. before_write(db, flush) runs at the start of each write transaction (flush: asked for, or idle
    for idle_seconds), for what the store records alongside the jobs; pending() says whether it has anything."""

    def __init__(self, root: str, *, before_write=None, pending=None, idle_seconds: float = 60.0):
        self.root = root
        self.path = os.path.join(root, "store.db")
        self._before_write = before_write or (lambda db, flush: None)
        self._pending = pending or (lambda: False)
        self._idle_seconds = idle_seconds
        try:
            self.db = sqlite3.connect(self.path, timeout=LOCK_WAIT, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self._synchronous = "FULL"
            self._create()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"the catalog {self.path} cannot be opened ({exc}); if the disk is "
                             "full, free space; otherwise restore it from a backup or re-add the content") from exc
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = self._closing = False
        self._writer = threading.Thread(target=self._run, name="hearth-store-writer", daemon=True)
        self._writer.start()

    def _create(self) -> None:
        # a current catalog is opened without writing: on a full disk reads (`hearth cat`) still work; only
        # creating or upgrading it writes. Tables added since version 1 (access, holds) are ones an older
        # Hearth ignores, so they keep the version (a rollback to the other A/B slot still opens the
        # store) and are found missing by name instead
        have = {row[0] for row in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if self.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION and SCHEMA_TABLES <= have:
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.root} was written by a newer Hearth (catalog version {version}); "
                                 "upgrade Hearth to open it")
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    self.db.execute(statement)
            self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise

    # reading -------------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def read(self):
        """A read-only connection for this thread's use until the block ends (autocommit: each statement sees
        the latest commit of any process)."""
        with self._readers_lock:
            db = self._readers.pop() if self._readers else None
        if db is None:
            if self._closed:
                raise StoreError(f"the store in {self.root} is closed")
            db = sqlite3.connect(f"file:{urllib.parse.quote(self.path)}?mode=ro", uri=True, timeout=LOCK_WAIT,
                                 isolation_level=None, check_same_thread=False)
        try:
            yield db
        finally:
            with self._readers_lock:
                keep = not self._closed and len(self._readers) < IDLE_READERS
                if keep:
                    self._readers.append(db)
            if not keep:
                db.close()

    def rows(self, sql: str, args=()) -> list:
        with self.read() as db:
            return db.execute(sql, args).fetchall()

    def row(self, sql: str, args=()):
        with self.read() as db:
            return db.execute(sql, args).fetchone()

    # writing -------------------------------------------------------------------------------------------------

    def write(self, fn, *, durable: bool = True):
        """fn(connection) in a write transaction on the writer thread; its result, or its error raised here.
        Called from a job (on the writer thread), fn runs at once inside that job's transaction. durable=False
        only for a write whose loss to a power cut loses nothing (block listings: see above)."""
        if threading.current_thread() is self._writer:
            return fn(self.db)
        if self._closing:
            raise StoreError(f"the store in {self.root} is closed")
        job = _Job(fn, durable)
        self._queue.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def flush(self) -> None:
        """Ask the writer to record what the store keeps in memory soon (returns at once)."""
        self._queue.put(_FLUSH)

    def _run(self) -> None:
        while True:
            try:
                items = [self._queue.get(timeout=self._idle_seconds)]
            except queue.Empty:
                items = [_FLUSH]
            while len(items) < MAX_JOBS:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            jobs = [item for item in items if isinstance(item, _Job)]
            flush = _FLUSH in items or _CLOSE in items
            try:
                if jobs or (flush and self._pending()):
                    self._batch(jobs, flush)
            except BaseException as exc:   # noqa: BLE001 - the writer must outlive any one batch
                log.exception("the store's writer failed a batch")
                try:
                    if self.db.in_transaction:   # or every later BEGIN would fail
                        self.db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                for job in jobs:
                    if not job.done.is_set():
                        job.error = exc
                        job.done.set()
            if _CLOSE in items:
                return

    def _batch(self, jobs: list[_Job], flush: bool, memo: bool = True) -> None:
        """Run jobs in one transaction, each under its own savepoint; then wake their callers. memo: record
        holds (and, with flush, access times) first; not when retrying jobs after a lost transaction."""
        db = self.db
        synchronous = "FULL" if any(job.durable for job in jobs) else "NORMAL"
        try:
            if synchronous != self._synchronous:   # outside a transaction, as SQLite requires
                db.execute(f"PRAGMA synchronous={synchronous}")
                self._synchronous = synchronous
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:   # locked past LOCK_WAIT by another process, or the disk failing
            for job in jobs:
                job.error = exc
                job.done.set()
            return
        if memo:
            db.execute("SAVEPOINT memo")
            try:
                self._before_write(db, flush)
            except Exception as exc:   # noqa: BLE001 - LRU hints and holds only; the jobs go on
                log.warning("could not record access times and holds: %s", exc)
                if db.in_transaction:
                    db.execute("ROLLBACK TO memo")
            if db.in_transaction:
                db.execute("RELEASE memo")
        done: list[_Job] = []
        for n, job in enumerate(jobs):
            if not db.in_transaction:   # SQLite rolled the whole transaction back (a full disk): the jobs
                lost = self._lost(done)  # before are undone; the rest run in a transaction of their own
                for earlier in done:
                    earlier.error = earlier.error or lost
                    earlier.done.set()
                return self._batch(jobs[n:], False, memo=False)
            db.execute("SAVEPOINT job")
            try:
                job.result = job.fn(db)
            except BaseException as exc:   # noqa: BLE001 - handed to the job's caller
                job.error = exc
                if db.in_transaction:
                    db.execute("ROLLBACK TO job")
            if db.in_transaction:
                db.execute("RELEASE job")
            done.append(job)
        if done and not db.in_transaction:   # lost with the last job: every job in it is undone
            lost = self._lost(done)
            for job in done:
                job.error = job.error or lost
        try:
            if db.in_transaction:
                db.execute("COMMIT")
        except sqlite3.OperationalError as err:
            if db.in_transaction:   # after SQLITE_FULL it is already rolled back: say "full", not
                db.execute("ROLLBACK")   # "cannot rollback - no transaction is active"
            if full(err):
                failed = StoreFull(f"the disk holding {self.root} is full: the catalog could not record the "
                                   "change, and nothing stored was lost. Free space and try again")
            else:
                failed = StoreError(f"the catalog could not commit: {err}")
            failed.__cause__ = err
            for job in done:
                job.error = job.error or failed
        for job in done:
            job.done.set()

    def _lost(self, done: list[_Job]) -> StoreError:
        """The error for jobs whose transaction SQLite rolled back: what the job that lost it met."""
        cause = next((job.error for job in reversed(done) if job.error is not None), None)
        if cause is None or (isinstance(cause, sqlite3.Error) and full(cause)) or isinstance(cause, StoreFull):
            return StoreFull(f"the disk holding {self.root} is full: the catalog could not record the change, "
                             "and nothing stored was lost. Free space and try again")
        return StoreError(f"the catalog could not record the change ({cause}); nothing stored was lost")

    def close(self) -> None:
        """Finish the jobs queued, record what is in memory, and close every connection."""
        if self._closing:
            return
        self._closing = True
        self._queue.put(_CLOSE)
        self._writer.join()
        self._closed = True
        while True:   # a job that raced close: it is refused, not left waiting
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Job):
                item.error = StoreError(f"the store in {self.root} is closed")
                item.done.set()
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for db in readers:
            db.close()
        self.db.close()
