"""The Trio driver of paho against a real mosquitto, and against a broker that lies."""

import socket

import pytest
import trio

from edge.fleet.mqtt import BrokerError, connect, parse_broker
from tests.fleet.broker import Mosquitto, retained


@pytest.fixture
def broker():
    b = Mosquitto()
    yield b
    b.close()


def test_broker_urls():
    b = parse_broker("mqtts://user:p%40ss@broker.example:1234")
    assert (b.scheme, b.host, b.port, b.username, b.password, b.tls) == \
        ("mqtts", "broker.example", 1234, "user", "p@ss", True)
    assert parse_broker("mqtt://10.0.0.1").port == 1883 and parse_broker("mqtts://h").port == 8883
    assert "p@ss" not in str(b)
    for bad in ("http://h", "mqtt://", "mqtt://h/path", "mqtt://h:99999"):
        with pytest.raises(BrokerError, match="mqtt"):
            parse_broker(bad)


@pytest.mark.trio
async def test_publish_subscribe_and_will_on_leaving(broker):
    url = parse_broker(broker.url)
    async with connect(url, "reader") as reader:
        reader.subscribe("t/#")
        async with connect(url, "writer", will=("t/will", b"")) as writer:
            writer.publish("t/will", b"here", retain=True, expires=60)
            writer.publish("t/x", b"hello")
            with trio.fail_after(5):
                got = [await reader.messages.receive() for _ in range(2)]
        assert ("t/will", b"here", False) in got and ("t/x", b"hello", False) in got
        with trio.fail_after(5):   # leaving publishes the will: the retained record is cleared
            assert await reader.messages.receive() == ("t/will", b"", False)
    assert retained(broker.port, "t/#") == {}


@pytest.mark.trio
async def test_an_unreachable_broker_is_one_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BrokerError, match="cannot reach"):
        async with connect(parse_broker(f"mqtt://127.0.0.1:{port}"), "x"):
            pass


async def _lying_broker(reply: bytes, task_status=trio.TASK_STATUS_IGNORED):
    """Accepts one connection, answers CONNECT with a CONNACK and then reply, and hangs up."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    stream = await listeners[0].accept()
    await stream.receive_some(4096)
    await stream.send_all(bytes([0x20, 3, 0, 0, 0]) + reply)   # CONNACK (v5: flags, reason, no properties)
    await stream.aclose()


@pytest.mark.parametrize("reply,words", [
    (bytes([0x30, 0xFF, 0xFF, 0xFF, 0x7F]), "over"),           # a PUBLISH announcing 256 MiB
    (bytes([0xF0, 0x00]), "ended"),                             # a reserved packet type
    (b"\x30\x05\x00\x10ab", "ended"),      # a topic running past its packet (at most a message the plane drops)
    (b"", "ended"),                         # a broker that hangs up after saying yes
])
@pytest.mark.trio
async def test_a_broker_that_lies_ends_only_the_connection(reply, words):
    async with trio.open_nursery() as nursery:
        port = await nursery.start(_lying_broker, reply)
        with pytest.raises(BrokerError, match=words), trio.fail_after(10):
            async with connect(parse_broker(f"mqtt://127.0.0.1:{port}"), "victim") as session:
                while True:   # garbage that paho passes on is a message like any other: the plane checks it
                    await session.messages.receive()
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_mqtts_checks_the_brokers_certificate(tmp_path):
    from edge.fleet.tls import make_tls
    cert, key, other = str(tmp_path / "broker.pem"), str(tmp_path / "broker.key"), str(tmp_path / "other.pem")
    make_tls(cert, key, "127.0.0.1")
    make_tls(other, str(tmp_path / "other.key"), "127.0.0.1")
    broker = Mosquitto(tls=(cert, key))
    try:
        url = parse_broker(broker.url)
        async with connect(url, "reader", ca_file=cert) as reader:
            reader.subscribe("t")
            async with connect(url, "writer", ca_file=cert) as writer:
                writer.publish("t", b"x" * 3000)
                with trio.fail_after(5):
                    assert await reader.messages.receive() == ("t", b"x" * 3000, False)
        with pytest.raises(BrokerError, match="not trusted.*fleet_broker_ca"):
            async with connect(url, "x", ca_file=other):
                pass
    finally:
        broker.close()
