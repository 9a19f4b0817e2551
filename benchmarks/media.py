"""The transcoding ladder against the ffmpeg CLI, and the agent's event-loop lag while it runs.

Both contenders make the same ladder from the same 1080p source: 720p/480p/360p H.264 (libx264, same
preset, bit rates, VBV, GOP and forced keyframes every segment) plus AAC, packaged as fragmented-MP4 HLS
segments on disk. Hearth decodes once and feeds a thread per rendition (edge.media.transcode); the ffmpeg
CLI uses split + scale in one filter graph. The two link different x264 builds (PyAV's wheel and Debian's
ffmpeg), which the output names. Goal: Hearth's fps >= 1.0x the CLI's.

Event-loop lag: the transcode runs in a worker thread from a Trio loop, as in `hearth run`, while a task
sleeps 10 ms at a time and records how late it wakes; goal p99 <= 20 ms.

Live: a test pattern published live (1 s segments) while a client polls the gateway's live playlist every
10 ms; for each segment, the time from its cut (the muxer handing it over) to the gateway listing it and
serving its bytes. Goal: within 1 s.

WebRTC: blocks of 256 KiB sent over a data channel (16 KiB messages, the same flow control) by plain aiortc
from memory, and by Hearth's WebRTC service (signalled through the gateway, running on the asyncio bridge,
reading and verifying blocks from the store); the same aiortc client receives both. Goal: >= 0.8x.
Usage: media.py [--seconds N] [--repeat N] [--live-seconds N] [--webrtc-mib N]
"""

import argparse
import asyncio
import json
import os
import threading
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _common import goal, print_table, report_checks  # noqa: E402

import av  # noqa: E402
import trio  # noqa: E402

from edge.media import transcode as tc  # noqa: E402
from edge.media.ladder import parse_ladder, plan  # noqa: E402
from edge.media.vod import DirectorySink  # noqa: E402

LADDER = "720p,480p,360p"
SEG = 4.0
PRESET = "veryfast"
FPS = 30


def make_source(path: str, seconds: int) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size=1920x1080:rate={FPS}",
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", str(seconds),
                    "-c:v", "libx264", "-preset", "veryfast", "-b:v", "6M", "-pix_fmt", "yuv420p",
                    "-c:a", "aac", "-shortest", path], check=True)


def hearth(source: str, out: str):
    renditions = plan(parse_ladder(LADDER), 1920, 1080)
    os.makedirs(out)
    _, tracks = tc.transcode(source, renditions, DirectorySink(out),
                             tc.Options(seconds=SEG, preset=PRESET, encoder="libx264"))
    return tracks


def ffmpeg_cli(source: str, out: str) -> None:
    renditions = plan(parse_ladder(LADDER), 1920, 1080)
    os.makedirs(out)
    n = len(renditions)
    graph = f"[0:v]split={n}" + "".join(f"[s{i}]" for i in range(n)) + ";" + ";".join(
        f"[s{i}]scale={r.width}:{r.height}:flags=bicubic[o{i}]" for i, r in enumerate(renditions))
    args = ["ffmpeg", "-v", "error", "-y", "-i", source, "-filter_complex", graph]
    gop = int(FPS * SEG)
    for i, r in enumerate(renditions):
        args += ["-map", f"[o{i}]", "-c:v", "libx264", "-preset", PRESET, "-b:v", f"{r.kbps}k",
                 "-maxrate", f"{r.maxrate_kbps}k", "-bufsize", f"{r.bufsize_kbits}k",
                 "-x264-params", f"keyint={gop * 4}:min-keyint={gop}:scenecut=0:open-gop=0:nal-hrd=none",
                 "-force_key_frames", f"expr:gte(t,n_forced*{SEG})",
                 "-f", "hls", "-hls_time", str(SEG), "-hls_segment_type", "fmp4", "-hls_playlist_type", "vod",
                 "-hls_fmp4_init_filename", f"v{i}_init.mp4", "-hls_segment_filename", f"{out}/v{i}_%05d.m4s",
                 f"{out}/v{i}.m3u8"]
    args += ["-map", "0:a", "-c:a", "aac", "-b:a", "128k", "-f", "hls", "-hls_time", str(SEG),
             "-hls_segment_type", "fmp4", "-hls_playlist_type", "vod", "-hls_fmp4_init_filename", "a_init.mp4",
             "-hls_segment_filename", f"{out}/a_%05d.m4s", f"{out}/a.m3u8"]
    subprocess.run(args, check=True)


