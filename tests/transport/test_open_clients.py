"""open_clients: several nodes dialled at once; the ones gone cost one timeout together, not one each."""

import functools
import socket
import time

import pytest
import trio

from edge.identity import Identity
from edge.store import Store
from edge.transport.client import open_clients
from edge.transport.server import Policy, serve_transport


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.trio
async def test_the_answering_nodes_after_one_timeout(tmp_path):
    me = Identity.generate()
    async with trio.open_nursery() as nursery:
        alive = {}
        for i in range(2):
            ident = Identity.generate()
            store = Store(str(tmp_path / f"s{i}"))
            handle = await nursery.start(functools.partial(serve_transport, store, ident, Policy(),
                                                           "tcp://127.0.0.1:0"))
            alive[ident.node_id] = handle.endpoint
        gone = {Identity.generate().node_id: f"tcp://127.0.0.1:{closed_port()}" for _ in range(3)}

        def dial(endpoint):
            async def get():
                return endpoint
            return get
        failed = []
        t0 = time.monotonic()
        async with open_clients(me, {n: dial(e) for n, e in {**gone, **alive}.items()}, timeout=1.0,
                                on_fail=lambda node, exc: failed.append(node)) as clients:
            took = time.monotonic() - t0
            assert set(clients) == set(alive) and sorted(failed) == sorted(gone)
            for node, client in clients.items():
                assert client.welcome.node == node
        print(f"\n2 nodes answering, 3 gone, a 1 s timeout each: the clients after {took:.2f} s")
        async with open_clients(me, {}) as none:
            assert none == {}
        nursery.cancel_scope.cancel()
