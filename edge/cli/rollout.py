"""`hearth fleet rollout-key` and `hearth fleet rollout [start|status|halt|resume]`: staged rollouts through the
fleet's broker (edge/fleet/rollouts.py, edge/fleet/rollout_control.py; docs/fleet.md)."""

import hashlib
import json
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import replace

import click

from edge.errors import EdgeError


@click.command("rollout-key")
@click.option("--key", "fleet_key_file", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The fleet key (offline).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="The rollout key to create; its certificate goes beside it as OUTPUT.cert.")
@click.option("--days", type=float, default=365, show_default=True, help="The certificate expires after this.")
def rollout_key(fleet_key_file, output, days):
    """Create a rollout key and have the fleet key certify it: whoever holds it (and its .cert) can start, halt
    and resume rollouts, never certify nodes. The fleet key stays offline."""
    from edge.atomic import write_atomic
    from edge.fleet.rollouts import certify_rollout_key
    from edge.identity import Identity
    if os.path.exists(output):
        raise click.ClickException(f"{output} exists; a rollout key is never overwritten")
    fleet = Identity.load(fleet_key_file)
    key = Identity.generate()
    cert = certify_rollout_key(fleet, key.node_id, days)
    key.save(output)
    write_atomic(output + ".cert", cert, 0o644)
    click.echo(f"rollout key {key.node_id} in {output}, certified by fleet {fleet.node_id} for {days:g} days in "
               f"{output}.cert")


class _DefaultStart(click.Group):
    """`hearth fleet rollout URL …` is `hearth fleet rollout start URL …`."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["start", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_DefaultStart)
def rollout():
    """Staged rollouts: `hearth fleet rollout BUNDLE_URL --broker … --key …` starts one; status, halt and resume
    work from any machine holding the rollout key, once the first command has exited too."""


def _broker(url):
    from edge.fleet.mqtt import BrokerError, parse_broker
    try:
        return parse_broker(url)
    except BrokerError as exc:
        raise click.BadParameter(str(exc), param_hint="--broker") from None


def _signer(key_file, cert_file):
    """(the rollout key, its certificate, the fleet's id) after checking the certificate names that key."""
    from edge.fleet.certificates import CertificateError
    from edge.fleet.rollouts import check_rollout_key
    from edge.identity import Identity, node_id_of
    from edge.ipld import cbor
    key = Identity.load(key_file)
    cert_file = cert_file or key_file + ".cert"
    try:
        with open(cert_file, "rb") as f:
            cert = f.read()
        fleet_pk = cbor.loads(cert)["fleet"]
        signer, _ = check_rollout_key(cert, fleet_pk)
    except (OSError, EdgeError, KeyError, TypeError, CertificateError) as exc:
        raise click.ClickException(f"{cert_file}: not a usable rollout key certificate ({exc}); make one with "
                                   "`hearth fleet rollout-key`") from None
    if signer != key.node_id:
        raise click.ClickException(f"{cert_file} certifies another key than {key_file}")
    return key, cert, node_id_of(fleet_pk)


def _fingerprint(url: str) -> tuple[bytes, str, int]:
    """(SHA-256, version from its manifest, size) of the bundle at url, fetched once as devices will."""
    digest, size = hashlib.sha256(), 0
    with tempfile.TemporaryFile() as tmp:
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    digest.update(chunk)
                    tmp.write(chunk)
                    size += len(chunk)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise click.ClickException(f"cannot download {url}: {exc}") from None
        tmp.seek(0)
        try:
            with tarfile.open(fileobj=tmp, mode="r|") as tar:
                first = tar.next()
                manifest = json.loads(tar.extractfile(first).read()) if first and first.name == "manifest.json" \
                    and first.size < 1 << 20 else None
        except (tarfile.TarError, ValueError):
            manifest = None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("version"), str):
        raise click.ClickException(f"{url} is not a Hearth update bundle (`hearth update bundle` makes one)")
    return digest.digest(), manifest["version"][:32], size


def _run_controller(broker, fleet_id, key, first, settle, timeout):
    import trio

    from edge.fleet.mqtt import BrokerError
    from edge.fleet.plane import client_id
    from edge.fleet.rollout_control import control
    try:
        last = trio.run(lambda: control(broker, fleet_id, key, client_id("hearth-rollout"), first, settle,
                                        say=click.echo, timeout=timeout))
    except BrokerError as exc:
        raise click.ClickException(f"{exc} (the rollout goes on where it stood: `hearth fleet rollout resume`)") \
            from None
    _say_end(last)
    if last is not None and last.state == "halted":
        raise SystemExit(1)


