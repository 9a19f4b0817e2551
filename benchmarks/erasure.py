"""Reed-Solomon encode/decode throughput: our kernels on every path against ISA-L on the same path, zfec and
memcpy, measured in the same run.

ISA-L comes from pyeclib's wheel, which bundles a recent libisal whose per-instruction-set entry points
(ec_encode_data_sse, _avx2, _avx2_gfni, ...) we call through ctypes. Both libraries use the same Cauchy
generator over the same field, so the benchmark also checks that the parity bytes are identical.
Throughput counts data bytes (the object) per second. Run: python benchmarks/erasure.py [--quick]
"""

import argparse
import ctypes
import glob
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
# The checkout this script sits in, so the in-place build is found without installing the package.
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _common import (  # noqa: E402
    best_seconds, best_seconds_interleaved, goal, mbps, print_table, report_checks, require_native)

require_native("edge.kernels._erasure")
from edge.kernels import _erasure  # noqa: E402

# Our path -> ISA-L's entry point for the same instruction set ("base" is ISA-L's portable C).
ISAL_PATHS = {
    "scalar": ("ec_encode_data_base", "base"),
    "ssse3": ("ec_encode_data_sse", "base"),
    "avx2": ("ec_encode_data_avx2", "base"),
    "avx512": ("ec_encode_data_avx512", "base"),
    "gfni": ("ec_encode_data_avx2_gfni", "gfni"),
    "gfni512": ("ec_encode_data_avx512_gfni", "gfni"),
}
MiB = 1 << 20


class ISAL:
    """ctypes view of the libisal inside pyeclib's wheel."""

    def __init__(self):
        import pyeclib

        libs = glob.glob(os.path.join(os.path.dirname(pyeclib.__file__), "..", "pyeclib.libs", "libisal*.so*"))
        if not libs:
            raise RuntimeError("pyeclib's wheel carries no libisal; install pyeclib==1.8.0 from its wheel")
        self.lib = ctypes.CDLL(libs[0])

    def encoder(self, k: int, m: int, entry: str, tables_kind: str):
        lib = self.lib
        a = (ctypes.c_ubyte * ((k + m) * k))()
        lib.gf_gen_cauchy1_matrix(a, k + m, k)
        parity_rows = ctypes.cast(ctypes.addressof(a) + k * k, ctypes.POINTER(ctypes.c_ubyte))
        tbls = (ctypes.c_ubyte * (32 * k * m))()
        init = lib.ec_init_tables_gfni if tables_kind == "gfni" else lib.ec_init_tables_base
        init(k, m, parity_rows, tbls)
        fn = getattr(lib, entry)

        def encode(data_ptrs, parity_ptrs, length):
            fn(length, k, m, tbls, data_ptrs, parity_ptrs)

        return encode


def pointers(buffers):
    """A C array of the buffers' addresses; bytes (read-only) are passed by their own storage, which ISA-L only
    reads."""
    arr = (ctypes.c_void_p * len(buffers))()
    for i, b in enumerate(buffers):
        if isinstance(b, bytes):
            arr[i] = ctypes.cast(ctypes.c_char_p(b), ctypes.c_void_p).value
        else:
            arr[i] = ctypes.addressof((ctypes.c_char * len(b)).from_buffer(b))
    return arr


def gbps_moved(k, m, shard, seconds):
    """GB/s of memory an encode reads and writes (k shards in, m out), for comparing with memcpy's."""
    return (k + m) * shard / seconds / 1e9


def cpu_can_run_isal(path: str) -> bool:
    return path in _erasure.supported_paths()


