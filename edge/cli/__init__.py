"""The `hearth` command: one module per command group; each command parses its arguments, calls one function of
the module that owns the work, and prints through edge/cli/output.py. Nothing outside edge/cli/ imports it.

A command's module is imported when the command is asked for (click's lazy subcommands): `hearth run` loads the
node group and the agent, not the fleet's HTTP client, the image builder's or the media tools (2.7 MiB of an
idle agent's RSS, and each `hearth status` starts sooner). `hearth --help` imports them all to list them."""

import importlib
import logging
import sys

import click

import edge
from edge.config import default_data_dir
from edge.errors import EdgeError

# every group and top-level command: name -> (module in edge.cli, its attribute)
COMMANDS = {
    "add": ("content", "add"), "admin": ("admin", "admin"), "car": ("content", "car"), "cat": ("content", "cat"),
    "demo": ("node", "demo"), "doctor": ("node", "doctor"), "flash": ("image", "flash_cmd"),
    "fleet": ("fleet", "fleet"), "gc": ("content", "gc"), "get": ("content", "get"), "image": ("image", "image"),
    "init": ("node", "init"), "jobs": ("jobs", "jobs"), "leave": ("node", "leave"), "live": ("live", "live"),
    "media": ("media", "media"), "peers": ("node", "peers"), "pin": ("content", "pin"),
    "provision": ("provision", "provision"), "run": ("node", "run"), "status": ("node", "status"),
    "store": ("store", "store"), "update": ("update", "update"),
}


class HearthGroup(click.Group):
    """Loads each command from its module when it is asked for (COMMANDS), and turns Hearth's own errors into a
    one-line message and exit status 1, never a traceback."""

    def list_commands(self, ctx):
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx, name):
        if name not in self.commands and name in COMMANDS:
            module, attribute = COMMANDS[name]
            self.add_command(getattr(importlib.import_module(f"edge.cli.{module}"), attribute), name)
        return self.commands.get(name)

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

