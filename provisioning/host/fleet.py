"""Fleet provisioning on the owner's host (`hearth fleet provision`): one seed per device of a CSV list, signed
with the fleet key (an image built with --fleet-key applies no other), and, with an enrollment server, a
one-time claim token in each seed whose hash goes to the claims file the server answers from
(edge/fleet/claims.py)."""

import csv
import hashlib
import json
import os

from edge.atomic import write_atomic
from edge.errors import EdgeError
from edge.fleet.claims import Claims
from edge.fleet.requests import new_token
from edge.identity import Identity
from edge.provisioning.host.seeds import seed_of
from edge.provisioning.seed import SEED_NAME, SIG_NAME, SeedError, parse_seed, render_seed, sign_seed

SUMMARY = "summary.json"
CLAIMS = "claims.json"


class ProvisionError(EdgeError):
    """The device list cannot be made into seeds; nothing was written."""


def provision_fleet(devices: str, key: Identity, output: str, claim_url: str = "", pin: str = "",
                    claim_days: float = 90) -> dict:
    """Seeds for the devices of the CSV file `devices` (a header: name (required), quota, wifi_ssid, wifi_psk) in
    output/NAME/ (hearth-seed.toml, 0600, and its signature), output/summary.json, and with claim_url (https://)
    and pin (the enrollment server's TLS fingerprint, normalized) output/claims.json; returns the summary.
    ProvisionError naming the line at fault, writing nothing, when any row is bad."""
    with open(devices, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "name" not in rows[0]:
        raise ProvisionError(f"{devices}: needs a header row with at least a 'name' column")
    seen, summary, tokens = set(), [], {}
    seeds = []
    for i, row in enumerate(rows, 2):
        name = (row.get("name") or "").strip()
        if name in seen:
            raise ProvisionError(f"{devices}:{i}: device {name!r} appears twice")
        seen.add(name)
        try:
            seed = seed_of(name, (row.get("quota") or "").strip(), row.get("wifi_ssid") or "",
                           row.get("wifi_psk") or "")
            if claim_url:
                tokens[name] = new_token()
                seed["claim"] = {"token": tokens[name], "url": claim_url, "pin": pin, "fleet": key.node_id}
            text = render_seed(seed)
            parse_seed(text, f"{devices}:{i}")
        except SeedError as exc:
            raise ProvisionError(f"{devices}:{i}: {exc}") from None
        seeds.append((name, text))
    for name, text in seeds:          # nothing is written unless every row is good
        d = os.path.join(output, name)
        os.makedirs(d, mode=0o700, exist_ok=True)
        write_atomic(os.path.join(d, SEED_NAME), text.encode(), 0o600)     # it may hold a claim token, a PSK
        with open(os.path.join(d, SIG_NAME), "wb") as f:
            f.write(sign_seed(text, key))
        summary.append({"name": name, "seed": os.path.join(name, SEED_NAME),
                        "sha256": hashlib.sha256(text.encode()).hexdigest()})
    if tokens:
        Claims.create(os.path.join(output, CLAIMS), key.node_id, tokens, claim_days)
    result = {"fleet": key.node_id, "devices": summary, "claims": CLAIMS if tokens else None}
    with open(os.path.join(output, SUMMARY), "w") as f:
        json.dump(result, f, indent=1)
    return result
