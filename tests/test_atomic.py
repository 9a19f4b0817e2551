"""edge/atomic.py's write_atomic when a process's threads write the same file at once (the rollout state: the
install task and the broker's loop each persist it from a worker thread). Real files, real threads."""

import os
import threading

from edge.atomic import remove_stale_temps, temp_name, write_atomic

WRITES = 300


def test_threads_writing_one_file_at_once_each_succeed_and_leave_one_whole_version(tmp_path):
    path = str(tmp_path / "state.json")
    versions = {f"thread {t} write {i}\n".encode() * 50 for t in range(4) for i in range(WRITES)}
    errors = []
    start = threading.Barrier(4)

    def writer(t):
        start.wait()
        for i in range(WRITES):
            try:
                write_atomic(path, f"thread {t} write {i}\n".encode() * 50)
            except Exception as exc:   # with one temporary name a process, a thread's rename lost its file
                errors.append(repr(exc))
    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    with open(path, "rb") as f:
        assert f.read() in versions                       # one whole version, never a mix
    assert os.listdir(tmp_path) == ["state.json"]         # no temporary file left


def test_the_temporary_name_is_this_threads_and_a_stale_one_of_either_form_is_removed(tmp_path):
    mine = temp_name("hearth.toml")
    other = []
    th = threading.Thread(target=lambda: other.append(temp_name("hearth.toml")))
    th.start()
    th.join()
    assert mine != other[0] and mine.startswith(f"hearth.toml.tmp{os.getpid()}.")
    for name in (mine, "hearth.toml.tmp4242", "hearth.toml.tmp4242.17", "hearth.toml.tmpx", "other.tmp1"):
        (tmp_path / name).write_text("left by a power cut")
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        removed = remove_stale_temps(["hearth.toml"], fd)
    finally:
        os.close(fd)
    assert sorted(removed) == sorted([mine, "hearth.toml.tmp4242", "hearth.toml.tmp4242.17"])
    assert sorted(os.listdir(tmp_path)) == ["hearth.toml.tmpx", "other.tmp1"]
