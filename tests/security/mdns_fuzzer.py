"""Thousands of malformed and hostile mDNS packets, built byte by byte (zeroconf would refuse to send most of
them), sent to 224.0.0.251:5353 from port 5353 by a hostile host run in its own network namespace by
test_mdns_attacks.py:

    python mdns_fuzzer.py MY_ADDRESS REAL_IDS REAL_ADDRESSES COUNT SECONDS

REAL_IDS and REAL_ADDRESSES: the real agents' node ids and addresses, comma-separated (the spoofing targets).
Prints how many packets of each kind were sent, and "done" at the end.
"""

import random
import socket
import struct
import sys
import time

from edge.identity import Identity

from node_ids import bad_point_id, padding_alias, sign_alias   # run as a script: this folder is on sys.path

SERVICE = "_hearth._tcp.local."
A, PTR, TXT, SRV = 1, 12, 16, 33
IN, FLUSH = 1, 0x8001   # class IN; with the cache-flush bit (this record replaces every other of its name)


def name(text: str) -> bytes:
    out = b""
    for label in text.rstrip(".").split("."):
        raw = label.encode("utf-8", "surrogateescape")[:63]
        out += bytes([len(raw)]) + raw
    return out + b"\0"


def rr(owner: str, rtype: int, rdata: bytes, ttl: int = 120, cls: int = IN) -> bytes:
    return name(owner) + struct.pack("!HHIH", rtype, cls, ttl, len(rdata)) + rdata


def packet(records: list[bytes]) -> bytes:
    return struct.pack("!HHHHHH", 0, 0x8400, 0, len(records), 0, 0) + b"".join(records)


def txt(**fields) -> bytes:
    out = b""
    for k, v in fields.items():
        s = f"{k}={v}".encode("utf-8", "surrogateescape")[:255]
        out += bytes([len(s)]) + s
    return out


def announcement(instance: str, node: str, address: str, port: int = 4801, ttl: int = 120, flush=False,
                 **extra) -> bytes:
    """PTR, SRV, TXT and A of one Hearth node in one packet (as a real responder sends them)."""
    full = f"{instance}.{SERVICE}"
    host = f"{instance[:40]}.local."
    cls = FLUSH if flush else IN
    return packet([
        rr(SERVICE, PTR, name(full), ttl),
        rr(full, SRV, struct.pack("!HHH", 0, 0, port) + name(host), ttl, cls),
        rr(full, TXT, txt(**{"id": node, "v": "1", "tp": port, "caps": "store,probe,getmany", "free": "1000",
                             **extra}), ttl, cls),
        rr(host, A, socket.inet_aton(address), ttl, cls),
    ])


def cases(rng: random.Random, me: str, real_ids: list[str], real_addresses: list[str]):
    """(kind, packet) for each kind of hostile announcement."""
    fresh = lambda: Identity.generate().node_id   # noqa: E731 - a valid id no agent runs
    tag = lambda: f"f{rng.randrange(1 << 30)}"   # noqa: E731 - an instance name of its own
    real = rng.randrange(len(real_ids))
    valid = announcement(tag(), fresh(), me)
    return rng.choice([
        ("garbage", lambda: rng.randbytes(rng.randrange(1, 1400))),
        ("truncated", lambda: valid[:rng.randrange(12, len(valid))]),
        ("pointer loop", lambda: struct.pack("!HHHHHH", 0, 0x8400, 0, 1, 0, 0) + b"\xc0\x0c"
         + struct.pack("!HHIH", PTR, IN, 120, 2) + b"\xc0\x0c"),
        ("answer count past the end", lambda: struct.pack("!HHHHHH", 0, 0x8400, 0, 65535, 0, 0) + valid[12:]),
        ("bad point id", lambda: announcement(tag(), bad_point_id(), me)),
        ("bad id text", lambda: announcement(tag(), rng.choice(["", "x" * 52, "AAAA", "\udcff" * 30, "a" * 250,
                                                                "hn" + fresh()]), me)),
        ("alias of a real id", lambda: announcement(tag(), rng.choice([padding_alias, sign_alias])(real_ids[real]),
                                                    me)),
        ("huge TXT", lambda: announcement(tag(), fresh(), me, **{f"k{i}": "x" * 240 for i in range(30)})),
        ("control characters", lambda: announcement(tag(), fresh(), me, caps="a\n<0>b\x1b[2J")),
        ("bad port", lambda: announcement(tag(), fresh(), me, port=rng.choice([0, 65535]))),
        ("loopback or multicast address", lambda: announcement(
            tag(), rng.choice([fresh(), real_ids[real]]), rng.choice(["127.0.0.1", "0.0.0.0", "224.0.0.251",
                                                                     "255.255.255.255"]))),
        ("a real id from here", lambda: announcement(tag(), real_ids[real], me)),
        ("a real node's own name, cache flush, from here", lambda: announcement(real_ids[real], real_ids[real],
                                                                                 me, flush=True)),
        ("another id at a real node's address", lambda: announcement(tag(), fresh(), real_addresses[real])),
        ("forged goodbye of a real node", lambda: packet([rr(SERVICE, PTR, name(f"{real_ids[real]}.{SERVICE}"),
                                                             ttl=0)])),
        ("flood", lambda: valid),
        ("flood", lambda: valid),
        ("flood", lambda: valid),
    ])


def main(me, real_ids, real_addresses, count, seconds):
    rng = random.Random(20)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((me, 5353))   # from port 5353, as a responder (a unicast address: the multicast is not read here)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(me))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
    sent: dict[str, int] = {}
    t0 = time.monotonic()
    for i in range(count):
        kind, make = cases(rng, me, real_ids, real_addresses)
        try:
            sock.sendto(make(), ("224.0.0.251", 5353))
            sent[kind] = sent.get(kind, 0) + 1
        except OSError as exc:   # a packet over the largest datagram: counted, not sent
            sent[f"{kind} (not sent: {exc.strerror})"] = sent.get(f"{kind} (not sent: {exc.strerror})", 0) + 1
        pause = t0 + seconds * (i + 1) / count - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    for kind, n in sorted(sent.items()):
        print(f"sent {kind} x{n}", flush=True)
    print(f"{sum(sent.values())} packets in {time.monotonic() - t0:.1f} s", flush=True)
    print("done", flush=True)


if __name__ == "__main__":
    me, ids, addresses, count, seconds = sys.argv[1:6]
    main(me, ids.split(","), addresses.split(","), int(count), float(seconds))
