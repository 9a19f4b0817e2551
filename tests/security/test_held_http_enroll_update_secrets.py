"""What the audit of issue 20 found held at the gateway, in enrollment, updates and secrets on disk, kept held:
each test named for the item (test_held_...), against a real gateway on loopback or the real code paths with
the fixtures and helpers of tests/gateway, tests/test_enroll.py, tests/test_update.py and tests/test_provision.py.

Run alone with `pytest -m attack`."""

import base64
import json
import os
import shutil

import pytest
import trio

from edge.fleet.claims import Claims
from edge.fleet.requests import ClaimError, claim_request, new_token
from edge.gateway import Gateway
from edge.identity import KEY_FILE, Identity
from edge.provisioning.device.bootloader import entries
from edge.provisioning.device.claim import CLAIM_FILE
from edge.provisioning.device.firstboot import first_boot
from edge.provisioning.slots import UpdateError
from edge.store import Store

from tests.gateway.test_gateway import get, start, webrtc_gateway
from tests.gateway.test_isolation import raw
from tests.test_enroll import fleet  # noqa: F401  (the fixture: a fleet key, its tokens, claims and issuer)
from tests.test_provision import _seeds, boot_with, hearth
from tests.test_update import device, install, make  # noqa: F401  (device: the fixture of EFI and slots)

pytestmark = pytest.mark.attack

CLOSE = b"Host: x\r\nConnection: close\r\n\r\n"


@pytest.fixture
def store(tmp_path):
    with Store(str(tmp_path / "store")) as s:
        yield s


@pytest.fixture
def web(tmp_path):
    """A web directory with a player page, and a secret beside it that no request may reach."""
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "player.html").write_text("<p>player</p>\n")
    (tmp_path / "secret.txt").write_text("root:the-secret\n")
    return str(tmp_path / "web")


def answered(reply: bytes) -> int:
    """How many responses a reply holds."""
    return reply.count(b"HTTP/1.1 ")


