"""`make`'s setup steps on a machine that already has everything: no apt (issue 14, point 10). The Makefile's own
recipes run for real in a copy of the checkout, against this machine's real dpkg database, with `apt-get`, `sudo`
and `npm` on PATH replaced by stand-ins that record each call (apt-get and sudo fail)."""

import os
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APT_MISSING = os.path.join(REPO, ".ci", "apt-missing")

pytestmark = pytest.mark.skipif(shutil.which("dpkg-query") is None or shutil.which("make") is None,
                                reason="needs a Debian machine with make")


def missing(*packages):
    r = subprocess.run([APT_MISSING, *packages], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def installed(name):
    r = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Status}", name], capture_output=True, text=True)
    return r.stdout == "installed"


def test_each_package_is_checked_with_its_architecture():
    native = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    assert missing() == []
    assert missing("hearth-no-such-package", f"dpkg:{native}", "dpkg") == ["hearth-no-such-package"]
    assert missing("dpkg:hearth-no-such-arch") == ["dpkg:hearth-no-such-arch"]
    if installed(f"libssl-dev:{native}") and installed("libssl-dev:arm64"):
        # the case `dpkg -s libssl-dev` got wrong: installed for two architectures, so the bare name is ambiguous
        assert subprocess.run(["dpkg", "-s", "libssl-dev"], capture_output=True).returncode != 0
        assert missing("libssl-dev", "libssl-dev:arm64") == []
    arch_all = subprocess.run(["dpkg-query", "-W", "-f=${binary:Package} ${Architecture} ${db:Status-Status}\\n"],
                              capture_output=True, text=True).stdout.splitlines()
    name = next((line.split()[0] for line in arch_all if line.endswith(" all installed")), None)
    if name:                                          # an "Architecture: all" package, unqualified
        assert missing(name.split(":")[0]) == []


STUB = """#!/bin/sh
echo "$(basename "$0") $*" >> "{log}"
{body}
"""


def test_a_prepared_machine_runs_no_apt(tmp_path):
    clone = tmp_path / "clone"
    clone.mkdir()
    shutil.copy(os.path.join(REPO, "Makefile"), clone)
    shutil.copytree(os.path.join(REPO, ".ci"), clone / ".ci")
    wanted = subprocess.run(["make", "-s", "-C", str(clone), "--eval", "print-apt:\n\t@echo $(APT_PACKAGES)",
                             "print-apt"], capture_output=True, text=True, timeout=60).stdout.split()
    assert "libssl-dev" in wanted and "libssl-dev:arm64" in wanted
    absent = missing(*wanted)
    if absent:
        pytest.skip(f"this machine lacks {' '.join(absent)}: `make` would install them (rightly)")
    stubs, log = tmp_path / "bin", tmp_path / "calls.log"
    stubs.mkdir()
    fake_hls = ("mkdir -p node_modules/hls.js/dist && echo '/* hls */' > node_modules/hls.js/dist/hls.min.js "
                "&& echo license > node_modules/hls.js/LICENSE")
    for name, body in (("apt-get", "exit 100"), ("sudo", "exit 100"), ("npm", fake_hls)):
        (stubs / name).write_text(STUB.format(log=log, body=body))
        (stubs / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{stubs}:{os.environ['PATH']}")
    r = subprocess.run(["make", "-C", str(clone), ".venv/.apt-stamp", ".venv/.web-stamp"], env=env,
                       capture_output=True, text=True, timeout=120)
    print(r.stdout, r.stderr)
    assert r.returncode == 0, r.stderr
    calls = log.read_text().splitlines() if log.exists() else []
    assert [c for c in calls if not c.startswith("npm ")] == [], calls      # apt-get and sudo never ran
    assert "installing" not in r.stdout + r.stderr
    assert (clone / ".venv" / ".apt-stamp").exists() and (clone / "edge/web/vendor/hls.min.js").exists()
