"""Every parser (varint, multibase, CID, DAG-PB, UnixFS, HAMT, DAG-CBOR, CAR): golden bytes, round trips, and
random or mutated input that must give DecodeError with a message (never another exception, never a hang)."""

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.errors import DecodeError
from edge.ipld import car, cbor, hamt, multibase
from edge.ipld.cid import CID, DAG_PB, RAW, cid_from_bytes, decode_cid_bytes, parse_cid
from edge.ipld.dagpb import PBLink, PBNode, parse_pbnode, serialize_pbnode
from edge.ipld.unixfs import FILE, HAMT_SHARD, UnixFSData, parse_unixfs, serialize_unixfs
from edge.ipld.varint import decode_uvarint, encode_uvarint

HELLO = "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"
# A three-entry HAMT shard (entries "a", "b", "c", each a raw leaf of its own name), as js-ipfs-unixfs-importer
# 17.1.1 wrote it with a 1-byte shard threshold: buckets 0x7A (b), 0x85 (a), 0x8E (c).
SHARD_HEX = (
    "122d0a24015512203e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d12033741621801"
    "122d0a2401551220ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb12033835611801"
    "122d0a24015512202e7d2c03a9507ae265ecf5b5356885a53393a2029d241394997265a1a25aefc6120338456318010a1b0805"
    "12124020040000000000000000000000000000002822308002")
SHARD_CID = "bafybeicroixbxz6jzngqq3jt26j33sqkpbczszihfpsmqty2zbqnvyec5y"


def mutations(sample: bytes):
    """A strategy of byte strings near sample: bytes flipped, cut short, spliced, grown."""
    def mutate(args):
        kind, pos, value, extra = args
        if not sample:
            return extra
        pos %= len(sample)
        if kind == 0:
            return sample[:pos] + bytes([value]) + sample[pos + 1:]
        if kind == 1:
            return sample[:pos]
        if kind == 2:
            return sample[:pos] + extra + sample[pos:]
        return sample[:pos] + sample[pos + 1 + value % 8:]
    return st.tuples(st.integers(0, 3), st.integers(0, 1 << 20), st.integers(0, 255),
                     st.binary(max_size=16)).map(mutate)


def clean(fn, data):
    """fn(data) either works or raises DecodeError with a message."""
    try:
        fn(data)
    except DecodeError as exc:
        assert str(exc)


# varints -----------------------------------------------------------------------------------------------------

@given(st.integers(0, (1 << 63) - 1))
def test_varint_round_trips(n):
    raw = encode_uvarint(n)
    assert decode_uvarint(raw) == (n, len(raw))


def test_varint_golden_and_bad():
    assert encode_uvarint(300) == b"\xac\x02"
    for bad, words in ((b"\x80", "truncated"), (b"\x80\x00", "minimally"), (b"\xff" * 10, "longer")):
        with pytest.raises(DecodeError, match=words):
            decode_uvarint(bad)
    with pytest.raises(ValueError):
        encode_uvarint(1 << 63)


@given(st.binary(max_size=12))
def test_varint_fuzz(data):
    clean(decode_uvarint, data)


# multibase and CIDs ---------------------------------------------------------------------------------------------

@given(st.sampled_from(sorted(set(multibase.BASES.values()))), st.binary(max_size=64))
def test_multibase_round_trips(base, data):
    assert multibase.decode(multibase.encode(base, data)) == (base, data)


def test_cid_golden():
    cid = parse_cid(HELLO)
    assert (cid.version, cid.codec, cid.hash_code) == (1, RAW, 0x12)
    assert cid == CID.for_block(b"hello world")
    assert bytes(cid).hex().startswith("01551220")
    assert parse_cid(bytes(cid)) == cid
    assert parse_cid(cid.encode("base58btc")) == cid and parse_cid(cid.encode("base16")) == cid
    assert cid.matches(b"hello world") and not cid.matches(b"hello world!")


