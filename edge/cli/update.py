"""`hearth update …`: signed A/B updates of a Hearth image."""

import json
import os

import click


@click.group()
def update():
    """Signed A/B updates of a Hearth image."""


@update.command("bundle")
@click.argument("image_path", metavar="IMAGE", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
@click.option("--key", "key_path", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--version", "version", required=True)
@click.option("--root-image", type=click.Path(exists=True, dir_okay=False),
              help="Use this root file system instead of the image's slot A.")
@click.option("--downgrade-from", metavar="VERSION",
              help="Allow this (older) bundle on devices whose version floor is VERSION or lower (signed with it).")
def update_bundle(image_path, output, key_path, version, root_image, downgrade_from):
    """Make a signed update bundle from a built IMAGE (its root file system, kernel and initramfs)."""
    from edge.provisioning.host.bundle import make_bundle
    from edge.provisioning.host.flash import manifest_path
    m = make_bundle(image_path, manifest_path(image_path), output, version=version, key_path=key_path,
                    root_img=root_image, downgrade_from=downgrade_from)
    click.echo(f"bundle {output}: {m['board']} {m['version']}, {os.path.getsize(output):,} bytes")


@update.command("apply")
@click.argument("bundle", type=click.Path(exists=True))
@click.option("--reboot", is_flag=True, help="Reboot into the new slot when installed.")
@click.option("--allow-debug", is_flag=True,
              help="Accept a bundle built with --debug-console (a root shell on the serial console).")
def update_apply(bundle, reboot, allow_debug):
    """Install BUNDLE to the inactive slot; the next boot tries it and keeps it only if the node is healthy.
    Refused before anything is written: another board's bundle, one older than the device's version floor
    (unless signed as a downgrade from it), a debug bundle on a non-debug device, a file not matching its hash."""
    from edge.provisioning.device.bootloader import BOOT, loader_for
    from edge.provisioning.device.update import apply
    apply(bundle, log=lambda m: click.echo(m), allow_debug=allow_debug)
    if reboot:
        command = loader_for(BOOT).reboot_command()
        os.execvp(command[0], command)


@update.command("status")
@click.option("--json", "as_json", is_flag=True)
def update_status(as_json):
    """The running slot and every loader entry: good, on trial (tries left), or bad (rolled back)."""
    from edge.provisioning.device.update import status
    out = status()
    if as_json:
        click.echo(json.dumps(out, indent=1))
        return
    click.echo(f"running slot {out['slot']}")
    if out.get("version_floor"):
        click.echo(f"version floor {out['version_floor']} (older bundles need a signed downgrade)")
    elif out.get("version_floor_error"):
        click.echo(out["version_floor_error"])
    for e in out["entries"]:
        extra = f" ({e['tries_left']} tries left)" if e["state"] == "trial" else ""
        where = f"generation {e['generation']}" if "generation" in e else e["file"]
        click.echo(f"  {where} slot {e['slot']}: {e['state']}{extra}")


@update.command("health")
@click.option("--timeout", type=float, default=120)
@click.pass_context
def update_health(ctx, timeout):
    """Exit 0 once the agent serves (run by hearth-health.service to commit a trial boot)."""
    from edge.control import ask
    from edge.provisioning.device.update import health
    sock = os.path.join(ctx.obj["data_dir"], "control.sock")
    import subprocess

    def restarts():
        r = subprocess.run(["systemctl", "show", "-p", "NRestarts", "--value", "hearth.service"],
                           capture_output=True, text=True)
        return int(r.stdout.strip() or 0) if r.returncode == 0 else 0
    health(lambda: ask(sock, "status", timeout=5), timeout, restarts)
    click.echo("hearth: healthy")
    from edge.provisioning.device.update import commit
    commit(log=click.echo)        # on a Pi: config.txt now boots this slot (systemd-bless-boot does it on UEFI)


@update.command("run-request")
@click.pass_context
def update_run_request(ctx):
    """Install the bundle the agent handed over, or boot it on trial (run as root by hearth-update.service when
    the agent, which is not root, asks in DATA_DIR/update/request)."""
    from edge.provisioning.device.handoff import run_request
    from edge.provisioning.slots import UpdateError
    try:
        run_request(ctx.obj["data_dir"], log=click.echo)
    except (UpdateError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
