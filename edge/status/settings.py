"""The settings the status page's admin form changes: each checked against its declaration in edge/config.py,
written to hearth.toml (whole, atomically, comments kept) and applied to the running agent at once."""

import os

from edge.atomic import update_toml
from edge.config import ENV_PREFIX, parse_setting


class Settings:
    """appliers: {setting: fn(value)} applies a checked value to the running agent; current: {setting: fn()}
    reads what is in force. Only these settings can be changed here."""

    def __init__(self, config_file: str, appliers: dict, current: dict, env=None):
        self.config_file = config_file
        self.appliers, self.current = appliers, current
        self.env = os.environ if env is None else env

    def values(self) -> dict:
        return {name: fn() for name, fn in self.current.items()}

    def change(self, changes: dict) -> dict:
        """Check every change first (ConfigError names the first bad one; nothing is written then), write them to
        hearth.toml, then apply them. Blocking (a file write): from Trio, in a worker thread. Returns what is in
        force and notes (a setting the environment overrides at the next start)."""
        if not isinstance(changes, dict) or not changes:
            raise ValueError("send a JSON object of settings to change, e.g. {\"upload_limit\": \"2.5M\"}")
        checked = {}
        for name, raw in changes.items():
            if name not in self.appliers:
                raise ValueError(f"{name!r} cannot be changed here; these can: {', '.join(sorted(self.appliers))}")
            checked[name] = parse_setting(name, raw, "the admin form")
        update_toml(self.config_file, {name: raw for name, raw in changes.items()},
                    comment="set from the status page's admin form")
        for name, value in checked.items():
            self.appliers[name](value)
        notes = [f"{ENV_PREFIX}{name.upper()} is set in the agent's environment and wins at its next start"
                 for name in checked if ENV_PREFIX + name.upper() in self.env]
        return {"settings": self.values(), "notes": notes}
