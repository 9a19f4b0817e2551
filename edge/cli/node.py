"""`hearth init`, `run`, `status`, `peers`, `doctor`, `demo`: this node and its agent."""

import logging
import os
import sys

import click

from edge.cli import output
from edge.cli.common import ask_agent, config_of


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def doctor(as_json):
    """Check this box: Python and library versions, native kernels and CPU paths, FFmpeg encoders."""
    from edge import doctor as doctor_mod

    report = doctor_mod.collect()
    output.result(report, as_json, doctor_mod.render, indent=2)
    if report["problems"]:
        sys.exit(1)


@click.command()
@click.argument("path", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("-k", "k", default=10, show_default=True, help="Data shards.")
@click.option("-m", "m", default=4, show_default=True, help="Parity shards (shards that may be lost).")
@click.option("--size", default=64 << 20, show_default=True, help="Bytes of random data when no PATH is given.")
@click.option("--seed", type=int, default=None, help="Seed for the data and for which shards are lost.")
def demo(path, k, m, size, seed):
    """Erasure-code a file (or random data), lose m shards, rebuild it and check every byte."""
    from edge.demo import run_demo
    for line in run_demo(path, k, m, size, seed):
        output.say(line)


@click.command()
@click.option("--force", is_flag=True, help="Replace an existing identity (the node gets a new id).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def init(ctx, force, as_json):
    """Create this node's identity (readable only by you) and a commented config file."""
    from edge.datadir import init_node
    done = init_node(config_of(ctx), force)
    output.result(done, as_json, f"node {done['node']}\nidentity {done['identity']}\nconfig   {done['config']}"
                  if done["created"] else f"already initialised: node {done['node']} ({done['identity']}); "
                  "--force makes a new identity")


@click.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="Config file [default: DATA_DIR/hearth.toml].")
@click.option("--port", "--transport-port", "transport_port", type=int, default=None,
              help="Transport port (0 picks a free one).")
@click.option("--gateway-port", type=int, default=None, help="HTTP gateway and player port (0: off).")
@click.option("--metrics-port", type=int, default=None, help="Prometheus port on 127.0.0.1 (0: off).")
@click.option("--mdns/--no-mdns", default=None, help="Announce and browse on the LAN.")
@click.option("--peer", "static_peers", multiple=True, help="A neighbour as NODE_ID@HOST:PORT (repeatable).")
@click.pass_context
def run(ctx, config_file, transport_port, gateway_port, metrics_port, mdns, static_peers):
    """Run the node in the foreground (SIGTERM or Ctrl-C stops it gracefully)."""
    import trio

    from edge.agent import run_agent
    from edge.datadir import require
    from edge.identity import KEY_FILE
    from edge.systemd import configure_logging
    config = config_of(ctx, config_file, transport_port=transport_port, gateway_port=gateway_port,
                     metrics_port=metrics_port, mdns=mdns, static_peers=tuple(static_peers) or None)
    require(config.data_dir)       # an unmounted data disk is not a node without an identity
    if not os.path.exists(os.path.join(config.data_dir, KEY_FILE)):
        raise click.ClickException(f"no identity in {config.data_dir}; run `hearth init` first")
    configure_logging(logging.getLogger().level if logging.getLogger().level < logging.WARNING else logging.INFO,
                      config.log_format)
    from edge.kernels import warn_if_reference
    warn_if_reference()
    trio.run(run_agent, config)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def status(ctx, as_json):
    """What the running agent is doing: the sections of its status page, in text."""
    info = ask_agent(ctx, "status")
    info["page"] = ask_agent(ctx, "page")   # what the status page shows: neighbours, bandwidth, storage, fetches
    output.result(info, as_json, _status_text)


def _status_text(info: dict):
    s, served, fetched = info["store"], info["served"], info["fetched"]
    hot = s.get("hot") or {}
    yield (f"node      {info['node']} (hearth {info['version']}, up {info['uptime']:.0f} s)\n"
           f"serving   {info['endpoint']} ({info['admission']})\npeers     {info['peers']}\n"
           f"store     {s['blocks']:,} blocks, {s['bytes']:,} bytes, {s['pins']} pins\n"
           f"served    {served.get('blocks_served', 0):,} blocks, {served.get('bytes_served', 0):,} bytes; "
           f"refused {served.get('refusals', 0)}, busy {served.get('busy', 0)}, errors {served.get('errors', 0)}\n"
           f"fetched   {fetched['blocks']:,} blocks, {fetched['bytes']:,} bytes; {fetched['failures']} failures\n"
           f"cache     {hot.get('blocks', 0):,} blocks, {hot.get('bytes', 0):,} of {hot.get('limit', 0):,} bytes; "
           f"{hot.get('hits', 0):,} hits\n"
           + (f"page      {info['gateway_url']}\nplayer    {info['gateway_url']}watch/" if info.get("gateway_url")
              else "player    none (the gateway is off: gateway_port = 0; so is the status page)"))
    cert = info.get("certificate")
    if cert:
        import time
        when = (lambda t: time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t)) if t else "never")
        line = f"fleet     certificate {cert['serial'] or '?'} expires {when(cert['expires'])}"
        if cert["server"]:
            line += f", renewed from {cert['server']} from {when(cert['renew_at'])}"
        if cert["failures"]:
            line += (f"\n          RENEWAL FAILING ({cert['failures']} tries; the certificate is kept until it "
                     f"expires; next try {when(cert['next_try'])}): {cert['last_error']}")
        elif cert["last_error"]:
            line += f"\n          {cert['last_error']}"
        yield line
    pieces = (info.get("services") or {}).get("pieces")
    if pieces:
        yield (f"pieces    {pieces['pieces']:,} held for neighbours, {pieces['bytes']:,} of {pieces['share']:,} "
               f"bytes of share; audits answered {served.get('audits_answered', 0)}")
    for p in info.get("protected") or ():
        health = "not audited yet (`hearth pin ls` audits)" if p["healthy"] is None else \
            f"{p['healthy']} of {p['pieces']} pieces healthy at the last audit"
        yield f"protected {p['cid']} {p['k']}+{p['m']} on {p['holders']} holders: {health}"
    plane = (info.get("services") or {}).get("fleet")
    if plane:
        state = "connected" if plane["connected"] else f"NOT CONNECTED ({plane['last_error'] or 'connecting'})"
        dropped = sum(n for what, n in plane["messages"].items() if what.startswith("dropped"))
        yield (f"broker    {plane['broker']} (region {plane['region']}): {state}; {plane['nodes']} nodes heard, "
               f"{dropped} messages dropped")
    yield from _reach_text(info.get("services") or {})
    if info.get("page"):
        from edge.cli.statustext import page_text
        yield from page_text(info["page"])


