"""benchmarks/compare.py reads the ratios the bench scripts print: tables written by benchmarks/_common.py's own
print_table and goal, the summary lines in the scripts' formats, and the side-by-side diff's verdict."""

import contextlib
import io
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import compare  # noqa: E402
from _common import goal, print_table  # noqa: E402


def printed(fn) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        fn()
    return out.getvalue()


def test_tables_notes_and_summary_lines():
    name = "256 KiB blocks, 16 in flight"

    def bench():
        print("x86_64, 2 cores; Python 3.11.7")
        print_table("Reed-Solomon encode/decode, MB/s of data",
                    ["case", "coder", "MB/s", "ISA-L MB/s", "ratio", "notes"],
                    [["10+4 64 MiB", "memcpy", 9000.0, "", "", ""],
                     ["10+4 64 MiB", "hearth scalar", 1290.5, "162", "7.97",
                      f"zfec 2.2x, memcpy 0.02x vs zfec {goal(2.2, 1.3)}"],
                     ["10+4 64 MiB", "hearth avx2", 17536.2, "-", "-", "zfec 29.9x, memcpy 0.25x "]])
        print_table("Serving blocks", ["case", "req/s", "ratio", "vs CURVE"], [["1 KiB blocks, 64 in flight", 5.0,
                                                                               0.71, 0.8]])
        print(f"  ladder fps ratio {1.05:.2f}x, {goal(1.05, 1.0)}")
        print(f"  {name}: {0.81:.2f}x blocking pyzmq without CURVE, {goal(0.81, 0.7)}")
        print(f"  {' ' * len(name)}  {0.9:.2f}x blocking pyzmq with CURVE (same encryption); CURVE alone makes pyzmq "
              f"{0.95:.2f}x of itself")
        print("\n  ok   parity identical")

    ratios = compare.parse(printed(bench))
    assert ratios == {
        "10+4 64 MiB | hearth scalar | ratio": 7.97,
        "10+4 64 MiB | hearth scalar | zfec #x": 2.2,
        "10+4 64 MiB | hearth scalar | memcpy #x": 0.02,
        "10+4 64 MiB | hearth avx2 | zfec #x": 29.9,
        "10+4 64 MiB | hearth avx2 | memcpy #x": 0.25,
        "1 KiB blocks, 64 in flight | ratio": 0.71,
        "1 KiB blocks, 64 in flight | vs CURVE": 0.8,
        "ladder fps ratio #x": 1.05,
        f"{name}: #x blocking pyzmq without CURVE": 0.81,
        f"{name}: #x blocking pyzmq with CURVE": 0.9,
        f"{name}: CURVE alone makes pyzmq #x of itself": 0.95,
    }


def test_diff_flags_changes_beyond_the_tolerance(tmp_path):
    runs = {"before": [{"erasure": {"a": 1.0, "b": 0.02, "c": 2.0}}] * 3,
            "after": [{"erasure": {"a": 1.05, "b": 0.03}}, {"erasure": {"a": 0.8, "b": 0.03}},
                      {"erasure": {"a": 1.08, "b": 0.03}}]}
    for side, side_runs in runs.items():
        result = {"commit": side * 5, "runs": side_runs, "failures": []}
        compare.summarise(result)
        (tmp_path / f"{side}.json").write_text(json.dumps(result))
    diff = [sys.executable, os.path.join(REPO, "benchmarks", "compare.py"), "diff"]
    out = subprocess.run([*diff, tmp_path / "before.json", tmp_path / "after.json"], capture_output=True, text=True)
    lines = {line.split()[1]: line for line in out.stdout.splitlines() if line.startswith("erasure: ")}
    assert "+5.0%" in lines["a"] and "<<" not in lines["a"]  # median 1.05 of 0.8, 1.05, 1.08
    assert "26.7%" in lines["a"]  # the scatter of the after runs: (1.08 - 0.8) / 1.05
    assert "+50.0%" in lines["b"] and "<<" not in lines["b"]  # one unit of the printed rounding
    assert "missing" in lines["c"]
    assert out.returncode == 1
    same = subprocess.run([*diff, tmp_path / "before.json", tmp_path / "before.json"], capture_output=True)
    assert same.returncode == 0
