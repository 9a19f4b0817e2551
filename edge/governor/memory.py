"""The memory a transcode may use, and how it is sized to it.

The budget is the memory cgroup's limit where one is set (cgroup v2: memory.max of the process's own group;
v1: memory.limit_in_bytes), else the RAM (MemTotal). A 1080p source through the four-rung ladder with the
encoder's defaults peaks at ~457 MB of RSS (measured on x86), more than a 512 MiB router has, while the agent
beside it takes ~60 MiB: so the transcode gets the budget less what the agent and the system keep
(RESERVE), and the encoders' threads and lookahead (the frames each x264 keeps in flight) are sized so the
estimate below fits it. Measured (x86, 10 s of 1080p30 through the four rungs, cgroup v1 peak): lookahead 10
peaks at 387-396 MiB, lookahead 2 at 306 MiB, whether 1 or 2 threads: each frame of lookahead costs ~2.9 bytes
a pixel over the rungs, as the estimate says. The estimate is deliberately simple: each rung keeps about FRAMES_BASE + lookahead +
2 × threads pictures of its size (4:2:0, 1.5 bytes a pixel, with x264's half-resolution lookahead copies and
motion data about doubling that), plus a fixed cost per encoder.
"""

import dataclasses
import os

# the importing process's Python, PyAV and decoder (~150 MiB measured, x86, a 1080p source), the agent beside
# it (~60 MiB) and a margin: what the encoders may not use of the budget
RESERVE = 250 << 20
PER_ENCODER = 12 << 20    # an encoder's fixed cost (its tables, the muxer, the scaler)
FRAMES_BASE = 8           # pictures any x264 keeps (references, B-frames, the one being encoded)
DEFAULT_LOOKAHEAD = 10    # x264's rc-lookahead at the veryfast preset
MIN_LOOKAHEAD = 2


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def cgroup_limit(root: str = "/sys/fs/cgroup", proc: str = "/proc/self/cgroup") -> int | None:
    """The memory limit of this process's cgroup (v2 memory.max, v1 memory.limit_in_bytes), None if none."""
    groups = _read(proc) or ""
    for line in groups.splitlines():
        hid, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if hid == "0" and controllers == "":                  # cgroup v2
            value = _read(os.path.join(root, path.lstrip("/"), "memory.max")) or \
                _read(os.path.join(root, "memory.max"))
        elif "memory" in controllers.split(","):              # cgroup v1
            value = _read(os.path.join(root, "memory", path.lstrip("/"), "memory.limit_in_bytes")) or \
                _read(os.path.join(root, "memory", "memory.limit_in_bytes"))
        else:
            continue
        if value and value.isdigit() and int(value) < (1 << 60):   # v1's "no limit" is a huge number
            return int(value)
    return None


def ram(meminfo: str = "/proc/meminfo") -> int:
    for line in (_read(meminfo) or "").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 1 << 30


def memory_budget() -> int:
    """Bytes this process and its children may use: the cgroup's limit where set (and below the RAM)."""
    limit = cgroup_limit()
    return min(limit, ram()) if limit else ram()


@dataclasses.dataclass(frozen=True)
class Plan:
    threads: int        # per encoder; 0: the encoder's own choice (it fits the budget)
    lookahead: int      # x264's rc-lookahead
    estimate: int       # bytes the transcode is estimated to peak at

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def estimate(sizes, threads: int, lookahead: int) -> int:
    """Bytes the encoders of pictures of these sizes ((width, height) each) keep in flight."""
    frames = FRAMES_BASE + lookahead + 2 * threads
    return sum(int(w * h * 1.5 * 2 * frames) + PER_ENCODER for w, h in sizes)


def own_threads(cores: int) -> int:
    """The frame threads x264 starts when left to choose (thread_count 0): 1.5 per core."""
    return max(1, cores * 3 // 2)


def plan_transcode(sizes, budget: int | None = None, cores: int | None = None) -> Plan:
    """Encoder threads and lookahead for renditions of these sizes within budget (memory_budget() if None):
    the most of each the budget allows, lookahead given up first (it costs quality little), then threads.
    Where the encoder's own choice fits, threads is 0 (leave it to the encoder): capping it below x264's 1.5 a
    core cost a ladder on two cores 10-30% of its wall time for no memory it needed (measured, issue 15)."""
    budget = memory_budget() if budget is None else budget
    cores = cores or os.cpu_count() or 1
    room = budget - RESERVE
    threads = own_threads(cores)
    lookahead = DEFAULT_LOOKAHEAD
    if estimate(sizes, threads, lookahead) <= room:
        return Plan(0, lookahead, estimate(sizes, threads, lookahead))
    while estimate(sizes, threads, lookahead) > room and lookahead > MIN_LOOKAHEAD:
        lookahead -= 2
    while estimate(sizes, threads, lookahead) > room and threads > 1:
        threads -= 1
    return Plan(threads, lookahead, estimate(sizes, threads, lookahead))


def busy(cores: int | None = None) -> bool:
    """Whether the box is busy: its one-minute load average above its cores (then transcodes go nice)."""
    try:
        return os.getloadavg()[0] > (cores or os.cpu_count() or 1)
    except OSError:
        return False