def loop_lag(source: str, out: str) -> list[float]:
    lags = []

    async def main():
        done = trio.Event()

        async def sampler():
            while not done.is_set():
                t0 = trio.current_time()
                await trio.sleep(0.010)
                lags.append(max(0.0, trio.current_time() - t0 - 0.010))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sampler)
            await trio.to_thread.run_sync(hearth, source, out)
            done.set()

    trio.run(main)
    return sorted(lags)


def live_latency(seconds: int) -> list[float]:
    """Seconds from each segment's cut to the gateway listing it and serving its bytes."""
    from edge.gateway import Gateway
    from edge.media import live
    from edge.store import Store
    from edge.transport.http import serve_http
    import http.client
    import re

    work = tempfile.mkdtemp(prefix="hearth-bench-live-")
    latencies = []
    store = Store(work)
    try:
        stop = threading.Event()
        publisher = threading.Thread(target=live.publish, args=(store, "testsrc"), kwargs=dict(
            name="bench", ladder="720p,360p", stop=stop,
            opts=tc.Options(seconds=1.0, preset=PRESET, duration=seconds)), daemon=True)

        def get(port, path):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", path)
            r = conn.getresponse()
            body = r.read()
            conn.close()
            return r.status, body

        async def main():
            async with trio.open_nursery() as nursery:
                port = (await nursery.start(lambda task_status: serve_http(
                    Gateway(store), 0, host="127.0.0.1", task_status=task_status))).port
                publisher.start()
                seen = set()
                while publisher.is_alive():
                    status, body = await trio.to_thread.run_sync(get, port, "/streams/bench/720p/index.m3u8")
                    if status == 200:
                        for uri in re.findall(r"^(\d+\.m4s)$", body.decode(), re.M):
                            if uri in seen:
                                continue
                            seen.add(uri)
                            st, data = await trio.to_thread.run_sync(get, port, f"/streams/bench/720p/{uri}")
                            served = time.time()
                            row = store.name("bench")
                            if st == 200 and row and row["meta"].get("kind") == "live":
                                track = next(t for t in row["meta"]["tracks"] if t["name"] == "720p")
                                cut = next((x["cut"] for x in track["segments"] if x["index"] == int(uri[:-4])),
                                           None)
                                if cut is not None:
                                    latencies.append(served - cut)
                    await trio.sleep(0.010)
                nursery.cancel_scope.cancel()

        trio.run(main)
        publisher.join(30)
    finally:
        store.close()
        shutil.rmtree(work, ignore_errors=True)
    return sorted(latencies)


# WebRTC -------------------------------------------------------------------------------------------------------

WEBRTC_BLOCK = 256 * 1024


