"""What several command groups need from the context: the store, the configuration, the running agent."""

import os

import click


def open_store(ctx):
    from edge.datadir import require
    from edge.store import Store
    require(ctx.obj["data_dir"])   # never a fresh store in the empty directory of an unmounted disk
    return Store(ctx.obj["data_dir"], **_store_settings(ctx))


def _store_settings(ctx) -> dict:
    """The configuration's quota and disk reserve, so every command enforces the one quota the agent does."""
    from edge.config import load_config, store_settings
    return store_settings(load_config(flags={"data_dir": ctx.obj["data_dir"]}))


def config_of(ctx, file=None, **flags):
    from edge.config import load_config
    flags["data_dir"] = ctx.obj["data_dir"] if ctx.obj.get("data_dir_given") else None
    return load_config(file, flags=flags)


def ask_agent(ctx, cmd, **args):
    from edge.config import load_config
    from edge.control import ask
    config = load_config(flags={"data_dir": ctx.obj["data_dir"]})
    try:
        return ask(os.path.join(config.data_dir, "control.sock"), cmd, **args)
    except ConnectionError as exc:
        raise click.ClickException(str(exc)) from None
