"""The signed manifest of a protected pin, and the k+m rule.

A manifest names the root CID, k and m, and per segment: the segment's length in bytes (its pieces' size follows
from it and k: edge/store/stripe.py's piece_size), an 8-byte key of each block it holds in layout order (so a
reader finds the segment of a block without the other segments), the n piece roots, and the holder of each piece
(an index into the manifest's holder list: node ids are 54 characters, a list of small integers is not).
Then the owner, the version, the creation time and the signer: the owner, or the repairer when the owner is gone
(repair.py chooses it deterministically). Rebuilt pieces are byte-identical to the lost ones, so a repair changes
only holders: a manifest signed by someone other than the owner is accepted as an update only when everything
but the holders, version, time and signer is unchanged (check_update).

Canonical DAG-CBOR (edge/ipld/cbor.py), the signature over a domain tag and the map without "sig"; a parsed
manifest must re-serialize to the same bytes, so there is one encoding per manifest. Every dimension is bounded.
"""

import hashlib
import re
from dataclasses import dataclass, replace

from edge.errors import DecodeError, EdgeError
from edge.identity import public_key_of, verify as verify_signature
from edge.ipld import cbor
from edge.ipld.cid import CID
from edge.protect.merkle import HASH
from edge.store.stripe import piece_size

VERSION = 1
DOMAIN = b"hearth-protect-manifest-v1\0"
BLOCK_KEY = 8
MAX_SHARDS = 255               # the codec's limit is 256 shards; 255 keeps a spare target possible
MAX_SEGMENTS = 16384           # 128 GiB of 8 MiB segments in one pin
MAX_HOLDERS = 1024
MAX_BLOCKS_PER_SEGMENT = 4096  # 8 MiB of 2 KiB blocks; real segments hold 32 blocks of 256 KiB
MAX_MANIFEST = 16 << 20
MAX_SEGMENT_LENGTH = (8 << 20) + (1 << 20)   # 8 MiB of blocks and its index


class ProtectError(EdgeError):
    """A protection that cannot be given: k+m against the neighbourhood's size, too few neighbours."""


def defaults(n_eligible: int) -> tuple[int, int]:
    """(k, m) from N, the neighbours eligible to hold pieces (the owner never holds its own): N ≤ 4 → whole copies
    on min(2, N−1) of them; 5–9 → 2+2; 10–16 → 4+4; 17 or more → 8+6. Always k+m ≤ N−1 (a spare for repair)."""
    if n_eligible < 2:
        raise ProtectError(f"protection needs at least 2 eligible neighbours (one to hold a copy, one spare for "
                           f"repair); this neighbourhood has {n_eligible}")
    if n_eligible <= 4:
        return 1, min(2, n_eligible - 1) - 1
    if n_eligible <= 9:
        return 2, 2
    if n_eligible <= 16:
        return 4, 4
    return 8, 6


def parse_protect(text: str, n_eligible: int) -> tuple[int, int]:
    """`--protect auto|K+M` against N eligible neighbours; ProtectError with the numbers when K+M breaks the rule."""
    text = text.strip().lower()
    if text == "auto":
        return defaults(n_eligible)
    match = re.fullmatch(r"(\d{1,3})\+(\d{1,3})", text)
    if not match:
        raise ProtectError(f"--protect takes auto or K+M (e.g. 4+4), not {text!r}")
    k, m = int(match[1]), int(match[2])
    if k < 1:
        raise ProtectError(f"--protect {k}+{m}: k must be at least 1 (1+M is whole copies)")
    if k + m > MAX_SHARDS:
        raise ProtectError(f"--protect {k}+{m}: k+m = {k + m} is over the codec's {MAX_SHARDS} pieces")
    if k + m > n_eligible - 1:
        raise ProtectError(f"--protect {k}+{m}: k+m = {k + m} pieces need k+m+1 = {k + m + 1} eligible neighbours "
                           f"(one spare for repair), this neighbourhood has {n_eligible}; use at most "
                           f"{max(0, n_eligible - 1)} pieces, or auto ({_describe(n_eligible)})")
    return k, m


def _describe(n: int) -> str:
    try:
        k, m = defaults(n)
    except ProtectError:
        return "none possible"
    return f"{1 + m} whole copies" if k == 1 else f"{k}+{m}"


