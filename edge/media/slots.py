"""A box-wide limit on transcodes running at once (config `media_jobs`), across processes.

Each running transcode holds an flock on one of N slot files in the data directory; the kernel frees a slot
when its holder exits, even by SIGKILL or a power cut, so a crash never leaves a slot taken. The holder writes
what it is doing into its slot file (`hearth jobs` lists the transcodes running here).
"""

import contextlib
import fcntl
import json
import os
import time

from edge.media.errors import MediaError


@contextlib.contextmanager
def transcode_slot(data_dir: str, jobs: int, *, wait: float = 3600.0, on_wait=None, what: str = ""):
    """Hold one of `jobs` slots while the block runs; on_wait(message) once if all are taken. what: a few words
    on the transcode, for `hearth jobs`."""
    os.makedirs(data_dir, exist_ok=True)
    fds = []
    try:
        for i in range(max(1, jobs)):
            fds.append(os.open(os.path.join(data_dir, f"transcode-slot-{i}"), os.O_RDWR | os.O_CREAT, 0o600))
        deadline = time.monotonic() + wait
        told = False
        while True:
            for fd in fds:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                try:
                    _tell(fd, {"what": what[:200], "pid": os.getpid(), "started": time.time()})
                    yield
                finally:
                    _tell(fd, None)
                    fcntl.flock(fd, fcntl.LOCK_UN)
                return
            if not told and on_wait:
                on_wait(f"{len(fds)} transcode(s) already running on this box (media_jobs = {jobs}); waiting "
                        "for one to finish")
                told = True
            if time.monotonic() > deadline:
                raise MediaError(f"no transcode slot came free in {wait:.0f} s; raise media_jobs or try later")
            time.sleep(0.5)
    finally:
        for fd in fds:
            os.close(fd)


def free_slots(data_dir: str, jobs: int) -> int:
    """How many of the `jobs` slots no transcode holds now (each tried and let go at once)."""
    free = 0
    for i in range(max(1, jobs)):
        path = os.path.join(data_dir, f"transcode-slot-{i}")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            free += 1
        except BlockingIOError:
            pass
        finally:
            os.close(fd)
    return free


def _tell(fd: int, value: dict | None) -> None:
    try:
        os.ftruncate(fd, 0)
        if value is not None:
            os.pwrite(fd, json.dumps(value).encode(), 0)
    except OSError:
        pass   # what a slot says is for display only


def running(data_dir: str, jobs: int) -> list[dict]:
    """What each slot held now says it is doing: {"slot", "what", "pid", "started"} (as its holder wrote it)."""
    out = []
    for i in range(max(1, jobs)):
        try:
            fd = os.open(os.path.join(data_dir, f"transcode-slot-{i}"), os.O_RDONLY)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
                continue   # free
            except BlockingIOError:
                pass
            try:
                value = json.loads(os.pread(fd, 4096, 0) or b"{}")
            except ValueError:
                value = {}
            value = value if isinstance(value, dict) else {}
            out.append({"slot": i, "what": str(value.get("what", "")), "pid": value.get("pid"),
                        "started": value.get("started")})
        finally:
            os.close(fd)
    return out