@pytest.mark.parametrize("text, words", [
    ("", "empty"),
    ("Qm123", "unknown multibase prefix"),
    ("bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5", "impossible length|truncated"),
    ("bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5eaa", "unexpected byte"),
    ("xyz", "unknown multibase prefix"),
    ("bAFK", "mixes letter cases"),
    ("zQmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1n", "CIDv0 is written in base58btc"),
    ("f01551200", "sha2-256 multihash declares a 0-byte digest"),
    ("f01551300", "unsupported multihash"),
    ("f02551220" + "00" * 32, "version 2"),
    ("QmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1O", "not a base58btc character"),
])
def test_cid_errors_say_what_is_wrong(text, words):
    with pytest.raises(DecodeError, match=words):
        parse_cid(text)


@given(st.text(max_size=80))
def test_cid_text_fuzz(text):
    clean(parse_cid, text)


@given(mutations(bytes(parse_cid(HELLO))))
def test_cid_bytes_mutated(data):
    clean(cid_from_bytes, data)


@given(mutations(bytes(parse_cid(HELLO))))
def test_a_cid_built_through_its_slots_is_the_cid_built_by_its_init(raw):
    """cid_from_bytes builds the common CID (v1, sha2-256) through its slots, not the dataclass's __init__: it is
    equal to, hashes like and writes the same bytes as the CID its fields make; anything else reads as before
    (decode_cid_bytes) or gives DecodeError."""
    try:
        cid = cid_from_bytes(raw)
    except DecodeError:
        return
    made = CID(cid.version, cid.codec, cid.multihash)
    assert type(cid) is CID and cid == made and hash(cid) == hash(made) and bytes(cid) == bytes(raw)
    assert cid == decode_cid_bytes(raw)[0]


@given(mutations(HELLO.encode()))
def test_cid_text_mutated(data):
    clean(parse_cid, data.decode("latin-1"))


# DAG-PB, UnixFS, HAMT -----------------------------------------------------------------------------------------------

def test_shard_golden_bytes_parse_and_rebuild():
    raw = bytes.fromhex(SHARD_HEX)
    assert str(CID.for_block(raw, DAG_PB)) == SHARD_CID
    node = parse_pbnode(raw)
    assert serialize_pbnode(node) == raw
    fs = parse_unixfs(node.data)
    assert (fs.type, fs.fanout, fs.hash_type) == (HAMT_SHARD, 256, 0x22)
    assert serialize_unixfs(fs) == node.data
    assert [link.name for link in node.links] == ["7Ab", "85a", "8Ec"]
    entries = {e.name: e.cid for e in hamt.iter_shard(node, lambda c: pytest.fail("no child shards"))}
    assert entries == {n: CID.for_block(n.encode()) for n in "abc"}
    rebuilt = []
    cid, _ = hamt.build_shard([hamt.Entry(n, CID.for_block(n.encode()), 1) for n in "cab"],
                              lambda c, b: rebuilt.append(b))
    assert str(cid) == SHARD_CID and rebuilt == [raw]
    assert hamt.lookup(node, "b", None).cid == CID.for_block(b"b")
    assert hamt.lookup(node, "zz", None) is None


links = st.builds(PBLink, st.sampled_from([parse_cid(HELLO), CID.for_block(b"x", DAG_PB)]),
                  st.one_of(st.none(), st.text(max_size=20)), st.one_of(st.none(), st.integers(0, 1 << 40)))


@given(st.builds(PBNode, st.one_of(st.none(), st.binary(max_size=64)), st.lists(links, max_size=5).map(tuple)))
def test_dagpb_round_trips(node):
    assert parse_pbnode(serialize_pbnode(node)) == node


@pytest.mark.parametrize("raw, words", [
    (b"\x0a\x00\x12\x00", "after Data"),
    (b"\x0a\x00\x0a\x00", "twice"),
    (b"\x12\x00", "no Hash"),
    (b"\x18\x01", "unexpected field 3"),
    (b"\x12\x04\x12\x00\x0a\x00", "out of order"),
    (b"\x0a\x05ab", "declares 5 bytes"),
])
def test_dagpb_refuses_what_the_spec_forbids(raw, words):
    with pytest.raises(DecodeError, match=words):
        parse_pbnode(raw)


