"""A hostile host on the LAN, run in its own network namespace by test_mdns_attacks.py: announces bad records
over real multicast with zeroconf, then a flood, then forged goodbyes, and exits.

    python mdns_attacker.py MY_ADDRESS VICTIM_ID VICTIM_ADDRESS VICTIM_PORT FLOOD SECONDS

Prints one line per kind of announcement sent, and "done" at the end.
"""

import asyncio
import os
import socket
import sys

from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from edge.identity import Identity

from node_ids import bad_point_id, padding_alias, sign_alias   # run as a script: this folder is on sys.path

SERVICE = "_hearth._tcp.local."


def aliases(node: str) -> list[str]:
    return [padding_alias(node), sign_alias(node)]


def txt(node, port, **extra):
    return {"id": node, "v": "1", "tp": str(port), "caps": "store,probe,getmany", "free": "1000", **extra}


async def main(me, victim, victim_address, victim_port, flood, seconds):
    azc = AsyncZeroconf(ip_version=IPVersion.V4Only, interfaces=[me])
    records = []   # (label, instance name, properties, addresses, port)
    records.append(("bad point", f"bad{os.getpid()}", txt(bad_point_id(), 4801), [me], 4801))
    for n, alias in enumerate(aliases(victim)):
        records.append((f"alias {n}", f"alias{n}", txt(alias, 4801), [me], 4801))
    records.append(("victim id from here", "impostor", txt(victim, 4801), [me], 4801))
    records.append(("victim id at a loopback address", "loop", txt(victim, victim_port), ["127.0.0.1"],
                    victim_port))
    records.append(("huge TXT", "huge", txt(Identity.generate().node_id, 4801,
                                             **{f"k{i}": "x" * 200 for i in range(20)}), [me], 4801))
    records.append(("port 0", "port0", txt(Identity.generate().node_id, 0), [me], 4801))
    records.append(("text port", "textport", txt(Identity.generate().node_id, "80\n<0>"), [me], 4801))
    records.append(("control characters", "ctl", txt(Identity.generate().node_id, 4801,
                                                                 caps="a\n<0>b"), [me], 4801))
    records.append(("the victim's own instance name from here", victim, txt(victim, 4801), [me], 4801))
    for i in range(flood):
        records.append(("flood", f"flood{i}", txt(Identity.generate().node_id, 4801), [me], 4801))
    infos = []
    kinds = {}
    for label, name, props, addresses, port in records:
        try:
            info = AsyncServiceInfo(SERVICE, f"{name}.{SERVICE}", port=port, properties=props,
                                    addresses=[socket.inet_aton(a) for a in addresses], server=f"{name}.local.")
            await azc.async_register_service(info, cooperating_responders=True, strict=False)
        except Exception as exc:   # noqa: BLE001 - zeroconf refused to send it; the report says so
            print(f"{label}: zeroconf would not send it: {exc!r}", flush=True)
            continue
        infos.append(info)
        kinds[label] = kinds.get(label, 0) + 1
    for label, n in kinds.items():
        print(f"announced {label} x{n}", flush=True)
    await asyncio.sleep(seconds)
    for info in infos:   # goodbyes, the victim's own name among them
        await azc.async_unregister_service(info)
    print(f"goodbyes sent for {len(infos)} names", flush=True)
    await azc.async_close()
    print("done", flush=True)


if __name__ == "__main__":
    me, victim, victim_address, victim_port, flood, seconds = sys.argv[1:7]
    asyncio.run(main(me, victim, victim_address, int(victim_port), int(flood), float(seconds)))