def _say_end(last):
    if last is None:
        return
    click.echo(f"rollout {last.id}: {last.state.upper()}" + (f": {last.reason}" if last.reason else ""))
    for node in last.failed:
        click.echo(f"  FAILED  {node}")


_broker_option = click.option("--broker", required=True, help="The fleet's broker: mqtts://[user:password@]host.")
_key_option = click.option("--key", "key_file", required=True, type=click.Path(exists=True, dir_okay=False),
                           help="The rollout key (`hearth fleet rollout-key`).")
_cert_option = click.option("--cert", "cert_file", default="", help="Its certificate (default: KEY.cert).")
_timeout_option = click.option("--timeout", type=float, default=3600.0, show_default=True,
                               help="Seconds a device of an open wave may take to report how its install went; "
                               "past it, it counts as failed (silent).")
_settle_option = click.option("--settle", type=float, default=30.0, show_default=True,
                              help="Seconds a wave waits for reports before it may count as healthy.")


@rollout.command("start")
@click.argument("bundle_url")
@_broker_option
@_key_option
@_cert_option
@click.option("--waves", default="1%,10%,50%,100%", show_default=True, help="The share of devices each wave "
              "reaches (cumulative).")
@click.option("--halt-above", default="2%", show_default=True, help="Halt when more than this share of the "
              "devices so far failed or rolled back.")
@_settle_option
@_timeout_option
def rollout_start(bundle_url, broker, key_file, cert_file, waves, halt_above, settle, timeout):
    """Roll BUNDLE_URL (a bundle from `hearth update bundle`, on an http(s) server the devices reach) out wave by
    wave; this process drives it until it is done or halted (resume carries on if it exits)."""
    import time

    from edge.fleet.records import RecordError
    from edge.fleet.rollouts import Rollout, new_id, parse_share, parse_waves
    broker = _broker(broker)
    for name, value, parse in (("--waves", waves, parse_waves), ("--halt-above", halt_above, parse_share)):
        try:
            parse(value)
        except RecordError as exc:
            raise click.BadParameter(str(exc), param_hint=name) from None
    shares, halt = parse_waves(waves), parse_share(halt_above)
    key, cert, fleet_id = _signer(key_file, cert_file)
    sha256, version, size = _fingerprint(bundle_url)
    click.echo(f"bundle {version}: {size:,} bytes, sha256 {sha256.hex()}")
    first = Rollout(new_id(), int(time.time() * 1000), int(time.time()), bundle_url, sha256, version, shares, halt,
                    key=cert)
    try:
        from edge.fleet.rollouts import sign_rollout
        sign_rollout(first, key)
    except RecordError as exc:
        raise click.ClickException(str(exc)) from None
    _run_controller(broker, fleet_id, key, first, settle, timeout)


def _read(broker, fleet_id, wait):
    import trio

    from edge.fleet.mqtt import BrokerError
    from edge.fleet.plane import client_id
    from edge.fleet.rollout_control import read_state
    try:
        return trio.run(read_state, broker, fleet_id, client_id(), wait)
    except BrokerError as exc:
        raise click.ClickException(str(exc)) from None


@rollout.command("status")
@_broker_option
@click.option("--fleet", "fleet_id", required=True, help="The fleet key's id (hn…): only rollouts its rollout "
              "keys signed, and reports of nodes it certified, count.")
