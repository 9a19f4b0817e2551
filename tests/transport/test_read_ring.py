"""A holder's memory of the reads it served (edge/transport/pieces.py ReadMemory, ReadMarks), which answers the
auditor's ReadQuery: reads in a window (widened to the edges of its time buckets) together cover blocks; reads only
add within the horizon, so no flood of reads, of the same piece or of others, erases them; a read outside the window
counts as not seen; a window reaching past the horizon is not known."""

from edge.transport.pieces import BUCKET, BUCKETS, HORIZON, MAX_READ_PIECES, ReadMarks, ReadMemory

ROOT = b"\1" * 32


def test_reads_in_the_window_together_cover_the_blocks_asked():
    ring = ReadMarks()
    ring.add(10.0, 0, 63)     # a whole read in 1 MiB chunks: blocks 0-63, then 64-95
    ring.add(10.5, 64, 95)
    ring.add(12.0, 40, 40)    # a narrow read, later
    assert ring.covered([3, 70], 9.0, 11.0)                  # two reads together
    assert not ring.covered([3, 70], 9.0, 10.2)              # the second came after the window
    assert not ring.covered([3, 96], 9.0, 11.0)              # block 96 was never read
    assert ring.covered([40], 11.9, 12.1) and not ring.covered([41], 11.9, 12.1)
    assert not ReadMarks().covered([0], 0.0, 1e9)
    # the window is widened to bucket edges: a read in the same bucket just past the window's end is seen
    ring.add(20.0 + BUCKET * 0.9, 7, 7)
    assert ring.covered([7], 19.0, 20.0 + BUCKET * 0.1)
    assert not ring.covered([7], 19.0, 20.0 - BUCKET * 0.1)   # the bucket before it: not seen


def test_a_flood_of_reads_of_the_same_piece_erases_nothing():
    memory = ReadMemory()
    memory.add(ROOT, 100.0, 5, 5)   # the cheat's read of the challenged block
    for i in range(4096):            # then 4,096 tiny reads of other blocks within 0.2 s (a peer's 5,000/s)
        memory.add(ROOT, 100.0 + i * 0.2 / 4096, 100, 100)
    assert memory.covered(ROOT, [5], 99.9, 100.01, now=100.3)
    assert not memory.covered(ROOT, [6], 99.9, 100.01, now=100.3)   # what was not read is still not seen
    assert not memory.covered(ROOT, [5], 100.1, 100.3, now=100.3)   # nor a read outside the window


def test_a_flood_of_other_pieces_is_refused_not_remembered_over_the_reads():
    memory = ReadMemory()
    assert memory.admit(ROOT, 100.0)
    memory.add(ROOT, 100.0, 5, 5)
    others = [i.to_bytes(32, "big") for i in range(2, MAX_READ_PIECES + 300)]
    admitted = 0
    for i, other in enumerate(others):
        if memory.admit(other, 100.0 + i * 1e-4):
            memory.add(other, 100.0 + i * 1e-4, 0, 0)
            admitted += 1
    assert admitted == MAX_READ_PIECES - 1   # the rest refused (BUSY): the flood cannot push the cheat's read out
    assert memory.covered(ROOT, [5], 99.9, 100.01, now=100.5)
    assert memory.admit(ROOT, 100.5)          # a piece remembered is still read and remembered
    # past the horizon the old pieces are forgotten and new ones admitted again
    later = 100.0 + HORIZON + 1.0
    assert memory.admit(b"\0" * 32, later) and len(memory.pieces) < MAX_READ_PIECES


def test_a_query_reaching_past_the_horizon_is_not_known():
    memory = ReadMemory()
    memory.add(ROOT, 100.0, 5, 5)
    assert memory.covered(ROOT, [5], 99.999, 100.001, now=100.0 + HORIZON - 2 * BUCKET) is True
    assert memory.covered(ROOT, [5], 99.999, 100.001, now=100.0 + HORIZON + BUCKET) is None
    # a slot reused when the clock comes round forgets the bucket it held a horizon before
    marks = ReadMarks()
    marks.add(1.0, 3, 3)
    marks.add(1.0 + BUCKET * BUCKETS, 4, 4)
    assert not marks.covered([3], 0.9, 1.01) and marks.covered([4], 1.0 + HORIZON - 0.01, 1.0 + HORIZON + 0.01)
