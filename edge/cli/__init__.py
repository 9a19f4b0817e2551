"""The `hearth` command: one module per command group; each command parses its arguments, calls one function of
the module that owns the work, and prints through edge/cli/output.py. Nothing outside edge/cli/ imports it."""

import logging
import sys

import click

import edge
from edge.cli import admin, content, fleet, image, jobs, live, media, node, provision, store, update
from edge.config import default_data_dir
from edge.errors import EdgeError


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


# every group and top-level command (`hearth --help` lists them alphabetically)
for command in (node.doctor, node.demo, content.add, content.cat, content.get, content.pin, content.gc,
                content.car, store.store, node.init, node.run, node.status, node.peers, fleet.fleet, media.media,
                live.live, provision.provision, image.image, image.flash_cmd, update.update, jobs.jobs,
                admin.admin, node.leave):
    main.add_command(command)
