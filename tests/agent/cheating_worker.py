"""A worker that cheats, for the transcode-job tests: `python cheating_worker.py agent python -m edge ARGS…` runs
the real agent with its job process swapped for this file's `job` mode, which runs the real import but hands
back, for every third segment of each video rendition, the bytes of the segment before it (valid H.264 of the
same scene at the wrong moment: what a lazy or dishonest worker would pass off). The `live` mode
does the same in the live decoder process (edge/media/liveworker.py) of a live job."""

import os
import sys


def job(argv):
    from edge.media import jobrun, vod
    previous = {}
    honest = vod.DirectorySink.segment

    def segment(self, track, seg):
        if track.kind == "video" and seg.index % 3 == 1 and track.name in previous:
            seg = type(seg)(seg.index, seg.start, seg.duration, previous[track.name], seg.independent)
        previous[track.name] = seg.data
        honest(self, track, seg)
    vod.DirectorySink.segment = segment
    return jobrun.main(argv)


def live(argv):
    """The live decoder process (edge/media/liveworker.py) handing back the same wrong segments."""
    from edge.media import liveworker
    from edge.media import transcode as tc
    honest = tc.transcode

    def transcode(url, renditions, sink, *args, **kwargs):
        previous = {}
        real = sink.segment

        def segment(track, seg):
            if track.kind == "video" and seg.index % 3 == 1 and track.name in previous:
                seg = type(seg)(seg.index, seg.start, seg.duration, previous[track.name], seg.independent)
            previous[track.name] = seg.data
            real(track, seg)
        sink.segment = segment
        return honest(url, renditions, sink, *args, **kwargs)
    tc.transcode = transcode
    return liveworker.main(argv)


def agent(argv):
    from edge.cli import main
    from edge.media import jobs, livejobs
    jobs.RUNNER = [sys.executable, os.path.abspath(__file__), "job"]
    livejobs.RUNNER = [sys.executable, os.path.abspath(__file__), "live"]
    return main(argv, prog_name="hearth")


if __name__ == "__main__":
    mode, rest = sys.argv[1], sys.argv[2:]
    if mode == "agent":
        rest = rest[3:] if rest[1:3] == ["-m", "edge"] else rest   # drop "python -m edge" (Node.wrap's tail)
        sys.exit(agent(rest))
    sys.exit(live(rest) if mode == "live" else job(rest))
