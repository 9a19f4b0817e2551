"""A revocation reaches the broker at once: the enrollment server's watcher rewrites mosquitto's password file
and sends it SIGHUP, so a node whose claim is revoked (`hearth fleet claims --revoke`, another process) or that
the fleet's revocation list names (`hearth fleet revoke`, copied to the server's directory) is disconnected and
cannot connect again, while the server keeps running and a node still enrolled stays on."""

import time

import pytest
import trio

from edge.fleet.brokerauth import BrokerCredentials
from edge.fleet.certificates import sign_delegation
from edge.fleet.claims import Claims, Issuer
from edge.fleet.mqtt import BrokerError, connect, parse_broker
from edge.fleet.requests import claim_request, new_token
from edge.fleet.revocations import REVOKED_FILE, extend
from edge.fleet.server import keep_broker_passwords
from edge.identity import Identity
from tests.fleet.broker import Mosquitto, free_port


class Held:
    """A node's connection to the broker, held open in its own task until the broker ends it."""

    def __init__(self, url: str, node: str):
        self.url, self.node = url, node
        self.up, self.ended = trio.Event(), trio.Event()
        self.session = None

    async def run(self):
        try:
            async with connect(parse_broker(self.url), self.node) as session:
                self.session = session
                self.up.set()
                await trio.sleep_forever()
        except BrokerError:
            self.ended.set()

    async def cut_off(self) -> float:
        """Seconds until the broker ends this connection; then a new one is refused."""
        start = time.monotonic()
        with trio.fail_after(10):
            await self.ended.wait()
        took = time.monotonic() - start
        with pytest.raises(BrokerError, match="refused"):
            async with connect(parse_broker(self.url), self.node):
                pass
        return took


@pytest.mark.trio
async def test_a_revoked_node_is_off_the_broker_without_a_restart(tmp_path):
    fleet, enroll = Identity.generate(), Identity.generate()
    tokens = {name: new_token() for name in ("shop-1", "shop-2", "shop-3")}
    path = str(tmp_path / "claims.json")
    Claims.create(path, fleet.node_id, tokens)
    port = free_port()
    broker = None
    try:
        credentials = BrokerCredentials(f"mqtt://127.0.0.1:{port}", str(tmp_path))
        credentials.write_passwords([])           # mosquitto needs its password file to start
        broker = Mosquitto(port, passwords=credentials.passwd)
        credentials.pid_file = broker.pid_file    # as `--broker-pid-file` names it
        claims = Claims(path, Issuer(enroll, sign_delegation(fleet, enroll.node_id, 365), fleet.node_id),
                        broker=credentials)
        nodes = [Identity.generate() for _ in tokens]
        urls = [claims.answer(claim_request(n, tokens[name], fleet.node_id))["broker"]
                for n, name in zip(nodes, tokens)]
        said = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: keep_broker_passwords(claims, str(tmp_path / REVOKED_FILE),
                                                             lambda line, err: said.append(line), 0.2))
            held = [Held(url, n.node_id) for url, n in zip(urls, nodes)]
            for h in held:
                nursery.start_soon(h.run)
                with trio.fail_after(10):
                    await h.up.wait()
            # the operator revokes shop-1's claim token from another process (as `hearth fleet claims --revoke`
            # does): the server sees the claims file change
            Claims.of_file(path).revoke("shop-1")
            print(f"\nclaim revoked: node 1 off the broker in {await held[0].cut_off():.2f} s")
            # the fleet key's revocation list naming node 2, copied into the server's directory
            extend(fleet, str(tmp_path / REVOKED_FILE), [nodes[1].node_id])
            print(f"revocation list: node 2 off the broker in {await held[1].cut_off():.2f} s")
            assert not held[2].ended.is_set() and held[2].session.client.is_connected()   # never cut off
            async with connect(parse_broker(urls[2]), nodes[2].node_id):
                pass
            nursery.cancel_scope.cancel()
        assert said and said[-1].startswith("broker: 1 nodes")
        assert credentials.listed == frozenset({nodes[2].node_id})
    finally:
        if broker is not None:
            broker.close()
