"""Seeds and first boot, on directories standing in for the boot and data partitions; fleet seeds."""

import base64
import json
import os
import subprocess
import sys

import pytest

from edge.atomic import temp_name
from edge.identity import Identity, KEY_FILE
from edge.provisioning.device.firstboot import first_boot
from edge.provisioning.seed import SeedError, parse_seed, sign_seed


def boot_with(tmp_path, text, sig=None):
    boot = tmp_path / "boot"
    boot.mkdir()
    (boot / "hearth-seed.toml").write_text(text)
    if sig is not None:
        (boot / "hearth-seed.sig").write_bytes(sig)
    return boot


SEED = ('[node]\nname = "hall"\n\n[storage]\nquota = "2G"\n\n[network]\nwifi_ssid = "home"\nwifi_psk = "s3cret-pass"\n'
        'wifi_country = "de"\n\n[limits]\nupload = "2.5M"\n')


def test_first_boot_applies_once_and_removes_secrets(tmp_path):
    boot = boot_with(tmp_path, SEED)
    data = tmp_path / "data"
    result = first_boot(str(boot), str(data), fleet_pub=str(tmp_path / "none"), log=lambda m: None)
    assert result["settings"] == ["node_name", "quota", "upload_limit"]
    assert result["secrets_removed"] == ["network.wifi_psk"] and result["wifi"] == "home"
    node = Identity.load(str(data / KEY_FILE)).node_id
    assert result["node"] == node and oct(os.stat(data / KEY_FILE).st_mode & 0o777) == "0o600"
    config = (data / "hearth.toml").read_text()
    assert 'node_name = "hall"' in config and "quota = 2000000000" in config and "upload_limit = 2500000" in config
    from edge.config import load_config
    assert load_config(flags={"data_dir": str(data)}, env={}).upload_limit == 2_500_000       # the agent reads what was written
    left = (boot / "hearth-seed.toml").read_text()
    assert "s3cret" not in left and "wifi_ssid" in left and parse_seed(left.split("\n", 1)[1])
    # Wi-Fi: wpa_supplicant's file, root's only, holding the derived key (what `wpa_passphrase home
    # s3cret-pass` prints), never the passphrase
    wifi = data / "network" / "wifi.conf"
    assert oct(os.stat(wifi).st_mode & 0o777) == "0o600" and oct(os.stat(wifi.parent).st_mode & 0o777) == "0o700"
    text = wifi.read_text()
    assert "s3cret" not in text and "country=DE" in text and f"ssid={b'home'.hex()}" in text
    import hashlib
    assert f"psk={hashlib.pbkdf2_hmac('sha1', b's3cret-pass', b'home', 4096, 32).hex()}" in text
    assert first_boot(str(boot), str(data), fleet_pub=str(tmp_path / "none")) == {"already": True}
    assert Identity.load(str(data / KEY_FILE)).node_id == node      # never a second identity


@pytest.mark.parametrize("text, words", [
    ("[node\nname = 1", "not valid TOML"), ('[node]\ncolour = "red"\n', "unknown key node.colour"),
    ('[extra]\nx = "1"\n', "unknown section"), ('[node]\nname = "a b"\n', "node.name"),
    ('[storage]\nquota = "lots"\n', "storage.quota"), ('[fleet]\nkey = "x"\n', "both key and certificate"),
    ('[network]\nwifi_ssid = "home"\nwifi_psk = "short"\n', "WPA passphrase of 8-63"),
    ('[network]\nwifi_ssid = ""\n', "wifi_ssid must be 1-32 bytes"),
    ('[network]\nwifi_ssid = "home"\nwifi_country = "Germany"\n', "two-letter country code"),
    ('[limits]\nupload = "fast"\n', "limits.upload"),
    ('[claim]\ntoken = "t"\n', "needs token, url"),
    ('[claim]\ntoken = "t"\nurl = "http://x/claim"\npin = "' + "a" * 64 + '"\nfleet = "hnx"\n', "https:// URL"),
    ('[claim]\ntoken = "t"\nurl = "https://x/claim"\npin = "ab"\nfleet = "hnx"\n', "not a SHA-256 fingerprint"),
    ('[claim]\ntoken = "t"\nurl = "https://x/claim"\npin = "' + "a" * 64 + '"\nfleet = "hnx"\n', "not a fleet id"),
])
def test_bad_seed_applies_nothing(tmp_path, text, words):
    boot = boot_with(tmp_path, text)
    data = tmp_path / "data"
    with pytest.raises(SeedError, match=words):
        first_boot(str(boot), str(data), fleet_pub=str(tmp_path / "none"))
    assert not (data / ".provisioned").exists() and not (data / KEY_FILE).exists()
    assert (boot / "hearth-seed.toml").read_text() == text


