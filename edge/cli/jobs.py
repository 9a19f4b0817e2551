"""`hearth jobs`: transcode jobs this node runs for neighbours and hands to them; `hearth jobs cancel ID`."""

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
    listed = ask_agent(ctx, "jobs")
    rows = [("for", j) for j in listed["for"]] + [("on", j) for j in listed["on"]]
    output.result(listed, as_json, [f"media_jobs = {listed['slots']}"] + [_line(role, j) for role, j in rows]
                  + ([] if rows else ["no transcode jobs"]), indent=2)


def _line(role: str, j: dict) -> str:
    where = f"here for {j['peer'][:14]}…" if role == "for" else f"on {j['peer'][:14]}…"
    text = (f"{j['id']}  {j['state']:9} {where:24} {j['done']:6.1f}/{j['duration']:.1f} s  "
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