def block_key(cid: CID) -> bytes:
    """A block's 8-byte key in a segment's list (a lookup hint: the decoded blocks are checked by full CID)."""
    return hashlib.sha256(bytes(cid.to_v1())).digest()[:BLOCK_KEY]


@dataclass(frozen=True)
class SegmentEntry:
    length: int              # the segment's bytes (its layout)
    blocks: bytes            # block_key of each block in layout order, concatenated
    roots: tuple             # the n piece roots, 32 bytes each
    holders: tuple           # per piece, an index into Manifest.holders


@dataclass(frozen=True)
class Manifest:
    root: CID
    k: int
    m: int
    segments: tuple
    holders: tuple           # node ids
    owner: str
    version: int
    created: int             # unix seconds
    signer: str = ""
    signature: bytes = b""

    @property
    def n(self) -> int:
        return self.k + self.m

    def piece_size(self, segment: int) -> int:
        return piece_size(self.segments[segment].length, self.k)

    def holder_of(self, segment: int, piece: int) -> str:
        return self.holders[self.segments[segment].holders[piece]]

    def segment_of(self, cid: CID) -> list[int]:
        """The segments whose key list names cid (usually one; a key collision can name two, the CID decides)."""
        key = block_key(cid)
        found = []
        for i, seg in enumerate(self.segments):
            for off in range(0, len(seg.blocks), BLOCK_KEY):
                if seg.blocks[off:off + BLOCK_KEY] == key:
                    found.append(i)
                    break
        return found


def _value(man: Manifest) -> dict:
    """The manifest as a DAG-CBOR value (the reference form; _encode writes the same bytes faster)."""
    return {"v": VERSION, "root": man.root, "k": man.k, "m": man.m, "owner": man.owner, "version": man.version,
            "created": man.created, "signer": man.signer, "holders": list(man.holders),
            "segments": [{"length": s.length, "blocks": s.blocks, "roots": list(s.roots), "at": list(s.holders)}
                         for s in man.segments]}


def _key(name: str) -> bytes:
    return cbor.dumps(name)


_SEGMENT_HEAD = cbor.head(5, 4)
_AT, _ROOTS, _BLOCKS, _LENGTH = _key("at"), _key("roots"), _key("blocks"), _key("length")   # DAG-CBOR key order
_ROOT_HEAD = cbor.head(2, HASH)


def _segment(seg: SegmentEntry) -> bytes:
    return b"".join((_SEGMENT_HEAD, _AT, cbor.head(4, len(seg.holders)), *[cbor.head(0, h) for h in seg.holders],
                     _ROOTS, cbor.head(4, len(seg.roots)), *[_ROOT_HEAD + r for r in seg.roots],
                     _BLOCKS, cbor.head(2, len(seg.blocks)), seg.blocks, _LENGTH, cbor.head(0, seg.length)))


def _encode(man: Manifest, sig: bool) -> bytes:
    """Canonical DAG-CBOR of the manifest (with or without "sig"): the small fields through cbor.dumps, the
    segments (most of a big manifest) written directly; equal to cbor.dumps of _value (tests check it)."""
    value = _value(replace(man, segments=()))
    if sig:
        value["sig"] = man.signature
    keys = sorted(value, key=lambda k: (len(k.encode()), k.encode()))
    parts = [cbor.head(5, len(keys))]
    for k in keys:
        parts.append(_key(k))
        if k == "segments":
            parts.append(cbor.head(4, len(man.segments)))
            parts.extend(_segment(seg) for seg in man.segments)
        else:
            parts.append(cbor.dumps(value[k]))
    return b"".join(parts)


def sign(man: Manifest, identity) -> Manifest:
    """The manifest signed by identity (the owner, or the chosen repairer), with the signer set."""
    man = replace(man, signer=identity.node_id, signature=b"")
    return replace(man, signature=identity.sign(DOMAIN + _encode(man, sig=False)))


def serialize(man: Manifest) -> bytes:
    return _encode(man, sig=True)


def _need(cond: bool, what: str):
    if not cond:
        raise DecodeError(f"a protect manifest {what}")