class _Loop:
    """An asyncio loop in a thread (aiortc's home), for the client and for the plain-aiortc server."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout=300):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


async def _client(offer_fn, cids: list[str]) -> float:
    """Open a channel (signalled by offer_fn(sdp) -> answer sdp), request every CID one after another with 4 in
    flight, receive all bytes; returns the seconds the transfer took."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    channel = pc.createDataChannel("hearth-blocks")
    opened = asyncio.Event()
    channel.on("open", opened.set)
    pending: dict[int, list] = {}
    done = asyncio.Event()
    remaining = {"n": len(cids)}

    @channel.on("message")
    def on_message(msg):
        if isinstance(msg, str):
            m = json.loads(msg)
            pending[m["id"]][1] = m["size"]
            return
        rid = int.from_bytes(msg[:4], "big")
        entry = pending[rid]
        entry[0] += len(msg) - 4
        if entry[1] is not None and entry[0] >= entry[1]:
            remaining["n"] -= 1
            entry[2].set()
            if remaining["n"] == 0:
                done.set()

    await pc.setLocalDescription(await pc.createOffer())
    answer = await offer_fn(pc.localDescription.sdp)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    await asyncio.wait_for(opened.wait(), 30)
    t0 = time.perf_counter()
    sem = asyncio.Semaphore(4)

    async def one(i, cid):
        async with sem:
            ev = asyncio.Event()
            pending[i] = [0, None, ev]
            channel.send(json.dumps({"id": i, "cid": cid}))
            await ev.wait()
    await asyncio.gather(*(one(i + 1, c) for i, c in enumerate(cids)))
    elapsed = time.perf_counter() - t0
    await pc.close()
    return elapsed


