"""The data directory: its marker (this is a Hearth node's data, not an empty mount point) and the agent's lock
(one agent per data directory).

The marker: an appliance's data partition that failed to mount leaves an empty directory where the data should
be. Without a marker of its own, the store would quietly start afresh there: a new empty catalog, later
mistaken for the real one. So `hearth init` and first boot write MARKER, and every command that opens the store
(the agent included) refuses a directory without it. Directories made before the marker existed hold a catalog
or an identity key: they are adopted (the marker is written) instead of refused.

The agent's lock: an exclusive flock on AGENT_LOCK, held for the agent's whole life and freed by the kernel when
it exits, however it exits. It is not the store's lock (edge/store/repo.py `lock`, shared by the writers of
`hearth add` and the agent alike, taken alone by GC and verify): commands keep using the store beside a
running agent. The file holds the holder's PID, for the message a second agent gives.
"""

import fcntl
import logging
import os
import time

from edge.atomic import write_atomic
from edge.errors import EdgeError

log = logging.getLogger(__name__)

MARKER = ".hearth-node"
AGENT_LOCK = "agent.pid"
CATALOG = "store.db"          # the store's catalog (edge/store/repo.py)
MARKER_TEXT = (b"This directory holds a Hearth node's data (store, identity, settings).\n"
               b"Hearth refuses a data directory without this file, so that a data disk that failed to mount is "
               b"never taken for a new, empty node.\n")


class NotADataDir(EdgeError):
    """The directory has no marker and no store (the wrong place, or a data disk that is not mounted), or the
    agent cannot use it."""


class AgentRunning(EdgeError):
    """Another agent holds this data directory."""


def mark(data_dir: str) -> None:
    """Make data_dir (created if need be) a Hearth data directory: for `hearth init` and first boot."""
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    path = os.path.join(data_dir, MARKER)
    if not os.path.exists(path):
        write_atomic(path, MARKER_TEXT)


def require(data_dir: str) -> None:
    """Return if data_dir is a Hearth data directory (adopting one made before the marker existed); else
    NotADataDir, in one line saying what to check."""
    if os.path.exists(os.path.join(data_dir, MARKER)):
        return
    from edge.identity import KEY_FILE
    held = [name for name in (CATALOG, KEY_FILE) if os.path.exists(os.path.join(data_dir, name))]
    if held:   # made by a Hearth without the marker: its store and identity are the real ones
        try:
            mark(data_dir)
            log.info("marked %s as a Hearth data directory (it holds %s)", data_dir, " and ".join(held))
        except OSError as exc:   # a read-only disk: still this node's data; commands that write will say so
            log.warning("cannot write the data-directory marker in %s: %s", data_dir, exc.strerror)
        return
    state = "does not exist" if not os.path.isdir(data_dir) else "has no Hearth data in it"
    raise NotADataDir(f"{data_dir} {state} (no {MARKER} marker): if this node's data disk belongs there, check "
                      f"that it is mounted (findmnt {data_dir}); for a new node run `hearth init`; or give the "
                      "right place with --data-dir or HEARTH_DATA_DIR")


def init_node(config, force: bool = False) -> dict:
    """`hearth init`: make config.data_dir a data directory with this node's identity (readable only by its
    owner; a new one replacing the old with force) and a commented hearth.toml where there is none. Returns the
    node id, the key's and the config file's paths, and whether an identity was made."""
    from edge.config import commented_toml
    from edge.identity import KEY_FILE, Identity
    mark(config.data_dir)          # also for a node initialised before the marker existed
    key = os.path.join(config.data_dir, KEY_FILE)
    if os.path.exists(key) and not force:
        return {"node": Identity.load(key).node_id, "identity": key, "config": config.config_file, "created": False}
    if force and os.path.exists(key):
        os.unlink(key)
    identity = Identity.generate()
    identity.save(key)
    if not os.path.exists(config.config_file):
        write_atomic(config.config_file, commented_toml(config).encode())
    return {"node": identity.node_id, "identity": key, "config": config.config_file, "created": True}


class AgentLock:
    """The exclusive lock one agent holds on its data directory for its whole life (a context manager)."""

    def __init__(self, data_dir: str):
        self.path = os.path.join(data_dir, AGENT_LOCK)
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:   # e.g. left behind by `sudo hearth run`, now run as the service's user
            raise NotADataDir(f"cannot open {self.path} ({exc.strerror}): the data directory and its files must "
                              "belong to the user that runs the agent") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = self._holder()
            os.close(self.fd)
            who = f"PID {pid}" if pid else "another process"
            raise AgentRunning(f"another hearth agent ({who}) is already running on {data_dir}; stop it first "
                               "(one agent per data directory), or give this one its own --data-dir") from None
        except BaseException:
            os.close(self.fd)
            raise
        # truncate, then write: the file is read only while locked, and a reader may catch it empty (see _holder)
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def _holder(self, tries: int = 20) -> int | None:
        # the holder writes its PID just after locking: a reader that comes in between sees an empty file
        for _ in range(tries):
            raw = os.pread(self.fd, 32, 0).strip()
            if raw.isdigit():
                return int(raw)
            time.sleep(0.01)
        return None

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)   # never unlinked: a process opening it meanwhile would lock another file
            os.close(self.fd)          # closing frees the lock
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
