"""The `hearth` command: click commands parse, call one function, print."""

import contextlib
import json
import logging
import os
import random
import sys
import threading

import click

import edge
from edge.errors import EdgeError

PROGRESS_MIN_BYTES = 8 << 20


def parse_size(text: str) -> int:
    """Bytes from '500000', '500K', '64MiB', '2G', '1.5TB' (edge/units.py); ValueError saying what is accepted."""
    from edge.units import parse_size as parse
    return parse(text)


def default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "hearth")


class HearthGroup(click.Group):
    """Turns Hearth's own errors into a one-line message and exit status 1, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EdgeError as exc:
            raise click.ClickException(str(exc)) from exc
        except FileNotFoundError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=HearthGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(edge.__version__, prog_name="hearth")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("--data-dir", envvar="HEARTH_DATA_DIR", type=click.Path(file_okay=False), default=None,
              help="Where the store lives [env HEARTH_DATA_DIR; default ~/.local/share/hearth].")
@click.pass_context
def main(ctx, verbose, data_dir):
    """Hearth: a mini-CDN in every home."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    ctx.obj = {"data_dir": data_dir or default_data_dir(), "data_dir_given": data_dir is not None}


def open_store(ctx):
    from edge.datadir import require
    from edge.store import Store
    require(ctx.obj["data_dir"])   # never a fresh store in the empty directory of an unmounted disk
    return Store(ctx.obj["data_dir"], **_store_settings(ctx))


def _store_settings(ctx) -> dict:
    """The configuration's quota and disk reserve, so every command enforces the one quota the agent does."""
    from edge.config import load_config, store_settings
    return store_settings(load_config(flags={"data_dir": ctx.obj["data_dir"]}))


def _fetch_if_missing(ctx, path: str, block=None) -> bool:
    """If this node lacks blocks under path's root and an agent runs, have it fetch them from neighbours.
    False where blocks are missing and no agent runs (so no neighbour was asked). With block (one the store found
    corrupt while reading path, quarantined and struck from the catalog): have the agent fetch a good copy."""
    from edge.store import content
    root = block if block is not None else content.parse_target(path)
    if block is None:
        with open_store(ctx) as store:
            if store.has(root) and not store.dag(root)[1]:
                return True
    sock = os.path.join(ctx.obj["data_dir"], "control.sock")
    if not _agent_answers(sock):
        return False   # the read may still find what path names (part of root's DAG), or says what is missing
    from edge.control import ask
    done = threading.Event()
    if sys.stderr.isatty():   # a fetch can take minutes: say how far it has got
        threading.Thread(target=_show_fetching, args=(sock, done), daemon=True).start()
    try:
        ask(sock, "fetch", timeout=None, cid=str(root))   # the agent gives up on a silent neighbour itself
    except ConnectionError as exc:
        raise click.ClickException(f"fetching {root} from neighbours failed: {exc}") from None
    finally:
        done.set()
    return True


def _reading(ctx, path: str, read):
    """read(store) for path, its missing blocks fetched first where an agent runs. A block found corrupt while
    reading (the store quarantines it) is fetched again from neighbours through the agent, and read runs once
    more (it goes on from where it got to); without an agent, or a second time, the corruption is the error."""
    from edge.store.errors import CorruptBlock
    asked = _fetch_if_missing(ctx, path)
    retried = False
    while True:
        try:
            with open_store(ctx) as store, _not_here_hint(asked):
                return read(store)
        except CorruptBlock as exc:
            if retried or exc.cid is None:
                raise
            try:
                if not _fetch_if_missing(ctx, path, block=exc.cid):
                    raise
            except click.ClickException as failed:
                raise click.ClickException(f"{exc}; no neighbour gave a good copy ({failed.message})") from None
            click.echo(f"block {exc.cid} here was corrupt (quarantined); fetched a good copy from neighbours",
                       err=True)
            retried = True


def _agent_answers(sock: str) -> bool:
    """Whether an agent answers on its control socket (a socket file can outlive an agent that was killed)."""
    from edge.control import ask
    try:
        ask(sock, "status", timeout=5)
        return True
    except (ConnectionError, OSError):
        return False


