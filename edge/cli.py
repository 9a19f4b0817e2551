"""The `hearth` command: click commands parse, call one function, print."""

import json
import logging
import random
import sys

import click

import edge
from edge import doctor as doctor_mod


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(edge.__version__, prog_name="hearth")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose):
    """Hearth: a mini-CDN in every home."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def doctor(as_json):
    """Check this box: Python and library versions, native kernels and CPU paths, FFmpeg encoders."""
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
