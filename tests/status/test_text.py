"""What the terminal shows: a fetch's progress line with its total, percent and time left."""

from edge.cli import output


def test_the_fetch_line_has_the_total_the_percent_and_the_time_left(capsys):
    mib = 1 << 20
    output.fetch_progress({"blocks": 21, "bytes": 5 * mib, "total": 10 * mib, "done": 5 * mib, "percent": 50.0,
                           "rate": 2_000_000, "eta": 2.6})
    line = capsys.readouterr().err
    assert line.startswith("\rfetching from neighbours: 5.0 of 10.0 MiB (50%), 21 blocks, 2.0 MB/s, 3 s left")
    output.fetch_progress({"blocks": 3, "bytes": mib, "total": None, "done": 0})   # the root not here yet
    assert capsys.readouterr().err.startswith("\rfetching from neighbours: 3 blocks, 1.0 MiB")
    output.fetch_progress({"blocks": 3, "bytes": mib, "total": 90 * mib, "done": mib, "percent": 1.1, "rate": 1e5,
                           "eta": 4000})
    assert "1 h 06 min left" in capsys.readouterr().err
    output.fetch_progress(None)
    assert capsys.readouterr().err == "\n"
