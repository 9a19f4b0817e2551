"""The rollout's controller: whichever `hearth fleet rollout` (or `resume`) process runs, on any machine holding
the rollout key. Everything it needs is on the broker: the retained rollout record and every device's retained
report, so a controller that exits loses nothing and `resume` carries on where it stood.

A wave's members are the devices that reported on the rollout (every device that sees it reports, "waiting"
when its wave is not open yet) and whose place falls in the waves opened so far. The rollout halts, naming the
failed devices, as soon as the failed or rolled-back members pass the threshold (a share of the members so far);
it opens the next wave once every member of the open one has a final report (healthy, failed, rolled back) and
the wave has had `settle` seconds for reports to come; after the last wave it is done. A newer record from
elsewhere (`halt` from another shell) is taken as it comes: the controller stops.
"""

import time
from dataclasses import replace

import trio

from edge.fleet.mqtt import Broker, connect
from edge.fleet.records import RecordError, fleet_name, next_seq
from edge.fleet.rollouts import (FAILURES, FINAL, MAX_FAILED, WHOLE, Report, Rollout, check_report, parse_report,
                                 read_rollout, report_topic, rollout_topic, share_text, sign_rollout, wave_of)
from edge.identity import Identity

MAX_REPORTS = 1_000_000    # devices' reports held at most (a broker that floods is cut off there)
TIMEOUT = 3600.0           # seconds a member of an open wave may go without a final report before it counts failed


def tally(rollout: Rollout, reports: dict[str, Report], now: float | None = None,
          timeout: float = TIMEOUT) -> dict:
    """Where the rollout stands by the reports on it: per wave its members and their states, the failed devices
    so far, and the silent ones (members of an open wave without a final report for timeout seconds since the
    later of their last report and the rollout's last record: they count as failed)."""
    now = time.time() if now is None else now
    waves = [{"share": share, "members": 0, "states": {}} for share in rollout.waves]
    failed, silent, members, final_open = [], [], 0, True
    for node, report in sorted(reports.items()):
        if report.rollout != rollout.id:
            continue
        wave = wave_of(rollout, node)
        waves[wave]["members"] += 1
        waves[wave]["states"][report.state] = waves[wave]["states"].get(report.state, 0) + 1
        if wave <= rollout.wave:
            members += 1
            if report.state in FAILURES:
                failed.append(node)
            elif report.state not in FINAL and now - max(report.time, rollout.time) > timeout:
                failed.append(node)
                silent.append(node)
            elif report.state not in FINAL:
                final_open = False
    return {"waves": waves, "members": members, "failed": failed, "silent": silent, "complete": final_open}


def step(rollout: Rollout, reports: dict[str, Report], settled: bool, now: float | None = None,
         timeout: float = TIMEOUT) -> Rollout | None:
    """The next record of a running rollout given the reports, or None while nothing changes. settled: the open
    wave has had its time for reports to come."""
    if rollout.state != "running":
        return None
    now = time.time() if now is None else now
    t = tally(rollout, reports, now, timeout)
    new = dict(seq=next_seq(rollout.seq, now), time=int(now))
    if t["failed"] and len(t["failed"]) * WHOLE > rollout.halt * t["members"]:
        return replace(rollout, **new, state="halted", failed=tuple(t["failed"][:MAX_FAILED]),
                       reason=_failures(t, rollout))
    if not (t["complete"] and settled):
        return None
    failed = tuple(t["failed"][:MAX_FAILED])
    if rollout.wave + 1 < len(rollout.waves):
        return replace(rollout, **new, wave=rollout.wave + 1, failed=failed)
    return replace(rollout, **new, state="done", failed=failed,
                   reason=f"{t['members'] - len(t['failed'])} of {t['members']} devices healthy")


def _failures(t: dict, rollout: Rollout) -> str:
    waves = f"waves 1-{rollout.wave + 1}" if rollout.wave else "wave 1"
    silent = f", {len(t['silent'])} of them silent" if t["silent"] else ""
    return (f"{len(t['failed'])} of {t['members']} devices failed in {waves}{silent} "
            f"(above {share_text(rollout.halt)})")


