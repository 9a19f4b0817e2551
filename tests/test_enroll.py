"""Claim tokens: the wire format and the fleet's answers as pure functions, then the whole path for real — signed
seeds with tokens from `hearth fleet provision --claim-url`, first boot, `hearth fleet enroll-server` over HTTP,
`hearth fleet claim` on the device — and the refusals (a reused token, a wrong one, a forged claim)."""

import base64
import json
import os
import subprocess
import sys
import time

import pytest

from edge.enroll import CLAIM_FILE, ClaimError, Claims, accept_certificate, claim_request, new_token
from edge.fleet import check_certificate
from edge.identity import KEY_FILE, Identity, public_key_of


@pytest.fixture
def fleet(tmp_path):
    key = Identity.generate()
    tokens = {"shop-1": new_token(), "shop-2": new_token()}
    path = tmp_path / "claims.json"
    Claims.create(str(path), key, tokens)
    return key, tokens, str(path)


def test_a_claim_gets_a_certificate_for_the_claiming_node_once(fleet):
    key, tokens, path = fleet
    assert tokens["shop-1"] not in open(path).read()          # only hashes are kept
    claims = Claims(path, key)
    a, b = Identity.generate(), Identity.generate()
    answer = claims.answer(claim_request(a, tokens["shop-1"], key.node_id))
    cert = accept_certificate(answer, a, key.node_id)
    check_certificate(cert, key.public_key, a.node_id)
    assert answer["device"] == "shop-1"
    # the same node again (it lost power before saving the answer): the same certificate
    assert claims.answer(claim_request(a, tokens["shop-1"], key.node_id))["certificate"] == answer["certificate"]
    with pytest.raises(ClaimError, match="already used by node " + a.node_id) as exc:
        claims.answer(claim_request(b, tokens["shop-1"], key.node_id))
    assert exc.value.status == 409
    # the binding survives a restart of the server
    with pytest.raises(ClaimError, match="already used"):
        Claims(path, key).answer(claim_request(b, tokens["shop-1"], key.node_id))
    Claims(path, key).answer(claim_request(b, tokens["shop-2"], key.node_id))


def test_refusals_say_what_is_wrong(fleet):
    key, tokens, path = fleet
    claims = Claims(path, key)
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
    with pytest.raises(ClaimError, match="holds claims of fleet"):
        Claims(path, Identity.generate())
    # nothing was bound by any of that
    assert all(e["node"] is None for e in json.load(open(path))["tokens"].values())


def test_a_certificate_for_someone_else_is_not_accepted(fleet):
    key, _, _ = fleet
    from edge.fleet import sign_certificate
    me, other = Identity.generate(), Identity.generate()
    answer = {"certificate": base64.b64encode(sign_certificate(key, other.node_id)).decode()}
    with pytest.raises(ClaimError, match="no valid certificate for this node"):
        accept_certificate(answer, me, key.node_id)
    with pytest.raises(ClaimError, match="no valid certificate"):
        accept_certificate({"nothing": 1}, me, key.node_id)


def hearth(*args, **kw):
    return subprocess.run([sys.executable, "-m", "edge", *args], capture_output=True, text=True, **kw)


def test_provision_first_boot_enroll_over_http(tmp_path):
    from images.qemu import free_port
    from edge.provision import first_boot
    key_file = tmp_path / "fleet.key"
    assert hearth("fleet", "init", "-o", str(key_file)).returncode == 0
    fleet_id = Identity.load(str(key_file)).node_id
    (tmp_path / "devices.csv").write_text("name,quota\nshop-1,1G\nshop-2,\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}/claim"
    r = hearth("fleet", "provision", "--devices", str(tmp_path / "devices.csv"), "--key", str(key_file), "-o",
               str(tmp_path / "seeds"), "--claim-url", url)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "seeds" / "summary.json").read_text())["claims"] == "claims.json"
    server = subprocess.Popen([sys.executable, "-m", "edge", "fleet", "enroll-server", "--key", str(key_file),
                               "--claims", str(tmp_path / "seeds" / "claims.json"), "--listen",
                               f"127.0.0.1:{port}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
            claims_text[name] = claim.read_text()
            assert tokens[name] not in (boot / "hearth-seed.toml").read_text()    # gone from the boot partition
            devices[name] = data
        deadline = time.monotonic() + 20
        while True:                                                          # the server is up
            r = hearth("--data-dir", str(devices["shop-1"]), "fleet", "claim")
            if r.returncode == 0 or "could not reach" not in r.stderr or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert r.returncode == 0, r.stderr
        node = Identity.load(str(devices["shop-1"] / KEY_FILE)).node_id
        assert f"enrolled in fleet {fleet_id} as {node}" in r.stdout
        assert not (devices["shop-1"] / CLAIM_FILE).exists()
        check_certificate((devices["shop-1"] / "fleet.cert").read_bytes(), public_key_of(fleet_id), node)
        from edge.config import load_config
        config = load_config(flags={"data_dir": str(devices["shop-1"])}, env={})
        assert (config.admission, config.fleet_key, config.fleet_cert) == ("fleet", fleet_id, "fleet.cert")
        assert config.quota == 1_000_000_000                                   # the seed's settings stay
        # a power cut after hearth.toml was written, before claim.json was removed: the claim is made again and
        # ends the same (the server answers the same node with the same certificate); every key is there once.
        # Root makes it, in the service user's directory, where a link to a file outside was planted.
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
                                                                "fleet": fleet_id}))
        r = hearth("--data-dir", str(devices["shop-2"]), "fleet", "claim")
        assert r.returncode == 1 and "refused the claim (409)" in r.stderr and "already used by node" in r.stderr
        assert not (devices["shop-2"] / "fleet.cert").exists() and (devices["shop-2"] / CLAIM_FILE).exists()
    finally:
        server.terminate()
        out, err = server.communicate(timeout=10)
    assert "enrolled shop-1 as" in out and "claim refused (409)" in err
