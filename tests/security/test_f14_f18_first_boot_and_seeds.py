"""Issue 20 findings 14 and 18, on directories standing in for the boot and data partitions (the helpers of
tests/test_provision.py): first boot as root follows no link the service user planted; seeds are 0600 and the
Wi-Fi passphrase is never taken on the command line.

Run alone with `pytest -m attack`."""

import os
import subprocess
import sys

import pytest

from edge.identity import KEY_FILE
from edge.provisioning.device.firstboot import first_boot
from edge.provisioning.seed import parse_seed

from tests.test_provision import SEED, _outside, _snapshot, boot_with, claim_seed, hearth, root_only

pytestmark = pytest.mark.attack


@root_only
def test_f14_first_boot_as_root_follows_no_link_in_the_data_directory(tmp_path):
    import pwd
    nobody = pwd.getpwnam("nobody")
    out, secret = _outside(tmp_path)            # a root-only file and a directory outside the data directory
    before = _snapshot(out)
    boot = boot_with(tmp_path, SEED)            # a seed with a Wi-Fi passphrase, which root writes under network/
    data = tmp_path / "data"
    (data / "store").mkdir(parents=True)
    # a compromised `hearth` user plants links where root is about to write, chown or walk
    os.symlink(out / "dir", data / "network")
    os.symlink(secret, data / "store" / "link-to-file")
    os.symlink(out / "dir", data / "store" / "link-to-dir")
    for path in [data, *data.rglob("*")]:
        os.chown(path, nobody.pw_uid, nobody.pw_gid, follow_symlinks=False)
    result = first_boot(str(boot), str(data), "nobody", log=lambda m: None, fleet_pub=str(tmp_path / "none"))
    assert result["secrets_removed"] == ["network.wifi_psk"]
    # root's file did not change hands nor bytes, and nothing was created in the outside directory
    assert _snapshot(out) == before, "first boot wrote or chowned outside the data directory"
    assert os.stat(secret).st_uid == 0 and os.listdir(out / "dir") == []
    assert not os.path.islink(data / "network") and os.lstat(data / "network").st_uid == 0
    assert (data / "network" / "wifi.conf").exists()
    assert os.path.islink(data / "store" / "link-to-file")       # left as it was, never followed
    assert os.lstat(data / KEY_FILE).st_uid == nobody.pw_uid     # the service's own files are its own


def test_f18_seeds_are_0600_and_the_psk_is_not_taken_on_the_command_line(tmp_path):
    out = tmp_path / "seed.toml"
    r = hearth("provision", "seed", "-o", str(out), "--wifi-ssid", "home", "--wifi-psk", "s3cret-pass")
    assert r.returncode == 2 and "not taken on the command line" in r.stderr, r.stderr
    assert not out.exists()
    r = subprocess.run([sys.executable, "-m", "edge", "provision", "seed", "-o", str(out), "--name", "hall",
                        "--wifi-ssid", "home", "--wifi-psk-file", "-"], input="s3cret-pass\n",
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert oct(os.stat(out).st_mode & 0o777) == "0o600"
    assert parse_seed(out.read_text())["network"]["wifi_psk"] == "s3cret-pass"
    # fleet seeds carry claim tokens: 0600 in a 0700 directory
    seed = claim_seed(tmp_path)
    assert "token" in seed.read_text() and oct(os.stat(seed).st_mode & 0o777) == "0o600"
    assert oct(os.stat(seed.parent).st_mode & 0o777) == "0o700"
