"""The node's configuration: typed defaults < TOML file < HEARTH_* environment < command-line flags.

Each setting is declared once (name, type, default, what it means); the TOML file, the environment and the
flags are all checked against that declaration, and a bad value names the key, the value and what is allowed.
Byte sizes and rates (kind "size" or "rate") are written with units, as edge/units.py reads them.
"""

import dataclasses
import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field

from edge.errors import EdgeError
from edge.governor.schedule import Schedule
from edge.units import RATE_FORMS, SIZE_FORMS, format_size, parse_rate, parse_size

SECONDS = 1.0
MiB = 1 << 20
ENV_PREFIX = "HEARTH_"
CONFIG_NAME = "hearth.toml"
REGION = re.compile(r"[a-z0-9-]{1,32}\Z")                  # a fleet region: one MQTT topic level, no wildcards
PROTECT = re.compile(r"(auto|\d{1,3}\+\d{1,3})\Z")          # a protection: auto or K+M
OPERATOR = re.compile(r"[A-Za-z0-9_.:-]{0,64}\Z")             # an operator key: one short word (the Welcome's cap)
# mqtt[s]://[user:password@]host[:port][/] (a password's "@" or "/" percent-encoded); edge/fleet/mqtt.py reads it
BROKER_URL = re.compile(r"mqtts?://(?:[^/?#\s@]+@)?(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)"
                        r"(?::(?:6553[0-5]|655[0-2]\d|65[0-4]\d\d|6[0-4]\d{3}|[1-5]\d{4}|[1-9]\d{0,3}))?/?\Z")


class ConfigError(EdgeError):
    """A setting has a value that is not allowed; the message names the key, the value and what is allowed."""


def default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "hearth")


