"""Staged rollouts' records, the controller's steps and a device's decisions, without a broker: a command signed
by a key the fleet did not certify, a replayed one and a halted one change nothing; waves are deterministic."""

import hashlib
import shutil
import time
from dataclasses import replace

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.config import load_config
from edge.fleet.certificates import CertificateError, sign_certificate
from edge.fleet.records import RecordError
from edge.fleet.rollout_control import step, tally
from edge.fleet.rollouts import (Report, Rollout, certify_rollout_key, check_rollout_key, parse_report, parse_share,
                                 parse_waves, read_rollout, rollout_topic, sign_report, sign_rollout, wave_of)
from edge.identity import Identity
from edge.ipld import cbor
from edge.provisioning.device.rollout import Rollouts
from tests.ipld.test_formats import mutations

FLEET = Identity.from_seed(bytes(range(1, 33)))
OTHER_FLEET = Identity.from_seed(bytes(range(2, 34)))
KEY = Identity.from_seed(bytes(range(3, 35)))
CERT = certify_rollout_key(FLEET, KEY.node_id, 30)
NOW = time.time()
NODES = [Identity.from_seed(hashlib.sha256(b"node%d" % i).digest()) for i in range(200)]


def rollout(**kw) -> Rollout:
    base = Rollout("0123456789abcdef", int(NOW * 1000), int(NOW), "http://10.0.0.1:8000/b.bundle", bytes(32),
                   "2.0", (1000, 5000, 10000), 200, key=CERT)
    return replace(base, **kw)


def test_round_trip_and_the_fleet_check():
    data = sign_rollout(rollout(), KEY)
    assert read_rollout(data, FLEET.public_key) == rollout()
    with pytest.raises(RecordError) as err:
        read_rollout(data, OTHER_FLEET.public_key)
    assert err.value.reason == "not certified"
    assert check_rollout_key(CERT, FLEET.public_key)[0] == KEY.node_id
    with pytest.raises(CertificateError, match="expired"):
        check_rollout_key(CERT, FLEET.public_key, now=NOW + 31 * 86400)


def test_a_command_forged_by_a_key_the_fleet_did_not_certify_is_refused():
    mallory = Identity.generate()
    self_certified = certify_rollout_key(mallory, mallory.node_id, 30)     # certified by a "fleet" of its own
    for data in (sign_rollout(rollout(key=self_certified), mallory),
                 sign_rollout(rollout(), mallory)):                        # the real certificate, another signer
        with pytest.raises(RecordError) as err:
            read_rollout(data, FLEET.public_key)
        assert err.value.reason in ("not certified", "unsigned")
    value = cbor.loads(sign_rollout(rollout(), KEY))
    value["url"] = "http://evil.example/b.bundle"                        # a field changed after signing
    with pytest.raises(RecordError, match="not signed"):
        read_rollout(cbor.dumps(value), FLEET.public_key)
    # the enrollment delegation's or a node certificate's bytes do not pass for a rollout key's
    with pytest.raises(CertificateError):
        check_rollout_key(sign_certificate(FLEET, KEY.node_id), FLEET.public_key)


def test_bounds_and_shares():
    assert parse_waves("1%,10%,50%,100%") == (100, 1000, 5000, 10000) and parse_share("2%") == 200
    assert parse_share("0.5") == 50
    for bad in ("10%,5%,100%", "10%,50%", "0%,100%", "abc", "150%"):
        with pytest.raises(RecordError):
            parse_waves(bad)
    for bad in (rollout(url="file:///etc/passwd"), rollout(id="nothex"), rollout(failed=("x",)),
                rollout(wave=3), rollout(state="paused"), rollout(sha256=b"short")):
        with pytest.raises(RecordError):
            sign_rollout(bad, KEY)


def test_waves_are_deterministic_and_proportional():
    r = rollout()
    waves = [wave_of(r, n.node_id) for n in NODES]
    assert waves == [wave_of(r, n.node_id) for n in NODES]
    counts = [waves.count(i) for i in range(3)]
    print(f"\n200 nodes over waves 10%, 50%, 100%: {counts}")
    assert 5 <= counts[0] <= 40 and 50 <= counts[0] + counts[1] <= 150
    assert [wave_of(replace(r, id="fedcba9876543210"), n.node_id) for n in NODES] != waves   # another order


