"""NAT-PMP (RFC 6886): the two requests a node needs, as pure functions, and a small blocking UDP client.

miniupnpc speaks only UPnP-IGD, and the NAT-PMP packages on PyPI are unmaintained (last releases 2021 and 2023),
so the protocol is here: version 0 only, IPv4 only, as the RFC defines it.

    external address request   0, 0                                          (2 bytes)
                     response  0, 128, result u16, epoch u32, address 4 bytes        (12 bytes)
    mapping request            0, 1 (UDP) or 2 (TCP), 0 u16, internal u16, suggested external u16, lifetime u32
                     response  0, 128 + op, result u16, epoch u32, internal u16, external u16, lifetime u32

A mapping is deleted by asking for it again with lifetime 0 and suggested port 0. Everything the gateway says
is checked: the size, the version, the opcode, the internal port we asked about, a port in range, a lifetime
bounded by what we asked for, an address that a neighbour could be told. A reply not from the gateway's port
5351 is not a reply. The client is blocking (callers run it in a worker thread).
"""

import ipaddress
import socket
import struct
import time

from edge.errors import DecodeError

PORT = 5351
TCP, UDP = 2, 1
FIRST_WAIT = 0.25          # RFC 6886 3.1: 250 ms, doubled each try (the RFC allows 9 tries: 64 s; we take 4)
TRIES = 4
MAX_LIFETIME = 7 * 86400   # a lifetime granted beyond this is read as this
RESULTS = {1: "unsupported version", 2: "not authorized or refused", 3: "network failure",
           4: "out of resources", 5: "unsupported opcode"}


class NatPmpError(DecodeError):
    """The gateway did not answer, answered with an error, or sent something that is not a valid answer."""


def address_request() -> bytes:
    return bytes((0, 0))


def mapping_request(internal: int, external: int, lifetime: int, protocol: int = TCP) -> bytes:
    if protocol not in (TCP, UDP) or not 0 < internal < 65536 or not 0 <= external < 65536 or \
            not 0 <= lifetime < 1 << 32:
        raise ValueError("a NAT-PMP mapping needs ports 1-65535 and a lifetime of 0 to 2^32-1 s")
    return struct.pack("!BBHHHI", 0, protocol, 0, internal, external, lifetime)


def _head(data: bytes, op: int, size: int) -> int:
    """The result's epoch, once the header checks out; NatPmpError otherwise."""
    if len(data) < 4 or data[0] != 0 or data[1] != 128 + op:
        raise NatPmpError("the gateway's NAT-PMP answer is not one to our request")
    result = struct.unpack_from("!H", data, 2)[0]
    if result:
        raise NatPmpError(f"the gateway refused: {RESULTS.get(result, f'result code {result}')}")
    if len(data) != size:
        raise NatPmpError(f"the gateway's NAT-PMP answer is {len(data)} bytes, not {size}")
    return struct.unpack_from("!I", data, 4)[0]


def parse_address(data: bytes) -> str:
    """The external IPv4 address from an address response (what a neighbour can be told)."""
    _head(data, 0, 12)
    return check_external(str(ipaddress.IPv4Address(data[8:12])))


def parse_mapping(data: bytes, internal: int, asked: int, protocol: int = TCP) -> tuple[int, int]:
    """(external port, lifetime s) from a mapping response to our request for internal (asked: the lifetime
    asked for; a gateway may grant less, never more: a larger one is read as asked)."""
    _head(data, protocol, 16)
    got_internal, external, lifetime = struct.unpack_from("!HHI", data, 8)
    if got_internal != internal:
        raise NatPmpError(f"the gateway answered for port {got_internal}, not {internal}")
    if asked and (not 0 < external < 65536 or lifetime == 0):
        raise NatPmpError(f"the gateway granted an unusable mapping (port {external}, lifetime {lifetime} s)")
    return external, min(lifetime, asked, MAX_LIFETIME)


def check_external(address: str) -> str:
    """address if it is a unicast address a neighbour could be told; NatPmpError otherwise. A private address is
    allowed: an ISP's fleet may meet inside its own (carrier-grade NAT) network."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise NatPmpError(f"the gateway's external address {address[:64]!r} is not an IP address") from None
    if ip.is_unspecified or ip.is_loopback or ip.is_multicast or ip.is_link_local or ip.is_reserved:
        raise NatPmpError(f"the gateway's external address {ip} cannot be reached from outside")
    return str(ip)


def default_gateway(path: str = "/proc/net/route") -> str | None:
    """The IPv4 default route's gateway (NAT-PMP's server), or None."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) >= 3 and fields[1] == "00000000" and fields[2] != "00000000":
            try:
                return str(ipaddress.IPv4Address(struct.pack("<I", int(fields[2], 16))))
            except (ValueError, struct.error):
                return None
    return None


def ask(gateway: str, request: bytes, tries: int = TRIES, first_wait: float = FIRST_WAIT, port: int = PORT) -> bytes:
    """Send request to gateway:5351 and return the first answer from there (retransmitted after 250 ms, 500 ms,
    ... as RFC 6886 says); NatPmpError when none came. Blocking."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((gateway, port))   # the kernel drops datagrams from anyone else
        wait = first_wait
        for _ in range(tries):
            try:
                sock.send(request)
            except OSError as exc:
                raise NatPmpError(f"cannot reach the gateway {gateway}: {exc}") from None
            deadline = time.monotonic() + wait
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    data = sock.recv(64)
                except socket.timeout:
                    break
                except OSError:   # ICMP port unreachable: nothing listens on 5351
                    raise NatPmpError(f"the gateway {gateway} does not speak NAT-PMP") from None
                if len(data) >= 2 and data[1] == 128 + request[1]:
                    return data
            wait *= 2
    raise NatPmpError(f"the gateway {gateway} did not answer NAT-PMP")


def external_address(gateway: str) -> str:
    return parse_address(ask(gateway, address_request()))


def add_mapping(gateway: str, internal: int, external: int, lifetime: int) -> tuple[int, int]:
    """Map TCP internal to (the suggested) external on gateway for lifetime s: (external port, lifetime)."""
    return parse_mapping(ask(gateway, mapping_request(internal, external, lifetime)), internal, lifetime)


def delete_mapping(gateway: str, internal: int) -> None:
    parse_mapping(ask(gateway, mapping_request(internal, 0, 0), tries=2), internal, 0)
