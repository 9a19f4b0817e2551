"""Hearth's own TCP bytes as the kernel counts them (edge/governor/tcpdiag.py): the netlink formats on crafted
messages (a short, a malformed and an error answer each), and the process's own sockets on real connections
through the kernel's sock_diag, counted by their inode (another process's are not), with the household signal
that takes them: Hearth's retransmissions and late bytes are not a household's upload, a real upload is."""

import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from edge.governor import tcpdiag
from edge.governor.signals import QUIET, RouterSignal
from edge.governor.tcpdiag import OwnTcp, TcpSocket, parse, request
from tests.clock import ManualClock


def answer(*, family=socket.AF_INET, dst=b"\x0a\x00\x00\x02", inode=7, wqueue=3000, acked=10_000, notsent=1000,
           retrans=1448, mss=1448, segs=20, data_segs=15, info_len=tcpdiag.INFO_LEN) -> bytes:
    """One inet_diag_msg as the kernel writes it, with its INET_DIAG_INFO attribute."""
    info = bytearray(info_len)
    for off, st, value in ((tcpdiag.SND_MSS, "=I", mss), (tcpdiag.BYTES_ACKED, "=Q", acked),
                           (tcpdiag.SEGS_OUT, "=I", segs), (tcpdiag.NOTSENT, "=I", notsent),
                           (tcpdiag.DATA_SEGS_OUT, "=I", data_segs), (tcpdiag.BYTES_RETRANS, "=Q", retrans)):
        if off + struct.calcsize(st) <= info_len:
            struct.pack_into(st, info, off, value)
    body = (tcpdiag.MSG.pack(family, 1, 0, 0) + tcpdiag.SOCKID.pack(4801, 40000, bytes(16), dst.ljust(16, b"\0"))
            + tcpdiag.SOCKID_TAIL.pack(0, 0, 0) + tcpdiag.MSG_TAIL.pack(0, 0, wqueue, 1000, inode))
    attr = tcpdiag.RTA.pack(tcpdiag.RTA.size + len(info), tcpdiag.INET_DIAG_INFO) + bytes(info)
    body += attr + bytes(-len(attr) % 4)
    return tcpdiag.NLMSG.pack(tcpdiag.NLMSG.size + len(body), tcpdiag.SOCK_DIAG_BY_FAMILY, 2, 1, 0) + body


def done() -> bytes:
    return tcpdiag.NLMSG.pack(tcpdiag.NLMSG.size + 4, tcpdiag.NLMSG_DONE, 2, 1, 0) + bytes(4)


def test_a_request_asks_for_every_tcp_socket_that_may_send_with_its_tcp_info():
    data = request(socket.AF_INET6, 9)
    length, kind, flags, seq, _ = tcpdiag.NLMSG.unpack_from(data)
    assert (length, kind, flags, seq) == (len(data), 20, 0x301, 9)
    family, protocol, ext, _, states = tcpdiag.REQ.unpack_from(data, tcpdiag.NLMSG.size)
    assert (family, protocol, ext) == (socket.AF_INET6, socket.IPPROTO_TCP, 2)
    assert states & (1 << 1) and not states & (1 << 10)     # ESTABLISHED in, LISTEN out


def test_an_answer_parses_to_the_bytes_that_left():
    sockets, finished = parse(answer() + done())
    assert finished
    assert sockets == [TcpSocket(socket.AF_INET, "10.0.0.2", 7, 10_000 + 2000, 1448, 1448, 5, 1000)]
    s = sockets[0]
    data = 12_000 + 1448
    assert s.wire == data + data * 52 // 1448 + 5 * 52        # payload, each segment's headers, the pure ACKs
    mapped = parse(answer(family=socket.AF_INET6, dst=bytes(10) + b"\xff\xff\x0a\x00\x00\x03"))[0][0]
    assert mapped.peer == "10.0.0.3" and mapped.wire == s.wire  # an IPv4-mapped peer: IPv4's headers
    v6 = parse(answer(family=socket.AF_INET6, dst=socket.inet_pton(socket.AF_INET6, "2001:db8::1")))[0][0]
    assert v6.peer == "2001:db8::1" and v6.wire > s.wire


def test_an_old_kernels_short_tcp_info_and_foreign_messages_are_left_out():
    assert parse(answer(info_len=200) + done()) == ([], True)   # before 4.19: no bytes_retrans
    other = tcpdiag.NLMSG.pack(tcpdiag.NLMSG.size, 99, 0, 1, 0)
    assert parse(other + answer())[0][0].inode == 7


@pytest.mark.parametrize("data, message", [
    (b"\x10\x00\x00", "truncated netlink header"),
    (tcpdiag.NLMSG.pack(400, 20, 0, 1, 0) + bytes(10), "netlink message of length 400"),
    (tcpdiag.NLMSG.pack(30, 20, 0, 1, 0) + bytes(14), "inet_diag_msg of 14 bytes"),
])
def test_a_malformed_answer_is_an_error_that_says_what(data, message):
    with pytest.raises(ValueError, match=message):
        parse(data)


