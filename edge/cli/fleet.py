"""`hearth fleet …`: a closed fleet's key, certificates, delegations, revocations, seeds and enrollment."""

import json
import os

import click


@click.group()
def fleet():
    """A closed fleet: a fleet key certifies the nodes that may talk to each other."""


@fleet.command("init")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to keep the fleet key.")
def fleet_init(output):
    """Create a fleet key (keep it offline); prints the public key nodes are configured with."""
    from edge.identity import Identity
    if os.path.exists(output):
        raise click.ClickException(f"{output} exists; a fleet key is never overwritten")
    key = Identity.generate()
    key.save(output)
    click.echo(f"fleet key {output}\nfleet_key = \"{key.node_id}\"   # put this in every node's hearth.toml")


@fleet.command("sign")
@click.argument("node_id")
@click.option("--key", "key_file", required=True, type=click.Path(exists=True, dir_okay=False), help="Fleet key.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Certificate file.")
@click.option("--days", type=float, default=0, help="Valid for this many days (0: no expiry).")
def fleet_sign(node_id, key_file, output, days):
    """Certify NODE_ID as a member of the fleet."""
    from edge.fleet import sign_certificate
    from edge.identity import Identity
    cert = sign_certificate(Identity.load(key_file), node_id, days)
    with open(output, "wb") as f:
        f.write(cert)
    click.echo(f"certificate for {node_id} in {output}; set fleet_cert to its path on that node")


@fleet.command("delegate")
@click.argument("enroll_id")
@click.option("--key", "key_file", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The fleet key (offline).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="The delegation file (the enrollment server's DIR/delegation.cert).")
@click.option("--days", type=float, default=365, show_default=True, help="The delegation expires after this.")
def fleet_delegate(enroll_id, key_file, output, days):
    """Let the enrollment key ENROLL_ID (printed by `hearth fleet enroll-server`) certify nodes for DAYS."""
    from edge.errors import DecodeError
    from edge.fleet import CertificateError, sign_delegation
    from edge.identity import Identity
    try:
        delegation = sign_delegation(Identity.load(key_file), enroll_id, days)
    except (CertificateError, DecodeError) as exc:
        raise click.ClickException(f"{exc}") from None
    from edge.atomic import write_atomic
    write_atomic(output, delegation, 0o644)
    click.echo(f"delegation to {enroll_id} for {days:g} days in {output}; put it in the enrollment server's "
               "directory as delegation.cert")


@fleet.command("revoke")
@click.argument("items", nargs=-1)
@click.option("--key", "key_file", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The fleet key (offline).")
@click.option("--list", "list_file", required=True, type=click.Path(dir_okay=False),
              help="The revocation list (read if it exists, written with a higher sequence number).")
def fleet_revoke(items, key_file, list_file):
    """Revoke node ids and certificate serials (ITEMS): sign a new revocation list holding them and every entry
    of the old one. Copy it to the enrollment server's DIR/revoked.cbor; nodes fetch it from there."""
    from edge.errors import DecodeError
    from edge.fleet import CertificateError, parse_revocations, sign_revocations
    from edge.identity import Identity
    key = Identity.load(key_file)
    nodes, serials, seq = set(), set(), 0
    if os.path.exists(list_file):
        with open(list_file, "rb") as f:
            try:
                old = parse_revocations(f.read(), key.public_key)
            except CertificateError as exc:
                raise click.ClickException(f"{list_file}: {exc}; give another --list") from None
        nodes, serials, seq = set(old.nodes), set(old.serials), old.seq
    for item in items:
        (nodes if item.startswith("hn") else serials).add(item)
    try:
        data = sign_revocations(key, seq + 1, nodes, serials)
    except (CertificateError, DecodeError) as exc:
        raise click.ClickException(f"{exc}") from None
    from edge.atomic import write_atomic
    write_atomic(list_file, data, 0o644)
    click.echo(f"revocation list {seq + 1} in {list_file}: {len(nodes)} nodes, {len(serials)} serials; copy it "
               "to the enrollment server's directory as revoked.cbor")


@fleet.command("claims")
@click.argument("claims_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--revoke", "device", default="", help="Revoke this device's claim token: no claim and no renewal "
              "with it any more (also revoke its node with `hearth fleet revoke`).")
def fleet_claims(claims_file, device):
    """The devices of a claims file: which node claimed each token, and when; revoke one."""
    import time

    from edge.enroll import ClaimError, Claims
    try:
        with open(claims_file) as f:
            fleet_id = json.load(f).get("fleet")
        claims = Claims(claims_file, fleet=fleet_id)
        if device:
            entry = claims.revoke(device)
            click.echo(f"revoked the claim token of {device}" + (f" (node {entry['node']}: revoke it too with "
                       f"`hearth fleet revoke {entry['node']}`)" if entry["node"] else ""))
            return
        for e in claims.devices():
            when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(e["claimed"])) if e.get("claimed") else "-"
            window = time.strftime("%Y-%m-%d", time.gmtime(e["expires"])) if e.get("expires") else "open"
            click.echo(f"{e['device']}  node {e['node'] or '-'}  claimed {when}  window {window}  serial "
                       f"{e.get('serial') or '-'}" + ("  REVOKED" if e.get("revoked") else ""))
    except (ClaimError, ValueError, OSError) as exc:
        raise click.ClickException(f"{exc}") from None


