"""`hearth provision …`: seeds and the first boot of an appliance image."""

import os
import sys

import click

from edge.cli import output


@click.group()
def provision():
    """Seeds and first boot of an appliance image."""


@provision.command("first-boot")
@click.option("--boot", "boot_dir", default="/efi", show_default=True, help="The mounted boot partition.")
@click.option("--user", default=None, help="Give the data directory to this user (the service's).")
@click.option("--grow/--no-grow", default=True, show_default=True,
              help="Grow the data partition to the end of the disk first.")
@click.pass_context
def provision_first_boot(ctx, boot_dir, user, grow):
    """Create this node's identity and apply the boot partition's seed, once (run by hearth-firstboot.service)."""
    from edge.provisioning.device.firstboot import first_boot
    first_boot(boot_dir, ctx.obj["data_dir"], user, log=output.say, grow=grow)


@provision.command("wifi")
@click.option("--wait", type=float, default=30, show_default=True,
              help="Seconds to wait for a wireless interface to appear (its driver may load its firmware late).")
@click.option("--dry-run", is_flag=True, help="Print the wpa_supplicant command instead of running it.")
@click.pass_context
def provision_wifi(ctx, wait, dry_run):
    """Join the seed's Wi-Fi network on this box's wireless interface (run by hearth-wifi.service)."""
    from edge.provisioning.device.wifi import join_command
    args, line = join_command(ctx.obj["data_dir"], wait)
    if args is not None and dry_run:
        output.say(" ".join(args))
        return
    output.say(line)
    if args is not None:
        os.execvp(args[0], args)


@provision.command("seed")
@click.option("-o", "--output", "seed_file", required=True, type=click.Path(dir_okay=False),
              help="Where to write the seed.")
@click.option("--name", "node_name", default="", help="The node's name.")
@click.option("--quota", default="", help="Storage the node may use, e.g. 200G.")
@click.option("--wifi-ssid", default="", help="A Wi-Fi network to join (the box's Ethernet works without).")
@click.option("--wifi-psk-file", type=click.File("r"), default=None,
              help="A file whose first line is its WPA passphrase ('-': standard input); without it the passphrase "
              "is asked for. Removed from the boot partition at first boot.")
@click.option("--wifi-open", is_flag=True, help="The network has no passphrase.")
@click.option("--wifi-psk", hidden=True, default=None)
@click.option("--wifi-country", default="", help="Two-letter country code for the Wi-Fi radio's rules (e.g. DE).")
@click.option("--upload-limit", default="", help="Bytes per second the node may upload in all, e.g. 2.5M.")
def provision_seed(seed_file, node_name, quota, wifi_ssid, wifi_psk_file, wifi_open, wifi_psk, wifi_country,
                   upload_limit):
    """Write a seed for an image's boot partition (hearth-seed.toml, readable by you only: it may hold the
    Wi-Fi passphrase)."""
    from edge.provisioning.host.seeds import write_seed
    from edge.units import parse_rate, parse_size
    if wifi_psk is not None:
        raise click.UsageError("--wifi-psk is not taken on the command line (other users see it in the process "
                               "list and it stays in shell history): leave it out to be asked, or give "
                               "--wifi-psk-file FILE (- reads standard input)")
    if (wifi_psk_file or wifi_open or wifi_country) and not wifi_ssid:
        raise click.UsageError("--wifi-psk-file, --wifi-open and --wifi-country need --wifi-ssid")
    if wifi_psk_file and wifi_open:
        raise click.UsageError("--wifi-open is a network without a passphrase: give it or --wifi-psk-file, not both")
    for value, parse, hint in ((quota, parse_size, "--quota"), (upload_limit, parse_rate, "--upload-limit")):
        try:   # before the passphrase is asked for
            if value:
                parse(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint=hint) from None
    psk = ""
    if wifi_ssid:
        if wifi_psk_file:
            psk = wifi_psk_file.readline().rstrip("\r\n")
            if not psk:
                raise click.UsageError(f"{wifi_psk_file.name}: the first line is empty; for a network without a "
                                       "passphrase give --wifi-open")
        elif not wifi_open:
            if not sys.stdin.isatty():
                raise click.UsageError("no terminal to ask for the Wi-Fi passphrase on: give --wifi-psk-file FILE "
                                       "(- reads standard input), or --wifi-open for a network without one")
            psk = click.prompt(f"WPA passphrase of {wifi_ssid!r}", hide_input=True, confirmation_prompt=True)
    write_seed(seed_file, name=node_name, quota=quota, wifi_ssid=wifi_ssid, wifi_psk=psk, wifi_country=wifi_country,
               upload=upload_limit)
    output.say(f"seed written to {seed_file}")
