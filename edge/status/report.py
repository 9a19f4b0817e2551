"""The status page's document: this node, its neighbours, bandwidth now and over the day, storage, streams, and
the fetches running, assembled from the agent's own figures (its status, peer table, counters and store).

Everything that touches the disk (the store's stat, the walk of the pins that splits pinned from cached bytes,
the stream names, /proc files) runs in worker threads through the store's async face; the walk of the pins is
done again only when the pins have changed (or every USAGE_EVERY seconds), not on every poll of the page.
"""

import socket
import time

import trio

from edge.media.slots import running
from edge.status.history import Meter

USAGE_EVERY = 60.0      # seconds the bytes pins keep are reused while the pins stay the same
MAX_STREAMS = 200       # streams listed on the page (a box with more lists the first, by name)


def _slot() -> str | None:
    """The A/B slot this system booted (its kernel command line), None where it is not a Hearth image."""
    from edge.provisioning.slots import UpdateError, current_slot
    try:
        with open("/proc/cmdline") as f:
            return current_slot(f.read())
    except (OSError, UpdateError):
        return None


class Report:
    """Builds the page's document for one agent (duck-typed: anything with its status(), peer_list(), store,
    config and policy)."""

    def __init__(self, agent, meter: Meter):
        self.agent, self.meter = agent, meter
        self._usage: tuple | None = None      # (key the store had, when, {"pinned_bytes", "cached_bytes"})
        self._fixed: dict | None = None       # what does not change while the agent runs (slot, host name)

    async def _static(self) -> dict:
        if self._fixed is None:
            slot = await trio.to_thread.run_sync(_slot)
            self._fixed = {"slot": slot, "host": socket.gethostname()}
        return self._fixed

    async def _usage_of(self, stat: dict) -> dict:
        """Pinned and cached bytes as `hearth store stat` counts them. What pins keep changes only when the pins
        do (a live stream re-pins its root with each segment), so the walk of the pins' DAGs runs again only
        then (or every USAGE_EVERY seconds); the cache is the rest of the store's bytes, fresh on every poll."""
        key = tuple(sorted((p["cid"], p["kind"]) for p in await self.agent.store.pins()))
        now = time.monotonic()
        if self._usage is None or self._usage[0] != key or now - self._usage[1] > USAGE_EVERY:
            full = await self.agent.store.stat(usage=True)
            self._usage = (key, now, full["pinned_bytes"])
        pinned = self._usage[2]
        return {"pinned_bytes": pinned, "cached_bytes": max(0, stat["bytes"] - pinned)}

    async def document(self, since: float | None = None) -> dict:
        """The page's document; since: the history only from that minute on (see History.series)."""
        agent = self.agent
        info = await agent.status()
        fixed = await self._static()
        stat = info["store"]
        usage = await self._usage_of(stat)
        streams = await agent.store.names("stream")
        here = await trio.to_thread.run_sync(running, agent.config.data_dir, agent.config.media_jobs)
        pieces = getattr(agent, "pieces", None)   # pieces held for neighbours' protected pins (edge/store/pieces.py)
        lent = await trio.to_thread.run_sync(pieces.stat) if pieces is not None else {}
        peers = agent.peer_list()
        rates = self.meter.rates
        governor = info.get("governor") or {}   # the governor's figures (edge/governor/governor.py)
        return {
            "node": {"name": agent.config.node_name or fixed["host"], "id": info["node"], "version": info["version"],
                     "slot": fixed["slot"], "uptime": info["uptime"], "started": round(time.time() - info["uptime"]),
                     "admission": info["admission"], "endpoint": info["endpoint"], "health": health(info)},
            "neighbours": [{"node": p["node"], "link": self._link(p),
                            "address": p["addresses"][0] if p["addresses"] else None, "source": p["source"],
                            "score": p["score"], "rtt_ms": p["rtt_ms"], "throughput": p["throughput"],
                            "uptime": p["uptime"], "rejected": p["rejected"]} for p in peers],
            "bandwidth": {"now": {k: round(v) for k, v in rates.items()}, "history": self.meter.history.series(since),
                          "caps": governor.get("caps", {}), "backoff": governor.get("backoff"),
                          "schedule_share": governor.get("schedule_share"),
                          "clock_synchronised": governor.get("clock_synchronised"),
                          "served": info["served"].get("bytes_served", 0), "fetched": info["fetched"]["bytes"]},
            "storage": {"blocks": stat["blocks"], "bytes": stat["bytes"], "pins": stat["pins"], **usage,
                        "wear": governor.get("wear"),
                        "lent_bytes": lent.get("bytes", 0), "lent_pieces": lent.get("pieces", 0),
                        "share": lent.get("share", 0), "protected": info.get("protected", []),
                        "quota": stat["quota"], "quota_from": stat["quota_from"],
                        "disk_free": stat["disk_free"], "disk_size": stat["disk_size"],
                        "quarantined": stat["quarantined"], "evicted": stat["evicted"]},
            "streams": [{"name": r["name"], "cid": r["cid"], "kind": r["meta"].get("kind", "vod"),
                         "duration": r["meta"].get("duration"), "url": f"/watch/{r['name']}/"}
                        for r in sorted(streams, key=lambda r: r["name"])[:MAX_STREAMS]],
            "fetches": info.get("fetches", []),
            "jobs": jobs_of(agent, here),
            "services": sorted(info["services"]),
        }


    def _link(self, peer: dict) -> str:
        """LAN or WAN by the neighbour's address, as the governor's caps class it (met through the fleet
        broker and unclassified: WAN)."""
        classifier = getattr(getattr(self.agent, "governor", None), "classifier", None)
        if classifier is not None and peer["addresses"]:
            return classifier.classify(peer["addresses"][0])
        return "wan" if peer["source"] == "fleet" else "lan"


