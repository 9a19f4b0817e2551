"""The x86-64 image, built from Debian's packages and booted in QEMU with a seed on its boot partition.

Needs root (mmdebstrap), the image tools and qemu-system-x86 with OVMF (`make test` installs them); skipped,
saying why, where they are missing. The boot uses KVM when it works here, software emulation otherwise.
"""

import json
import re
import subprocess
import urllib.request

import pytest

from edge.images.qemu import VM, free_port

from .conftest import WHY_NOT, shell

pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")


def test_manifest_is_signed_and_describes_the_image(built):
    out, summary = built
    manifest = json.loads((out / "hearth-x86-64-0.0.1-test.manifest.json").read_text())
    assert manifest["board"] == "x86-64" and manifest["image"]["sha256"] == summary["image"]["sha256"]
    assert "linux-image-amd64" in manifest["packages"] and "hearth-edge" in manifest["python"]
    assert [p["name"] for p in manifest["partitions"]] == ["boot", "root-a", "root-b", "data"]
    from edge.provisioning.host.flash import sha256_of
    assert sha256_of(str(out / manifest["image"]["file"])) == manifest["image"]["sha256"]
    from edge.identity import verify
    import base64
    sig = base64.b64decode(manifest.pop("signature"))
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    assert verify(manifest["signed_by"], canonical, sig)
    manifest["version"] = "9.9.9"     # tampering breaks the signature
    assert not verify(manifest["signed_by"], json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode(),
                      sig)


def test_boots_applies_seed_grows_data_and_serves(built, tmp_path, console_log):
    out, _ = built
    # the image written to a bigger disk: first boot grows the data partition to the end of it
    disk = tmp_path / "disk.img"
    subprocess.run(["cp", "--sparse=always", str(out / "hearth-x86-64-0.0.1-test.img"), str(disk)], check=True)
    with open(disk, "r+b") as f:
        f.truncate(f.seek(0, 2) + (2 << 30))
    port = free_port()
    vm = VM(str(disk), forwards={4800: port}, console_log=console_log).start()
    try:
        vm.wait_for("Linux version", 180)
        vm.wait_for("hearth: first boot done", 300)
        console = vm.output()
        assert "seed applied (node_name, quota; secrets removed: network.wifi_psk)" in console
        assert "hearth: data partition grown from 256 MiB to 2304 MiB" in console
        vm.wait_for("edge.agent: node hn", 180)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/streams", timeout=20) as r:
            assert r.status == 200 and json.loads(r.read()) == []
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=20) as r:   # the status page
            assert b"/page/status.js" in r.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/watch/", timeout=20) as r:   # the player
            assert b"hls.min.js" in r.read()
        # the seed named a Wi-Fi network, and this VM has no radio: hearth-wifi.service waits, then says so
        assert "Wi-Fi network 'home' configured" in vm.output()
        vm.wait_for("has no wireless interface; staying on Ethernet", 180)
        vm.wait_for("root@hearth", 120)
        # printf splits the marker so the typed command itself never contains it
        text = shell(vm, "printf 'DATA%sSIZE=%sMB\\n' _ $(df -m --output=size /var/lib/hearth | tail -1)",
                     "DATA_SIZE=")
        vm.wait_for("MB", 30, after=len(vm.output()) - len(text))
        size = int(re.search(r"DATA_SIZE=(\d+)MB", vm.output()).group(1))
        assert size > 2000, text
    finally:
        vm.close()