def test_fleet_image_accepts_only_its_fleets_seeds(tmp_path):
    fleet, other = Identity.generate(), Identity.generate()
    pub = tmp_path / "fleet.pub"
    pub.write_text(fleet.node_id + "\n")
    cases = [("unsigned", None, "is not signed"), ("foreign", sign_seed(SEED, other), "not signed by this device"),
             ("tampered", sign_seed(SEED.replace("hall", "hal2"), fleet), "not signed by this device")]
    for name, sig, words in cases:
        d = tmp_path / name
        d.mkdir()
        boot = boot_with(d, SEED, sig)
        with pytest.raises(SeedError, match=words):
            first_boot(str(boot), str(d / "data"), fleet_pub=str(pub))
        assert not (d / "data" / ".provisioned").exists()
    d = tmp_path / "good"
    d.mkdir()
    boot = boot_with(d, SEED, sign_seed(SEED, fleet))
    assert first_boot(str(boot), str(d / "data"), fleet_pub=str(pub), log=lambda m: None)["settings"]


def hearth(*args):
    return subprocess.run([sys.executable, "-m", "edge", *args], capture_output=True, text=True)


def test_fleet_provision_from_csv(tmp_path):
    key = tmp_path / "fleet.key"
    assert hearth("fleet", "init", "-o", str(key)).returncode == 0
    fleet = Identity.load(str(key))
    csv = tmp_path / "devices.csv"
    csv.write_text("name,quota,wifi_ssid,wifi_psk\nshop-1,50G,shopnet,password-1\nshop-2,,,\n")
    out = tmp_path / "seeds"
    r = hearth("fleet", "provision", "--devices", str(csv), "--key", str(key), "-o", str(out))
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fleet"] == fleet.node_id and [d["name"] for d in summary["devices"]] == ["shop-1", "shop-2"]
    from edge.identity import verify
    for name in ("shop-1", "shop-2"):
        text = (out / name / "hearth-seed.toml").read_text()
        assert verify(fleet.node_id, text.encode(), (out / name / "hearth-seed.sig").read_bytes())
    assert "password-1" in (out / "shop-1" / "hearth-seed.toml").read_text()
    bad = tmp_path / "bad.csv"
    bad.write_text("name,quota\nok-1,1G\nbad name,1G\n")
    r = hearth("fleet", "provision", "--devices", str(bad), "--key", str(key), "-o", str(tmp_path / "none"))
    assert r.returncode == 1 and "bad.csv:3" in r.stderr and not (tmp_path / "none").exists()


# ---- a power cut after every write first boot makes, then first boot again: the same end as one whole run ----

MUTATING = ("write", "replace", "rename", "mkdir", "unlink", "rmdir", "chown", "fchown", "lchown", "chmod",
            "fchmod", "ftruncate", "truncate", "link", "symlink")
CUT, DONE = 77, 78


