"""`hearth add` against the sha256 limit, and the peak memory of adding a 4 GiB file.

The sha256 limit is hashlib hashing the same bytes (in memory, in 256 KiB blocks, one thread per core): no
importer hashing one block at a time can name the content faster. (Where the CPU has SHA-NI, Hearth's kernel
hashes two blocks at once, native/sha256_x2.c, and passes it: a ratio over 1 there is that kernel.) Three contenders are timed in the same run, as separate `hearth add`
processes exactly as a user runs them:
  - `hearth add --only-hash`: the importer itself (read, chunk, hash on both cores, build the DAG);
  - `hearth add` into a store on this disk: all of that plus durable block files (fsync, rename, fsync dir);
  - the disk's own limit: the same bytes written to one file and fsynced (no importer can store faster).
Each is also timed inside this process (the agent's case: no interpreter start-up, and memory the process has
touched before; on this virtual machine a fresh process's first touch of its buffers costs ~0.4 s of kernel
time a GiB). Goals (issue 15): the import in a running process (--only-hash) >= 0.8x the sha256 limit (best
of the rounds: both are CPU-bound), and the durable add >= 0.8x the disk limit (the median of the rounds,
which alternate: this disk is noisy). No disk here is as fast as hashing on both cores, so the durable add is
held to the disk's own limit, not to the hashing limit. The stores written to disk are kept until the last
round ends: an ext4 without a journal (this machine's root) reuses no inode within 60 s of its deletion (360 s
while its inode table block is dirty) and scans past every such inode at each create (fs/ext4/ialloc.c,
recently_deleted), so removing one round's 4,096 block files made every create of the next round's add cost
~0.6 ms (2.5 s of a 1 GiB add, by perf: recently_deleted and its buffer lookups, 61% of a create): the
benchmark's own clean-up, not the add, and no store removes a GiB of blocks just before adding one. Peak RSS is
the add process's VmHWM for a 4 GiB input (--rss-gib 0 skips it).
Usage: store.py [--gib N] [--rounds N] [--rss-gib N]
"""

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import goal, print_table, report_checks, require_native  # noqa: E402

BLOCK = 256 * 1024
SEGMENT = 64 << 20


def make_input(path: str, nbytes: int) -> None:
    """nbytes of random-looking data whose 256 KiB blocks are all distinct (no dedup shortcut)."""
    seg = bytearray(os.urandom(SEGMENT))
    with open(path, "wb") as f:
        for i in range(0, nbytes, SEGMENT):
            n = min(SEGMENT, nbytes - i)
            for off in range(0, n, BLOCK):
                seg[off:off + 8] = (i + off).to_bytes(8, "little")
            f.write(memoryview(seg)[:n])
        f.flush()
        os.fsync(f.fileno())


def sha256_limit(path: str) -> float:
    """Seconds for hashlib over the file's bytes (already in memory) on two threads, 256 KiB at a time."""
    with open(path, "rb") as f:
        data = f.read()
    view = memoryview(data)
    half = (len(data) // 2) // BLOCK * BLOCK

    def work(lo, hi):
        for off in range(lo, hi, BLOCK):
            hashlib.sha256(view[off:min(off + BLOCK, hi)]).digest()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        t = threading.Thread(target=work, args=(half, len(data)))
        t.start()
        work(0, half)
        t.join()
        best = min(best, time.perf_counter() - t0)
    return best


def read_hash_limit(path: str) -> float:
    """Seconds for hashlib reading the file (two threads, each its half, 256 KiB reads) and hashing it."""
    size = os.path.getsize(path)
    half = (size // 2) // BLOCK * BLOCK

    def work(lo, hi):
        buf = bytearray(BLOCK)
        view = memoryview(buf)
        with open(path, "rb", buffering=0) as f:
            f.seek(lo)
            for off in range(lo, hi, BLOCK):
                n = f.readinto(view[:min(BLOCK, hi - off)])
                hashlib.sha256(view[:n]).digest()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        t = threading.Thread(target=work, args=(half, size))
        t.start()
        work(0, half)
        t.join()
        best = min(best, time.perf_counter() - t0)
    return best


def disk_limit(path: str, workdir: str) -> float:
    """Seconds to write the file's bytes to one new file on the store's disk and fsync it."""
    out = os.path.join(workdir, "disk-limit")
    with open(path, "rb") as f:
        data = f.read()
    t0 = time.perf_counter()
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view[:16 << 20]):]
    os.fsync(fd)
    os.close(fd)
    seconds = time.perf_counter() - t0
    os.unlink(out)
    return seconds


