"""Debian's headless Chromium driven over the DevTools protocol (CDP), for tests where a browser is the client.

Started with the flags this closed network needs (no background networking, no component updates, a fresh
profile); `evaluate` runs JavaScript in the page and returns its value.
"""

import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request

from websockets.sync.client import connect

CHROMIUM = shutil.which("chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--autoplay-policy=no-user-gesture-required", "--mute-audio", "--disable-dev-shm-usage",
         "--remote-debugging-port=0", "--remote-allow-origins=*"]


class Browser:
    def __init__(self, url: str, prefix: list[str] | None = None, extra: list[str] | None = None):
        self.profile = tempfile.mkdtemp(prefix="hearth-chromium-")
        self.proc = subprocess.Popen([*(prefix or []), CHROMIUM, *FLAGS, *(extra or []),
                                      f"--user-data-dir={self.profile}", url],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        port_file = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.monotonic() + 30
        while not os.path.exists(port_file) or not open(port_file).read().strip():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start: {self.proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.1)
        self.port = int(open(port_file).read().split()[0])
        self.prefix = prefix or []
        page = self._page()
        self._ws = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
        self.ws = self._ws.__enter__()
        self.ids = itertools.count(1)

    def _page(self):
        deadline = time.monotonic() + 15
        while True:
            try:
                pages = json.loads(self._http("/json/list"))
                page = next((p for p in pages if p.get("type") == "page"), None)
                if page:
                    return page
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("chromium opened no page")
            time.sleep(0.2)

    def _http(self, path: str) -> str:
        if self.prefix:     # chromium runs in a network namespace: reach its DevTools port from inside it
            return subprocess.run([*self.prefix, "curl", "-s", f"http://127.0.0.1:{self.port}{path}"],
                                  capture_output=True, text=True, check=True).stdout
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
            return r.read().decode()

    def call(self, method: str, **params):
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv(timeout=30))
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
                state = self.evaluate("document.querySelector('video') && JSON.stringify({t: document.querySelector('video') && "
                                      "document.querySelector('video').currentTime, s: window.hearth && "
                                      "{errors: window.hearth.errors, level: window.hearth.playingLevel}})")
                raise AssertionError(f"timed out waiting for {what or expression}; page state {state}")
            time.sleep(0.2)

    def close(self):
        try:
            self._ws.__exit__(None, None, None)
        except Exception:       # noqa: BLE001 - closing after a failure
            pass
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)