@contextlib.contextmanager
def _not_here_hint(asked: bool):
    """A block missing where no agent ran: say that no neighbour was asked and what would ask them."""
    from edge.store.errors import BlockNotFound
    try:
        yield
    except BlockNotFound as exc:
        if asked:
            raise
        raise click.ClickException(f"{exc}, and no neighbour was asked: only a running agent asks them; start "
                                   "one with `hearth run` and try again") from None


def _show_fetching(sock: str, done, every: float = 0.5) -> None:
    """A line on stderr with what the agent has fetched since this began, until done is set."""
    from edge.control import ask
    try:
        start = ask(sock, "status", timeout=5)["fetched"]
        shown = False
        while not done.wait(every):
            now = ask(sock, "status", timeout=5)["fetched"]
            mib = (now["bytes"] - start["bytes"]) / (1 << 20)
            click.echo(f"\rfetching from neighbours: {now['blocks'] - start['blocks']:,} blocks, {mib:,.1f} MiB",
                       err=True, nl=False)
            shown = True
        if shown:
            click.echo(err=True)
    except (ConnectionError, OSError, KeyError):
        pass   # only a progress line: the fetch itself reports what went wrong


@contextlib.contextmanager
def progress_bar(total: int, label: str, enabled: bool):
    """A rich progress bar on stderr (only on a terminal, and only for inputs worth one); yields advance(n)."""
    if not enabled or total < PROGRESS_MIN_BYTES or not sys.stderr.isatty():
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def doctor(as_json):
    """Check this box: Python and library versions, native kernels and CPU paths, FFmpeg encoders."""
    from edge import doctor as doctor_mod

    report = doctor_mod.collect()
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(doctor_mod.render(report))
    if report["problems"]:
        sys.exit(1)


