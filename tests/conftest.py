"""Shared test configuration and fixtures."""

import os
import subprocess

import pytest
from hypothesis import settings

# CI runs on 2 shared cores: no hypothesis deadline (timing is never asserted in a test).
settings.register_profile("hearth", deadline=None, print_blob=True)
settings.load_profile("hearth")


# Markers by place, so everyday work runs the fast part (`make test-unit`) and `make test` runs everything:
# image (QEMU boots, image builds), browser (Chromium), integration (real agents as processes, several nodes,
# network namespaces), attack (issue 20's attack suite; marked in its files). `make test-unit` also leaves out the
# tests marked slow (large buffers; pyproject.toml's markers).
BY_DIRECTORY = {"images": "image", "browser": "browser", "agent": "integration", "security": "attack"}
INTEGRATION_FILES = {"gateway/test_corrupt.py", "gateway/test_neighbours.py", "gateway/test_torture.py",
                     "store/test_crash.py", "media/test_agent_urls.py",
                     "fleet/test_fleet_agents.py",   # agents as processes beside a real mosquitto
                     "fleet/test_fleet_scale_smoke.py",   # a real mosquitto, an agent process, simulated nodes
                     "transport/test_repair.py",          # several holders over real sockets, repairs and a leave
                     "transport/test_audit_cheats.py",    # real holders over CURVE, the owner's audits and repairs
                     "media/test_live.py"}                # live pipelines in real time: the worker process, RTMP
# single tests of otherwise fast files ("path::name")
INTEGRATION_TESTS = {"media/test_cli_media.py::test_live_publish_test_pattern"}   # 3 s of live media, real time


def pytest_collection_modifyitems(config, items):
    import os
    import pytest
    here = os.path.dirname(__file__)
    for item in items:
        rel = os.path.relpath(str(item.fspath), here).replace(os.sep, "/")
        marker = BY_DIRECTORY.get(rel.split("/", 1)[0])
        if marker is not None:
            item.add_marker(getattr(pytest.mark, marker))
        if rel in INTEGRATION_FILES or f"{rel}::{item.originalname}" in INTEGRATION_TESTS:
            item.add_marker(pytest.mark.integration)


def pytest_collection_finish(session):
    # the OS image builds that selected tests need start now, in the background at the lowest priority
    # (tests/images/builds.py): they take minutes of one process each, which the tests before them leave idle
    if not session.config.option.collectonly:
        from tests.images import builds
        builds.start_for(session.items)


def pytest_sessionfinish(session):
    from tests.images import builds
    builds.SESSION.close()


def mounted(where, fstype: str, *options: str):
    """A real file system of fstype mounted on the new folder `where` for a test, unmounted after it (a
    generator for a fixture to yield from); the test is skipped where mounting is not possible (needs root)."""
    if os.geteuid() != 0:
        pytest.skip(f"mounting a {fstype} needs root")
    where.mkdir()
    try:
        subprocess.run(["mount", "-t", fstype, *(["-o", ",".join(options)] if options else []), fstype,
                        str(where)], check=True, capture_output=True)
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        pytest.skip(f"cannot mount a {fstype} here: {exc}")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    """A real 8 MiB tmpfs: a disk that fills up. Needs root (mount)."""
    yield from mounted(tmp_path / "disk", "tmpfs", "size=8m")
