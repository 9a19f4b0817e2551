"""What the node-to-node attack tests share: a rogue CURVE server, this process's memory, a store, a config."""

import threading

import zmq
import zmq.utils.z85

from edge.config import load_config
from edge.errors import DecodeError
from edge.identity import Identity
from edge.store import Store
from edge.wire import parse_message


def rss() -> int:
    """This process's resident memory, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Rogue:
    """A server that finishes CURVE handshakes as `identity` and answers each message with respond(msg, frames)
    (a list of frames to send back, or None): a neighbour that misbehaves on purpose."""

    def __init__(self, identity: Identity, respond):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.curve_server = True
        self.sock.curve_secretkey = zmq.utils.z85.encode(identity.curve_secret)
        self.sock.curve_publickey = zmq.utils.z85.encode(identity.curve_public)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.respond, self.stopping, self.received = respond, threading.Event(), 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopping.is_set():
            if not self.sock.poll(50):
                continue
            route, *frames = self.sock.recv_multipart()
            self.received += 1
            try:
                msg = parse_message(frames)
            except DecodeError:
                continue
            reply = self.respond(msg, frames)
            if reply is not None:
                self.sock.send_multipart([route, *reply])

    def disconnects(self) -> int:
        n = 0
        while self.monitor.poll(0):
            self.monitor.recv_multipart()
            n += 1
        return n

    def close(self):
        self.stopping.set()
        self.thread.join(5)
        self.sock.disable_monitor()
        self.monitor.close(0)
        self.sock.close(0)
        self.ctx.term()


def a_store(tmp_path):
    """A store in tmp_path/server, closed at the end of the test (a fixture body)."""
    with Store(str(tmp_path / "server")) as s:
        yield s


def agent_in(tmp_path, **flags):
    config = load_config(env={}, flags={"data_dir": str(tmp_path / "me"), "mdns": False, **flags})
    return config