REACH = {"direct": "direct (a public or configured address)",
         "webrtc": "only over WebRTC (no public address and no port mapping: nodes in other homes ask through the "
                   "broker)",
         "lan": "only from its own LAN (no public address, no port mapping, and no ice_servers for WebRTC)"}


def _reach_text(services: dict):
    """How nodes in other homes reach this one: the fleet plane's view, with the port mapping's details."""
    mapped, plane = services.get("portmap"), services.get("fleet")
    how = (plane or {}).get("reach") or ("mapped" if mapped and mapped["external"] else "")
    if how == "mapped" and mapped and mapped["external"]:
        yield (f"reach     mapped {mapped['external']} -> port {mapped['internal_port']} by {mapped['method']} "
               f"(renewed in {mapped['renew_in']} s)")
    elif how:
        yield f"reach     {REACH.get(how, how)}"
    if mapped and not mapped["external"]:
        yield f"portmap   NO MAPPING yet ({mapped['last_error'] or 'asking the router'})"


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def peers(ctx, as_json):
    """The running agent's neighbours, best first."""
    output.result(ask_agent(ctx, "peers"), as_json, _peers_text)


def _peers_text(rows: list):
    if not rows:
        yield "no neighbours yet"
    for p in rows:
        rtt = "-" if p["rtt_ms"] is None else f"{p['rtt_ms']} ms"
        speed = "-" if p.get("throughput") is None else f"{p['throughput'] / 1e6:.1f} MB/s"
        note = f"  REJECTED: {p['rejected']}" if p["rejected"] else ""
        yield (f"{p['node']}  {p['addresses'][0]}:{p['port']}  {p.get('source', '-')}  rtt {rtt}  {speed}  "
               f"up {p['uptime']:.0%}  score {p['score']}{note}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def leave(ctx, as_json):
    """Hand every piece this node holds for neighbours' protected pins to other neighbours, then say whether it is
    safe to unplug."""
    # no time limit: the hand-overs run at the upload limit, and the agent gives up on a silent neighbour itself
    output.result(ask_agent(ctx, "leave", timeout=None), as_json, _leave_text)


def _leave_text(info: dict):
    yield (f"moved {info['moved']} of {info['pieces']} pieces ({info['bytes'] / (1 << 20):.1f} MiB) to "
           f"{len(info['to'])} neighbours in {info['seconds']} s; owners told: {info['owners_told']}, away: "
           f"{info['owners_away']} (their repair notices)")
    if info["safe"]:
        yield "safe to unplug: this node holds no pieces for its neighbours now"
    else:
        yield (f"not safe to unplug yet: {info['left']} pieces found no new holder; run `hearth leave` again when "
               "more neighbours are up (or unplug anyway: their owners' repair rebuilds them)")
