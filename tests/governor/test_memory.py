"""The transcode memory budget: read from a cgroup's files (v1 and v2) or the RAM, and the plan sized to it."""

from edge.governor.memory import RESERVE, cgroup_limit, estimate, own_threads, plan_transcode, ram

LADDER = [(1920, 1080), (1280, 720), (854, 480), (640, 360)]


def test_the_limit_is_read_from_cgroup_v1_and_v2(tmp_path):
    (tmp_path / "memory" / "box").mkdir(parents=True)
    (tmp_path / "memory" / "box" / "memory.limit_in_bytes").write_text(f"{512 << 20}\n")
    (tmp_path / "v1").write_text("4:memory:/box\n1:cpu:/\n")
    assert cgroup_limit(str(tmp_path), str(tmp_path / "v1")) == 512 << 20
    (tmp_path / "memory" / "box" / "memory.limit_in_bytes").write_text("9223372036854771712\n")   # none set
    assert cgroup_limit(str(tmp_path), str(tmp_path / "v1")) is None
    (tmp_path / "svc").mkdir()
    (tmp_path / "svc" / "memory.max").write_text(f"{300 << 20}\n")
    (tmp_path / "v2").write_text("0::/svc\n")
    assert cgroup_limit(str(tmp_path), str(tmp_path / "v2")) == 300 << 20
    (tmp_path / "svc" / "memory.max").write_text("max\n")
    assert cgroup_limit(str(tmp_path), str(tmp_path / "v2")) is None
    assert ram() > 64 << 20


def test_the_plan_fits_the_budget_giving_up_lookahead_first():
    roomy = plan_transcode(LADDER, 4 << 30, cores=4)   # the encoder's own threads (x264: 6 on 4 cores) fit
    assert (roomy.threads, roomy.lookahead) == (0, 10) and roomy.estimate == estimate(LADDER, own_threads(4), 10)
    router = plan_transcode(LADDER, 512 << 20, cores=4)
    assert router.estimate <= (512 << 20) - RESERVE
    assert router.lookahead < 10
    assert 1 <= router.threads <= own_threads(4)
    tiny = plan_transcode(LADDER, 256 << 20, cores=4)
    assert (tiny.threads, tiny.lookahead) == (1, 2)   # the least it can do, even past the budget
    assert estimate(LADDER[:1], 1, 2) < estimate(LADDER, 1, 2)
    print(f"\nplans for the four-rung 1080p ladder: 4 GiB {roomy}, 512 MiB {router}, 256 MiB {tiny}")
