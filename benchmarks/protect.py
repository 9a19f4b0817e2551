"""The owner's part of a protected pin against a plain add, and the cost of an audit.

- Owner's part: segments.prepare over a file already added (cut the DAG into segments, lay them out, encode 4+4
  with the native codec, build every piece's Merkle tree; no network, no holders' disks) against content.add of
  the same file into a store on this disk, both timed in this process, best of the rounds. Goal (issue 16):
  ≥ 0.5× the speed of the add.
- An audit: CPU for a holder's answer (4 leaves of a 1 MiB piece, signed) and the auditor's check, the bytes the
  holder reads, the answer's size.
Usage: protect.py [--mib N] [--rounds N]
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _common import goal, mbps, print_table, require_native  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    require_native("edge.kernels._erasure")
    from edge.identity import Identity
    from edge.protect import audit, merkle, segments
    from edge.store import Store
    from edge.store.content import add

    nbytes = args.mib << 20
    work = tempfile.mkdtemp(prefix="hearth-bench-protect-")
    try:
        src = os.path.join(work, "input")
        with open(src, "wb") as f:
            f.write(os.urandom(nbytes))
        add_s = prep_s = float("inf")
        for r in range(args.rounds):
            d = os.path.join(work, f"store{r}")
            with Store(d, reserve=0) as store:
                t0 = time.perf_counter()
                root = add(store, src).cid
                add_s = min(add_s, time.perf_counter() - t0)
                t0 = time.perf_counter()
                pieces = sum(len(p.pieces) for p in segments.prepare(store.get, root, 4, 4))
                prep_s = min(prep_s, time.perf_counter() - t0)
            shutil.rmtree(d)
        ratio = add_s / prep_s
        print_table(f"protected pin, owner's part, {args.mib} MiB at 4+4 ({pieces} pieces)",
                    ["case", "seconds", "MB/s", "ratio", "notes"],
                    [["hearth add (in process)", f"{add_s:.2f}", f"{mbps(nbytes, add_s):.0f}", "1.00", ""],
                     ["cut + encode + hash", f"{prep_s:.2f}", f"{mbps(nbytes, prep_s):.0f}", f"{ratio:.2f}",
                      goal(ratio, 0.5)]])

        piece = os.urandom(1 << 20)
        tree = merkle.build(piece)
        holder, reads = Identity.generate(), [0]

        def read_block(b):
            reads[0] += 1
            return piece[b * merkle.SUBTREE:(b + 1) * merkle.SUBTREE]
        n = 500
        proofs = []
        t0 = time.process_time()
        for _ in range(n):
            nonce = audit.new_nonce()
            idx = audit.challenge(os.urandom(32), b"auditor", tree.root, nonce, merkle.leaf_count(len(piece)))
            proofs.append((idx, nonce, audit.answer(holder, read_block, tree.subtree_roots, len(piece), tree.root,
                                                    nonce, idx)))
        answer_s = (time.process_time() - t0) / n
        t0 = time.process_time()
        assert all(audit.check(tree.root, len(piece), i, p, holder.public_key, nonce=c) for i, c, p in proofs)
        check_s = (time.process_time() - t0) / n
        size = len(audit.serialize_proof(proofs[0][2]))
        print_table("an audit of a 1 MiB piece (4 leaves)", ["case", "CPU ms", "bytes read", "answer bytes"],
                    [["holder's answer", f"{answer_s * 1e3:.2f}", f"{reads[0] // n * merkle.SUBTREE}", f"{size}"],
                     ["auditor's check", f"{check_s * 1e3:.2f}", "0", ""]])
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
