"""`hearth media …`: probe, import (VOD), encoders, ls, rm. Each command parses, calls one function, prints."""

import dataclasses
import os

import click

from edge.cli import output
from edge.cli.common import open_store


@click.group()
def media():
    """Video and audio: probe files, transcode them into an HLS ladder, list this node's streams."""


@media.command("probe")
@click.argument("source")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def probe_cmd(source, as_json):
    """What SOURCE holds: container, duration, video and audio streams."""
    from edge.media.probe import probe
    info = probe(source)
    output.result(info.as_dict(), as_json, lambda _: _probe_text(source, info), indent=2)


def _probe_text(source, info):
    yield f"{source}: {info.container}, {info.duration:.2f} s, {info.bit_rate // 1000} kbit/s"
    if info.video:
        v = info.video
        rot = f", rotated {v.rotation}°" if v.rotation else ""
        yield f"  video: {v.codec} {v.width}x{v.height} {v.fps:.3f} fps {v.pix_fmt}{rot}"
    if info.audio:
        a = info.audio
        yield f"  audio: {a.codec} {a.sample_rate} Hz {a.channels} ch ({a.layout})"


@media.command("encoders")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def encoders_cmd(as_json):
    """The H.264 encoders this box can use (hardware ones are tried, not assumed)."""
    from edge.media import encoders
    found = encoders.detect()
    chosen = encoders.choose("auto").name
    output.result([{**s.__dict__, "chosen": s.name == chosen} for s in found], as_json,
                  [f"{'*' if s.name == chosen else ' '} {s.name:14} {'yes' if s.usable else 'no ':3}  {s.kind}: "
                   f"{s.reason}" for s in found] + ["(* used by default; --encoder NAME chooses another)"], indent=2)


@media.command("import")
@click.argument("source", type=click.Path(exists=True, dir_okay=False))
@click.option("--name", help="The stream's name [default: the file name].")
@click.option("--ladder", default="1080p,720p,480p,360p", show_default=True,
              help="Rungs by short side, with optional bit rates: 720p:2500k,360p. Never upscaled.")
@click.option("--segment-seconds", type=click.FloatRange(1, 30), default=4.0, show_default=True)
@click.option("--encoder", default="auto", show_default=True, help="auto, libx264, or a hardware encoder.")
@click.option("--preset", default="veryfast", show_default=True, help="x264 preset (speed against size).")
@click.option("--on", "on", default="local", show_default=True, metavar="NODE|auto|local",
              help="Where to transcode: here, on neighbour NODE, or auto (a neighbour when this box's transcode "
                   "slots are all taken or the ladder does not fit its memory budget). A neighbour's output is "
                   "spot-checked here before it is named.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the stream's CID.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def import_cmd(ctx, source, name, ladder, segment_seconds, encoder, preset, on, quiet, as_json):
    """Transcode SOURCE into an HLS/CMAF ladder, store it and pin it; prints the stream's CID and URL."""
    from edge.control import agent_url
    from edge.config import load_config
    from edge.datadir import require
    from edge.media import transcode as tc
    from edge.media import vod
    from edge.media.probe import probe
    require(ctx.obj["data_dir"])   # before a transcode slot is taken there
    cfg = load_config(flags={"data_dir": ctx.obj["data_dir"]})
    opts = tc.Options(seconds=segment_seconds, encoder=cfg.media_encoder if encoder == "auto" else encoder,
                      preset=preset)
    from edge.media.slots import transcode_slot
    duration = probe(source).duration
    result = None
    if on != "local":
        # --encoder names an encoder on whichever box runs the job; this box's media_encoder setting stays here
        remote_opts = dataclasses.replace(opts, encoder=encoder)
        result = _import_elsewhere(ctx, cfg, source, name, ladder, remote_opts, on, quiet)
    if result is None:
        from edge.media import speed
        with transcode_slot(ctx.obj["data_dir"], cfg.media_jobs, on_wait=output.note,
                            what=f"import {os.path.basename(source)}: {ladder}"), \
                open_store(ctx) as store, output.transcode_progress(duration, not (quiet or as_json)) as progress:
            done = vod.import_file(store, source, name=name, ladder=ladder, opts=opts, progress=progress)
        chosen = tc.encoders.choose(opts.encoder)
        speed.record(ctx.obj["data_dir"], ladder, done.duration / max(done.elapsed, 1e-3), chosen.name,
                     chosen.hardware)
        result = done.as_dict()
    url, why = agent_url(ctx.obj["data_dir"], f"watch/{result['name']}/")   # the agent's real address and port
    rungs = ", ".join(f"{r['name']} {r['width']}x{r['height']}" if r["kind"] == "video" else r["name"]
                      for r in result["renditions"])
    where = f" on {result['worker']} (spot-checked {result['spot_check']['checked']} of " \
            f"{result['spot_check']['of']} video segments)" if "worker" in result else ""
    output.result({**result, "url": url, **({"url_missing": why} if why else {})}, as_json,
                  result["cid"] if quiet else
                  [f"stream {result['name']}: {result['cid']}",
                   f"  {result['duration']:.1f} s in {result['elapsed']:.1f} s with {result['encoder']}{where}: "
                   f"{rungs}", f"  play: {url or why}"], indent=2)


def _import_elsewhere(ctx, cfg, source, name, ladder, opts, on, quiet):
    """The import done by a neighbour (None: none could, or auto found this box free)."""
    from edge.control import ask, socket_path
    from edge.media import remote
    if on == "auto":
        why = remote.should_offload(ctx.obj["data_dir"], cfg.media_jobs, source, ladder)
        if not why:
            return None
        output.note(f"{why}: asking a neighbour to transcode")
    say = (lambda text: None) if quiet else output.note
    with open_store(ctx) as store:
        result = remote.import_elsewhere(store, source, lambda cmd, **a: ask(socket_path(ctx.obj["data_dir"]), cmd,
                                                                              **a),
                                         name=name, ladder=ladder, opts=opts, on=on, note=say)
    if result is None:
        output.note("transcoding here instead")
    return result


@media.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def ls_cmd(ctx, as_json):
    """The streams this node holds."""
    with open_store(ctx) as store:
        rows = store.names("stream")
    output.result(rows, as_json, [f"{r['name']:24} {r['meta'].get('kind', '?'):4} "
                                  f"{r['meta'].get('duration', 0):8.1f} s  {r['cid']}" for r in rows], indent=2)


@media.command("rm")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def rm_cmd(ctx, name, as_json):
    """Forget stream NAME and unpin it (`hearth gc` then frees the space)."""
    with open_store(ctx) as store:
        store.drop_name(name)
    output.result({"removed": name}, as_json, f"removed {name}; run `hearth gc` to free its space")