@given(mutations(bytes.fromhex(SHARD_HEX)))
@settings(max_examples=300)
def test_dagpb_unixfs_hamt_mutated(data):
    def walk(buf):
        node = parse_pbnode(buf)
        if node.data is not None:
            parse_unixfs(node.data)
            try:
                list(hamt.iter_shard(node, lambda c: parse_pbnode(bytes.fromhex(SHARD_HEX))))
                hamt.lookup(node, "a", lambda c: parse_pbnode(bytes.fromhex(SHARD_HEX)))
            except DecodeError:
                pass
    clean(walk, data)


@given(st.binary(max_size=200))
def test_dagpb_and_unixfs_random(data):
    clean(parse_pbnode, data)
    clean(parse_unixfs, data)


@given(st.builds(UnixFSData, st.sampled_from([0, 1, 2, 4, 5]), st.one_of(st.none(), st.binary(max_size=20)),
                 st.one_of(st.none(), st.integers(0, 1 << 50)), st.lists(st.integers(0, 1 << 20), max_size=5).map(tuple),
                 st.one_of(st.none(), st.just(0x22)), st.one_of(st.none(), st.just(256)),
                 st.one_of(st.none(), st.integers(0, 0o7777)),
                 st.one_of(st.none(), st.tuples(st.integers(-(1 << 40), 1 << 40),
                                                st.one_of(st.none(), st.integers(1, 999_999_999))))))
def test_unixfs_round_trips(d):
    assert parse_unixfs(serialize_unixfs(d)) == d


def test_unixfs_errors():
    with pytest.raises(DecodeError, match="no Type"):
        parse_unixfs(b"")
    with pytest.raises(DecodeError, match="unknown Type 9"):
        parse_unixfs(b"\x08\x09")
    assert parse_unixfs(serialize_unixfs(UnixFSData(FILE, filesize=3, blocksizes=(1, 2)))).blocksizes == (1, 2)


# DAG-CBOR and CAR -------------------------------------------------------------------------------------------------

def _sample_car(version=1):
    blocks = [(CID.for_block(b"hello world"), b"hello world"), (CID.for_block(b"x"), b"x")]
    if version == 2:
        return car.serialize_v2([blocks[0][0]], blocks), blocks
    out = io.BytesIO()
    car.write_car(out, [blocks[0][0]], blocks)
    return out.getvalue(), blocks


def test_car_header_golden():
    header = car.serialize_header([parse_cid(HELLO)])
    # {"roots": [42(h'00' + cid)], "version": 1}, keys in DAG-CBOR order
    assert header.hex() == ("3a" "a2" "65726f6f7473" "81" "d82a" "5825" "00" + bytes(parse_cid(HELLO)).hex()
                            + "6776657273696f6e" "01")
    assert cbor.loads(header[1:]) == {"roots": [parse_cid(HELLO)], "version": 1}


@pytest.mark.parametrize("version", [1, 2])
def test_car_round_trips(version):
    raw, blocks = _sample_car(version)
    records = list(car.read_car(io.BytesIO(raw)))
    assert records[0].roots == (blocks[0][0],)
    assert records[1:] == blocks


@pytest.mark.parametrize("raw, words", [
    (b"", "truncated"),
    (b"\x00", "outside 1"),
    (b"\x05abc", "truncated"),
    (b"\x01\xa0", "version"),
    (bytes.fromhex("0aa16776657273696f6e02") + b"\0" * 10, "CARv2 header is truncated"),
])
def test_car_errors(raw, words):
    with pytest.raises(DecodeError, match=words):
        list(car.read_car(io.BytesIO(raw)))


@given(st.sampled_from([1, 2]).flatmap(lambda v: mutations(_sample_car(v)[0])))
@settings(max_examples=400)
def test_car_mutated(data):
    clean(lambda d: list(car.read_car(io.BytesIO(d))), data)


