"""NAT-PMP (RFC 6886) as the node speaks it: the requests' bytes, every check on the gateway's answers, the
default gateway read from the routing table, and the UDP client's retransmission against a gateway that answers
late (a real socket on loopback). miniupnpd answers it for real in tests/agent/test_nat_lab.py."""

import socket
import struct
import threading

import pytest

from edge.fleet import natpmp
from edge.fleet.natpmp import NatPmpError
from edge.fleet.portmap import Mapping, reach


def test_requests_are_the_rfc_layout():
    assert natpmp.address_request() == b"\x00\x00"
    # version 0, opcode 2 (TCP), reserved, internal 4801, suggested 4801, lifetime 3600
    assert natpmp.mapping_request(4801, 4801, 3600) == bytes.fromhex("0002 0000 12c1 12c1 00000e10")
    assert natpmp.mapping_request(4801, 0, 0) == bytes.fromhex("0002 0000 12c1 0000 00000000")   # delete
    for bad in ((0, 1, 1), (65536, 1, 1), (1, -1, 1), (1, 1, 1 << 32)):
        with pytest.raises(ValueError):
            natpmp.mapping_request(*bad)


def _address_reply(ip: str, result: int = 0) -> bytes:
    return struct.pack("!BBHI", 0, 128, result, 77) + socket.inet_aton(ip)


def _mapping_reply(internal, external, lifetime, result=0, op=2) -> bytes:
    return struct.pack("!BBHIHHI", 0, 128 + op, result, 77, internal, external, lifetime)


def test_address_answers_are_checked():
    assert natpmp.parse_address(_address_reply("198.20.1.2")) == "198.20.1.2"
    assert natpmp.parse_address(_address_reply("100.64.3.4")) == "100.64.3.4"   # an ISP's own network
    for bad, why in ((_address_reply("0.0.0.0"), "cannot be reached"), (_address_reply("127.0.0.1"), "cannot"),
                     (_address_reply("224.0.0.1"), "cannot"), (_address_reply("169.254.0.9"), "cannot"),
                     (_address_reply("1.2.3.4", result=3), "network failure"),
                     (_address_reply("1.2.3.4")[:11], "not 12"), (_address_reply("1.2.3.4") + b"x", "not 12"),
                     (b"\x01\x80" + _address_reply("1.2.3.4")[2:], "not one to our request"),
                     (b"\x00\x81" + _address_reply("1.2.3.4")[2:], "not one to our request"), (b"", "not one")):
        with pytest.raises(NatPmpError, match=why):
            natpmp.parse_address(bad)


def test_mapping_answers_are_checked_and_bounded():
    assert natpmp.parse_mapping(_mapping_reply(4801, 4801, 3600), 4801, 3600) == (4801, 3600)
    assert natpmp.parse_mapping(_mapping_reply(4801, 40000, 600), 4801, 3600) == (40000, 600)   # less: taken
    assert natpmp.parse_mapping(_mapping_reply(4801, 4801, 1 << 31), 4801, 3600) == (4801, 3600)   # more: not
    assert natpmp.parse_mapping(_mapping_reply(4801, 0, 0), 4801, 0) == (0, 0)   # a deletion's answer
    for bad, why in ((_mapping_reply(4802, 4801, 3600), "answered for port 4802"),
                     (_mapping_reply(4801, 0, 3600), "unusable"), (_mapping_reply(4801, 4801, 0), "unusable"),
                     (_mapping_reply(4801, 4801, 3600, result=2), "not authorized"),
                     (_mapping_reply(4801, 4801, 3600, result=99), "result code 99"),
                     (_mapping_reply(4801, 4801, 3600, op=1), "not one to our request"),
                     (_mapping_reply(4801, 4801, 3600)[:15], "not 16")):
        with pytest.raises(NatPmpError, match=why):
            natpmp.parse_mapping(bad, 4801, 3600)


def test_default_gateway_from_the_routing_table(tmp_path):
    table = tmp_path / "route"
    table.write_text("Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n"
                     "eth0\t0002A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n"
                     "eth0\t00000000\t0102A8C0\t0003\t0\t0\t0\t00000000\n")
    assert natpmp.default_gateway(str(table)) == "192.168.2.1"
    table.write_text("Iface\tDestination\tGateway \tFlags\n")
    assert natpmp.default_gateway(str(table)) is None
    assert natpmp.default_gateway(str(tmp_path / "missing")) is None


def test_the_client_retransmits_and_takes_only_the_answer():
    """A gateway that ignores the first request, then sends a stray datagram, then the answer."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    seen = []

    def gateway():
        for i in range(2):
            data, peer = server.recvfrom(64)
            seen.append(data)
            if i == 1:
                server.sendto(b"\x00\x01junk", peer)   # not an answer to this request
                server.sendto(_mapping_reply(4801, 4801, 3600), peer)
    thread = threading.Thread(target=gateway)
    thread.start()
    try:
        answer = natpmp.ask("127.0.0.1", natpmp.mapping_request(4801, 4801, 3600), tries=3, first_wait=0.1,
                            port=server.getsockname()[1])
    finally:
        thread.join(5)
        server.close()
    assert natpmp.parse_mapping(answer, 4801, 3600) == (4801, 3600) and len(seen) == 2


def test_a_silent_or_closed_gateway_is_one_error():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        with pytest.raises(NatPmpError, match="did not answer"):
            natpmp.ask("127.0.0.1", natpmp.address_request(), tries=2, first_wait=0.05,
                       port=silent.getsockname()[1])
        port = silent.getsockname()[1]
    with pytest.raises(NatPmpError, match="does not speak NAT-PMP|did not answer"):
        natpmp.ask("127.0.0.1", natpmp.address_request(), tries=2, first_wait=0.05, port=port)


def test_reach_says_how_the_node_is_dialled():
    mapping = Mapping("NAT-PMP", "198.20.1.2", 4801, 4801, 3600, 0.0)
    assert reach((("192.168.1.5", 4801),), mapping, False, True) == "mapped"
    assert reach((("192.168.1.5", 4801),), None, True, False) == "direct"
    assert reach((("8.8.4.4", 4801),), None, False, True) == "direct"
    assert reach((("192.168.1.5", 4801), ("100.64.0.3", 4801)), None, False, True) == "webrtc"
    assert reach((("192.168.1.5", 4801),), None, False, False) == "lan"
    assert mapping.renew_at() == 1800.0 and Mapping("UPnP-IGD", "x", 1, 1, 0, 0.0).renew_at() == 1800.0