def _setting(default, doc, *, choices=None, low=None, high=None, factory=None, kind=None, auto=False):
    """kind "size" (bytes) or "rate" (bytes per second): written as edge/units.py reads them ("200G", "500GiB",
    "2.5M", or a plain integer); auto=True also accepts "auto" (None: worked out at run time)."""
    meta = {"doc": doc, "choices": choices, "low": low, "high": high, "kind": kind, "auto": auto}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Config:
    data_dir: str = _setting(None, "where the store, identity and control socket live", factory=default_data_dir)
    node_name: str = _setting("", "a name for this box shown to neighbours (default: the host name)")
    listen: str = _setting("auto", "where the transport and gateway listen and mDNS answers: auto (every "
                           "interface but the default route's on a box that forwards packets, i.e. not a "
                           "router's WAN side; elsewhere all), all, or a comma list of interfaces and addresses")
    transport_port: int = _setting(4801, "TCP port for node-to-node requests (ZeroMQ, CURVE; 0 picks a free one)",
                                   low=0, high=65535)
    gateway_port: int = _setting(4800, "HTTP gateway for players and browsers: streams, HLS, blocks and CARs by "
                                 "CID, the player page (0 turns it off)", low=0, high=65535)
    media_encoder: str = _setting("auto", "H.264 encoder: auto (a working hardware encoder, else libx264) or a "
                                  "name from `hearth media encoders`")
    media_jobs: int = _setting(1, "transcodes that may run at once (each uses every core it can get)",
                               low=1, high=16)
    ice_servers: tuple[str, ...] = _setting((), "STUN/TURN URLs for WebRTC (none on a LAN; never a public one "
                                            "unless set here)")
    metrics_port: int = _setting(4802, "Prometheus metrics on 127.0.0.1 (0 turns them off)", low=0, high=65535)
    admission: str = _setting("open", "who may talk to this node: open (any key reads; writes from allowed "
                              "keys) or fleet (only nodes holding a certificate from the fleet key)",
                              choices=("open", "fleet"))
    fleet_key: str = _setting("", "the fleet's public key (admission = fleet)")
    fleet_cert: str = _setting("", "this node's fleet certificate file (admission = fleet)")
    fleet_broker: str = _setting("", "the fleet's MQTT 5 broker, where nodes across homes meet and report: "
                                 "mqtts://[user:password@]host[:8883] (mqtt:// only on a closed network); "
                                 "empty: no fleet plane")
    fleet_broker_ca: str = _setting("", "a CA file (PEM) the broker's mqtts:// certificate must chain to (a fleet's "
                                    "own CA; relative to the data directory); empty: the system's CAs")
    fleet_region: str = _setting("default", "the region this node meets neighbours in on the fleet broker (1-32 "
                                 "lower-case letters, digits or '-', e.g. an ISP's area or ASN)")
    fleet_addresses: tuple[str, ...] = _setting((), "where nodes across homes reach this one, as IP or IP:PORT "
                                                "(a public or mapped address); default: the addresses it listens "
                                                "on")
    update_backend: str = _setting("none", "where staged rollouts from the fleet broker are installed: none (take "
                                   "no rollouts), ab (this device's A/B slots) or test (FOR TESTS ONLY: a device "
                                   "simulated on files in the data directory)", choices=("none", "ab", "test"))
    write_allow: tuple[str, ...] = _setting((), "node ids allowed to put blocks here (admission = open)")
    quota: int = _setting(0, "what the store may hold, e.g. \"200G\" or \"500GiB\" (0: none set here, and the one "
                          "`hearth store quota` sets applies); a quota set here, in HEARTH_QUOTA or by a flag wins "
                          "over `hearth store quota`'s", low=0, kind="size")
    disk_reserve: int | None = _setting(None, "free disk the store always leaves: under it, cached (unpinned) "
                                        "blocks make room, then writes are refused; auto: the smaller of 1GiB "
                                        "and 5% of the disk", low=0, kind="size", auto=True)
    block_cache: int = _setting(16 * MiB, "memory for blocks served more than once (checked when read, "
                                "then served without re-reading and re-hashing them); 0 turns it off",
                                low=0, high=1 << 30, kind="size")
    max_frame: int = _setting(2 * MiB + 4096, "largest frame accepted from a peer",
                              low=4096, high=64 * MiB, kind="size")
    live_port: int = _setting(0, "port of the live fan-out (ZeroMQ PUB/SUB with CURVE) that neighbours "
                              "subscribe to; 0 picks a free one", low=0, high=65535)
    live_direct: int = _setting(1, "neighbours this node sends its own live streams to itself; the others are "
                                "pointed at nodes that relay them", low=1, high=64)
    live_relay: int = _setting(2, "neighbours this node relays a live stream it follows to (within its "
                               "upload limit)", low=0, high=64)
    upload_limit: int = _setting(0, "bytes per second this node uploads to WAN peers (blocks to neighbours, the "
                                 "gateway to players; lan_upload_limit is the LAN's); 0: no limit. \"2.5M\" is 20 "
                                 "Mbit/s", low=0, kind="rate")
    # what gateway requests (anyone on the LAN, unauthenticated) may have this node fetch from neighbours
    gateway_fetch_client: int = _setting(256 * MiB, "what one gateway client (an address) may have this node "
                                         "fetch from neighbours in an hour; past it, 429 (0: none)", low=0,
                                         kind="size")
    gateway_fetch_total: int = _setting(1024 * MiB, "what all gateway clients together may have this node fetch "
                                        "from neighbours in an hour; past it, 429 (0: none)", low=0, kind="size")
    peer_requests_per_second: float = _setting(5000.0, "requests one peer may make per second before it is told "
                                               "to slow down (each block asked for is one; 5000 small blocks a "
                                               "second cost an x86 core ~7% of its time)", low=1.0)
    peer_expiry: float = _setting(30 * SECONDS, "a neighbour unheard from this long is forgotten (s)", low=1.0)
    shutdown_grace: float = _setting(5 * SECONDS, "how long a graceful shutdown may take (s)", low=0.1)
    mdns: bool = _setting(True, "announce and browse for neighbours on the LAN")
    static_peers: tuple[str, ...] = _setting((), "neighbours to use without mDNS, as NODE_ID@HOST:PORT")
    lan_subnets: tuple[str, ...] = _setting((), "networks (CIDRs) that count as LAN besides the subnets of this "
                                            "node's own interfaces (a router's WAN side never does): their "
                                            "peers get the LAN caps, e.g. [\"10.8.0.0/16\"] for a VPN")
    lan_upload_limit: int = _setting(0, "bytes per second this node uploads to LAN peers (upload_limit is the "
                                     "WAN's); 0: no limit", low=0, kind="rate")
    download_limit: int = _setting(0, "bytes per second this node fetches from WAN neighbours; 0: no limit",
                                   low=0, kind="rate")
    lan_download_limit: int = _setting(0, "bytes per second this node fetches from LAN neighbours; 0: no limit",
                                       low=0, kind="rate")
    limit_schedule: tuple[str, ...] = _setting((), "shares of the WAN caps by hour and weekday, the first entry "
                                               "that matches wins, e.g. [\"01:00-07:00 100%\", \"mon-fri "
                                               "18:00-23:00 20%\", \"sat,sun 09:00-23:00 1M\"] (docs/governor.md); "
                                               "until the clock is synchronised the most conservative applies")
    wan_floor: int = _setting(64 * 1024, "what this node still sends to WAN peers while the household uses the "
                              "uplink (the back-off's floor)", low=1024, kind="rate")
    backoff: str = _setting("auto", "how the node sees the household using the uplink: auto, router (its own "
                            "WAN counters), upnp (the home router's), delay (probe delay, LEDBAT-style) or off",
                            choices=("auto", "router", "upnp", "delay", "off"))
    backoff_probe: str = _setting("", "HOST:PORT across the uplink whose TCP handshake delay the delay signal "
                                  "measures (default: a WAN neighbour)")
    wear_budget: int = _setting(0, "bytes the agent may write to its disk a day (an SD card's wear); once spent, "
                                "fetched blocks are not cached until the next day and serving goes on; 0: none",
                                low=0, kind="size")
    log_format: str = _setting("auto", "log lines: auto, human or journal", choices=("auto", "human", "journal"))
    port_mapping: str = _setting("off", "ask the home router to forward the transport's port (never the "
                                 "gateway's) so nodes in other homes reach this one: auto (NAT-PMP, then "
                                 "UPnP-IGD; renewed, removed at exit) or off", choices=("off", "auto"))
    transcode_for: str = _setting("auto", "whose transcode jobs this node takes: none, fleet (nodes admitted by "
                                  "the fleet certificate) or any (any neighbour); auto: fleet with admission = "
                                  "fleet, else none", choices=("auto", "none", "fleet", "any"))
    transcode_budget: float = _setting(3600.0, "seconds of source one neighbour may have this node transcode in "
                                       "an hour", low=0.0)
    share: int = _setting(1 << 30, "disk this node lends to neighbours for pieces of their protected pins, apart "
                          "from its own pins' quota, e.g. \"20G\"; past it, pieces are refused (0: holds none)",
                          low=0, kind="size")
    protect: str = _setting("", "protect what `hearth add` and `hearth pin add` pin, on neighbours (through the "
                            "running agent): auto (k+m from how many lend disk) or K+M, e.g. \"4+4\"; empty: "
                            "not unless --protect says so")
    repair_after: float = _setting(4 * 3600.0, "seconds a holder of this node's protected pins may be away before "
                                   "its pieces are rebuilt on other neighbours (a reboot or a night's power cut "
                                   "must not cost a repair)", low=0.0)
    operator: str = _setting("", "an operator key this node declares, shared by the boxes of one household or "
                             "owner (one failure domain): no two pieces of a segment go to boxes of one operator; "
                             "empty: this box is its own")

    @property
    def config_file(self) -> str:
        return os.path.join(self.data_dir, CONFIG_NAME)


FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def _convert(name: str, raw, source: str):
    f = FIELDS[name]
    meta = f.metadata
    allowed = "text"
    try:
        if meta["kind"] in ("size", "rate"):
            allowed = SIZE_FORMS if meta["kind"] == "size" else RATE_FORMS
            if meta["auto"]:
                allowed = '"auto" or ' + allowed
            if meta["auto"] and isinstance(raw, str) and raw.strip().lower() == "auto":
                return None
            value = (parse_size if meta["kind"] == "size" else parse_rate)(raw)
        elif f.type in (int, "int"):
            if isinstance(raw, bool):
                raise ValueError
            allowed = "a whole number"
            if not isinstance(raw, (int, str)):
                raise ValueError
            value = int(raw)
        elif f.type in (float, "float"):
            allowed = "a number"
            if isinstance(raw, bool):
                raise ValueError
            value = float(raw)
        elif f.type in (bool, "bool"):
            allowed = "true or false"
            if isinstance(raw, bool):
                value = raw
            elif isinstance(raw, str) and raw.strip().lower() in ("1", "true", "yes", "on"):
                value = True
            elif isinstance(raw, str) and raw.strip().lower() in ("0", "false", "no", "off"):
                value = False
            else:
                raise ValueError
        elif str(f.type).startswith("tuple"):
            allowed = "a list of strings"
            if isinstance(raw, str):
                value = tuple(p.strip() for p in raw.split(",") if p.strip())
            elif isinstance(raw, (list, tuple)) and all(isinstance(p, str) for p in raw):
                value = tuple(raw)
            else:
                raise ValueError
        else:
            allowed = "text"
            if not isinstance(raw, str):
                raise ValueError
            value = raw
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {name} = {raw!r} is not allowed; {name} must be {allowed}") from None
    if meta["choices"] and value not in meta["choices"]:
        raise ConfigError(f"{source}: {name} = {raw!r} is not allowed; choose one of {', '.join(meta['choices'])}")
    for bound, ok in ((meta["low"], lambda b: value >= b), (meta["high"], lambda b: value <= b)):
        if bound is not None and not ok(bound):
            shown = format_size if meta["kind"] else str
            lo = shown(meta["low"]) if meta["low"] is not None else "-inf"
            hi = shown(meta["high"]) if meta["high"] is not None else "inf"
            raise ConfigError(f"{source}: {name} = {raw!r} is out of range; allowed {lo} to {hi}")
    return value


