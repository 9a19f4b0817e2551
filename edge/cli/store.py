"""`hearth store …`: check the block store, see what it holds, set its quota."""

import sys

import click

from edge.cli import output
from edge.cli.common import open_store


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
    output.result(report.__dict__ | {"ok": report.ok}, as_json,
                  [f"checked {report.checked} block(s), {report.bytes:,} bytes: {len(report.corrupt)} corrupt, "
                   f"{len(report.missing)} missing, {report.orphans} unlisted file(s) (gc removes them), "
                   f"{len(report.damaged_pins)} damaged pin(s)"]
                  + [f"corrupt (quarantined): {key}" for key in report.corrupt]
                  + [f"missing: {key}" for key in report.missing]
                  + [f"pin with missing blocks: {key} (re-add or fetch the content)" for key in report.damaged_pins])
    if not report.ok:
        sys.exit(1)


@store.command("stat")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def store_stat(ctx, as_json):
    """What the store holds: blocks, bytes pinned and cached, pins, the quota in force and where it is set, free
    disk."""
    with open_store(ctx) as s:
        info = s.stat(usage=True)
    output.result(info, as_json, _stat_text)


def _stat_text(info: dict) -> str:
    from edge.units import human
    quota = "none" if info["quota"] is None else f"{info['quota']:,} bytes ({human(info['quota'])}), from " \
        f"{info['quota_from']}"
    return (f"path:        {info['path']}\nblocks:      {info['blocks']:,}\nbytes:       {info['bytes']:,}\n"
            f"pinned:      {info['pinned_bytes']:,} bytes ({human(info['pinned_bytes'])})\n"
            f"cached:      {info['cached_bytes']:,} bytes ({human(info['cached_bytes'])}; unpinned, evicted "
            "first when room is needed)\n"
            f"pins:        {info['pins']:,}\nquota:       {quota}\nquarantined: {info['quarantined']}\n"
            f"disk free:   {info['disk_free']:,} of {info['disk_size']:,} bytes (reserve {human(info['reserve'])})")


@store.command("quota")
@click.argument("size", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def store_quota(ctx, size, as_json):
    """Show the quota in force, or set the store's to SIZE (e.g. 200G, 500GiB; 'none' removes it). A quota in
    hearth.toml (or HEARTH_QUOTA) wins over this one."""
    from edge.units import human, parse_size
    nbytes = None
    if size is not None and size.lower() != "none":
        try:
            nbytes = parse_size(size)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="SIZE") from None
    with open_store(ctx) as s:
        if size is None:
            q = s.quota
            output.result({"quota": q, "from": s.quota_origin}, as_json,
                          "none" if q is None else f"{q:,} bytes ({human(q)}), from {s.quota_origin}")
            return
        s.set_quota(nbytes)
        lines = ["quota removed" if nbytes is None else f"quota set to {nbytes:,} bytes (in use: {s.used():,})"]
        overridden = (f"note: `quota` in {s.quota_source} ({s.quota:,} bytes) overrides this one and stays in "
                      "force; remove it there for this one to apply") if s.quota_from_config else None
        output.result({"set": nbytes, "used": s.used(), "quota": s.quota, "from": s.quota_origin}, as_json,
                      lines + ([overridden] if overridden else []))
        if as_json and overridden:
            output.note(overridden)
