"""Stream URLs from `hearth media import` are the running agent's (its address and real gateway port), and they
serve: real processes, loopback only."""

import http.client
import json

from tests.agent.netns import Node
from tests.agent.test_shutdown import free_port

LOOPBACK = {"HEARTH_MDNS": "false", "HEARTH_LISTEN": "127.0.0.1", "HEARTH_TRANSPORT_PORT": "0",
            "HEARTH_METRICS_PORT": "0"}


def test_import_prints_the_running_agents_url(media, tmp_path):
    gateway = free_port()    # not the default 4800: the URL must come from the agent, not from defaults
    node = Node(None, str(tmp_path / "n"), LOOPBACK).start("--gateway-port", str(gateway))
    try:
        r = node.run("media", "import", media["av"], "--name", "clip", "--ladder", "240p", "--segment-seconds", "1",
                     "--preset", "ultrafast", "--json")
        assert r.returncode == 0, r.stderr
        url = json.loads(r.stdout)["url"]
        print(url)
        assert url == f"http://127.0.0.1:{gateway}/watch/clip/"
        conn = http.client.HTTPConnection("127.0.0.1", gateway, timeout=10)
        conn.request("GET", "/watch/clip/")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        node.stop()