def _peak_rss(pid: int) -> int:
    """VmHWM of a running process in bytes (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def hearth_add(path: str, store: str, *extra) -> tuple[float, str, int]:
    """(seconds, root CID, peak RSS in bytes) of one `hearth add` process.

    Peak RSS is the process's VmHWM sampled every 20 ms. (wait4's ru_maxrss would also count the copy of this
    benchmark's own memory that the child held between fork and exec.)
    """
    cmd = [sys.executable, "-m", "edge", "--data-dir", store, "add", "-q", "--no-progress", *extra, path]
    if "--only-hash" not in extra:
        from edge.datadir import mark
        mark(store)  # a data directory as `hearth init` leaves it (the CLI refuses one without it); not timed
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _peak_rss(proc.pid))
        time.sleep(0.02)
    seconds = time.perf_counter() - t0
    out = proc.stdout.read().decode().strip()
    err = proc.stderr.read().decode()
    if proc.returncode != 0:
        sys.exit(f"hearth add failed: {err}")
    return seconds, out, peak


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0, help="size of the timed input (GiB)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of every contender")
    parser.add_argument("--rss-gib", type=float, default=4.0, help="size of the input for peak RSS (GiB; 0: skip)")
    args = parser.parse_args()
    require_native("edge.kernels._hashing")
    require_native("edge.kernels._chunking")
    workdir = tempfile.mkdtemp(prefix="hearth-bench-", dir=os.environ.get("BENCH_DIR", "/var/tmp"))
    checks = []
    try:
        nbytes = int(args.gib * (1 << 30))
        src = os.path.join(workdir, "input")
        make_input(src, nbytes)
        # rounds alternate between contenders so a neighbour's burst of load or I/O hits them alike
        times: dict[str, list[float]] = {k: [] for k in (
            "limit", "read_limit", "disk", "hashed", "added", "in_hashed", "in_added", "in_ram")}
        ram = "/dev/shm" if os.path.isdir("/dev/shm") and shutil.disk_usage("/dev/shm").free > 2 * nbytes else None
        cids = set()
        unused = os.path.join(workdir, "unused")
        from edge.store import Store, content

        def timed(name, fn):
            t0 = time.perf_counter()
            out = fn()
            times[name].append(time.perf_counter() - t0)
            return out
        for i in range(args.rounds):
            cids.add(str(timed("in_hashed", lambda: content.hash_only(src)).cid))
            store = os.path.join(workdir, f"in-store{i}")
            with Store(store) as s:
                cids.add(str(timed("in_added", lambda: content.add(s, src)).cid))
            times["disk"].append(disk_limit(src, workdir))   # next to the durable adds it is compared with
            if ram:
                store = tempfile.mkdtemp(prefix="hearth-bench-store-", dir=ram)
                with Store(store) as s:
                    cids.add(str(timed("in_ram", lambda: content.add(s, src)).cid))
                shutil.rmtree(store)
            times["limit"].append(sha256_limit(src))
            times["read_limit"].append(read_hash_limit(src))
            seconds, cid, _ = hearth_add(src, unused, "--only-hash")
            times["hashed"].append(seconds)
            cids.add(cid)
            store = os.path.join(workdir, f"store{i}")
            seconds, cid, _ = hearth_add(src, store)
            times["added"].append(seconds)
            cids.add(cid)
            # the stores on disk stay until the last round ends (the docstring says why)
        best = {k: min(v) for k, v in times.items() if v}
        median = {k: statistics.median(v) for k, v in times.items() if v}
        limit, read_limit, disk = best["limit"], best["read_limit"], best["disk"]
        hashed, added, in_hashed, in_added = best["hashed"], best["added"], best["in_hashed"], best["in_added"]
        in_ram = best.get("in_ram")
        checks.append(("every stored add and --only-hash gave the same root CID", len(cids) == 1))
        mb = nbytes / 1e6
        rows = [["sha256 limit: hashlib on 2 threads, bytes in memory", limit, mb / limit, 1.0],
                ["read+sha256 limit: hashlib on 2 threads reading the file", read_limit, mb / read_limit,
                 limit / read_limit],
                ["hearth add --only-hash (process, start-up included)", hashed, mb / hashed, limit / hashed],
                ["the same import in a running process (the agent's case)", in_hashed, mb / in_hashed,
                 limit / in_hashed],
                ["hearth add, durable store on this disk (process)", added, mb / added, limit / added],
                ["the same durable add in a running process", in_added, mb / in_added, limit / in_added],
                ["disk limit: the bytes to one file, write + fsync", disk, mb / disk, limit / disk]]
        if ram:
            rows.insert(6, ["the same, store on tmpfs (RAM: the software's own cost)", in_ram, mb / in_ram,
                            limit / in_ram])
        print_table(f"hearth add of {args.gib:g} GiB, best of {args.rounds} alternating rounds "
                    "(ratio = sha256 limit time / contender time)", ["contender", "seconds", "MB/s", "ratio"], rows)
        in_ratio = limit / in_hashed
        durable = median["disk"] / median["added"]
        in_durable = median["disk"] / median["in_added"]
        print(f"\n  import in a running process (--only-hash) vs sha256 limit (best of {args.rounds}): "
              f"{in_ratio:.2f}x, {goal(in_ratio, 0.8)}")
        print(f"  hearth add (durable) vs the disk limit (median of {args.rounds}): {durable:.2f}x, "
              f"{goal(durable, 0.8)}")
        print(f"  the same durable add in a running process vs the disk limit (median of {args.rounds}): "
              f"{in_durable:.2f}x, {goal(in_durable, 0.8)}")
        print(f"  (also: hearth add --only-hash vs sha256 limit {limit / hashed:.2f}x, vs read+sha256 limit "
              f"{read_limit / hashed:.2f}x; import in a running process vs read+sha256 limit "
              f"{read_limit / in_hashed:.2f}x; hearth add (durable) vs sha256 limit {limit / added:.2f}x)")
        print("  rounds (s): " + "; ".join(f"{k} " + " ".join(f"{t:.2f}" for t in v) for k, v in times.items() if v))
        os.unlink(src)

        if args.rss_gib:
            big = int(args.rss_gib * (1 << 30))
            make_input(src, big)
            store = os.path.join(workdir, "store-rss")
            seconds, cid, rss = hearth_add(src, store)
            print(f"\n  peak RSS adding {args.rss_gib:g} GiB: {rss / (1 << 20):.1f} MiB "
                  f"({seconds:.1f} s), goal < 150 MiB: {'met' if rss < 150 << 20 else 'MISSED'}")
            checks.append((f"{args.rss_gib:g} GiB add printed a CID", cid.startswith("bafy")))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report_checks(checks)


if __name__ == "__main__":
    main()
