"""A host on one side of a router, run in its own namespace by test_f21_leaks.py: browses for Hearth over real
multicast for a while and prints one JSON line per record it resolves (what anyone there can read).

    python mdns_browse.py MY_ADDRESS SECONDS
"""

import asyncio
import json
import sys

from zeroconf import IPVersion, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

SERVICE = "_hearth._tcp.local."


async def main(me: str, seconds: float):
    azc = AsyncZeroconf(ip_version=IPVersion.V4Only, interfaces=[me])
    names: set[str] = set()

    def changed(zeroconf, service_type, name, state_change):
        if state_change is not ServiceStateChange.Removed:
            names.add(name)
    browser = AsyncServiceBrowser(azc.zeroconf, [SERVICE], handlers=[changed])
    await asyncio.sleep(seconds)
    for name in sorted(names):
        info = AsyncServiceInfo(SERVICE, name)
        if await info.async_request(azc.zeroconf, 2000):
            props = {k.decode(): (v or b"").decode("ascii", "replace") for k, v in (info.properties or {}).items()}
            print(json.dumps({"name": name, "addresses": info.parsed_addresses(IPVersion.V4Only),
                              "txt": props}), flush=True)
    await browser.async_cancel()
    await azc.async_close()
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2])))