def _first_boot_cut_after(n, boot, data, pub, user):
    """First boot in a child process that dies (os._exit: no cleanup, no flush) right after its n-th call that
    changes the file system; returns DONE if it finished before that, CUT if it was cut."""
    pid = os.fork()
    if pid == 0:                                     # the child never returns into pytest
        code = 3
        try:
            count = [0]
            for name in MUTATING:
                real = getattr(os, name)

                def cut(*args, _real=real, **kw):
                    result = _real(*args, **kw)
                    count[0] += 1
                    if count[0] == n:
                        os._exit(CUT)
                    return result
                setattr(os, name, cut)
            first_boot(str(boot), str(data), user, log=lambda m: None, fleet_pub=str(pub))
            code = DONE
        except BaseException as exc:                # noqa: BLE001 - reported through the exit status
            sys.stderr.write(f"first boot failed in the child: {exc!r}\n")
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _state(root, node_id):
    """Every entry under root: type, mode, owner and content (the node's key and id replaced by placeholders)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            content = None
            if os.path.isfile(path) and not os.path.islink(path):
                content = open(path, "rb").read()
                if name == KEY_FILE:
                    content = b"KEY" if Identity.load(path).node_id == node_id else b"ANOTHER KEY"
                content = content.replace(node_id.encode(), b"NODE")
            out[os.path.relpath(path, root)] = (st.st_mode, st.st_uid, st.st_gid, content)
    return out


PIN = "a" * 64     # an enrollment server's TLS fingerprint


def _seeds():
    fleet = Identity.generate()
    from edge.fleet.certificates import sign_certificate
    cert = base64.b64encode(sign_certificate(fleet, Identity.generate().node_id)).decode()
    claim = (SEED + f'\n[claim]\ntoken = "tok-123456"\nurl = "https://127.0.0.1:9/claim"\npin = "{PIN}"\n'
             f'fleet = "{fleet.node_id}"\n')
    return {"claim": (claim, True), "fleet": (SEED + f'\n[fleet]\nkey = "{fleet.node_id}"\ncertificate = "{cert}"\n',
                                               False)}


@pytest.mark.parametrize("kind", ["claim", "fleet"])
def test_a_power_cut_after_any_write_of_first_boot_converges(tmp_path, kind):
    from edge.config import commented_toml, Config, load_config
    text, with_config = _seeds()[kind]
    user = "nobody" if os.geteuid() == 0 else None   # as in the image: the data directory given to the service

    def fresh(name):
        boot, data = tmp_path / name / "boot", tmp_path / name / "data"
        boot.mkdir(parents=True)
        (boot / "hearth-seed.toml").write_text(text)
        if with_config:                               # `hearth init`'s commented file is kept, comments and all
            data.mkdir()
            (data / "hearth.toml").write_text(commented_toml(Config(data_dir=str(data))))
        return boot, data

    pub = tmp_path / "no-fleet.pub"
    boot, data = fresh("whole")
    assert _first_boot_cut_after(10 ** 9, boot, data, pub, user) == DONE
    node = Identity.load(str(data / KEY_FILE)).node_id
    want = {"data": _state(data, node), "boot": _state(boot, node)}
    config = (data / "hearth.toml").read_text()
    assert "# H.264 encoder" in config if with_config else True
    lines = config.splitlines()
    assert lines.count("quota = 2000000000") == 1 and [ln.startswith("upload_limit =") for ln in lines].count(True) == 1

    cuts = 0
    for n in range(1, 500):
        boot, data = fresh(f"cut{n}")
        status = _first_boot_cut_after(n, boot, data, pub, user)
        if status == DONE:                            # n is past the last write: every cut point was tried
            break
        assert status == CUT, f"first boot failed (exit {status}) before the cut after write {n}"
        cuts += 1
        key = data / KEY_FILE
        before = Identity.load(str(key)).node_id if key.exists() else None
        result = first_boot(str(boot), str(data), user, log=lambda m: None, fleet_pub=str(pub))
        node = Identity.load(str(key)).node_id
        assert result.get("node", node) == node
        assert before in (None, node), f"cut after write {n}: the identity changed"
        assert {"data": _state(data, node), "boot": _state(boot, node)} == want, f"cut after write {n}"
        load_config(flags={"data_dir": str(data)}, env={})       # hearth.toml loads: every key once
        assert (data / ".provisioned").read_text() == node + "\n"
        assert first_boot(str(boot), str(data), user, fleet_pub=str(pub)) == {"already": True}
    else:
        pytest.fail("first boot never finished")
    print(f"{kind} seed: {cuts} cut points, each converged after a second run")
    assert cuts > 10


# ---- first boot runs as root in a directory the service user owns: no link planted there is followed ----

def _outside(tmp_path):
    """A root-only file and an empty directory outside the data directory, and a snapshot of both."""
    out = tmp_path / "outside"
    (out / "dir").mkdir(parents=True)
    secret = out / "shadow"
    secret.write_text("root's secret\n")
    os.chmod(secret, 0o600)
    return out, secret


def _snapshot(root):
    return {p: (os.lstat(os.path.join(root, p)).st_mode, os.lstat(os.path.join(root, p)).st_uid,
                open(os.path.join(root, p), "rb").read() if os.path.isfile(os.path.join(root, p)) else None)
            for p in [os.path.relpath(os.path.join(d, n), root) for d, ds, fs in os.walk(root) for n in ds + fs]}


root_only = pytest.mark.skipif(os.geteuid() != 0, reason="first boot's chown to the service user needs root")


@root_only
def test_first_boot_follows_no_link_the_service_user_planted(tmp_path):
    import pwd
    nobody = pwd.getpwnam("nobody")
    out, secret = _outside(tmp_path)
    before = _snapshot(out)
    text = _seeds()["claim"][0]
    boot = boot_with(tmp_path, text)
    data = tmp_path / "data"
    (data / "store").mkdir(parents=True)
    # what a compromised `hearth` user can leave in its own directory before first boot runs (again)
    os.symlink(secret, data / "store" / "link-to-file")
    os.symlink(out / "dir", data / "store" / "link-to-dir")
    os.symlink(secret, data / "claim.json")                              # root writes the token here
    os.symlink(secret, data / "fleet.cert")
    os.symlink(out / "dir", data / "network")                            # and the Wi-Fi key under here
    os.symlink(secret, data / temp_name("hearth.toml"))                 # its temporary file's name
    os.symlink(secret, data / ".seed-applied")
    (data / ".provisioned").write_text("not root's\n")                  # a marker root did not write
    for path in [data, *data.rglob("*")]:
        os.chown(path, nobody.pw_uid, nobody.pw_gid, follow_symlinks=False)
    os.link(secret, data / "store" / "hard-link")                       # root's file, linked in (same file system)
    result = first_boot(str(boot), str(data), "nobody", log=lambda m: None, fleet_pub=str(tmp_path / "none"))
    assert sorted(result["secrets_removed"]) == ["claim.token", "network.wifi_psk"]
    assert _snapshot(out) == before and os.stat(secret).st_uid == 0     # nothing outside changed hands or bytes
    for name in ("claim.json", "network", ".seed-applied", ".provisioned"):
        st = os.lstat(data / name)
        assert not os.path.islink(data / name) and st.st_uid == 0, name  # replaced, root's
    assert oct(os.lstat(data / "network").st_mode & 0o777) == "0o700"
    assert "tok-123456" in (data / "claim.json").read_text() and (data / "network" / "wifi.conf").exists()
    assert os.lstat(data / "identity.key").st_uid == nobody.pw_uid      # the service's own files are its own
    assert not os.path.exists(data / temp_name("hearth.toml"))


@root_only
@pytest.mark.parametrize("plant, words", [
    (lambda data, secret: os.symlink(secret, data / "identity.key"), "identity.key is a symbolic link"),
    (lambda data, secret: os.symlink(secret, data / "hearth.toml"), "hearth.toml is a symbolic link"),
    (lambda data, secret: os.mkfifo(data / "hearth.toml"), "hearth.toml is not a regular file"),
])
def test_first_boot_refuses_to_read_through_a_planted_link(tmp_path, plant, words):
    from edge.atomic import UnsafePathError
    out, secret = _outside(tmp_path)
    before = _snapshot(out)
    boot = boot_with(tmp_path, SEED)
    data = tmp_path / "data"
    data.mkdir()
    plant(data, secret)
    with pytest.raises(UnsafePathError, match=words + ".*remove it and run again"):
        first_boot(str(boot), str(data), "nobody", log=lambda m: None, fleet_pub=str(tmp_path / "none"))
    assert _snapshot(out) == before and not (data / ".provisioned").exists()
    assert "s3cret-pass" in (boot / "hearth-seed.toml").read_text()     # nothing applied, nothing lost


# ---- seeds: secrets never readable by others, never on a command line, overwritten when removed ----

def test_seeds_are_private_and_the_passphrase_stays_off_the_command_line(tmp_path):
    out = tmp_path / "seed.toml"
    r = hearth("provision", "seed", "-o", str(out), "--wifi-ssid", "home", "--wifi-psk", "s3cret-pass")
    assert r.returncode == 2 and "not taken on the command line" in r.stderr and not out.exists()
    r = hearth("provision", "seed", "-o", str(out), "--wifi-ssid", "home")        # no terminal to ask on
    assert r.returncode == 2 and "--wifi-psk-file" in r.stderr and not out.exists()
    r = subprocess.run([sys.executable, "-m", "edge", "provision", "seed", "-o", str(out), "--name", "hall",
                        "--wifi-ssid", "home", "--wifi-psk-file", "-"], input="s3cret-pass\n",
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert oct(os.stat(out).st_mode & 0o777) == "0o600"
    assert parse_seed(out.read_text())["network"] == {"wifi_ssid": "home", "wifi_psk": "s3cret-pass"}
    psk = tmp_path / "psk"
    psk.write_text("another-pass\n")
    r = hearth("provision", "seed", "-o", str(out), "--wifi-ssid", "home", "--wifi-psk-file", str(psk))
    assert r.returncode == 0 and parse_seed(out.read_text())["network"]["wifi_psk"] == "another-pass"
    r = hearth("provision", "seed", "-o", str(out), "--wifi-ssid", "cafe", "--wifi-open")
    assert r.returncode == 0 and parse_seed(out.read_text())["network"] == {"wifi_ssid": "cafe"}
    # fleet seeds hold claim tokens
    seed = claim_seed(tmp_path)
    assert oct(os.stat(seed).st_mode & 0o777) == "0o600"
    assert oct(os.stat(seed.parent).st_mode & 0o777) == "0o700"


def claim_seed(tmp_path):
    """`hearth fleet provision --claim-url` for one device (with a Wi-Fi passphrase): its seed's path."""
    key = tmp_path / "fleet.key"
    assert hearth("fleet", "init", "-o", str(key)).returncode == 0
    (tmp_path / "devices.csv").write_text("name,wifi_ssid,wifi_psk\nshop-1,shopnet,password-1\n")
    r = hearth("fleet", "provision", "--devices", str(tmp_path / "devices.csv"), "--key", str(key), "-o",
               str(tmp_path / "seeds"), "--claim-url", "https://127.0.0.1:9/claim", "--pin", "ab" * 32)
    assert r.returncode == 0, r.stderr
    return tmp_path / "seeds" / "shop-1" / "hearth-seed.toml"


