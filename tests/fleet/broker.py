"""A real mosquitto (Debian's) on a loopback port for the fleet plane's tests, and small helpers around it."""

import getpass
import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mosquitto:
    """mosquitto on 127.0.0.1:port (anonymous, no persistence); restart() keeps the port."""

    def __init__(self, port: int | None = None, tls: tuple[str, str] | None = None, passwords: str | None = None,
                 host: str = "127.0.0.1", netns: str | None = None, extra: str = ""):
        """tls: (certificate, key) files: the listener speaks TLS only (mqtts://); passwords: a password file,
        and no one without a password in it is admitted; host, netns: where it listens, in that network
        namespace (the NAT lab's "public" one); extra: more mosquitto.conf lines. self.pid_file is where it
        writes its pid."""
        if shutil.which("mosquitto") is None and not os.path.exists("/usr/sbin/mosquitto"):
            pytest.skip("mosquitto is not installed (make setup installs Debian's)")
        self.port = port or free_port()
        self.host, self.netns = host, netns
        self.dir = tempfile.mkdtemp(prefix="hearth-mosquitto-")
        self.conf = os.path.join(self.dir, "mosquitto.conf")
        self.tls = tls
        self.pid_file = os.path.join(self.dir, "mosquitto.pid")
        with open(self.conf, "w") as f:
            # as whoever runs the tests (as root it would become "mosquitto", who cannot read their files)
            f.write(f"user {getpass.getuser()}\nlistener {self.port} {host}\n{extra}"
                    f"allow_anonymous {'false' if passwords else 'true'}\npersistence false\n"
                    f"log_dest stderr\nlog_type error\npid_file {self.pid_file}\n")
            if tls:
                f.write(f"certfile {tls[0]}\nkeyfile {tls[1]}\n")
            if passwords:
                f.write(f"password_file {passwords}\n")
        self.proc = None
        self.start()

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def start(self):
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        self.proc = subprocess.Popen([*prefix, exe, "-c", self.conf], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.netns:   # listening there (asked from inside the namespace)
                    subprocess.run([*prefix, "bash", "-c", f"exec 3<>/dev/tcp/{self.host}/{self.port}"], check=True,
                                   capture_output=True)
                else:
                    socket.create_connection((self.host, self.port), timeout=0.2).close()   # listening
                return
            except (OSError, subprocess.CalledProcessError):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mosquitto did not start: {self.proc.stderr.read().decode()}")
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not listen within 10 s")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def restart(self):
        self.stop()
        self.start()

    def close(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def retained(url_port: int, topic: str, wait: float = 1.0, host: str = "127.0.0.1") -> dict:
    """topic -> payload of the retained messages under topic (a filter), read with a plain paho client.

    mosquitto queues a subscription's retained messages as it takes the SUBSCRIBE, before it reads the next
    packet: a message this client then publishes to a topic of its own comes after them, so its arrival ends
    the wait (wait seconds at most)."""
    import paho.mqtt.client as paho
    got, done = {}, []
    marker = f"hearth-test/retained/{os.getpid()}-{time.monotonic_ns()}"

    def on_message(c, u, m):
        if m.topic == marker:
            done.append(True)
        elif m.retain:
            got[m.topic] = bytes(m.payload)
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.on_message = on_message
    client.connect(host, url_port)
    client.subscribe([(topic, 1), (marker, 1)])
    client.publish(marker, b"", qos=1)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and not done:
        client.loop(0.05)
    client.disconnect()
    return got
