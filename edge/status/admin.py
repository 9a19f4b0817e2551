"""The status page's optional admin password, and what guards the changes it allows.

The password is kept only as an Argon2id hash (PyNaCl's pwhash: libsodium) in the data directory, written
whole and readable by the agent's user alone. Its cost is sized for a Raspberry Pi or a 512 MiB router: 3 passes
over 64 MiB (about 0.1 s on an x86 core, under a second on a Pi 4), and one check at a time, so the hash can
never take more than 64 MiB of the box's memory at once, whoever asks.

Logging in gives a session: a random token in a cookie (HttpOnly, SameSite=Strict, Path=/) and a CSRF token
bound to it that every change must carry in a header (X-CSRF-Token); a page elsewhere can neither read the CSRF
token nor send the cookie with its requests. A session lasts SESSION_SECONDS, ends when the password changes,
and at most MAX_SESSIONS are kept. Attempts are limited per client address (after each wrong password it
waits twice as long as after the last, from 1 s up to MAX_WAIT) and in all (at most GLOBAL_FAILURES wrong
passwords a minute from everyone together, so many addresses gain nothing); an attempt made while waiting is
refused without checking the password.
"""

import collections
import hmac
import os
import secrets
import time

import nacl.exceptions
import nacl.pwhash
import trio

from edge.atomic import write_atomic
from edge.errors import EdgeError

PASSWORD_FILE = "admin.pwhash"
OPSLIMIT = 3                  # Argon2id passes ...
MEMLIMIT = 64 << 20           # ... over this much memory (bytes): sized for a Pi, see above
MIN_PASSWORD = 8              # characters
MAX_PASSWORD = 1024           # bytes: a longer one is refused before hashing
SESSION_SECONDS = 3600.0
MAX_SESSIONS = 16
MAX_WAIT = 300.0              # seconds a client may be made to wait between attempts
GLOBAL_FAILURES = 10          # wrong passwords a minute from all clients together
MAX_CLIENTS = 1024            # client addresses whose failures are remembered (the oldest forgotten first)
COOKIE = "hearth_admin"


class AdminError(EdgeError):
    """A password that cannot be set (too short, too long)."""


def password_path(data_dir: str) -> str:
    return os.path.join(data_dir, PASSWORD_FILE)


def hash_password(password: str) -> bytes:
    """The Argon2id hash of password (slow by design: call it in a worker thread from Trio code)."""
    raw = password.encode()
    if len(password) < MIN_PASSWORD:
        raise AdminError(f"the admin password must have at least {MIN_PASSWORD} characters")
    if len(raw) > MAX_PASSWORD:
        raise AdminError(f"the admin password must be at most {MAX_PASSWORD} bytes")
    return nacl.pwhash.argon2id.str(raw, opslimit=OPSLIMIT, memlimit=MEMLIMIT)


def check_password(stored: bytes, password: str) -> bool:
    """Whether password matches the stored hash (slow by design; in a worker thread from Trio code)."""
    raw = password.encode()
    if len(raw) > MAX_PASSWORD:
        return False
    try:
        return nacl.pwhash.verify(stored, raw)
    except nacl.exceptions.InvalidkeyError:
        return False


def set_password(data_dir: str, password: str) -> None:
    """Hash password and keep the hash in the data directory (0600, written whole)."""
    write_atomic(password_path(data_dir), hash_password(password) + b"\n", 0o600)


def remove_password(data_dir: str) -> bool:
    """Remove the admin password (the page's form goes away); whether there was one."""
    try:
        os.unlink(password_path(data_dir))
        return True
    except FileNotFoundError:
        return False


def read_hash(data_dir: str) -> bytes | None:
    """The stored hash, None where no password is set. Blocking (a file read)."""
    try:
        with open(password_path(data_dir), "rb") as f:
            stored = f.read(4096).strip()
    except FileNotFoundError:
        return None
    return stored if stored.startswith(b"$argon2id$") else None


class Attempts:
    """Wrong passwords by client address, and in all. clock: monotonic seconds."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.clients: collections.OrderedDict[str, tuple[int, float]] = collections.OrderedDict()  # (fails, until)
        self.recent: collections.deque = collections.deque()   # times of wrong passwords in the last minute

    def wait(self, client: str) -> float:
        """Seconds client must wait before its next attempt (0: it may try now)."""
        now = self.clock()
        while self.recent and now - self.recent[0] > 60:
            self.recent.popleft()
        wait = 0.0
        if len(self.recent) >= GLOBAL_FAILURES:
            wait = 60 - (now - self.recent[0])
        entry = self.clients.get(client)
        if entry is not None:
            wait = max(wait, entry[1] - now)
        return max(0.0, wait)

    def failed(self, client: str) -> float:
        """A wrong password from client: how long it must now wait."""
        now = self.clock()
        fails = self.clients.pop(client, (0, 0.0))[0] + 1
        delay = min(MAX_WAIT, 2.0 ** (fails - 1))
        self.clients[client] = (fails, now + delay)
        while len(self.clients) > MAX_CLIENTS:
            self.clients.popitem(last=False)
        self.recent.append(now)
        return delay

    def succeeded(self, client: str) -> None:
        self.clients.pop(client, None)


class Sessions:
    """Logged-in sessions: token -> (CSRF token, the password hash it logged in with, expiry). Bounded."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self._by_token: collections.OrderedDict[str, tuple[str, bytes, float]] = collections.OrderedDict()

    def open(self, stored: bytes) -> tuple[str, str]:
        """A new session for a password just checked against stored: (session token, CSRF token)."""
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        self._by_token[token] = (csrf, stored, self.clock() + SESSION_SECONDS)
        while len(self._by_token) > MAX_SESSIONS:
            self._by_token.popitem(last=False)
        return token, csrf

    def csrf(self, token: str | None, stored: bytes | None) -> str | None:
        """The CSRF token of a live session (None: no such session, it expired, or the password changed)."""
        entry = self._by_token.get(token) if token else None
        if entry is None:
            return None
        csrf, logged_with, expires = entry
        if self.clock() > expires or stored is None or not hmac.compare_digest(logged_with, stored):
            del self._by_token[token]
            return None
        return csrf

    def valid(self, token: str | None, csrf: str | None, stored: bytes | None) -> bool:
        """Whether a change may go ahead: a live session and the CSRF token bound to it."""
        expected = self.csrf(token, stored)
        return expected is not None and csrf is not None and hmac.compare_digest(expected.encode(), csrf.encode())

    def close(self, token: str | None) -> None:
        self._by_token.pop(token, None)


def cookie_of(headers: dict) -> str | None:
    """The session token from a request's Cookie header."""
    for part in headers.get("cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE and value:
            return value
    return None


def session_cookie(token: str, max_age: int = int(SESSION_SECONDS)) -> str:
    return f"{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}"


class Admin:
    """What the admin form reaches: the data directory (the password file), the sessions, the attempts, the
    settings it may change (edge.status.settings.Settings, or None)."""

    def __init__(self, data_dir: str, settings=None, clock=time.monotonic):
        self.data_dir = data_dir
        self.settings = settings
        self.sessions = Sessions(clock)
        self.attempts = Attempts(clock)
        self.checking = trio.CapacityLimiter(1)   # one Argon2id check (64 MiB) at a time

    async def stored(self) -> bytes | None:
        """The stored hash (read in a worker thread), None where no password is set."""
        return await trio.to_thread.run_sync(read_hash, self.data_dir)