@main.command()
@click.argument("path", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("-k", "k", default=10, show_default=True, help="Data shards.")
@click.option("-m", "m", default=4, show_default=True, help="Parity shards (shards that may be lost).")
@click.option("--size", default=64 << 20, show_default=True, help="Bytes of random data when no PATH is given.")
@click.option("--seed", type=int, default=None, help="Seed for the data and for which shards are lost.")
def demo(path, k, m, size, seed):
    """Erasure-code a file (or random data), lose m shards, rebuild it and check every byte."""
    from edge.demo import erasure_demo

    rng = random.Random(seed)
    if path:
        with open(path, "rb") as f:
            data = f.read()
        name = path
    else:
        data = rng.randbytes(size)
        name = "random data"
    for line in erasure_demo(data, name, k, m, rng):
        click.echo(line)


# content ---------------------------------------------------------------------------------------------------------


@main.command()
@click.argument("path", type=click.Path(exists=True))
@click.option("--chunker", default="size-262144", show_default=True,
              help="size-N (fixed N bytes, at most 1 MiB) or fastcdc[-MIN-AVG-MAX].")
@click.option("--pin/--no-pin", default=True, show_default=True, help="Pin the root (recursively).")
@click.option("-n", "--only-hash", is_flag=True, help="Compute the CID only; store nothing.")
@click.option("-H", "--hidden", is_flag=True, help="Include files and directories whose names start with a dot.")
@click.option("-w", "--wrap", is_flag=True, help="Wrap the result in a directory holding it under its name.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the root CID.")
@click.option("--progress/--no-progress", default=True, help="A progress bar for large inputs on a terminal.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def add(ctx, path, chunker, pin, only_hash, hidden, wrap, quiet, progress, as_json):
    """Add a file or directory: the same CID as `ipfs add --cid-version 1` gives it."""
    import time

    from edge.store import content, parse_chunker
    try:
        chunking = parse_chunker(chunker)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--chunker") from None
    total = content.input_size(path, hidden)
    started = time.perf_counter()
    with progress_bar(total, os.path.basename(os.path.abspath(path)), progress and not as_json) as advance:
        if only_hash:
            result = content.hash_only(path, chunker=chunking, hidden=hidden, wrap=wrap, progress=advance)
        else:
            with open_store(ctx) as store:
                result = content.add(store, path, chunker=chunking, pin=pin, hidden=hidden, wrap=wrap,
                                     progress=advance)
    seconds = time.perf_counter() - started
    name = os.path.basename(os.path.abspath(path))
    if as_json:
        click.echo(json.dumps({"cid": str(result.cid), "name": name, "size": result.size, "tsize": result.tsize,
                               "pinned": pin and not only_hash, "stored": not only_hash,
                               "chunker": str(chunking), "seconds": round(seconds, 3)}))
    elif quiet:
        click.echo(str(result.cid))
    else:
        click.echo(f"added {result.cid} {name}")


@main.command()
@click.argument("path")
@click.option("--offset", type=click.IntRange(min=0), default=0, help="Start at this byte.")
@click.option("--length", type=click.IntRange(min=0), default=None, help="At most this many bytes.")
@click.pass_context
def cat(ctx, path, offset, length):
    """Write the file at CID[/name…] to stdout (every block checked against its CID)."""
    from edge.store import content
    out = sys.stdout.buffer
    written = 0

    def read(store):   # after a corrupt block was replaced, from where the output got to
        nonlocal written
        for piece in content.cat(store, path, offset + written, None if length is None else length - written):
            out.write(piece)
            written += len(piece)
    _reading(ctx, path, read)
    out.flush()


@main.command()
@click.argument("path")
@click.option("-o", "--output", required=True, type=click.Path(), help="Where to write (must not exist).")
@click.pass_context
def get(ctx, path, output):
    """Write the file or directory at CID[/name…] to OUTPUT."""
    from edge.store import content
    if os.path.lexists(output):
        raise click.ClickException(f"{output} already exists; choose another output path or remove it first")
    # written under a temporary name beside OUTPUT and renamed when whole: a failed get leaves no OUTPUT
    head, tail = os.path.split(os.path.abspath(output))
    tmp = os.path.join(head, f".{tail}.hearth-partial-{os.getpid()}")

    def read(store):
        _remove(tmp)   # what a read cut short by a corrupt block wrote
        return content.get(store, path, tmp)
    try:
        n = _reading(ctx, path, read)
        if os.path.lexists(output):
            raise click.ClickException(f"{output} appeared while fetching; the copy is not written over it")
        os.rename(tmp, output)
    finally:
        _remove(tmp)
    click.echo(f"saved {path} to {output} ({n:,} bytes)", err=True)


def _remove(path: str) -> None:
    import shutil
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)


@main.group()
def pin():
    """Keep content: pinned blocks are never garbage-collected."""


@pin.command("add")
@click.argument("cid")
@click.option("--direct", is_flag=True, help="Keep only this block, not what it links to.")
@click.option("--name", default=None, help="A label shown by `pin ls`.")
@click.pass_context
def pin_add(ctx, cid, direct, name):
    """Pin CID (recursively unless --direct); every block under it must be on this node."""
    from edge.store import content
    with open_store(ctx) as store, store.shared():
        target = content.parse_target(cid)
        store.pin(target, recursive=not direct, name=name)
    click.echo(f"pinned {target} {'directly' if direct else 'recursively'}")


@pin.command("rm")
@click.argument("cid")
@click.pass_context
def pin_rm(ctx, cid):
    """Unpin CID (its blocks go at the next `hearth gc` unless another pin keeps them)."""
    from edge.store import content
    with open_store(ctx) as store:
        target = content.parse_target(cid)
        store.unpin(target)
    click.echo(f"unpinned {target}")


@pin.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def pin_ls(ctx, as_json):
    """List pins."""
    with open_store(ctx) as store:
        pins = store.pins()
    if as_json:
        click.echo(json.dumps(pins))
        return
    for p in pins:
        click.echo(f"{p['cid']} {p['kind']}" + (f" {p['name']}" if p["name"] else ""))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def gc(ctx, as_json):
    """Remove every block no pin keeps."""
    with open_store(ctx) as store:
        removed, freed = store.gc()
    if as_json:
        click.echo(json.dumps({"removed": removed, "freed": freed}))
    else:
        click.echo(f"removed {removed} block(s), freed {freed:,} bytes")


@main.group()
def car():
    """CAR files: content-addressed archives, as `ipfs dag export/import` write and read them."""


@car.command("export")
@click.argument("cid")
@click.option("-o", "--output", required=True, type=click.Path(allow_dash=True), help="CAR file ('-' = stdout).")
@click.pass_context
def car_export(ctx, cid, output):
    """Write the DAG under CID as a CARv1 file."""
    from edge.store import content
    with open_store(ctx) as store:
        target = content.parse_target(cid)
        if output == "-":
            content.car_export(store, target, sys.stdout.buffer)
            return
        if os.path.lexists(output):
            raise click.ClickException(f"{output} already exists; choose another file or remove it first")
        tmp = output + ".partial"
        try:
            with open(tmp, "wb") as f:
                n = content.car_export(store, target, f)
            os.replace(tmp, output)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    click.echo(f"wrote {output} ({n:,} bytes)", err=True)


@car.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--pin/--no-pin", default=True, show_default=True, help="Pin the CAR's roots.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def car_import(ctx, file, pin, as_json):
    """Store every block of a CAR (v1 or v2), each checked against its CID, and pin its complete roots."""
    from edge.store import content
    with open_store(ctx) as store:
        f = sys.stdin.buffer if file == "-" else open(file, "rb")
        with f:
            result = content.car_import(store, f, pin=pin)
    if as_json:
        click.echo(json.dumps(result.__dict__))
    else:
        click.echo(f"imported {result.blocks} block(s), {result.new_bytes:,} new bytes")
        for root in result.pinned:
            click.echo(f"pinned root {root}")
    for root in result.incomplete:
        click.echo(f"root {root} is incomplete in this CAR; not pinned", err=True)
    if result.incomplete:
        sys.exit(1)


@main.group()
def store():
    """The block store: check it, see what it holds, set its quota."""


@store.command("verify")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def store_verify(ctx, as_json):
    """Re-hash every block; quarantine and report corrupt ones. Exit status 1 if anything is wrong."""
    with open_store(ctx) as s:
        report = s.verify()
    if as_json:
        click.echo(json.dumps(report.__dict__ | {"ok": report.ok}))
    else:
        click.echo(f"checked {report.checked} block(s), {report.bytes:,} bytes: {len(report.corrupt)} corrupt, "
                   f"{len(report.missing)} missing, {report.orphans} unlisted file(s) (gc removes them), "
                   f"{len(report.damaged_pins)} damaged pin(s)")
        for key in report.corrupt:
            click.echo(f"corrupt (quarantined): {key}")
        for key in report.missing:
            click.echo(f"missing: {key}")
        for key in report.damaged_pins:
            click.echo(f"pin with missing blocks: {key} (re-add or fetch the content)")
    if not report.ok:
        sys.exit(1)


@store.command("stat")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def store_stat(ctx, as_json):
    """What the store holds: blocks, bytes pinned and cached, pins, the quota in force and where it is set, free
    disk."""
    from edge.units import human
    with open_store(ctx) as s:
        info = s.stat(usage=True)
    if as_json:
        click.echo(json.dumps(info))
        return
    quota = "none" if info["quota"] is None else f"{info['quota']:,} bytes ({human(info['quota'])}), from " \
        f"{info['quota_from']}"
    click.echo(f"path:        {info['path']}\nblocks:      {info['blocks']:,}\nbytes:       {info['bytes']:,}\n"
               f"pinned:      {info['pinned_bytes']:,} bytes ({human(info['pinned_bytes'])})\n"
               f"cached:      {info['cached_bytes']:,} bytes ({human(info['cached_bytes'])}; unpinned, evicted "
               "first when room is needed)\n"
               f"pins:        {info['pins']:,}\nquota:       {quota}\nquarantined: {info['quarantined']}\n"
               f"disk free:   {info['disk_free']:,} of {info['disk_size']:,} bytes (reserve {human(info['reserve'])})")


@store.command("quota")
@click.argument("size", required=False)
@click.pass_context
def store_quota(ctx, size):
    """Show the quota in force, or set the store's to SIZE (e.g. 200G, 500GiB; 'none' removes it). A quota in
    hearth.toml (or HEARTH_QUOTA) wins over this one."""
    from edge.units import human
    with open_store(ctx) as s:
        if size is None:
            q = s.quota
            click.echo("none" if q is None else f"{q:,} bytes ({human(q)}), from {s.quota_origin}")
            return
        if size.lower() == "none":
            s.set_quota(None)
            click.echo("quota removed")
        else:
            try:
                nbytes = parse_size(size)
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint="SIZE") from None
            s.set_quota(nbytes)
            click.echo(f"quota set to {nbytes:,} bytes (in use: {s.used():,})")
        if s.quota_from_config:
            click.echo(f"note: `quota` in {s.quota_source} ({s.quota:,} bytes) overrides this one and stays in "
                       "force; remove it there for this one to apply")


