"""Debian's headless Chromium driven over the DevTools protocol (CDP) on a pipe, for tests where a browser is
the client. A pipe (not a debugging port) reaches a Chromium started inside a network namespace.

Started with the flags this closed network needs (no background networking, no component updates, a fresh
profile); `evaluate` runs JavaScript in the page and returns its value.
"""

import itertools
import json
import os
import select
import shutil
import subprocess
import tempfile
import time

CHROMIUM = shutil.which("chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--autoplay-policy=no-user-gesture-required", "--mute-audio", "--disable-dev-shm-usage",
         "--remote-debugging-pipe"]


class Browser:
    def __init__(self, url: str, prefix: list[str] | None = None, extra: list[str] | None = None):
        self.profile = tempfile.mkdtemp(prefix="hearth-chromium-")
        to_chrome_r, self._to_chrome = os.pipe()          # Chromium reads commands on fd 3
        self._from_chrome, from_chrome_w = os.pipe()      # and writes replies on fd 4

        def child_fds():       # copies first, so neither end is overwritten if it already is fd 3 or 4
            a, b = os.dup(to_chrome_r), os.dup(from_chrome_w)
            os.dup2(a, 3, inheritable=True)
            os.dup2(b, 4, inheritable=True)
        self.proc = subprocess.Popen([*(prefix or []), CHROMIUM, *FLAGS, *(extra or []),
                                      f"--user-data-dir={self.profile}", url],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=child_fds, pass_fds=(3, 4))
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self.events: list[dict] = []    # the events that came while waiting for replies, in order
        self.ids = itertools.count(1)
        self.session = None
        deadline = time.monotonic() + 30
        while True:
            pages = [t for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page"]
            if pages:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("chromium opened no page")
            time.sleep(0.2)
        self.session = self.call("Target.attachToTarget", targetId=pages[0]["targetId"], flatten=True)["sessionId"]

    def _read_message(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_chrome], [], [], left)[0]:
                raise TimeoutError("chromium did not answer")
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed its DevTools pipe (it exited)")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, **params):
        msg_id = next(self.ids)
        msg = {"id": msg_id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            msg["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read_message(30)
            if "method" in reply and "id" not in reply:   # an event (Network.*, Runtime.*, Log.* once enabled)
                self.events.append(reply)
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def evaluate(self, expression: str, await_promise: bool = False):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=await_promise)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page error: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0, what: str = ""):
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.evaluate(expression)
            except RuntimeError:        # the page is still loading (no video element yet)
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                state = self.evaluate("document.querySelector('video') && JSON.stringify({t: "
                                      "document.querySelector('video').currentTime, s: window.hearth && "
                                      "{errors: window.hearth.errors, level: window.hearth.playingLevel, "
                                      "stats: window.hearth.stats, transport: window.hearth.transport}})")
                raise AssertionError(f"timed out waiting for {what or expression}; page state {state}")
            time.sleep(0.2)

    def close(self):
        try:
            self.call("Browser.close")
        except Exception:       # noqa: BLE001 - closing after a failure
            pass
        for fd in (self._to_chrome, self._from_chrome):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        shutil.rmtree(self.profile, ignore_errors=True)
