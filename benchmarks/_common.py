"""Helpers shared by the benchmark scripts: timing, the native-build check and table printing."""

import os
import sys
import time


def require_native(module: str) -> None:
    """Exit with a clear message unless the native extension `module` imports (benchmarks never time Python)."""
    os.environ.setdefault("REQUIRE_NATIVE", "1")
    try:
        __import__(module)
    except ImportError as exc:
        sys.exit(f"{module} is not built ({exc}); build it with `REQUIRE_NATIVE=1 make build` and run again")


def best_seconds(fn, repeat: int, number: int = 1) -> float:
    """The fastest of `repeat` timings of `number` calls, per call: on a shared machine the minimum is the
    least disturbed run."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best


def best_seconds_interleaved(fns: list, repeat: int, number: int = 1) -> list[float]:
    """best_seconds for several contenders timed in alternating rounds, so a burst of load from a neighbour on
    this shared machine hits them alike instead of skewing one."""
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            best[i] = min(best[i], (time.perf_counter() - t0) / number)
    return best


def mbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6


def print_table(title: str, header: list[str], rows: list[list]) -> None:
    cells = [header] + [[c if isinstance(c, str) else f"{c:,.2f}" if isinstance(c, float) else str(c) for c in r]
                        for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for i, r in enumerate(cells):
        print("  " + "  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths))))
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths))


def goal(ratio: float, target: float) -> str:
    return f"goal >= {target:.2f}x: {'met' if ratio >= target else 'MISSED'}"


def report_checks(checks: list[tuple[str, bool]]) -> None:
    """Print each correctness check made during the run; exit non-zero if any failed."""
    print()
    for what, ok in checks:
        print(f"  {'ok  ' if ok else 'FAIL'} {what}")
    if not all(ok for _, ok in checks):
        sys.exit("output mismatch: see FAIL lines above")
