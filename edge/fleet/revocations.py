"""Revocation lists: the fleet key's signed list of the nodes and certificates it no longer admits, and the
files it travels in (the operator's list, the enrollment server's revoked.cbor, a node's copy).

    revocation list      DAG-CBOR {"use": "revoke", "fleet", "seq": n, "nodes": [node ids], "serials": [hex],
                         "sig": fleet sig of "hearth-revocations\\0" + the map without "sig"} (`hearth fleet revoke`)

A list is honoured (edge/fleet/certificates.py keeps the process's table that admission consults) only when the
same fleet signed it with a higher sequence number than the one held: an older list never replaces a newer one.
"""

import logging
import os

from edge.atomic import write_atomic
from edge.errors import DecodeError
from edge.fleet.certificates import CertificateError, Revocations, honour
from edge.identity import Identity, check_node_id, node_id_of, verify
from edge.ipld import cbor

log = logging.getLogger(__name__)

MAX_REVOKED = 10_000                  # entries of a revocation list (nodes + serials)
MAX_REVOCATIONS = 1 << 20             # bytes of a revocation list
REVOKED_FILE = "revoked.cbor"         # the newest list, in a node's data directory and the server's


def sign_revocations(fleet: Identity, seq: int, nodes, serials) -> bytes:
    nodes, serials = sorted(set(nodes)), sorted(set(serials))
    for n in nodes:
        check_node_id(n)
    for s in serials:
        if len(s) != 32 or any(c not in "0123456789abcdef" for c in s):
            raise CertificateError(f"{s!r} is not a certificate serial (32 hex digits)")
    if len(nodes) + len(serials) > MAX_REVOKED:
        raise CertificateError(f"a revocation list holds at most {MAX_REVOKED} entries")
    body = {"use": "revoke", "fleet": fleet.public_key, "seq": seq, "nodes": nodes, "serials": serials}
    return cbor.dumps(body | {"sig": fleet.sign(b"hearth-revocations\0" + cbor.dumps(body))})


def parse_revocations(data: bytes, fleet_key: bytes) -> Revocations:
    """A revocation list fleet_key signed; CertificateError saying why not otherwise."""
    if not isinstance(data, (bytes, bytearray)) or len(data) > MAX_REVOCATIONS:
        raise CertificateError(f"a revocation list is at most {MAX_REVOCATIONS} bytes")
    try:
        value = cbor.loads(data)
    except DecodeError as exc:
        raise CertificateError(f"the revocation list is malformed: {exc}") from None
    if not isinstance(value, dict) or set(value) != {"use", "fleet", "seq", "nodes", "serials", "sig"} \
            or value["use"] != "revoke" or not isinstance(value["seq"], int) or value["seq"] < 0 \
            or not isinstance(value["nodes"], list) or not isinstance(value["serials"], list) \
            or len(value["nodes"]) + len(value["serials"]) > MAX_REVOKED:
        raise CertificateError("the revocation list does not have exactly use = revoke, fleet, seq, nodes, "
                               "serials and sig")
    if value["fleet"] != fleet_key:
        raise CertificateError("the revocation list is from another fleet")
    body = {k: value[k] for k in ("use", "fleet", "seq", "nodes", "serials")}
    if not isinstance(value["sig"], bytes) or \
            not verify(node_id_of(fleet_key), b"hearth-revocations\0" + cbor.dumps(body), value["sig"]):
        raise CertificateError("the revocation list's signature is not the fleet key's")
    try:
        keys = frozenset(check_node_id(n) for n in value["nodes"])
    except (DecodeError, TypeError):
        raise CertificateError("the revocation list names something that is not a node id") from None
    if not all(isinstance(s, str) for s in value["serials"]):
        raise CertificateError("the revocation list names a serial that is not text")
    return Revocations(bytes(fleet_key), value["seq"], tuple(value["nodes"]), frozenset(value["serials"]), keys,
                       bytes(data))




def extend(key: Identity, list_file: str, items) -> Revocations:
    """The operator's `hearth fleet revoke`: sign, with the fleet key, a list holding node ids and certificate
    serials (items) and every entry of the list in list_file (read if it exists), one sequence number higher,
    and write it there. CertificateError when the old list is not this fleet's or an item is malformed."""
    nodes, serials, seq = set(), set(), 0
    if os.path.exists(list_file):
        with open(list_file, "rb") as f:
            try:
                old = parse_revocations(f.read(), key.public_key)
            except CertificateError as exc:
                raise CertificateError(f"{list_file}: {exc}; give another --list") from None
        nodes, serials, seq = set(old.nodes), set(old.serials), old.seq
    for item in items:
        (nodes if item.startswith("hn") else serials).add(item)
    try:
        data = sign_revocations(key, seq + 1, nodes, serials)
    except DecodeError as exc:
        raise CertificateError(f"{exc}") from None
    write_atomic(list_file, data, 0o644)
    return parse_revocations(data, key.public_key)


def store_revocations(data_dir: str, data: bytes, fleet_key: bytes) -> bool:
    """Keep a revocation list fleet_key signed in data_dir and honour it, unless the one kept there (or
    honoured) is as new: an older list never replaces a newer one. Whether it was taken; CertificateError when
    it is not the fleet's."""
    new = parse_revocations(data, fleet_key)
    path = os.path.join(data_dir, REVOKED_FILE)
    try:
        with open(path, "rb") as f:
            held = parse_revocations(f.read(1 << 21), fleet_key)
        honour(held)
    except (OSError, CertificateError):
        held = None
    if held is not None and held.seq >= new.seq:
        return False
    write_atomic(path, data, 0o644)
    return honour(new)


def load_revocations(data_dir: str, fleet_key: bytes) -> None:
    """Honour the revocation list kept in data_dir (at the agent's start)."""
    path = os.path.join(data_dir, REVOKED_FILE)
    try:
        with open(path, "rb") as f:
            honour(parse_revocations(f.read(1 << 21), fleet_key))
    except FileNotFoundError:
        pass
    except (OSError, CertificateError) as exc:
        log.warning("%s is not used: %s", path, exc)


def served_list(path: str | None, fleet_key: bytes) -> bytes | None:
    """The enrollment server's revocation list, read for each request (the operator replaces the file), checked,
    and honoured by the server itself (no renewal for what it names); None when there is none to serve."""
    if not path or not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        data = f.read(1 << 21)
    try:
        honour(parse_revocations(data, fleet_key))
    except CertificateError as exc:
        log.warning("%s is not a revocation list of this fleet: %s", path, exc)
        return None
    return data
