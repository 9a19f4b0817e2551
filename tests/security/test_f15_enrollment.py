"""Finding 15 of issue 20 (enrollment), kept fixed. On 53df6de `fleet enroll-server` held the fleet key, spoke
plain HTTP on 0.0.0.0, died on `//[x`; a stranger with a seed's token got the certificate (the real device a
409); certificates never expired and could not be revoked. Here: a delegated enrollment key with expiry,
short-lived certificates, pinned TLS, a bounded server that answers every malformed request with a 400 and
serves on, revocation honoured at admission over real sockets.

Run alone with `pytest -m attack`.
"""

import base64
import json
import os
import socket
import ssl
import time

import pytest
import trio

from edge.fleet.certificates import (REVOKED, CertificateError, check_certificate, serial, sign_certificate,
                                     sign_delegated, sign_delegation)
from edge.fleet.claims import Claims, Issuer
from edge.fleet.requests import ClaimError, claim_request, new_token, renewal_request
from edge.fleet.revocations import REVOKED_FILE, parse_revocations, sign_revocations, store_revocations
from edge.fleet.server import MAX_CONNECTIONS, serve_enrollment
from edge.fleet.tls import make_tls, pinned_request, server_context
from edge.identity import Identity
from edge.ipld import cbor
from edge.provisioning.device.claim import CLAIM_FILE, claim_certificate, save_claim
from edge.provisioning.device.nodekey import save_identity
from edge.store import Store
from edge.transport.client import PeerRefused, open_client
from edge.transport.server import Policy, serve_transport

pytestmark = pytest.mark.attack


@pytest.fixture
def store(tmp_path):
    with Store(str(tmp_path / "server")) as s:
        yield s


async def serve(nursery, store, identity, fleet, cert):
    endpoint = (await nursery.start(serve_transport, store, identity,
                                    Policy(admission="fleet", fleet_key=fleet.public_key, cert=cert),
                                    "tcp://127.0.0.1:0")).endpoint
    return endpoint


def _delegation(signer, key, expires, fleet_key=None) -> bytes:
    body = {"use": "enroll", "fleet": fleet_key or signer.public_key, "key": key.public_key, "expires": int(expires)}
    return cbor.dumps(body | {"sig": signer.sign(b"hearth-delegation\0" + cbor.dumps(body))})


def _forge(signer, delegation, node, days=30) -> bytes:
    """A delegated certificate built by hand (sign_delegated refuses to make these)."""
    body = {"fleet": cbor.loads(delegation)["fleet"], "node": node.node_id, "issued": int(time.time()),
            "expires": int(time.time() + days * 86400), "by": delegation}
    return cbor.dumps(body | {"sig": signer.sign(b"hearth-node-cert\0" + cbor.dumps(body))})


