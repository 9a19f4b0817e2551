"""Live fan-out's one request (types 30, 31): where a node subscribes to a publisher's live stream.

A node that wants a neighbour's live stream asks its publisher over the transport (LiveWant); the publisher
answers with the node to subscribe to (LiveSource): itself, or a node already subscribed that relays (the
publisher keeps the relay tree, edge/media/relaytree.py). The segments themselves travel on ZeroMQ PUB/SUB
(edge/media/fanout.py), not in these messages.
"""

from dataclasses import dataclass

from edge.errors import DecodeError

MAX_DEAD = 8              # sources a LiveWant may report as silent


@dataclass(frozen=True)
class LiveWant:
    """Where do I subscribe to your live stream name? port: the asker's own PUB port (0: it relays to no one),
    capacity: how many nodes it may relay to within its upload limit, dead: sources it heard nothing from."""

    id: int
    name: str
    port: int = 0
    capacity: int = 0
    dead: tuple[str, ...] = ()
    TYPE = 30


@dataclass(frozen=True)
class LiveSource:
    """Subscribe to node at endpoint (tcp://HOST:PORT; HOST empty: the publisher's own address as the asker
    knows it). every: seconds within which the asker asks again (its place in the tree expires otherwise)."""

    id: int
    node: str
    endpoint: str
    every: float = 5.0
    TYPE = 31


LIVE_MESSAGES = (LiveWant, LiveSource)


def live_body(msg) -> dict:
    if isinstance(msg, LiveWant):
        return {"id": msg.id, "name": msg.name, "port": msg.port, "capacity": msg.capacity, "dead": list(msg.dead)}
    return {"id": msg.id, "node": msg.node, "endpoint": msg.endpoint, "every": int(msg.every * 1000)}


def parse_live(cls, b):
    """b: codec._Body of the message's body (typed fields, errors naming them)."""
    if cls is LiveWant:
        name = b.text("name")
        if not 1 <= len(name) <= 64:
            raise DecodeError("LiveWant: a stream name is 1 to 64 characters")
        return LiveWant(b.uint("id"), name, b.uint("port", high=65535), b.uint("capacity", high=64),
                        b.texts("dead", limit=MAX_DEAD))
    return LiveSource(b.uint("id"), b.text("node"), b.text("endpoint"), b.uint("every", high=3_600_000) / 1000)