def parse(raw: bytes) -> Manifest:
    """A manifest from outside, bounded, canonical and signed by its signer; DecodeError saying what is wrong."""
    _need(len(raw) <= MAX_MANIFEST, f"is at most {MAX_MANIFEST} bytes, this one {len(raw)}")
    value = cbor.loads(raw)
    keys = {"v", "root", "k", "m", "owner", "version", "created", "signer", "holders", "segments", "sig"}
    _need(isinstance(value, dict) and set(value) == keys, f"is a map of {', '.join(sorted(keys))}")
    _need(value["v"] == VERSION, f"of format {value['v']!r} is not known here (this node reads {VERSION})")
    _need(isinstance(value["root"], CID), "names its root as a CID")
    k, m = value["k"], value["m"]
    _need(isinstance(k, int) and isinstance(m, int) and k >= 1 and m >= 0 and k + m <= MAX_SHARDS,
          f"has 1 ≤ k and k+m ≤ {MAX_SHARDS}")
    for name in ("version", "created"):
        _need(isinstance(value[name], int) and 0 <= value[name] < 1 << 63, f"has a non-negative {name}")
    holders = value["holders"]
    _need(isinstance(holders, list) and len(holders) <= MAX_HOLDERS, f"lists at most {MAX_HOLDERS} holders")
    for node in [value["owner"], value["signer"], *holders]:
        public_key_of(node)        # DecodeError naming the bad id
    segs = value["segments"]
    _need(isinstance(segs, list) and 1 <= len(segs) <= MAX_SEGMENTS, f"has 1 to {MAX_SEGMENTS} segments")
    entries = []
    for seg in segs:
        _need(isinstance(seg, dict) and set(seg) == {"length", "blocks", "roots", "at"},
              "segment is a map of length, blocks, roots and at")
        length, blocks, roots, at = seg["length"], seg["blocks"], seg["roots"], seg["at"]
        _need(isinstance(length, int) and 4 <= length <= MAX_SEGMENT_LENGTH,
              f"segment is 4 to {MAX_SEGMENT_LENGTH} bytes")
        _need(isinstance(blocks, bytes) and 0 < len(blocks) <= MAX_BLOCKS_PER_SEGMENT * BLOCK_KEY
              and len(blocks) % BLOCK_KEY == 0, f"segment lists 1 to {MAX_BLOCKS_PER_SEGMENT} block keys")
        _need(isinstance(roots, list) and len(roots) == k + m
              and all(isinstance(r, bytes) and len(r) == HASH for r in roots), "segment has k+m piece roots")
        _need(isinstance(at, list) and len(at) == k + m
              and all(isinstance(h, int) and 0 <= h < len(holders) for h in at), "segment names k+m holders")
        entries.append(SegmentEntry(length, blocks, tuple(roots), tuple(at)))
    _need(isinstance(value["sig"], bytes) and len(value["sig"]) == 64, "carries a 64-byte signature")
    man = Manifest(value["root"], k, m, tuple(entries), tuple(holders), value["owner"], value["version"],
                   value["created"], value["signer"], value["sig"])
    _need(serialize(man) == bytes(raw), "is in canonical DAG-CBOR")
    _need(verify_signature(man.signer, DOMAIN + _encode(man, sig=False), man.signature),
          f"is not signed by its signer {man.signer}")
    return man


def check_update(current: Manifest | None, new: Manifest, repairers=()) -> str:
    """'' when `new` may replace `current` (same pin, a higher version, signed by the owner or, for a change of
    holders alone, by one of `repairers`); else the reason it may not."""
    if current is None:
        return "" if new.signer == new.owner else "a first manifest must be signed by its owner"
    if (new.root, new.owner) != (current.root, current.owner):
        return "the manifest is for another pin or owner"
    if new.version <= current.version:
        return f"version {new.version} does not supersede version {current.version}"
    if new.signer == new.owner:
        return ""
    if new.signer not in repairers:
        return f"{new.signer} is neither the owner nor the chosen repairer"
    same = ((new.k, new.m, len(new.segments)) == (current.k, current.m, len(current.segments))
            and all((a.length, a.blocks, a.roots) == (b.length, b.blocks, b.roots)
                    for a, b in zip(new.segments, current.segments)))
    return "" if same else "a repairer may change only the holders"


