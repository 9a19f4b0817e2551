"""The status page's routes: the page (/), its data (/api/status, read-only, no login), and the admin form's
requests (/api/admin/…: log in, log out, change limits), which exist only where an admin password is set.

The page polls /api/status every 2 s rather than holding a server-sent-events stream: an endless response
would hold one of the gateway's connections per open page (a client address may hold only a quarter of them)
and would keep every drain waiting until the shutdown deadline (the gateway lets responses being sent finish);
the figures change at the history's 2 s sampling anyway, and a poll is one short request.

A change needs a session cookie (HttpOnly, SameSite=Strict) and the CSRF token bound to it in X-CSRF-Token, and
a request that names an Origin must come from this page's own; see edge/status/admin.py for the password, the
sessions and the limits on attempts. The password check (Argon2id, 64 MiB) runs in a worker thread, one at a
time."""

import ipaddress
import json
import urllib.parse

import trio

from edge.config import ConfigError
from edge.status import admin as adm
from edge.transport.http import Request, Response

# the page's own files, its data and nothing else: no request of the page can leave the node
PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
               "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
MAX_CHANGE = 4096          # bytes of a login or a change


def _json(status: int, value, headers: dict | None = None) -> Response:
    return Response(status, {"content-type": "application/json", "cache-control": "no-store", **(headers or {})},
                    json.dumps(value).encode())


# the names a household reaches its node by: a LAN's own suffixes, never a public domain (a page on a public name
# that its owner points at this node's address, DNS rebinding, must not get to try passwords from the browser)
LOCAL_SUFFIXES = (".local", ".lan", ".home", ".internal", ".home.arpa", ".localdomain", ".fritz.box")


def _local_host(request: Request) -> bool:
    """Whether the Host the request names is this node's address or a LAN name (no public domain)."""
    host = urllib.parse.urlsplit("//" + request.headers.get("host", "")).hostname or ""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    return bool(host) and ("." not in host or host.endswith(LOCAL_SUFFIXES))


def _same_origin(request: Request) -> bool:
    """A request that names an Origin (browsers do on every POST) must come from the node's own pages."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return urllib.parse.urlsplit(origin).netloc == request.headers.get("host", "")


class StatusRoutes:
    """The status page's routes of Gateway, which supplies status (async () -> dict, or None) and admin
    (edge.status.admin.Admin, or None)."""

    def _page(self) -> Response:
        resp = self._static("status.html")
        if resp.status == 200:
            resp.headers.update({"content-security-policy": PAGE_POLICY, "cache-control": "no-cache",
                                 "x-frame-options": "DENY", "referrer-policy": "no-referrer"})
        return resp

    async def _status(self, request: Request) -> Response:
        if self.status is None:
            return Response.text(404, "this gateway has no agent to report on")
        try:   # the minute of the last history row the page has: only the minutes from then on are sent
            since = float(request.query["since"]) if "since" in request.query else None
        except ValueError:
            return Response.text(400, "since= takes the time of a history row (seconds since 1970)")
        doc = await self.status(since)
        stored = await self.admin.stored() if self.admin is not None else None
        # the CSRF token of this browser's session, if it has one: only this node's own pages can read this
        # answer (it carries no CORS header), and a change needs it besides the cookie
        csrf = self.admin.sessions.csrf(adm.cookie_of(request.headers), stored) if stored is not None else None
        doc["admin"] = {"enabled": stored is not None, "session": csrf is not None, "csrf": csrf}
        if self.admin is not None and self.admin.settings is not None:
            doc["admin"]["settings"] = self.admin.settings.values()
        return _json(200, doc)

    async def _admin(self, request: Request) -> Response:
        admin = self.admin
        if request.method != "POST":
            return Response.text(405, "the admin form POSTs to /api/admin/login, /logout and /limits",
                                 {"allow": "POST"})
        if admin is None:
            return Response.text(404, "this gateway has no admin form")
        stored = await admin.stored()
        if stored is None:
            return Response.text(403, "no admin password is set on this node, so nothing can be changed here; "
                                 "set one with `hearth admin password` on the node")
        if not _same_origin(request):
            return Response.text(403, "a change must come from this node's own page")
        if not _local_host(request):
            return Response.text(403, "open this page by the node's address (or a LAN name such as hearth.local) "
                                 "to change anything")
        if len(request.body) > MAX_CHANGE:
            return Response.text(413, f"at most {MAX_CHANGE} bytes")
        try:
            body = json.loads(request.body or b"{}")
        except (ValueError, RecursionError):
            return Response.text(400, "send a JSON object")
        if not isinstance(body, dict):
            return Response.text(400, "send a JSON object")
        what = request.path[len("/api/admin/"):]
        token = adm.cookie_of(request.headers)
        if what == "login":
            return await self._login(request, body, stored)
        if what == "logout":
            admin.sessions.close(token)
            return _json(200, {"session": False}, {"set-cookie": adm.session_cookie("", 0)})
        if what != "limits":
            return Response.text(404, "the admin form POSTs to /api/admin/login, /logout and /limits")
        if not admin.sessions.valid(token, request.headers.get("x-csrf-token"), stored):
            return Response.text(403, "log in first (the session is missing, expired, or its CSRF token is wrong)")
        if admin.settings is None:
            return Response.text(404, "nothing can be changed on this node")
        changes = body.get("settings")
        try:
            checked = admin.settings.check(changes)
        except (ConfigError, ValueError) as exc:
            return Response.text(400, str(exc))
        await trio.to_thread.run_sync(admin.settings.write, changes)   # hearth.toml, for the next start
        return _json(200, admin.settings.apply(checked))                 # in force now

    async def _login(self, request: Request, body: dict, stored: bytes) -> Response:
        admin = self.admin
        client = request.peer
        wait = admin.attempts.wait(client)
        if wait > 0:
            return Response.text(429, f"too many wrong passwords; try again in {wait:.0f} s",
                                 {"retry-after": str(int(wait) + 1)})
        password = body.get("password")
        if not isinstance(password, str) or not password:
            return Response.text(400, "send {\"password\": \"...\"}")
        async with admin.checking:   # the wait above is decided again once it is this attempt's turn
            wait = admin.attempts.wait(client)
            if wait > 0:
                return Response.text(429, f"too many wrong passwords; try again in {wait:.0f} s",
                                     {"retry-after": str(int(wait) + 1)})
            ok = await trio.to_thread.run_sync(adm.check_password, stored, password)
            if not ok:
                delay = admin.attempts.failed(client)
                return Response.text(403, f"wrong password; the next try is possible in {delay:.0f} s",
                                     {"retry-after": str(int(delay) + 1)})
        admin.attempts.succeeded(client)
        token, csrf = admin.sessions.open(stored)
        return _json(200, {"session": True, "csrf": csrf}, {"set-cookie": adm.session_cookie(token)})
