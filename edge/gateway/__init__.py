"""The HTTP gateway (part of `hearth run`): streams for players, content and trustless blocks by CID.

    GET /                              the status page (this node, neighbours, bandwidth, storage, fetches)
    GET /watch/                        the player page (lists the streams, plays any of them)
    GET /watch/NAME/                   the player page for one stream (this node's NAME, else the nearest
                                       neighbour's; /watch/NAME@NODE/ names the publisher; /streams/NAME/
                                       redirects there)
    GET /api/status                    the status page's data as JSON (read-only, no login)
    POST /api/admin/login|logout|limits  the admin form (only where `hearth admin password` set a password)
    GET /api/streams                   the neighbourhood's streams as JSON (this node's and its neighbours')
    GET /streams/NAME/PATH             a file of the stream (master.m3u8, 720p/index.m3u8, 720p/00001.m4s …)
    GET /ipfs/CID[/PATH]               a UnixFS file (byte ranges), or a directory listing as JSON
    GET /ipfs/CID?format=raw           the block itself, application/vnd.ipld.raw   (or Accept: that type)
    GET /ipfs/CID[/PATH]?format=car    a CAR v1 of the DAG, application/vnd.ipld.car (or Accept: that type)
    GET /player/…                      the player's own files, hls.js included, served from this node

Everything served by CID is immutable and cached for a year; names change, so their answers are cached
briefly. Blocks this node lacks are fetched from neighbours when the agent can (`fetch`), within a budget per
client address and in all (anyone on the LAN may ask; no one may make the node fill its disk from a stranger).

What a failure is answered with (a response already started is cut off instead, by edge.transport.http):
    404  not here, and no neighbour has it               502  this node's copy is corrupt and no neighbour
                                                              gives a good one, or it is malformed, or the
    504  the neighbours that have it stalled                  neighbours holding it failed or lied
    429  this client's fetch budget is spent (Retry-After)  507  the quota or the disk is full
    503  draining for a stop, or the store busy (Retry-After)  500  a bug, with an id that is also in the log

The package: router.py dispatches (Gateway), content.py serves /ipfs/ (fetching what is missing from neighbours
within budget.py's budget), streams.py the player and the streams, statuspage.py the status page and its admin
form, signaling.py the WebRTC exchange, and answers.py the HTTP vocabulary they share (types, ranges, cache
headers, what each failure is answered with).
"""

from edge.gateway.answers import Unsatisfiable, failure_response, parse_range
from edge.gateway.budget import FetchBudget, OverBudget
from edge.gateway.router import Gateway, gateway_counters

__all__ = ["FetchBudget", "Gateway", "OverBudget", "Unsatisfiable", "failure_response", "gateway_counters",
           "parse_range"]