def chain(found) -> Manifest | None:
    """The newest manifest the owner's chain supports among found (parsed, signatures checked): the owner's
    newest, then each newer one signed by a repairer that changes only holders (manifest.check_update), the
    repairer being one of the holders the owner's manifest names (repair.py picks it among them when the owner is
    gone); None without an owner-signed one."""
    owners = [m for m in found if not check_update(None, m)]
    if not owners:
        return None
    base = max(owners, key=lambda m: m.version)
    current = base
    for update in sorted((m for m in found if m.signer != m.owner and m.owner == base.owner),
                         key=lambda m: m.version):
        if not check_update(current, update, repairers=base.holders):
            current = update
    return current


def pin_owners(kept, lease_owner: str) -> set:
    """Whose pin the pieces a holder keeps under lease_owner's lease are: lease_owner's own, or that of the owner
    its own signed manifests among kept name (a repairer places pieces under its lease and hands over its
    manifest, signed by it, naming the pin's owner)."""
    return {m.owner for m in kept if m.signer == lease_owner} | {lease_owner}


def custodians(kept, pin, lease_owner: str) -> dict:
    """{node: the piece roots it may renew} for a holder's pieces of pin under lease_owner's lease, from the
    manifests it keeps (parsed, signatures checked): the owner's chain (chain) gives the newest manifest, and its
    owner and every holder it names may renew every piece it lists (the repairer renews a whole pin when the
    owner is gone). A manifest signed by anyone else never enters the chain, so it names nobody here."""
    out: dict[str, set] = {}
    for owner in pin_owners(kept, lease_owner):
        newest = chain([m for m in kept if m.owner == owner])
        if newest is None or str(newest.root) != str(pin):
            continue
        roots = {root for seg in newest.segments for root in seg.roots}
        for node in (*newest.holders, newest.owner):
            out.setdefault(node, set()).update(roots)
    return out


def extends(kept, lease_owners, pin, new: Manifest) -> str:
    """'' when new belongs to the verified chain of pin's manifests among kept, for a pin whose pieces a holder
    keeps under lease_owners' leases: a manifest the owner signed, or a change of holders, signed by a holder the
    owner named, that is the chain's newest with it; else the reason it does not."""
    if str(new.root) != str(pin):
        return "the manifest is for another pin"
    if new.owner not in set().union(*(pin_owners(kept, o) for o in lease_owners)):
        return f"this node holds no piece of {new.owner}'s pin {pin}"
    if new.signer == new.owner:   # the owner's own word, signature checked: any version (the chain takes its newest)
        return ""
    if chain([m for m in kept if m.owner == new.owner] + [new]) != new:
        return "it does not extend its owner's chain (only the owner, or a holder it named, signs the next version)"
    return ""


def make(root: CID, k: int, m: int, segments, owner: str, created: int, version: int = 1) -> Manifest:
    """An unsigned manifest from [(segment length, its block CIDs, its n piece roots, its n holders' node ids)]."""
    table, entries = {}, []
    for length, cids, roots, holders in segments:
        if len(roots) != k + m or len(holders) != k + m:
            raise ValueError(f"each segment needs {k + m} piece roots and holders")
        at = tuple(table.setdefault(h, len(table)) for h in holders)
        entries.append(SegmentEntry(length, b"".join(block_key(c) for c in cids), tuple(roots), at))
    return Manifest(root, k, m, tuple(entries), tuple(table), owner, version, created)


def with_holders(man: Manifest, moves: dict, created: int) -> Manifest:
    """The next version (unsigned) with {(segment, piece): new holder's node id} applied; holders no piece names
    any more leave the table."""
    chosen = {(s, p): man.holder_of(s, p) for s in range(len(man.segments)) for p in range(man.n)}
    chosen.update(moves)
    segs = [(seg.length, seg.blocks, seg.roots, [chosen[(s, p)] for p in range(man.n)])
            for s, seg in enumerate(man.segments)]
    table, entries = {}, []
    for length, blocks, roots, holders in segs:
        entries.append(SegmentEntry(length, blocks, roots, tuple(table.setdefault(h, len(table)) for h in holders)))
    return replace(man, segments=tuple(entries), holders=tuple(table), version=man.version + 1, created=created,
                   signer="", signature=b"")