# the agent ---------------------------------------------------------------------------------------------------------


def _config(ctx, file=None, **flags):
    from edge.config import load_config
    flags["data_dir"] = ctx.obj["data_dir"] if ctx.obj.get("data_dir_given") else None
    return load_config(file, flags=flags)


@main.command()
@click.option("--force", is_flag=True, help="Replace an existing identity (the node gets a new id).")
@click.pass_context
def init(ctx, force):
    """Create this node's identity (readable only by you) and a commented config file."""
    from edge.config import commented_toml
    from edge.datadir import mark
    from edge.atomic import write_atomic
    from edge.identity import KEY_FILE, Identity
    config = _config(ctx)
    mark(config.data_dir)          # also for a node initialised before the marker existed
    key = os.path.join(config.data_dir, KEY_FILE)
    if os.path.exists(key) and not force:
        identity = Identity.load(key)
        click.echo(f"already initialised: node {identity.node_id} ({key}); --force makes a new identity")
        return
    if force and os.path.exists(key):
        os.unlink(key)
    identity = Identity.generate()
    identity.save(key)
    if not os.path.exists(config.config_file):
        write_atomic(config.config_file, commented_toml(config).encode())
    click.echo(f"node {identity.node_id}\nidentity {key}\nconfig   {config.config_file}")


