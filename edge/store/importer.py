"""UnixFS import: files and directories into blocks, with the defaults of `ipfs add --cid-version 1`.

Fixed 256 KiB chunks (or FastCDC), raw leaves, a balanced DAG of at most 174 links per node, directories as
DAG-PB nodes with links sorted by name, and HAMT shards once a directory's estimated size (the bytes of its
link names plus CIDs, as Kubo and js-ipfs-unixfs-importer estimate it) exceeds 256 KiB. Hidden entries
(names starting with a dot) are left out unless asked for, as `ipfs add -r` does.

Blocks go to a `put_many(list of (CID, buffer))` callable in batches; the caller keeps them (the store), or
there is none (put_many=None: only-hash, where a regular file's bytes are read into a small buffer per hashing
thread and hashed while still in the CPU cache, never kept). Reading, hashing (native batch SHA2-256 on two
threads) and writing overlap.
"""

import os
import stat as stat_mod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from edge.atomic import read_full
from edge.kernels import fastcdc_cuts
from edge.ipld.cid import CID, DAG_PB, RAW
from edge.ipld.dagpb import PBLink, PBNode, serialize_pbnode
from edge.ipld.hamt import Entry, build_shard
from edge.ipld.unixfs import DIRECTORY, FILE, SYMLINK, UnixFSData, serialize_unixfs
from edge.ipld.varint import encode_uvarint
from edge.store.errors import ImportFailed
from edge.store.spanhash import SpanHasher

CHUNK_SIZE = 256 * 1024
MAX_LINKS = 174
MAX_CHUNK = 1 << 20          # a block is at most 1 MiB, as Kubo enforces
SHARD_THRESHOLD = 256 * 1024
BATCH_BYTES = 8 << 20    # per buffer; an add holds (writers + 2) of them
DIR_NODE = serialize_unixfs(UnixFSData(DIRECTORY))


@dataclass(frozen=True)
class Chunker:
    """How a file is cut: fixed size, or FastCDC (min/avg/max) from native/."""

    kind: str = "size"
    size: int = CHUNK_SIZE
    min_size: int = 0
    max_size: int = 0

    @property
    def max_chunk(self) -> int:
        return self.size if self.kind == "size" else self.max_size

    def __str__(self) -> str:
        if self.kind == "size":
            return f"size-{self.size}"
        return f"fastcdc-{self.min_size}-{self.size}-{self.max_size}"


def parse_chunker(text: str) -> Chunker:
    """`size-N` (fixed N bytes) or `fastcdc[-MIN-AVG-MAX]` (default 64K-256K-1M); ValueError says what is allowed."""
    text = (text or "").strip()
    parts = text.split("-")
    try:
        if parts[0] == "size" and len(parts) == 2:
            size = int(parts[1])
            if not 1 <= size <= MAX_CHUNK:
                raise ValueError(f"chunk size {size} is outside 1..{MAX_CHUNK}")
            return Chunker("size", size)
        if parts[0] == "fastcdc" and len(parts) in (1, 4):
            lo, avg, hi = (65536, 262144, 1048576) if len(parts) == 1 else (int(p) for p in parts[1:])
            if not 64 <= lo <= avg <= hi <= MAX_CHUNK:
                raise ValueError(f"FastCDC sizes {lo}-{avg}-{hi} must satisfy 64 <= min <= avg <= max <= "
                                 f"{MAX_CHUNK}")
            fastcdc_cuts(b"", lo, avg, hi)   # the kernel's own size rules (powers of two and so on)
            return Chunker("fastcdc", avg, lo, hi)
    except ValueError as exc:
        raise ValueError(f"bad chunker {text!r}: {exc}") from None
    raise ValueError(f"bad chunker {text!r}: use size-N (1 to {MAX_CHUNK} bytes) or fastcdc[-MIN-AVG-MAX]")


DEFAULT_CHUNKER = Chunker()


@dataclass(frozen=True)
class Imported:
    """What an import produced: the root, its cumulative DAG size (Tsize) and its content bytes."""

    cid: CID
    tsize: int
    size: int


class _Blocks:
    """Collects small blocks (DAG nodes) so they travel with the next batch to put_many."""

    def __init__(self, put_many):
        self.put_many = put_many
        self.pending: list[tuple[CID, bytes]] = []

    def put(self, cid, data):
        self.pending.append((cid, data))
        if len(self.pending) >= 256:
            self.flush()

    def take(self):
        out, self.pending = self.pending, []
        return out

    def flush(self):
        if self.pending:
            self.put_many(self.take())