@pytest.mark.trio
async def test_f15_admission_takes_delegated_certificates_and_refuses_bad_ones(store):
    fleet, enroll, rogue, server, member = (Identity.generate() for _ in range(5))
    delegation = sign_delegation(fleet, enroll.node_id, 365)
    good = sign_delegated(enroll, delegation, member.node_id, 30)
    old_format = sign_certificate(fleet, member.node_id)                     # still admitted
    # the delegation expired yesterday (the certificate itself says 30 days more)
    expired_delegation = _forge(enroll, _delegation(fleet, enroll, time.time() - 86400), member)
    # a key the fleet never delegated to, vouching for itself in the fleet's name
    self_made = _forge(rogue, _delegation(rogue, rogue, time.time() + 86400, fleet.public_key), member)
    tampered = cbor.dumps(cbor.loads(good) | {"expires": 1 << 40})
    wrong_signer = _forge(rogue, delegation, member)                        # the fleet's delegation, not its key
    expired = sign_delegated(enroll, delegation, member.node_id, 1, now=time.time() - 2 * 86400)
    cases = [(expired_delegation, "delegation has expired"), (self_made, "delegation's signature"),
             (tampered, "not its enrollment key's"), (wrong_signer, "not its enrollment key's"),
             (expired, "expired")]
    with pytest.raises(CertificateError):    # the enrollment key cannot sign for itself under another delegation
        sign_delegated(rogue, delegation, member.node_id, 1)
    async with trio.open_nursery() as nursery:
        endpoint = await serve(nursery, store, server, fleet, sign_delegated(enroll, delegation, server.node_id, 30))
        for cert, words in cases:
            with pytest.raises(PeerRefused, match=words):
                async with open_client(member, endpoint, server.node_id, cert=cert):
                    pass
        for cert in (good, old_format):
            async with open_client(member, endpoint, server.node_id, cert=cert) as c:
                check_certificate(c.welcome.cert, fleet.public_key, server.node_id)   # and the server proves its
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_f15_a_revoked_node_is_refused_at_admission_and_an_older_list_never_replaces_a_newer(tmp_path, store):
    fleet, enroll, server, member, other = (Identity.generate() for _ in range(5))
    delegation = sign_delegation(fleet, enroll.node_id, 365)
    cert = sign_delegated(enroll, delegation, member.node_id, 30)
    other_cert = sign_delegated(enroll, delegation, other.node_id, 30)
    data = tmp_path / "node"
    data.mkdir()
    first = sign_revocations(fleet, 1, [], [serial(other_cert)])              # other's certificate by serial
    second = sign_revocations(fleet, 2, [member.node_id], [serial(other_cert)])
    async with trio.open_nursery() as nursery:
        endpoint = await serve(nursery, store, server, fleet, sign_delegated(enroll, delegation, server.node_id, 30))
        async with open_client(member, endpoint, server.node_id, cert=cert):
            pass                                                             # admitted before
        assert store_revocations(str(data), first, fleet.public_key)
        with pytest.raises(PeerRefused, match="revoked"):
            async with open_client(other, endpoint, server.node_id, cert=other_cert):
                pass
        async with open_client(member, endpoint, server.node_id, cert=cert):
            pass
        assert store_revocations(str(data), second, fleet.public_key)
        with pytest.raises(PeerRefused, match="revoked"):
            async with open_client(member, endpoint, server.node_id, cert=cert):
                pass
        # a fresh certificate does not help a revoked node (its id is listed, every text of its key)
        with pytest.raises(PeerRefused, match="revoked"):
            async with open_client(member, endpoint, server.node_id,
                                   cert=sign_delegated(enroll, delegation, member.node_id, 30)):
                pass
        # the older list, replayed (from a stale server, a man in the middle): refused, the newer kept
        assert not store_revocations(str(data), first, fleet.public_key)
        assert (data / REVOKED_FILE).read_bytes() == second and REVOKED[fleet.public_key].seq == 2
        with pytest.raises(PeerRefused, match="revoked"):
            async with open_client(member, endpoint, server.node_id, cert=cert):
                pass
        # a list another key signed, or a tampered one, is not taken
        for bad in (sign_revocations(Identity.generate(), 9, [], []),
                    cbor.dumps(cbor.loads(second) | {"seq": 99})):
            with pytest.raises(CertificateError):
                store_revocations(str(data), bad, fleet.public_key)
        assert REVOKED[fleet.public_key].seq == 2
        nursery.cancel_scope.cancel()


@pytest.fixture
def enrollment(tmp_path):
    fleet, enroll = Identity.generate(), Identity.generate()
    tokens = {"shop-1": new_token()}
    Claims.create(str(tmp_path / "claims.json"), fleet.node_id, tokens)
    claims = Claims(str(tmp_path / "claims.json"), Issuer(enroll, sign_delegation(fleet, enroll.node_id, 365),
                                                          fleet.node_id))
    pin = make_tls(str(tmp_path / "tls.pem"), str(tmp_path / "tls.key"), "127.0.0.1")
    return fleet, tokens, claims, pin, server_context(str(tmp_path / "tls.pem"), str(tmp_path / "tls.key"))


