"""Choosing native or reference kernels: a missing extension falls back loudly, or is fatal with
REQUIRE_NATIVE=1. Each case runs in a fresh interpreter where the extension is made unimportable."""

import subprocess
import sys

HIDE_ERASURE = "import sys; sys.modules['edge.kernels._erasure'] = None\n"


def run(code: str, require: str | None):
    env = {"PATH": "/usr/bin:/bin"}
    if require is not None:
        env["REQUIRE_NATIVE"] = require
    return subprocess.run([sys.executable, "-c", HIDE_ERASURE + code], capture_output=True, text=True, env=env)


def test_missing_extension_falls_back_to_reference_and_says_so():
    out = run(
        "import logging; logging.basicConfig()\n"
        "from edge import kernels\n"
        "print(kernels.Encoder.__module__, kernels.erasure_path())\n"
        "print([r['native'] for r in kernels.report() if r['kernel'] == 'erasure'])\n"
        "kernels.warn_if_reference()\n", None)
    assert out.returncode == 0, out.stderr
    assert "edge.kernels.ref_erasure reference" in out.stdout
    assert "[False]" in out.stdout
    assert "native erasure kernel missing" in out.stderr


def test_require_native_makes_a_missing_extension_fatal():
    out = run("from edge import kernels\n", "1")
    assert out.returncode != 0
    assert "NativeMissing" in out.stderr
    assert "REQUIRE_NATIVE=1 forbids the slow reference" in out.stderr


def test_doctor_reports_the_missing_kernel_and_fails():
    out = run("from edge.cli import main\nmain(['doctor'])\n", None)
    assert out.returncode == 1
    assert "MISSING" in out.stdout and "erasure" in out.stdout


def test_fallback_reference_still_encodes_correctly():
    out = run(
        "from edge.store import encode_object, decode_object\n"
        "data = bytes(range(200)) * 7\n"
        "shards = encode_object(data, 5, 3)\n"
        "left = {i: bytes(s) for i, s in enumerate(shards) if i not in (0, 2, 6)}\n"
        "assert decode_object(left, 5, 3, len(data)) == data\n"
        "print('ok')\n", None)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