def load_config(file: str | None = None, env=None, flags: dict | None = None) -> Config:
    """Defaults, then the TOML file (given, or data_dir/hearth.toml if it exists), then HEARTH_* variables,
    then flags whose value is not None. ConfigError for an unknown key or a bad value."""
    env = os.environ if env is None else env
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    values = {}
    # data_dir decides where the file is, so it is resolved first from env and flags
    data_dir = flags.get("data_dir") or env.get(ENV_PREFIX + "DATA_DIR") or default_data_dir()
    path = file or os.path.join(data_dir, CONFIG_NAME)
    if file or os.path.exists(path):
        try:
            with open(path, "rb") as f:
                table = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        for key, raw in table.items():
            if key not in FIELDS:
                raise ConfigError(f"{path}: unknown setting {key!r}; known: {', '.join(sorted(FIELDS))}")
            values[key] = _convert(key, raw, path)
    for name in FIELDS:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = _convert(name, raw, f"environment {ENV_PREFIX}{name.upper()}")
    for name, raw in flags.items():
        if name not in FIELDS:
            raise ConfigError(f"unknown setting {name!r}")
        values[name] = _convert(name, raw, f"--{name.replace('_', '-')}")
    config = Config(**values)
    if config.admission == "fleet" and not (config.fleet_key and config.fleet_cert):
        raise ConfigError("admission = 'fleet' needs fleet_key (the fleet's public key) and fleet_cert (this "
                          "node's certificate); create them with `hearth fleet init` and `hearth fleet sign`")
    if config.fleet_broker and not BROKER_URL.match(config.fleet_broker):
        raise ConfigError(f"fleet_broker = {config.fleet_broker!r} is not allowed; write "
                          "mqtts://[user:password@]host[:port] (or mqtt:// on a closed network)")
    if config.protect and not PROTECT.match(config.protect):
        raise ConfigError(f"protect = {config.protect!r} is not allowed; use auto, K+M (e.g. 4+4) or leave it empty")
    if not OPERATOR.match(config.operator):
        raise ConfigError(f"operator = {config.operator!r} is not allowed; use at most 64 letters, digits or _.:-")
    if not REGION.match(config.fleet_region):
        raise ConfigError(f"fleet_region = {config.fleet_region!r} is not allowed; use 1-32 lower-case letters, "
                          "digits or '-'")
    for cidr in config.lan_subnets:
        try:
            ipaddress.ip_network(cidr.strip(), strict=False)
        except ValueError:
            raise ConfigError(f"lan_subnets: {cidr!r} is not a network; write CIDRs such as 192.168.1.0/24 or "
                              "fd00::/8") from None
    try:
        Schedule(config.limit_schedule)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return config


def store_settings(config: Config, env=None) -> dict:
    """The Store's keyword arguments for the one quota and the disk reserve: a quota set in the configuration
    (hearth.toml, HEARTH_QUOTA, a flag) wins over the one `hearth store quota` keeps in the catalog; quota = 0
    (the default) leaves that one in force."""
    env = os.environ if env is None else env
    source = "environment HEARTH_QUOTA" if env.get(ENV_PREFIX + "QUOTA") else config.config_file
    return {"quota": config.quota or None, "quota_source": source, "reserve": config.disk_reserve}


def commented_toml(config: Config) -> str:
    """A config file that lists every setting with its meaning, all commented out at their defaults."""
    lines = ["# Hearth node configuration. Uncomment a line to change it.",
             "# Precedence: built-in defaults < this file < HEARTH_* environment variables < command-line flags.", ""]
    for name, f in FIELDS.items():
        if name == "data_dir":
            continue
        value = getattr(config, name)
        if f.metadata["kind"] and value is None:
            text = '"auto"'
        elif f.metadata["kind"] and value:
            text = f'"{format_size(value)}"'
        elif isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str):
            text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        elif isinstance(value, tuple):
            text = "[" + ", ".join(f'"{v}"' for v in value) + "]"
        else:
            text = repr(value)
        lines.append(f"# {f.metadata['doc']}")
        lines.append(f"# {name} = {text}")
        lines.append("")
    return "\n".join(lines)


def parse_setting(name: str, raw, source: str):
    """One setting's value from raw (text or TOML value), checked against its declaration as load_config checks
    it; ConfigError naming the key, the value and what is allowed (for a setting changed at run time)."""
    if name not in FIELDS:
        raise ConfigError(f"unknown setting {name!r}")
    return _convert(name, raw, source)
