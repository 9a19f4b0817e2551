"""Enrollment: the wire formats and the fleet's answers as pure functions, then the whole path for real — signed
seeds with tokens from `hearth fleet provision --claim-url --pin`, first boot, `hearth fleet enroll-server`
over TLS holding only a delegated enrollment key, `hearth fleet claim` on the device, renewal — and the refusals
(a reused token, a wrong one, a forged claim, a closed window, a revoked token, a wrong TLS certificate)."""

import base64
import json
import os
import subprocess
import sys
import time
import types

import pytest
import trio

from edge.fleet.certificates import (check_certificate, honour, read_certificate, sign_certificate, sign_delegated,
                                     sign_delegation)
from edge.fleet.claims import Claims, Issuer
from edge.fleet.renewal import ENROLL_FILE, Renewal
from edge.fleet.requests import ClaimError, accept_certificate, claim_request, new_token, renewal_request
from edge.fleet.revocations import parse_revocations, sign_revocations
from edge.fleet.server import serve_enrollment
from edge.fleet.tls import make_tls, server_context
from edge.identity import KEY_FILE, Identity, public_key_of
from edge.provisioning.device.claim import CLAIM_FILE


@pytest.fixture
def fleet(tmp_path):
    key, enroll = Identity.generate(), Identity.generate()
    tokens = {"shop-1": new_token(), "shop-2": new_token()}
    path = tmp_path / "claims.json"
    Claims.create(str(path), key.node_id, tokens)
    issuer = Issuer(enroll, sign_delegation(key, enroll.node_id, 365), key.node_id)
    return key, tokens, str(path), issuer


def test_a_claim_gets_a_short_lived_delegated_certificate_for_the_claiming_node_once(fleet):
    key, tokens, path, issuer = fleet
    assert tokens["shop-1"] not in open(path).read()          # only hashes are kept
    claims = Claims(path, issuer)
    a, b = Identity.generate(), Identity.generate()
    answer = claims.answer(claim_request(a, tokens["shop-1"], key.node_id), 30)
    cert = accept_certificate(answer, a, key.node_id)
    info = read_certificate(cert, key.public_key, a.node_id)
    assert info["delegated"] and 29 * 86400 < info["expires"] - time.time() <= 30 * 86400
    assert answer["device"] == "shop-1"
    # the same node again (it lost power before saving the answer): a certificate again
    again = claims.answer(claim_request(a, tokens["shop-1"], key.node_id))
    check_certificate(base64.b64decode(again["certificate"]), key.public_key, a.node_id)
    with pytest.raises(ClaimError, match="already used by node " + a.node_id) as exc:
        claims.answer(claim_request(b, tokens["shop-1"], key.node_id))
    assert exc.value.status == 409
    # the binding survives a restart of the server, and the operator sees it
    with pytest.raises(ClaimError, match="already used"):
        Claims(path, issuer).answer(claim_request(b, tokens["shop-1"], key.node_id))
    Claims(path, issuer).answer(claim_request(b, tokens["shop-2"], key.node_id))
    seen = {e["device"]: e["node"] for e in Claims(path, fleet=key.node_id).devices()}
    assert seen == {"shop-1": a.node_id, "shop-2": b.node_id}


def test_refusals_say_what_is_wrong(fleet):
    key, tokens, path, issuer = fleet
    claims = Claims(path, issuer)
    node = Identity.generate()
    with pytest.raises(ClaimError, match="unknown or wrong claim token"):
        claims.answer(claim_request(node, new_token(), key.node_id))
    other = Identity.generate()
    with pytest.raises(ClaimError, match="not " + other.node_id):
        claims.answer(claim_request(node, tokens["shop-1"], other.node_id))
    # a proof seen on the wire, replayed for another node id: the signature is the other node's, the proof not
    seen = json.loads(claim_request(node, tokens["shop-1"], key.node_id))
    thief = Identity.generate()
    forged = dict(seen, node=thief.node_id)
    forged.pop("sig")
    body = json.dumps(forged, sort_keys=True, separators=(",", ":")).encode()
    forged["sig"] = base64.b64encode(thief.sign(body)).decode()
    with pytest.raises(ClaimError, match="unknown or wrong claim token"):
        claims.answer(json.dumps(forged).encode())
    seen["node"] = thief.node_id                               # without re-signing
    with pytest.raises(ClaimError, match="not signed by the node"):
        claims.answer(json.dumps(seen).encode())
    for data, words in ((b"{", "not JSON"), (b"[]", "exactly the string fields"), (b"x" * 5000, "at most"),
                        (json.dumps({**json.loads(claim_request(node, "t", key.node_id)), "v": 2}).encode(),
                         "version")):
        with pytest.raises(ClaimError, match=words):
            claims.answer(data)
    other_issuer = Issuer(issuer.key, sign_delegation(other, issuer.key.node_id, 1), other.node_id)
    with pytest.raises(ClaimError, match="holds claims of fleet"):
        Claims(path, other_issuer)
    # nothing was bound by any of that
    assert all(e["node"] is None for e in json.load(open(path))["tokens"].values())


