"""benchmarks/fleet_scale.py runs end to end with tiny numbers (the benchmark itself is `make bench`'s): a real
mosquitto, simulated nodes with signed presence records, a real agent among a few WAN nodes."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_scale_benchmark_runs_with_tiny_numbers():
    if not os.path.exists("/usr/sbin/mosquitto"):
        pytest.skip("mosquitto is not installed (make setup installs Debian's)")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "fleet_scale.py"), "--nodes", "60",
                          "--region-size", "20", "--samples", "2", "--agent-nodes", "20", "--idle", "2",
                          "--settle", "2"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": ROOT})
    print(out.stdout[-3000:])
    assert out.returncode == 0, out.stderr[-3000:]
    assert "60 nodes connected" in out.stdout and "0 connections lost" in out.stdout
    # each of the 2 new nodes reaches every node of its region (20 simulated ones at least)
    assert int(re.search(r"(\d+) deliveries", out.stdout).group(1)) >= 40
    assert "20 WAN nodes" in out.stdout and "goal RSS <= 80 MiB" in out.stdout
