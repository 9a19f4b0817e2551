"""Seeds: the small TOML file on the boot partition (`hearth-seed.toml`) that turns a flashed image into this
household's node, written on a host by `hearth provision seed`, `hearth fleet provision` or by hand, and applied
on the device at first boot (provisioning/device/firstboot.py):

    [node]     name = "living-room"
    [storage]  quota = "200G"
    [fleet]    key = "hn…"   certificate = "<base64>"     (admission = fleet)
    [network]  wifi_ssid = "…"   wifi_psk = "…"   wifi_country = "DE"     (wifi_psk is secret)
    [limits]   upload = "2.5M"                              (bytes per second the node uploads in all)
    [claim]    token = "…"   url = "https://…"   pin = "<sha256>"   fleet = "hn…"   (token is secret; see
               provisioning/device/claim.py; pin: the enrollment server's TLS certificate, the only one the
               device trusts)

A seed a fleet's owner made carries the fleet key's signature of its exact bytes beside it (`hearth-seed.sig`);
an image built for a fleet applies no other.
"""

import json
import tomllib

from edge.errors import EdgeError
from edge.fleet.requests import ClaimError
from edge.fleet.tls import normalize_pin
from edge.identity import public_key_of, verify
from edge.units import parse_rate, parse_size

SEED_NAME = "hearth-seed.toml"
SIG_NAME = "hearth-seed.sig"
SECRETS = {("network", "wifi_psk"), ("claim", "token")}
SECTIONS = {"node": {"name"}, "storage": {"quota"}, "fleet": {"key", "certificate"},
            "network": {"wifi_ssid", "wifi_psk", "wifi_country"}, "limits": {"upload"},
            "claim": {"token", "url", "fleet", "pin"}}


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
        try:
            normalize_pin(claim["pin"])
        except ClaimError as exc:
            raise SeedError(f"{where}: claim.pin: {exc}") from None
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



def render_seed(seed: dict) -> str:
    lines = []
    for section in sorted(seed):
        lines.append(f"[{section}]")
        for key, value in sorted(seed[section].items()):
            lines.append(f"{key} = {json_str(value)}")
        lines.append("")
    return "\n".join(lines)


def json_str(value: str) -> str:
    return json.dumps(value)


def settings_from_seed(seed: dict) -> dict:
    out = {}
    if seed.get("node", {}).get("name"):
        out["node_name"] = seed["node"]["name"]
    if seed.get("storage", {}).get("quota"):
        try:
            out["quota"] = parse_size(seed["storage"]["quota"])
        except ValueError as exc:
            raise SeedError(f"storage.quota: {exc}") from None
    if seed.get("limits", {}).get("upload"):
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
    if sig is None:
        raise SeedError(f"{where} is not signed ({SIG_NAME} is missing), and this image only accepts seeds "
                        f"signed by its fleet {fleet_id}; make seeds with `hearth fleet provision`")
    if not verify(fleet_id, text.encode(), sig):
        raise SeedError(f"{where} is not signed by this device's fleet {fleet_id} (a seed from another fleet, or "
                        "changed after signing); nothing was applied")
