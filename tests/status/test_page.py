"""The status page's data and admin form over a real gateway, for a real agent (its store, peer table and
counters) that fetches a DAG from a real neighbour's transport on loopback."""

import json
import os
import tomllib

import pytest
import trio

from edge.agent import Agent
from edge.config import load_config
from edge.discovery.peers import PeerInfo
from edge.gateway import Gateway
from edge.identity import Identity
from edge.status import admin as adm
from edge.status.admin import Admin
from edge.status.history import Meter, traffic_totals
from edge.status.report import Report
from edge.status.settings import governor_settings
from edge.store import Store, content
from edge.store.pieces import PieceStore
from edge.transport.http import serve_http
from edge.transport.server import Policy, serve_transport

from tests.gateway.test_gateway import get, request

pytestmark = pytest.mark.trio


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


async def post(port, path, body, headers=None):
    def run():
        import http.client
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", path, body=json.dumps(body), headers={"content-type": "application/json",
                                                                     **(headers or {})})
        r = conn.getresponse()
        out = r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        conn.close()
        return out
    return await trio.to_thread.run_sync(run)


async def test_the_status_document_shows_the_node_its_neighbour_a_fetch_and_its_store(tmp_path):
    config = load_config(env={}, flags={"data_dir": str(tmp_path / "me"), "mdns": False})
    them = Identity.generate()
    (tmp_path / "file").write_bytes(os.urandom(3 << 20))
    with Store(str(tmp_path / "them")) as theirs, Store(config.data_dir) as mine:
        root = content.add(theirs, str(tmp_path / "file")).cid
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_transport, theirs, them, Policy(), "tcp://127.0.0.1:0")
            host, port = server.endpoint.removeprefix("tcp://").rsplit(":", 1)
            agent = Agent(config, Identity.generate(), mine)
            agent.peers.seen(PeerInfo(them.node_id, [host], int(port)))
            agent.pieces = PieceStore(str(tmp_path / "me"), 10**9)   # the share lent, no piece held yet
            clock = Clock()
            admin = Admin(config.data_dir, governor_settings(config.config_file, agent.governor, env={}), clock=clock)
            meter = Meter(lambda: traffic_totals(agent.governor))
            gw = Gateway(mine, status=Report(agent, meter).document, admin=admin)
            gport = (await nursery.start(lambda task_status: serve_http(gw, 0, host="127.0.0.1",
                                                                        task_status=task_status))).port
            seen = []
            await agent.fetch_dag(root, on_stored=lambda: seen.extend(f.progress() for f in agent.fetches))
            meter.sample()
            status, h, body = await get(gport, "/api/status")
            doc = json.loads(body)
            assert status == 200 and h["cache-control"] == "no-store" and "access-control-allow-origin" not in h
            whole = mine.stat(usage=True)
            # the fetch's progress: the DAG's total known once its root is here (the first batch is the root)
            assert len(seen) > 2 and all(p["root"] == str(root) for p in seen)
            assert all(p["total"] == whole["bytes"] for p in seen[1:])
            assert seen[-1]["done"] == whole["bytes"] and seen[-1]["percent"] == 100.0
            assert [p["done"] for p in seen] == sorted(p["done"] for p in seen)
            print(f"\nfetch progress samples: {[(p['done'], p['percent'], p['eta']) for p in seen]}")
            assert doc["node"]["id"] == agent.identity.node_id and doc["node"]["health"]["state"] == "ok"
            [n] = doc["neighbours"]
            assert n["node"] == them.node_id and n["link"] == "lan" and n["address"] == host
            history = doc["bandwidth"]["history"]
            assert history["series"] == ["served_lan", "served_wan", "fetched_lan", "fetched_wan"]
            assert history["rows"][-1][3] == whole["bytes"] and history["rows"][-1][4] == 0
            storage = doc["storage"]
            assert {k: storage[k] for k in ("blocks", "bytes", "pins", "pinned_bytes", "cached_bytes")} == \
                {k: whole[k] for k in ("blocks", "bytes", "pins", "pinned_bytes", "cached_bytes")}
            assert storage["cached_bytes"] == whole["bytes"] and storage["lent_bytes"] == 0
            assert storage["share"] == 10**9 and storage["lent_pieces"] == 0 and storage["protected"] == []
            # `hearth status` prints the same sections
            from edge.cli.statustext import page_text
            text = "\n".join(page_text(doc))
            for part in ("health    ok", f"LAN  {them.node_id}  {host}", "fetched from the LAN",
                         "pinned 0 bytes, cache", "fetches   none running", "jobs      transcodes running: 0 of 1"):
                assert part in text, text
            assert doc["fetches"] == [] and doc["admin"] == {
                "enabled": False, "session": False, "csrf": None,
                "settings": {"upload_limit": 0, "lan_upload_limit": 0, "download_limit": 0, "lan_download_limit": 0,
                             "limit_schedule": [], "wan_floor": 64 * 1024, "wear_budget": 0}}
            assert doc["bandwidth"]["caps"] == {"up_lan": 0, "up_wan": 0, "down_lan": 0, "down_wan": 0}
            assert doc["bandwidth"]["backoff"]["active"] is False and doc["storage"]["wear"]["budget"] == 0
            last = history["rows"][-1][0]   # a later poll asks only for the minutes from its last row on
            recent = json.loads((await get(gport, f"/api/status?since={last}"))[2])["bandwidth"]["history"]
            assert recent["rows"] == history["rows"][-1:] and not recent["whole"]
            assert (await get(gport, "/api/status?since=yesterday"))[0] == 400
            # the page: its own files only, by policy
            status, h, body = await get(gport, "/")
            assert status == 200 and b"/page/status.js" in body and "default-src 'none'" in \
                h["content-security-policy"] and "connect-src 'self'" in h["content-security-policy"]
            for name in ("status.js", "status.css"):
                assert (await get(gport, f"/page/{name}"))[0] == 200
            agent.pieces.close()
            nursery.cancel_scope.cancel()