@pytest.mark.trio
async def test_held_http_path_traversal_is_not_served(store, web):
    async with trio.open_nursery() as nursery:
        _, port = await start(nursery, store, web_dir=web)
        with trio.fail_after(30):
            for target in (b"/player/../secret.txt", b"/player/../../secret.txt", b"/player/%2e%2e/secret.txt",
                           b"/player/%2E%2E/%2e%2e/secret.txt", b"/player/..%2fsecret.txt",
                           b"/player/%2e%2e%2f%2e%2e%2fsecret.txt", b"/../secret.txt", b"/%2e%2e/secret.txt"):
                reply = await raw(port, b"GET " + target + b" HTTP/1.1\r\n" + CLOSE)
                assert reply.split(b" ", 2)[1] in (b"400", b"404"), (target, reply[:200])
                assert b"the-secret" not in reply, target
            status, _, body = await get(port, "/player/player.html")
            assert status == 200 and b"player" in body
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_held_http_absolute_form_targets_are_a_400(store):
    async with trio.open_nursery() as nursery:
        _, port = await start(nursery, store)
        with trio.fail_after(30):
            for target in (b"http://evil.example/api/streams", b"https://127.0.0.1/api/streams",
                           b"http://127.0.0.1:1/ipfs/x"):
                reply = await raw(port, b"GET " + target + b" HTTP/1.1\r\n" + CLOSE)
                assert reply.startswith(b"HTTP/1.1 400") and b"absolute-form request targets are not served" in reply
            assert (await get(port, "/api/streams"))[0] == 200
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_held_http_crlf_in_headers_is_refused_or_encoded(store):
    async with trio.open_nursery() as nursery:
        _, port = await start(nursery, store)
        with trio.fail_after(30):
            # a bare CR inside a request header: a 400, never a header split in two
            reply = await raw(port, b"GET /api/streams HTTP/1.1\r\nX-A: a\rInjected: 1\r\n" + CLOSE)
            assert reply.startswith(b"HTTP/1.1 400") and b"illegal header line" in reply, reply[:200]
            # CR LF in a target that ends up in a response header: percent-encoded, no header injected
            reply = await raw(port, b"GET /streams/a%0D%0ASet-Cookie:%20x=1 HTTP/1.1\r\n" + CLOSE)
            assert reply.startswith(b"HTTP/1.1 301"), reply[:200]
            assert b"location: /streams/a%0D%0ASet-Cookie:%20x=1/\r\n" in reply
            assert b"\r\nset-cookie" not in reply.lower()
            assert (await get(port, "/api/streams"))[0] == 200
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_held_http_duplicate_content_length_is_a_400(store):
    async with trio.open_nursery() as nursery:
        _, port = await start(nursery, store)
        with trio.fail_after(30):
            reply = await raw(port, b"POST /webrtc HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 40\r\n" + CLOSE
                              + b"abcGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
            assert reply.startswith(b"HTTP/1.1 400") and b"conflicting Content-Length headers" in reply, reply
            assert answered(reply) == 1 and b"smuggled" not in reply
            assert (await get(port, "/api/streams"))[0] == 200
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_held_http_content_length_with_transfer_encoding_smuggles_nothing(store):
    async with trio.open_nursery() as nursery:
        _, port = await start(nursery, store)
        with trio.fail_after(30):
            # a front end that went by Content-Length sees one request; the body by chunked encoding ends at
            # "0": the request hidden behind it is never answered
            hidden = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
            body = b"0\r\n\r\n" + hidden
            reply = await raw(port, b"POST /webrtc HTTP/1.1\r\nContent-Length: %d\r\nTransfer-Encoding: chunked\r\n"
                              % len(body) + CLOSE + body)
            assert answered(reply) == 1 and b"smuggled" not in reply, reply
            assert reply.split(b" ", 2)[1] in (b"400", b"404"), reply[:200]   # 404: WebRTC is off here
            assert (await get(port, "/api/streams"))[0] == 200
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_held_webrtc_bad_offers_end_that_request_only(store):
    async with webrtc_gateway(store) as (port, _):
        with trio.fail_after(60):
            for offer in (b"", b"not sdp at all", b"v=0\r\n", b"\xff\xfe" * 50, b"v=0\r\n" * 1000):
                reply = await raw(port, b"POST /webrtc HTTP/1.1\r\nContent-Type: application/sdp\r\n"
                                  b"Content-Length: %d\r\n" % len(offer) + CLOSE + offer)
                assert reply.startswith(b"HTTP/1.1 400") and b"the offer has no data channel" in reply, reply
            reply = await raw(port, b"POST /webrtc HTTP/1.1\r\nContent-Type: application/sdp\r\n"
                              b"Content-Length: 10000000\r\n" + CLOSE + b"x" * 300_000)
            assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
            reply = await raw(port, b"POST /webrtc HTTP/1.1\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
                              + CLOSE + b"abc")
            assert reply.startswith(b"HTTP/1.1 415") and b"Content-Type: application/sdp" in reply
            assert (await get(port, "/api/streams"))[0] == 200


def test_held_enrollment_with_guessed_or_replayed_proofs_is_refused(fleet):  # noqa: F811
    key, tokens, path, issuer = fleet
    claims = Claims(path, issuer)
    node, thief = Identity.generate(), Identity.generate()
    for _ in range(20):                          # guessed tokens
        with pytest.raises(ClaimError, match="unknown or wrong claim token"):
            claims.answer(claim_request(thief, new_token(), key.node_id))
    # the real device's proof, seen on the wire and replayed for the thief's node, re-signed by the thief
    seen = json.loads(claim_request(node, tokens["shop-1"], key.node_id))
    forged = {k: v for k, v in seen.items() if k != "sig"}
    forged["node"] = thief.node_id
    signed = json.dumps(forged, sort_keys=True, separators=(",", ":")).encode()
    forged["sig"] = base64.b64encode(thief.sign(signed)).decode()
    with pytest.raises(ClaimError, match="unknown or wrong claim token"):
        claims.answer(json.dumps(forged).encode())
    seen["node"] = thief.node_id                 # or replayed without re-signing
    with pytest.raises(ClaimError, match="not signed by the node"):
        claims.answer(json.dumps(seen).encode())
    # nothing was bound: the real device still gets its certificate
    assert all(e["node"] is None for e in json.load(open(path))["tokens"].values())
    assert claims.answer(claim_request(node, tokens["shop-1"], key.node_id))["device"] == "shop-1"


@pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd is not installed")
def test_held_an_update_from_an_untrusted_signer_is_refused_before_any_write(tmp_path, device):  # noqa: F811
    trusted, stranger = Identity.generate(), Identity.generate()
    slot_b = device["slots"]["b"].read_bytes()
    efi = sorted(str(p.relative_to(tmp_path / "efi")) for p in (tmp_path / "efi").rglob("*"))
    with pytest.raises(UpdateError, match="not signed by a key this device trusts"):
        install(device, make(tmp_path, trusted, sign_with=stranger), trusted)
    assert device["slots"]["b"].read_bytes() == slot_b
    assert sorted(str(p.relative_to(tmp_path / "efi")) for p in (tmp_path / "efi").rglob("*")) == efi
    assert [e["slot"] for e in entries(device["boot"])] == ["a"]


def test_held_secrets_are_0600(tmp_path):
    # the identity key `hearth init` makes
    r = hearth("--data-dir", str(tmp_path / "node"), "init")
    assert r.returncode == 0, r.stderr
    assert oct(os.stat(tmp_path / "node" / KEY_FILE).st_mode & 0o777) == "0o600"
    # first boot from a seed with a claim token and a Wi-Fi passphrase: the claim file, the key, the Wi-Fi file
    boot = boot_with(tmp_path, _seeds()["claim"][0])
    data = tmp_path / "data"
    first_boot(str(boot), str(data), log=lambda m: None, fleet_pub=str(tmp_path / "none"))
    for name in (CLAIM_FILE, KEY_FILE, "network/wifi.conf"):
        assert oct(os.stat(data / name).st_mode & 0o777) == "0o600", name
    assert "tok-123456" in (data / CLAIM_FILE).read_text()
