"""First boot and seeds: what turns a flashed image into this household's node.

A seed is a small TOML file on the boot partition (`hearth-seed.toml`), written by `hearth provision seed` or
by hand:

    [node]     name = "living-room"
    [storage]  quota = "200G"
    [fleet]    key = "hn…"   certificate = "<base64>"     (admission = fleet)
    [network]  wifi_ssid = "…"   wifi_psk = "…"   wifi_country = "DE"     (wifi_psk is secret)
    [limits]   upload = "2.5M"                              (bytes per second the node uploads in all)
    [claim]    token = "…"   url = "https://…"   pin = "<sha256>"   fleet = "hn…"   (token is secret; see
               edge/enroll.py; pin: the enrollment server's TLS certificate, the only one the device trusts)

First boot (hearth-firstboot.service, once): create the node's identity here on the device (it never leaves),
write the settings into the data partition's hearth.toml, keep the fleet certificate there, and rewrite the
seed on the boot partition without its secrets. A seed that does not parse stops first boot with a message
on the console, and nothing is applied.
"""

import base64
import errno
import os
import pwd
import stat
import tomllib

from edge.atomic import open_dir, read_regular, remove_stale_temps, update_toml, write_all, write_atomic
from edge.config import CONFIG_NAME
from edge.enroll import CLAIM_FILE, load_identity, save_claim, save_identity
from edge.errors import EdgeError

SEED_NAME = "hearth-seed.toml"
SIG_NAME = "hearth-seed.sig"
FLEET_PUB = "/etc/hearth/fleet.pub"      # in an image built for a fleet: only seeds it signed are applied
MARKER = ".provisioned"         # root's, written last (hearth-firstboot.service runs while it is missing)
SEED_APPLIED = ".seed-applied"  # root's: the seed's text without secrets, written before the seed loses them
ROOT_FILES = {CLAIM_FILE, SEED_APPLIED, MARKER}     # with network/: never given to the service user
SECRETS = {("network", "wifi_psk"), ("claim", "token")}
SECTIONS = {"node": {"name"}, "storage": {"quota"}, "fleet": {"key", "certificate"},
            "network": {"wifi_ssid", "wifi_psk", "wifi_country"}, "limits": {"upload"},
            "claim": {"token", "url", "fleet", "pin"}}
WIFI_CONF = os.path.join("network", "wifi.conf")     # in the data directory: root only, the derived key only


class SeedError(EdgeError):
    pass


def parse_seed(text: str, where: str = SEED_NAME) -> dict:
    try:
        seed = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SeedError(f"{where} is not valid TOML: {exc}") from None
    for section, values in seed.items():
        if section not in SECTIONS or not isinstance(values, dict):
            raise SeedError(f"{where}: unknown section [{section}]; sections: {', '.join(sorted(SECTIONS))}")
        for key, value in values.items():
            if key not in SECTIONS[section]:
                raise SeedError(f"{where}: unknown key {section}.{key}; [{section}] takes "
                                f"{', '.join(sorted(SECTIONS[section]))}")
            if not isinstance(value, str):
                raise SeedError(f"{where}: {section}.{key} must be a string")
    name = seed.get("node", {}).get("name", "")
    if name and not (1 <= len(name) <= 63 and all(c.isalnum() or c == "-" for c in name)):
        raise SeedError(f"{where}: node.name {name!r} must be 1-63 letters, digits or '-'")
    fleet = seed.get("fleet", {})
    if bool(fleet.get("key")) != bool(fleet.get("certificate")):
        raise SeedError(f"{where}: [fleet] needs both key and certificate")
    claim = seed.get("claim", {})
    if claim and fleet:
        raise SeedError(f"{where}: a seed has a [fleet] certificate or a [claim] token, not both")
    if claim:
        if not (claim.get("token") and claim.get("url") and claim.get("fleet") and claim.get("pin")):
            raise SeedError(f"{where}: [claim] needs token, url (the fleet's enrollment server), pin (its TLS "
                            "certificate's SHA-256) and fleet (its id)")
        if not claim["url"].startswith("https://"):
            raise SeedError(f"{where}: claim.url must be an https:// URL (the enrollment server speaks TLS only)")
        from edge.enroll import ClaimError, normalize_pin
        try:
            normalize_pin(claim["pin"])
        except ClaimError as exc:
            raise SeedError(f"{where}: claim.pin: {exc}") from None
        from edge.identity import public_key_of
        try:
            public_key_of(claim["fleet"])
        except EdgeError:
            raise SeedError(f"{where}: claim.fleet is not a fleet id (hn…)") from None
    net = seed.get("network", {})
    if net:
        check_wifi(net.get("wifi_ssid", ""), net.get("wifi_psk", ""), net.get("wifi_country", ""), where)
    return seed