@main.command()
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
    config = _config(ctx, config_file, transport_port=transport_port, gateway_port=gateway_port,
                     metrics_port=metrics_port, mdns=mdns, static_peers=tuple(static_peers) or None)
    require(config.data_dir)       # an unmounted data disk is not a node without an identity
    if not os.path.exists(os.path.join(config.data_dir, KEY_FILE)):
        raise click.ClickException(f"no identity in {config.data_dir}; run `hearth init` first")
    configure_logging(logging.getLogger().level if logging.getLogger().level < logging.WARNING else logging.INFO,
                      config.log_format)
    from edge.kernels import warn_if_reference
    warn_if_reference()
    trio.run(run_agent, config)


def _ask(ctx, cmd, **args):
    from edge.config import load_config
    from edge.control import ask
    config = load_config(flags={"data_dir": ctx.obj["data_dir"]})
    try:
        return ask(os.path.join(config.data_dir, "control.sock"), cmd, **args)
    except ConnectionError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def status(ctx, as_json):
    """What the running agent is doing."""
    info = _ask(ctx, "status")
    if as_json:
        click.echo(json.dumps(info))
        return
    s, served, fetched = info["store"], info["served"], info["fetched"]
    hot = s.get("hot") or {}
    click.echo(f"node      {info['node']} (hearth {info['version']}, up {info['uptime']:.0f} s)\n"
               f"serving   {info['endpoint']} ({info['admission']})\npeers     {info['peers']}\n"
               f"store     {s['blocks']:,} blocks, {s['bytes']:,} bytes, {s['pins']} pins\n"
               f"served    {served.get('blocks_served', 0):,} blocks, {served.get('bytes_served', 0):,} bytes; "
               f"refused {served.get('refusals', 0)}, busy {served.get('busy', 0)}, errors {served.get('errors', 0)}\n"
               f"fetched   {fetched['blocks']:,} blocks, {fetched['bytes']:,} bytes; {fetched['failures']} failures\n"
               f"cache     {hot.get('blocks', 0):,} blocks, {hot.get('bytes', 0):,} of {hot.get('limit', 0):,} bytes; "
               f"{hot.get('hits', 0):,} hits\n"
               f"player    {info.get('gateway_url') or 'none (the gateway is off: gateway_port = 0)'}")
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
        click.echo(line)


def agent_url(data_dir: str, path: str = "") -> tuple[str | None, str]:
    """(URL of path on the running agent's gateway, "") or (None, why there is none): the agent's real address
    and port, never this command's defaults."""
    from edge.control import ask
    try:
        url = ask(os.path.join(data_dir, "control.sock"), "status", timeout=5).get("gateway_url")
    except (ConnectionError, OSError):
        return None, "no agent is running to serve it yet; `hearth run` starts one (`hearth status` then shows the URL)"
    if not url:
        return None, "the running agent's gateway is off (gateway_port = 0); set a port and restart it"
    return url.rstrip("/") + "/" + path.lstrip("/"), ""


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def peers(ctx, as_json):
    """The running agent's neighbours, best first."""
    rows = _ask(ctx, "peers")
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo("no neighbours yet")
    for p in rows:
        rtt = "-" if p["rtt_ms"] is None else f"{p['rtt_ms']} ms"
        speed = "-" if p.get("throughput") is None else f"{p['throughput'] / 1e6:.1f} MB/s"
        note = f"  REJECTED: {p['rejected']}" if p["rejected"] else ""
        click.echo(f"{p['node']}  {p['addresses'][0]}:{p['port']}  rtt {rtt}  {speed}  up {p['uptime']:.0%}  "
                   f"score {p['score']}{note}")