@pytest.mark.parametrize("psk", ["s3cret-pass", "s3cret-" + "x" * 56])     # a clean text longer, or shorter
def test_first_boot_overwrites_the_secrets_before_it_replaces_the_seed(tmp_path, psk):
    """A second name for the seed's file (a hard link) still sees the bytes of the file it was: what FAT leaves
    in the clusters the old seed had. The secret must not be there."""
    text = SEED.replace("s3cret-pass", psk)
    boot = boot_with(tmp_path, text)
    os.link(boot / "hearth-seed.toml", tmp_path / "old-clusters")
    first_boot(str(boot), str(tmp_path / "data"), log=lambda m: None, fleet_pub=str(tmp_path / "none"))
    old = (tmp_path / "old-clusters").read_text()
    assert "s3cret" not in old and len(old) >= len(text) and parse_seed(old.split("\n", 1)[1])["network"]
    assert (boot / "hearth-seed.toml").read_text().rstrip() == old.rstrip()


def test_provision_seed_asks_for_the_passphrase_on_a_terminal(tmp_path):
    """On a terminal (a pseudo-terminal here, the child's controlling one) the passphrase is asked for twice,
    not echoed, and lands only in the seed."""
    import pty
    import select
    out = tmp_path / "seed.toml"
    pid, fd = pty.fork()
    if pid == 0:
        try:
            os.execv(sys.executable, [sys.executable, "-m", "edge", "provision", "seed", "-o", str(out),
                                      "--wifi-ssid", "home"])
        finally:
            os._exit(127)
    seen, answered = b"", 0
    try:
        while True:
            ready, _, _ = select.select([fd], [], [], 30)
            assert ready, f"no prompt within 30 s: {seen!r}"
            try:
                chunk = os.read(fd, 4096)
            except OSError:                          # the child closed the terminal: it has exited
                break
            if not chunk:
                break
            seen += chunk
            if seen.count(b"passphrase") + seen.count(b"Repeat") > answered:
                os.write(fd, b"typed-secret-1\n")
                answered += 1
    finally:
        status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        os.close(fd)
    assert status == 0, seen
    print(seen.decode(errors="replace"))
    assert answered == 2 and b"typed-secret-1" not in seen                # never echoed
    assert parse_seed(out.read_text())["network"] == {"wifi_ssid": "home", "wifi_psk": "typed-secret-1"}


