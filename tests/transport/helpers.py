"""What the transport tests and the node-to-node attack tests (tests/security/test_held.py) share."""

import zmq
import zmq.utils.z85


def raw_dealer(ctx, identity, server):
    """A bare DEALER socket that completes CURVE as identity with the server (an Identity): for tests that send
    frames the client would never send."""
    raw = ctx.socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.curve_secretkey = zmq.utils.z85.encode(identity.curve_secret)
    raw.curve_publickey = zmq.utils.z85.encode(identity.curve_public)
    raw.curve_serverkey = zmq.utils.z85.encode(server.curve_public)
    return raw
