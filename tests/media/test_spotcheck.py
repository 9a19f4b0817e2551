"""The spot checker: its sampling odds, and real comparisons of honest and altered outputs of a real import."""

import json
import random
import time

import pytest

from edge.media import spotcheck, vod
from edge.media import transcode as tc
from edge.store import Store, content

from .conftest import ffmpeg


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """4 s of 720p (test pattern and tone) imported as 360p and 240p in 1 s segments: 8 video outputs."""
    d = tmp_path_factory.mktemp("spot")
    src = str(d / "src.mp4")
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=25", "-f", "lavfi", "-i", "sine=frequency=440",
           "-t", "4", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest",
           src)
    store = Store(str(d / "store"))
    t0 = time.process_time()
    result = vod.import_file(store, src, ladder="360p,240p", opts=tc.Options(seconds=1.0, preset="ultrafast"))
    transcode_cpu = time.process_time() - t0
    manifest = json.loads(b"".join(content.cat(store, f"{result.cid}/stream.json")))
    yield store, src, result.cid, manifest, transcode_cpu
    store.close()


def reader(store, cid, swap=None):
    """read_output for spotcheck.check; swap maps (track, index) to the index whose bytes to hand back instead
    (a worker that passes one moment off as another: valid H.264, wrong pictures)."""
    def read(sample):
        index = (swap or {}).get((sample.track, sample.index), sample.index)
        init = b"".join(content.cat(store, f"{cid}/{sample.track}/init.mp4"))
        return init + b"".join(content.cat(store, f"{cid}/{sample.track}/{index:05d}.m4s"))
    return read


def test_sample_count_covers_a_fifth_two_at_least_and_catches_one_in_three():
    for n in range(1, 400):
        k = spotcheck.sample_count(n)
        assert min(n, 2) <= k <= n and k >= n / 5
        assert spotcheck.miss_odds(n, max(1, n // 3), k) <= 0.01
    print("outputs -> checked:", {n: spotcheck.sample_count(n) for n in (2, 6, 8, 12, 30, 60, 120, 240)})


def test_simulated_cheating_workers_are_caught_in_99_percent_of_jobs():
    """Many simulated jobs of various sizes, each from a worker that alters one output in three (which ones:
    its own random choice); the checker draws its sample by its own rules. Caught = an altered one drawn."""
    rng = random.Random(17)
    for n in (3, 6, 8, 15, 40, 60):
        jobs, caught = 4000, 0
        for _ in range(jobs):
            outputs = list(range(n))
            altered = set(rng.sample(outputs, max(1, n // 3)))
            caught += any(o in altered for o in spotcheck.choose(outputs, rng))
        print(f"{n} outputs, {spotcheck.sample_count(n)} checked: caught in {caught / jobs:.2%} of {jobs} jobs")
        assert caught / jobs >= 0.99


def test_honest_outputs_pass_and_scores_are_printed(imported):
    store, src, cid, manifest, transcode_cpu = imported
    samples = spotcheck.samples_of(manifest)
    assert len(samples) == 8
    t0 = time.process_time()
    thumbs = spotcheck.decode_thumbs(src)
    scores = spotcheck.check(thumbs, samples, reader(store, cid))
    cpu = time.process_time() - t0
    dbs = sorted(db for _, db in scores)
    print(f"honest segments: {len(dbs)}, PSNR {dbs[0]:.1f}..{dbs[-1]:.1f} dB (threshold "
          f"{spotcheck.THRESHOLD_DB} dB); checking all of them took {cpu:.2f} s CPU, the transcode "
          f"{transcode_cpu:.2f} s ({cpu / transcode_cpu:.0%})")
    assert dbs[0] >= spotcheck.THRESHOLD_DB + 10


def test_an_altered_segment_fails_its_check(imported):
    store, src, cid, manifest, _ = imported
    thumbs = spotcheck.decode_thumbs(src)
    samples = spotcheck.samples_of(manifest)
    dbs = []
    for s in samples:
        other = s.index - 1 if s.index else s.index + 1   # another moment of the same rendition
        dbs.append(spotcheck.score(thumbs, s.start, s.duration,
                                   spotcheck.decode_thumbs(reader(store, cid, {(s.track, s.index): other})(s))))
    print(f"segments swapped for a neighbouring one: PSNR {min(dbs):.1f}..{max(dbs):.1f} dB")
    for s in samples:
        other = s.index - 1 if s.index else s.index + 1
        with pytest.raises(spotcheck.SpotCheckFailed, match="does not match the source"):
            spotcheck.check(thumbs, [s], reader(store, cid, {(s.track, s.index): other}))
    broken = samples[0]
    with pytest.raises(spotcheck.SpotCheckFailed, match="does not decode|does not match"):
        spotcheck.check(thumbs, [broken], lambda s: reader(store, cid)(s)[:2000] + bytes(5000))


def test_a_cheating_worker_over_real_segments_is_caught(imported):
    """Real comparisons: each of the module's 8 outputs checked as it is and as a cheat would hand it back (the
    same rendition one second later), once; then 2,000 jobs of a worker swapping a third of them (2, chosen at
    random), each checked on the sample spotcheck.choose draws. Caught in at least 99% of jobs."""
    store, src, cid, manifest, _ = imported
    thumbs = spotcheck.decode_thumbs(src)
    samples = spotcheck.samples_of(manifest)
    passes = {}
    for s in samples:
        for swapped in (False, True):
            read = reader(store, cid, {(s.track, s.index): (s.index + 1) % 4} if swapped else None)
            try:
                spotcheck.check(thumbs, [s], read)
                passes[s, swapped] = True
            except spotcheck.SpotCheckFailed:
                passes[s, swapped] = False
    assert all(passes[s, False] for s in samples) and not any(passes[s, True] for s in samples)
    rng = random.Random(5)
    jobs, caught = 2000, 0
    for _ in range(jobs):
        altered = set(rng.sample(samples, len(samples) // 3))
        caught += not all(passes[s, s in altered] for s in spotcheck.choose(samples, rng))
    print(f"real segments, 8 outputs with 2 swapped: caught in {caught}/{jobs} jobs")
    assert caught / jobs >= 0.99


def test_seeking_to_the_samples_gives_the_thumbnails_of_a_full_decode(tmp_path):
    src = str(tmp_path / "ten.mp4")
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25", "-t", "10", "-c:v", "libx264", "-preset",
           "ultrafast", "-g", "25", src)
    full = {round(t.time, 3): t.pixels for t in spotcheck.decode_thumbs(src)}
    part = spotcheck.decode_thumbs(src, spans=[(1.0, 2.0), (7.0, 8.0)])   # 4 s apart: a seek between
    times = [t.time for t in part]
    assert len(full) == 250 and 40 <= len(part) <= 110
    assert min(times) < 1.0 and max(times) > 7.9 and not any(3.0 < t < 6.0 for t in times)
    assert all(full[round(t.time, 3)] == t.pixels for t in part)
