"""`hearth add`, `cat`, `get`, `pin`, `gc`, `car`: content in this node's block store."""

import contextlib
import os
import sys

import click

from edge.cli import output
from edge.cli.common import ask_agent, open_store


def _fetch_if_missing(ctx, path: str, block=None) -> bool:
    """If this node lacks blocks under path's root and an agent runs, have it fetch them from neighbours.
    False where blocks are missing and no agent runs (so no neighbour was asked). With block (one the store found
    corrupt while reading path, quarantined and struck from the catalog): have the agent fetch a good copy."""
    from edge.control import agent_fetch
    from edge.store import content
    root = block if block is not None else content.parse_target(path)
    if block is None:
        with open_store(ctx) as store:
            if store.has(root) and not store.dag(root)[1]:
                return True
    try:   # False: the read may still find what path names (part of root's DAG), or says what is missing
        return agent_fetch(ctx.obj["data_dir"], root,
                           progress=output.fetch_progress if sys.stderr.isatty() else None)
    except ConnectionError as exc:
        raise click.ClickException(f"fetching {root} from neighbours failed: {exc}") from None


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
            output.note(f"block {exc.cid} here was corrupt (quarantined); fetched a good copy from neighbours")
            retried = True


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


def _protect(ctx, cid, given: str | None) -> tuple[dict | None, str | None]:
    """Have the running agent protect cid: by --protect when given (an agent must run), else by the `protect`
    setting (without an agent, a note says it was not protected). (what the agent did, a line), or (None, None)
    when neither asks for it."""
    from edge.config import load_config
    from edge.control import agent_answers
    spec = given or load_config(flags={"data_dir": ctx.obj["data_dir"]}).protect
    if not spec:
        return None, None
    if given is None and not agent_answers(ctx.obj["data_dir"]):
        return None, f"not protected (protect = {spec}): no agent is running to reach neighbours; `hearth run`"
    done = ask_agent(ctx, "protect", cid=str(cid), protect=spec)
    return done, (f"protected at {done['k']}+{done['m']}: {done['pieces']} pieces of {done['segments']} segments "
                  f"on {len(done['holders'])} neighbours ({done['bytes_sent']} bytes sent in {done['seconds']} s)")


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
@click.option("--protect", "protect", default=None, metavar="auto|K+M",
              help="Also keep it on neighbours (see `hearth pin add --protect`; default: the protect setting).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def add(ctx, path, chunker, pin, only_hash, hidden, wrap, quiet, progress, protect, as_json):
    """Add a file or directory: the same CID as `ipfs add --cid-version 1` gives it."""
    import time

    from edge.store import content, parse_chunker
    if protect is not None and (only_hash or not pin):
        raise click.BadParameter("a protected file is pinned and stored; drop --only-hash and --no-pin",
                                 param_hint="--protect")
    try:
        chunking = parse_chunker(chunker)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--chunker") from None
    total = content.input_size(path, hidden)
    started = time.perf_counter()
    with output.progress_bar(total, os.path.basename(os.path.abspath(path)), progress and not as_json) as advance:
        if only_hash:
            result = content.hash_only(path, chunker=chunking, hidden=hidden, wrap=wrap, progress=advance)
        else:
            with open_store(ctx) as store:
                result = content.add(store, path, chunker=chunking, pin=pin, hidden=hidden, wrap=wrap,
                                     progress=advance)
    seconds = time.perf_counter() - started
    name = os.path.basename(os.path.abspath(path))
    done, said = _protect(ctx, result.cid, protect) if pin and not only_hash else (None, None)
    output.result({"cid": str(result.cid), "name": name, "size": result.size, "tsize": result.tsize,
                   "pinned": pin and not only_hash, "stored": not only_hash, "chunker": str(chunking),
                   "seconds": round(seconds, 3), **({"protected": done} if done else {})},
                  as_json, str(result.cid) if quiet else [f"added {result.cid} {name}", *([said] if said else [])])


@click.command()
@click.argument("path")
@click.option("--offset", type=click.IntRange(min=0), default=0, help="Start at this byte.")
@click.option("--length", type=click.IntRange(min=0), default=None, help="At most this many bytes.")
@click.pass_context
def cat(ctx, path, offset, length):
    """Write the file at CID[/name…] to stdout (every block checked against its CID)."""
    from edge.store import content
    out = output.binary_stdout()
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
@click.option("-o", "--output", "target", required=True, type=click.Path(),
              help="Where to write (must not exist).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (on stdout).")
@click.pass_context
def get(ctx, path, target, as_json):
    """Write the file or directory at CID[/name…] to OUTPUT."""
    from edge.store import content
    if os.path.lexists(target):
        raise click.ClickException(f"{target} already exists; choose another output path or remove it first")
    # written under a temporary name beside OUTPUT and renamed when whole: a failed get leaves no OUTPUT
    head, tail = os.path.split(os.path.abspath(target))
    tmp = os.path.join(head, f".{tail}.hearth-partial-{os.getpid()}")

    def read(store):
        _remove(tmp)   # what a read cut short by a corrupt block wrote
        return content.get(store, path, tmp)
    try:
        n = _reading(ctx, path, read)
        if os.path.lexists(target):
            raise click.ClickException(f"{target} appeared while fetching; the copy is not written over it")
        os.rename(tmp, target)
    finally:
        _remove(tmp)
    if as_json:
        output.result({"path": path, "output": target, "bytes": n}, True)
    else:
        output.note(f"saved {path} to {target} ({n:,} bytes)")


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
@click.option("--protect", "protect", default=None, metavar="auto|K+M",
              help="Also keep it on neighbours: erasure-coded pieces on distinct nodes, k of n = K+M enough to read "
                   "it back (auto: from how many neighbours lend disk). Needs the running agent. Default: the "
                   "protect setting.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def pin_add(ctx, cid, direct, name, protect, as_json):
    """Pin CID (recursively unless --direct); every block under it must be on this node."""
    from edge.store import content
    if protect is not None and direct:
        raise click.BadParameter("a protected pin keeps the whole DAG; drop --direct", param_hint="--protect")
    with open_store(ctx) as store, store.shared():
        target = content.parse_target(cid)
        store.pin(target, recursive=not direct, name=name)
    result = {"cid": str(target), "kind": "direct" if direct else "recursive", "name": name}
    lines = [f"pinned {target} {'directly' if direct else 'recursively'}"]
    done, said = _protect(ctx, target, protect) if not direct else (None, None)
    if done:
        result["protected"] = done
    if said:
        lines.append(said)
    output.result(result, as_json, lines)


@pin.command("rm")
@click.argument("cid")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def pin_rm(ctx, cid, as_json):
    """Unpin CID (its blocks go at the next `hearth gc` unless another pin keeps them)."""
    from edge.protection.owner import manifest_path
    from edge.store import content
    with open_store(ctx) as store:
        target = content.parse_target(cid)
        store.unpin(target)
    result, lines = {"cid": str(target)}, [f"unpinned {target}"]
    if os.path.exists(manifest_path(ctx.obj["data_dir"], target)):   # protected: the holders free its pieces
        result["released"] = ask_agent(ctx, "unprotect", cid=str(target))
        lines.append(f"neighbours freed {result['released']['released']} of its {result['released']['pieces']} "
                     "pieces (the others' leases run out)")
    output.result(result, as_json, lines)


@pin.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def pin_ls(ctx, as_json):
    """List pins (a protected pin with its k+m, the pieces placed and their holders)."""
    from edge.protection.owner import kept_manifests
    with open_store(ctx) as store:
        pins = store.pins()
    from edge.control import agent_answers, ask, socket_path
    protected = {str(m.root): m for m in kept_manifests(ctx.obj["data_dir"])}
    health = {}
    if protected and agent_answers(ctx.obj["data_dir"]):   # the running agent audits every piece once now
        health = {h["cid"]: h for h in ask(socket_path(ctx.obj["data_dir"]), "health")}
    lines = []
    for p in pins:
        man = protected.get(p["cid"])
        if man is None:
            lines.append(f"{p['cid']} {p['kind']}" + (f" {p['name']}" if p["name"] else ""))
            continue
        audited = health.get(p["cid"])
        p["protect"] = {"k": man.k, "m": man.m, "segments": len(man.segments), "pieces": len(man.segments) * man.n,
                        "healthy": audited["healthy"] if audited else None, "holders": list(man.holders),
                        "audit": audited["holders"] if audited else None, "version": man.version}
        state = f"{audited['healthy']} of {p['protect']['pieces']} pieces healthy" if audited else \
            f"{p['protect']['pieces']} pieces placed (no agent running to audit them)"
        lines.append(f"{p['cid']} {p['kind']}" + (f" {p['name']}" if p["name"] else "") +
                     f" protected {man.k}+{man.m}: {state} on {len(man.holders)} holders")
        for node, r in (audited["holders"] if audited else {}).items():
            lines.append(f"  {node} {r['passed']}/{r['pieces']} proved" + (f" ({r['why']})" if r["why"] else ""))
    output.result(pins, as_json, lines)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def gc(ctx, as_json):
    """Remove every block no pin keeps."""
    with open_store(ctx) as store:
        removed, freed = store.gc()
    output.result({"removed": removed, "freed": freed}, as_json, f"removed {removed} block(s), freed {freed:,} bytes")


@click.group()
def car():
    """CAR files: content-addressed archives, as `ipfs dag export/import` write and read them."""


@car.command("export")
@click.argument("cid")
@click.option("-o", "--output", "car_file", required=True, type=click.Path(allow_dash=True),
              help="CAR file ('-' = stdout).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (on stdout; not with -o -).")
@click.pass_context
def car_export(ctx, cid, car_file, as_json):
    """Write the DAG under CID as a CARv1 file."""
    from edge.store import content
    if as_json and car_file == "-":
        raise click.UsageError("--json prints on stdout, where -o - writes the CAR: give -o FILE with --json")
    with open_store(ctx) as store:
        target = content.parse_target(cid)
        if car_file == "-":
            content.car_export(store, target, output.binary_stdout())
            return
        if os.path.lexists(car_file):
            raise click.ClickException(f"{car_file} already exists; choose another file or remove it first")
        tmp = car_file + ".partial"
        try:
            with open(tmp, "wb") as f:
                n = content.car_export(store, target, f)
            os.replace(tmp, car_file)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    if as_json:
        output.result({"cid": str(target), "output": car_file, "bytes": n}, True)
    else:
        output.note(f"wrote {car_file} ({n:,} bytes)")


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
    output.result(result.__dict__, as_json, [f"imported {result.blocks} block(s), {result.new_bytes:,} new bytes"]
                  + [f"pinned root {root}" for root in result.pinned])
    for root in result.incomplete:
        output.note(f"root {root} is incomplete in this CAR; not pinned")
    if result.incomplete:
        sys.exit(1)