async def test_the_admin_form_needs_a_password_a_session_and_its_csrf_token(tmp_path):
    config = load_config(env={}, flags={"data_dir": str(tmp_path / "me"), "mdns": False})
    os.makedirs(config.data_dir)
    with Store(config.data_dir) as mine:
        agent = Agent(config, Identity.generate(), mine)
        clock = Clock()
        admin = Admin(config.data_dir, governor_settings(config.config_file, agent.governor, env={}), clock=clock)
        meter = Meter(lambda: traffic_totals(agent.governor))
        gw = Gateway(mine, status=Report(agent, meter).document, admin=admin)
        async with trio.open_nursery() as nursery:
            port = (await nursery.start(lambda task_status: serve_http(gw, 0, host="127.0.0.1",
                                                                       task_status=task_status))).port
            # no password set: every change is refused, and the page shows no form
            status, _, body = await post(port, "/api/admin/login", {"password": "anything"})
            assert status == 403 and b"hearth admin password" in body
            await trio.to_thread.run_sync(adm.set_password, config.data_dir, "correct horse")
            status, h, body = await post(port, "/api/admin/login", {"password": "wrong horse"})
            assert status == 403 and b"wrong password" in body and h["retry-after"]
            status, h, body = await post(port, "/api/admin/login", {"password": "correct horse"})
            assert status == 429 and int(h["retry-after"]) >= 1        # waiting: the password is not even checked
            clock.t += 1.5
            status, h, body = await post(port, "/api/admin/login", {"password": "correct horse"},
                                         {"origin": "http://elsewhere.example"})
            assert status == 403 and b"own page" in body               # another origin
            for host, ok in (("rebound.example.com:4800", False), ("hearth.local", True), ("hearth", True),
                             ("[fd00::1]:4800", True), ("192.168.1.23:4800", True)):
                status, _, body = await post(port, "/api/admin/logout", {}, {"host": host})
                assert (status == 200) == ok and (ok or b"LAN name" in body), (host, status, body)
            status, h, body = await post(port, "/api/admin/login", {"password": "correct horse"})
            assert status == 200
            cookie = h["set-cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
            token = cookie.split(";")[0]
            csrf = json.loads(body)["csrf"]
            change = {"settings": {"upload_limit": "2.5M"}}
            assert (await post(port, "/api/admin/limits", change))[0] == 403                       # no session
            assert (await post(port, "/api/admin/limits", change, {"cookie": token}))[0] == 403    # no token
            assert (await post(port, "/api/admin/limits", change, {"cookie": token,
                                                                    "x-csrf-token": csrf[:-1] + "x"}))[0] == 403
            status, _, body = await post(port, "/api/admin/limits", {"settings": {"upload_limit": "lots"}},
                                         {"cookie": token, "x-csrf-token": csrf})
            assert status == 400 and b"upload_limit" in body and agent.policy.upload.rate == 0
            status, _, body = await post(port, "/api/admin/limits", {"settings": {"quota": "1G"}},
                                         {"cookie": token, "x-csrf-token": csrf})
            assert status == 400 and b"cannot be changed here" in body
            status, _, body = await post(port, "/api/admin/limits",
                                         {"settings": {"limit_schedule": ["25:00-26:00 5%"]}},
                                         {"cookie": token, "x-csrf-token": csrf})
            assert status == 400 and b"25:00" in body
            change = {"settings": {"upload_limit": "2.5M", "lan_download_limit": "10M", "wear_budget": "2G",
                                   "limit_schedule": ["01:00-07:00 100%", "mon-fri 18:00-23:00 20%"]}}
            status, _, body = await post(port, "/api/admin/limits", change, {"cookie": token, "x-csrf-token": csrf})
            settings = json.loads(body)["settings"]
            assert status == 200 and settings["upload_limit"] == 2_500_000 and settings["wear_budget"] == 2 * 10**9
            assert settings["limit_schedule"] == ["01:00-07:00 100%", "mon-fri 18:00-23:00 20%"]
            # in force now: the governor's configured caps, its lanes after the tick the change ran ...
            caps = agent.governor.caps
            assert caps.configured[("up", "wan")] == 2_500_000 and caps.lanes[("down", "lan")].rate == 10_000_000
            assert 0 < agent.policy.upload.rate <= 2_500_000                 # the schedule's share of the cap
            assert agent.governor.wear.budget == 2 * 10**9
            with open(config.config_file, "rb") as f:                        # ... and at the next start
                written = tomllib.load(f)
            assert written["upload_limit"] == "2.5M"
            assert written["limit_schedule"] == change["settings"]["limit_schedule"]
            again = load_config(env={}, flags={"data_dir": config.data_dir})
            assert again.upload_limit == 2_500_000 and again.lan_download_limit == 10_000_000
            doc = json.loads((await trio.to_thread.run_sync(request, port, "GET", "/api/status",
                                                            {"cookie": token}))[2])
            assert doc["admin"]["session"] and doc["admin"]["csrf"] == csrf
            # a GET changes nothing; the password removed: the session is over and changes are refused
            assert (await get(port, "/api/admin/limits"))[0] == 405
            await trio.to_thread.run_sync(adm.remove_password, config.data_dir)
            assert (await post(port, "/api/admin/limits", change, {"cookie": token, "x-csrf-token": csrf}))[0] == 403
            nursery.cancel_scope.cancel()
