"""`hearth add`, `cat`, `get`, `pin`, `gc`, `car`, `store`: content in this node's block store."""

import contextlib
import json
import os
import sys
import threading

import click

from edge.cli.common import open_store
from edge.cli.output import progress_bar


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


# content ---------------------------------------------------------------------------------------------------------


@click.command()
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


@click.command()
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


@click.command()
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


@click.group()
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


@click.command()
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


@click.group()
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


@click.group()
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
    from edge.units import human, parse_size
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
