"""What the store's command tests share."""

from click.testing import CliRunner

from edge.cli import main


def hearth_cli(data_dir):
    """`hearth --data-dir DATA_DIR`, run in this process after `hearth init`: invoke(*args, ok=True, env=None)
    gives click's result, its exit status checked to be 0 unless ok is False."""
    runner = CliRunner()
    assert runner.invoke(main, ["--data-dir", str(data_dir), "init"], env={}).exit_code == 0

    def invoke(*args, ok=True, env=None):
        result = runner.invoke(main, ["--data-dir", str(data_dir), *args], env=env or {}, catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, result.output
        return result
    return invoke
