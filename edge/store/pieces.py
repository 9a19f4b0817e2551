"""The pieces this node holds for its neighbours' protected pins (issue 16): the holder's side.

Layout under the data directory: pieces/<piece root, hex>.piece (the piece's bytes), and pieces/pieces.sqlite
listing each with its owner (the node whose lease it is), pin (the manifest's root CID), segment, index, size,
lease expiry and the cached 16 KiB subtree roots (edge/protect/merkle.py), plus the manifests owners left here.

Crash safety: a piece arrives in chunks into a temporary file (pieces/tmp-*). Once whole, it is fsynced, its
Merkle tree rebuilt from the file and compared with the root it was sent under (a mismatch: nothing is kept),
renamed to its final name, the directory fsynced, and only then listed (synchronous=FULL). At start, files that
are not listed (a temporary file, a piece renamed but not yet listed when the power went) are removed and rows
whose file is missing are dropped: after a power cut a piece is whole and verified, or absent.

Space: the pieces held plus those arriving stay within `share` (the disk this node lends to neighbours, apart
from its own pins' quota); a piece that would pass it is refused with PieceFull. A lease is at most LEASE_MAX
ahead; a piece whose lease has passed is freed by `expire` (the agent calls it periodically, and a piece that
finds the share full calls it first).

One writer: every change holds `_lock` (SQLite connection, the index, the uploads). Reads use the in-memory
index and pread of the piece file, so the serving thread never waits for a commit. Blocking throughout: Trio
code calls it through a worker thread (the transport's put workers, or `trio.to_thread`).
"""

import contextlib
import logging
import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass

import trio

from edge.atomic import fsync_dir, open_dir
from edge.errors import DecodeError, EdgeError
from edge.ipld.cid import CID
from edge.protect import audit, merkle
from edge.protect import manifest as manifests
from edge.service import Handle

log = logging.getLogger(__name__)

DIR = "pieces"
DB = "pieces.sqlite"
LEASE_MAX = 30 * 86400        # a lease is renewed at least this often or the piece is freed
UPLOAD_IDLE = 300.0           # seconds a piece may wait for its next chunk before the upload is dropped
EXPIRE_EVERY = 3600.0         # seconds between the agent's sweeps for expired leases
MAX_UPLOADS = 64              # pieces arriving at once, over all peers ...
MAX_UPLOADS_PEER = 8          # ... and from one sender
SCHEMA = """
CREATE TABLE IF NOT EXISTS pieces (
    root BLOB PRIMARY KEY, owner TEXT NOT NULL, pin TEXT NOT NULL, segment INTEGER NOT NULL, idx INTEGER NOT NULL,
    size INTEGER NOT NULL, lease REAL NOT NULL, added REAL NOT NULL, subtrees BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS manifests (
    pin TEXT NOT NULL, owner TEXT NOT NULL, data BLOB NOT NULL, stored REAL NOT NULL, PRIMARY KEY (pin, owner));
"""


class PieceError(EdgeError):
    """A piece or a request about one is not acceptable (the message says why); nothing was kept."""


class PieceFull(PieceError):
    """The share has no room for this piece."""


class PieceTaken(PieceError):
    """This node holds that piece already, for another owner (its lease is that owner's): place it elsewhere."""


class PieceNotFound(PieceError, KeyError):
    """This node holds no such piece (or none of the asker's)."""

    def __str__(self):
        return str(self.args[0]) if self.args else "no such piece"


@dataclass(frozen=True)
class Held:
    """A piece held here: what the index keeps for each."""
    root: bytes
    owner: str
    pin: str
    segment: int
    index: int
    size: int
    lease: float
    subtrees: tuple[bytes, ...]


@dataclass
class _Upload:
    meta: Held
    fd: int
    name: str
    have: int
    last: float


