"""`hearth admin …`: the status page's optional admin password (without one, the page is read-only)."""

import sys

import click

from edge.cli import output


@click.group()
def admin():
    """The status page's admin password: who may change limits from the page."""


@admin.command("password")
@click.option("--stdin", "from_stdin", is_flag=True, help="Read the password from standard input (scripts).")
@click.option("--remove", is_flag=True, help="Remove the password: the page becomes read-only again.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def password(ctx, from_stdin, remove, as_json):
    """Set (or remove) the admin password; kept only as an Argon2id hash in the data directory."""
    from edge.datadir import require
    from edge.status import admin as adm
    data_dir = ctx.obj["data_dir"]
    require(data_dir)
    if remove:
        had = adm.remove_password(data_dir)
        output.result({"removed": had}, as_json, "admin password removed; the status page is read-only" if had
                      else "no admin password was set")
        return
    if from_stdin:
        secret = sys.stdin.readline().rstrip("\r\n")
    else:   # asked, never taken as an argument: other users see arguments in the process list
        secret = click.prompt("admin password", hide_input=True, confirmation_prompt=True)
    adm.set_password(data_dir, secret)
    output.result({"set": True, "path": adm.password_path(data_dir)}, as_json,
                  f"admin password set ({adm.password_path(data_dir)}); log in on the status page to change limits")
