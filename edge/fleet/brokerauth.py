"""Broker credentials handed out with enrollment: each enrolled node gets its own username and password for the
fleet's MQTT broker in the enrollment server's answer, beside its certificate.

    username   the node id
    password   base64url(HMAC-SHA256(broker secret, "hearth-broker\\0" + node id)), 43 characters

The broker secret (32 random bytes, `broker.secret` in the enrollment server's directory, 0600) never leaves
the server: passwords are derived, so nothing per node is stored, and a renewal answers the same password. For
mosquitto the server keeps a password file (`broker.passwd`, mosquitto's PBKDF2-SHA512 "$7$" format) of every
enrolled node whose claim is not revoked and who is not on the fleet's revocation list, rewritten (atomically)
whenever that set changes: after an enrollment, and within WATCH seconds of a revocation (edge/fleet/server.py
watches the claims file and revoked.cbor). Each rewrite sends mosquitto SIGHUP (its pid read from the pid file
the operator names, mosquitto's own `pid_file`): on SIGHUP mosquitto reads the file again and disconnects the
clients it no longer lists, so a revoked node is off the broker at once, with no restart of either.
A clustered broker checks the same derivation in its authentication hook instead.
"""

import base64
import hashlib
import hmac
import logging
import os
import signal
import urllib.parse

from edge.atomic import write_atomic

log = logging.getLogger(__name__)

SECRET_FILE = "broker.secret"
PASSWD_FILE = "broker.passwd"
PBKDF2_ROUNDS = 101      # what mosquitto_passwd writes


def load_secret(state: str) -> bytes:
    """The server's broker secret, made on first use."""
    path = os.path.join(state, SECRET_FILE)
    if not os.path.exists(path):
        write_atomic(path, os.urandom(32), 0o600)
    with open(path, "rb") as f:
        secret = f.read()
    if len(secret) != 32:
        raise ValueError(f"{path} is not a broker secret (32 bytes); remove it to make a new one (every node then "
                         "needs a renewal to learn its new password)")
    return secret


def node_password(secret: bytes, node: str) -> str:
    digest = hmac.new(secret, b"hearth-broker\0" + node.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def node_url(base: str, secret: bytes, node: str) -> str:
    """base (mqtts://host[:port], no credentials) with node's username and password in it."""
    parts = urllib.parse.urlsplit(base)
    netloc = f"{node}:{urllib.parse.quote(node_password(secret, node), safe='')}@{parts.netloc}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def mosquitto_line(user: str, password: str, salt: bytes | None = None) -> str:
    """One line of a mosquitto password file (what `mosquitto_passwd -b FILE USER PASSWORD` writes)."""
    salt = os.urandom(12) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ROUNDS, 64)
    return f"{user}:$7${PBKDF2_ROUNDS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


class BrokerCredentials:
    """What the enrollment server hands out and keeps for the broker: base URL, secret, password file."""

    def __init__(self, base: str, state: str, pid_file: str = ""):
        """pid_file: where the broker (mosquitto) writes its pid; each rewrite of the password file sends it
        SIGHUP. Without one the operator reloads the broker (`systemctl reload mosquitto`)."""
        self.base = base
        self.secret = load_secret(state)
        self.passwd = os.path.join(state, PASSWD_FILE)
        self.pid_file = pid_file
        self.listed: frozenset | None = None   # the nodes the file lists now (None: not written by this process)

    def url(self, node: str) -> str:
        return node_url(self.base, self.secret, node)

    def write_passwords(self, nodes) -> int:
        """The password file for exactly these nodes (0600); how many it lists."""
        lines = [mosquitto_line(n, node_password(self.secret, n)) for n in sorted(set(nodes))]
        write_atomic(self.passwd, ("\n".join(lines) + "\n").encode() if lines else b"", 0o600)
        self.listed = frozenset(nodes)
        return len(lines)

    def sync(self, nodes) -> bool:
        """The password file for exactly these nodes and the broker told to read it, unless it lists them
        already; whether it changed. (Each write salts anew, so the set is compared, not the file.)"""
        nodes = frozenset(nodes)
        if nodes == self.listed:
            return False
        self.write_passwords(nodes)
        self.reload()
        return True

    def reload(self) -> str:
        """SIGHUP to the broker whose pid is in pid_file; "" when sent, else why not (logged: the broker then
        reads the file at its next reload or start, and the operator is told)."""
        if not self.pid_file:
            return "no --broker-pid-file: reload the broker yourself"
        try:
            with open(self.pid_file) as f:
                pid = int(f.read(32).strip())
            if pid <= 1:
                raise ValueError(f"pid {pid}")
            os.kill(pid, signal.SIGHUP)
        except (OSError, ValueError) as exc:
            why = f"the broker was not told to read {self.passwd} again ({self.pid_file}: {exc})"
            log.warning("%s; reload it yourself", why)
            return why
        return ""
