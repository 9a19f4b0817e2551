"""The local control socket: `hearth status` and `hearth peers` ask the running agent over a Unix socket
(owner-only). One JSON request line in, one JSON reply line out."""

import json
import logging
import os
import socket
import time

import trio

from edge.errors import EdgeError
from edge.ipld.cid import parse_cid
from edge.isolation import isolated
from edge.logsafe import printable
from edge.service import Handle

log = logging.getLogger(__name__)
MAX_REQUEST = 4096
MAX_CLIENTS = 32          # control connections at once; more are closed at once (the socket is owner-only)
READ_TIMEOUT = 10.0       # seconds to send the request line
ANSWER_TIMEOUT = 600.0    # seconds an answer may take (a fetch of a large DAG)


class ControlHandle(Handle):
    def __init__(self, path: str, answered: list, accepting: trio.CancelScope):
        super().__init__("control")
        self.path = path
        self._answered = answered
        self._accepting = accepting

    def stats(self) -> dict:
        return {"path": self.path, "clients": self._answered[0]}

    async def drain(self) -> None:
        """Take no new client (a `hearth status` during a stop finds no agent); answers running are cut when
        the agent cancels the service."""
        self._accepting.cancel()


async def serve_control(path: str, handlers: dict, *, task_status=trio.TASK_STATUS_IGNORED):
    """Answer {"cmd": name, ...} with await handlers[name](request) until cancelled; reports a ControlHandle."""
    if os.path.exists(path):
        os.unlink(path)   # a stale socket from a run that died; the agent holds the store lock meanwhile
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        await sock.bind(path)
    finally:
        os.umask(old)
    sock.listen(16)
    listener = trio.SocketListener(sock)

    answered = [0]

    async def answer(stream):
        answered[0] += 1
        raw = b""
        with trio.move_on_after(READ_TIMEOUT):
            while b"\n" not in raw and len(raw) < MAX_REQUEST:
                chunk = await stream.receive_some(MAX_REQUEST)
                if not chunk:
                    break
                raw += chunk
        try:
            request = json.loads(raw.decode() or "{}")
            fn = handlers[request.get("cmd")]
        except (ValueError, AttributeError, KeyError, TypeError, RecursionError):   # deep nesting: RecursionError
            reply = {"ok": False, "error": f"unknown request; known: {', '.join(sorted(handlers))}"}
        else:
            reply = None
            with trio.move_on_after(ANSWER_TIMEOUT):
                try:
                    reply = {"ok": True, "result": await fn(request)}
                except EdgeError as exc:
                    reply = {"ok": False, "error": str(exc)}
                except Exception as exc:   # a bug must not take the control socket down with it
                    log.exception("control request %r failed", request.get("cmd"))
                    reply = {"ok": False, "error": f"the agent failed: {exc!r} (see its log)"}
            if reply is None:
                reply = {"ok": False, "error": f"no answer within {ANSWER_TIMEOUT:g} s; see the agent's log"}
        with trio.move_on_after(READ_TIMEOUT):
            await stream.send_all(json.dumps(reply).encode() + b"\n")

    try:
        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as accepting:
                task_status.started(ControlHandle(path, answered, accepting))
                handler = isolated(answer, max_clients=MAX_CLIENTS, what="control socket", log=log)
                await trio.serve_listeners(handler, [listener], handler_nursery=nursery)
            await listener.aclose()   # drained: no new client; the answers running go on until cancelled
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def ask(path: str, cmd: str, timeout: float | None = 600.0, **args):
    """The running agent's answer to cmd (blocking; for the CLI). ConnectionError if no agent runs."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            _connect(s, path, timeout)
        except (FileNotFoundError, ConnectionRefusedError):
            raise ConnectionError(f"no agent is running with its control socket at {path}; start one with "
                                  "`hearth run`") from None
        s.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        raw = b""
        while not raw.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            raw += chunk
    if not raw:
        raise ConnectionError("the agent closed the connection without answering; see its log")
    reply = json.loads(raw)
    if not reply.get("ok"):
        raise ConnectionError(reply.get("error", "the agent refused the request"))
    return reply["result"]


def agent_url(data_dir: str, path: str = "") -> tuple[str | None, str]:
    """(URL of path on the running agent's gateway, "") or (None, why there is none): the agent's real address
    and port, never this command's defaults."""
    try:
        url = ask(socket_path(data_dir), "status", timeout=5).get("gateway_url")
    except (ConnectionError, OSError):
        return None, "no agent is running to serve it yet; `hearth run` starts one (`hearth status` then shows the URL)"
    if not url:
        return None, "the running agent's gateway is off (gateway_port = 0); set a port and restart it"
    return url.rstrip("/") + "/" + path.lstrip("/"), ""


def socket_path(data_dir: str) -> str:
    return os.path.join(data_dir, "control.sock")


def agent_answers(data_dir: str) -> bool:
    """Whether an agent answers on its control socket (a socket file can outlive an agent that was killed)."""
    try:
        ask(socket_path(data_dir), "status", timeout=5)
        return True
    except (ConnectionError, OSError):
        return False


def agent_fetch(data_dir: str, cid, progress=None, every: float = 0.5) -> bool:
    """Have the running agent fetch the DAG under cid from its neighbours (blocking; for the CLI). False where no
    agent answers (so no neighbour was asked); ConnectionError where the fetch failed. progress(info), if given,
    is called from a thread every `every` seconds with where the fetch is (a fetch can take minutes): a dict
    with blocks and bytes fetched since this began, and the agent's figures for this root when it has them
    (total: the DAG's bytes, done, percent, rate, eta: seconds left; see edge.fetch.Fetch.progress), and
    progress(None) once at the end if it was called at all."""
    import threading
    sock = socket_path(data_dir)
    if not agent_answers(data_dir):
        return False
    done = threading.Event()
    if progress is not None:
        threading.Thread(target=_watch_fetched, args=(sock, str(cid), done, progress, every), daemon=True).start()
    try:
        ask(sock, "fetch", timeout=None, cid=str(cid))   # the agent gives up on a silent neighbour itself
    finally:
        done.set()
    return True


def _watch_fetched(sock: str, root: str, done, progress, every: float) -> None:
    try:
        start = ask(sock, "status", timeout=5)["fetched"]
        shown = False
        while not done.wait(every):
            info = ask(sock, "status", timeout=5)
            now = info["fetched"]
            mine = next((f for f in info.get("fetches", ()) if f.get("root") == root), {})
            progress({**mine, "blocks": now["blocks"] - start["blocks"], "bytes": now["bytes"] - start["bytes"]})
            shown = True
        if shown:
            progress(None)
    except (ConnectionError, OSError, KeyError):
        pass   # only progress: the fetch itself reports what went wrong


def _connect(s: socket.socket, path: str, timeout: float | None) -> None:
    """Connect; while the agent's backlog is full (a Unix socket with a timeout says EAGAIN then), retry until
    timeout instead of failing at once."""
    deadline = time.monotonic() + (timeout if timeout is not None else 600.0)
    while True:
        try:
            return s.connect(path)
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise ConnectionError(f"the agent's control socket at {path} is not accepting connections "
                                      "(busy); try again") from None
            time.sleep(0.02)


def agent_handlers(agent) -> dict:
    """The running agent's commands on its control socket (edge/agent.py's Agent): status and peers, a fetch
    for `hearth get`/`cat`, protected pins (`pin add --protect`, `pin rm`, `pin ls`'s audits) and transcode jobs
    (`media import --on`, `hearth jobs`)."""
    def cid(request):
        return parse_cid(str(request.get("cid", "")))

    async def status(request):
        return await agent.status()

    async def peers(request):
        return agent.peer_list()

    async def fetch(request):
        return {"fetched": await agent.fetch(cid(request))}

    async def protect(request):   # `hearth pin add CID --protect auto|K+M`
        return await agent.protector.protect(cid(request), str(request.get("protect", "auto")))

    async def unprotect(request):   # `hearth pin rm CID` of a protected pin
        return await agent.protector.release(cid(request))

    async def health(request):   # `hearth pin ls`: every protected pin's pieces audited once
        return await agent.protector.health()

    async def jobs(request):
        return {"slots": agent.config.media_jobs, "for": agent.worker.listed(),
                "on": [j.as_dict() for j in agent.offloads.jobs.values()]}

    async def cancel(request):
        job_id = str(request.get("id", ""))
        found = await agent.offloads.cancel(job_id) or agent.worker.cancel(job_id)
        if found is None:
            raise EdgeError(f"no job {printable(job_id, 40)} here; `hearth jobs` lists them")
        return found

    async def offers(request):
        return [{"node": node, **{k: getattr(i, k) for k in ("encoder", "hardware", "slots", "free", "speed",
                                                           "accepts")}} for node, i in await agent.offloads.offers()]
    return {"status": status, "peers": peers, "fetch": fetch, "protect": protect, "unprotect": unprotect,
            "health": health, "offload": agent.offloads.offload, "job": agent.offloads.job,
            "job_checked": agent.offloads.checked, "jobs": jobs, "job_cancel": cancel, "offers": offers}