def test_a_closed_claim_window_and_a_revoked_token_are_refused(tmp_path, fleet):
    key, tokens, path, issuer = fleet
    late = str(tmp_path / "late.json")
    Claims.create(late, key.node_id, {"old": "tok-old"}, window_days=-1)       # the window closed yesterday
    node = Identity.generate()
    with pytest.raises(ClaimError, match="window has closed"):
        Claims(late, issuer).answer(claim_request(node, "tok-old", key.node_id))
    claims = Claims(path, issuer)
    cert = base64.b64decode(claims.answer(claim_request(node, tokens["shop-1"], key.node_id))["certificate"])
    Claims(path, fleet=key.node_id).revoke("shop-1")          # the operator, while the server runs
    with pytest.raises(ClaimError, match="revoked"):
        claims.answer(claim_request(node, tokens["shop-1"], key.node_id))
    with pytest.raises(ClaimError, match="revoked"):
        claims.renew(renewal_request(node, cert, key.node_id))
    with pytest.raises(ClaimError, match="no device"):
        claims.revoke("nobody")


def test_renewal_needs_the_node_key_and_a_genuine_certificate(fleet):
    key, tokens, path, issuer = fleet
    claims = Claims(path, issuer)
    node, stranger = Identity.generate(), Identity.generate()
    cert = base64.b64decode(claims.answer(claim_request(node, tokens["shop-1"], key.node_id))["certificate"])
    new = base64.b64decode(claims.renew(renewal_request(node, cert, key.node_id), 30)["certificate"])
    assert read_certificate(new, key.public_key, node.node_id)["expires"] > time.time() + 29 * 86400
    # an expired certificate of this node is renewed too (a box that was off for a while)
    old = sign_delegated(issuer.key, issuer.delegation, node.node_id, 1, now=time.time() - 5 * 86400)
    claims.renew(renewal_request(node, old, key.node_id))
    # a stranger with the node's certificate (it is public: every Hello carries it) but its own key
    with pytest.raises(ClaimError, match="is for"):
        claims.renew(renewal_request(stranger, cert, key.node_id))
    # a stranger with a certificate of its own from a key the fleet did not delegate to
    rogue = Identity.generate()
    forged = sign_delegated(rogue, sign_delegation(rogue, rogue.node_id, 1), stranger.node_id, 1)
    with pytest.raises(ClaimError, match="another fleet"):
        claims.renew(renewal_request(stranger, forged, key.node_id))
    # a node with a certificate the fleet signed directly, but never enrolled here
    with pytest.raises(ClaimError, match="not enrolled by this server"):
        claims.renew(renewal_request(stranger, sign_certificate(key, stranger.node_id), key.node_id))
    body = json.loads(renewal_request(node, cert, key.node_id))
    body["certificate"] = base64.b64encode(cert[:-1] + bytes([cert[-1] ^ 1])).decode()
    with pytest.raises(ClaimError, match="not signed by the node"):               # the node signed the other
        claims.renew(json.dumps(body).encode())
    # a node on the fleet's revocation list is not renewed
    honour(parse_revocations(sign_revocations(key, 1, [node.node_id], []), key.public_key))
    with pytest.raises(ClaimError, match="revocation list"):
        claims.renew(renewal_request(node, new, key.node_id))


def test_a_certificate_for_someone_else_is_not_accepted(fleet):
    key, _, _, _ = fleet
    me, other = Identity.generate(), Identity.generate()
    answer = {"certificate": base64.b64encode(sign_certificate(key, other.node_id)).decode()}
    with pytest.raises(ClaimError, match="no valid certificate for this node"):
        accept_certificate(answer, me, key.node_id)
    with pytest.raises(ClaimError, match="no valid certificate"):
        accept_certificate({"nothing": 1}, me, key.node_id)