def file_node(links, sizes) -> bytes:
    """The DAG-PB bytes of a UnixFS file node over children (CID, tsize) with content sizes `sizes`.

    Equal to serialize_pbnode(PBNode(UnixFS data, links named "")), written directly: a 4 GiB file has
    16,384 links and this is the importer's only per-leaf serialization.
    """
    data = serialize_unixfs(UnixFSData(FILE, filesize=sum(sizes), blocksizes=tuple(sizes)))
    parts = []
    around = {}   # (CID length, tsize) -> the link's bytes before and after its CID: nearly all alike in a file
    for cid, tsize in links:
        raw = bytes(cid)
        edges = around.get((len(raw), tsize))
        if edges is None:
            tail = b"\x12\x00\x18" + encode_uvarint(tsize)
            cid_field = b"\x0a" + encode_uvarint(len(raw))
            edges = around[len(raw), tsize] = (
                b"\x12" + encode_uvarint(len(cid_field) + len(raw) + len(tail)) + cid_field, tail)
        parts.append(edges[0] + raw + edges[1])
    parts.append(b"\x0a" + encode_uvarint(len(data)) + data)
    return b"".join(parts)


class BalancedLayout:
    """Kubo's balanced layout built bottom-up as leaves stream in: full groups of max_links, then the rest."""

    def __init__(self, put_block, max_links: int = MAX_LINKS):
        self.put_block = put_block
        self.max_links = max_links
        self.levels: list[list[tuple[CID, int, int]]] = [[]]   # per level: (cid, tsize, content size)

    def add_leaf(self, cid: CID, size: int) -> None:
        self._push(0, (cid, size, size))

    def _push(self, level, item):
        if level == len(self.levels):
            self.levels.append([])
        self.levels[level].append(item)
        if len(self.levels[level]) == self.max_links:
            self._push(level + 1, self._node(level))

    def _node(self, level):
        items, self.levels[level] = self.levels[level], []
        block = file_node([(c, t) for c, t, _ in items], [s for _, _, s in items])
        cid = CID.for_block(block, DAG_PB)
        self.put_block(cid, block)
        return cid, len(block) + sum(t for _, t, _ in items), sum(s for _, _, s in items)

    def finish(self) -> Imported:
        top = max((i for i, items in enumerate(self.levels) if items), default=None)
        if top is None:
            raise ValueError("a file has at least one (possibly empty) leaf")
        for level in range(top):
            if self.levels[level]:
                self._push(level + 1, self._node(level))
        top = max(i for i, items in enumerate(self.levels) if items)
        while len(self.levels[top]) > 1:
            self._push(top + 1, self._node(top))
            top += 1
        cid, tsize, size = self.levels[top][0]
        return Imported(cid, tsize, size)