def test_the_kernels_error_answer_is_an_oserror():
    error = tcpdiag.NLMSG.pack(tcpdiag.NLMSG.size + 4, tcpdiag.NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", -22)
    with pytest.raises(OSError, match="Invalid argument"):
        parse(error)


def _server():
    listener = socket.create_server(("127.0.0.1", 0))
    got = []

    def drain():
        conn, _ = listener.accept()
        with conn:
            n = 0
            while chunk := conn.recv(1 << 16):
                n += len(chunk)
            got.append(n)
    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    return listener, thread, got


def test_the_processs_own_connections_are_counted_and_new_ones_whole():
    clock = ManualClock()
    own = OwnTcp(lambda ip: True, clock=clock)
    assert own.sample() == 0
    listener, thread, got = _server()
    with listener, socket.create_connection(listener.getsockname()) as c:
        c.sendall(bytes(1 << 20))                           # a connection opened since the last call
        deadline = time.monotonic() + 10
        while own.sample() < 1 << 20 and time.monotonic() < deadline:
            clock.advance(0.25)
            time.sleep(0.02)
        total = own.sample()
        # the payload once, and headers: a few per cent at most (loopback's segments are large)
        assert 1 << 20 <= total <= (1 << 20) * 1.05
        clock.advance(OwnTcp.STALE + 1)                     # a call long after the last: counts from here
        c.sendall(bytes(1 << 19))
        time.sleep(0.2)
        assert own.sample() == total
        c.sendall(bytes(1 << 19))
        deadline = time.monotonic() + 10
        while own.sample() < total + (1 << 19) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert total + (1 << 19) <= own.sample() <= total + (1 << 19) * 1.05
    thread.join(10)
    assert got == [(1 << 20) + (1 << 20)]
    assert OwnTcp(lambda ip: False).sample() == 0           # a peer the filter leaves out


def test_another_processs_connections_are_not_counted():
    listener, thread, got = _server()
    own = OwnTcp(lambda ip: True)
    own.sample()
    with listener:
        host, port = listener.getsockname()
        subprocess.run([sys.executable, "-c", "import socket, time\n"
                        f"s = socket.create_connection(({host!r}, {port}))\ns.sendall(bytes(1 << 20))\n"
                        "time.sleep(0.5)\n"], check=True, timeout=30)
        thread.join(10)
        assert got == [1 << 20]
        # this process's end of that connection received the megabyte and sent only acknowledgements
        assert own.sample() < 64 * 1024


def test_hearths_retransmissions_and_late_bytes_measured_are_no_household_and_an_upload_is_seen(tmp_path):
    """With Hearth's bytes measured: the wire carries more than its lanes counted (a backlog after a stall,
    leaving at the uplink's rate, with 300 KB of retransmissions over two seconds: a back-off on the lanes
    alone), and none of it is taken for the household's; a household upload beside Hearth still is."""
    counter = tmp_path / "wan" / "statistics" / "tx_bytes"
    counter.parent.mkdir(parents=True)
    lanes, measured = [0, 0], [0]
    signal = RouterSignal("wan", lambda: tuple(lanes), root=str(tmp_path), wire=lambda: measured[0])
    estimate_only = RouterSignal("wan", lambda: tuple(lanes), root=str(tmp_path))
    tx, t = 0, 0.0

    def sample(wire, counted, hearths_wire):
        nonlocal tx, t
        tx += wire
        lanes[0] += counted
        measured[0] += hearths_wire
        counter.write_text(f"{tx}\n")
        t += 0.25
        return signal.sample(t), estimate_only.sample(t)

    counter.write_text("0\n")
    signal.sample(0.0), estimate_only.sample(0.0)
    for _ in range(12):                                    # Hearth alone at 1.5 MB/s, 3.3% of headers
        assert sample(387_500, 375_000, 387_500) == (False, False)
    # Hearth's lanes count at the cap, but what leaves runs ahead of them for two seconds: a backlog that
    # waited behind a stalled peer, sent at the uplink's rate with its retransmissions (the lanes counted the
    # backlog longer ago than the lead keeps)
    flush = [sample(625_000, 375_000, 625_000) for _ in range(8)]
    assert not any(measured_ for measured_, _ in flush), flush
    assert any(estimated for _, estimated in flush), flush   # the lanes alone took it for a household
    assert signal.measured
    for _ in range(8):
        sample(387_500, 375_000, 387_500)
    # a household upload of 1 MB/s starts beside Hearth
    seen = [sample(387_500 + 250_000, 375_000, 387_500)[0] for _ in range(4)]
    assert True in seen, seen
    assert signal.household > QUIET
