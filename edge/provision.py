"""First boot and seeds: what turns a flashed image into this household's node.

A seed is a small TOML file on the boot partition (`hearth-seed.toml`), written by `hearth provision seed` or
by hand:

    [node]     name = "living-room"
    [storage]  quota = "200G"
    [fleet]    key = "hn…"   certificate = "<base64>"     (admission = fleet)
    [network]  wifi_ssid = "…"   wifi_psk = "…"   wifi_country = "DE"     (wifi_psk is secret)
    [limits]   upload = "2.5M"                              (bytes per second the node uploads in all)
    [claim]    token = "…"   url = "http://…"   fleet = "hn…"   (token is secret; see edge/enroll.py)

First boot (hearth-firstboot.service, once): create the node's identity here on the device (it never leaves),
write the settings into the data partition's hearth.toml, keep the fleet certificate there, and rewrite the
seed on the boot partition without its secrets. A seed that does not parse stops first boot with a message
on the console, and nothing is applied.
"""

import base64
import os
import pwd
import tomllib

from edge.atomic import write_atomic
from edge.config import CONFIG_NAME
from edge.errors import EdgeError

SEED_NAME = "hearth-seed.toml"
SIG_NAME = "hearth-seed.sig"
FLEET_PUB = "/etc/hearth/fleet.pub"      # in an image built for a fleet: only seeds it signed are applied
MARKER = ".provisioned"
SECRETS = {("network", "wifi_psk"), ("claim", "token")}
SECTIONS = {"node": {"name"}, "storage": {"quota"}, "fleet": {"key", "certificate"},
            "network": {"wifi_ssid", "wifi_psk", "wifi_country"}, "limits": {"upload"}, "claim": {"token", "url", "fleet"}}
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
        if not (claim.get("token") and claim.get("url") and claim.get("fleet")):
            raise SeedError(f"{where}: [claim] needs token, url (the fleet's enrollment server) and fleet (its id)")
        if not claim["url"].startswith(("http://", "https://")):
            raise SeedError(f"{where}: claim.url must be an http:// or https:// URL")
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
        from edge.units import parse_size
        try:
            out["upload_limit"] = parse_size(seed["limits"]["upload"])
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


def first_boot(boot_dir: str, data_dir: str, user: str | None = None, log=print,
               fleet_pub: str = FLEET_PUB) -> dict:
    """Apply the seed (if any) once; returns what was done. Raises SeedError, applying nothing, on a bad seed
    (or, in an image built for a fleet, one its fleet did not sign)."""
    from edge.identity import KEY_FILE, Identity, public_key_of
    os.makedirs(data_dir, exist_ok=True)
    marker = os.path.join(data_dir, MARKER)
    if os.path.exists(marker):
        return {"already": True}
    seed_path = os.path.join(boot_dir, SEED_NAME)
    seed = {}
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
    key_path = os.path.join(data_dir, KEY_FILE)
    identity = Identity.load(key_path) if os.path.exists(key_path) else Identity.generate()
    settings = settings_from_seed(seed)
    cert = None
    if seed.get("fleet"):
        try:
            cert = base64.b64decode(seed["fleet"]["certificate"], validate=True)
        except ValueError:
            raise SeedError(f"{seed_path}: fleet.certificate is not base64") from None
        public_key_of(seed["fleet"]["key"])      # a malformed fleet key stops here; the agent checks the
        # certificate against this node's id when it starts (and says why it refuses to join the fleet)
    if not os.path.exists(key_path):
        identity.save(key_path)
    if cert is not None:
        with open(os.path.join(data_dir, "fleet.cert"), "wb") as f:
            f.write(cert)
    if seed.get("claim"):
        from edge.enroll import save_claim
        save_claim(data_dir, seed["claim"]["token"], seed["claim"]["url"], seed["claim"]["fleet"])
    net = seed.get("network", {})
    if net.get("wifi_ssid"):
        conf = os.path.join(data_dir, WIFI_CONF)
        os.makedirs(os.path.dirname(conf), mode=0o700, exist_ok=True)
        write_atomic(conf, wpa_supplicant_conf(net["wifi_ssid"], net.get("wifi_psk", ""),
                                               net.get("wifi_country", "")).encode(), 0o600)
    config = os.path.join(data_dir, CONFIG_NAME)
    with open(config, "a") as f:
        if settings:
            f.write("# from the first-boot seed\n")
        for key, value in settings.items():
            f.write(f"{key} = {json_str(value) if isinstance(value, str) else value}\n")
    if user:
        pw = pwd.getpwnam(user)
        for dirpath, dirnames, filenames in os.walk(data_dir):
            if dirpath == data_dir:                # the Wi-Fi key and the claim token stay root's
                dirnames[:] = [d for d in dirnames if d != "network"]
                filenames = [n for n in filenames if n != "claim.json"]
            for name in [dirpath, *(os.path.join(dirpath, n) for n in filenames)]:
                os.chown(name, pw.pw_uid, pw.pw_gid)
    secrets_removed = []
    if seed:
        clean = {s: {k: v for k, v in vals.items() if (s, k) not in SECRETS} for s, vals in seed.items()}
        secrets_removed = [f"{s}.{k}" for s, vals in seed.items() for k in vals if (s, k) in SECRETS]
        write_atomic(seed_path, ("# applied at first boot; secrets removed\n" + render_seed(clean)).encode())
    with open(marker, "w") as f:
        f.write(identity.node_id + "\n")
        f.flush()
        os.fsync(f.fileno())
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
