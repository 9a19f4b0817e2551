"""Light devices for the rollout tests: one process running the agent's own rollout service (Rollouts, each with
its own node key, fleet certificate, data directory, broker connection and test update backend) for several
devices, without the rest of an agent (store, transport, gateway), so that ten devices fit a small machine.

    python -m tests.fleet.rollout_devices BROKER_URL FLEET_ID DATA_DIR...

Each DATA_DIR holds node.key (or is given one), fleet.cert and test-update/update-keys. What a device did is in
DATA_DIR/rollout.json (the service's own state) and DATA_DIR/test-update/slot; its message counts are written to
DATA_DIR/rollout-counts.json each half second.
"""

import json
import os
import sys

import trio

from edge.atomic import write_atomic
from edge.config import load_config
from edge.identity import KEY_FILE, Identity
from edge.provisioning.device.rollout import Rollouts


class LightDevice:
    """What the rollout service reads of an agent: its config, node key and fleet certificate."""

    def __init__(self, data_dir: str, broker: str, fleet_id: str):
        self.config = load_config(env={}, flags={"data_dir": data_dir, "fleet_broker": broker, "fleet_key": fleet_id,
                                                 "update_backend": "test"})
        path = os.path.join(data_dir, KEY_FILE)
        if not os.path.exists(path):
            Identity.generate().save(path)
        self.identity = Identity.load(path)
        with open(os.path.join(data_dir, "fleet.cert"), "rb") as f:
            self.cert = f.read()


async def _counts(service: Rollouts, path: str):
    while True:
        write_atomic(path, json.dumps(service.counts).encode())
        await trio.sleep(0.5)


async def main(broker: str, fleet_id: str, dirs: list[str]) -> None:
    async with trio.open_nursery() as nursery:
        for d in dirs:
            service = Rollouts(LightDevice(d, broker, fleet_id))
            nursery.start_soon(service.run)
            nursery.start_soon(_counts, service, os.path.join(d, "rollout-counts.json"))


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], sys.argv[3:])