@main.group()
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


from edge.cli_media import live, media  # noqa: E402 - registered after main exists

main.add_command(media)
main.add_command(live)


@main.group()
def provision():
    """Seeds and first boot of an appliance image."""


@provision.command("first-boot")
@click.option("--boot", "boot_dir", default="/efi", show_default=True, help="The mounted boot partition.")
@click.option("--user", default=None, help="Give the data directory to this user (the service's).")
@click.option("--grow/--no-grow", default=True, show_default=True,
              help="Grow the data partition to the end of the disk first.")
@click.pass_context
def provision_first_boot(ctx, boot_dir, user, grow):
    """Create this node's identity and apply the boot partition's seed, once (run by hearth-firstboot.service)."""
    from edge.provisioning.device.firstboot import first_boot
    first_boot(boot_dir, ctx.obj["data_dir"], user, log=lambda m: click.echo(m), grow=grow)


@provision.command("wifi")
@click.option("--wait", type=float, default=30, show_default=True,
              help="Seconds to wait for a wireless interface to appear (its driver may load its firmware late).")
@click.option("--dry-run", is_flag=True, help="Print the wpa_supplicant command instead of running it.")
@click.pass_context
def provision_wifi(ctx, wait, dry_run):
    """Join the seed's Wi-Fi network on this box's wireless interface (run by hearth-wifi.service)."""
    from edge.provisioning.device.wifi import join_command
    args, message = join_command(ctx.obj["data_dir"], wait)
    if args is None:
        click.echo(message)
        return
    if dry_run:
        click.echo(" ".join(args))
        return
    click.echo(message)
    os.execvp(args[0], args)


@provision.command("seed")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the seed.")
@click.option("--name", "node_name", default="", help="The node's name.")
@click.option("--quota", default="", help="Storage the node may use, e.g. 200G.")
@click.option("--wifi-ssid", default="", help="A Wi-Fi network to join (the box's Ethernet works without).")
@click.option("--wifi-psk-file", type=click.File("r"), default=None,
              help="A file whose first line is its WPA passphrase ('-': standard input); without it the passphrase "
              "is asked for. Removed from the boot partition at first boot.")
@click.option("--wifi-open", is_flag=True, help="The network has no passphrase.")
@click.option("--wifi-psk", hidden=True, default=None)
@click.option("--wifi-country", default="", help="Two-letter country code for the Wi-Fi radio's rules (e.g. DE).")
@click.option("--upload-limit", default="", help="Bytes per second the node may upload in all, e.g. 2.5M.")
def provision_seed(output, node_name, quota, wifi_ssid, wifi_psk_file, wifi_open, wifi_psk, wifi_country,
                   upload_limit):
    """Write a seed for an image's boot partition (hearth-seed.toml, readable by you only: it may hold the
    Wi-Fi passphrase)."""
    from edge.provisioning.host.seeds import write_seed
    if wifi_psk is not None:
        raise click.UsageError("--wifi-psk is not taken on the command line (other users see it in the process "
                               "list and it stays in shell history): leave it out to be asked, or give "
                               "--wifi-psk-file FILE (- reads standard input)")
    if (wifi_psk_file or wifi_open or wifi_country) and not wifi_ssid:
        raise click.UsageError("--wifi-psk-file, --wifi-open and --wifi-country need --wifi-ssid")
    if wifi_psk_file and wifi_open:
        raise click.UsageError("--wifi-open is a network without a passphrase: give it or --wifi-psk-file, not both")
    psk = ""
    if wifi_ssid:
        if wifi_psk_file:
            psk = wifi_psk_file.readline().rstrip("\r\n")
            if not psk:
                raise click.UsageError(f"{wifi_psk_file.name}: the first line is empty; for a network without a "
                                       "passphrase give --wifi-open")
        elif not wifi_open:
            if not sys.stdin.isatty():
                raise click.UsageError("no terminal to ask for the Wi-Fi passphrase on: give --wifi-psk-file FILE "
                                       "(- reads standard input), or --wifi-open for a network without one")
            psk = click.prompt(f"WPA passphrase of {wifi_ssid!r}", hide_input=True, confirmation_prompt=True)
    write_seed(output, name=node_name, quota=quota, wifi_ssid=wifi_ssid, wifi_psk=psk, wifi_country=wifi_country,
               upload=upload_limit)
    click.echo(f"seed written to {output}")


