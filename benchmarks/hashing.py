"""Batch SHA2-256 and FastCDC throughput against hashlib and pyfastcdc 0.3.1, measured in the same run.

sha256_many over 256 KiB, 4 KiB and 1 KiB blocks against hashlib.sha256 in a Python loop over the same blocks,
with one thread and with two (each hashing half the blocks; compared with one thread of hashlib), then
fastcdc_cuts against pyfastcdc's compiled FastCDC.cut_buf over the same random bytes. Contenders alternate
within each repetition and the best repetition counts. Run: python benchmarks/hashing.py [--quick]
"""

import argparse
import collections
import hashlib
import os
import platform
import ssl
import sys
import threading

sys.path.insert(0, os.path.dirname(__file__))
# The checkout this script sits in, so the in-place build is found without installing the package.
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _common import best_seconds_interleaved, goal, mbps, print_table, report_checks  # noqa: E402

# This script sets nothing in the environment: it checks the build itself and stops if it is missing.
try:
    from edge.kernels import _chunking, _hashing
except ImportError as exc:
    sys.exit(f"the native hashing/chunking kernels are not built ({exc}); this benchmark times only them. "
             "Build with REQUIRE_NATIVE=1 (`REQUIRE_NATIVE=1 make build`, or "
             "`REQUIRE_NATIVE=1 python setup.py build_ext --inplace`) and run again")
try:
    import pyfastcdc
    from pyfastcdc.cy import FastCDC as PyFastCDC  # the compiled one: pyfastcdc.FastCDC may fall back to Python
except ImportError as exc:
    sys.exit(f"pyfastcdc's compiled chunker is the reference and is missing ({exc}): pip install pyfastcdc==0.3.1")

KiB, MiB = 1 << 10, 1 << 20
GOAL_PER_CORE = 0.95  # sha256_many on one thread vs hashlib on one thread
GOAL_TWO_THREADS = 1.8  # sha256_many on two threads vs hashlib on one thread
GOAL_CHUNKING = 1.0  # fastcdc_cuts vs pyfastcdc
BLOCK_SIZES = (256 * KiB, 4 * KiB, 1 * KiB)
CDC_SIZES = ((64 * KiB, 256 * KiB, 1 * MiB), (16 * KiB, 64 * KiB, 256 * KiB))


def hashlib_loop(blocks):
    sha256 = hashlib.sha256
    return [sha256(b).digest() for b in blocks]


def in_two_threads(fn, first, second):
    """A callable running fn(first) and fn(second) on two threads at once."""

    def run():
        threads = [threading.Thread(target=fn, args=(part,)) for part in (first, second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    return run


def bench_hashing(data, block_size, repeat, rows, checks):
    blocks = [memoryview(data)[i : i + block_size] for i in range(0, len(data), block_size)]
    half = len(blocks) // 2
    checks.append((f"sha256_many == hashlib, {block_size // KiB} KiB blocks",
                   _hashing.sha256_many(blocks) == hashlib_loop(blocks)))
    t_hashlib, t_one, t_two = best_seconds_interleaved(
        [lambda: hashlib_loop(blocks), lambda: _hashing.sha256_many(blocks),
         in_two_threads(_hashing.sha256_many, blocks[:half], blocks[half:])],
        repeat,
    )
    ref = mbps(len(data), t_hashlib)
    label = f"sha256 {block_size // KiB} KiB blocks"
    for threads, t, target in ((1, t_one, GOAL_PER_CORE), (2, t_two, GOAL_TWO_THREADS)):
        ours = mbps(len(data), t)
        rows.append([label, f"sha256_many, {threads} thread{'s' if threads > 1 else ''}", ours,
                     f"{ref:,.0f}", f"{ours / ref:.2f}", "vs hashlib 1 thread " + goal(ours / ref, target)])


def bench_chunking(data, repeat, rows, checks):
    for min_size, avg_size, max_size in CDC_SIZES:
        ref = PyFastCDC(avg_size, min_size=min_size, max_size=max_size, normalized_chunking=1)
        ours = _chunking.fastcdc_cuts(data, min_size, avg_size, max_size)
        theirs = [c.offset + c.length for c in ref.cut_buf(data)]
        label = f"FastCDC {min_size // KiB}K/{avg_size // KiB}K/{max_size // KiB}K"
        # Different gear tables, so different cuts; similar counts show both chunk to the same sizes.
        checks.append((f"{label}: {len(ours)} chunks here, {len(theirs)} from pyfastcdc, both cover the input",
                       ours[-1] == theirs[-1] == len(data)))
        t_ours, t_theirs = best_seconds_interleaved(
            [lambda: _chunking.fastcdc_cuts(data, min_size, avg_size, max_size),
             # cut_buf over an in-memory buffer is pyfastcdc's fastest path; drain it, keeping nothing.
             lambda: collections.deque(ref.cut_buf(data), maxlen=0)],
            repeat,
        )
        ours_mbps, theirs_mbps = mbps(len(data), t_ours), mbps(len(data), t_theirs)
        r = ours_mbps / theirs_mbps
        rows.append([label, "fastcdc_cuts", ours_mbps, f"{theirs_mbps:,.0f}", f"{r:.2f}",
                     "vs pyfastcdc " + goal(r, GOAL_CHUNKING)])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="32 MiB and 3 repetitions instead of 256 MiB and 5")
    args = ap.parse_args()
    size, repeat = (32 * MiB, 3) if args.quick else (256 * MiB, 5)

    print(f"{platform.machine()}, {os.cpu_count()} cores; Python {platform.python_version()}; {ssl.OPENSSL_VERSION}; "
          f"pyfastcdc {pyfastcdc.__version__}")
    print(f"hashing: {_hashing.backend()}")
    print(f"{size // MiB} MiB of random bytes per case, best of {repeat}")
    # The two-thread rows need both cores to themselves: say so when something else is using one.
    load = os.getloadavg()[0]
    if (os.cpu_count() or 1) < 2 or load >= 0.9:
        print(f"warning: 1-minute load average {load:.2f} on {os.cpu_count()} cores: two-thread rows will read low")

    data = os.urandom(size)
    rows, checks = [], []
    for block_size in BLOCK_SIZES:
        bench_hashing(data, block_size, repeat, rows, checks)
    bench_chunking(data, repeat, rows, checks)
    print_table("Batch SHA2-256 and FastCDC, MB/s", ["case", "kernel", "MB/s", "reference MB/s", "ratio", "notes"],
                rows)
    report_checks(checks)


if __name__ == "__main__":
    main()