def report(node: Identity, state: str, rollout_id="0123456789abcdef", seq=1) -> Report:
    return Report(node.node_id, seq, int(NOW), rollout_id, state, "2.0", cert=sign_certificate(FLEET, node.node_id))


def test_reports_round_trip_and_are_the_nodes_own():
    node = NODES[0]
    data = sign_report(report(node, "healthy"), node)
    assert parse_report(data) == report(node, "healthy")
    with pytest.raises(RecordError):
        sign_report(report(NODES[1], "healthy"), node)


def reports_for(r: Rollout, states: dict[int, str]) -> dict:
    """Reports of the first 20 nodes: state by wave (the default "waiting")."""
    return {n.node_id: report(n, states.get(wave_of(r, n.node_id), "waiting")) for n in NODES[:20]}


def test_the_controller_moves_on_when_a_wave_is_healthy_and_halts_naming_the_failed():
    r = rollout()
    first = reports_for(r, {0: "installing"})
    assert step(r, first, settled=True) is None                              # wave 1 still installing
    healthy = reports_for(r, {0: "healthy"})
    assert step(r, healthy, settled=False) is None                           # not settled yet
    nxt = step(r, healthy, settled=True)
    assert nxt.wave == 1 and nxt.state == "running" and nxt.seq > r.seq
    failing = reports_for(nxt, {0: "healthy", 1: "failed"})
    halted = step(nxt, failing, settled=False)
    members = tally(nxt, failing)["members"]
    assert halted.state == "halted" and set(halted.failed) == {n for n, rep in failing.items()
                                                               if rep.state == "failed"}
    print(f"\nhalted: {halted.reason} ({members} members)")
    stuck = reports_for(r, {0: "installing"})
    silent = step(r, stuck, settled=True, now=NOW + 3601)                  # nothing heard for an hour: failed
    assert silent.state == "halted" and "silent" in silent.reason and set(silent.failed) == {
        n for n, rep in stuck.items() if rep.state == "installing"}
    last = replace(nxt, wave=2)
    done = step(last, {n: replace(rep, state="healthy") for n, rep in failing.items()}, settled=True)
    assert done.state == "done" and step(done, failing, True) is None


class Device:
    """What the rollout service reads of an agent: its config, identity and fleet certificate."""

    def __init__(self, data_dir, identity):
        self.config = load_config(env={}, flags={"data_dir": str(data_dir), "fleet_broker": "mqtt://127.0.0.1:1",
                                                 "fleet_key": FLEET.node_id, "update_backend": "test"})
        self.identity = identity
        self.cert = sign_certificate(FLEET, identity.node_id)


def test_a_device_ignores_forged_replayed_and_halted_commands(tmp_path):
    node = next(n for n in NODES if wave_of(rollout(), n.node_id) == 0)
    device = Rollouts(Device(tmp_path, node))
    topic = rollout_topic(FLEET.node_id)
    mallory = Identity.generate()
    assert device.handle(topic, sign_rollout(rollout(seq=10**13), mallory)).startswith("dropped")
    halted = rollout(state="halted", seq=rollout().seq + 5)
    assert device.handle(topic, sign_rollout(halted, KEY)) == "accepted"     # halted: no install
    assert device.handle(topic, sign_rollout(rollout(), KEY)) == "dropped: replayed"   # the older "running"
    assert device.state["outcome"] == "waiting"
    trio.run(device.persist)
    again = Rollouts(Device(tmp_path, node))                                 # after a restart too
    assert again.handle(topic, sign_rollout(rollout(), KEY)) == "dropped: replayed"
    resumed = replace(halted, state="running", seq=halted.seq + 1)
    assert again.handle(topic, sign_rollout(resumed, KEY)) == "install"
    late = next(n for n in NODES if wave_of(rollout(), n.node_id) == 2)
    other = Rollouts(Device(tmp_path / "late", late))
    assert other.handle(topic, sign_rollout(resumed, KEY)) == "accepted" and other.state["outcome"] == "waiting"
    done = replace(resumed, state="done", seq=resumed.seq + 1)            # a done rollout: every wave is open
    assert other.handle(topic, sign_rollout(done, KEY)) == "install"
    print(f"\n{device.counts} {again.counts}")


@pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd is not installed")
def test_the_test_backend_installs_through_update_apply(tmp_path):
    from edge.provisioning.device.backends import TestBackend
    from edge.provisioning.slots import UpdateError
    from tests.test_update import make
    signer = Identity.generate()
    backend = TestBackend(str(tmp_path))
    (tmp_path / "test-update" / "update-keys").write_text(signer.node_id + "\n")
    good = make(tmp_path, signer, version="2.0", board="test", name="good.bundle")
    assert backend.install(good, log=lambda m: None)["slot"] == "b"
    backend.reboot()
    assert backend.booted_slot() == "b"
    failing = make(tmp_path, signer, version="3.0", board="test", name="fail.bundle", extra={"test_trial": "fail"})
    assert backend.install(failing, log=lambda m: None)["slot"] == "a"
    backend.reboot()
    assert backend.booted_slot() == "b"                                   # the boot loader went back
    with pytest.raises(UpdateError, match="not signed"):
        backend.install(make(tmp_path, Identity.generate(), board="test", name="x.bundle"), log=lambda m: None)
    with pytest.raises(UpdateError, match="board"):
        backend.install(make(tmp_path, signer, version="4.0", name="y.bundle"), log=lambda m: None)


def _outcome(parse, data):
    try:
        return parse(data)
    except RecordError as exc:
        assert str(exc)
        return None


@given(mutations(sign_rollout(rollout(failed=(NODES[0].node_id,), reason="x"), KEY)))
@settings(max_examples=300)
def test_mutated_rollout_records_are_refused_or_unchanged(data):
    got = _outcome(lambda d: read_rollout(d, FLEET.public_key, now=NOW), data)
    assert got is None or got == rollout(failed=(NODES[0].node_id,), reason="x")


@given(mutations(sign_report(report(NODES[0], "rolled-back"), NODES[0])))
@settings(max_examples=200)
def test_mutated_reports_are_refused_or_unchanged(data):
    got = _outcome(parse_report, data)
    assert got is None or got == report(NODES[0], "rolled-back")


@given(st.binary(max_size=400))
def test_random_bytes_are_no_record(data):
    assert _outcome(lambda d: read_rollout(d, FLEET.public_key), data) is None
    assert _outcome(parse_report, data) is None


def test_the_commands_say_what_is_wrong_in_one_line(tmp_path):
    from click.testing import CliRunner

    from edge.cli import main
    FLEET.save(str(tmp_path / "fleet.key"))
    run = lambda *args: CliRunner().invoke(main, list(args))   # noqa: E731
    made = run("fleet", "rollout-key", "--key", str(tmp_path / "fleet.key"), "-o", str(tmp_path / "r.key"))
    assert made.exit_code == 0 and (tmp_path / "r.key.cert").exists(), made.output
    assert check_rollout_key((tmp_path / "r.key.cert").read_bytes(), FLEET.public_key)[0] in made.output
    again = run("fleet", "rollout-key", "--key", str(tmp_path / "fleet.key"), "-o", str(tmp_path / "r.key"))
    assert again.exit_code == 1 and "never overwritten" in again.output
    key = ("--broker", "mqtt://127.0.0.1:1", "--key", str(tmp_path / "r.key"))
    bad_waves = run("fleet", "rollout", "http://127.0.0.1:1/b.bundle", *key, "--waves", "50%,10%")
    assert bad_waves.exit_code == 2 and "rising" in bad_waves.output
    unreachable = run("fleet", "rollout", "http://127.0.0.1:1/b.bundle", *key)
    assert unreachable.exit_code == 1 and "cannot download" in unreachable.output
    no_cert = run("fleet", "rollout", "halt", "--broker", "mqtt://127.0.0.1:1", "--key", str(tmp_path / "fleet.key"))
    assert no_cert.exit_code == 1 and "rollout-key" in no_cert.output
    no_broker = run("fleet", "rollout", "status", "--broker", "mqtt://127.0.0.1:1", "--fleet", FLEET.node_id)
    assert no_broker.exit_code == 1 and "cannot reach" in no_broker.output
    print("\n" + "".join(r.output for r in (bad_waves, unreachable, no_cert, no_broker)))


GOLDEN_REPORT = (   # Report(NODES[0], seq 7, time 1760000000, rollout 0123456789abcdef, rolled-back, "2.0", "a", "x")
    "ab" "6174" "667265706f7274" "63736571" "07" "63736967" "5840"
    "31144d42290ffebca2f84956d175b8f1f672be1018fdf137bf3b632ba847467f"
    "f921eb742832e2311e6f3a243466ea03c765640a0be3620b7f45fb859439cb0d"
    "6463657274" "40" "646e6f6465" "7836" + NODES[0].node_id.encode().hex() + "64736c6f74" "6161"
    "6474696d65" "1a68e77800" "657374617465" "6b726f6c6c65642d6261636b" "6664657461696c" "6178"
    "67726f6c6c6f7574" "70" + b"0123456789abcdef".hex() + "6776657273696f6e" "63322e30")


