"""Hearth's own TCP bytes on the wire, as the kernel counts them, for the household signals
(edge/governor/signals.py): what the router's WAN counter carried less these is the household's.

The governor's lanes count each byte when it may go, which is not when it leaves: a backlog held while a
receiving peer stalled, and the retransmissions of a burst the uplink's queue dropped, reach the wire later or
twice, and an estimate from the lanes takes them for a household's upload. The kernel knows better. The
sock_diag netlink interface (the one `ss` uses; no privilege needed in one's own network namespace) lists every
TCP socket with its inode, its queues and its tcp_info; this process's own are those whose inode is one of its
descriptors (/proc/self/fd). Of each, what left:

- new data: snd_nxt less the start, i.e. the bytes acknowledged (tcpi_bytes_acked) and those in flight (the
  write queue less what is not sent yet). Not tcpi_bytes_sent: it counts each try to hand a segment to the
  interface's queue, and where that queue is full (a shaper on the uplink: tc tbf, SQM) the try fails and is
  made again, so it ran at twice the wire's bytes in tests/agent/test_governor_household.py;
- retransmissions (tcpi_bytes_retrans, Linux 4.19). These too are counted when tried, so a retransmission the
  full queue refused counts; they are few beside the first sends (137 KB over a whole household test run);
- IP and TCP headers: each data segment's (by the segment size, tcpi_snd_mss) and each pure acknowledgement's
  (tcpi_segs_out less tcpi_data_segs_out).

Wire formats are pure functions (request(), parse()); OwnTcp does the blocking I/O (a netlink dump of each
family, about 2 ms here, and now and then a walk of /proc/self/fd): call it from a worker thread.
"""

import os
import socket
import struct
import time
import typing

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
INET_DIAG_INFO = 2
TCP_LISTEN, TCP_TIME_WAIT = 10, 6
STATES = ((1 << 12) - 1) & ~(1 << TCP_LISTEN) & ~(1 << TCP_TIME_WAIT)   # sockets that may still send

NLMSG = struct.Struct("=IHHII")              # nlmsghdr: length, type, flags, sequence, port id
REQ = struct.Struct("=BBBBI")                # inet_diag_req_v2 up to its socket id: family, protocol, ext, pad, states
SOCKID = struct.Struct("!HH16s16s")          # inet_diag_sockid: ports and addresses (network order) ...
SOCKID_TAIL = struct.Struct("=III")          # ... then interface and cookie (host order)
MSG = struct.Struct("=BBBB")                 # inet_diag_msg: family, state, timer, retrans, then the socket id
MSG_TAIL = struct.Struct("=IIIII")           # expires, rqueue, wqueue, uid, inode
MSG_LEN = MSG.size + SOCKID.size + SOCKID_TAIL.size + MSG_TAIL.size   # 72
RTA = struct.Struct("=HH")                   # rtattr: length, type
# struct tcp_info (linux/tcp.h): the offsets of the fields read, and the length that holds them all (4.19)
U32, U64 = struct.Struct("=I"), struct.Struct("=Q")
SND_MSS, BYTES_ACKED, SEGS_OUT, NOTSENT, DATA_SEGS_OUT, BYTES_RETRANS = 16, 120, 136, 144, 156, 208
INFO_LEN = 216
# IP and TCP headers per segment (timestamps on, as Linux sends by default); the link layer's framing is left
# out: interfaces differ in what their byte counters include (and segmentation offload counts headers once
# per large packet), so the bytes of a segment are its payload and these
HEADERS = {socket.AF_INET: 20 + 32, socket.AF_INET6: 40 + 32}


class TcpSocket(typing.NamedTuple):
    family: int
    peer: str            # the remote address (an IPv4-mapped IPv6 address as IPv4)
    inode: int
    sent: int            # new data that left: acknowledged or in flight (snd_nxt less the start)
    retransmitted: int   # bytes retransmitted
    mss: int             # the segment size
    acks: int            # segments sent without data (pure acknowledgements)
    uid: int = 0         # the user that owns it

    @property
    def wire(self) -> int:
        """Bytes on the wire so far: the payload and the IP and TCP headers of each segment."""
        headers = HEADERS[socket.AF_INET if self.family == socket.AF_INET6 and "." in self.peer else self.family]
        data = self.sent + self.retransmitted
        return data + data * headers // max(self.mss, 536) + self.acks * headers


def request(family: int, sequence: int = 1) -> bytes:
    """A sock_diag dump request for every TCP socket of one address family that may still send, with its
    tcp_info."""
    body = (REQ.pack(family, socket.IPPROTO_TCP, 1 << (INET_DIAG_INFO - 1), 0, STATES)
            + SOCKID.pack(0, 0, bytes(16), bytes(16)) + SOCKID_TAIL.pack(0, 0xFFFFFFFF, 0xFFFFFFFF))
    return NLMSG.pack(NLMSG.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, sequence, 0) + body