# the whole path, over real sockets --------------------------------------------------------------------------


def hearth(*args, **kw):
    return subprocess.run([sys.executable, "-m", "edge", *args], capture_output=True, text=True, timeout=60, **kw)


def test_provision_first_boot_enroll_over_tls(tmp_path):
    from edge.images.qemu import free_port
    from edge.provisioning.device.firstboot import first_boot
    key_file = tmp_path / "fleet.key"
    assert hearth("fleet", "init", "-o", str(key_file)).returncode == 0
    fleet_id = Identity.load(str(key_file)).node_id
    (tmp_path / "devices.csv").write_text("name,quota\nshop-1,1G\nshop-2,\n")
    port = free_port()
    state = tmp_path / "server"
    # first start: no delegation yet; it makes its enrollment key and TLS certificate and says what to do
    r = hearth("fleet", "enroll-server", "--dir", str(state), "--claims", str(tmp_path / "seeds" / "claims.json"),
               "--listen",
               f"127.0.0.1:{port}")
    assert r.returncode == 1 and "hearth fleet delegate" in r.stderr, r.stderr
    enroll_id = r.stderr.split("enrollment key ")[1].split()[0]
    pin = r.stderr.split("TLS fingerprint ")[1].split()[0]
    assert oct(os.stat(state / "tls.key").st_mode & 0o777) == "0o600"
    assert hearth("fleet", "delegate", enroll_id, "--key", str(key_file), "-o",
                  str(state / "delegation.cert")).returncode == 0
    url = f"https://127.0.0.1:{port}/claim"
    r = hearth("fleet", "provision", "--devices", str(tmp_path / "devices.csv"), "--key", str(key_file), "-o",
               str(tmp_path / "seeds"), "--claim-url", f"http://127.0.0.1:{port}/claim", "--pin", pin)
    assert r.returncode == 2 and "https:// only" in r.stderr
    r = hearth("fleet", "provision", "--devices", str(tmp_path / "devices.csv"), "--key", str(key_file), "-o",
               str(tmp_path / "seeds"), "--claim-url", url, "--pin", pin)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "seeds" / "summary.json").read_text())["claims"] == "claims.json"
    server = subprocess.Popen([sys.executable, "-m", "edge", "fleet", "enroll-server", "--dir", str(state),
                               "--claims", str(tmp_path / "seeds" / "claims.json"), "--listen",
                               f"127.0.0.1:{port}", "--broker", "mqtts://broker.example:8883"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        devices, tokens, claims_text = {}, {}, {}
        for name in ("shop-1", "shop-2"):
            boot, data = tmp_path / name / "boot", tmp_path / name / "data"
            boot.mkdir(parents=True)
            for f in ("hearth-seed.toml", "hearth-seed.sig"):
                (boot / f).write_bytes((tmp_path / "seeds" / name / f).read_bytes())
            pub = tmp_path / "fleet.pub"
            pub.write_text(fleet_id + "\n")
            first_boot(str(boot), str(data), fleet_pub=str(pub), log=lambda m: None)
            claim = data / CLAIM_FILE
            assert oct(os.stat(claim).st_mode & 0o777) == "0o600"
            tokens[name] = json.loads(claim.read_text())["token"]
            assert json.loads(claim.read_text())["pin"] == pin
            claims_text[name] = claim.read_text()
            assert tokens[name] not in (boot / "hearth-seed.toml").read_text()    # gone from the boot partition
            devices[name] = data
        deadline = time.monotonic() + 30
        while True:                                                          # the server is up
            r = hearth("--data-dir", str(devices["shop-1"]), "fleet", "claim")
            if r.returncode == 0 or "could not reach" not in r.stderr or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert r.returncode == 0, r.stderr
        node = Identity.load(str(devices["shop-1"] / KEY_FILE)).node_id
        assert f"enrolled in fleet {fleet_id} as {node}" in r.stdout
        assert not (devices["shop-1"] / CLAIM_FILE).exists()
        cert = (devices["shop-1"] / "fleet.cert").read_bytes()
        assert read_certificate(cert, public_key_of(fleet_id), node)["delegated"]
        assert json.loads((devices["shop-1"] / ENROLL_FILE).read_text()) == {"url": url, "pin": pin,
                                                                              "fleet": fleet_id}
        from edge.config import load_config
        config = load_config(flags={"data_dir": str(devices["shop-1"])}, env={})
        assert (config.admission, config.fleet_key, config.fleet_cert) == ("fleet", fleet_id, "fleet.cert")
        assert config.fleet_broker.startswith(f"mqtts://{node}:") and \
            config.fleet_broker.endswith("@broker.example:8883")                 # its own broker password
        assert config.quota == 1_000_000_000                                   # the seed's settings stay
        # a power cut after hearth.toml was written, before claim.json was removed: the claim is made again and
        # ends the same; every key is there once. Root makes it, in the service user's directory, where a link
        # to a file outside was planted.
        shop1 = devices["shop-1"]
        toml_before = (shop1 / "hearth.toml").read_text()
        (shop1 / CLAIM_FILE).write_text(claims_text["shop-1"])
        outside = tmp_path / "outside"
        outside.write_text("not the node's\n")
        (shop1 / "fleet.cert").unlink()
        os.symlink(outside, shop1 / "fleet.cert")
        r = hearth("--data-dir", str(shop1), "fleet", "claim")
        assert r.returncode == 0, r.stderr
        assert outside.read_text() == "not the node's\n" and not os.path.islink(shop1 / "fleet.cert")
        check_certificate((shop1 / "fleet.cert").read_bytes(), public_key_of(fleet_id), node)
        assert (shop1 / "hearth.toml").read_text() == toml_before and not (shop1 / CLAIM_FILE).exists()
        lines = toml_before.splitlines()
        assert lines.count('admission = "fleet"') == 1 and "# from the first-boot seed" in lines
        # shop-2's box is handed shop-1's (used) token: refused, and it stays out of the fleet
        (devices["shop-2"] / CLAIM_FILE).write_text(json.dumps({"token": tokens["shop-1"], "url": url,
                                                                "fleet": fleet_id, "pin": pin}))
        r = hearth("--data-dir", str(devices["shop-2"]), "fleet", "claim")
        assert r.returncode == 1 and "refused the claim (409)" in r.stderr and "already used by node" in r.stderr
        assert not (devices["shop-2"] / "fleet.cert").exists() and (devices["shop-2"] / CLAIM_FILE).exists()
        # shop-1 was off until its certificate expired (the agent would not start): `hearth fleet renew`
        expired = sign_delegated(Identity.load(str(state / "enroll.key")), (state / "delegation.cert").read_bytes(),
                                 node, 1, now=time.time() - 5 * 86400)
        (shop1 / "fleet.cert").write_bytes(expired)
        r = hearth("--data-dir", str(shop1), "fleet", "renew")
        assert r.returncode == 0 and "hearth: certificate " in r.stdout, r.stderr
        check_certificate((shop1 / "fleet.cert").read_bytes(), public_key_of(fleet_id), node)
        record = (shop1 / ENROLL_FILE).read_text()
        (shop1 / ENROLL_FILE).write_text(record.replace(pin, "0" * 64))        # a server with another certificate
        r = hearth("--data-dir", str(shop1), "fleet", "renew")
        assert r.returncode == 1 and "not the one pinned in the seed" in r.stderr
        (shop1 / ENROLL_FILE).write_text(record)
        # the operator sees who holds which token
        r = hearth("fleet", "claims", str(tmp_path / "seeds" / "claims.json"))
        assert f"shop-1  node {node}" in r.stdout and "shop-2  node -" in r.stdout
    finally:
        server.terminate()
        out, err = server.communicate(timeout=10)
    assert "enrolled shop-1 as" in out and "claim refused (409)" in err


# renewal, in the agent's service ----------------------------------------------------------------------------


def _node(tmp_path, fleet_key, issuer, url, pin):
    """A fleet node's data directory and the parts of an agent Renewal uses: its config, key, certificate."""
    data = tmp_path / "node"
    data.mkdir()
    identity = Identity.generate()
    # a day's certificate issued 0.8 days ago: past 2/3 of its life, due for renewal, still valid
    cert = sign_delegated(issuer.key, issuer.delegation, identity.node_id, 1, now=time.time() - 0.8 * 86400)
    (data / "fleet.cert").write_bytes(cert)
    (data / ENROLL_FILE).write_text(json.dumps({"url": url, "pin": pin, "fleet": fleet_key.node_id}))
    config = types.SimpleNamespace(data_dir=str(data), fleet_cert="fleet.cert", fleet_key=fleet_key.node_id,
                                   admission="fleet")
    return types.SimpleNamespace(config=config, identity=identity, cert=cert, policy=types.SimpleNamespace(cert=cert))


@pytest.mark.trio
async def test_renewal_fails_keeps_the_certificate_backs_off_then_succeeds(tmp_path, fleet):
    from edge.images.qemu import free_port
    key, tokens, path, issuer = fleet
    pin = make_tls(str(tmp_path / "tls.pem"), str(tmp_path / "tls.key"), "127.0.0.1")
    port = free_port()
    agent = _node(tmp_path, key, issuer, f"https://127.0.0.1:{port}/claim", pin)
    claims = Claims(path, issuer)
    claims.answer(claim_request(agent.identity, tokens["shop-1"], key.node_id))   # enrolled here
    renewal = Renewal(agent, json.loads((tmp_path / "node" / ENROLL_FILE).read_text()), retry_first=0.2)
    first = agent.cert
    waits = []
    for _ in range(3):                                    # the server is down: each try fails, waits longer
        renewal.next_try = None if not waits else renewal.next_try
        await renewal.step(timeout=2)
        assert agent.cert == first and renewal.failures == len(waits) + 1
        assert "could not reach" in renewal.status()["last_error"]
        waits.append(renewal.next_try - time.time())
        renewal.next_try = time.time()                    # skip the wait (the back-off is what was recorded)
    print("back-off after 1, 2, 3 failures (s):", [round(w, 2) for w in waits])
    assert waits[0] < waits[1] < waits[2]
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: serve_enrollment(
            claims, server_context(str(tmp_path / "tls.pem"), str(tmp_path / "tls.key")), "127.0.0.1", port,
            say=lambda *a: None, task_status=task_status))
        await renewal.step(timeout=5)
        nursery.cancel_scope.cancel()
    assert renewal.failures == 0 and renewal.last_error is None and agent.cert != first
    assert (tmp_path / "node" / "fleet.cert").read_bytes() == agent.cert
    assert read_certificate(agent.cert, key.public_key, agent.identity.node_id)["expires"] > time.time() + 86400
    assert renewal.status()["renewed"] is not None


def test_fleet_revoke_and_claims_revoke_on_the_command_line(tmp_path, fleet):
    key, tokens, path, issuer = fleet
    key_file, other_file, listed = tmp_path / "fleet.key", tmp_path / "other.key", tmp_path / "revoked.cbor"
    key.save(str(key_file))
    Identity.generate().save(str(other_file))
    node = Identity.generate()
    cert = sign_delegated(issuer.key, issuer.delegation, node.node_id, 30)
    from edge.fleet.certificates import serial
    r = hearth("fleet", "revoke", node.node_id, "--key", str(key_file), "--list", str(listed))
    assert r.returncode == 0 and "revocation list 1" in r.stdout, r.stderr
    r = hearth("fleet", "revoke", serial(cert), "--key", str(key_file), "--list", str(listed))
    assert r.returncode == 0 and "revocation list 2" in r.stdout and "1 nodes, 1 serials" in r.stdout
    held = parse_revocations(listed.read_bytes(), key.public_key)
    assert held.seq == 2 and held.nodes == (node.node_id,) and held.serials == {serial(cert)}
    before = listed.read_bytes()
    for args, words in (((node.node_id, "--key", str(other_file)), "another fleet"),     # not this fleet's list
                        (("hnnotanode",), "Error"), (("1234",), "not a certificate serial")):
        r = hearth("fleet", "revoke", *args, *(() if "--key" in args else ("--key", str(key_file))),
                   "--list", str(listed))
        assert r.returncode == 1 and words in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    assert listed.read_bytes() == before                                      # nothing lost
    r = hearth("fleet", "claims", path, "--revoke", "shop-2")
    assert r.returncode == 0 and "revoked the claim token of shop-2" in r.stdout
    assert "shop-2  node -" in hearth("fleet", "claims", path).stdout and "REVOKED" in hearth("fleet", "claims",
                                                                                             path).stdout
    r = hearth("fleet", "claims", path, "--revoke", "nobody")
    assert r.returncode == 1 and "no device 'nobody'" in r.stderr
    r = hearth("fleet", "delegate", issuer.key.node_id, "--key", str(key_file), "-o", str(tmp_path / "d"),
               "--days", "0")
    assert r.returncode == 1 and "must expire" in r.stderr
