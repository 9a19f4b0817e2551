"""serve_governor: the governor as an agent service. Every TICK seconds, in a worker thread, it reads the
household signal and the disk writes of the process and its children (both blocking: files in /sys and /proc,
a router's answer, a probe), then, on the Trio thread, works out the rates in force (Governor.tick). Each
minute it reads the interfaces again (a new address changes what is LAN).

Which household signal, by the `backoff` setting:
    auto     the node is the router (it forwards packets and holds the default route): its WAN interface's
             counters; else a home router's UPnP-IGD counters where offered; else the delay to a WAN neighbour
             (or backoff_probe); else none (the caps and schedule alone)
    router, upnp, delay   that one (none if it cannot be had, with a log line saying why)
    off      no back-off
"""

import logging
import time

import trio

from edge import netif
from edge.governor.governor import Governor
from edge.governor.links import WAN
from edge.governor.signals import DelaySignal, RouterSignal, UpnpSignal, discover_igd
from edge.governor.tcpdiag import OwnTcp
from edge.governor.wear import WriteCounter
from edge.service import Handle

log = logging.getLogger(__name__)
TICK = 0.25          # seconds between samples of the counters (the back-off reacts within about three)
DELAY_TICK = 0.5     # ... of the delay probe (a TCP handshake across the uplink; three in a row decide)
WALK_EVERY = 1.0     # seconds between looks for new child processes whose writes count (a walk in /proc, ~0.7 ms)
REFRESH = 60.0       # seconds between readings of the interfaces (and, with no signal yet, tries to find one)


def pick_signal(setting: str, governor: Governor, probe: str = "", wan_target: tuple[str, int] | None = None):
    """The household signal the setting asks for on this host, or None. wan_target: a WAN neighbour's (host,
    port) for the delay signal. Blocking (it reads routes, may ask the LAN for a UPnP gateway): call it from a
    worker thread."""
    if setting == "off":
        return None
    # Hearth's own bytes to WAN peers as its TCP sockets put them on the wire (the counter signals subtract them)
    wire = OwnTcp(lambda ip: governor.classifier.classify(ip) == WAN).sample
    if setting in ("auto", "router"):
        wan = sorted(netif.default_route_interfaces()) if netif.forwarding() else []
        if wan:
            return RouterSignal(wan[0], governor.own_wan, wire=wire)
        if setting == "router":
            log.warning("backoff = router, but this box does not forward packets or has no default route: no "
                        "back-off (set backoff = auto)")
            return None
    if setting in ("auto", "upnp"):
        igd = discover_igd()
        if igd is not None:
            return UpnpSignal(igd, governor.own_wan, wire=wire)
        if setting == "upnp":
            log.warning("backoff = upnp, but no UPnP-IGD router answered (or miniupnpc is not installed): no "
                        "back-off yet")
            return None
    if setting in ("auto", "delay"):
        target = _endpoint(probe) if probe else wan_target
        if target is not None:
            return DelaySignal(target)
    return None


def _endpoint(text: str) -> tuple[str, int] | None:
    host, _, port = text.rpartition(":")
    return (host.strip("[]"), int(port)) if host and port.isdigit() else None


def _name(signal) -> str:
    return {RouterSignal: "router", UpnpSignal: "upnp", DelaySignal: "delay"}.get(type(signal), "none")


async def serve_governor(governor: Governor, *, backoff: str = "auto", probe: str = "", wan_target=lambda: None,
                         task_status=trio.TASK_STATUS_IGNORED):
    """Run the governor's ticks until cancelled; reports a Handle whose stats() are the governor's figures.
    wan_target(): a WAN neighbour's (host, port) for the delay signal, or None."""
    handle = Handle("governor", governor.figures)
    governor.signal = "choosing"
    chosen = {"signal": None, "choosing": False}

    async def choose():
        # in a thread of its own: finding a signal may wait on the LAN (a UPnP search takes seconds where no
        # router answers), and neither the services after this one nor the sampling below wait for it; until
        # then the caps and schedule apply alone. The neighbour is looked up here, on the Trio thread that owns
        # the peer table, and handed to the thread.
        chosen["choosing"] = True
        try:
            signal = await trio.to_thread.run_sync(pick_signal, backoff, governor, probe, wan_target(),
                                                   abandon_on_cancel=True)
        finally:
            chosen["choosing"] = False
        chosen["signal"] = signal
        if governor.signal == "choosing" or signal is not None:
            governor.signal = _name(signal)
            log.info("governor: household signal %s", governor.signal)

    # the governor's sampling never takes more than one worker thread. One limiter per run of the service, not
    # per module: a sample abandoned at cancellation gives its token back through the Trio run that lent it, so
    # a limiter shared by two runs in one process (agents in tests) stayed taken for ever once a run ended
    # while a sample was out, and the next agent's governor waited on it for good (it hung a test run here)
    one = trio.CapacityLimiter(1)
    # what the process and its children write counts from here (the first sample is the baseline the day's
    # writes grow from)
    writes = WriteCounter()
    governor.wear.observe(await trio.to_thread.run_sync(writes.sample, limiter=one))
    governor.tick(None)
    async with trio.open_nursery() as nursery:
        task_status.started(handle)
        nursery.start_soon(choose)
        refreshed = walked = time.monotonic()
        while True:
            began = time.monotonic()
            signal = chosen["signal"]
            if began - refreshed >= REFRESH:
                refreshed = began
                await trio.to_thread.run_sync(governor.classifier.refresh, limiter=one)
                if signal is None and backoff == "auto" and not chosen["choosing"]:
                    nursery.start_soon(choose)   # a router may have come up since
            walk = began - walked >= WALK_EVERY
            if walk:
                walked = began
            busy, written = await trio.to_thread.run_sync(_sample, signal, governor.clock(), writes, walk,
                                                          limiter=one, abandon_on_cancel=True)
            governor.wear.observe(written)
            if signal is not None and hasattr(signal, "household"):
                governor.household = signal.household
            if governor.tick(busy) and hasattr(signal, "describe"):
                log.info("governor: the household is using the uplink, Hearth's WAN upload backs off to %d B/s: %s",
                         governor.floor, signal.describe())
            period = DELAY_TICK if isinstance(signal, DelaySignal) else TICK
            await trio.sleep(max(0.0, period - (time.monotonic() - began)))


def _sample(signal, now: float, writes: WriteCounter, walk: bool):
    """In a worker thread: (the household signal's sample, the disk writes of the process and its children so
    far; walk: look for new children too)."""
    busy = signal.sample(now) if signal is not None else None
    return busy, writes.sample(walk)