def test_golden_report():
    record = Report(NODES[0].node_id, 7, 1_760_000_000, "0123456789abcdef", "rolled-back", "2.0", "a", "x")
    assert sign_report(record, NODES[0]).hex() == GOLDEN_REPORT
    assert parse_report(bytes.fromhex(GOLDEN_REPORT)) == record


def test_a_damaged_state_file_is_replaced_not_half_used(tmp_path):
    node = NODES[0]
    (tmp_path / "rollout.json").write_text('{"seq": 5, "rollout": "", "outcome": "", "report": {"x": 1}}')
    device = Rollouts(Device(tmp_path, node))
    assert device.state["seq"] == 5 and device.state["report"] is None      # the seq taken still holds


def test_the_largest_rollout_record_fits_one_mqtt_packet():
    from edge.fleet.mqtt import MAX_PACKET
    from edge.fleet.rollouts import MAX_FAILED, MAX_ROLLOUT, MAX_URL
    largest = rollout(url="http://" + "h" * (MAX_URL - 7), failed=tuple(n.node_id for n in NODES[:MAX_FAILED]),
                      reason="r" * 200, version="v" * 32, waves=tuple(range(625, 10001, 625)))
    data = sign_rollout(largest, KEY)
    print(f"\nthe largest rollout record: {len(data)} bytes (bound {MAX_ROLLOUT}, packet {MAX_PACKET})")
    assert len(data) <= MAX_ROLLOUT <= MAX_PACKET - 256


@pytest.mark.parametrize("booted, said", [("b", "healthy"), ("a", "rolled-back")])
def test_after_a_trial_boot_the_device_says_how_it_went(tmp_path, booted, said):
    node = NODES[0]
    device = Rollouts(Device(tmp_path, node))
    device.state.update(rollout="0123456789abcdef", outcome="installing", pending={"slot": "b", "version": "2.0"})
    (tmp_path / "test-update" / "slot").write_text(booted)
    device.after_boot()
    report = device.state["report"]
    assert (report["state"], report["slot"], device.state["pending"]) == (said, booted, None)
    print(f"\n{said}: {report['detail']}")
    cut = Rollouts(Device(tmp_path / "cut", node))
    cut.state.update(rollout="0123456789abcdef", outcome="installing")
    cut.after_boot()
    assert cut.state["report"]["state"] == "failed" and "cut short" in cut.state["report"]["detail"]


def test_a_full_disk_fails_the_install_stops_no_rollout_service_and_loses_nothing(small_disk, caplog):
    """The device's disk is full when a rollout comes: the state cannot be written (the seq taken stays marked
    for the next write), the install fails and reports so, and neither it nor the service's start raises; once
    there is room, the next write holds everything."""
    import errno
    import json
    import os

    from edge.provisioning.device.rollout import STATE
    node = next(n for n in NODES if wave_of(rollout(), n.node_id) == 0)
    device = Rollouts(Device(small_disk, node))
    fd = os.open(small_disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, bytes(1 << 16))
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    r = replace(rollout(), url="http://127.0.0.1:1/b.bundle")   # nothing listens: the download fails
    assert device.handle(rollout_topic(FLEET.node_id), sign_rollout(r, KEY)) == "install"
    with pytest.raises(OSError) as full:
        trio.run(device.persist)
    assert full.value.errno == errno.ENOSPC and device._dirty and not (small_disk / STATE).exists()
    trio.run(device.install, device.current)                       # said, never raised
    assert device.state["outcome"] == "failed" and not device.installing
    assert device.state["report"]["detail"] == "cannot write rollout.json: No space left on device"
    assert "cannot write" in caplog.text

    async def start():
        with trio.move_on_after(1.0):
            await device.run()                                     # its first write fails too: it goes on
    trio.run(start)
    assert device.last_error                                       # to the broker (where nothing listens)
    (small_disk / "filler").unlink()
    trio.run(device.persist)
    saved = json.loads((small_disk / STATE).read_text())
    assert saved["seq"] == r.seq and saved["outcome"] == "failed" and saved["rollout"] == r.id
