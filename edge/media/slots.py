"""A box-wide limit on transcodes running at once (config `media_jobs`), across processes.

Each running transcode holds an flock on one of N slot files in the data directory; the kernel frees a slot
when its holder exits, even by SIGKILL or a power cut, so a crash never leaves a slot taken.
"""

import contextlib
import fcntl
import os
import time

from edge.media.errors import MediaError


@contextlib.contextmanager
def transcode_slot(data_dir: str, jobs: int, *, wait: float = 3600.0, on_wait=None):
    """Hold one of `jobs` slots while the block runs; on_wait(message) once if all are taken."""
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
                    yield
                finally:
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
