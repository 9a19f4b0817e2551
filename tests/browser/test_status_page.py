"""The status page in headless Chromium, for a real agent with two real neighbours (agents on loopback): the
node and both neighbours shown, the bandwidth graph moving while a fetch runs, storage figures equal to
`hearth store stat --json`, every request the page makes going to the node itself, no console error, the admin
form refusing a wrong password; a screenshot is kept (its path printed)."""

import base64
import json
import os
import threading
import time

import pytest

from edge.status import admin as adm
from tests.agent.netns import Node
from tests.agent.test_shutdown import free_port
from .chromium import CHROMIUM, Browser

pytestmark = pytest.mark.skipif(not CHROMIUM, reason="Debian's chromium is not installed (`make test` installs it)")

LOOPBACK = {"HEARTH_MDNS": "false", "HEARTH_LISTEN": "127.0.0.1", "HEARTH_METRICS_PORT": "0"}
SIZE = 24 << 20        # bytes fetched from the two neighbours, each uploading at most RATE
RATE = "3M"


def test_the_status_page_shows_the_node_its_neighbours_and_a_fetch(tmp_path):
    data = os.urandom(SIZE)
    (tmp_path / "file").write_bytes(data)
    holders = []
    for name in ("b", "c"):
        node = Node(None, str(tmp_path / name), {**LOOPBACK, "HEARTH_LAN_UPLOAD_LIMIT": RATE})   # loopback is LAN
        cid = node.hearth("add", "-q", str(tmp_path / "file")).strip()
        holders.append((node, free_port()))
    gateway = free_port()
    a = Node(None, str(tmp_path / "a"), {**LOOPBACK, "HEARTH_GATEWAY_PORT": str(gateway)})
    adm.set_password(a.data_dir, "the right password")
    browser = None
    started = time.monotonic()
    try:
        for node, port in holders:
            node.start("--port", str(port))
        a.start("--port", str(free_port()), *[f"--peer={n.node_id}@127.0.0.1:{p}" for n, p in holders])
        origin = f"http://127.0.0.1:{gateway}"
        browser = Browser("about:blank", extra=["--window-size=1200,1400"])
        for domain in ("Network", "Runtime", "Log", "Page"):
            browser.call(f"{domain}.enable")
        browser.call("Page.navigate", url=origin + "/")
        browser.wait_for("window.hearthStatus && window.hearthStatus.updates > 0", what="the first update")
        assert a.node_id in browser.evaluate("document.getElementById('node').textContent")
        browser.wait_for("document.querySelectorAll('#neighbours tbody tr[data-node]').length === 2 && "
                         "window.hearthStatus.doc.neighbours.every(p => p.rtt_ms !== null)", timeout=20,
                         what="both neighbours, probed")
        shown = browser.evaluate("Array.from(document.querySelectorAll('#neighbours tbody tr[data-node]'))"
                                 ".map(tr => tr.dataset.node)")
        assert sorted(shown) == sorted(n.node_id for n, _ in holders)

        # a fetch from both neighbours: the graph's fetched-from-the-LAN line moves while it runs
        before = browser.evaluate("window.hearthStatus.paths.fetched_lan")
        got = {}
        fetcher = threading.Thread(target=lambda: got.update(r=a.run("get", cid, "-o", str(tmp_path / "copy"))))
        fetcher.start()
        browser.wait_for("window.hearthStatus.doc.fetches.length > 0 && window.hearthStatus.doc.fetches[0].total",
                         timeout=20, what="the fetch and its total on the page")
        during = browser.evaluate("window.hearthStatus.doc.fetches[0]")
        browser.wait_for(f"window.hearthStatus.paths.fetched_lan !== {json.dumps(before)} && "
                         "window.hearthStatus.doc.bandwidth.now.fetched_lan > 0", timeout=20,
                         what="the graph to move")
        still_running = fetcher.is_alive()
        fetcher.join(60)
        assert got["r"].returncode == 0, got["r"].stderr
        assert (tmp_path / "copy").read_bytes() == data
        print(f"\nthe page showed the fetch at {during['percent']}% of {during['total']:,} bytes "
              f"({during['rate']:,} B/s, eta {during['eta']} s); the graph moved while it ran: {still_running}")
        assert still_running

        # the storage figures are `hearth store stat --json`'s
        stat = json.loads(a.hearth("store", "stat", "--json"))
        keys = {"pinned": "pinned_bytes", "cached": "cached_bytes", "blocks": "blocks", "bytes": "bytes"}
        browser.wait_for(" && ".join(f"document.getElementById('storage').dataset.{k} === '{stat[v]}'"
                                     for k, v in keys.items()), timeout=10, what=f"the storage figures {stat}")
        assert stat["cached_bytes"] >= SIZE and stat["blocks"] > 0

        # the admin form: a wrong password is refused (and said so), the right one opens the limits form
        browser.wait_for("!document.getElementById('login').hidden", what="the login form")
        browser.evaluate("document.getElementById('password').value = 'not the password'; "
                         "document.querySelector('#login button').click()")
        browser.wait_for("window.hearthStatus.lastLogin === 403", what="the refusal")
        message = browser.wait_for("document.getElementById('admin-msg').textContent.includes('wrong') && "
                                   "document.getElementById('admin-msg').textContent", what="the refusal shown")
        assert "wrong password" in message and browser.evaluate("document.getElementById('limits').hidden")
        time.sleep(1.2)   # the back-off after one wrong password
        browser.evaluate("document.getElementById('password').value = 'the right password'; "
                         "document.querySelector('#login button').click()")
        browser.wait_for("!document.getElementById('limits').hidden", what="the limits form after logging in")

        shot = browser.call("Page.captureScreenshot", format="png")
        path = tmp_path / "status-page.png"
        path.write_bytes(base64.b64decode(shot["data"]))
        print(f"screenshot: {path}")

        # every request the page made went to this node; no console error, no exception
        browser.evaluate("1")   # the last events in
        requests = [e["params"]["request"]["url"] for e in browser.events if e["method"] == "Network.requestWillBeSent"]
        assert requests and all(u.startswith(origin + "/") for u in requests), [u for u in requests
                                                                              if not u.startswith(origin)]
        errors = [e for e in browser.events if e["method"] == "Runtime.exceptionThrown"
                  or (e["method"] == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
                  or (e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error"
                      and not (e["params"]["entry"].get("source") == "network"
                               and e["params"]["entry"].get("url", "").endswith("/api/admin/login")))]
        assert errors == [] and browser.evaluate("window.hearthStatus.errors") == []
        print(f"{len(requests)} requests, all to {origin}; {browser.evaluate('window.hearthStatus.updates')} "
              f"updates; whole test {time.monotonic() - started:.1f} s")
    finally:
        if browser:
            browser.close()
        a.stop()
        for node, _ in holders:
            node.stop()