def _tls_exchange(port: int, payload: bytes, tls: bool = True) -> bytes:
    """Send payload raw (over TLS unless told) and read the answer until the server closes (bounded)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        sock = ctx.wrap_socket(raw) if tls else raw
        try:
            sock.sendall(payload)
            out = b""
            while len(out) < 1 << 16:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                out += chunk
            return out
        except (ssl.SSLError, ConnectionError):
            return b""


@pytest.mark.trio
async def test_f15_malformed_requests_get_a_400_and_the_server_serves_on(enrollment):
    fleet, tokens, claims, pin, ctx = enrollment
    node = Identity.generate()
    logged = []
    async with trio.open_nursery() as nursery:
        port = await nursery.start(lambda task_status: serve_enrollment(
            claims, ctx, "127.0.0.1", 0, say=lambda line, err: logged.append(line), task_status=task_status))
        cases = [(b"GET //[x HTTP/1.1\r\nHost: a\r\n\r\n", b" 404 "),           # finding 2b: a 404, no crash
                 (b"\x00\xff garbage\r\n\r\n", b" 400 "),
                 (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 20000 + b"\r\n\r\n", b" 431 "),
                 (b"POST /claim HTTP/1.1\r\nHost: a\r\nContent-Length: 99999\r\n\r\n" + b"x" * 9000, b" 413 "),
                 (b"POST /claim HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx", b" 400 "),
                 (b"POST /claim HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\n\xff\xfe{[", b" 400 "),
                 (b"POST /claim HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n[]", b" 400 "),
                 (b"POST /renew HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}", b" 400 "),
                 (b"GET /claim HTTP/1.1\r\nHost: a\r\n\r\n", b" 405 "),
                 (b"GET /revoked HTTP/1.1\r\nHost: a\r\n\r\n", b" 404 ")]
        for payload, status in cases:
            answer = await trio.to_thread.run_sync(_tls_exchange, port, payload)
            assert answer[8:13] == status, (payload[:40], answer[:200])
        # plain HTTP to the TLS port: no HTTP answer (at most a TLS alert), and the connection is closed
        plain = await trio.to_thread.run_sync(_tls_exchange, port, b"GET /claim HTTP/1.1\r\n\r\n", False)
        assert b"HTTP" not in plain and len(plain) < 64
        # more connections than MAX_CONNECTIONS at once, idle: the ones over are closed at once, and once they go
        # the server answers again
        idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(MAX_CONNECTIONS + 8)]
        await trio.sleep(0.5)
        closed = 0
        for s in idle[MAX_CONNECTIONS:]:
            s.settimeout(5)
            try:
                closed += s.recv(1) == b""
            except (ConnectionError, socket.timeout):
                pass
        print(f"{closed} of {len(idle) - MAX_CONNECTIONS} connections over the limit were closed at once")
        for s in idle:
            s.close()
        await trio.sleep(0.5)
        status, body = await trio.to_thread.run_sync(
            lambda: pinned_request(f"https://127.0.0.1:{port}/claim", pin,
                                   claim_request(node, tokens["shop-1"], fleet.node_id)))
        assert status == 200 and json.loads(body)["device"] == "shop-1"
        nursery.cancel_scope.cancel()
    assert any("enrolled shop-1 as " + node.node_id in line for line in logged)


@pytest.mark.trio
async def test_f15_a_wrong_tls_certificate_is_refused_before_the_claim_is_sent(tmp_path, enrollment):
    fleet, tokens, claims, pin, ctx = enrollment
    impostor_pin = make_tls(str(tmp_path / "other.pem"), str(tmp_path / "other.key"), "127.0.0.1")
    node = Identity.generate()
    data = tmp_path / "device"
    data.mkdir()
    fd = os.open(str(data), os.O_RDONLY)
    save_identity(fd, node)
    os.close(fd)
    logged = []
    async with trio.open_nursery() as nursery:
        # the man in the middle: an enrollment server with another certificate (and the same claims)
        port = await nursery.start(lambda task_status: serve_enrollment(
            claims, server_context(str(tmp_path / "other.pem"), str(tmp_path / "other.key")), "127.0.0.1", 0,
            say=lambda line, err: logged.append(line), task_status=task_status))
        url = f"https://127.0.0.1:{port}/claim"
        save_claim(str(data), tokens["shop-1"], url, fleet.node_id, pin)
        with pytest.raises(ClaimError, match="not the one pinned in the seed") as exc:
            await trio.to_thread.run_sync(claim_certificate, str(data), 10)
        assert exc.value.status == 495 and impostor_pin[:16] in str(exc.value)
        assert not logged                              # nothing reached it: no claim, no proof to relay
        assert (data / CLAIM_FILE).exists() and not (data / "fleet.cert").exists()
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_f15_a_stolen_token_wins_once_then_is_seen_and_revoked(tmp_path, store, enrollment):
    """What remains of a seed copied before first boot: the stranger who claims first gets a certificate. The
    real device's 409 names the stranger's node; the operator revokes the token and the node; the stranger is
    then refused at admission and cannot renew."""
    fleet, tokens, claims, pin, ctx = enrollment
    stranger, device, server = Identity.generate(), Identity.generate(), Identity.generate()
    cert = base64.b64decode(claims.answer(claim_request(stranger, tokens["shop-1"], fleet.node_id))["certificate"])
    with pytest.raises(ClaimError, match="already used by node " + stranger.node_id):
        claims.answer(claim_request(device, tokens["shop-1"], fleet.node_id))
    offline = Claims(claims.path, fleet=fleet.node_id)
    assert [e["node"] for e in offline.devices()] == [stranger.node_id]
    offline.revoke("shop-1")
    revoked = sign_revocations(fleet, 1, [stranger.node_id], [])
    assert store_revocations(str(tmp_path), revoked, fleet.public_key)
    assert parse_revocations((tmp_path / REVOKED_FILE).read_bytes(), fleet.public_key).seq == 1
    with pytest.raises(ClaimError, match="revoked"):
        claims.renew(renewal_request(stranger, cert, fleet.node_id))
    async with trio.open_nursery() as nursery:
        endpoint = await serve(nursery, store, server, fleet, sign_certificate(fleet, server.node_id))
        with pytest.raises(PeerRefused, match="revoked"):
            async with open_client(stranger, endpoint, server.node_id, cert=cert):
                pass
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_f15_a_running_agent_honours_its_revocation_list_and_renews_its_certificate(tmp_path, enrollment):
    """A real agent (subprocess, loopback) in a fleet: at start it honours the revocation list in its data
    directory (a revoked member is refused at its transport), renews its due certificate from the enrollment
    server over pinned TLS, presents the new one in its Welcome at once, and says so in `hearth status`."""
    from edge.fleet.renewal import ENROLL_FILE
    from edge.identity import KEY_FILE
    from tests.agent.netns import Node
    fleet, tokens, claims, pin, ctx = enrollment
    issuer = claims.issuer
    member, revoked_member = Identity.generate(), Identity.generate()
    data = tmp_path / "agent"
    env = {"HEARTH_MDNS": "false", "HEARTH_TRANSPORT_PORT": "0", "HEARTH_METRICS_PORT": "0",
           "HEARTH_GATEWAY_PORT": "0", "HEARTH_ADMISSION": "fleet", "HEARTH_FLEET_KEY": fleet.node_id,
           "HEARTH_FLEET_CERT": "fleet.cert"}
    os.makedirs(data)
    (data / "fleet.cert").write_bytes(b"")              # `hearth init` runs before the certificate is there
    node = await trio.to_thread.run_sync(lambda: Node(None, str(data), env))
    me = Identity.load(str(data / KEY_FILE))
    claims.answer(claim_request(me, tokens["shop-1"], fleet.node_id))          # enrolled at this server
    old = sign_delegated(issuer.key, issuer.delegation, me.node_id, 1, now=time.time() - 0.8 * 86400)
    (data / "fleet.cert").write_bytes(old)
    (data / REVOKED_FILE).write_bytes(sign_revocations(fleet, 3, [revoked_member.node_id], []))
    logged = []
    from edge.images.qemu import free_port
    port = free_port()
    (data / ENROLL_FILE).write_text(json.dumps({"url": f"https://127.0.0.1:{port}/claim", "pin": pin,
                                                "fleet": fleet.node_id}))
    # the enrollment server is down: the agent starts, keeps its certificate, and says renewal is failing
    await trio.to_thread.run_sync(node.start)
    try:
        status = None
        with trio.move_on_after(30):
            while not (status and status["certificate"]["failures"]):
                status = await trio.to_thread.run_sync(node.status)
                await trio.sleep(0.3)
        assert status["certificate"]["failures"] == 1 and status["certificate"]["next_try"] > time.time() + 30
        assert (data / "fleet.cert").read_bytes() == old
        text = await trio.to_thread.run_sync(node.hearth, "status")
        assert "RENEWAL FAILING (1 tries; the certificate is kept until it expires" in text, text
        print(text.splitlines()[-1])
    finally:
        await trio.to_thread.run_sync(node.stop)
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: serve_enrollment(
            claims, ctx, "127.0.0.1", port, say=lambda line, err: logged.append(line), task_status=task_status))
        try:
            await trio.to_thread.run_sync(node.start)
            status = None
            with trio.move_on_after(30):
                while not (status and status["certificate"]["renewed"]):
                    status = await trio.to_thread.run_sync(node.status)
                    await trio.sleep(0.3)
            assert status["certificate"]["renewed"], (status, node.logs())
            new = (data / "fleet.cert").read_bytes()
            assert new != old and read_expiry(new, fleet, me) > time.time() + 29 * 86400
            assert status["certificate"]["revocations"] == 3 and status["certificate"]["failures"] == 0
            assert any("renewed shop-1 as " + me.node_id in line for line in logged)
            endpoint = status["endpoint"]
            for who in (member, revoked_member):
                cert = sign_delegated(issuer.key, issuer.delegation, who.node_id, 30)
                if who is revoked_member:
                    with pytest.raises(PeerRefused, match="revoked"):
                        async with open_client(who, endpoint, me.node_id, cert=cert):
                            pass
                else:
                    async with open_client(who, endpoint, me.node_id, cert=cert) as c:
                        assert c.welcome.cert == new                   # the renewed one, without a restart
            text = await trio.to_thread.run_sync(node.hearth, "status")
            assert "fleet     certificate " + serial(new) in text, text
            print(text.splitlines()[-1])
        finally:
            await trio.to_thread.run_sync(node.stop)
            nursery.cancel_scope.cancel()


def read_expiry(cert, fleet, node) -> int:
    from edge.fleet.certificates import read_certificate
    return read_certificate(cert, fleet.public_key, node.node_id)["expires"]
