"""The settings the status page's admin form changes: each checked against its declaration in edge/config.py
(and a schedule parsed as the governor reads it), written to hearth.toml (whole, atomically, comments kept) and
applied to the running agent at once: the governor's caps, schedule, back-off floor and SD-wear budget."""

import os

from edge.atomic import update_toml
from edge.config import ENV_PREFIX, parse_setting
from edge.governor.caps import DOWN, UP
from edge.governor.links import LAN, WAN
from edge.governor.schedule import Schedule

CAPS = {"upload_limit": (UP, WAN), "lan_upload_limit": (UP, LAN), "download_limit": (DOWN, WAN),
        "lan_download_limit": (DOWN, LAN)}


class Settings:
    """appliers: {setting: fn(value)} applies a checked value to the running agent (on the Trio thread); current:
    {setting: fn()} reads what is configured; after(): called once after a change is applied. Only these
    settings can be changed here."""

    def __init__(self, config_file: str, appliers: dict, current: dict, after=lambda: None, env=None):
        self.config_file = config_file
        self.appliers, self.current, self.after = appliers, current, after
        self.env = os.environ if env is None else env

    def values(self) -> dict:
        return {name: fn() for name, fn in self.current.items()}

    def check(self, changes) -> dict:
        """{setting: value} for changes ({setting: raw}); ConfigError or ValueError names the first bad one."""
        if not isinstance(changes, dict) or not changes:
            raise ValueError("send a JSON object of settings to change, e.g. {\"upload_limit\": \"2.5M\"}")
        checked = {}
        for name, raw in changes.items():
            if name not in self.appliers:
                raise ValueError(f"{name!r} cannot be changed here; these can: {', '.join(sorted(self.appliers))}")
            checked[name] = parse_setting(name, raw, "the admin form")
            if name == "limit_schedule":
                Schedule(checked[name])   # ScheduleError (a ValueError) names a bad entry
        return checked

    def write(self, changes: dict) -> None:
        """Write changes (already checked) to hearth.toml. Blocking: from Trio, in a worker thread."""
        update_toml(self.config_file, {name: list(raw) if isinstance(raw, (list, tuple)) else raw
                                       for name, raw in changes.items()},
                    comment="set from the status page's admin form")

    def apply(self, checked: dict) -> dict:
        """Put checked values in force (on the Trio thread, where the governor's tick runs); what is configured
        now and notes (a setting the environment overrides at the next start)."""
        for name, value in checked.items():
            self.appliers[name](value)
        self.after()
        notes = [f"{ENV_PREFIX}{name.upper()} is set in the agent's environment and wins at its next start"
                 for name in checked if ENV_PREFIX + name.upper() in self.env]
        return {"settings": self.values(), "notes": notes}


def governor_settings(config_file: str, governor, env=None) -> Settings:
    """The settings of the governor (edge/governor/) the form changes, applied to it: its configured caps, the
    schedule, the back-off's floor and the SD-wear budget; its next tick (run at once) puts the rates in force."""
    caps = governor.caps.configured

    def cap(key):
        def set_cap(value):
            caps[key] = value
        return set_cap
    appliers = {name: cap(key) for name, key in CAPS.items()}
    current = {name: (lambda key=key: caps[key]) for name, key in CAPS.items()}
    appliers["limit_schedule"] = lambda value: setattr(governor, "schedule", Schedule(value))
    current["limit_schedule"] = lambda: [e.text for e in governor.schedule.entries]
    appliers["wan_floor"] = lambda value: setattr(governor, "floor", value)
    current["wan_floor"] = lambda: governor.floor
    appliers["wear_budget"] = lambda value: setattr(governor.wear, "budget", value)
    current["wear_budget"] = lambda: governor.wear.budget
    return Settings(config_file, appliers, current, after=lambda: governor.tick(None), env=env)
