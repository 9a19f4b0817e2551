"""`hearth live …`: publish a source live (handed to the running agent where one runs), list the agent's live
streams, stop one. Each command parses, calls one function, prints."""

import click

from edge.cli import output
from edge.cli.common import ask_agent, open_store


@click.group()
def live():
    """Live streams: publish a source as a live HLS ladder served by this node's gateway."""


@live.command("publish")
@click.argument("source")
@click.option("--name", required=True, help="The stream's name (its URL is /streams/NAME/).")
@click.option("--ladder", default="720p,360p", show_default=True, help="Rungs, as for `media import`.")
@click.option("--segment-seconds", type=click.FloatRange(1, 10), default=2.0, show_default=True)
@click.option("--window", type=click.IntRange(2, 100), default=6, show_default=True,
              help="Segments in the live playlist.")
@click.option("--duration", type=click.FloatRange(0), default=0, help="Stop after this many seconds (0: never).")
@click.option("--encoder", default="auto", show_default=True)
@click.option("--preset", default="veryfast", show_default=True)
@click.option("--record/--no-record", default=True, show_default=True,
              help="Keep the whole broadcast as an on-demand stream when it ends.")
@click.option("--on", "on", default="auto", show_default=True, metavar="NODE|auto|local",
              help="Where to transcode: here, on neighbour NODE, or auto (a neighbour when this box cannot keep up: "
                   "its transcode slots are all taken, its measured speed for the ladder is under real time, or "
                   "the ladder does not fit its memory budget). This node keeps the stream; a neighbour's segments "
                   "are verified and spot-checked here. An RTMP push is taken here and forwarded to the neighbour.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def publish_cmd(ctx, source, name, ladder, segment_seconds, window, duration, encoder, preset, record, on, as_json):
    """Publish SOURCE live: a file (played in real time), `testsrc`, rtmp://0.0.0.0:1935/live/KEY (listens on
    that address for a push with that app and key; choose a long random key), or srt://… where FFmpeg has SRT.
    Runs until the source ends, --duration, or Ctrl-C/SIGTERM. With an agent running, the agent runs the stream
    (and sends it to neighbours' viewers); this command follows it, and Ctrl-C ends it."""
    import signal
    import threading

    from edge.control import agent_url
    from edge.config import load_config
    from edge.datadir import require
    from edge.media import live as live_mod
    from edge.media import transcode as tc
    require(ctx.obj["data_dir"])   # before a transcode slot is taken there
    from edge.control import agent_answers
    if agent_answers(ctx.obj["data_dir"]):   # the running agent owns the stream (and fans it out)
        return _publish_by_agent(ctx, source, name, as_json, ladder=ladder, segment_seconds=segment_seconds,
                                 window=window, duration=duration, encoder="" if encoder == "auto" else encoder,
                                 preset=preset, record=record, on=on)
    if on not in ("auto", "local"):
        raise click.ClickException(f"--on {on}: a neighbour transcodes for the running agent only; start it "
                                   "(`hearth agent`) or use --on local")
    cfg = load_config(flags={"data_dir": ctx.obj["data_dir"]})
    stop = threading.Event()

    def on_signal(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        output.note("stopping: finishing the last segments (press Ctrl-C again to abort)")

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    opts = tc.Options(seconds=segment_seconds, encoder=cfg.media_encoder if encoder == "auto" else encoder,
                      preset=preset, duration=duration, read_timeout=10.0 if "://" in source else 0.0)

    def ready():
        url, why = agent_url(ctx.obj["data_dir"], f"watch/{name}/")   # asked now: the agent may start later
        shown = source.rsplit("/", 1)[0] + "/<key>" if source.startswith("rtmp://") else source   # not the secret
        output.note(f"live {name}: {url or why}"
                    + ("  (waiting for a publisher on " + shown + ")" if "://" in source else ""))
    from edge.media.slots import transcode_slot
    try:
        with transcode_slot(ctx.obj["data_dir"], cfg.media_jobs, on_wait=output.note, what=f"live {name}: {ladder}"), \
                open_store(ctx) as store:
            summary = live_mod.publish(store, source, name=name, ladder=ladder, opts=opts, window=window,
                                       record=record, stop=stop, on_ready=ready)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    _ended(ctx, name, summary, as_json)


def _ended(ctx, name, summary, as_json):
    """What a publish prints when its stream ends, here or in the agent; exit 1 if the decoder failed."""
    output.result(summary, as_json,
                  [f"ended {name}: {summary['segments']}; segment cut to listed: {summary['cut_to_listed_ms']} ms"]
                  + ([f"recorded as {summary['recording']} (hearth media ls)"] if summary.get("recording") else []),
                  indent=2)
    if summary.get("decoder_error"):
        output.note(f"error: {summary['decoder_error']}; the broadcast until then was kept")
        ctx.exit(1)


def _publish_by_agent(ctx, source, name, as_json, **args):
    """Hand the stream to the running agent, then follow it until it ends (Ctrl-C/SIGTERM asks the agent to end
    it as it would here: the last segments cut, the recording kept)."""
    import signal
    import time

    from edge.control import agent_url, ask, socket_path
    from edge.media.liveservice import absolute
    sock = socket_path(ctx.obj["data_dir"])
    try:
        ask(sock, "live_publish", timeout=30, source=absolute(source), name=name, **args)
    except ConnectionError as exc:
        raise click.ClickException(str(exc)) from None
    url, why = agent_url(ctx.obj["data_dir"], f"streams/{name}/")
    output.note(f"live {name}: {url or why} (run by the agent)")
    asked = []

    def on_signal(signum, frame):
        if asked:
            raise KeyboardInterrupt
        asked.append(signum)
        output.note("stopping: the agent finishes the last segments (press Ctrl-C again to leave it running)")
        ask(sock, "live_stop", timeout=30, name=name)
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            job = next((j for j in ask(sock, "live_status", timeout=30) if j["name"] == name), None)
            if job is None or not job["running"]:
                break
            time.sleep(0.5)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if job is None or job["error"]:
        raise click.ClickException(job["error"] if job else "the agent no longer knows the stream (restarted?)")
    summary = job["summary"]
    if summary.get("offload"):
        o = summary["offload"]
        output.note(f"transcoded on {', '.join(o['workers'])}; cut there -> stored here {o['cut_to_stored_ms']} ms; "
                    f"{o['spot_checks']} segment(s) spot-checked"
                    + (f"; stalls at the switches {o['stalls_s']} s" if o["stalls_s"] else ""))
    _ended(ctx, name, summary, as_json)


@live.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def ls_cmd(ctx, as_json):
    """The live streams the running agent runs, and those that ended since it started."""
    streams = ask_agent(ctx, "live_status")
    output.result(streams, as_json, lambda s: [_line(j) for j in s] or
                  ["no live streams on this node; start one with `hearth live publish SOURCE --name NAME`"], indent=2)


def _line(job: dict) -> str:
    state = "live" if job["running"] else ("failed" if job["error"] else "ended")
    segments = ", ".join(f"{rung} {n}" for rung, n in job["segments"].items()) or "no segments yet"
    text = f"{job['name']}  {state}  {job['seconds']:.0f} s  segments: {segments}  source: {job['source']}"
    if job.get("workers"):
        text += f"  transcoded on {', '.join(w[:14] for w in job['workers'])}"
    if job["error"]:
        text += f"  ({job['error']})"
    elif job["summary"] and job["summary"].get("recording"):
        text += f"  recorded as {job['summary']['recording']}"
    return text


@live.command("stop")
@click.argument("name")
@click.option("--wait", "wait_s", type=click.FloatRange(0), default=60.0, show_default=True,
              help="Seconds to wait for the stream's last segments (and its recording); 0: do not wait.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def stop_cmd(ctx, name, wait_s, as_json):
    """End live stream NAME as Ctrl-C in its `hearth live publish` does: the last segments cut, the recording kept."""
    import time

    job = ask_agent(ctx, "live_stop", name=name)
    if not job["running"]:
        output.result(job, as_json, f"live {name} had ended already: {_line(job)}")
        return
    deadline = time.monotonic() + wait_s
    while job is not None and job["running"] and time.monotonic() < deadline:
        time.sleep(0.5)
        job = next((j for j in ask_agent(ctx, "live_status") if j["name"] == name), None)
    if job is None:
        raise click.ClickException(f"the agent no longer knows live {name} (restarted?)")
    if job["running"]:
        output.result(job, as_json, f"live {name} is stopping: the agent finishes its last segments; "
                                    "`hearth live ls` shows when it has ended")
        return
    output.result(job, as_json, f"stopped {_line(job)}")
