"""DAG-PB nodes (the IPLD codec 0x70): strict parse and canonical serialize, per the DAG-PB specification.

message PBLink { optional bytes Hash = 1; optional string Name = 2; optional uint64 Tsize = 3; }
message PBNode { repeated PBLink Links = 2; optional bytes Data = 1; }
Bytes on the wire put every link before the data; a decoder refuses anything else, as go-codec-dagpb does.
"""

from dataclasses import dataclass, field

from edge.errors import DecodeError
from edge.ipld.cid import CID, cid_from_bytes
from edge.ipld.protobuf import BYTES, VARINT, bytes_field, iter_fields, varint_field

MAX_NODE_BYTES = 2 << 20  # a block is at most 1 MiB; allow a margin for foreign DAGs, refuse beyond


@dataclass(frozen=True, slots=True)
class PBLink:
    cid: CID
    name: str | None = None
    tsize: int | None = None


@dataclass(frozen=True, slots=True)
class PBNode:
    data: bytes | None = None
    links: tuple[PBLink, ...] = field(default_factory=tuple)


def serialize_link(link: PBLink) -> bytes:
    out = bytes_field(1, bytes(link.cid))
    if link.name is not None:
        out += bytes_field(2, link.name.encode("utf-8"))
    if link.tsize is not None:
        out += varint_field(3, link.tsize)
    return out


def serialize_pbnode(node: PBNode) -> bytes:
    """The canonical bytes of node (links in the order given: callers sort directory links by name)."""
    parts = [bytes_field(2, serialize_link(link)) for link in node.links]
    if node.data is not None:
        parts.append(bytes_field(1, node.data))
    return b"".join(parts)


def parse_link(buf) -> PBLink:
    cid = name = tsize = None
    last = 0
    for number, wire, value, start in iter_fields(buf, "DAG-PB link"):
        if number <= last:
            raise DecodeError(f"DAG-PB link: field {number} at byte {start} is repeated or out of order "
                              "(Hash, Name, Tsize is the only order allowed)")
        last = number
        if number == 1 and wire == BYTES:
            cid = cid_from_bytes(value)
        elif number == 2 and wire == BYTES:
            try:
                name = bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                raise DecodeError("DAG-PB link: Name is not valid UTF-8") from None
        elif number == 3 and wire == VARINT:
            tsize = value
        else:
            raise DecodeError(f"DAG-PB link: unexpected field {number} (wire type {wire}) at byte {start}")
    if cid is None:
        raise DecodeError("DAG-PB link has no Hash")
    return PBLink(cid, name, tsize)


def parse_pbnode(buf) -> PBNode:
    """The node in buf; DecodeError for anything the DAG-PB specification forbids."""
    if len(buf) > MAX_NODE_BYTES:
        raise DecodeError(f"DAG-PB node of {len(buf)} bytes is over the {MAX_NODE_BYTES}-byte limit")
    links = []
    data = None
    for number, wire, value, start in iter_fields(buf, "DAG-PB node"):
        if number == 2 and wire == BYTES:
            if data is not None:
                raise DecodeError(f"DAG-PB node: a link at byte {start} comes after Data (links must come first)")
            try:
                links.append(parse_link(value))
            except DecodeError as exc:
                raise DecodeError(f"DAG-PB node: link {len(links)}: {exc}") from None
        elif number == 1 and wire == BYTES:
            if data is not None:
                raise DecodeError(f"DAG-PB node: Data appears twice (again at byte {start})")
            data = bytes(value)
        else:
            raise DecodeError(f"DAG-PB node: unexpected field {number} (wire type {wire}) at byte {start}")
    return PBNode(data, tuple(links))
