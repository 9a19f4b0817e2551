"""The device's side of staged rollouts: an agent service (fleet_broker, fleet_key and update_backend set).

It watches the fleet's retained rollout record (edge/fleet/rollouts.py), takes only one a rollout key the fleet
certified signed, with a sequence number above the highest it took before (kept in DATA_DIR/rollout.json, so a
replayed old command changes nothing, across restarts too), and decides by itself whether its wave is open.
When it is, and the rollout is running: download the bundle over HTTP (its SHA-256 must be the command's),
install it through the update backend (update.apply: signature, board, version floor, every file's hash, as
`hearth update apply`), boot it on trial, and report. Every step is a signed, retained report on
hearth/FLEET/rollout-report/NODE: waiting (seen, its wave not open), installing, then healthy (the new slot
booted), rolled-back (the boot loader went back to the old slot) or failed (with why). The report of a device
that rebooted is made by the agent on the next boot, from the slot it booted. A halted rollout starts no
install; a node installs a rollout at most once.

It has its own broker connection (client id NODE-rollout), so the fleet plane is untouched by it; whatever the
broker does ends that connection only, and the service reconnects with backoff.
"""

import hashlib
import json
import logging
import os
import random
import time
import urllib.error
import urllib.request

import trio

from edge.atomic import write_atomic
from edge.fleet.mqtt import BrokerError, connect, parse_broker
from edge.fleet.records import RecordError, fleet_name, next_seq
from edge.fleet.rollouts import FINAL, Report, Rollout, read_rollout, report_topic, rollout_topic, sign_report, \
    wave_of
from edge.identity import public_key_of
from edge.logsafe import printable
from edge.provisioning.device.backends import backend_for
from edge.provisioning.slots import UpdateError
from edge.service import Handle

log = logging.getLogger(__name__)
STATE = "rollout.json"
BUNDLE = "rollout-bundle"
MAX_BUNDLE = 8 << 30          # bytes a bundle may be (a root file system of a few GiB, compressed)
CHUNK = 1 << 20
HTTP_TIMEOUT = 30.0
BACKOFF = (1.0, 60.0)
RATE = 20.0                   # rollout records checked a second (one rollout key publishes a few an hour)


class DownloadError(UpdateError):
    """The bundle could not be fetched, or is not the one the rollout named."""


def _remove(*paths: str) -> None:
    for path in paths:
        if os.path.exists(path):
            os.unlink(path)


def download(url: str, sha256: bytes, path: str, limit: int = MAX_BUNDLE) -> int:
    """Fetch url to path (through path + ".part"), checking its size and SHA-256 against the rollout's; the
    byte count. Blocking: run it in a worker thread."""
    digest, size, part = hashlib.sha256(), 0, path + ".part"
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as response, open(part, "wb") as out:
            for chunk in iter(lambda: response.read(CHUNK), b""):
                size += len(chunk)
                if size > limit:
                    raise DownloadError(f"the bundle at {url} is larger than {limit} bytes")
                digest.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DownloadError(f"cannot download {url}: {exc}") from None
    if digest.digest() != sha256:
        os.unlink(part)
        raise DownloadError(f"the bundle at {url} is not the one the rollout names (its SHA-256 differs)")
    os.replace(part, path)
    return size


def _well_formed(state) -> bool:
    """Whether a state file holds what Rollouts writes (a damaged one is replaced, never half used)."""
    if not isinstance(state, dict) or not isinstance(state.get("seq"), int) or \
            not isinstance(state.get("rollout"), str) or not isinstance(state.get("outcome"), str):
        return False
    report, pending = state.get("report"), state.get("pending")
    fields = {"node", "seq", "time", "rollout", "state", "version", "slot", "detail", "cert"}
    return (report is None or (isinstance(report, dict) and set(report) == fields)) and \
        (pending is None or (isinstance(pending, dict) and isinstance(pending.get("slot"), str)
                             and isinstance(pending.get("version"), str)))


