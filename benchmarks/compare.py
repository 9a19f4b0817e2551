"""Every `make bench` ratio of one checkout against another's: run the bench scripts N times, keep the median of
each ratio, then print both side by side with the change in %.

The ratios are read from the scripts' ordinary output, so a checkout from before this file existed is measured
the same way: every table column headed "ratio" or "vs ...", the "zfec 2.2x"-style figures in a table's notes,
and every "N.NNx" in the summary lines after the tables ("goal >= 0.80x" targets are not figures). Each script
times its reference in the same run, so ratios hold on a busy machine where absolute times do not.

  compare.py run CHECKOUT=OUT.json [CHECKOUT=OUT.json ...] [--runs 3] [--python PY] [--scripts a,b]
  compare.py diff BEFORE.json AFTER.json [--tolerance 10]

`run` with several checkouts takes turns (each script of a pass runs in every checkout back to back) so a
noisy spell on the machine falls on all of them alike. Each checkout runs with its own .venv/bin/python if it
has one (else --python, else this interpreter), with the checkout first on PYTHONPATH, as `make bench` runs
the scripts. The raw output of every run is kept next to OUT.json, in OUT.logs/. `diff` exits 1 when a ratio
moved by more than the tolerance (and by more than the 0.01 the scripts round to) or is missing on one side.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

# The scripts in `make bench`'s order; the ones it runs with REQUIRE_NATIVE=1.
SCRIPTS = ("erasure", "hashing", "store", "transport", "media")
NATIVE = {"erasure", "hashing", "store", "transport"}

DASHES = re.compile(r"  -+(?:  -+)*")
TIMES = re.compile(r"(\d+\.\d+)x\b")
GOAL = re.compile(r"goal [<>=]+ \d+(?:\.\d+)?x?")
NOTE = re.compile(r"([A-Za-z][\w+]*) (\d+\.\d+)x\b")


def number(cell: str):
    try:
        return float(cell.replace(",", ""))
    except ValueError:
        return None


def table_ratios(lines: list[str], at: int, found: list) -> int:
    """Read the table whose dash line is lines[at] (print_table's layout: header above, rows below, every line
    exactly as wide as the dash line); add its ratios to `found`; return the index after its last row."""
    rule = lines[at]
    spans = [(m.start(), m.end()) for m in re.finditer(r"-+", rule)]
    header = [lines[at - 1][a:b].strip() for a, b in spans]
    i = at + 1
    while i < len(lines) and len(lines[i]) == len(rule) and all(
            lines[i][b:b + 2] == "  " for _, b in spans[:-1]):
        cells = [lines[i][a:b].strip() for a, b in spans]
        # the row's name: its text cells before the first figure ("10+4 64 MiB | hearth avx2")
        key = []
        for cell in cells:
            if number(cell) is not None:
                break
            if cell:
                key.append(cell)
        row = " | ".join(key)
        for name, cell in zip(header, cells):
            if name == "ratio" or name.startswith("vs "):
                if number(cell) is not None:
                    found.append((f"{row} | {name}", number(cell)))
            elif name == "notes":
                for m in NOTE.finditer(GOAL.sub("", cell)):
                    found.append((f"{row} | {m.group(1)} #x", float(m.group(2))))
        i += 1
    return i


def line_ratios(line: str, context: str | None, found: list) -> str | None:
    """Add the N.NNx figures of a summary line to `found`, each named by its clause (up to any "(") with the
    figure as #.
    A line "name: ..." sets the name that the indented lines after it continue; returns that name."""
    text = GOAL.sub("", line).strip()
    if text.startswith(("ok ", "FAIL ")):
        return None
    head, sep, body = text.partition(": ")
    if context and text[:1].isdigit() and line.startswith("   "):  # continues the line above ("    0.91x ...")
        body = text
    elif sep and not TIMES.search(head):
        context = head
    else:
        context, body = None, text
    for clause in re.split(r"[;,]", body):
        for m in TIMES.finditer(clause):
            name = " ".join(TIMES.sub("#x", clause).split(" (")[0].split())
            found.append((f"{context}: {name}" if context else name, float(m.group(1))))
    return context


def parse(text: str) -> dict[str, float]:
    """Every ratio one bench script printed, by a name that is the same from run to run."""
    lines = text.splitlines()
    found, context, i = [], None, 0
    while i < len(lines):
        if i >= 1 and DASHES.fullmatch(lines[i]) and len(lines[i - 1]) == len(lines[i]):
            i = table_ratios(lines, i, found)
            context = None
            continue
        # a line without figures ends what a "name:" line began
        context = line_ratios(lines[i], context, found) if TIMES.search(lines[i]) else None
        i += 1
    ratios = {}
    for name, value in found:
        key, n = name, 1
        while key in ratios:  # the same words twice in one output: keep both, in order
            n += 1
            key = f"{name} ({n})"
        ratios[key] = value
    return ratios


def git_commit(checkout: str) -> str:
    out = subprocess.run(["git", "-C", checkout, "rev-parse", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def run_script(checkout: str, python: str, script: str, log: str) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [checkout, os.environ.get("PYTHONPATH")]))}
    if script in NATIVE:
        env["REQUIRE_NATIVE"] = "1"
    proc = subprocess.run([python, os.path.join("benchmarks", f"{script}.py")], cwd=checkout, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with open(log, "w") as f:
        f.write(proc.stdout)
    return proc.returncode, proc.stdout


def summarise(result: dict) -> None:
    by_name: dict[str, list[float]] = {}
    for run in result["runs"]:
        for script, ratios in run.items():
            for name, value in ratios.items():
                by_name.setdefault(f"{script}: {name}", []).append(value)
    result["medians"] = {name: statistics.median(values) for name, values in by_name.items()}
    result["values"] = by_name


def cmd_run(args) -> int:
    targets = []
    for pair in args.targets:
        checkout, sep, out = pair.partition("=")
        if not sep or not out:
            sys.exit(f"expected CHECKOUT=OUT.json, got {pair!r}")
        checkout = os.path.abspath(checkout)
        if not os.path.isfile(os.path.join(checkout, "benchmarks", "_common.py")):
            sys.exit(f"{checkout} has no benchmarks/: give the root of a Hearth checkout")
        venv = os.path.join(checkout, ".venv", "bin", "python")
        python = venv if os.path.exists(venv) else args.python or sys.executable
        logs = os.path.splitext(out)[0] + ".logs"
        os.makedirs(logs, exist_ok=True)
        targets.append((checkout, out, logs, {"checkout": checkout, "commit": git_commit(checkout),
                                              "python": python, "runs": [], "script_seconds": [], "failures": []}))
    scripts = args.scripts.split(",") if args.scripts else list(SCRIPTS)
    status = 0
    for n in range(1, args.runs + 1):
        for _, _, _, result in targets:
            result["runs"].append({})
            result["script_seconds"].append({})
        for script in scripts:
            for checkout, out, logs, result in targets:  # each script in turn in every checkout, back to back
                print(f"pass {n}/{args.runs} {script} in {checkout} ...", flush=True)
                t0 = time.monotonic()
                rc, text = run_script(checkout, result["python"], script, os.path.join(logs, f"{script}-{n}.txt"))
                result["script_seconds"][-1][script] = round(time.monotonic() - t0, 1)
                result["runs"][-1][script] = ratios = parse(text)
                if rc != 0 or not ratios:
                    why = f"exit {rc}" if rc else "no ratios found in its output"
                    result["failures"].append(f"pass {n} {script}: {why} (see {logs}/{script}-{n}.txt)")
                    print(f"  {script} failed: {why}", flush=True)
                    status = 1
                summarise(result)
                with open(out, "w") as f:  # after every script, so an interrupted run keeps what it measured
                    json.dump(result, f, indent=1)
        for checkout, out, _, result in targets:
            print(f"pass {n} in {checkout} took {sum(result['script_seconds'][-1].values()):.0f} s; wrote {out}")
    return status


def scatter_pct(values: list[float]) -> float:
    median = statistics.median(values)
    return (max(values) - min(values)) / median * 100 if median else 0.0


def cmd_diff(args) -> int:
    with open(args.before) as f:
        before = json.load(f)
    with open(args.after) as f:
        after = json.load(f)
    b, a = before["medians"], after["medians"]
    names = list(b) + [n for n in a if n not in b]
    width = max(len(n) for n in names) if names else 4
    print(f"before: {before['commit'][:10]} ({len(before['runs'])} runs)   "
          f"after: {after['commit'][:10]} ({len(after['runs'])} runs)   medians; flag: beyond ±{args.tolerance:g}%")
    print(f"{'ratio':<{width}}  {'before':>8}  {'after':>8}  {'change':>8}  {'scatter':>8}")
    flagged = noise = 0
    for name in names:
        if name not in b or name not in a:
            flagged += 1
            print(f"{name:<{width}}  {b.get(name, float('nan')):8.2f}  {a.get(name, float('nan')):8.2f}  "
                  f"{'missing':>8}  {'':>8}  <<")
            continue
        change = (a[name] - b[name]) / b[name] * 100 if b[name] else float("inf")
        # how far one side's own runs lie apart (max - min, in % of its median), the larger side's: a change no
        # bigger than that is not told apart from the machine's noise by these runs
        scatter = max(scatter_pct(result["values"][name]) for result in (before, after))
        # a move of one unit in the last printed digit (0.02 -> 0.03) is rounding, not a change
        out = abs(change) > args.tolerance and abs(a[name] - b[name]) > 0.0101
        flagged += out
        noise += out and abs(change) <= scatter
        mark = ("  << (within scatter)" if abs(change) <= scatter else "  <<") if out else ""
        print(f"{name:<{width}}  {b[name]:8.2f}  {a[name]:8.2f}  {change:+7.1f}%  {scatter:7.1f}%{mark}")
    for side, result in (("before", before), ("after", after)):
        for failure in result.get("failures", []):
            print(f"{side} failure: {failure}")
    print(f"\n{len(names)} ratios, {flagged} beyond ±{args.tolerance:g}% or missing, {noise} of them no larger than "
          "the scatter of a side's own runs")
    return 1 if flagged else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run the bench scripts and write the medians of their ratios")
    run.add_argument("targets", nargs="+", metavar="CHECKOUT=OUT.json")
    run.add_argument("--runs", type=int, default=3, help="passes of every script per checkout (default 3)")
    run.add_argument("--python", help="interpreter for a checkout without its own .venv")
    run.add_argument("--scripts", help=f"comma-separated subset of {','.join(SCRIPTS)} (default: all)")
    diff = sub.add_parser("diff", help="print two `run` results side by side")
    diff.add_argument("before")
    diff.add_argument("after")
    diff.add_argument("--tolerance", type=float, default=10.0, help="flag changes beyond this many %% (10)")
    args = ap.parse_args()
    return cmd_run(args) if args.cmd == "run" else cmd_diff(args)


if __name__ == "__main__":
    sys.exit(main())
