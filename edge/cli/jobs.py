"""`hearth jobs`: transcode jobs this node runs for neighbours and hands to them; `hearth jobs cancel ID`."""

import time

import click

from edge.cli import output
from edge.cli.common import ask_agent


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def jobs(ctx, as_json):
    """Transcode jobs: running, queued and finished, here for neighbours and on neighbours for this node."""
    if ctx.invoked_subcommand is not None:
        return
    from edge.config import load_config
    from edge.media.slots import running
    slots = load_config(flags={"data_dir": ctx.obj["data_dir"]}).media_jobs
    here = running(ctx.obj["data_dir"], slots)   # every transcode on this box, whoever started it
    listed = {"slots": slots, "here": here, **ask_agent(ctx, "jobs")}
    rows = [("for", j) for j in listed["for"]] + [("on", j) for j in listed["on"]]
    now = time.time()
    output.result(listed, as_json, [f"transcoding here ({len(here)} of media_jobs = {slots} slots):"]
                  + [f"  slot {h['slot']}: {h['what'] or '?'} ({now - (h['started'] or now):.0f} s, pid {h['pid']})"
                     for h in here]
                  + [_line(role, j) for role, j in rows] + ([] if rows else ["no jobs for or on neighbours"]),
                  indent=2)


def _line(role: str, j: dict) -> str:
    where = f"here for {j['peer'][:14]}…" if role == "for" else f"on {j['peer'][:14]}…"
    length = f"{j['duration']:.1f} s" if j["duration"] or not j.get("live") else "live"   # live: until ended
    text = (f"{j['id']}  {j['state']:9} {where:24} {j['done']:6.1f}/{length}  "
            f"{j['speed']:5.2f}x  {j['ladder']}  {j['elapsed']:.0f} s")
    return text + (f"  ({j['message']})" if j["message"] else "")


@jobs.command("cancel")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def cancel_cmd(ctx, job_id, as_json):
    """Stop job JOB_ID (one this node runs for a neighbour, or hands to one)."""
    job = ask_agent(ctx, "job_cancel", id=job_id)
    output.result(job, as_json, f"job {job['id']}: {job['state']}")
