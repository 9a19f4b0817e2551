"""The store as a service: nothing blocking on the Trio thread while an agent does its normal work, and one
writer per process whose batches keep each caller's result its own."""

import json
import os
import socket
import sqlite3
import threading

import pytest
import trio

from edge import datadir
from edge.agent import run_agent
from edge.config import load_config
from edge.identity import KEY_FILE, Identity
from edge.ipld.cid import CID
from edge.store import Store, StoreError, content
from edge.store.service import AsyncStore
from edge.transport.client import open_client
from edge.transport.server import Policy, serve_transport
from tests.agent.test_shutdown import free_port
from tests.store.helpers import writer_trace


class TrioThreadWatch:
    """Records every SQLite call and statvfs made on the Trio thread (where none may be)."""

    def __init__(self):
        self.calls: list[str] = []
        self.elsewhere = 0

    def check(self, what: str) -> None:
        if trio.lowlevel.in_trio_run():
            self.calls.append(what)
        else:
            self.elsewhere += 1

    def install(self, monkeypatch) -> None:
        watch = self

        class Watched(sqlite3.Connection):
            def execute(self, *args):
                watch.check(f"sqlite execute {args[0][:60]!r}")
                return super().execute(*args)

            def executemany(self, *args):
                watch.check(f"sqlite executemany {args[0][:60]!r}")
                return super().executemany(*args)

            def cursor(self, *args):
                watch.check("sqlite cursor")
                return super().cursor(*args)

            def commit(self):
                watch.check("sqlite commit")
                return super().commit()

        real_connect, real_statvfs = sqlite3.connect, os.statvfs

        def connect(*args, **kwargs):
            watch.check("sqlite connect")
            return real_connect(*args, factory=Watched, **kwargs)

        def statvfs(path):
            watch.check(f"statvfs {path}")
            return real_statvfs(path)
        monkeypatch.setattr(sqlite3, "connect", connect)
        monkeypatch.setattr(os, "statvfs", statvfs)


async def _control(path: str, request: dict) -> dict:
    stream = await trio.open_unix_socket(path)
    async with stream:
        await stream.send_all(json.dumps(request).encode() + b"\n")
        raw = b""
        while not raw.endswith(b"\n"):
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            raw += chunk
    reply = json.loads(raw)
    assert reply["ok"], reply
    return reply["result"]


async def _http_get(port: int, path: str) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        raw = b""
        while chunk := await stream.receive_some(1 << 16):
            raw += chunk
    return raw


def test_an_agent_at_work_calls_no_sqlite_and_no_statvfs_on_the_trio_thread(tmp_path, monkeypatch):
    """An agent in this process starts, fetches a DAG from a neighbour (control socket), takes a neighbour's
    Put, serves the content over its gateway, answers status and metrics, and stops: every SQLite call and
    statvfs runs in a worker thread, the writer thread or the transport's serving thread, none on Trio's."""
    data_dir = str(tmp_path / "me")
    os.makedirs(data_dir)
    datadir.mark(data_dir)
    Identity.generate().save(os.path.join(data_dir, KEY_FILE))
    them, writer = Identity.generate(), Identity.generate()
    data = os.urandom(3 << 20)
    watch = TrioThreadWatch()
    watch.install(monkeypatch)
    gateway, metrics = free_port(), free_port()

    async def main(theirs):
        if True:   # the neighbour's store is opened and closed outside the run: it is the test's, not the agent's
            async with trio.open_nursery() as nursery:
                endpoint = (await nursery.start(serve_transport, theirs, them, Policy(), "tcp://127.0.0.1:0")).endpoint
                host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
                config = load_config(env={}, flags={
                    "data_dir": data_dir, "mdns": False, "transport_port": 0, "gateway_port": gateway,
                    "metrics_port": metrics, "static_peers": (f"{them.node_id}@{host}:{port}",),
                    "write_allow": (writer.node_id,)})
                agent = await nursery.start(run_agent, config)
                sock = os.path.join(data_dir, "control.sock")
                assert (await _control(sock, {"cmd": "fetch", "cid": str(root)})) == {"fetched": 13}
                put = os.urandom(100_000)
                async with open_client(writer, agent.services.get("transport").endpoint,
                                       agent.identity.node_id) as client:
                    assert await client.put(CID.for_block(put), put)
                body = await _http_get(gateway, f"/ipfs/{root}")
                assert body.startswith(b"HTTP/1.1 200") and body.endswith(data)
                status = await _control(sock, {"cmd": "status"})
                assert status["store"]["blocks"] == 14 and status["fetched"]["blocks"] == 13
                text = await _http_get(metrics, "/metrics")
                assert b"hearth_store_blocks 14" in text
                nursery.cancel_scope.cancel()
    with Store(str(tmp_path / "them")) as theirs:
        root = content.add_bytes(theirs, data).cid
        trio.run(main, theirs)
    print(f"{watch.elsewhere} SQLite calls and statvfs off the Trio thread; on it: {watch.calls}")
    assert watch.elsewhere > 0          # the watch saw the store at work
    assert watch.calls == []