def _address(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    if raw[:12] == bytes(10) + b"\xff\xff":
        return socket.inet_ntop(socket.AF_INET, raw[12:16])
    return socket.inet_ntop(socket.AF_INET6, raw)


def parse(data: bytes) -> tuple[list[TcpSocket], bool]:
    """The sockets in one datagram of a dump's answer, and whether the dump is done. A socket whose tcp_info is
    shorter than 4.19's or absent is left out. Raises OSError for the kernel's error
    answer and ValueError for a message that does not parse."""
    sockets, done, at = [], False, 0
    while at < len(data):
        if len(data) - at < NLMSG.size:
            raise ValueError(f"a truncated netlink header ({len(data) - at} bytes)")
        length, kind, _, _, _ = NLMSG.unpack_from(data, at)
        if length < NLMSG.size or at + length > len(data):
            raise ValueError(f"a netlink message of length {length} where {len(data) - at} bytes remain")
        body = data[at + NLMSG.size:at + length]
        at += (length + 3) & ~3
        if kind == NLMSG_DONE:
            done = True
            break
        if kind == NLMSG_ERROR:
            code = struct.unpack_from("=i", body)[0] if len(body) >= 4 else 0
            if code:
                raise OSError(-code, f"sock_diag: {os.strerror(-code)}")
            continue
        if kind != SOCK_DIAG_BY_FAMILY:
            continue
        if len(body) < MSG_LEN:
            raise ValueError(f"an inet_diag_msg of {len(body)} bytes (at least {MSG_LEN})")
        family = body[0]
        _, _, _, dst = SOCKID.unpack_from(body, MSG.size)
        _, _, wqueue, uid, inode = MSG_TAIL.unpack_from(body, MSG.size + SOCKID.size + SOCKID_TAIL.size)
        info = _attribute(body, MSG_LEN, INET_DIAG_INFO)
        if info is None or len(info) < INFO_LEN or family not in HEADERS:
            continue
        in_flight = max(0, wqueue - U32.unpack_from(info, NOTSENT)[0])   # snd_nxt - snd_una
        segs, data_segs = U32.unpack_from(info, SEGS_OUT)[0], U32.unpack_from(info, DATA_SEGS_OUT)[0]
        sockets.append(TcpSocket(family, _address(family, dst), inode,
                                 U64.unpack_from(info, BYTES_ACKED)[0] + in_flight,
                                 U64.unpack_from(info, BYTES_RETRANS)[0], U32.unpack_from(info, SND_MSS)[0],
                                 max(0, segs - data_segs), uid))
    return sockets, done


def _attribute(body: bytes, at: int, wanted: int) -> bytes | None:
    while at + RTA.size <= len(body):
        length, kind = RTA.unpack_from(body, at)
        if length < RTA.size or at + length > len(body):
            raise ValueError(f"an attribute of length {length} where {len(body) - at} bytes remain")
        if kind == wanted:
            return body[at + RTA.size:at + length]
        at += (length + 3) & ~3
    return None


def own_inodes(fds: str = "/proc/self/fd") -> set[int]:
    """The inodes of this process's sockets."""
    inodes = set()
    try:
        names = os.listdir(fds)
    except OSError:
        return inodes
    for name in names:
        try:
            target = os.readlink(os.path.join(fds, name))
        except OSError:
            continue   # closed since the listing
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def dump(family: int, timeout: float = 1.0) -> list[TcpSocket]:
    """Every TCP socket of one family in this network namespace that may still send. Raises OSError where the
    kernel offers no sock_diag (or a sandbox forbids netlink sockets)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as s:
        s.settimeout(timeout)
        s.sendto(request(family), (0, 0))
        found = []
        while True:
            sockets, done = parse(s.recv(1 << 16))
            found.extend(sockets)
            if done:
                return found


class OwnTcp:
    """The bytes this process's TCP sockets have put on the wire to peers that `include` accepts (an address
    -> bool; the WAN ones for the household signals), counted from the first call.

    Each call dumps the namespace's TCP sockets (the dump walks the kernel's whole table: ~1 ms a family here,
    however few sockets there are) and keeps this process's own: those of its user whose inode is one of its
    descriptors (/proc/self/fd is read again only when a socket of its user has an inode it has not placed).
    What a socket sent since the last call counts; one first seen counts whole, since it was opened after the
    last call, unless that call was more than STALE seconds ago (then nothing before this call can be placed
    in time, and every socket counts from here). What a socket sent after the last call before it closed is not
    counted (at most one tick of one connection: the peers' connections last). The bytes in flight may shrink
    (the peer's acknowledgement of a segment sent twice); a socket's count never goes back."""

    STALE = 2.0

    def __init__(self, include, fds: str = "/proc/self/fd", clock=time.monotonic):
        self.include = include
        self.fds = fds
        self.clock = clock
        self.total = 0
        self._seen: dict[int, int] = {}   # inode -> its wire bytes counted
        self._last: float | None = None   # when the last call counted
        self._ours: set[int] = set()      # socket inodes of this process, as last read
        self._foreign: set[int] = set()   # sockets of its user that are not its own (another process's)

    def sample(self) -> int | None:
        """Bytes on the wire so far, or None where the kernel cannot tell (no sock_diag, a kernel before 4.19:
        the signal then estimates from the lanes)."""
        now = self.clock()
        try:
            sockets = dump(socket.AF_INET) + dump(socket.AF_INET6)
        except (OSError, ValueError):
            return None
        uid = os.geteuid()
        candidates = [s for s in sockets if s.uid == uid and s.inode and s.inode not in self._foreign]
        if any(s.inode not in self._ours for s in candidates):
            self._ours = own_inodes(self.fds)
            present = {s.inode for s in candidates}
            self._foreign = {i for i in self._foreign if i in present} | (present - self._ours)
        fresh = self._last is not None and now - self._last <= self.STALE
        seen = {}
        for s in candidates:
            if s.inode not in self._ours or not self.include(s.peer):
                continue
            before = self._seen.get(s.inode)
            wire = s.wire if before is None else max(before, s.wire)
            seen[s.inode] = wire
            if fresh:
                self.total += wire - (before or 0)
        self._seen, self._last = seen, now
        return self.total
