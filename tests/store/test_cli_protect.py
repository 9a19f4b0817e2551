"""`--protect` and the `protect` setting without a running agent: a clear line, the file still added and pinned."""

import json

import pytest

from tests.store.helpers import hearth_cli
from tests.store.trees import pattern


@pytest.fixture
def run(tmp_path):
    return hearth_cli(tmp_path / "store")


def test_protect_needs_the_agent_and_says_so(run, tmp_path):
    src = tmp_path / "f.bin"
    src.write_bytes(pattern(100_000))
    refused = run("add", "--protect", "auto", str(src), ok=False)
    assert refused.exit_code == 1 and "no agent is running" in refused.output and "hearth run" in refused.output
    cid = json.loads(run("add", "--json", str(src)).output)["cid"]
    assert "no agent is running" in run("pin", "add", "--protect", "2+2", cid, ok=False).output
    # the setting: without an agent, a note instead of an error
    said = run("add", str(src), env={"HEARTH_PROTECT": "auto"}).output
    assert "not protected (protect = auto): no agent is running" in said
    bad = run("add", str(src), env={"HEARTH_PROTECT": "four"}, ok=False)
    assert bad.exit_code != 0
    assert "use auto, K+M" in bad.output or "use auto, K+M" in str(bad.exception)
    assert "drop --only-hash" in run("add", "-n", "--protect", "auto", str(src), ok=False).output
    assert {p["cid"]: "protect" in p for p in json.loads(run("pin", "ls", "--json").output)} == {cid: False}
