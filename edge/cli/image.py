"""`hearth image build` and `hearth flash`: flashable images."""

import json
import os
import sys

import click

import edge
from edge.cli.output import progress_bar


@click.group()
def image():
    """Flashable images: build one for a board."""


@image.command("build")
@click.argument("board")
@click.option("-o", "--output", "out_dir", default="build/images", show_default=True, type=click.Path(file_okay=False))
@click.option("--key", "key_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Ed25519 key that signs the manifest (hearth fleet init makes one).")
@click.option("--version", "version", default=None, help="Image version [default: Hearth's].")
@click.option("--seed", type=click.Path(exists=True, dir_okay=False), help="Put this seed on the boot partition.")
@click.option("--fleet-key", default="", help="Fleet public key: the image applies only seeds this fleet signed.")
@click.option("--debug-console", is_flag=True, hidden=True,
              help="TEST IMAGES ONLY: a root shell on the serial console.")
def image_build(board, out_dir, key_path, version, seed, fleet_key, debug_console):
    """Build BOARD's image (run from a checkout, as root): images/BOARD.toml says what goes in."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(edge.__file__)))
    if not os.path.isdir(os.path.join(repo, "images")):
        raise click.ClickException("hearth image build runs from a Hearth checkout (images/ holds the recipes)")
    sys.path.insert(0, repo)
    from images.build import BuildError, build
    from images.recipe import RecipeError
    os.makedirs(out_dir, exist_ok=True)
    try:
        manifest = build(board, out_dir, key_path=key_path, version=version or edge.__version__, seed=seed,
                         fleet_key=fleet_key, debug_console=debug_console, log=lambda m: click.echo(m, err=True))
    except (BuildError, RecipeError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps({k: manifest[k] for k in ("board", "version", "image", "compressed", "steps_seconds")},
                          indent=1))


@click.command("flash")
@click.argument("image_path", metavar="IMAGE", type=click.Path(exists=True, dir_okay=False))
@click.argument("target")
@click.option("--seed", type=click.Path(exists=True, dir_okay=False), help="A seed for the boot partition.")
@click.option("--trust", "trusted", multiple=True, required=True,
              help="Signer id whose images you accept (the builder's `hearth fleet init` key).")
@click.option("--allow-debug", is_flag=True,
              help="Write an image built with --debug-console (a root shell on its serial console).")
def flash_cmd(image_path, target, seed, trusted, allow_debug):
    """Write a signed IMAGE (.img or .img.zst) to TARGET (a whole disk such as /dev/sdX, or an image file),
    verify it, and put the seed on its boot partition. Refuses mounted, system and busy disks (holders, or an
    exclusive open the kernel refuses) and, without --allow-debug, debug images."""
    from edge.flash import flash, load_manifest
    manifest = load_manifest(image_path, list(trusted))
    with progress_bar(manifest["image"]["size"], f"flashing {os.path.basename(target)}", True) as advance:
        result = flash(image_path, target, trusted=list(trusted), seed=seed, progress=advance,
                       allow_debug=allow_debug)
    click.echo(f"{result['board']} {result['version']} written to {target} and verified "
               f"({result['bytes']:,} bytes, sha256 {result['sha256'][:16]}…)"
               + ("; seed on the boot partition" if result["seed"] else "")
               + ("; DEBUG image: root shell on the serial console" if result["debug_console"] else ""))
