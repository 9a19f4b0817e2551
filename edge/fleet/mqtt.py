"""An MQTT 5 connection driven from Trio: paho-mqtt's protocol engine, its socket waited on by Trio.

paho (pinned, no dependencies of its own, the Eclipse reference client with the whole of MQTT 5: properties,
message expiry, wills, "disconnect with will") runs without its own loop: Trio waits for the socket to be
readable or writable and calls loop_read / loop_write, and loop_misc once a second for the keep-alive. Only
the connect (DNS, TCP, TLS handshake) blocks inside paho; it runs in a worker thread while no Trio task touches
the client. moat-lib-mqtt (anyio, sans-io) was measured as well (both ~4-6k QoS-1 messages/s on loopback) and
not taken: it brings anyio, attrs, httpx-ws and stamina with it and is younger.

What a broker sends is bounded: MQTT 5's Maximum Packet Size tells an honest broker not to send more, and a
packet announcing more ends the connection as soon as its length is read (before paho buffers its body);
messages wait in a bounded channel and the ones past it are dropped and counted. Whatever a broker does (lies,
drops, floods, garbage) ends this connection with BrokerError, nothing else.
"""

import contextlib
import math
import select
import ssl
import urllib.parse
from dataclasses import dataclass

import paho.mqtt.client as paho
import trio
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge.errors import EdgeError

MAX_PACKET = 8192       # bytes of one packet from the broker (a record is at most 4096, its topic ~120)
INBOX = 256             # messages waiting to be handled; more are dropped (and counted)
MAX_QUEUED = 64         # messages of ours waiting for the socket; more are refused (and counted)
CONNECT_TIMEOUT = 10.0
KEEPALIVE = 30          # seconds; a broker that stops answering is noticed after ~1.5 times this
PORTS = {"mqtt": 1883, "mqtts": 8883}


class BrokerError(EdgeError):
    """The broker's URL is wrong, or the connection to the broker failed or was ended."""


@dataclass(frozen=True)
class Broker:
    scheme: str
    host: str
    port: int
    username: str = ""
    password: str = ""

    @property
    def tls(self) -> bool:
        return self.scheme == "mqtts"

    def __str__(self) -> str:   # never the password
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{self.host and host}:{self.port}"


