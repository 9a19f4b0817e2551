"""`hearth fleet status`: read every node's status record from the broker, verify each, and sum the fleet up.

The records are retained on hearth/FLEET/status/+ (edge/fleet/records.py), so one subscription brings the last
record of every node at once; those that do not verify (unsigned, another fleet's, malformed) are counted and
left out. A node whose last record is older than QUIET (three missed minutes) has gone quiet.
"""

import collections
import time

import trio

from edge.fleet.mqtt import Broker, connect
from edge.fleet.records import RecordError, Status, check, fleet_name, parse_record

QUIET = 180.0          # seconds without a status record before a node counts as gone quiet
MAX_NODES = 100_000    # status records read at most (a broker that floods is cut off there)
BUSIEST = 5


async def collect(broker: Broker, fleet_key: str, client_id: str, wait: float = 2.0,
                  max_age: float = 7 * 86400) -> tuple[dict[str, Status], int]:
    """(node -> its newest verified status record, messages refused) after listening for wait seconds."""
    records: dict[str, Status] = {}
    refused = 0
    async with connect(broker, client_id, inbox=4096) as session:
        session.subscribe(f"hearth/{fleet_name(fleet_key)}/status/+")
        with trio.move_on_after(wait):
            async for topic, payload, _ in session.messages:
                try:
                    record = parse_record(payload)
                    check(record, topic, fleet_key, max_age=max_age)
                    if not isinstance(record, Status):
                        raise RecordError("not a status record")
                except RecordError:
                    refused += 1
                    continue
                held = records.get(record.node)
                if (held is None and len(records) < MAX_NODES) or (held is not None and record.seq > held.seq):
                    records[record.node] = record
        refused += session.dropped
    return records, refused


def summarize(records: dict[str, Status], refused: int = 0, now: float | None = None, quiet: float = QUIET) -> dict:
    """The fleet in numbers: counts by version, slot and health (of the nodes still reporting), the nodes gone
    quiet, the busiest by bytes served."""
    now = time.time() if now is None else now
    live = [r for r in records.values() if now - r.time <= quiet]
    gone = sorted((r for r in records.values() if now - r.time > quiet), key=lambda r: r.time)
    count = lambda field: dict(collections.Counter(getattr(r, field) or "-" for r in live).most_common())  # noqa: E731
    return {"nodes": len(records), "reporting": len(live), "refused": refused,
            "versions": count("version"), "slots": count("slot"), "health": count("health"),
            "quiet": [{"node": r.node, "last": r.time, "silent_s": int(now - r.time)} for r in gone],
            "busiest": [{"node": r.node, "served": r.served, "peers": r.peers, "uptime": r.uptime,
                         "health": r.health} for r in sorted(live, key=lambda r: -r.served)[:BUSIEST]],
            "unhealthy": [{"node": r.node, "health": r.health, "errors": r.errors}
                          for r in live if r.health != "ok"]}


def summary_lines(s: dict):
    """The summary for people."""
    join = lambda counts: ", ".join(f"{k} {v}" for k, v in counts.items()) or "-"   # noqa: E731
    yield f"nodes     {s['nodes']} known, {s['reporting']} reporting, {len(s['quiet'])} gone quiet" + \
        (f" ({s['refused']} records refused: unsigned, malformed or not the fleet's)" if s["refused"] else "")
    yield f"versions  {join(s['versions'])}"
    yield f"slots     {join(s['slots'])}"
    yield f"health    {join(s['health'])}"
    for r in s["unhealthy"]:
        yield f"  {r['health'].upper():8}  {r['node']}  ({r['errors']} errors)"
    for r in s["quiet"]:
        yield f"  QUIET     {r['node']}  silent for {r['silent_s']} s"
    if s["busiest"]:
        yield "busiest"
    for r in s["busiest"]:
        yield f"  {r['node']}  {r['served']:,} bytes served, {r['peers']} peers, up {r['uptime']} s"