class Rollouts:
    def __init__(self, agent, backend=None):
        config = agent.config
        self.agent = agent
        self.config = config
        self.node = agent.identity.node_id
        self.fleet = fleet_name(config.fleet_key)
        self.fleet_key = public_key_of(config.fleet_key)
        self.broker = parse_broker(config.fleet_broker)
        self.ca_file = os.path.join(config.data_dir, config.fleet_broker_ca) if config.fleet_broker_ca else None
        self.backend = backend or backend_for(config.update_backend, config.data_dir)
        self.path = os.path.join(config.data_dir, STATE)
        self.state = self._load()
        self.current: Rollout | None = None
        self.installing = False
        self.session = None
        self.counts: dict[str, int] = {}
        self.last_error = ""
        self._seq = 0
        self._dirty = False
        self._persisting = trio.Lock()   # one write of the state at a time, in the order they were asked for
        self._tokens, self._filled = 5 * RATE, time.monotonic()

    # what is kept --------------------------------------------------------------------------------------------

    def _load(self) -> dict:
        """{"seq": the highest rollout seq taken, "rollout": its id, "outcome": this node's last report state on
        it, "report": that report's fields, "pending": {"slot", "version"} while a trial boot is under way}."""
        try:
            with open(self.path) as f:
                state = json.load(f)
            if _well_formed(state):
                return state
            log.warning("rollouts: %s is not one this agent wrote; starting afresh", self.path)
            if isinstance(state, dict) and isinstance(state.get("seq"), int) and state["seq"] >= 0:
                return {"seq": state["seq"], "rollout": "", "outcome": "", "report": None, "pending": None}
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.warning("rollouts: %s is unreadable (%s); starting afresh", self.path, exc)
        return {"seq": 0, "rollout": "", "outcome": "", "report": None, "pending": None}

    def _save(self) -> None:
        """Mark the state to be written (persist() writes it, in a worker thread: an fsync can take a while)."""
        self._dirty = True

    async def persist(self) -> None:
        """Write the state if it changed. The install task and the broker's loop both persist: one write at a
        time, each of the state as it is when its turn comes, so the file never goes back to an older state. A
        write that fails leaves the state marked, for the next persist to try again, and raises OSError."""
        async with self._persisting:
            if self._dirty:
                self._dirty = False
                data = json.dumps(self.state, sort_keys=True).encode()
                try:
                    await trio.to_thread.run_sync(write_atomic, self.path, data)
                except BaseException:
                    self._dirty = True
                    raise

    async def persist_or_say(self) -> OSError | None:
        """persist(), with a write that fails (a full disk) logged and handed back, never raised: the state stays
        marked for the next persist."""
        try:
            await self.persist()
        except OSError as exc:
            log.warning("rollouts: cannot write %s: %s", self.path, exc)
            return exc
        return None

    def _admit(self) -> bool:
        """A token per record checked (RATE a second, bursts of 5 x RATE): a flood of forged records costs what
        it is allowed, not a core's worth of signature checks."""
        now = time.monotonic()
        self._tokens = min(5 * RATE, self._tokens + (now - self._filled) * RATE)
        self._filled = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def _count(self, what: str) -> str:
        self.counts[what] = self.counts.get(what, 0) + 1
        return what

    # reports -------------------------------------------------------------------------------------------------

    def report(self, rollout_id: str, state: str, version: str = "", detail: str = "") -> bytes:
        """Record (and publish, when connected) this node's report on a rollout; the signed bytes."""
        self._seq = next_seq(max(self._seq, (self.state.get("report") or {}).get("seq", 0)))
        slot = ""
        try:
            slot = self.backend.booted_slot()
        except UpdateError:
            pass
        fields = {"node": self.node, "seq": self._seq, "time": int(time.time()), "rollout": rollout_id,
                  "state": state, "version": version[:32], "slot": slot[:8],
                  "detail": printable(detail).encode("ascii", "replace").decode()[:200],
                  "cert": self.agent.cert or b""}
        data = sign_report(Report(**fields), self.agent.identity)
        self.state.update(rollout=rollout_id, outcome=state, report=fields | {"cert": None})
        self._save()
        self._publish(data)
        log.info("rollouts: %s on %s%s", state, rollout_id, f" ({detail})" if detail else "")
        return data

    def _signed_last(self) -> bytes | None:
        fields = self.state.get("report")
        if not fields:
            return None
        return sign_report(Report(**(fields | {"cert": self.agent.cert or b""})), self.agent.identity)

    def _publish(self, data: bytes) -> None:
        if self.session is not None:
            self.session.publish(report_topic(self.fleet, self.node), data, retain=True)

    # the boot after an install ------------------------------------------------------------------------------

    def after_boot(self) -> None:
        """A trial boot is under way (pending): report healthy when the new slot booted, else rolled back."""
        pending = self.state.get("pending")
        if not pending:
            if self.state.get("outcome") == "installing":   # the agent stopped mid-install, before the reboot
                self.report(self.state["rollout"], "failed", "", "the install was cut short (the agent stopped "
                            "before it was done)")
            return
        self.state["pending"] = None
        booted = self.backend.booted_slot()
        if booted == pending["slot"]:
            self.report(self.state["rollout"], "healthy", pending["version"], f"running slot {booted}")
        else:
            self.report(self.state["rollout"], "rolled-back", pending["version"],
                        f"the trial boot of slot {pending['slot']} failed; the boot loader went back to slot "
                        f"{booted}")

    # the rollout record -------------------------------------------------------------------------------------

    def handle(self, topic: str, payload: bytes, now: float | None = None) -> str:
        """Take one message from the broker; what was done with it (counted): "install" when this node's wave
        is open and it should install now."""
        if topic != rollout_topic(self.fleet) or not payload:
            return self._count("ignored")
        if not self._admit():
            return self._count("dropped: flood")
        try:
            rollout = read_rollout(payload, self.fleet_key, now)
        except RecordError as exc:
            log.debug("rollouts: dropped a rollout record: %s", exc)
            return self._count("dropped: " + exc.reason)
        if rollout.seq <= self.state["seq"]:
            return self._count("dropped: replayed")
        self.state["seq"] = rollout.seq
        self.current = rollout
        self._save()
        if self.installing:   # the install under way finishes and reports first
            return self._count("accepted")
        mine = rollout.id == self.state.get("rollout")
        if not mine:
            self.state.update(rollout="", outcome="")
        elif self.state.get("outcome") in FINAL + ("installing",):
            return self._count("accepted")
        if rollout.state == "done" or (rollout.state == "running" and wave_of(rollout, self.node) <= rollout.wave):
            return self._count("install")
        if not mine:
            self.report(rollout.id, "waiting", rollout.version,
                        f"wave {wave_of(rollout, self.node) + 1} of {len(rollout.waves)}")
        return self._count("accepted")

    async def install(self, rollout: Rollout) -> None:
        """Download, install, boot on trial, report; failures are reported, never raised."""
        self.installing = True
        try:
            self.report(rollout.id, "installing", rollout.version)
            failed = await self.persist_or_say()
            if failed is not None:   # a full disk: nothing is installed that this node could not report on
                self.report(rollout.id, "failed", rollout.version, f"cannot write {STATE}: {failed.strerror or failed}")
                return
            bundle = os.path.join(self.config.data_dir, BUNDLE)
            try:
                # abandoned when the agent stops (an install is safe to cut at any point: update.py)
                await trio.to_thread.run_sync(download, rollout.url, rollout.sha256, bundle, abandon_on_cancel=True)
                done = await trio.to_thread.run_sync(self.backend.install, bundle, log.info, abandon_on_cancel=True)
            except UpdateError as exc:
                self.report(rollout.id, "failed", rollout.version, str(exc))
                return
            finally:
                await trio.to_thread.run_sync(_remove, bundle, bundle + ".part")
            self.state["pending"] = {"slot": done["slot"], "version": rollout.version}
            self._save()
            await self.persist()           # what the next boot reports from, on disk before the reboot
            try:
                await trio.to_thread.run_sync(self.backend.reboot)
            except UpdateError as exc:     # armed all the same: the next boot tries it and reports
                self.report(rollout.id, "failed", rollout.version, f"installed in slot {done['slot']} but {exc}")
                return
            if self.backend.reboots:
                await trio.sleep_forever()   # the system is going down; the next boot reports
            self.after_boot()
        except Exception as exc:   # noqa: BLE001 - a bug fails this install, never the agent
            log.exception("rollouts: the install failed")
            self.report(rollout.id, "failed", rollout.version, repr(exc)[:200])
        finally:
            self.installing = False
            with trio.CancelScope(shield=True):
                await self.persist_or_say()

    def as_dict(self) -> dict:
        current = self.current
        return {"backend": self.backend.name, "connected": self.session is not None, "last_error": self.last_error,
                "rollout": current.id if current else self.state.get("rollout", ""),
                "rollout_state": current.state if current else "", "outcome": self.state.get("outcome", ""),
                "messages": dict(self.counts)}

    async def run(self) -> None:
        try:
            self.after_boot()
        except (UpdateError, RecordError, OSError) as exc:   # nothing to report from: said, never raised
            log.warning("rollouts: cannot tell how the trial boot went: %s", exc)
        await self.persist_or_say()
        async with trio.open_nursery() as installs:   # an install outlives a lost connection
            delay = BACKOFF[0]
            while True:
                try:
                    async with connect(self.broker, f"{self.node}-rollout", ca_file=self.ca_file) as session:
                        self.session, delay = session, BACKOFF[0]
                        last = self._signed_last()
                        if last is not None:   # the broker may have lost it (a restart without persistence)
                            self._publish(last)
                        session.subscribe(rollout_topic(self.fleet))
                        async for topic, payload, _ in session.messages:
                            action = self.handle(topic, payload)
                            await self.persist()   # the seq taken is on disk before anything is acted on
                            if action == "install":
                                self.installing = True
                                installs.start_soon(self.install, self.current)
                except BrokerError as exc:
                    self.last_error = str(exc)
                    log.warning("rollouts: %s; trying again within %.0f s", exc, delay)
                except Exception as exc:   # noqa: BLE001 - a bug ends this connection, never the agent
                    self.last_error = printable(repr(exc))[:200]
                    log.warning("rollouts: the connection to %s failed: %s", self.broker, self.last_error)
                finally:
                    self.session = None
                await trio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(BACKOFF[1], delay * 2)


async def serve_rollouts(agent, *, task_status=trio.TASK_STATUS_IGNORED):
    """Staged rollouts on this node (started when fleet_broker, fleet_key and update_backend are set)."""
    try:
        service = Rollouts(agent)
    except (UpdateError, OSError) as exc:   # e.g. the test backend's directory cannot be made: off, said once
        log.error("rollouts: off: %s", exc)
        task_status.started(Handle("rollouts", lambda: {"error": str(exc)}))
        return
    task_status.started(Handle("rollouts", service.as_dict))
    await service.run()