@main.group()
def image():
    """Flashable images: build one for a board."""


@image.command("build")
@click.argument("board")
@click.option("-o", "--output", "out_dir", default="build/images", show_default=True, type=click.Path(file_okay=False))
@click.option("--key", "key_path", type=click.Path(exists=True, dir_okay=False),
              help="Ed25519 key that signs the manifest (hearth fleet init makes one); needed unless --dry-run.")
@click.option("--version", "version", default=None, help="Image version [default: Hearth's].")
@click.option("--seed", type=click.Path(exists=True, dir_okay=False), help="Put this seed on the boot partition.")
@click.option("--fleet-key", default="", help="Fleet public key: the image applies only seeds this fleet signed.")
@click.option("--source", type=click.Path(exists=True, file_okay=False),
              help="Hearth source tree the agent's wheel is built from [default: this checkout, or where pip "
                   "installed Hearth from].")
@click.option("--dry-run", is_flag=True, help="Print the builder's plan for BOARD; build nothing.")
@click.option("--debug-console", is_flag=True, hidden=True,
              help="TEST IMAGES ONLY: a root shell on the serial console.")
def image_build(board, out_dir, key_path, version, seed, fleet_key, source, dry_run, debug_console):
    """Build BOARD's image (as root): the recipe BOARD.toml says what goes in."""
    from edge.images.host import BuildError
    from edge.images.recipe import RecipeError
    try:
        if dry_run:
            from edge.images.plan import plan
            text, missing = plan(board, out_dir, version=version or edge.__version__, seed=seed, fleet_key=fleet_key,
                                 debug_console=debug_console, source=source)
            click.echo(text)
            if missing:
                raise click.ClickException(f"{board} cannot be built: {missing}")
            return
        if not key_path:
            raise click.UsageError("--key is needed to sign the image (hearth fleet init makes one)")
        from edge.images.build import build
        os.makedirs(out_dir, exist_ok=True)
        manifest = build(board, out_dir, key_path=key_path, version=version or edge.__version__, seed=seed,
                         fleet_key=fleet_key, debug_console=debug_console, source=source,
                         log=lambda m: click.echo(m, err=True))
    except (BuildError, RecipeError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps({k: manifest[k] for k in ("board", "version", "image", "compressed", "steps_seconds")},
                          indent=1))


@main.command("flash")
@click.argument("image_path", metavar="IMAGE", type=click.Path(exists=True, dir_okay=False))
@click.argument("target")
@click.option("--seed", type=click.Path(exists=True, dir_okay=False), help="A seed for the boot partition.")
@click.option("--trust", "trusted", multiple=True, required=True,
              help="Signer id whose images you accept (the builder's `hearth fleet init` key).")
@click.option("--allow-debug", is_flag=True,
              help="Write an image built with --debug-console (a root shell on its serial console).")
def flash_cmd(image_path, target, seed, trusted, allow_debug):
    """Write a signed IMAGE (.img or .img.zst) to TARGET (a whole disk such as /dev/sdX, or an image file),
    verify it, and put the seed on its boot partition. Refuses mounted, system and busy disks (holders, or an
    exclusive open the kernel refuses) and, without --allow-debug, debug images."""
    from edge.provisioning.host.flash import flash, load_manifest
    manifest = load_manifest(image_path, list(trusted))
    with progress_bar(manifest["image"]["size"], f"flashing {os.path.basename(target)}", True) as advance:
        result = flash(image_path, target, trusted=list(trusted), seed=seed, progress=advance,
                       allow_debug=allow_debug)
    click.echo(f"{result['board']} {result['version']} written to {target} and verified "
               f"({result['bytes']:,} bytes, sha256 {result['sha256'][:16]}…)"
               + ("; seed on the boot partition" if result["seed"] else "")
               + ("; DEBUG image: root shell on the serial console" if result["debug_console"] else ""))


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
def fleet_enroll_server(state, claims, listen, days):
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
    try:
        run_enrollment_server(state, claims, host, int(port), days=days,
                              say=lambda line, stderr: click.echo(line, err=stderr))
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


