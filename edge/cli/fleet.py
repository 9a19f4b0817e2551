"""`hearth fleet …`: a closed fleet's key, certificates, delegations, revocations, seeds and enrollment."""

import os

import click

from edge.errors import EdgeError


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
    from edge.fleet.certificates import sign_certificate
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
    from edge.fleet.certificates import CertificateError, sign_delegation
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
    from edge.fleet.revocations import extend
    from edge.identity import Identity
    new = extend(Identity.load(key_file), list_file, items)
    click.echo(f"revocation list {new.seq} in {list_file}: {len(new.nodes)} nodes, {len(new.serials)} serials; "
               "copy it to the enrollment server's directory as revoked.cbor")


@fleet.command("claims")
@click.argument("claims_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--revoke", "device", default="", help="Revoke this device's claim token: no claim and no renewal "
              "with it any more (also revoke its node with `hearth fleet revoke`).")
def fleet_claims(claims_file, device):
    """The devices of a claims file: which node claimed each token, and when; revoke one."""
    import time

    from edge.fleet.claims import Claims
    try:
        claims = Claims.of_file(claims_file)
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
    except (EdgeError, ValueError, OSError) as exc:
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
    from edge.identity import Identity
    from edge.provisioning.host.fleet import provision_fleet
    if claim_url:
        from edge.fleet.requests import ClaimError
        from edge.fleet.tls import normalize_pin
        if not claim_url.startswith("https://"):
            raise click.BadParameter("the enrollment server speaks https:// only", param_hint="--claim-url")
        try:
            pin = normalize_pin(pin) if pin else ""
        except ClaimError as exc:
            raise click.BadParameter(str(exc), param_hint="--pin") from None
        if not pin:
            raise click.BadParameter("give the enrollment server's TLS fingerprint (run `hearth fleet "
                                     "enroll-server` once: it prints it)", param_hint="--pin")
    key = Identity.load(key_file)
    summary = provision_fleet(devices, key, output, claim_url, pin, claim_days)
    click.echo(f"{len(summary['devices'])} signed seeds in {output} (fleet {key.node_id}); summary.json lists them"
               + ("; serve claims.json with `hearth fleet enroll-server`" if summary["claims"] else ""))


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
@click.option("--broker", default="", help="The fleet's MQTT broker, mqtts://host[:port] (no credentials): each "
              "node gets its own username and password for it with its certificate, and DIR/broker.passwd lists "
              "them for mosquitto.")
@click.option("--broker-pid-file", default="", type=click.Path(dir_okay=False),
              help="mosquitto's pid file (its `pid_file` setting): it gets SIGHUP whenever DIR/broker.passwd "
              "changes, so a revoked node is off the broker within a second.")
def fleet_enroll_server(state, claims, listen, days, broker, broker_pid_file):
    """Give devices holding a claim token their fleet certificate, renew them, and serve the revocation list
    (HTTPS; POST /claim, POST /renew, GET /revoked). Holds an enrollment key, never the fleet key."""
    from edge.fleet.server import run_enrollment_server
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise click.BadParameter(f"{listen!r} is not HOST:PORT", param_hint="--listen")
    if not days > 0:
        raise click.BadParameter("certificates from the enrollment server expire: give a number of days",
                                 param_hint="--days")
    from edge.config import BROKER_URL
    if broker and ("@" in broker or not BROKER_URL.match(broker)):
        raise click.BadParameter(f"{broker!r} is not mqtts://host[:port] (without credentials: each node gets its "
                                 "own)", param_hint="--broker")
    try:
        run_enrollment_server(state, claims, host, int(port), days=days, broker=broker,
                              broker_pid_file=broker_pid_file, say=lambda line, stderr: click.echo(line, err=stderr))
    except OSError as exc:
        raise click.ClickException(f"{exc}") from None
    except KeyboardInterrupt:
        pass


@fleet.command("claim")
@click.option("--restart-agent/--no-restart-agent", default=False,
              help="Restart hearth.service once enrolled (hearth-enroll.service does).")
@click.option("--timeout", type=float, default=20, show_default=True)
@click.pass_context
def fleet_claim(ctx, restart_agent, timeout):
    """Claim this node's fleet certificate with the token from its seed (run by hearth-enroll.service)."""
    from edge.fleet.requests import ClaimError
    from edge.provisioning.device.claim import claim_certificate
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
    from edge.fleet.renewal import renew_now
    try:
        info, path = renew_now(ctx.obj["data_dir"], timeout)
    except (EdgeError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    import time
    click.echo(f"hearth: certificate {info['serial']} until "
               f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(info['expires']))} in {path}")


@fleet.command("status")
@click.option("--broker", required=True, help="The fleet's broker: mqtts://[user:password@]host[:port].")
@click.option("--fleet", "fleet_key", default="", help="The fleet key's id (hn…): only records its certificates "
              "admit count; without it, the open network's nodes.")
@click.option("--wait", type=float, default=2.0, show_default=True, help="Seconds to listen for records.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def fleet_status(broker, fleet_key, wait, as_json):
    """The fleet as its nodes report it: versions, slots, health, nodes gone quiet, the busiest (every record
    verified)."""
    import trio

    from edge.cli import output
    from edge.fleet.mqtt import BrokerError, parse_broker
    from edge.fleet.plane import client_id
    from edge.fleet.telemetry import collect, summarize, summary_lines
    try:
        if fleet_key:
            from edge.identity import public_key_of
            public_key_of(fleet_key)
        records, refused = trio.run(collect, parse_broker(broker), fleet_key, client_id(), wait)
    except (BrokerError, EdgeError) as exc:
        raise click.ClickException(str(exc)) from None
    output.result(summarize(records, refused), as_json, summary_lines)


# staged rollouts (edge/cli/rollout.py)
from edge.cli.rollout import rollout, rollout_key   # noqa: E402

fleet.add_command(rollout_key)
fleet.add_command(rollout)
