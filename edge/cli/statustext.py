"""The status page's sections as `hearth status` prints them: health, neighbours, bandwidth, storage, streams,
fetches and jobs (the same document the page draws, from the agent's control socket)."""

from edge.units import human

CAP_OF = {"served_lan": "up_lan", "served_wan": "up_wan", "fetched_lan": "down_lan", "fetched_wan": "down_wan"}
SERIES = (("served_lan", "served to the LAN"), ("served_wan", "served to the WAN"),
          ("fetched_lan", "fetched from the LAN"), ("fetched_wan", "fetched from the WAN"))


def rate(n: float) -> str:
    return f"{n / 1e6:.1f} MB/s" if n >= 1e5 else f"{n / 1e3:.1f} kB/s"


def duration(seconds: float) -> str:
    s = int(seconds + 0.5)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def page_text(page: dict):
    node = page["node"]
    health = node["health"]
    yield (f"\nhealth    {health['state']}" + "".join(f"\n          {p}" for p in health["problems"])
           + f"\nname      {node['name']} (slot {node['slot'] or '-, not an image'})")
    yield "\nneighbours"
    if not page["neighbours"]:
        yield "  none yet"
    for p in page["neighbours"]:
        rtt = "-" if p["rtt_ms"] is None else f"{p['rtt_ms']} ms"
        speed = "-" if p["throughput"] is None else rate(p["throughput"])
        note = f"  REJECTED: {p['rejected']}" if p["rejected"] else ""
        yield (f"  {p['link'].upper()}  {p['node']}  {p['address'] or '-'}  score {p['score']}  rtt {rtt}  "
               f"{speed}{note}")
    bw = page["bandwidth"]
    rows = bw["history"]["rows"]
    hour = rows[-60:]
    caps = bw.get("caps") or {}
    yield f"\nbandwidth (history: {len(rows)} minute(s) since the agent started)"
    for i, (key, label) in enumerate(SERIES, 1):
        cap = caps.get(CAP_OF[key])
        yield (f"  {label:22} now {rate(bw['now'][key]):>10}   last hour {human(sum(r[i] for r in hour)):>10}   "
               f"24 h {human(sum(r[i] for r in rows)):>10}   cap {rate(cap) if cap else 'none'}")
    backoff, share = bw.get("backoff"), bw.get("schedule_share")
    if share:
        clock = "" if bw.get("clock_synchronised") else " (the clock is not set yet: the most conservative entry)"
        yield (f"  schedule: {share['fraction']:.0%} of the WAN caps"
               + (f", at most {rate(share['rate'])}" if share["rate"] else "") + clock)
    if backoff:
        state = f"BACKED OFF to {rate(backoff['rate'])}" if backoff["active"] else "not backed off"
        yield (f"  back-off: {state} (signal {backoff['signal']}, floor {rate(backoff['floor'])}); "
               f"{backoff['events']} since the agent started")
    st = page["storage"]
    quota = "none" if st["quota"] is None else f"{human(st['quota'])} (from {st['quota_from']})"
    yield (f"\nstorage   pinned {human(st['pinned_bytes'])}, cache {human(st['cached_bytes'])}, lent to neighbours "
           f"{human(st['lent_bytes'])}; {st['blocks']:,} blocks, {st['pins']} pins; quota {quota}; disk free "
           f"{human(st['disk_free'])} of {human(st['disk_size'])}")
    yield (f"lent      {human(st.get('lent_bytes', 0))} in {st.get('lent_pieces', 0)} piece(s) to neighbours, "
           f"of a share of {human(st.get('share', 0))}")
    for p in st.get("protected", []):
        health = "not audited yet" if p["healthy"] is None else f"{p['healthy']} of {p['pieces']} pieces healthy"
        yield f"protected {p['cid']} {p['k']}+{p['m']} on {p['holders']} holder(s): {health}"
    wear = st.get("wear")
    if wear and wear["budget"]:
        yield (f"SD wear   {human(wear['written_today'])} written today of a budget of {human(wear['budget'])}"
               + ("; SPENT: nothing more is cached today" if wear["spent"] else ""))
    streams = page["streams"]
    yield "streams   " + (", ".join(f"{s['name']} ({s['kind']})" for s in streams) if streams else "none")
    jobs = page["jobs"]
    yield f"jobs      transcodes running: {jobs['transcodes']} of {jobs['slots']} slot(s)"
    for h in jobs.get("here", []):
        yield f"          {h['what'] or 'a transcode'} (pid {h['pid']})"
    for j in jobs.get("neighbours", []):
        where = "for" if j["role"] == "for" else "on"
        yield (f"          {where} {str(j['peer'])[:14]}…: {j['state']}, {duration(j['done'])}"
               + (f" of {duration(j['total'])} ({j['percent']:.0f}%)" if j["total"] else ""))
    if not page["fetches"]:
        yield "fetches   none running"
    for f in page["fetches"]:
        line = f"fetching  {f['root']}: {human(f['done'])}"
        if f["total"]:
            line += f" of {human(f['total'])} ({f['percent']:.0f}%)"
        if f["rate"]:
            line += f", {rate(f['rate'])}"
        if f["eta"] is not None:
            line += f", {duration(f['eta'])} left"
        yield line
