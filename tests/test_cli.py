"""The hearth command: --version, doctor and the erasure demo, run through click's runner and as a process."""

import json
import subprocess
import sys

from click.testing import CliRunner

import edge
from edge.cli import main


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"hearth, version {edge.__version__}"


def test_doctor_json_reports_kernels_paths_and_encoders():
    result = CliRunner().invoke(main, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["hearth"] == edge.__version__
    assert report["python"] == sys.version.split()[0]
    kernels = {row["kernel"]: row for row in report["kernels"]}
    assert set(kernels) == {"erasure", "hashing", "chunking", "blockio"}
    assert all(row["native"] for row in kernels.values()), kernels
    from edge.kernels import _erasure

    assert f"path {_erasure.best_path()}" in kernels["erasure"]["detail"]
    assert "libx264" in report["encoders"]["video"]
    assert "aac" in report["encoders"]["audio"]
    assert report["problems"] == []


def test_doctor_text_names_every_section():
    result = CliRunner().invoke(main, ["doctor"])
    assert result.exit_code == 0, result.output
    for heading in ("libraries:", "native kernels:", "FFmpeg encoders (PyAV):"):
        assert heading in result.output


def test_demo_rebuilds_random_data():
    result = CliRunner().invoke(main, ["demo", "--size", "1000003", "-k", "6", "-m", "3", "--seed", "5"])
    assert result.exit_code == 0, result.output
    assert "lost shards" in result.output
    assert "verified: every byte" in result.output


def test_demo_on_a_file(tmp_path):
    path = tmp_path / "song.bin"
    path.write_bytes(bytes(range(256)) * 1000 + b"tail")
    result = CliRunner().invoke(main, ["demo", str(path), "-k", "4", "-m", "2"])
    assert result.exit_code == 0, result.output
    assert "256,004 bytes" in result.output


def test_hearth_entry_point_runs_as_a_process():
    out = subprocess.run([sys.executable, "-m", "edge", "--version"], capture_output=True, text=True, check=True)
    assert edge.__version__ in out.stdout


def test_every_command_loads_under_its_name_and_a_command_loads_only_its_own_module():
    """Commands load lazily (edge/cli/__init__.py's COMMANDS): each listed one is there under its own name, and
    `hearth run` or `hearth status` load the node group, not the fleet's, the image builder's or the media
    tools' modules (their RSS is the idle agent's)."""
    import subprocess
    import sys

    import click

    from edge.cli import COMMANDS
    ctx = click.Context(main)
    for name in main.list_commands(ctx):
        assert main.get_command(ctx, name).name == name
    assert set(COMMANDS) <= set(main.list_commands(ctx))
    probe = ("import sys, click\nfrom edge.cli import main\nmain.get_command(click.Context(main), sys.argv[1])\n"
             "print(' '.join(sorted(m for m in sys.modules if m.startswith('edge.cli.'))))")
    for name in ("run", "status"):
        loaded = subprocess.run([sys.executable, "-c", probe, name], capture_output=True, text=True, check=True,
                                timeout=60).stdout.split()
        assert loaded == ["edge.cli.common", "edge.cli.node", "edge.cli.output"], loaded
