"""Prometheus metrics over HTTP on 127.0.0.1 (text exposition format 0.0.4), from the agent's counter registry.
Served by edge.transport.http (h11): a client that sends garbage, resets or stalls ends its own connection only."""

import logging

import trio

from edge.service import Registry
from edge.transport.http import Response, serve_http

log = logging.getLogger(__name__)
MAX_CLIENTS = 16          # connections at once; more are told 503 (a scraper needs one)
CONTENT_TYPE = "text/plain; version=0.0.4"


def render(samples: dict[str, tuple[str, str, float]]) -> bytes:
    """samples: name -> (type, help, value). Names are prefixed with hearth_."""
    lines = []
    for name, (kind, text, value) in sorted(samples.items()):
        full = f"hearth_{name}"
        lines += [f"# HELP {full} {text}", f"# TYPE {full} {kind}", f"{full} {value}"]
    return ("\n".join(lines) + "\n").encode()


async def serve_metrics(port: int, registry: Registry, *, refresh=None, host: str = "127.0.0.1",
                        task_status=trio.TASK_STATUS_IGNORED):
    """Answer GET /metrics with the registry's samples until cancelled; `await refresh()` (optional) first
    brings gauges read elsewhere up to date. Reports the HTTP server's handle (its port is the one bound)."""

    async def answer(request):
        if request.method not in ("GET", "HEAD") or request.path not in ("/metrics", "/"):
            return Response(404, {"content-type": CONTENT_TYPE}, b"not found: try /metrics\n")
        if refresh is not None:
            await refresh()
        return Response(200, {"content-type": CONTENT_TYPE}, render(registry.samples()))

    await serve_http(answer, port, host=host, max_connections=MAX_CLIENTS, name="metrics", task_status=task_status)
