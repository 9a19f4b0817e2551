"""The A/B rollout backend's handoff on an image: the agent (not root) hands a bundle over in DATA_DIR/update/,
root (`hearth update run-request`, here called directly) installs it with update.apply on files standing in for
the partitions, answers, and reboots on trial only after an install; links planted in the directory are not
followed."""

import json
import os
import shutil
import threading

import pytest

from edge.identity import Identity
from edge.provisioning.device.handoff import ask_reboot, hand_over, run_request
from edge.provisioning.device.update import apply
from edge.provisioning.slots import UpdateError
from tests.test_update import device, make  # noqa: F401 - the fixture

pytestmark = pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd is not installed")


def root_installs(dev, key):
    """update.apply as hearth-update.service runs it, on the test device's files."""
    def install(path, boot, log):
        return apply(path, boot=dev["boot"], trusted=[key.node_id], device_for=dev["device_for"],
                     cmdline=dev["cmdline"], log=log, image_info=dev["image"])
    return install


def handed(data_dir, bundle, serve):
    """hand_over in a thread (as the agent's worker thread) while serve() stands in for the .path unit."""
    out = {}

    def agent():
        try:
            out["result"] = hand_over(str(data_dir), bundle, wait=20, poll=0.05)
        except UpdateError as exc:
            out["error"] = str(exc)
    t = threading.Thread(target=agent)
    t.start()
    request = data_dir / "update" / "request"
    while t.is_alive():
        if request.exists():
            out["done"] = serve()
        t.join(0.05)
    return out


def test_root_installs_what_the_agent_hands_over_then_reboots_on_trial(tmp_path, device):  # noqa: F811
    key = Identity.generate()
    data = tmp_path / "data"
    data.mkdir()
    ran, said = [], []
    serve = lambda: run_request(str(data), boot=device["boot"], install=root_installs(device, key),  # noqa: E731
                                run=lambda cmd, check: ran.append(cmd), log=said.append)
    assert serve() == "nothing"
    out = handed(data, make(tmp_path, key, version="2.0"), serve)
    assert out["done"] == "installed" and out["result"]["slot"] == "b" and out["result"]["version"] == "2.0"
    assert not (data / "update" / "bundle").exists() and not (data / "update" / "request").exists()
    ask_reboot(str(data))
    assert serve() == "rebooting" and ran == [["systemctl", "reboot"]]
    ask_reboot(str(data))
    assert serve() == "no install to boot" and len(ran) == 1             # one install, one trial reboot
    print("\n" + "\n".join(said))


def test_a_refused_bundle_is_answered_with_the_reason_and_nothing_reboots(tmp_path, device):  # noqa: F811
    key = Identity.generate()
    data = tmp_path / "data"
    data.mkdir()
    ran = []
    serve = lambda: run_request(str(data), boot=device["boot"], install=root_installs(device, key),  # noqa: E731
                                run=lambda cmd, check: ran.append(cmd), log=lambda m: None)
    out = handed(data, make(tmp_path, Identity.generate(), name="foreign.bundle"), serve)
    assert out["done"] == "refused" and "not signed by a key this device trusts" in out["error"]
    ask_reboot(str(data))
    assert serve() == "no install to boot" and ran == []


def test_links_planted_in_the_directory_are_not_followed(tmp_path, device):  # noqa: F811
    data = tmp_path / "data"
    (data / "update").mkdir(parents=True)
    secret = tmp_path / "secret"
    secret.write_text("root's")
    os.symlink(secret, data / "update" / "request")
    assert run_request(str(data), boot=device["boot"], log=lambda m: None) == "refused"
    (data / "update" / "request").write_text(json.dumps({"do": "install"}))
    os.symlink(secret, data / "update" / "bundle")
    assert run_request(str(data), boot=device["boot"], log=lambda m: None) == "refused"
    assert "no bundle" in json.loads((data / "update" / "result").read_text())["error"]
    assert secret.read_text() == "root's"