class PieceStore:
    """The holder's pieces under data_dir/pieces, within `share` bytes."""

    def __init__(self, data_dir: str, share: int, *, clock=time.time):
        self.dir = os.path.join(os.path.abspath(data_dir), DIR)
        self.share = share
        self.clock = clock
        self._lock = threading.Lock()
        os.makedirs(self.dir, 0o700, exist_ok=True)
        self._dirfd = open_dir(self.dir)
        self._db = sqlite3.connect(os.path.join(self.dir, DB), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._index: dict[bytes, Held] = {}
        self._uploads: dict[tuple[str, bytes], _Upload] = {}
        self._manifests: dict[tuple[str, str], int] = {}   # (pin, owner) -> bytes of the manifest kept
        self._families: dict[str, tuple] = {}   # pin -> (who may order repairs, {segment: its holders}): family()
        self._recover()

    # start, stop ----------------------------------------------------------------------------------------------

    def _recover(self) -> None:
        """List what the catalog holds; remove files it does not list and rows whose file is gone."""
        rows = self._db.execute("SELECT root, owner, pin, segment, idx, size, lease, subtrees FROM pieces")
        for root, owner, pin, segment, idx, size, lease, subtrees in rows.fetchall():
            self._index[root] = Held(root, owner, pin, segment, idx, size, lease, tuple(
                merkle.parse_subtrees(subtrees)))
        listed = {_name(r) for r in self._index}
        for entry in os.listdir(self._dirfd):
            if entry.startswith(DB):
                continue
            if entry not in listed:
                os.unlink(entry, dir_fd=self._dirfd)
        for pin, owner, size in self._db.execute("SELECT pin, owner, length(data) FROM manifests").fetchall():
            self._manifests[(pin, owner)] = size
        gone = [r for r in self._index if not _exists(_name(r), self._dirfd)]
        if gone:
            self._db.executemany("DELETE FROM pieces WHERE root = ?", [(r,) for r in gone])
            for r in gone:
                del self._index[r]
        fsync_dir(self.dir)
        for pin in {pin for pin, _ in self._manifests}:
            self._refresh_family(pin)

    def close(self) -> None:
        with self._lock:
            for up in self._uploads.values():
                self._drop(up)
            self._uploads.clear()
            self._db.close()
            os.close(self._dirfd)

    # figures ---------------------------------------------------------------------------------------------------

    def used(self) -> int:
        """Bytes of the share taken: pieces held, arriving, manifests kept (copied first: other threads change them)."""
        return sum(h.size for h in list(self._index.values())) + \
            sum(u.meta.size for u in list(self._uploads.values())) + sum(list(self._manifests.values()))

    def stat(self) -> dict:
        held = list(self._index.values())
        return {"pieces": len(held), "bytes": sum(h.size for h in held), "share": self.share,
                "arriving": len(self._uploads), "manifests": len(self._manifests)}

    def held(self, root: bytes) -> Held | None:
        return self._index.get(root)

    def pieces(self) -> list[Held]:
        return list(self._index.values())

    def family(self, pin: str) -> tuple[frozenset, dict]:
        """(the nodes that may order repairs of pin: its owner and the holders its verified manifest chain names;
        {segment: every node a verified manifest of pin kept here names as a holder of it}), from memory: the
        serving thread asks it for each GetPiece (edge/transport/pieces.py refuses co-holders' reads)."""
        return self._families.get(pin, (frozenset(), {}))

    def _refresh_family(self, pin: str) -> None:
        """Recompute family(pin) from the manifests kept (called with _lock held, or at start)."""
        kept = self._kept(pin)
        owners = {h.owner for h in self._index.values() if h.pin == pin}
        signers = set(owners)
        for owner in owners:
            signers |= set(manifests.custodians(kept, pin, owner))
        segments: dict[int, set] = {}
        for man in kept:
            if str(man.root) != pin:
                continue
            for s in range(len(man.segments)):
                segments.setdefault(s, set()).update(man.holder_of(s, p) for p in range(man.n))
        self._families[pin] = (frozenset(signers), {s: frozenset(n) for s, n in segments.items()})

    # receiving ---------------------------------------------------------------------------------------------------

    def receive(self, sender: str, owner: str, pin: CID, segment: int, index: int, root: bytes, size: int,
                lease: int, offset: int, data) -> int:
        """Take a chunk of a piece from sender (owner: whose lease it is); returns the bytes of the piece held
        now (size: whole, verified and kept). PieceFull beyond the share, PieceError for a chunk out of order,
        a piece whose bytes do not hash to root, or a lease already past."""
        now = self.clock()
        if lease <= now:
            raise PieceError("the lease has already expired; send a lease in the future")
        lease = min(float(lease), now + LEASE_MAX)
        key = (sender, root)
        with self._lock:
            self._drop_idle(now)
            held = self._index.get(root)
            if held is not None:   # already here (a retry, or the same piece twice): the lease may be renewed
                if held.owner != owner:   # the same bytes in another owner's pin: that owner's lease rules it
                    raise PieceTaken("this node holds that piece for another owner already; place it on "
                                     "another node")
                if lease > held.lease:
                    self._set_lease(held, lease)
                return held.size
            up = self._uploads.get(key)
            if up is None:
                if offset != 0:
                    raise PieceError(f"chunk at {offset} of a piece not being received; start at offset 0")
                up = self._begin(sender, owner, pin, segment, index, root, size, lease, now)
                self._uploads[key] = up
            elif (up.meta.size, up.meta.owner, up.meta.pin) != (size, owner, str(pin)):
                raise PieceError("a chunk that does not belong to the piece being received")
            if offset != up.have:
                raise PieceError(f"chunk at {offset}, expected {up.have}: send the chunks in order")
            try:
                _write_at(up.fd, data, offset)
            except OSError as exc:
                self._uploads.pop(key)
                self._drop(up)
                raise PieceError(f"cannot write the piece: {exc.strerror}") from None
            up.have += len(data)
            up.last = now
            if up.have < size:
                return up.have
            del self._uploads[key]
        return self._finish(up)   # the hashing and fsyncs outside the lock: others may go on meanwhile

    def _begin(self, sender, owner, pin, segment, index, root, size, lease, now) -> _Upload:
        if len(self._uploads) >= MAX_UPLOADS or sum(s == sender for s, _ in self._uploads) >= MAX_UPLOADS_PEER:
            raise PieceFull(f"{MAX_UPLOADS_PEER} pieces from you ({MAX_UPLOADS} in all) are arriving already; "
                            "finish those first")
        if self.used() + size > self.share:
            self._expire_locked(now)
            if self.used() + size > self.share:
                raise PieceFull(f"a piece of {size} bytes does not fit: {self.used()} of the {self.share}-byte "
                                "share is taken")
        name = f"tmp-{root.hex()[:16]}-{secrets.token_hex(4)}"
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=self._dirfd)
        meta = Held(root, owner, str(pin), segment, index, size, lease, ())
        return _Upload(meta, fd, name, 0, now)

    def _finish(self, up: _Upload) -> int:
        """Make the piece durable, check it against its root, and list it; PieceError (nothing kept) if the
        bytes are not the piece."""
        meta = up.meta
        try:
            os.fsync(up.fd)
            os.close(up.fd)
            up.fd = -1
            data = _read_all(up.name, self._dirfd, meta.size)
            tree = merkle.build(data)
            if tree.root != meta.root:
                raise PieceError("the piece's bytes do not hash to its root; nothing was kept")
            final = _name(meta.root)
            os.replace(up.name, final, src_dir_fd=self._dirfd, dst_dir_fd=self._dirfd)
            os.fsync(self._dirfd)
        except BaseException:
            self._drop(up)
            raise
        held = Held(meta.root, meta.owner, meta.pin, meta.segment, meta.index, meta.size, meta.lease,
                    tuple(tree.subtree_roots))
        with self._lock:
            if meta.root in self._index:   # the same piece finished by another sender meanwhile
                return meta.size
            self._db.execute("INSERT OR REPLACE INTO pieces VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             (held.root, held.owner, held.pin, held.segment, held.index, held.size, held.lease,
                              self.clock(), merkle.subtree_bytes(tree)))
            self._index[held.root] = held
        return meta.size

    def _drop(self, up: _Upload) -> None:
        if up.fd >= 0:
            os.close(up.fd)
            up.fd = -1
        try:
            os.unlink(up.name, dir_fd=self._dirfd)
        except FileNotFoundError:
            pass

    def _drop_idle(self, now: float) -> None:
        for key, up in list(self._uploads.items()):
            if now - up.last > UPLOAD_IDLE:
                del self._uploads[key]
                self._drop(up)

    # serving -----------------------------------------------------------------------------------------------------

    def read(self, root: bytes, offset: int, length: int) -> tuple[bytes, int]:
        """(bytes offset..offset+length of the piece, its size); PieceNotFound, PieceError past its end."""
        held = self._index.get(root)
        if held is None:
            raise PieceNotFound(f"this node holds no piece {root.hex()[:16]}…")
        if offset > held.size:
            raise PieceError(f"offset {offset} is past the piece's {held.size} bytes")
        return self._pread(root, offset, min(length, held.size - offset)), held.size

    def audit(self, identity, root: bytes, nonce: bytes, beacon: bytes, auditor: bytes) -> audit.Proof:
        """The signed proof (edge/protect/audit.py) for the challenge the auditor (its public key) drew from
        beacon and nonce: the leaves and their paths, each read from its one 16 KiB block (at most audit.S
        blocks). PieceNotFound, or merkle.ProofError for a damaged piece."""
        held = self._index.get(root)
        if held is None:
            raise PieceNotFound(f"this node holds no piece {root.hex()[:16]}…")
        indices = audit.challenge(beacon, auditor, root, nonce, merkle.leaf_count(held.size))
        return audit.answer(identity, self._block_reader(held), list(held.subtrees), held.size, root, nonce,
                            indices)

    def _block_reader(self, held: Held):
        def read_block(b: int) -> bytes:
            start = b * merkle.SUBTREE
            return self._pread(held.root, start, min(merkle.SUBTREE, held.size - start))
        return read_block

    def _pread(self, root: bytes, offset: int, length: int) -> bytes:
        fd = os.open(_name(root), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._dirfd)
        try:
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    # leases --------------------------------------------------------------------------------------------------------

    def renew(self, sender: str, roots, lease: int) -> list[bool]:
        """Move the leases of pieces among roots to lease (at most LEASE_MAX ahead); which were renewed. The lease
        owner renews its pieces; so does a custodian of the piece's pin, a node the verified manifest chain kept
        here names (edge/protect/manifest.py custodians): with the owner gone, the holder repair chooses renews
        the whole pin (edge/protection/custody.py)."""
        lease = min(float(lease), self.clock() + LEASE_MAX)
        found = []
        with self._lock:
            named: dict[tuple[str, str], dict] = {}   # (pin, lease owner) -> {custodian: the roots it may renew}
            for root in roots:
                held = self._index.get(root)
                ok = held is not None and held.owner == sender
                if held is not None and not ok:
                    key = (held.pin, held.owner)
                    if key not in named:   # parsing manifests: only for a renewal from someone else
                        named[key] = manifests.custodians(self._kept(held.pin), held.pin, held.owner)
                    ok = root in named[key].get(sender, ())
                found.append(ok)
                if ok and lease > held.lease:
                    self._set_lease(held, lease)
        return found

    def _kept(self, pin: str, slot: str | None = None) -> list:
        """The manifests of pin kept here (in one slot, when given) that parse, signatures checked; what a lease
        owner left that does not parse is skipped. Called with _lock held."""
        query = "SELECT data FROM manifests WHERE pin = ?" + ("" if slot is None else " AND owner = ?")
        kept = []
        for (data,) in self._db.execute(query, (pin,) if slot is None else (pin, slot)).fetchall():
            with contextlib.suppress(DecodeError, EdgeError, ValueError):
                kept.append(manifests.parse(bytes(data)))
        return kept

    def _set_lease(self, held: Held, lease: float) -> None:
        self._db.execute("UPDATE pieces SET lease = ? WHERE root = ?", (lease, held.root))
        self._index[held.root] = Held(held.root, held.owner, held.pin, held.segment, held.index, held.size, lease,
                                      held.subtrees)

    def release(self, owner: str, roots) -> list[bool]:
        """Free owner's pieces among roots; which were found."""
        with self._lock:
            found = [root in self._index and self._index[root].owner == owner for root in roots]
            self._remove([r for r, f in zip(roots, found) if f])
        return found

    def expire(self) -> int:
        """Free every piece whose lease has passed (and uploads left idle); how many pieces."""
        with self._lock:
            self._drop_idle(self.clock())
            return self._expire_locked(self.clock())

    def _expire_locked(self, now: float) -> int:
        gone = [h.root for h in self._index.values() if h.lease <= now]
        self._remove(gone)
        return len(gone)

    def _remove(self, roots) -> None:
        """Unlist, then unlink (a power cut between leaves an unlisted file, removed at start)."""
        if not roots:
            return
        pins = {(self._index[r].pin, self._index[r].owner) for r in roots}
        self._db.executemany("DELETE FROM pieces WHERE root = ?", [(r,) for r in roots])
        for r in roots:
            del self._index[r]
            try:
                os.unlink(_name(r), dir_fd=self._dirfd)
            except FileNotFoundError:
                pass
        left = {(h.pin, h.owner) for h in self._index.values()}
        emptied = {pin for pin, _ in pins} - {h.pin for h in self._index.values()}
        gone = (pins - left) | {key for key in self._manifests if key[0] in emptied}   # custodians' slots too
        self._db.executemany("DELETE FROM manifests WHERE pin = ? AND owner = ?", list(gone))
        for key in gone:
            self._manifests.pop(key, None)
        for pin in {pin for pin, _ in pins}:
            if any(key[0] == pin for key in self._manifests):
                self._refresh_family(pin)
            else:
                self._families.pop(pin, None)

    # manifests -----------------------------------------------------------------------------------------------------

    def keep_manifest(self, sender: str, pin: CID, data: bytes) -> None:
        """Keep sender's manifest of pin (replacing an older one), for readers who ask; while this node holds a
        piece of that pin for sender. A custodian (the holder renewing a pin whose owner is gone) may also hand
        over the owner's manifest and its own next version: each kept in its signer's slot when it extends the
        verified chain of the pin's pieces held here (edge/protect/manifest.py extends) and is newer than what
        that slot holds. PieceNotFound otherwise (a node cannot park data here)."""
        pin_s = str(pin)
        with self._lock:
            key = (pin_s, sender)
            if not any(h.pin == pin_s and h.owner == sender for h in self._index.values()):
                lease_owners = {h.owner for h in self._index.values() if h.pin == pin_s}
                if not lease_owners:
                    raise PieceNotFound(f"this node holds no piece of {pin}; store a piece first")
                try:
                    new = manifests.parse(bytes(data))
                except (DecodeError, EdgeError, ValueError) as exc:
                    raise PieceNotFound(f"this node holds no piece of {pin} for you, and that is no manifest: "
                                        f"{exc}") from None
                why = manifests.extends(self._kept(pin_s), lease_owners, pin, new)
                if why:
                    raise PieceNotFound(f"this node holds no piece of {pin} for you, and your manifest is not "
                                        f"usable: {why}")
                key = (pin_s, new.signer)
                if any(m.signer == new.signer and m.version >= new.version for m in self._kept(pin_s, new.signer)):
                    return   # that signer's slot holds this version or a newer one already
            if self.used() - self._manifests.get(key, 0) + len(data) > self.share:
                raise PieceFull(f"a manifest of {len(data)} bytes does not fit in the share")
            self._db.execute("INSERT OR REPLACE INTO manifests VALUES (?, ?, ?, ?)",
                             (key[0], key[1], bytes(data), self.clock()))
            self._manifests[key] = len(data)
            self._refresh_family(pin_s)

    def manifests_of(self, pin: CID) -> list[bytes]:
        """Every manifest of pin kept here, newest first (a custodian chains them: edge/protection/custody.py)."""
        with self._lock:
            rows = self._db.execute("SELECT data FROM manifests WHERE pin = ? ORDER BY stored DESC",
                                    (str(pin),)).fetchall()
        return [bytes(r[0]) for r in rows]

    def manifest(self, pin: CID) -> bytes | None:
        """The newest manifest of pin kept here (any owner's: the reader checks its signature)."""
        with self._lock:
            row = self._db.execute("SELECT data FROM manifests WHERE pin = ? ORDER BY stored DESC LIMIT 1",
                                   (str(pin),)).fetchone()
        return None if row is None else bytes(row[0])


async def serve_leases(pieces: PieceStore, every: float = EXPIRE_EVERY, *, task_status=trio.TASK_STATUS_IGNORED):
    """The agent's service for the pieces held here: every `every` seconds, free the pieces whose lease has
    passed (in a worker thread: SQLite and unlinks). Its handle's stats are the pieces held and the share."""
    task_status.started(Handle("pieces", pieces.stat))
    while True:
        freed = await trio.to_thread.run_sync(pieces.expire)
        if freed:
            log.info("freed %d pieces whose leases had expired", freed)
        await trio.sleep(every)


def _name(root: bytes) -> str:
    return root.hex() + ".piece"


def _exists(name: str, dir_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False


def _write_at(fd: int, data, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _read_all(name: str, dir_fd: int, size: int) -> bytes:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        data = os.pread(fd, size + 1, 0)
    finally:
        os.close(fd)
    if len(data) != size:
        raise PieceError(f"the piece file holds {len(data)} bytes, {size} expected")
    return data
