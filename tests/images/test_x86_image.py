"""The x86-64 image, built from Debian's packages and booted in QEMU with a seed on its boot partition.

Needs root (mmdebstrap), the image tools and qemu-system-x86 with OVMF (`make test` installs them); skipped,
saying why, where they are missing. The boot uses KVM when it works here, software emulation otherwise.
"""

import json
import urllib.request

import pytest

from images.qemu import VM, free_port

from .conftest import WHY_NOT

pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")


def test_manifest_is_signed_and_describes_the_image(built):
    out, summary = built
    manifest = json.loads((out / "hearth-x86-64-0.0.1-test.manifest.json").read_text())
    assert manifest["board"] == "x86-64" and manifest["image"]["sha256"] == summary["image"]["sha256"]
    assert "linux-image-amd64" in manifest["packages"] and "hearth-edge" in manifest["python"]
    assert [p["name"] for p in manifest["partitions"]] == ["boot", "root-a", "root-b", "data"]
    from edge.flash import sha256_of
    assert sha256_of(str(out / manifest["image"]["file"])) == manifest["image"]["sha256"]
    from edge.identity import verify
    import base64
    sig = base64.b64decode(manifest.pop("signature"))
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    assert verify(manifest["signed_by"], canonical, sig)
    manifest["version"] = "9.9.9"     # tampering breaks the signature
    assert not verify(manifest["signed_by"], json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode(),
                      sig)


def test_boots_applies_seed_and_serves(built):
    out, _ = built
    port = free_port()
    vm = VM(str(out / "hearth-x86-64-0.0.1-test.img"), forwards={4800: port}, snapshot=True).start()
    try:
        vm.wait_for("Linux version", 180)
        vm.wait_for("hearth: first boot done", 300)
        console = vm.output()
        assert "seed applied (node_name, quota; secrets removed: network.wifi_psk)" in console
        vm.wait_for("edge.agent: node hn", 180)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/streams", timeout=20) as r:
            assert r.status == 200 and json.loads(r.read()) == []
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=20) as r:
            assert b"hls.min.js" in r.read()
    finally:
        vm.close()