async def _plain_answer(sdp: str, blocks: dict) -> str:
    """Plain aiortc serving the same protocol from memory (the reference)."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    _plain_answer.pcs.append(pc)

    @pc.on("datachannel")
    def on_channel(channel):
        low = asyncio.Event()
        channel.bufferedAmountLowThreshold = 1 << 19
        channel.on("bufferedamountlow", low.set)

        async def serve(rid, data):
            channel.send(json.dumps({"id": rid, "status": 200, "size": len(data)}))
            prefix = rid.to_bytes(4, "big")
            for off in range(0, len(data), 16384):
                while channel.bufferedAmount > 1 << 20:
                    low.clear()
                    await low.wait()
                channel.send(prefix + data[off:off + 16384])

        @channel.on("message")
        def on_message(msg):
            m = json.loads(msg)
            asyncio.ensure_future(serve(m["id"], blocks[m["cid"]]))

    await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    return pc.localDescription.sdp


_plain_answer.pcs = []


def webrtc_throughput(mib: int) -> tuple[float, float]:
    """(plain aiortc MB/s, Hearth MB/s) for mib MiB of distinct 256 KiB blocks."""
    from edge.bridge import AsyncioBridge
    from edge.gateway import Gateway
    from edge.store import Store
    from edge.ipld.cid import CID, RAW
    from edge.transport.http import serve_http
    from edge.transport.webrtc import WebRTCService
    import http.client

    n = mib * 1024 * 1024 // WEBRTC_BLOCK
    blocks = {}
    for i in range(n):
        data = os.urandom(WEBRTC_BLOCK)
        blocks[str(CID.for_block(data, RAW))] = data
    cids = list(blocks)
    total = n * WEBRTC_BLOCK
    client = _Loop()
    server = _Loop()
    work = tempfile.mkdtemp(prefix="hearth-bench-webrtc-")
    store = Store(work)
    try:
        store.put_many([(CID.for_block(d, RAW), d) for d in blocks.values()])
        plain_s = client.run(_client(lambda sdp: asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(_plain_answer(sdp, blocks), server.loop)), cids))
        for pc in _plain_answer.pcs:
            server.run(pc.close())

        result = {}

        async def hearth_side():
            bridge = AsyncioBridge()
            service = WebRTCService(store.get)
            async with trio.open_nursery() as nursery:
                port = (await nursery.start(lambda task_status: serve_http(
                    Gateway(store, webrtc=(bridge, service)), 0, host="127.0.0.1", task_status=task_status))).port

                def offer(sdp):
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                    conn.request("POST", "/webrtc", body=sdp, headers={"content-type": "application/sdp"})
                    r = conn.getresponse()
                    body = r.read().decode()
                    conn.close()
                    return body

                async def offer_async(sdp):
                    return await asyncio.get_running_loop().run_in_executor(None, offer, sdp)
                result["s"] = await trio.to_thread.run_sync(client.run, _client(offer_async, cids))
                await bridge.call(service.close_all)
                nursery.cancel_scope.cancel()
            bridge.close()

        trio.run(hearth_side)
        return total / plain_s / 1e6, total / result["s"] / 1e6
    finally:
        store.close()
        shutil.rmtree(work, ignore_errors=True)
        client.close()
        server.close()


def pct(values, p):
    return values[min(len(values) - 1, int(len(values) * p))] * 1000 if values else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--live-seconds", type=int, default=12)
    ap.add_argument("--webrtc-mib", type=int, default=32)
    args = ap.parse_args()
    if not shutil.which("ffmpeg"):
        sys.exit("the ffmpeg CLI is the reference: install Debian's ffmpeg (`make build` does)")
    work = tempfile.mkdtemp(prefix="hearth-bench-media-")
    try:
        source = os.path.join(work, "src1080.mp4")
        make_source(source, args.seconds)
        frames = args.seconds * FPS
        best = {"hearth": float("inf"), "ffmpeg": float("inf")}
        checks = []
        for r in range(args.repeat):
            for name, fn in (("hearth", hearth), ("ffmpeg", ffmpeg_cli)):
                out = os.path.join(work, f"{name}{r}")
                t0 = time.perf_counter()
                made = fn(source, out)
                best[name] = min(best[name], time.perf_counter() - t0)
                if made is not None and r == 0:
                    want = -(-args.seconds // int(SEG))
                    counts = {t.name: len(t.segments) for t in made}
                    checks.append((f"hearth made {want} segments in each of {sorted(counts)}: {counts}",
                                   len(counts) == 4 and all(abs(c - want) <= 1 for c in counts.values())))
                shutil.rmtree(out)
        ratio = best["ffmpeg"] / best["hearth"]
        ffv = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.split("\n")[0]
        print_table(f"ladder {LADDER} from {args.seconds} s of 1080p{FPS}, preset {PRESET}, {SEG:g} s segments "
                    f"(best of {args.repeat})", ["", "seconds", "fps", "ratio"],
                    [["hearth (PyAV " + av.__version__ + ")", best["hearth"], frames / best["hearth"], ratio],
                     ["ffmpeg CLI (" + ffv.split(" Copyright")[0] + ")", best["ffmpeg"], frames / best["ffmpeg"],
                      1.0]])
        print(f"  ladder fps ratio {ratio:.2f}x, {goal(ratio, 1.0)}")
        lags = loop_lag(source, os.path.join(work, "lag"))
        p99 = pct(lags, 0.99)
        print_table("event-loop lag while transcoding (10 ms sleeps in the Trio loop)", ["", "ms"],
                    [["p50", pct(lags, 0.5)], ["p99", p99], ["max", lags[-1] * 1000 if lags else 0.0],
                     ["samples", len(lags)]])
        print(f"  p99 {p99:.1f} ms, goal <= 20 ms: {'met' if p99 <= 20 else 'MISSED'}")
        lat = live_latency(args.live_seconds)
        print_table(f"live: segment cut -> listed and served by the gateway ({len(lat)} segments of 720p)",
                    ["", "ms"], [["p50", pct(lat, 0.5)], ["p99", pct(lat, 0.99)],
                                 ["max", lat[-1] * 1000 if lat else float("nan")]])
        worst = lat[-1] if lat else float("inf")
        print(f"  worst {worst * 1000:.0f} ms, goal <= 1000 ms: {'met' if worst <= 1.0 else 'MISSED'}")
        checks.append((f"live: {len(lat)} segments measured", len(lat) >= args.live_seconds - 2))
        plain, ours = webrtc_throughput(args.webrtc_mib)
        ratio_rtc = ours / plain
        print_table(f"WebRTC data channel, {args.webrtc_mib} MiB in 256 KiB blocks", ["", "MB/s", "ratio"],
                    [["plain aiortc (from memory)", plain, 1.0],
                     ["hearth (bridge + store + verify)", ours, ratio_rtc]])
        print(f"  ratio {ratio_rtc:.2f}x, {goal(ratio_rtc, 0.8)}")
        report_checks(checks)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