class Watch:
    """The rollout record and the reports as the broker has them, every message verified."""

    def __init__(self, fleet_key: str):
        from edge.identity import public_key_of
        self.fleet = fleet_name(fleet_key)
        self.key = public_key_of(fleet_key)
        self.rollout: Rollout | None = None
        self.reports: dict[str, Report] = {}
        self.refused = 0
        self.changed = trio.Event()

    def take(self, topic: str, payload: bytes) -> None:
        try:
            if topic == rollout_topic(self.fleet):
                if payload:
                    rollout = read_rollout(payload, self.key)
                    if self.rollout is None or rollout.seq > self.rollout.seq:
                        self.rollout = rollout
            elif topic.startswith(report_topic(self.fleet, "")) and payload and len(self.reports) < MAX_REPORTS:
                report = parse_report(payload)
                check_report(report, topic, self.key)
                held = self.reports.get(report.node)
                if held is None or report.seq > held.seq:
                    self.reports[report.node] = report
        except RecordError:
            self.refused += 1
        self.changed.set()

    async def follow(self, session, task_status=trio.TASK_STATUS_IGNORED):
        session.subscribe(rollout_topic(self.fleet))
        session.subscribe(report_topic(self.fleet, "+"))
        task_status.started()
        async for topic, payload, _ in session.messages:
            self.take(topic, payload)


async def read_state(broker: Broker, fleet_key: str, client_id: str, wait: float = 1.5) -> Watch:
    """The rollout record and reports on the broker after listening for wait seconds."""
    watch = Watch(fleet_key)
    async with connect(broker, client_id, inbox=65536) as session:
        async with trio.open_nursery() as nursery:
            await nursery.start(watch.follow, session)
            await trio.sleep(wait)
            nursery.cancel_scope.cancel()
    return watch


async def control(broker: Broker, fleet_key: str, key: Identity, client_id: str, first: Rollout | None = None,
                  settle: float = 30.0, say=print, timeout: float = TIMEOUT) -> Rollout:
    """Publish first (a new rollout, or a resumed one), then drive the rollout wave by wave until it is done or
    halted (here or elsewhere); the last record."""
    watch = Watch(fleet_key)
    async with connect(broker, client_id, inbox=65536) as session:
        async with trio.open_nursery() as nursery:
            await nursery.start(watch.follow, session)

            def publish(record: Rollout) -> Rollout:
                session.publish(rollout_topic(watch.fleet), sign_rollout(record, key), retain=True)
                watch.rollout = record
                return record

            if first is not None:
                publish(first)
                say(f"rollout {first.id}: {first.state}, wave {first.wave + 1} of {len(first.waves)} "
                    f"({share_text(first.waves[first.wave])})")
            opened = trio.current_time()
            shown, halted_here = None, False
            while watch.rollout is not None and watch.rollout.state == "running":
                current = watch.rollout
                nxt = step(current, watch.reports, trio.current_time() - opened >= settle, timeout=timeout)
                t = tally(current, watch.reports, timeout=timeout)
                line = (current.wave, t["members"], len(t["failed"]), t["complete"])
                if line != shown:
                    say(f"wave {current.wave + 1}: {t['members']} devices so far, {len(t['failed'])} failed"
                        + (", all reported" if t["complete"] else ""))
                    shown = line
                if nxt is not None:
                    publish(nxt)
                    halted_here = nxt.state == "halted"
                    opened = trio.current_time()
                    if nxt.state == "running":
                        say(f"rollout {nxt.id}: wave {nxt.wave + 1} of {len(nxt.waves)} "
                            f"({share_text(nxt.waves[nxt.wave])}) open")
                    continue
                watch.changed = trio.Event()
                with trio.move_on_after(1.0):
                    await watch.changed.wait()
            last = watch.rollout
            if last is not None and last.state == "halted" and halted_here:
                await _name_the_rest(watch, publish, last, max(settle, 30.0), timeout)
            await trio.sleep(0.3)   # our last record on its way before the goodbye
            nursery.cancel_scope.cancel()
    return watch.rollout


async def _name_the_rest(watch: Watch, publish, halted: Rollout, wait: float, timeout: float) -> None:
    """After halting: the members that were installing still report; the halted record is republished naming
    every failure among them, until all have reported or wait seconds have passed."""
    with trio.move_on_after(wait):
        while True:
            current = watch.rollout
            if current is None or current.id != halted.id or current.state != "halted":
                return   # resumed or replaced meanwhile
            t = tally(current, watch.reports, timeout=timeout)
            failed = tuple(t["failed"][:MAX_FAILED])
            if failed != current.failed:
                publish(replace(current, seq=next_seq(current.seq), time=int(time.time()), failed=failed,
                                reason=_failures(t, current)))
            if t["complete"]:
                return
            watch.changed = trio.Event()
            await watch.changed.wait()
