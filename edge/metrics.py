"""Prometheus metrics over HTTP on 127.0.0.1 (text exposition format 0.0.4), from a function of counters.
A client that sends garbage, resets or stalls ends its own connection only."""

import inspect
import logging

import trio

from edge.isolation import isolated

log = logging.getLogger(__name__)
MAX_REQUEST = 8192
MAX_CLIENTS = 16          # connections at once; more are closed at once (a scraper needs one)


def render(samples: dict[str, tuple[str, str, float]]) -> bytes:
    """samples: name -> (type, help, value). Names are prefixed with hearth_."""
    lines = []
    for name, (kind, text, value) in sorted(samples.items()):
        full = f"hearth_{name}"
        lines += [f"# HELP {full} {text}", f"# TYPE {full} {kind}", f"{full} {value}"]
    return ("\n".join(lines) + "\n").encode()


async def serve_metrics(port: int, collect, *, host: str = "127.0.0.1", task_status=trio.TASK_STATUS_IGNORED):
    """Answer GET /metrics with render(collect()) until cancelled; reports the bound port. collect may be async
    (the agent's is: the store's figures are read in a thread)."""

    async def answer(stream):
        with trio.move_on_after(5):
            raw = b""
            while b"\r\n\r\n" not in raw and len(raw) < MAX_REQUEST:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return
                raw += chunk
            line = raw.split(b"\r\n", 1)[0].split()
            if len(line) >= 2 and line[0] == b"GET" and line[1] in (b"/metrics", b"/"):
                samples = collect()
                if inspect.isawaitable(samples):
                    samples = await samples
                body, status = render(samples), b"200 OK"
            else:
                body, status = b"not found: try /metrics\n", b"404 Not Found"
            await stream.send_all(b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain; version=0.0.4\r\n"
                                  b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
                                  + body)

    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        task_status.started(bound)
        handler = isolated(answer, max_clients=MAX_CLIENTS, what="metrics", log=log)
        await trio.serve_listeners(handler, listeners, handler_nursery=nursery)
