"""`hearth image build` from an installed package: in a fresh venv outside the checkout, `pip install <checkout>`,
then `hearth image build --help` and `--dry-run` work from the venv's own copy (the recipes, the lock and the
units are package data; the agent's source is found where pip installed it from). Slow: the install builds the
native kernels and fetches the dependencies through pip."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    where = tmp_path_factory.mktemp("fresh")
    r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(where / "probe"),
                        "mmh3==5.3.1"], capture_output=True, timeout=120)
    if r.returncode:
        pytest.skip("pip cannot reach the package registry")
    subprocess.run([sys.executable, "-m", "venv", str(where / "venv")], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    r = subprocess.run([str(where / "venv" / "bin" / "pip"), "install", "-q", REPO], capture_output=True, text=True,
                       env=env, cwd=where, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    return where, env


def run(venv, *args):
    where, env = venv
    return subprocess.run([str(where / "venv" / "bin" / "hearth"), *args], capture_output=True, text=True,
                          env=env, cwd=where, timeout=300)


def test_the_installed_package_is_the_venvs_own(venv):
    where, env = venv
    code = ("import os, edge.images, edge.provisioning.device.update as u; from edge.images.rootfs import UNITS; "
            "print(edge.images.__file__, u.__file__, os.path.join(UNITS, 'hearth.service'))")
    r = subprocess.run([str(where / "venv" / "bin" / "python"), "-c", code], capture_output=True, text=True,
                       env=env, cwd=where, check=True)
    assert all(p.startswith(str(where / "venv")) for p in r.stdout.split()), r.stdout
    assert os.path.isfile(r.stdout.split()[-1])          # the systemd units travel as package data


def test_image_build_help_and_dry_run_from_the_installed_package(venv, tmp_path):
    r = run(venv, "image", "build", "--help")
    assert r.returncode == 0 and "--dry-run" in r.stdout, r.stderr
    for board in ("x86-64", "qemu-arm64", "rpi4"):
        r = run(venv, "image", "build", board, "--dry-run", "-o", str(tmp_path / board))
        assert r.returncode == 0, r.stderr
        assert "6. manifest" in r.stdout and f"agent source: {REPO}" in r.stdout
        recipe = next(line.split()[1] for line in r.stdout.splitlines() if line.startswith("recipe "))
        assert recipe.startswith(str(venv[0] / "venv")), recipe          # the installed recipe, not the checkout's
    for board in ("rpi5", "jetson-orin"):
        r = run(venv, "image", "build", board, "--dry-run", "-o", str(tmp_path / board))
        assert r.returncode != 0 and f"{board} cannot be built" in r.stderr and "Plan for" in r.stdout