class Importer:
    """Turns files and trees into blocks for put_many. One instance per add; close() when done."""

    def __init__(self, put_many, chunker: Chunker = DEFAULT_CHUNKER, *, hidden: bool = False,
                 progress=None, batch_bytes: int = BATCH_BYTES, threads: int = 2, writers: int = 2):
        """put_many None: only-hash (blocks are made, named and dropped)."""
        self.keep = put_many is not None
        put_many = put_many or (lambda blocks: None)
        self.blocks = _Blocks(put_many)
        self.put_many = put_many
        self.chunker = chunker
        self.hidden = hidden
        self.progress = progress or (lambda n: None)
        self.hasher = SpanHasher(threads)
        self.reader = ThreadPoolExecutor(max_workers=1)
        # two batches stored at once: one writes files while the other waits for the disk to flush
        self.writer = ThreadPoolExecutor(max_workers=writers)
        self.batch = max(batch_bytes // chunker.max_chunk, 1) * chunker.max_chunk
        self.head = chunker.max_chunk if chunker.kind != "size" else 0
        self.buffers = [bytearray() for _ in range(writers + 2)]   # made on first use, as large as needed

    def _buffer(self, i: int, nbytes: int) -> bytearray:
        """Buffer i, at least nbytes long. A small input gets a small buffer (adding a 3-byte file should not
        cost 32 MiB); a buffer only grows, to at most one batch. The one it replaces may still be in a writer's
        hands: that writer keeps it alive through its views."""
        if len(self.buffers[i]) < nbytes:
            self.buffers[i] = bytearray(min(max(nbytes, 2 * len(self.buffers[i])), self.head + self.batch))
        return self.buffers[i]

    def close(self):
        self.hasher.close()
        self.reader.shutdown()
        self.writer.shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # files -------------------------------------------------------------------------------------------------

    def _cuts(self, view, at_eof: bool) -> list[int]:
        c = self.chunker
        if c.kind == "size":
            n = len(view)
            cuts = list(range(c.size, n + 1, c.size))
            if at_eof and (not cuts or cuts[-1] != n) and n:
                cuts.append(n)
            return cuts
        return fastcdc_cuts(view, c.min_size, c.size, c.max_size, eof=at_eof)

    def import_stream(self, f) -> Imported:
        """Import one file's bytes from a binary file object; blocks are handed to put_many as they are made.

        Three things overlap: a reader thread fills the next buffer, two threads hash the current one, and up
        to `writers` earlier batches are being stored. A buffer is reused only when its batch is stored.
        """
        layout = BalancedLayout(self.blocks.put)
        head, nbuf = self.head, len(self.buffers)
        busy = [None] * nbuf    # the writer future still using each buffer
        which = 0
        carry = None            # FastCDC: the uncut tail of the last window, put in front of the next
        leaves = 0

        def read_into(i):
            return read_full(f, memoryview(self._buffer(i, head + self.batch))[head:head + self.batch])

        reading = self.reader.submit(read_into, 0)
        try:
            while True:
                got = reading.result()
                reading = None
                at_eof = got < self.batch
                buf = memoryview(self.buffers[which])
                n_carry = len(carry) if carry is not None else 0
                if n_carry:
                    buf[head - n_carry:head] = carry
                view = buf[head - n_carry:head + got]
                nxt = (which + 1) % nbuf
                if not at_eof:
                    if busy[nxt] is not None:
                        busy[nxt].result()
                        busy[nxt] = None
                    reading = self.reader.submit(read_into, nxt)
                cuts = self._cuts(view, at_eof)
                digests = self.hasher.spans(view, cuts) if cuts else b""
                batch = []
                start = 0
                for i, end in enumerate(cuts):
                    cid = CID.from_digest(digests[32 * i:32 * i + 32], RAW)
                    batch.append((cid, view[start:end]))
                    layout.add_leaf(cid, end - start)
                    start = end
                leaves += len(cuts)
                if at_eof and leaves == 0:   # an empty file is one empty raw leaf, as in Kubo
                    cid = CID.for_block(b"", RAW)
                    batch.append((cid, b""))
                    layout.add_leaf(cid, 0)
                    leaves = 1
                batch.extend(self.blocks.take())
                if batch:
                    busy[which] = self.writer.submit(self.put_many, batch)
                self.progress(start)
                carry = view[start:]
                which = nxt
                if at_eof:
                    break
            for i, fut in enumerate(busy):
                if fut is not None:
                    fut.result()
                    busy[i] = None
        finally:   # on an error, let every thread finish with the buffers before anyone reuses them
            for fut in [reading, *busy]:
                if fut is not None:
                    try:
                        fut.result()
                    except Exception:   # the first error is already on its way up
                        pass
        root = layout.finish()
        self.blocks.flush()
        return root

    def import_regular_file(self, fd: int, size: int) -> Imported:
        """Fixed-size chunks of a regular file of size bytes (its size when the add began; bytes appended later
        are not read). Two threads read and hash the next batch while this thread builds the DAG of the
        last one, and up to `writers` batches are stored meanwhile."""
        layout = BalancedLayout(self.blocks.put)
        chunk, nbuf = self.chunker.size, len(self.buffers)
        busy = [None] * nbuf
        waiting = []   # hashing in flight, to drain on an error

        def start(which, pos):
            if busy[which] is not None:
                busy[which].result()
                busy[which] = None
            n = min(self.batch, size - pos)
            view = memoryview(self._buffer(which, n))[:n] if self.keep else None
            cuts = list(range(chunk, n, chunk)) + [n]
            digests = self.hasher.read_and_hash(fd, pos, view, cuts)
            waiting.append(digests)
            return which, view, cuts, digests

        try:
            current = start(0, 0)
            pos = current[2][-1]
            while current is not None:
                which, view, cuts, digests = current
                current = None
                if pos < size:
                    current = start((which + 1) % nbuf, pos)
                    pos += current[2][-1]
                digests = digests()
                waiting.pop(0)
                batch = []
                begin = 0
                for i, end in enumerate(cuts):
                    cid = CID.from_digest(digests[32 * i:32 * i + 32], RAW)
                    if view is not None:
                        batch.append((cid, view[begin:end]))
                    layout.add_leaf(cid, end - begin)
                    begin = end
                batch.extend(self.blocks.take())
                if self.keep:
                    busy[which] = self.writer.submit(self.put_many, batch)
                self.progress(cuts[-1])
            for i, fut in enumerate(busy):
                if fut is not None:
                    fut.result()
                    busy[i] = None
        finally:   # on an error, let every thread finish with the buffers before anyone reuses them
            for wait in [*waiting, *(f.result for f in busy if f is not None)]:
                try:
                    wait()
                except Exception:   # the first error is already on its way up
                    pass
        root = layout.finish()
        self.blocks.flush()
        return root

    def import_file(self, path) -> Imported:
        try:
            with open(path, "rb", buffering=0) as f:
                st = os.fstat(f.fileno())
                if self.chunker.kind == "size" and stat_mod.S_ISREG(st.st_mode) and st.st_size > 0:
                    return self.import_regular_file(f.fileno(), st.st_size)
                return self.import_stream(f)
        except OSError as exc:
            raise ImportFailed(f"cannot read {path}: {exc.strerror}") from exc

    # trees -------------------------------------------------------------------------------------------------

    def import_symlink(self, path) -> Imported:
        target = os.fsencode(os.readlink(path))
        block = serialize_pbnode(PBNode(serialize_unixfs(UnixFSData(SYMLINK, data=target))))
        cid = CID.for_block(block, DAG_PB)
        self.blocks.put(cid, block)
        return Imported(cid, len(block), 0)

    def import_directory(self, path) -> Imported:
        entries = []
        size = 0
        try:
            with os.scandir(path) as it:
                names = sorted((e.name, e.path) for e in it if self.hidden or not e.name.startswith("."))
        except OSError as exc:
            raise ImportFailed(f"cannot list {path}: {exc.strerror}") from exc
        for name, child in names:
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                raise ImportFailed(f"{child!r}: the name is not valid UTF-8, which UnixFS requires") from None
            result = self.import_path(child)
            entries.append(Entry(name, result.cid, result.tsize))
            size += result.size
        estimate = sum(len(e.name.encode("utf-8")) + len(bytes(e.cid)) for e in entries)
        if estimate > SHARD_THRESHOLD:
            cid, tsize = build_shard(entries, self.blocks.put)
            return Imported(cid, tsize, size)
        entries.sort(key=lambda e: e.name.encode("utf-8"))
        block = serialize_pbnode(PBNode(DIR_NODE, tuple(PBLink(e.cid, e.name, e.tsize) for e in entries)))
        cid = CID.for_block(block, DAG_PB)
        self.blocks.put(cid, block)
        return Imported(cid, len(block) + sum(e.tsize for e in entries), size)

    def import_path(self, path) -> Imported:
        """Import a file, directory (recursively) or symlink; the caller pins the result."""
        try:
            st = os.lstat(path)
        except OSError as exc:
            raise ImportFailed(f"cannot add {path}: {exc.strerror}") from exc
        if stat_mod.S_ISLNK(st.st_mode):
            result = self.import_symlink(path)
        elif stat_mod.S_ISDIR(st.st_mode):
            result = self.import_directory(path)
        elif stat_mod.S_ISREG(st.st_mode):
            result = self.import_file(path)
        else:
            raise ImportFailed(f"{path} is not a regular file, directory or symlink (a device, socket or "
                               "pipe cannot be added)")
        self.blocks.flush()
        return result

    def wrap(self, name: str, inner: Imported) -> Imported:
        """A directory holding inner under name (`ipfs add -w`)."""
        block = serialize_pbnode(PBNode(DIR_NODE, (PBLink(inner.cid, name, inner.tsize),)))
        cid = CID.for_block(block, DAG_PB)
        self.blocks.put(cid, block)
        self.blocks.flush()
        return Imported(cid, len(block) + inner.tsize, inner.size)