@given(st.binary(max_size=120))
def test_cbor_and_car_random(data):
    clean(cbor.loads, data)
    clean(lambda d: list(car.read_car(io.BytesIO(d))), data)


@given(st.recursive(st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1) | st.text(max_size=10)
                    | st.binary(max_size=10),
                    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4),
                    max_leaves=12))
def test_cbor_round_trips(value):
    assert cbor.loads(cbor.dumps(value)) == value


def _reference_dumps(value) -> bytes:
    """DAG-CBOR written the plain way, straight from the rules (head() per item), to hold the fast encoder to."""
    if value is None:
        return b"\xf6"
    if isinstance(value, bool):
        return b"\xf5" if value else b"\xf4"
    if isinstance(value, int):
        return cbor.head(0, value) if value >= 0 else cbor.head(1, -1 - value)
    if isinstance(value, str):
        return cbor.head(3, len(value.encode())) + value.encode()
    if isinstance(value, (bytes, bytearray)):
        return cbor.head(2, len(value)) + bytes(value)
    if isinstance(value, CID):
        return cbor.head(6, 42) + cbor.head(2, len(bytes(value)) + 1) + b"\0" + bytes(value)
    if isinstance(value, (list, tuple)):
        return cbor.head(4, len(value)) + b"".join(map(_reference_dumps, value))
    keys = sorted(value, key=lambda k: (len(k.encode()), k.encode()))
    return cbor.head(5, len(keys)) + b"".join(_reference_dumps(k) + _reference_dumps(value[k]) for k in keys)


@given(st.recursive(st.none() | st.booleans() | st.integers(-(1 << 64), (1 << 64) - 1) | st.text(max_size=10)
                    | st.binary(max_size=300) | st.sampled_from([CID.for_block(b"x"), CID.for_block(b"y", 0x71)]),
                    lambda kids: st.lists(kids, max_size=4) | st.tuples(kids, kids)
                    | st.dictionaries(st.text(max_size=30), kids, max_size=5),
                    max_leaves=16))
def test_cbor_writes_what_the_rules_say(value):
    assert cbor.dumps(value) == _reference_dumps(value)


def test_cbor_integer_heads_at_every_boundary_and_subclasses_as_their_value():
    import enum

    class Level(enum.IntEnum):
        HIGH = 300

    for n in (0, 23, 24, 255, 256, 65535, 65536, (1 << 32) - 1, 1 << 32, (1 << 64) - 1):
        assert cbor.dumps(n) == cbor.head(0, n) and cbor.loads(cbor.dumps(n)) == n
        assert cbor.dumps(-1 - n) == cbor.head(1, n) and cbor.loads(cbor.dumps(-1 - n)) == -1 - n
    for n in (1 << 64, -1 - (1 << 64)):
        with pytest.raises(ValueError, match="does not fit"):
            cbor.dumps(n)
    assert cbor.dumps(Level.HIGH) == cbor.dumps(300)
    assert cbor.dumps({"b": bytearray(b"ab"), "a": (1, 2)}) == cbor.dumps({"a": [1, 2], "b": b"ab"})
    with pytest.raises(TypeError, match="float"):
        cbor.dumps(1.5)


def test_cbor_refuses_deep_nesting_and_huge_claims():
    with pytest.raises(DecodeError, match="deeper"):
        cbor.loads(b"\x81" * 40 + b"\x00")
    with pytest.raises(DecodeError, match="over the"):
        cbor.loads(b"\x9b" + (1 << 40).to_bytes(8, "big"))


def test_importing_the_wire_formats_loads_neither_the_store_nor_sqlite():
    """The content formats sit below the store: a process that only parses messages (a fuzzer, a relay, a
    tool reading a CAR) loads no block store and no SQLite."""
    import subprocess
    import sys
    code = ("import sys, edge.wire, edge.ipld.car, edge.ipld.hamt, edge.fleet.certificates, edge.fleet.revocations; "
            "print(sorted(m for m in sys.modules if m == 'sqlite3' or m.startswith('edge.store')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout
