"""Repair orders (issue 16): the repairer's signed word that one node may read the pieces of one segment.

When the repairer (the pin's owner, or, with the owner gone, the holder the manifest chain names) gives piece i of
segment S a new holder, it signs an order naming the pin's root CID, S, i, the new holder's node id, the version of
the manifest the repair starts from and an expiry. The new holder presents it with every GetPiece it sends the
segment's holders while it fetches k pieces to compute its own. A holder serves a read of a piece to a node that
holds (or held) another piece of the same segment only with such an order (edge/transport/pieces.py): a holder
that deleted its piece cannot rebuild audit answers from its siblings' pieces on demand (docs/protection.md).

Canonical DAG-CBOR; the signature is over a domain tag and the map without "sig". Parsing is bounded (MAX_ORDER
bytes) and checks every node id and the signature; who may sign is the checker's business (`check`).
"""

from dataclasses import dataclass, replace

from edge.errors import DecodeError
from edge.identity import public_key_of, verify as verify_signature
from edge.ipld import cbor
from edge.ipld.cid import CID

DOMAIN = b"hearth-repair-order-v1\0"
MAX_ORDER = 512          # bytes of a serialized order (a real one is about 290)
LIFETIME = 3600          # seconds an order the repairer signs stays valid: one repair, paced, with retries
MAX_INDEX = 255
MAX_SEGMENT = 1 << 20
KEYS = {"pin", "segment", "piece", "holder", "version", "expires", "signer", "sig"}


@dataclass(frozen=True)
class Order:
    pin: CID
    segment: int
    piece: int
    holder: str          # the node that will hold the piece: the one who may read the segment's other pieces
    version: int         # the manifest version the repair starts from
    expires: int         # seconds since the epoch
    signer: str = ""
    sig: bytes = b""


def _value(order: Order, sig: bool) -> dict:
    value = {"pin": order.pin, "segment": order.segment, "piece": order.piece, "holder": order.holder,
             "version": order.version, "expires": order.expires, "signer": order.signer}
    if sig:
        value["sig"] = order.sig
    return value


def sign(order: Order, identity) -> Order:
    order = replace(order, signer=identity.node_id, sig=b"")
    return replace(order, sig=identity.sign(DOMAIN + cbor.dumps(_value(order, sig=False))))


def serialize(order: Order) -> bytes:
    return cbor.dumps(_value(order, sig=True))


def parse(raw: bytes) -> Order:
    """An order from outside, bounded, canonical and signed by its signer; DecodeError saying what is wrong."""
    if not 0 < len(raw) <= MAX_ORDER:
        raise DecodeError(f"a repair order is 1 to {MAX_ORDER} bytes, not {len(raw)}")
    value = cbor.loads(bytes(raw))
    if not isinstance(value, dict) or set(value) != KEYS:
        raise DecodeError(f"a repair order is a map of {', '.join(sorted(KEYS))}")
    if not isinstance(value["pin"], CID):
        raise DecodeError("a repair order names its pin as a CID")
    for name, high in (("segment", MAX_SEGMENT), ("piece", MAX_INDEX), ("version", 1 << 63), ("expires", 1 << 40)):
        if not isinstance(value[name], int) or not 0 <= value[name] <= high:
            raise DecodeError(f"a repair order's {name} is an integer from 0 to {high}")
    for name in ("holder", "signer"):
        public_key_of(value[name])   # DecodeError naming the bad id
    if not isinstance(value["sig"], bytes) or len(value["sig"]) != 64:
        raise DecodeError("a repair order carries a 64-byte signature")
    order = Order(value["pin"], value["segment"], value["piece"], value["holder"], value["version"],
                  value["expires"], value["signer"], value["sig"])
    if serialize(order) != bytes(raw):
        raise DecodeError("a repair order is in canonical DAG-CBOR")
    if not verify_signature(order.signer, DOMAIN + cbor.dumps(_value(order, sig=False)), order.sig):
        raise DecodeError(f"the repair order is not signed by its signer {order.signer}")
    return order


def check(order: Order, pin: str, segment: int, requester: str, signers, now: float) -> str:
    """'' when order (parsed: its signature holds) lets requester read pieces of segment of pin now, signers being
    the nodes that may order repairs of that pin (the owner, the holders its verified manifest chain names), never
    the requester itself; else why not."""
    if str(order.pin) != pin or order.segment != segment:
        return "the repair order is for another segment"
    if order.holder != requester:
        return "the repair order names another node"
    if order.expires <= now:
        return "the repair order has expired; ask the repairer for a new one"
    if order.signer == requester or order.signer not in signers:
        return "the repair order is not signed by the pin's owner or a repairer its manifests name"
    return ""
