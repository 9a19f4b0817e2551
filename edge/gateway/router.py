"""Gateway: the HTTP gateway's handler, which sends each request to its route."""

import trio

from edge.gateway.answers import RETRY_AFTER, cors, failure_response, quoted
from edge.gateway.budget import FetchBudget
from edge.gateway.content import ContentRoutes
from edge.gateway.signaling import Signaling
from edge.gateway.statuspage import StatusRoutes
from edge.gateway.streams import WEB_DIR, StreamRoutes
from edge.service import Counters
from edge.transport.http import Request, Response

READ_THREADS = 4


def gateway_counters(registry=None) -> Counters:
    return Counters(registry, {"requests": ("gateway_requests_total", "HTTP gateway requests"),
                               "bytes": ("gateway_bytes_total", "content bytes sent by the HTTP gateway")})


class Gateway(ContentRoutes, StreamRoutes, Signaling, StatusRoutes):
    """Routes requests to the store. `fetch(cid)` (async, optional) brings a missing DAG from neighbours;
    `fetch_later(cid)` (optional) starts that on its own and returns a handle (edge.fetch.Background) that a
    file's body waits on block by block, so the first bytes go out while the rest arrive. `status` (async, optional)
    gives the status page's document; `admin` (edge.gateway.statuspage.Admin, optional) its admin form."""

    def __init__(self, store, *, fetch=None, fetch_later=None, web_dir: str = WEB_DIR, webrtc=None,
                 draining=lambda: False, budget: FetchBudget | None = None, counters: Counters | None = None,
                 neighbourhood=None, status=None, admin=None, live=None):
        self.store = store
        self.live = live                  # (LiveService, Fanout): live windows in memory, ours and followed
        self.neighbourhood = neighbourhood   # edge.discovery.streams.Neighbourhood: the neighbours' streams
        self.draining = draining          # true while the agent stops: new requests get 503
        self.budget = budget or FetchBudget()
        self._charged: dict = {}          # id(Background) -> [client, bytes charged so far]
        self.webrtc = webrtc              # (bridge, WebRTCService) when browsers may use data channels
        self.fetch = fetch
        self.fetch_later = fetch_later
        self.web_dir = web_dir
        self.limiter = trio.CapacityLimiter(READ_THREADS)
        self.counters = counters if counters is not None else gateway_counters()
        self.status = status
        self.admin = admin

    async def _run(self, fn, *args):
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    async def __call__(self, request: Request) -> Response:
        self.counters.inc("requests")
        if self.draining():
            return Response.text(503, "this node is stopping; retry shortly (or ask another node)",
                                 {"retry-after": str(RETRY_AFTER), "connection": "close"})
        try:
            return await self._route(request)
        except Exception as exc:   # noqa: BLE001 - mapped by type below; what is not mapped goes on (a 500)
            resp = failure_response(exc)
            if resp is None:
                raise
            return resp

    async def _route(self, request: Request) -> Response:
        if request.path == "/webrtc" or request.path.startswith("/webrtc/"):
            return await self._signal(request)
        if request.path.startswith("/api/admin/"):
            return await self._admin(request)
        if request.method not in ("GET", "HEAD"):
            if request.method == "OPTIONS":   # a preflight: other origins only for what is public by design
                public = request.path.startswith(("/ipfs/", "/streams/"))
                return Response(204, {"allow": "GET, HEAD, OPTIONS", **(cors() if public else {})})
            return Response.text(405, f"{request.method} is not served here; use GET or HEAD", {"allow": "GET, HEAD"})
        path = request.path
        if path in ("/", "/index.html"):
            return self._page()
        if path in ("/api/status", "/api/status/"):
            return await self._status(request)
        if path.startswith("/page/"):   # the status page's script and style
            return self._static(path[len("/page/"):])
        if path == "/watch":
            return Response(301, {"location": "/watch/"})
        if path.startswith("/watch/"):
            return self._watch(path[len("/watch/"):])
        if path.startswith("/player/"):
            return self._static(path[len("/player/"):])
        if path in ("/api/streams", "/api/streams/"):
            return await self._streams()
        if path.startswith("/streams/"):
            return await self._stream(request)
        if path.startswith("/ipfs/"):
            return await self._ipfs(request, path[len("/ipfs/"):])
        return Response.text(404, f"nothing at {quoted(path)}; try / for the status page, /watch/ for the player, "
                                  "/api/streams, /ipfs/CID")
