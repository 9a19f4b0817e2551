"""`hearth image build` and `hearth flash`: flashable images."""

import json
import os

import click

import edge
from edge.cli.output import progress_bar


@click.group()
def image():
    """Flashable images: build one for a board."""


@image.command("build")
@click.argument("board")
@click.option("-o", "--output", "out_dir", default="build/images", show_default=True, type=click.Path(file_okay=False))
@click.option("--key", "key_path", type=click.Path(exists=True, dir_okay=False),
              help="Ed25519 key that signs the manifest (hearth fleet init makes one); needed unless --dry-run.")
@click.option("--version", "version", default=None, help="Image version [default: Hearth's].")
@click.option("--seed", type=click.Path(exists=True, dir_okay=False), help="Put this seed on the boot partition.")
@click.option("--fleet-key", default="", help="Fleet public key: the image applies only seeds this fleet signed.")
@click.option("--source", type=click.Path(exists=True, file_okay=False),
              help="Hearth source tree the agent's wheel is built from [default: this checkout, or where pip "
                   "installed Hearth from].")
@click.option("--dry-run", is_flag=True, help="Print the builder's plan for BOARD; build nothing.")
@click.option("--debug-console", is_flag=True, hidden=True,
              help="TEST IMAGES ONLY: a root shell on the serial console.")
def image_build(board, out_dir, key_path, version, seed, fleet_key, source, dry_run, debug_console):
    """Build BOARD's image (as root): the recipe BOARD.toml says what goes in."""
    from edge.images.host import BuildError
    from edge.images.recipe import RecipeError
    try:
        if dry_run:
            from edge.images.plan import plan
            text, missing = plan(board, out_dir, version=version or edge.__version__, seed=seed, fleet_key=fleet_key,
                                 debug_console=debug_console, source=source)
            click.echo(text)
            if missing:
                raise click.ClickException(f"{board} cannot be built: {missing}")
            return
        if not key_path:
            raise click.UsageError("--key is needed to sign the image (hearth fleet init makes one)")
        from edge.images.build import build
        os.makedirs(out_dir, exist_ok=True)
        manifest = build(board, out_dir, key_path=key_path, version=version or edge.__version__, seed=seed,
                         fleet_key=fleet_key, debug_console=debug_console, source=source,
                         log=lambda m: click.echo(m, err=True))
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
    from edge.provisioning.host.flash import flash, load_manifest
    manifest = load_manifest(image_path, list(trusted))
    with progress_bar(manifest["image"]["size"], f"flashing {os.path.basename(target)}", True) as advance:
        result = flash(image_path, target, trusted=list(trusted), seed=seed, progress=advance,
                       allow_debug=allow_debug)
    click.echo(f"{result['board']} {result['version']} written to {target} and verified "
               f"({result['bytes']:,} bytes, sha256 {result['sha256'][:16]}…)"
               + ("; seed on the boot partition" if result["seed"] else "")
               + ("; DEBUG image: root shell on the serial console" if result["debug_console"] else ""))