def bench_case(k, m, size, repeat, isal, rows, checks):
    shard = size // k
    number = max(1, (256 * MiB) // (size * repeat))  # keep each timing around a quarter second or more
    data = [bytearray(os.urandom(shard)) for _ in range(k)]
    data_ro = [bytes(d) for d in data]
    parity = [bytearray(shard) for _ in range(m)]
    label = f"{k}+{m} {size // MiB} MiB"

    copy_dst = bytearray(shard)

    def memcpy():
        for d in data:
            copy_dst[:] = d

    t_memcpy = best_seconds(memcpy, repeat, number)
    rows.append([label, "memcpy", mbps(size, t_memcpy), "", "", f"moves {2 * size / t_memcpy / 1e9:.1f} GB/s"])

    import zfec

    zenc = zfec.Encoder(k, k + m)
    nums = tuple(range(k, k + m))
    data_t = tuple(data_ro)
    t_zfec = best_seconds(lambda: zenc.encode(data_t, nums), repeat, number)
    rows.append([label, "zfec", mbps(size, t_zfec), "", "", ""])

    # ISA-L reads the same data and writes the same parity buffers as ours, so the two differ only in their code:
    # from memory (64 MiB) the rate also depends on where the buffers lie, and separate buffers for each measured
    # that too. Each ISA-L entry first writes its own buffers once, which are checked against ours.
    dp, pp = pointers(data_ro), pointers(parity)
    ours_auto = None
    for path in _erasure.supported_paths():
        enc = _erasure.Encoder(k, m, path)
        contenders = [lambda: enc.encode(data_ro, parity)]
        entry, kind = ISAL_PATHS[path]
        if isal is not None:
            iparity = [bytearray(shard) for _ in range(m)]
            ienc = isal.encoder(k, m, entry, kind)
            ienc(dp, pointers(iparity), shard)
            enc.encode(data_ro, parity)
            checks.append((f"{label} {path}: parity identical to ISA-L {entry}", iparity == parity))
            contenders.append(lambda: ienc(dp, pp, shard))
        times = best_seconds_interleaved(contenders, repeat, number)
        ours = mbps(size, times[0])
        if path == _erasure.best_path():
            ours_auto = ours
        isal_mbps = ratio = None
        moved = f"moves {gbps_moved(k, m, shard, times[0]):.1f} GB/s"
        if isal is not None:
            isal_mbps = mbps(size, times[1])
            ratio = ours / isal_mbps
            moved += f" (ISA-L {gbps_moved(k, m, shard, times[1]):.1f})"
        vs_zfec = ours / mbps(size, t_zfec)
        vs_memcpy = ours / mbps(size, t_memcpy)
        note = ""
        if ratio is not None and path in ("ssse3", "avx2", "gfni") and size >= 64 * MiB:
            note = goal(ratio, 0.9)
        if path == "scalar":
            note = "vs zfec " + goal(vs_zfec, 1.3)
        rows.append([label, f"hearth {path}", ours, f"{isal_mbps:,.0f}" if isal_mbps else "-",
                     f"{ratio:.2f}" if ratio else "-", f"zfec {vs_zfec:.1f}x, memcpy {vs_memcpy:.2f}x, {moved} {note}"])

    if isal is not None:
        lib = isal.lib
        a = (ctypes.c_ubyte * ((k + m) * k))()
        lib.gf_gen_cauchy1_matrix(a, k + m, k)
        tbls = (ctypes.c_ubyte * (32 * k * m))()
        lib.ec_init_tables(k, m, ctypes.cast(ctypes.addressof(a) + k * k, ctypes.POINTER(ctypes.c_ubyte)), tbls)
        auto_enc = _erasure.Encoder(k, m)
        t_ours_auto, t_isal_auto = best_seconds_interleaved(
            [lambda: auto_enc.encode(data_ro, parity), lambda: lib.ec_encode_data(shard, k, m, tbls, dp, pp)],
            repeat, number)
        ours_auto, auto = mbps(size, t_ours_auto), mbps(size, t_isal_auto)
        r = ours_auto / auto
        note = goal(r, 1.0) + " (stretch)" if size <= MiB else ""
        rows.append([label, f"hearth auto ({_erasure.best_path()}) vs ISA-L auto", ours_auto, f"{auto:,.0f}",
                     f"{r:.2f}", note])

    # Decode with m data shards lost: rebuild them from the k - m survivors and the m parity shards.
    lost = list(range(min(m, k)))
    _erasure.Encoder(k, m).encode(data_ro, parity)  # ISA-L wrote the parity last; the decode checks ours
    survivors = [i for i in range(k + m) if i not in lost][:k]
    full = data_ro + [bytes(p) for p in parity]
    dec = _erasure.Decoder(k, m)
    out = [bytearray(shard) for _ in lost]
    shards = [full[i] for i in survivors]
    auto_enc = _erasure.Encoder(k, m)
    t_enc, t_dec = best_seconds_interleaved(
        [lambda: auto_enc.encode(data_ro, parity), lambda: dec.decode(shards, survivors, out, lost)], repeat, number)
    ours_auto = mbps(size, t_enc)
    checks.append((f"{label}: decode rebuilt the lost shards", [bytes(o) for o in out] == [full[i] for i in lost]))
    dec_mbps = mbps(size, t_dec)
    r = dec_mbps / ours_auto
    rows.append([label, f"hearth decode, {len(lost)} data lost ({dec.path})", dec_mbps, "", f"{r:.2f}",
                 "vs our encode " + goal(r, 0.9)])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller objects and fewer repetitions")
    args = ap.parse_args()
    try:
        isal = ISAL()
    except Exception as exc:  # the comparison is the point, but our own figures still print
        print(f"ISA-L unavailable ({exc}); printing our figures only")
        isal = None
    print(f"CPU paths: compiled {', '.join(_erasure.compiled_paths())}; this CPU runs "
          f"{', '.join(_erasure.supported_paths())}; automatic choice {_erasure.best_path()}")
    missing = [p for p in ("ssse3", "avx2", "gfni") if p not in _erasure.supported_paths()]
    if missing:
        print(f"Not measurable on this CPU (it lacks the instructions): {', '.join(missing)}")
    rows, checks = [], []
    sizes = [4 * MiB, MiB] if args.quick else [64 * MiB, MiB]
    repeat = 3 if args.quick else 7
    for k, m in ((10, 4), (4, 2)):
        for size in sizes:
            bench_case(k, m, size, repeat, isal, rows, checks)
    print_table("Reed-Solomon encode/decode, MB/s of data", ["case", "coder", "MB/s", "ISA-L MB/s", "ratio", "notes"],
                rows)
    report_checks(checks)


if __name__ == "__main__":
    main()
