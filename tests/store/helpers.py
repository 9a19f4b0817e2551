"""What the store's command tests share."""

import contextlib

from click.testing import CliRunner

from edge.cli import main
from edge.store import StoreError


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


@contextlib.contextmanager
def writer_trace(store, prefixes):
    """The SQL statements starting with prefixes that the store's writer connection runs inside the block.
    The trace is set and cleared by jobs on the writer thread itself: sqlite3's set_trace_callback called from
    another thread waits, holding the GIL, for the connection's mutex, which the writer holds while its own
    callback waits for the GIL (a deadlock that hung CI when a flush raced the test's clearing call). The
    setting job is a durable one, so the writer's next non-durable batch shows its `PRAGMA synchronous`."""
    seen: list[str] = []
    recording = [True]

    def record(sql):
        if recording[0] and sql.startswith(prefixes):
            seen.append(sql)
    store.catalog.write(lambda db: db.set_trace_callback(record))
    try:
        yield seen
    finally:
        recording[0] = False
        try:
            store.catalog.write(lambda db: db.set_trace_callback(None))
        except StoreError:   # closed inside the block: its connection is gone with its trace
            pass