@fleet.command("provision")
@click.option("--devices", required=True, type=click.Path(exists=True, dir_okay=False),
              help="CSV with a header: name (required), quota, wifi_ssid, wifi_psk.")
@click.option("--key", "key_file", required=True, type=click.Path(exists=True, dir_okay=False), help="Fleet key.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Directory for the seeds.")
@click.option("--claim-url", default="", help="Your enrollment server (`hearth fleet enroll-server`), e.g. "
              "https://10.0.0.5:4810/claim: each seed gets a one-time claim token for a certificate, and "
              "OUTPUT/claims.json the tokens' hashes.")
@click.option("--pin", default="", help="With --claim-url: the enrollment server's TLS fingerprint (`hearth fleet "
              "enroll-server` prints it); the devices trust no other certificate.")
@click.option("--claim-days", type=float, default=90, show_default=True,
              help="With --claim-url: each token can be claimed for this many days (0: for ever).")
def fleet_provision(devices, key_file, output, claim_url, pin, claim_days):
    """One signed seed per device (OUTPUT/NAME/hearth-seed.toml + .sig) and OUTPUT/summary.json. Images built
    with --fleet-key apply only seeds their fleet signed."""
    import csv
    import hashlib

    from edge.identity import Identity
    from edge.provision import SEED_NAME, SIG_NAME, SeedError, parse_seed, render_seed, sign_seed
    from edge.units import parse_size
    key = Identity.load(key_file)
    if claim_url:
        from edge.enroll import ClaimError, normalize_pin
        if not claim_url.startswith("https://"):
            raise click.BadParameter("the enrollment server speaks https:// only", param_hint="--claim-url")
        try:
            pin = normalize_pin(pin) if pin else ""
        except ClaimError as exc:
            raise click.BadParameter(str(exc), param_hint="--pin") from None
        if not pin:
            raise click.BadParameter("give the enrollment server's TLS fingerprint (run `hearth fleet "
                                     "enroll-server` once: it prints it)", param_hint="--pin")
    with open(devices, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "name" not in rows[0]:
        raise click.ClickException(f"{devices}: needs a header row with at least a 'name' column")
    from edge.atomic import write_atomic
    from edge.enroll import Claims, new_token
    seen, summary, tokens = set(), [], {}
    seeds = []
    for i, row in enumerate(rows, 2):
        name = (row.get("name") or "").strip()
        if name in seen:
            raise click.ClickException(f"{devices}:{i}: device {name!r} appears twice")
        seen.add(name)
        seed = {"node": {"name": name}}
        if row.get("quota"):
            seed["storage"] = {"quota": row["quota"].strip()}
        if row.get("wifi_ssid"):
            seed["network"] = {"wifi_ssid": row["wifi_ssid"], **({"wifi_psk": row["wifi_psk"]}
                                                                  if row.get("wifi_psk") else {})}
        if claim_url:
            tokens[name] = new_token()
            seed["claim"] = {"token": tokens[name], "url": claim_url, "pin": pin, "fleet": key.node_id}
        text = render_seed(seed)
        try:
            parse_seed(text, f"{devices}:{i}")
            if row.get("quota"):
                parse_size(row["quota"])
        except (SeedError, ValueError) as exc:
            raise click.ClickException(f"{devices}:{i}: {exc}") from None
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
        Claims.create(os.path.join(output, "claims.json"), key.node_id, tokens, claim_days)
    with open(os.path.join(output, "summary.json"), "w") as f:
        json.dump({"fleet": key.node_id, "devices": summary,
                   "claims": "claims.json" if tokens else None}, f, indent=1)
    click.echo(f"{len(summary)} signed seeds in {output} (fleet {key.node_id}); summary.json lists them"
               + ("; serve claims.json with `hearth fleet enroll-server`" if tokens else ""))


@fleet.command("enroll-server")
@click.option("--dir", "state", required=True, type=click.Path(file_okay=False),
              help="The server's directory: enroll.key and tls.key/tls.pem (made on first start), "
              "delegation.cert (from `hearth fleet delegate`), revoked.cbor (from `hearth fleet revoke`, optional).")
@click.option("--claims", required=True, type=click.Path(dir_okay=False),
              help="The claims.json `hearth fleet provision --claim-url` wrote (updated as devices claim).")
@click.option("--listen", required=True, help="HOST:PORT to serve on, e.g. 10.0.0.5:4810 (0.0.0.0 means every "
              "interface: say so only if you mean it).")
@click.option("--days", type=float, default=30, show_default=True,
              help="Certificates expire after this many days (nodes renew them at 2/3 of that).")
def fleet_enroll_server(state, claims, listen, days):
    """Give devices holding a claim token their fleet certificate, renew them, and serve the revocation list
    (HTTPS; POST /claim, POST /renew, GET /revoked). Holds an enrollment key, never the fleet key."""
    import trio

    from edge.enroll import (Claims, Issuer, make_tls, serve_enrollment, server_context,
                             tls_fingerprint)
    from edge.errors import EdgeError
    from edge.fleet import REVOKED_FILE
    from edge.identity import Identity
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise click.BadParameter(f"{listen!r} is not HOST:PORT", param_hint="--listen")
    if not days > 0:
        raise click.BadParameter("certificates from the enrollment server expire: give a number of days",
                                 param_hint="--days")
    os.makedirs(state, mode=0o700, exist_ok=True)
    key_path, cert_path, tls_key = (os.path.join(state, n) for n in ("enroll.key", "tls.pem", "tls.key"))
    if not os.path.exists(key_path):
        Identity.generate().save(key_path)
    key = Identity.load(key_path)
    if not os.path.exists(cert_path):
        make_tls(cert_path, tls_key, host)
    pin = tls_fingerprint(cert_path)
    click.echo(f"enrollment key {key.node_id}\nTLS fingerprint {pin}   (hearth fleet provision --pin)", err=True)
    delegation_path = os.path.join(state, "delegation.cert")
    if not os.path.exists(delegation_path):
        raise click.ClickException(f"no {delegation_path}: on the machine with the fleet key run `hearth fleet "
                                   f"delegate {key.node_id} --key FLEET_KEY -o delegation.cert` and copy it there")
    try:
        with open(claims) as f:
            fleet_id = json.load(f).get("fleet", "")
    except (OSError, ValueError, AttributeError) as exc:
        raise click.ClickException(f"{claims} is not a claims file (`hearth fleet provision --claim-url` writes "
                                   f"one): {exc}") from None
    try:
        with open(delegation_path, "rb") as f:
            issuer = Issuer(key, f.read(), fleet_id)
        registry = Claims(claims, issuer)
    except EdgeError as exc:     # a delegation from another fleet, for another key, or expired
        raise click.ClickException(f"{exc}") from None
    if host in ("0.0.0.0", "::"):
        click.echo("listening on every interface, as --listen says", err=True)

    def say(line, error):
        click.echo(line, err=error)

    async def main():
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(lambda task_status: serve_enrollment(
                registry, server_context(cert_path, tls_key), host, int(port), days=days,
                revoked_path=os.path.join(state, REVOKED_FILE), say=say, task_status=task_status))
            click.echo(f"enrolling devices of fleet {fleet_id} at https://{host}:{bound}/claim", err=True)
    try:
        trio.run(main)
    except KeyboardInterrupt:
        pass


@fleet.command("claim")
@click.option("--restart-agent/--no-restart-agent", default=False,
              help="Restart hearth.service once enrolled (hearth-enroll.service does).")
@click.option("--timeout", type=float, default=20, show_default=True)
@click.pass_context
def fleet_claim(ctx, restart_agent, timeout):
    """Claim this node's fleet certificate with the token from its seed (run by hearth-enroll.service)."""
    from edge.enroll import ClaimError, claim_certificate
    try:
        enrolled = claim_certificate(ctx.obj["data_dir"], timeout)
    except ClaimError as exc:
        raise click.ClickException(str(exc)) from None
    if enrolled is None:
        click.echo("hearth: no fleet claim to make (the seed had no [claim])")
        return
    click.echo(f"hearth: enrolled in fleet {enrolled[0]} as {enrolled[1]}")
    if restart_agent:
        os.execvp("systemctl", ["systemctl", "try-restart", "hearth.service"])


@fleet.command("renew")
@click.option("--timeout", type=float, default=20, show_default=True)
@click.pass_context
def fleet_renew(ctx, timeout):
    """Renew this node's fleet certificate now from its enrollment server (the agent does it by itself at 2/3
    of the certificate's life; this is for a node that was off until its certificate expired)."""
    from edge.config import ConfigError, load_config
    from edge.enroll import ClaimError, read_enroll, renew_certificate
    from edge.errors import EdgeError
    from edge.fleet import read_certificate
    from edge.identity import KEY_FILE, Identity, public_key_of
    data_dir = ctx.obj["data_dir"]
    try:
        config = load_config(flags={"data_dir": data_dir})
        enroll = read_enroll(data_dir)
        if enroll is None:
            raise click.ClickException(f"this node was not enrolled by an enrollment server (no {data_dir}/"
                                       "enroll.json): its certificate is renewed with `hearth fleet sign`")
        identity = Identity.load(os.path.join(data_dir, KEY_FILE))
        path = os.path.join(data_dir, config.fleet_cert or "fleet.cert")
        with open(path, "rb") as f:
            cert = f.read()
        new = renew_certificate(enroll, identity, cert, path, timeout)
        info = read_certificate(new, public_key_of(enroll["fleet"]), identity.node_id)
    except (ClaimError, ConfigError, EdgeError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    import time
    click.echo(f"hearth: certificate {info['serial']} until "
               f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(info['expires']))} in {path}")
