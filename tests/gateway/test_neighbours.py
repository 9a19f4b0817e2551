"""The gateway's answers when content comes from a neighbour (real agents on loopback): the quota is a 507,
not a 404 (issue 14), and a fetch for a gateway client spends from its budget: past it the fetch stops and the
next one is a 429 with Retry-After (issue 20 finding 5, `Range: bytes=0-0` laundering 64 MiB)."""

import contextlib
import os

import pytest

from tests.agent.netns import Node
from tests.gateway.test_isolation import partial_get
from tests.agent.test_shutdown import free_port


@contextlib.contextmanager
def holding(tmp):
    """Agent a on loopback holding two 2 MiB files. Yields (a, its transport port, [(bytes, CID)] of both)."""
    a = Node(None, str(tmp / "a"), {"HEARTH_MDNS": "false"})
    files = []
    for name in ("x", "y"):
        data = os.urandom(2 << 20)
        (tmp / name).write_bytes(data)
        files.append((data, a.hearth("add", "-q", str(tmp / name)).strip()))
    pa = free_port()
    a.start("--port", str(pa), "--metrics-port", "0")
    try:
        yield a, pa, files
    finally:
        a.stop()


@pytest.fixture(scope="module")
def holder(tmp_path_factory):
    """The holder agent, shared by this file's tests (none writes to it)."""
    with holding(tmp_path_factory.mktemp("holder")) as h:
        yield h


@contextlib.contextmanager
def neighbour_and(tmp_path, holder, env: dict):
    """Agent b, with env and a gateway, has the holder a (see holding) as its only neighbour. Yields (b, its
    gateway port, [(bytes, CID)] of a's files)."""
    a, pa, files = holder
    gateway = free_port()
    b = Node(None, str(tmp_path / "b"), {"HEARTH_MDNS": "false", **env, "HEARTH_GATEWAY_PORT": str(gateway)})
    b.start("--port", str(free_port()), "--metrics-port", "0", "--peer", f"{a.node_id}@127.0.0.1:{pa}")
    try:
        yield b, gateway, files
    finally:
        b.stop()


def fetch(port, path, headers=None):
    return partial_get(port, path, headers, timeout=60)   # a fetch from a neighbour may take a while


def test_a_fetch_past_the_quota_is_a_507(tmp_path, holder):
    with neighbour_and(tmp_path, holder, {"HEARTH_QUOTA": "100000"}) as (b, gateway, files):
        (data, cid), _ = files
        status, _, body, _ = fetch(gateway, f"/ipfs/{cid}")
        assert status == 507 and b"quota" in body, (status, body)
        assert b.proc.poll() is None


def test_a_gateway_client_past_its_fetch_budget_gets_429_and_the_fetch_stops(tmp_path, holder):
    with neighbour_and(tmp_path, holder, {"HEARTH_GATEWAY_FETCH_CLIENT": str(600_000)}) as (b, gateway, files):
        (x, xcid), (y, ycid) = files
        # one byte asked for; the fetch goes on for the whole file and is charged to this client, so it stops
        # past 600 kB instead of bringing the whole 2 MiB
        status, _, body, _ = fetch(gateway, f"/ipfs/{xcid}", {"Range": "bytes=0-0"})
        assert status == 206 and body == x[:1]
        status, h, body, whole = fetch(gateway, f"/ipfs/{xcid}")
        assert status in (200, 429)
        if status == 200:   # the fetch was stopped under it: cut short, never wrong bytes
            assert not whole and body == x[:len(body)]
        status, h, body, _ = fetch(gateway, f"/ipfs/{ycid}")
        assert status == 429 and int(h["retry-after"]) > 0 and b"fetched from neighbours" in body
        fetched = b.status()["fetched"]["bytes"]
        assert fetched < 2 << 20, f"{fetched} bytes fetched past a budget of 600 kB"
        print(f"\nfetched for the client before its budget stopped it: {fetched} bytes")
        assert b.proc.poll() is None
