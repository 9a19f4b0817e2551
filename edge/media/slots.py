"""A box-wide limit on transcodes running at once (config `media_jobs`), across processes.

Each running transcode holds an flock on one of N slot files in the data directory; the kernel frees a slot
when its holder exits, even by SIGKILL or a power cut, so a crash never leaves a slot taken.

The holder writes where it is into its slot file (Slot.report: a small JSON, at most every REPORT_EVERY seconds,
never synced: it is only shown), and `running()` reads the slots some process holds (from /proc/locks, so the
reader takes no lock a transcode could wait for): the status page's jobs with their totals.
"""

import contextlib
import fcntl
import json
import os
import time

from edge.media.errors import MediaError

REPORT_EVERY = 5.0      # seconds between two progress reports written to a slot file
MAX_REPORT = 4096       # bytes of a slot file read back
PREFIX = "transcode-slot-"


class Slot:
    """A slot held: report(name, done, total) writes where its transcode is (seconds of the source)."""

    def __init__(self, fd: int, clock=time.monotonic):
        self.fd, self.clock = fd, clock
        self.started = time.time()
        self._last = -REPORT_EVERY

    def report(self, name: str, done: float, total: float, *, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._last < REPORT_EVERY:
            return
        self._last = now
        data = json.dumps({"name": name, "done": round(done, 1), "total": round(total, 1), "pid": os.getpid(),
                           "started": round(self.started)}).encode()[:MAX_REPORT]
        try:
            os.pwrite(self.fd, data, 0)
            os.ftruncate(self.fd, len(data))
        except OSError:
            pass   # only progress: a full disk must not stop the transcode


def running(data_dir: str) -> list[dict]:
    """The transcodes running on this box: what each slot held by some process last reported ({} if nothing
    yet). Blocking (files, /proc/locks)."""
    slots = {}
    try:
        names = [n for n in os.listdir(data_dir) if n.startswith(PREFIX)]
    except OSError:
        return []
    for name in names:
        try:
            slots[os.stat(os.path.join(data_dir, name)).st_ino] = name
        except OSError:
            pass
    held = set()
    try:
        with open("/proc/locks") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 5 and parts[1] == "FLOCK":
                    held.add(int(parts[5].rsplit(":", 1)[-1]))
    except (OSError, ValueError):
        return []
    out = []
    for ino in sorted(held & set(slots)):
        try:
            with open(os.path.join(data_dir, slots[ino]), "rb") as f:
                report = json.loads(f.read(MAX_REPORT) or b"{}")
        except (OSError, ValueError):
            report = {}
        out.append(report if isinstance(report, dict) else {})
    return out


@contextlib.contextmanager
def transcode_slot(data_dir: str, jobs: int, *, wait: float = 3600.0, on_wait=None):
    """Hold one of `jobs` slots while the block runs (yields its Slot); on_wait(message) once if all are taken."""
    os.makedirs(data_dir, exist_ok=True)
    fds = []
    try:
        for i in range(max(1, jobs)):
            fds.append(os.open(os.path.join(data_dir, f"{PREFIX}{i}"), os.O_RDWR | os.O_CREAT, 0o600))
        deadline = time.monotonic() + wait
        told = False
        while True:
            for fd in fds:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                try:
                    yield Slot(fd)
                finally:
                    try:
                        os.ftruncate(fd, 0)   # nothing running in this slot
                    except OSError:
                        pass
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
