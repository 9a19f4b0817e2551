"""Provisioning is split by where it runs: the device side (edge/provisioning/device/: updates applied,
committed, rolled back) imports neither the host side (edge/provisioning/host/: flashing, making bundles with
mtools) nor the image builder; the host side does not reach into the device's. Both build on the shared
contracts (edge/provisioning/slots.py, edge/provisioning/bundle.py)."""

import os
import subprocess
import sys

from tests.test_architecture import _imports, _modules


def _side(module: str) -> str | None:
    names = module.split(".")
    if names[:2] == ["edge", "images"]:
        return "images"
    if names[:2] == ["edge", "provisioning"] and len(names) > 2 and names[2] in ("device", "host"):
        return names[2]
    return None


def test_the_device_side_imports_neither_the_host_side_nor_the_builder():
    against = []
    for path, module in _modules():
        mine = _side(module)
        for imported in _imports(path):
            theirs = _side(imported)
            if mine == "device" and theirs in ("host", "images") or mine == "host" and theirs in ("device", "images"):
                against.append(f"{module} imports {imported}")
    assert against == []


def test_applying_an_update_loads_no_host_side_module():
    code = ("import sys, edge.provisioning.device.update, edge.provisioning.device.versions; "
            "print(sorted(m for m in sys.modules if m.startswith(('edge.provisioning.host', 'edge.images'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ)
    assert out.stdout.strip() == "[]"