@click.option("--wait", type=float, default=1.5, show_default=True, help="Seconds to listen for records.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def rollout_status(broker, fleet_id, wait, as_json):
    """The rollout on the broker: its state, each wave's devices by report, the failed devices."""
    from edge.cli import output
    from edge.fleet.rollout_control import tally
    from edge.fleet.rollouts import share_text
    try:
        from edge.identity import public_key_of
        public_key_of(fleet_id)
    except EdgeError as exc:
        raise click.BadParameter(str(exc), param_hint="--fleet") from None
    watch = _read(_broker(broker), fleet_id, wait)
    r = watch.rollout
    if r is None:
        output.result({"rollout": None, "refused": watch.refused}, as_json,
                      "no rollout on the broker")
        return
    t = tally(r, watch.reports)
    summary = {"rollout": r.id, "state": r.state, "version": r.version, "url": r.url, "wave": r.wave + 1,
               "waves": [share_text(w) for w in r.waves], "halt_above": share_text(r.halt), "reason": r.reason,
               "failed": list(r.failed), "members": t["members"], "refused": watch.refused,
               "by_wave": [{"share": share_text(w["share"]), "devices": w["members"], "states": w["states"]}
                           for w in t["waves"]],
               "rolled_back": sorted(n for n, rep in watch.reports.items()
                                     if rep.rollout == r.id and rep.state == "rolled-back"),
               "failures": [{"node": n, "state": rep.state, "version": rep.version, "slot": rep.slot,
                             "detail": rep.detail} for n, rep in sorted(watch.reports.items())
                            if rep.rollout == r.id and rep.state in ("failed", "rolled-back")]}

    def lines(s):
        yield f"rollout {s['rollout']}: {s['state'].upper()}, {s['version']} from {s['url']}"
        yield f"wave {s['wave']} of {len(s['waves'])} ({', '.join(s['waves'])}), halt above {s['halt_above']}"
        if s["reason"]:
            yield f"  {s['reason']}"
        for i, w in enumerate(s["by_wave"]):
            states = ", ".join(f"{k} {v}" for k, v in sorted(w["states"].items())) or "-"
            yield f"  wave {i + 1} ({w['share']}): {w['devices']} devices: {states}"
        for f in s["failures"]:
            yield f"  {f['state'].upper():11}  {f['node']}  slot {f['slot'] or '-'}: {f['detail'] or '-'}"
        if s["refused"]:
            yield f"({s['refused']} records refused: not signed by a key of this fleet, or malformed)"
    output.result(summary, as_json, lines)


def _change(broker, key_file, cert_file, wait, to_state, **fields):
    import time

    from edge.fleet.records import next_seq
    key, cert, fleet_id = _signer(key_file, cert_file)
    watch = _read(broker, fleet_id, wait)
    r = watch.rollout
    if r is None:
        raise click.ClickException("there is no rollout on the broker")
    return fleet_id, key, replace(r, seq=next_seq(r.seq), time=int(time.time()), state=to_state, key=cert, **fields)


@rollout.command("halt")
@_broker_option
@_key_option
@_cert_option
@click.option("--wait", type=float, default=1.5, show_default=True, help="Seconds to listen for the rollout.")
def rollout_halt(broker, key_file, cert_file, wait):
    """Halt the rollout: no device starts its install any more (those installing finish and report)."""
    import trio

    from edge.fleet.mqtt import connect
    from edge.fleet.plane import client_id
    from edge.fleet.rollouts import rollout_topic, sign_rollout
    broker = _broker(broker)
    fleet_id, key, halted = _change(broker, key_file, cert_file, wait, "halted", reason="halted by hand")

    async def publish():
        async with connect(broker, client_id("hearth-rollout")) as session:
            session.publish(rollout_topic(fleet_id), sign_rollout(halted, key), retain=True)
            await trio.sleep(0.3)
    trio.run(publish)
    click.echo(f"rollout {halted.id}: HALTED in wave {halted.wave + 1} of {len(halted.waves)}")


@rollout.command("resume")
@_broker_option
@_key_option
@_cert_option
@click.option("--halt-above", default="", help="A new threshold (the failures so far still count).")
@_settle_option
@_timeout_option
@click.option("--wait", type=float, default=1.5, show_default=True, help="Seconds to listen for the rollout.")
def rollout_resume(broker, key_file, cert_file, halt_above, settle, timeout, wait):
    """Resume the rollout where it stood and drive it on (this process is its controller now)."""
    from edge.fleet.records import RecordError
    from edge.fleet.rollouts import parse_share
    broker = _broker(broker)
    try:
        extra = {"halt": parse_share(halt_above)} if halt_above else {}
    except RecordError as exc:
        raise click.BadParameter(str(exc), param_hint="--halt-above") from None
    fleet_id, key, resumed = _change(broker, key_file, cert_file, wait, "running", reason="", **extra)
    _run_controller(broker, fleet_id, key, resumed, settle, timeout)
