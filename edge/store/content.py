"""What the CLI does with content: add, read, export, CAR in and out. Each function is one user action."""

import os
from dataclasses import dataclass

from edge.errors import DecodeError
from edge.store import exporter
from edge.ipld.car import read_car, serialize_header, serialize_section
from edge.ipld.cid import CID, DAG_PB, RAW, parse_cid
from edge.ipld.dagpb import parse_pbnode
from edge.store.errors import QuotaExceeded, StoreError
from edge.store.importer import CHUNK_SIZE, DEFAULT_CHUNKER, BalancedLayout, Chunker, Imported, Importer
from edge.store.repo import Store

CAR_BATCH_BYTES = 16 << 20


def input_size(path: str, hidden: bool = False) -> int:
    """Bytes of regular-file content under path (what an add will read), for progress and the quota check."""
    if not os.path.isdir(path) or os.path.islink(path):
        return os.lstat(path).st_size if os.path.isfile(path) and not os.path.islink(path) else 0
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        if not hidden:
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            filenames = [f for f in filenames if not f.startswith(".")]
        for name in filenames:
            full = os.path.join(dirpath, name)
            if os.path.isfile(full) and not os.path.islink(full):
                total += os.lstat(full).st_size
    return total


def add(store: Store, path: str, *, chunker: Chunker = DEFAULT_CHUNKER, pin: bool = True, hidden: bool = False,
        wrap: bool = False, progress=None) -> Imported:
    """Import path into the store and pin its root (recursively); the pin is the acknowledgement."""
    store.check_fits(input_size(path, hidden), path)
    try:
        with store.shared(), Importer(store.put_many, chunker, hidden=hidden, progress=progress) as imp:
            result = imp.import_path(path)
            if wrap:
                result = imp.wrap(os.path.basename(os.path.abspath(path)), result)
            if pin:
                store.pin(result.cid, name=os.path.basename(os.path.abspath(path)))
    except QuotaExceeded as exc:   # a batch's refusal names blocks; say which add it was
        raise QuotaExceeded(f"adding {path}: {exc}") from None
    return result


def add_bytes(store: Store, data, *, pin_name: str | None = None) -> Imported:
    """Store bytes already in memory as a UnixFS file with the default layout (the CID `hearth add` would give
    them), without the streaming importer's buffers and threads: for small things made here, such as segments."""
    result, blocks = bytes_dag(data)
    put_dag(store, result, blocks, pin_name=pin_name)
    return result


def put_dag(store: Store, result: Imported, blocks, *, pin_name: str | None = None) -> None:
    """Store what bytes_dag made (pinned under pin_name when given)."""
    with store.shared():
        store.put_many(blocks)
        if pin_name is not None:
            store.pin(result.cid, name=pin_name)


def bytes_dag(data) -> tuple[Imported, list]:
    """(the import, its blocks) of bytes in memory, as add_bytes stores them: also how a live segment heard from
    a neighbour is checked against the CID its publisher signed."""
    blocks = []
    layout = BalancedLayout(lambda cid, block: blocks.append((cid, block)))
    view = memoryview(data)
    for off in range(0, max(len(view), 1), CHUNK_SIZE):
        leaf = bytes(view[off:off + CHUNK_SIZE])
        cid = CID.for_block(leaf, RAW)
        blocks.append((cid, leaf))
        layout.add_leaf(cid, len(leaf))
    return layout.finish(), blocks


def hash_only(path: str, *, chunker: Chunker = DEFAULT_CHUNKER, hidden: bool = False, wrap: bool = False,
              progress=None) -> Imported:
    """The CID path would get, storing nothing (`ipfs add --only-hash`)."""
    with Importer(None, chunker, hidden=hidden, progress=progress) as imp:
        result = imp.import_path(path)
        if wrap:
            result = imp.wrap(os.path.basename(os.path.abspath(path)), result)
    return result


def cat(store: Store, path: str, offset: int = 0, length: int | None = None):
    """Yield the bytes of the file at `CID[/name…]`."""
    node = exporter.resolve(store.get, path)
    yield from exporter.iter_file(store.get, node, offset, length)


def get(store: Store, path: str, dest: str) -> int:
    """Write the file or tree at `CID[/name…]` to dest (which must not exist); the content bytes written."""
    if os.path.lexists(dest):
        raise StoreError(f"{dest} already exists; choose another output path or remove it first")
    node = exporter.resolve(store.get, path)
    return exporter.export(store.get, node, dest)


def walk_blocks(store: Store, root: CID):
    """Yield (CID, bytes) for every block under root, depth first, each once (the order `ipfs dag export` uses)."""
    seen = set()
    stack = [root]
    while stack:
        cid = stack.pop()
        key = bytes(cid.to_v1())
        if key in seen:
            continue
        seen.add(key)
        data = store.get(cid)
        yield cid, data
        if cid.codec == DAG_PB:
            stack.extend(reversed([link.cid for link in parse_pbnode(data).links]))
        elif cid.codec != RAW:
            raise DecodeError(f"{cid} is {cid.codec_name}; only raw and dag-pb DAGs can be exported")


def car_export(store: Store, cid: CID, f) -> int:
    """Write a CARv1 of the DAG under cid to binary file f; the bytes written."""
    n = f.write(serialize_header([cid]))
    for block_cid, data in walk_blocks(store, cid):
        n += f.write(serialize_section(block_cid, data))
    return n


@dataclass
class CarImport:
    roots: list[str]
    blocks: int
    new_bytes: int
    pinned: list[str]
    incomplete: list[str]


def car_import(store: Store, f, *, pin: bool = True, progress=None) -> CarImport:
    """Store every block of a CAR (v1 or v2), each checked against its CID; pin the roots that are complete.

    A bad block stops the import with DecodeError; blocks stored before it stay (unpinned, so GC may take them).
    """
    records = read_car(f)
    header = next(records)
    count = new = 0
    batch, batch_bytes = [], 0
    with store.shared():
        for cid, data in records:
            batch.append((cid, data))
            batch_bytes += len(data)
            count += 1
            if batch_bytes >= CAR_BATCH_BYTES:
                new += store.put_many(batch, verify=True)
                if progress:
                    progress(batch_bytes)
                batch, batch_bytes = [], 0
        new += store.put_many(batch, verify=True)
        if progress and batch_bytes:
            progress(batch_bytes)
        pinned, incomplete = [], []
        for root in header.roots:
            _, missing = store.dag(root)
            if missing or not store.has(root):
                incomplete.append(str(root))
            elif pin:
                store.pin(root, name="car import")
                pinned.append(str(root))
    return CarImport([str(r) for r in header.roots], count, new, pinned, incomplete)


def parse_target(text: str) -> CID:
    return parse_cid(text.strip().removeprefix("/ipfs/").split("/")[0])