def test_the_writer_batches_jobs_and_keeps_each_ones_error_its_own(tmp_path):
    """Writers in many threads at once: their jobs share transactions (fewer commits than jobs), a job that
    fails undoes only itself, and every caller gets its own result."""
    with Store(str(tmp_path), reserve=0) as store:
        results: dict[int, object] = {}
        gate = threading.Barrier(16)

        def write(n: int):
            gate.wait()
            try:
                if n % 4 == 0:   # a pin of a block this node does not hold: refused, alone
                    store.pin(CID.for_block(b"absent %d" % n))
                else:
                    results[n] = content.add_bytes(store, b"block %d" % n, pin_name=f"p{n}").cid
            except StoreError as exc:
                results[n] = exc
        with writer_trace(store, "BEGIN") as begins:
            threads = [threading.Thread(target=write, args=(n,)) for n in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        print(f"{len(begins)} write transactions for 16 writers")
        for n, got in results.items():
            if n % 4 == 0:
                assert isinstance(got, StoreError) and "cannot pin" in str(got)
            else:
                assert store.is_pinned(got) and store.get(got) == b"block %d" % n
        assert len(results) == 16 and store.verify().ok


@pytest.mark.trio
async def test_the_async_face_runs_the_store_in_threads(tmp_path):
    with Store(str(tmp_path)) as store:
        face = AsyncStore(store)
        cid = content.add_bytes(store, b"through the face").cid
        assert await face.has(cid) and await face.get(cid) == b"through the face"
        assert (await face.get_many([cid])) == [b"through the face"]
        assert (await face.stat())["blocks"] == 1
        with face.protect(cid):
            assert (await face.dag(cid))[1] == []
        assert await face.run(lambda: threading.current_thread() is not threading.main_thread())


def test_every_put_holds_the_store_lock_until_its_blocks_are_listed(tmp_path):
    """A put outside add's shared() (a fetch's, a neighbour's Put) still holds the store lock shared from its
    first file until its blocks are listed: GC in another process cannot take the store meanwhile (it would
    sweep the file as unlisted)."""
    root = str(tmp_path)
    data = os.urandom(10_000)
    x = (CID.for_block(data), data)
    with Store(root, reserve=0) as agent, Store(root, reserve=0) as cli:
        written, go = threading.Event(), threading.Event()
        real_write = agent.files.write_many

        def write_then_wait(blocks):
            real_write(blocks)
            written.set()
            go.wait(30)
        agent.files.write_many = write_then_wait
        putter = threading.Thread(target=agent.put_many, args=([x],))
        putter.start()
        try:
            assert written.wait(30)
            assert not cli.try_exclusive()      # GC and verify wait for the put to list its block
        finally:
            go.set()
            putter.join()
        assert cli.try_exclusive()
        cli.release()
        assert cli.gc() == (1, len(data))       # listed, unpinned: the cache's, and GC's now; no orphan
        assert not agent.has(x[0]) and cli.verify().ok


def test_block_listings_commit_without_a_flush_and_pins_with_one(tmp_path):
    """A batch of block listings only commits with synchronous=NORMAL (its loss to a power cut leaves durable,
    unlisted files); a pin's commit is durable (FULL), and with it every listing before it (one WAL)."""
    with Store(str(tmp_path), reserve=0) as store:
        data = os.urandom(5000)
        cid = CID.for_block(data)
        with writer_trace(store, ("PRAGMA synchronous", "BEGIN")) as trace:
            store.put_many([(cid, data)])
            listing = list(trace)
            store.pin(cid, recursive=False)
        print(trace)
        assert listing == ["PRAGMA synchronous=NORMAL", "BEGIN IMMEDIATE"]
        assert trace[len(listing):] == ["PRAGMA synchronous=FULL", "BEGIN IMMEDIATE"]
        assert store.is_pinned(cid)


def test_writers_at_once_share_a_flush_begun_after_their_writes(tmp_path, monkeypatch):
    """Three writers need their files durable while a flush runs: the first waits for its own, the two
    that came during it share the next one (a flush begun after their writes), not one each."""
    import time

    from edge.store import blockfiles
    if blockfiles._syncfs is None:
        pytest.skip("no syncfs(2) here: each file is made durable on its own")
    files = blockfiles.BlockFiles(str(tmp_path))
    calls, first_running, release = [], threading.Event(), threading.Event()
    real = blockfiles._syncfs

    def syncfs(fd):
        calls.append(threading.current_thread().name)
        if len(calls) == 1:
            first_running.set()
            release.wait(30)
        real(fd)
    monkeypatch.setattr(blockfiles, "_syncfs", syncfs)
    threads = [threading.Thread(target=files._syncfs, name=f"w{i}") for i in range(3)]
    threads[0].start()
    assert first_running.wait(30)
    for t in threads[1:]:
        t.start()
    deadline = time.monotonic() + 30
    while len(files._flushes._waiters) < 2 and time.monotonic() < deadline:   # both wait for the next flush
        time.sleep(0.01)
    release.set()
    for t in threads:
        t.join()
    print(f"flushes: {calls}")
    assert len(calls) == 2 and calls[0] == "w0"


def test_a_transaction_lost_to_a_full_disk_fails_the_jobs_before_and_reruns_those_after(tmp_path):
    """SQLite rolls the whole transaction back on a full disk: the jobs before the one that met it are undone
    and told so (StoreFull), and the jobs after it run in a transaction of their own."""
    from edge.store.errors import StoreFull
    with Store(str(tmp_path), reserve=0) as store:
        running, release = threading.Event(), threading.Event()
        results: dict[str, object] = {}

        def job(name, fn):
            def run():
                try:
                    results[name] = store.catalog.write(fn)
                except Exception as exc:   # noqa: BLE001 - what the caller got
                    results[name] = exc
            t = threading.Thread(target=run)
            t.start()
            return t

        def hold(db):                     # keeps the writer busy while the next three queue up
            running.set()
            release.wait(30)

        def setting(name):
            return lambda db: db.execute("INSERT INTO settings VALUES (?, 1)", (name,))

        def full_disk(db):                # what SQLite does on SQLITE_FULL: the transaction is gone
            db.execute("ROLLBACK")
            raise sqlite3.OperationalError("database or disk is full")
        first = job("hold", hold)
        assert running.wait(30)
        threads = [job("before", setting("before"))]
        while store.catalog._queue.qsize() < 1:
            threading.Event().wait(0.01)
        threads.append(job("full", full_disk))
        while store.catalog._queue.qsize() < 2:
            threading.Event().wait(0.01)
        threads.append(job("after", setting("after")))
        while store.catalog._queue.qsize() < 3:
            threading.Event().wait(0.01)
        release.set()
        for t in [first, *threads]:
            t.join()
        print(results)
        assert isinstance(results["before"], StoreFull)
        assert isinstance(results["full"], sqlite3.OperationalError)
        assert not isinstance(results["after"], Exception)
        assert store._setting("before") is None and store._setting("after") == 1