def check_wifi(ssid: str, psk: str, country: str, where: str = "the seed") -> None:
    if not 1 <= len(ssid.encode()) <= 32:
        raise SeedError(f"{where}: network.wifi_ssid must be 1-32 bytes (it is {len(ssid.encode())})")
    hexkey = len(psk) == 64 and all(c in "0123456789abcdefABCDEF" for c in psk)
    if psk and not hexkey and not (8 <= len(psk) <= 63 and psk.isascii() and psk.isprintable()):
        raise SeedError(f"{where}: network.wifi_psk must be a WPA passphrase of 8-63 printable ASCII characters "
                        "(or 64 hex digits); leave it out for an open network")
    if country and not (len(country) == 2 and country.isascii() and country.isalpha()):
        raise SeedError(f"{where}: network.wifi_country {country!r} must be a two-letter country code (e.g. DE)")


def wpa_supplicant_conf(ssid: str, psk: str, country: str = "") -> str:
    """wpa_supplicant's configuration for one network. The passphrase never reaches the disk: WPA's key is
    PBKDF2-SHA1(passphrase, SSID, 4096 rounds), which is all wpa_supplicant needs (what wpa_passphrase does)."""
    import hashlib
    lines = ["# written by Hearth's first boot from the seed; the passphrase itself is not kept",
             "ctrl_interface=DIR=/run/wpa_supplicant", "update_config=0"]
    if country:
        lines.append(f"country={country.upper()}")
    lines += ["network={", f"    ssid={ssid.encode().hex()}"]
    if not psk:
        lines.append("    key_mgmt=NONE")
    else:
        key = psk.lower() if len(psk) == 64 else hashlib.pbkdf2_hmac("sha1", psk.encode(), ssid.encode(), 4096,
                                                                       32).hex()
        lines.append(f"    psk={key}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def wireless_interfaces(sys_net: str = "/sys/class/net") -> list[str]:
    try:
        names = sorted(os.listdir(sys_net))
    except FileNotFoundError:
        return []
    return [n for n in names if os.path.isdir(os.path.join(sys_net, n, "wireless"))
            or os.path.isdir(os.path.join(sys_net, n, "phy80211"))]


def wifi_command(data_dir: str, wait: float, sys_net: str = "/sys/class/net") -> tuple[list[str] | None, str]:
    """`hearth provision wifi`: the wpa_supplicant command that joins the seed's Wi-Fi network on this box's
    first wireless interface, waiting up to `wait` seconds for one to appear (its driver may load its firmware
    late), and a line saying so; or None and a line saying why there is nothing to join."""
    import time
    conf = os.path.join(data_dir, WIFI_CONF)
    if not os.path.exists(conf):
        return None, "no Wi-Fi network configured (the seed had no [network] wifi_ssid)"
    deadline = time.monotonic() + wait
    while not (ifaces := wireless_interfaces(sys_net)) and time.monotonic() < deadline:
        time.sleep(1)
    if not ifaces:
        return None, "a Wi-Fi network is configured, but this box has no wireless interface; staying on Ethernet"
    return ["wpa_supplicant", "-i", ifaces[0], "-c", conf, "-D", "nl80211,wext", "-s"], f"joining Wi-Fi on {ifaces[0]}"


def write_seed(path: str, name: str = "", quota: str = "", wifi_ssid: str = "", wifi_psk: str = "",
               wifi_country: str = "", upload_limit: str = "") -> str:
    """`hearth provision seed`: a seed with these settings (empty ones left out) written to path, readable by
    its owner only (it may hold the Wi-Fi passphrase); SeedError, writing nothing, for a value first boot would
    refuse. Returns the seed's text."""
    seed = {}
    if name:
        seed["node"] = {"name": name}
    if quota:
        seed["storage"] = {"quota": quota}
    if wifi_ssid:
        seed["network"] = {"wifi_ssid": wifi_ssid, **({"wifi_psk": wifi_psk} if wifi_psk else {}),
                           **({"wifi_country": wifi_country} if wifi_country else {})}
    if upload_limit:
        seed["limits"] = {"upload": upload_limit}
    text = render_seed(seed)
    settings_from_seed(parse_seed(text, path))       # the sizes and rates too, as first boot reads them
    write_atomic(path, text.encode(), 0o600)
    return text


def render_seed(seed: dict) -> str:
    lines = []
    for section in sorted(seed):
        lines.append(f"[{section}]")
        for key, value in sorted(seed[section].items()):
            lines.append(f"{key} = {json_str(value)}")
        lines.append("")
    return "\n".join(lines)


def json_str(value: str) -> str:
    import json
    return json.dumps(value)


def settings_from_seed(seed: dict) -> dict:
    out = {}
    if seed.get("node", {}).get("name"):
        out["node_name"] = seed["node"]["name"]
    if seed.get("storage", {}).get("quota"):
        from edge.units import parse_size
        try:
            out["quota"] = parse_size(seed["storage"]["quota"])
        except ValueError as exc:
            raise SeedError(f"storage.quota: {exc}") from None
    if seed.get("limits", {}).get("upload"):
        from edge.units import parse_rate
        try:   # a rate, as upload_limit in hearth.toml: "2.5M" and "2.5M/s" alike
            out["upload_limit"] = parse_rate(seed["limits"]["upload"])
        except ValueError as exc:
            raise SeedError(f"limits.upload: {exc}") from None
    if seed.get("fleet"):
        out["admission"] = "fleet"
        out["fleet_key"] = seed["fleet"]["key"]
        out["fleet_cert"] = "fleet.cert"
    return out


def sign_seed(text: str, fleet_key) -> bytes:
    """The fleet key's Ed25519 signature of the seed's exact bytes (hearth-seed.sig beside it)."""
    return fleet_key.sign(text.encode())


def check_seed_signature(text: str, sig: bytes | None, fleet_id: str, where: str) -> None:
    from edge.identity import verify
    if sig is None:
        raise SeedError(f"{where} is not signed ({SIG_NAME} is missing), and this image only accepts seeds "
                        f"signed by its fleet {fleet_id}; make seeds with `hearth fleet provision`")
    if not verify(fleet_id, text.encode(), sig):
        raise SeedError(f"{where} is not signed by this device's fleet {fleet_id} (a seed from another fleet, or "
                        "changed after signing); nothing was applied")


DATA_LABEL = "hearth-data"
GROW_MIN = 16 << 20


def _sys(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def grow_data_partition(label: str = DATA_LABEL, log=print) -> int | None:
    """Grow the data partition (the disk's last) to the end of the disk and its file system with it, online.
    An image is small; the card or disk it is written to is not. Returns the new size in bytes, or None if
    there was nothing to do (no such partition here, not the last one, or no room after it)."""
    import subprocess
    link = f"/dev/disk/by-label/{label}"
    if not os.path.exists(link):
        return None
    dev = os.path.basename(os.path.realpath(link))
    sysdir = f"/sys/class/block/{dev}"
    if not os.path.exists(f"{sysdir}/partition"):
        return None
    disk = os.path.basename(os.path.realpath(f"{sysdir}/.."))
    number = int(_sys(f"{sysdir}/partition"))
    start, size = int(_sys(f"{sysdir}/start")) * 512, int(_sys(f"{sysdir}/size")) * 512
    disk_size = int(_sys(f"/sys/class/block/{disk}/size")) * 512
    ends = [int(_sys(f"/sys/class/block/{p}/start")) * 512 + int(_sys(f"/sys/class/block/{p}/size")) * 512
            for p in os.listdir(f"/sys/class/block/{disk}") if os.path.exists(f"/sys/class/block/{p}/partition")]
    if start + size < max(ends) or disk_size - (start + size) < GROW_MIN + (1 << 20):
        return None

    def run(*args, **kw):
        r = subprocess.run(args, capture_output=True, text=True, **kw)
        if r.returncode:
            raise SeedError(f"growing the data partition: {' '.join(args)} failed: {r.stderr.strip()}")
        return r
    # on GPT, writing the table also moves the backup header to the (new) end of the disk
    run("sfdisk", "--no-reread", "--no-tell-kernel", "-N", str(number), f"/dev/{disk}", input=", +\n")
    run("partx", "-u", "-n", str(number), f"/dev/{disk}")
    run("resize2fs", f"/dev/{dev}")
    new = int(_sys(f"{sysdir}/size")) * 512
    log(f"hearth: data partition grown from {size >> 20} MiB to {new >> 20} MiB")
    return new


def provisioned(data_dir: str) -> bool:
    """Whether first boot has finished here: its marker is a regular file, and root's where root asks (the
    service user owns the data directory and could plant one; one it removes only makes first boot run again,
    which converges)."""
    try:
        st = os.stat(os.path.join(data_dir, MARKER), follow_symlinks=False)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(st.st_mode) and (os.geteuid() != 0 or st.st_uid == 0)


def scrub_seed(seed_path: str, clean: str) -> bool:
    """Replace the seed on the boot partition with `clean` (its text without secrets). The old bytes are first
    overwritten in place, so that on FAT (which rewrites a file's clusters in place) the secret's clusters hold
    the clean text before the file is replaced; returns whether anything was written. FAT and the card's flash
    controller may still keep old copies elsewhere: see the README's provisioning section."""
    old = read_regular(seed_path)
    if old is None or old == clean.encode():
        return False
    data = clean.encode()
    if len(data) < len(old):          # trailing spaces are still valid TOML, should the cut come right here
        data = data[:-1] + b" " * (len(old) - len(data)) + b"\n"
    fd = os.open(seed_path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)
    if data != clean.encode():
        write_atomic(seed_path, clean.encode())
    return True


def _chown_tree(data_dir: str, uid: int, gid: int) -> None:
    """Give the data directory to the service user without following a link it may have planted there: a
    walk that does not enter linked directories, lchown, and no file with other hard links (one could be a
    root file linked in). The Wi-Fi key, the claim token and first boot's own records stay root's."""
    for dirpath, dirnames, filenames, dirfd in os.fwalk(data_dir, follow_symlinks=False):
        if dirpath == data_dir:
            dirnames[:] = [d for d in dirnames if d != os.path.dirname(WIFI_CONF)]
            filenames = [n for n in filenames if n not in ROOT_FILES]
        os.fchown(dirfd, uid, gid)
        for name in filenames:
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                os.chown(name, uid, gid, dir_fd=dirfd, follow_symlinks=False)


def first_boot(boot_dir: str, data_dir: str, user: str | None = None, log=print,
               fleet_pub: str = FLEET_PUB) -> dict:
    """Apply the seed (if any) once; returns what was done. Raises SeedError, applying nothing, on a bad seed
    (or, in an image built for a fleet, one its fleet did not sign).

    A power cut at any point leaves a state from which a second run ends where one uninterrupted run does:
    every file is replaced whole (edge/atomic.py), hearth.toml is parsed and written whole (a key set twice is
    there once), the identity is made only if none was saved, and the seed's clean text is recorded on the
    data partition (SEED_APPLIED) before the seed loses its secrets, so a run that finds the record knows the
    seed was applied and only finishes scrubbing it. The marker comes last. Root writes in a directory the
    service user owns, so no link is followed there (see edge/atomic.py and _chown_tree)."""
    from edge.datadir import MARKER as DATA_MARKER, MARKER_TEXT
    from edge.identity import KEY_FILE, Identity, public_key_of
    os.makedirs(data_dir, exist_ok=True)
    if provisioned(data_dir):
        return {"already": True}
    data = open_dir(data_dir)
    try:
        remove_stale_temps([KEY_FILE, "fleet.cert", CLAIM_FILE, CONFIG_NAME, SEED_APPLIED, MARKER, DATA_MARKER], data)
        seed_path = os.path.join(boot_dir, SEED_NAME)
        if os.path.isdir(boot_dir):
            boot = open_dir(boot_dir)
            try:
                remove_stale_temps([SEED_NAME], boot)
            finally:
                os.close(boot)
        key_where = os.path.join(data_dir, KEY_FILE)
        record = _own_record(data)
        if record is not None:
            # an earlier run applied the seed and was cut short while (or before) removing its secrets
            clean = record.decode()
            seed = tomllib.loads(clean)
            identity = load_identity(data, key_where)
            if identity is None:
                raise SeedError(f"{data_dir}/{SEED_APPLIED} says the seed was applied, but {key_where} is "
                                "missing; the data partition was changed by hand")
            settings = settings_from_seed(seed)
        else:
            seed, clean = {}, None
            fleet_id = None
            if os.path.exists(fleet_pub):
                with open(fleet_pub) as f:
                    fleet_id = f.read().strip()
            if os.path.exists(seed_path):
                with open(seed_path) as f:
                    text = f.read()
                if fleet_id:
                    sig_path = os.path.join(boot_dir, SIG_NAME)
                    sig = open(sig_path, "rb").read() if os.path.exists(sig_path) else None
                    check_seed_signature(text, sig, fleet_id, seed_path)
                seed = parse_seed(text, seed_path)
            identity = load_identity(data, key_where)
            settings = settings_from_seed(seed)
            cert = None
            if seed.get("fleet"):
                try:
                    cert = base64.b64decode(seed["fleet"]["certificate"], validate=True)
                except ValueError:
                    raise SeedError(f"{seed_path}: fleet.certificate is not base64") from None
                public_key_of(seed["fleet"]["key"])      # a malformed fleet key stops here; the agent checks the
                # certificate against this node's id when it starts (and says why it refuses to join the fleet)
            if identity is None:
                identity = Identity.generate()
                save_identity(data, identity)
            if cert is not None:
                write_atomic("fleet.cert", cert, dir_fd=data)
            if seed.get("claim"):
                claim = seed["claim"]
                save_claim(data_dir, claim["token"], claim["url"], claim["fleet"], claim["pin"], dir_fd=data)
            net = seed.get("network", {})
            if net.get("wifi_ssid"):
                _write_wifi(data, wpa_supplicant_conf(net["wifi_ssid"], net.get("wifi_psk", ""),
                                                      net.get("wifi_country", "")))
            update_toml(CONFIG_NAME, settings, dir_fd=data, comment="from the first-boot seed")
            if seed:
                kept = {s: {k: v for k, v in vals.items() if (s, k) not in SECRETS} for s, vals in seed.items()}
                clean = "# applied at first boot; secrets removed\n" + render_seed(kept)
                write_atomic(SEED_APPLIED, clean.encode(), 0o600, dir_fd=data)
        if clean is not None:
            scrub_seed(seed_path, clean)
        # the data directory's own marker (edge/datadir.py: no command opens a store without it), the service's
        write_atomic(DATA_MARKER, MARKER_TEXT, dir_fd=data)
        if user:
            pw = pwd.getpwnam(user)
            _chown_tree(data_dir, pw.pw_uid, pw.pw_gid)
        write_atomic(MARKER, (identity.node_id + "\n").encode(), dir_fd=data)
    finally:
        os.close(data)
    net = seed.get("network", {})
    secrets_removed = [f"{s}.{k}" for s, vals in seed.items() for k in vals if (s, k) in SECRETS]
    result = {"node": identity.node_id, "seed": bool(seed), "settings": sorted(settings),
              "secrets_removed": secrets_removed, "wifi": net.get("wifi_ssid") or None}
    if seed.get("claim"):
        log(f"hearth: fleet claim kept for enrollment at {seed['claim']['url']} (hearth-enroll.service)")
    if net.get("wifi_ssid"):
        log(f"hearth: Wi-Fi network {net['wifi_ssid']!r} configured (hearth-wifi.service joins it)")
    log(f"hearth: first boot done: node {identity.node_id}; seed "
        + (f"applied ({', '.join(sorted(settings)) or 'no settings'}; secrets removed: "
           f"{', '.join(secrets_removed) or 'none'})" if seed else "absent"))
    return result


def _own_record(data: int) -> bytes | None:
    """SEED_APPLIED if first boot wrote it: a file of another owner, or a link, was planted by the service user
    (to make first boot skip the seed) and is ignored; the record written after applying the seed replaces it."""
    try:
        fd = os.open(SEED_APPLIED, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=data)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_size > 65536:
            return None
        return os.read(fd, 65536)
    finally:
        os.close(fd)


def _write_wifi(data: int, conf: str) -> None:
    """network/wifi.conf, in a directory that is root's alone (taken back if the service user made one; a link
    planted in its place is removed, not followed)."""
    name = os.path.dirname(WIFI_CONF)
    try:
        if not stat.S_ISDIR(os.stat(name, dir_fd=data, follow_symlinks=False).st_mode):
            os.unlink(name, dir_fd=data)
    except FileNotFoundError:
        pass
    d = open_dir(name, data, create_mode=0o700)
    try:
        if os.geteuid() == 0 and os.fstat(d).st_uid != 0:
            os.fchown(d, 0, 0)
        os.fchmod(d, 0o700)
        remove_stale_temps([os.path.basename(WIFI_CONF)], d)
        write_atomic(os.path.basename(WIFI_CONF), conf.encode(), 0o600, dir_fd=d)
    finally:
        os.close(d)
