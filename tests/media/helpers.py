"""What the live tests here and the RTMP attack tests (tests/security/test_f12_rtmp_key.py) share."""

import threading

from edge.media import live


def run_publisher(store, source, **kw):
    """live.publish in a thread, as `hearth live publish` runs it; (thread, box): the box gets its "summary" or
    the "error" it raised."""
    box = {}

    def target():
        try:
            box["summary"] = live.publish(store, source, **kw)
        except BaseException as exc:      # noqa: BLE001 - handed to the test
            box["error"] = exc
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box
