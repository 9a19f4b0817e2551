"""LiveWant and LiveSource (edge/wire/live.py): round trips and the bounds a parser holds to."""

import pytest

from edge.errors import DecodeError
from edge.ipld import cbor
from edge.wire import parse_message, serialize_message
from edge.wire.live import LiveSource, LiveWant


def test_round_trips():
    for msg in (LiveWant(1, "cam", 5000, 2, ("hnaaaa",)), LiveWant(2, "c"), LiveSource(3, "hnbbbb", "tcp://:5000"),
                LiveSource(4, "hnbbbb", "tcp://10.0.0.2:5001", 2.5)):
        assert parse_message(serialize_message(msg)) == msg


@pytest.mark.parametrize("body", [
    {"id": 1, "name": "", "port": 1, "capacity": 0, "dead": []},             # no name
    {"id": 1, "name": "x" * 65, "port": 1, "capacity": 0, "dead": []},       # too long a name
    {"id": 1, "name": "cam", "port": 70000, "capacity": 0, "dead": []},      # not a port
    {"id": 1, "name": "cam", "port": 1, "capacity": 65, "dead": []},         # too many children
    {"id": 1, "name": "cam", "port": 1, "capacity": 0, "dead": ["n"] * 9},   # too many dead sources
    {"id": 1, "name": "cam", "port": "1", "capacity": 0, "dead": []},        # the wrong type
])
def test_bad_live_wants_are_refused(body):
    header = serialize_message(LiveWant(1, "cam"))[0]
    with pytest.raises(DecodeError):
        parse_message([header, cbor.dumps(body)])
