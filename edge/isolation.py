"""Fault isolation for stream servers: whatever one client does ends its own connection, never the service.

The agent's rule (docs/architecture.md): a failure while serving one request, session or client ends that
request or session only. `isolated(answer, ...)` turns `async def answer(stream)` into a handler for
trio.serve_listeners that caps the connections at once (past the cap a new one is closed at once, costing no
memory), treats a client that goes away as ordinary, and logs anything else with the service's name.
"""

import logging

import trio

GONE = (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError)


def isolated(answer, *, max_clients: int, what: str, log: logging.Logger):
    """A serve_listeners handler running answer(stream) for at most max_clients streams at once."""
    clients = 0

    async def handle(stream):
        nonlocal clients
        if clients >= max_clients:
            await stream.aclose()
            return
        clients += 1
        try:
            async with stream:
                await answer(stream)
        except GONE:
            pass   # the client went away
        except Exception:   # noqa: BLE001 - one client's failure must not take the service down
            log.exception("%s: answering a client failed", what)
        finally:
            clients -= 1

    return handle