@main.group()
def update():
    """Signed A/B updates of a Hearth image."""


@update.command("bundle")
@click.argument("image_path", metavar="IMAGE", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
@click.option("--key", "key_path", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--version", "version", required=True)
@click.option("--root-image", type=click.Path(exists=True, dir_okay=False),
              help="Use this root file system instead of the image's slot A.")
@click.option("--downgrade-from", metavar="VERSION",
              help="Allow this (older) bundle on devices whose version floor is VERSION or lower (signed with it).")
def update_bundle(image_path, output, key_path, version, root_image, downgrade_from):
    """Make a signed update bundle from a built IMAGE (its root file system, kernel and initramfs)."""
    from edge.provisioning.host.bundle import make_bundle
    from edge.provisioning.host.flash import manifest_path
    m = make_bundle(image_path, manifest_path(image_path), output, version=version, key_path=key_path,
                    root_img=root_image, downgrade_from=downgrade_from)
    click.echo(f"bundle {output}: {m['board']} {m['version']}, {os.path.getsize(output):,} bytes")


@update.command("apply")
@click.argument("bundle", type=click.Path(exists=True))
@click.option("--reboot", is_flag=True, help="Reboot into the new slot when installed.")
@click.option("--allow-debug", is_flag=True,
              help="Accept a bundle built with --debug-console (a root shell on the serial console).")
def update_apply(bundle, reboot, allow_debug):
    """Install BUNDLE to the inactive slot; the next boot tries it and keeps it only if the node is healthy.
    Refused before anything is written: another board's bundle, one older than the device's version floor
    (unless signed as a downgrade from it), a debug bundle on a non-debug device, a file not matching its hash."""
    from edge.provisioning.device.bootloader import BOOT, is_raspi
    from edge.provisioning.device.update import apply
    apply(bundle, log=lambda m: click.echo(m), allow_debug=allow_debug)
    if reboot:
        # a Pi boots the new slot only on a tryboot reboot (once); systemd-boot counts tries by itself
        os.execvp("systemctl", ["systemctl", "reboot", "0 tryboot"] if is_raspi(BOOT) else ["systemctl", "reboot"])


@update.command("status")
@click.option("--json", "as_json", is_flag=True)
def update_status(as_json):
    """The running slot and every loader entry: good, on trial (tries left), or bad (rolled back)."""
    from edge.provisioning.device.update import status
    out = status()
    if as_json:
        click.echo(json.dumps(out, indent=1))
        return
    click.echo(f"running slot {out['slot']}")
    if out.get("version_floor"):
        click.echo(f"version floor {out['version_floor']} (older bundles need a signed downgrade)")
    elif out.get("version_floor_error"):
        click.echo(out["version_floor_error"])
    for e in out["entries"]:
        extra = f" ({e['tries_left']} tries left)" if e["state"] == "trial" else ""
        where = f"generation {e['generation']}" if "generation" in e else e["file"]
        click.echo(f"  {where} slot {e['slot']}: {e['state']}{extra}")


@update.command("health")
@click.option("--timeout", type=float, default=120)
@click.pass_context
def update_health(ctx, timeout):
    """Exit 0 once the agent serves (run by hearth-health.service to commit a trial boot)."""
    from edge.control import ask
    from edge.provisioning.device.update import health
    sock = os.path.join(ctx.obj["data_dir"], "control.sock")
    import subprocess

    def restarts():
        r = subprocess.run(["systemctl", "show", "-p", "NRestarts", "--value", "hearth.service"],
                           capture_output=True, text=True)
        return int(r.stdout.strip() or 0) if r.returncode == 0 else 0
    health(lambda: ask(sock, "status", timeout=5), timeout, restarts)
    click.echo("hearth: healthy")
    from edge.provisioning.device.update import commit
    commit(log=click.echo)        # on a Pi: config.txt now boots this slot (systemd-bless-boot does it on UEFI)