def test_provision_seed_checks_sizes_and_rates_before_asking_for_anything(tmp_path):
    out = tmp_path / "seed.toml"
    for flag, value, words in (("--quota", "lots", "not a size"), ("--upload-limit", "fast", "not a rate")):
        r = hearth("provision", "seed", "-o", str(out), flag, value, "--wifi-ssid", "home")
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr and not out.exists()
    r = hearth("provision", "seed", "-o", str(out), "--quota", "200G", "--upload-limit", "2.5M/s")
    assert r.returncode == 0, r.stderr
    assert parse_seed(out.read_text()) == {"storage": {"quota": "200G"}, "limits": {"upload": "2.5M/s"}}


def test_wifi_waits_for_a_wireless_interface_and_names_the_command(tmp_path):
    from edge.provisioning.device.wifi import WIFI_CONF, join_command
    data, sys_net = tmp_path / "data", tmp_path / "net"
    (sys_net / "eth0").mkdir(parents=True)
    assert join_command(str(data), 0, str(sys_net)) == (
        None, "hearth: no Wi-Fi network configured (the seed had no [network] wifi_ssid)")
    (data / "network").mkdir(parents=True)
    (data / WIFI_CONF).write_text("network={}\n")
    args, line = join_command(str(data), 0, str(sys_net))
    assert args is None and "no wireless interface" in line
    (sys_net / "wlan0" / "wireless").mkdir(parents=True)
    args, line = join_command(str(data), 0, str(sys_net))
    assert args[:3] == ["wpa_supplicant", "-i", "wlan0"] and args[4] == str(data / WIFI_CONF)
    assert line == "hearth: joining Wi-Fi on wlan0"
    r = hearth("--data-dir", str(data), "provision", "wifi", "--wait", "0", "--dry-run")
    # this box's own interfaces: none (a line saying so) or the command that would join on the first
    assert r.returncode == 0 and r.stdout.startswith(("hearth: a Wi-Fi network is configured", "wpa_supplicant -i "))


def test_a_seed_names_the_fleet_broker_and_region():
    from edge.provisioning.seed import SeedError, parse_seed, settings_from_seed
    seed = parse_seed('[fleet]\nbroker = "mqtts://u:p@broker.example"\nregion = "as3320"\n')
    assert settings_from_seed(seed) == {"fleet_broker": "mqtts://u:p@broker.example", "fleet_region": "as3320"}
    for bad, words in (('broker = "http://x"', "fleet.broker"), ('region = "Bad Region"', "fleet.region")):
        with pytest.raises(SeedError, match=words):
            parse_seed(f"[fleet]\n{bad}\n")
