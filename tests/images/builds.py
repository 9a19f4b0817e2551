"""The test images, started in the background as soon as pytest knows a selected test needs them.

An image build spends its minutes in one process at a time (mmdebstrap and dpkg; for arm64, dpkg and the
maintainer scripts under qemu-user). Started when collection ends, at the lowest CPU and I/O priority, the builds
use the time the multi-node tests before them spend waiting on their networks, instead of running after them; a
test of anything else still gets the CPU and the disk first. The fixtures `built` and `arm_builds` wait for
their build (and start it then, when it was not started early). Each build's output and log stay in one folder,
removed when the session ends.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

VERSION = "0.0.1-test"

# the builds by group: one signing key and one seed per group, the boards built with them
GROUPS = {
    "x86": {"boards": ("x86-64",),
            "seed": ("--name", "kitchen", "--quota", "100M", "--wifi-ssid", "home")},
    "arm": {"boards": ("qemu-arm64", "rpi4"),
            "seed": ("--name", "attic", "--quota", "100M", "--wifi-ssid", "home", "--upload-limit", "2.5M")},
}
FIXTURE_GROUP = {"built": "x86", "arm_builds": "arm"}


def hearth(*args, **kw):
    return subprocess.run([sys.executable, "-m", "edge", *args], capture_output=True, text=True, **kw)


def _low_priority() -> list[str]:
    """The command prefix that runs a build at idle I/O priority (ionice), where util-linux has it."""
    return ["ionice", "-c", "3"] if shutil.which("ionice") else []


class Build:
    """One board's `hearth image build`, running or done, in the group's folder."""

    def __init__(self, board: str, out: str, key: str, seed: str):
        self.board, self.out = board, out
        self.stdout = open(os.path.join(out, f"{board}.out"), "w+")
        self.log = open(os.path.join(out, f"{board}.log"), "w+")
        self.proc = subprocess.Popen(
            [*_low_priority(), sys.executable, "-m", "edge", "image", "build", board, "-o", out, "--key", key,
             "--seed", seed, "--version", VERSION, "--debug-console"],
            stdout=self.stdout, stderr=self.log, preexec_fn=lambda: os.nice(19))

    def result(self, timeout: float) -> dict:
        """Wait for the build; its summary (what `hearth image build` prints), or AssertionError with its log."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the {self.board} image build took over {timeout:.0f} s; its log: "
                                 f"{self.log.name}") from None
        self.log.seek(0)
        assert code == 0, f"the {self.board} image build failed (exit {code}):\n{self.log.read()[-4000:]}"
        self.stdout.seek(0)
        return json.loads(self.stdout.read())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.stdout.close()
        self.log.close()


class Builds:
    """This session's image builds, each group started once: `start(group)` early, `result(board)` when needed."""

    def __init__(self):
        self.root: str | None = None
        self.groups: dict[str, str] = {}      # group -> its folder
        self.running: dict[str, Build] = {}   # board -> its build

    def start(self, group: str) -> str:
        """Start the group's builds (at once, one process each), if not started yet; the group's folder."""
        if group in self.groups:
            return self.groups[group]
        if self.root is None:
            self.root = tempfile.mkdtemp(prefix="hearth-test-images-")
        out = os.path.join(self.root, group)
        os.makedirs(out)
        key, seed = os.path.join(out, "sign.key"), os.path.join(out, "seed.toml")
        r = hearth("fleet", "init", "-o", key)
        assert r.returncode == 0, r.stderr
        r = hearth("provision", "seed", "-o", seed, *GROUPS[group]["seed"], "--wifi-psk-file", "-",
                   input="hunter22\n")
        assert r.returncode == 0, r.stderr
        for board in GROUPS[group]["boards"]:
            self.running[board] = Build(board, out, key, seed)
        self.groups[group] = out
        return out

    def result(self, board: str, timeout: float = 2400) -> tuple[str, dict]:
        """The folder holding board's image (its manifest, its signing key) and the build's summary."""
        group = next(g for g, spec in GROUPS.items() if board in spec["boards"])
        out = self.start(group)
        return out, self.running[board].result(timeout)

    def close(self) -> None:
        for build in self.running.values():
            build.close()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
        self.__init__()


SESSION = Builds()


def start_for(items) -> None:
    """Start the builds that the selected items' fixtures will wait for (called when collection ends)."""
    from tests.images.conftest import WHY_NOT
    if WHY_NOT is not None:
        return
    wanted = {FIXTURE_GROUP[name] for item in items for name in getattr(item, "fixturenames", ())
              if name in FIXTURE_GROUP}
    if "arm" in wanted:
        from tests.images.test_arm64_images import ARM_WHY_NOT
        if ARM_WHY_NOT is not None:
            wanted.discard("arm")
    for group in sorted(wanted, reverse=True):   # x86 first: its tests come first
        SESSION.start(group)