def jobs_of(agent, here: list) -> dict:
    """The transcodes: those running on this box (`here`: what each held slot says, edge/media/slots.py), and the
    jobs this node runs for neighbours (`for`) and hands to them (`on`), each with its seconds of source done, in
    all, and the percent (edge/media/jobs.py)."""
    def job(j: dict, role: str) -> dict:
        done, total = float(j.get("done") or 0), float(j.get("duration") or 0)
        return {"role": role, "id": j.get("id"), "peer": j.get("peer"), "state": j.get("state"),
                "ladder": j.get("ladder"), "done": done, "total": total, "speed": j.get("speed"),
                "percent": round(min(100.0, 100 * done / total), 1) if total else None}
    worker, offloads = getattr(agent, "worker", None), getattr(agent, "offloads", None)
    listed = [job(j, "for") for j in (worker.listed() if worker else [])]
    listed += [job(j.as_dict(), "on") for j in (offloads.jobs.values() if offloads else [])]
    return {"transcodes": len(here), "slots": agent.config.media_jobs,
            "here": [{"what": h["what"], "pid": h["pid"], "started": h["started"]} for h in here], "neighbours": listed}


def health(info: dict) -> dict:
    """"ok", or "degraded" with the reasons, from what the agent's status already says."""
    problems = []
    cert = info.get("certificate")
    if cert and cert.get("failures"):
        problems.append(f"certificate renewal failing: {cert.get('last_error')}")
    watchdog = (info.get("services") or {}).get("watchdog") or {}
    if (watchdog.get("stuck_for") or 0) > 20:
        problems.append(f"the transport has been stuck for {watchdog['stuck_for']:.0f} s")
    stat = info["store"]
    if stat.get("quarantined"):
        problems.append(f"{stat['quarantined']} corrupt block(s) quarantined (re-add or fetch the content)")
    if stat.get("reserve") and stat["disk_free"] < stat["reserve"]:
        problems.append("free disk is under the reserve: cached blocks make room, then writes are refused")
    wear = (info.get("governor") or {}).get("wear") or {}
    if wear.get("spent"):
        problems.append("today's SD-wear budget is spent: nothing more is cached until tomorrow (serving goes on)")
    plane = (info.get("services") or {}).get("fleet")
    if plane and not plane.get("connected"):
        problems.append(f"not connected to the fleet broker ({plane.get('last_error') or 'connecting'})")
    return {"state": "degraded" if problems else "ok", "problems": problems}