def parse_broker(url: str) -> Broker:
    """mqtts://[user:password@]host[:8883] (or mqtt:// for tests and closed networks, port 1883)."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        raise BrokerError(f"fleet_broker {url!r} is not a URL; write mqtts://host[:port]") from None
    if parts.scheme not in PORTS or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise BrokerError(f"fleet_broker {url!r} must be mqtts://[user:password@]host[:port] (or mqtt:// on a "
                          "closed network)")
    return Broker(parts.scheme, parts.hostname, port or PORTS[parts.scheme],
                  urllib.parse.unquote(parts.username or ""), urllib.parse.unquote(parts.password or ""))


def expiry(seconds: float) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    props.MessageExpiryInterval = int(seconds)
    return props


class Session:
    """One connection to the broker. Messages arrive on .messages as (topic, payload, retained)."""

    def __init__(self, client: paho.Client, broker: Broker, max_packet: int, inbox: int):
        self.client = client
        self.broker = broker
        self.max_packet = max_packet
        self._send, self.messages = trio.open_memory_channel(inbox)
        self.received = 0
        self.dropped = 0         # messages past the inbox, or over the size bound
        self.refused = 0         # messages of ours that found the outgoing queue full
        self._wake = trio.Event()
        self._connack = trio.Event()
        self._refusal = None     # the broker's reason, when it refused the connection
        self._lost = None
        self._leaving = False
        self._driving = None
        self._stopped = trio.Event()

    # paho's callbacks (called on the Trio thread, inside loop_read and friends) -------------------------------

    def _on_connect(self, client, userdata, flags, reason, properties):
        if reason.is_failure:
            self._refusal = str(reason)
        self._connack.set()

    def _on_message(self, client, userdata, message):
        self.received += 1
        try:
            self._send.send_nowait((message.topic, bytes(message.payload), bool(message.retain)))
        except trio.WouldBlock:
            self.dropped += 1

    def _on_disconnect(self, client, userdata, flags, reason, properties):
        self._lost = str(reason)
        self._wake.set()

    # driving ---------------------------------------------------------------------------------------------------

    def _check(self, rc) -> bool:
        """Whether the connection goes on: False once this side has said goodbye and paho closed the socket;
        BrokerError when it ended otherwise or the broker broke a bound."""
        if self._leaving and self.client.socket() is None:
            return False
        # paho keeps the length of the packet it is reading here (pinned version): a length over the bound ends
        # the connection before the body is buffered (and is the reason, whatever else went wrong after it)
        if self.client._in_packet["remaining_length"] > self.max_packet:
            raise BrokerError(f"{self.broker} sent a packet over {self.max_packet} bytes")
        if rc != paho.MQTT_ERR_SUCCESS or self._lost is not None or self.client.socket() is None:
            why = self._lost or paho.error_string(rc)
            raise BrokerError(f"the connection to {self.broker} ended: {why}")
        return True

    async def _wait(self, wait, sock) -> bool:
        """Wait for the socket; False when paho closed it (after our goodbye, or on an error it saw)."""
        try:
            await wait(sock)
            return True
        except trio.ClosedResourceError:
            if self._leaving:
                return False
            raise BrokerError(f"the connection to {self.broker} ended: {self._lost or 'closed'}") from None

    async def _reader(self, sock):
        while await self._wait(trio.lowlevel.wait_readable, sock):
            # one packet per loop_read: read on while more is there (decrypted already, or in the kernel), up to
            # a batch, rather than going back to Trio for each packet
            for _ in range(256):
                if not self._check(self.client.loop_read()):
                    return
                if not ((isinstance(sock, ssl.SSLSocket) and sock.pending()) or select.select([sock], [], [], 0)[0]):
                    break
            if self.client.want_write():
                self._wake.set()

    async def _writer(self, sock):
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self.client.want_write():
                if not await self._wait(trio.lowlevel.wait_writable, sock) or \
                        not self._check(self.client.loop_write()):
                    return

    async def _drive(self, sock, task_status=trio.TASK_STATUS_IGNORED):
        """The three loops, in a scope _goodbye can end before it writes the last packet itself."""
        try:
            with trio.CancelScope() as self._driving:
                task_status.started()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._reader, sock)
                    nursery.start_soon(self._writer, sock)
                    nursery.start_soon(self._misc)
        finally:
            self._stopped.set()

    async def _misc(self):
        while True:
            await trio.sleep(1)
            if not self._check(self.client.loop_misc()):
                return
            if self.client.want_write():
                self._wake.set()

    # what the plane calls ------------------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, *, retain: bool = False, expires: float | None = None,
                qos: int = 1) -> bool:
        """Queue a message; False (and counted) when the outgoing queue is full."""
        props = expiry(expires) if expires is not None and not math.isinf(expires) else None
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        self._wake.set()
        if info.rc == paho.MQTT_ERR_QUEUE_SIZE:
            self.refused += 1
            return False
        return info.rc == paho.MQTT_ERR_SUCCESS

    def subscribe(self, topic: str, qos: int = 1) -> None:
        self.client.subscribe(topic, qos=qos)
        self._wake.set()


@contextlib.asynccontextmanager
async def connect(broker: Broker, client_id: str, *, will: tuple[str, bytes] | None = None,
                  keepalive: int = KEEPALIVE, max_packet: int = MAX_PACKET, inbox: int = INBOX,
                  ca_file: str | None = None, timeout: float = CONNECT_TIMEOUT):
    """A Session connected to broker (clean start, no session kept at the broker); will: a retained message
    (topic, payload) the broker publishes when the connection ends without a normal goodbye. Leaving the block
    disconnects with that will published (MQTT 5 reason 4), so a node that stops is gone at once.
    BrokerError when the broker cannot be reached, refuses, or ends the connection."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    session = Session(client, broker, max_packet, inbox)
    client.on_connect, client.on_message = session._on_connect, session._on_message
    client.on_disconnect = session._on_disconnect
    client.on_socket_close = lambda c, u, sock: trio.lowlevel.notify_closing(sock)
    client.on_socket_register_write = lambda c, u, sock: session._wake.set()
    client.suppress_exceptions = True          # a bug in a callback is logged by paho, not raised mid-packet
    client.max_queued_messages_set(MAX_QUEUED)
    client.max_inflight_messages_set(20)
    client.connect_timeout = timeout
    if broker.username:
        client.username_pw_set(broker.username, broker.password or None)
    if broker.tls:
        client.tls_set_context(ssl.create_default_context(cafile=ca_file))
    if will is not None:
        client.will_set(will[0], will[1], qos=1, retain=True)
    props = Properties(PacketTypes.CONNECT)
    props.MaximumPacketSize = max_packet
    props.SessionExpiryInterval = 0
    client.connect_async(broker.host, broker.port, keepalive, clean_start=True, properties=props)
    try:
        rc = await trio.to_thread.run_sync(client.reconnect, abandon_on_cancel=True)
    except ssl.SSLCertVerificationError as exc:
        raise BrokerError(f"the fleet broker {broker}'s TLS certificate is not trusted ({exc.verify_message}); "
                          "set fleet_broker_ca to the fleet's CA file") from None
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise BrokerError(f"cannot reach the fleet broker {broker}: {exc}") from None
    sock = client.socket()
    if rc != paho.MQTT_ERR_SUCCESS or sock is None:
        raise BrokerError(f"cannot reach the fleet broker {broker}: {paho.error_string(rc)}")
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(session._drive, sock)
            session._wake.set()   # CONNECT is queued
            with trio.move_on_after(timeout):
                await session._connack.wait()
            if not session._connack.is_set():
                raise BrokerError(f"the fleet broker {broker} did not answer within {timeout:.0f} s")
            if session._refusal:
                raise BrokerError(f"the fleet broker {broker} refused this node: {session._refusal}")
            try:
                yield session
            finally:
                await _goodbye(session, sock)
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:   # one failure of the driving tasks is the connection's
        leaves = _leaves(group)
        broken = [e for e in leaves if isinstance(e, BrokerError)]
        if broken and all(isinstance(e, (BrokerError, trio.Cancelled)) for e in leaves):
            raise broken[0] from None
        raise
    finally:
        if client.socket() is not None:
            trio.lowlevel.notify_closing(client.socket())
        client._sock_close()


async def _goodbye(session: Session, sock) -> None:
    """Disconnect with the will (reason 4), at most a second: the loops are stopped, then this writes the packet
    itself (one task per descriptor); paho closes the socket once it is sent."""
    with trio.CancelScope(shield=True, deadline=trio.current_time() + 1):
        session._driving.cancel()
        await session._stopped.wait()
        if session._lost is not None or session.client.socket() is None:
            return
        session._leaving = True
        session.client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=4))
        while session.client.socket() is not None and session.client.want_write():
            try:
                await trio.lowlevel.wait_writable(sock)
            except trio.ClosedResourceError:
                return
            if session.client.loop_write() != paho.MQTT_ERR_SUCCESS:
                return


def _leaves(group: BaseExceptionGroup) -> list:
    out = []
    for e in group.exceptions:
        out.extend(_leaves(e) if isinstance(e, BaseExceptionGroup) else [e])
    return out
