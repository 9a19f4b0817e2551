"""The store's commands through click: output, --json, exit status and the messages users see on mistakes."""

import json
import os

import pytest

from edge.units import parse_size
from tests.store.helpers import hearth_cli
from tests.store.trees import nested_tree, pattern


@pytest.fixture
def run(tmp_path):
    return hearth_cli(tmp_path / "store")


def test_add_cat_get_pins_gc_car_store(run, tmp_path):
    src = tmp_path / "f.bin"
    src.write_bytes(pattern(1_000_000))
    added = json.loads(run("add", "--json", str(src)).output)
    cid = added["cid"]
    assert added["size"] == 1_000_000 and added["pinned"]
    assert run("add", "-n", "-q", str(src)).output.strip() == cid
    assert run("cat", cid).stdout_bytes == pattern(1_000_000)
    assert run("cat", "--offset", "10", "--length", "5", cid).stdout_bytes == pattern(15)[10:]
    tree = run("add", "-q", nested_tree(str(tmp_path / "tree"))).output.strip()
    run("get", tree, "-o", str(tmp_path / "out"))
    assert (tmp_path / "out" / "sub" / "deeper" / "c.txt").read_bytes() == b"deep"
    assert {p["cid"] for p in json.loads(run("pin", "ls", "--json").output)} == {cid, tree}
    run("car", "export", tree, "-o", str(tmp_path / "t.car"))
    run("pin", "rm", tree)
    assert json.loads(run("gc", "--json").output)["removed"] > 0
    assert run("cat", f"{tree}/a.txt", ok=False).exit_code == 1
    assert "pinned root " + tree in run("car", "import", str(tmp_path / "t.car")).output
    assert run("cat", f"{tree}/a.txt").stdout_bytes == b"hello\n"
    stat = json.loads(run("store", "stat", "--json").output)
    assert stat["pins"] == 2 and stat["blocks"] > 5
    assert json.loads(run("store", "verify", "--json").output)["ok"]
    assert "quota set to 2,000,000" in run("store", "quota", "2MB").output
    # a repeating pattern in 1,000-byte chunks is mostly blocks already here: it fits though the input does not
    run("add", str(src), "--chunker", "size-1000")
    (tmp_path / "random.bin").write_bytes(os.urandom(1_500_000))
    refused = run("add", str(tmp_path / "random.bin"), ok=False)
    assert refused.exit_code == 1 and "quota" in refused.output and "random.bin" in refused.output
    run("store", "quota", "none")


def test_every_command_that_prints_data_has_json(run, tmp_path):
    src = tmp_path / "f.bin"
    src.write_bytes(pattern(300_000))
    cid = run("add", "-q", str(src)).output.strip()
    got = run("get", cid, "-o", str(tmp_path / "copy"), "--json")
    assert json.loads(got.stdout) == {"path": cid, "output": str(tmp_path / "copy"), "bytes": 300_000}
    assert (tmp_path / "copy").read_bytes() == pattern(300_000)
    assert json.loads(run("pin", "rm", cid, "--json").stdout) == {"cid": cid}
    assert json.loads(run("pin", "add", cid, "--name", "f", "--json").stdout) == {
        "cid": cid, "kind": "recursive", "name": "f"}
    exported = json.loads(run("car", "export", cid, "-o", str(tmp_path / "f.car"), "--json").stdout)
    assert exported == {"cid": cid, "output": str(tmp_path / "f.car"), "bytes": os.path.getsize(tmp_path / "f.car")}
    refused = run("car", "export", cid, "-o", "-", "--json", ok=False)
    assert refused.exit_code == 2 and "--json prints on stdout" in refused.output
    assert json.loads(run("store", "quota", "--json").stdout) == {"quota": None, "from": None}
    used = json.loads(run("store", "stat", "--json").stdout)["bytes"]     # the file's blocks and its root's
    assert json.loads(run("store", "quota", "3M", "--json").stdout) == {
        "set": 3_000_000, "used": used, "quota": 3_000_000, "from": "`hearth store quota`"}
    assert json.loads(run("store", "quota", "--json").stdout) == {"quota": 3_000_000, "from": "`hearth store quota`"}
    assert json.loads(run("store", "quota", "none", "--json").stdout)["set"] is None
    again = json.loads(run("init", "--json").stdout)
    assert again["created"] is False and again["node"].startswith("hn")
    assert (again["identity"], again["config"]) == (str(tmp_path / "store" / "identity.key"),
                                                   str(tmp_path / "store" / "hearth.toml"))


@pytest.mark.parametrize("args, words", [
    (("cat", "bafybad"), "invalid CID"),
    (("cat", "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"), "does not hold block"),
    (("pin", "rm", "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"), "not pinned"),
    (("store", "quota", "lots"), "not a size"),
])
def test_mistakes_get_one_clear_line(run, args, words):
    result = run(*args, ok=False)
    assert result.exit_code in (1, 2)
    assert words in result.output
    assert "Traceback" not in result.output


def test_bad_chunker_is_a_usage_error(run, tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    result = run("add", "--chunker", "size-0", str(tmp_path / "f"), ok=False)
    assert result.exit_code == 2 and "chunk size 0" in result.output


def test_corrupt_block_makes_verify_fail(run, tmp_path):
    (tmp_path / "f").write_bytes(pattern(300_000))
    cid = run("add", "-q", str(tmp_path / "f")).output.strip()
    blocks = tmp_path / "store" / "blocks"
    victim = next(p for d in blocks.iterdir() for p in d.iterdir() if p.name != cid)
    victim.write_bytes(b"garbage")
    result = run("store", "verify", ok=False)
    assert result.exit_code == 1 and f"corrupt (quarantined): {victim.name}" in result.output
    assert "damaged pin" in result.output or "pin with missing blocks" in result.output
    assert len(os.listdir(tmp_path / "store" / "quarantine")) == 1


def test_parse_size():
    assert parse_size("2G") == 2_000_000_000 and parse_size("1.5KiB") == 1536 and parse_size("77") == 77
    with pytest.raises(ValueError, match="KiB"):
        parse_size("12 parsecs")
