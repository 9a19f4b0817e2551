"""The hot path: Reed-Solomon erasure coding, batch SHA2-256, chunking, and block file reads and names.

Like pyzmq's backend choice, this picks the compiled extension built from native/ when it imports, else the
pure-Python reference with the same API (and says so loudly: `hearth doctor`, and a warning at start).
REQUIRE_NATIVE=1 in the environment turns a missing extension into an error at import, so an appliance or a
benchmark never runs the slow path without knowing.
"""

import importlib
import logging
import os

from edge.errors import NativeMissing

log = logging.getLogger(__name__)

REQUIRE_ENV = "REQUIRE_NATIVE"
# kernel name -> (native module, reference module)
KERNELS = {
    "erasure": ("edge.kernels._erasure", "edge.kernels.ref_erasure"),
    "hashing": ("edge.kernels._hashing", "edge.kernels.ref_hashing"),
    "chunking": ("edge.kernels._chunking", "edge.kernels.ref_chunking"),
    "blockio": ("edge.kernels._blockio", "edge.kernels.ref_blockio"),
}


def native_required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


def _load(kernel: str):
    native, reference = KERNELS[kernel]
    try:
        return importlib.import_module(native), None
    except ImportError as exc:
        if native_required():
            raise NativeMissing(
                f"the native {kernel} kernel ({native}) is not built: {exc}. {REQUIRE_ENV}=1 forbids the slow "
                "reference; rebuild with `REQUIRE_NATIVE=1 pip install .` (needs a C compiler, the Python "
                "headers and libssl-dev)") from exc
        return importlib.import_module(reference), str(exc)


_erasure, _erasure_missing = _load("erasure")
_hashing, _hashing_missing = _load("hashing")
_chunking, _chunking_missing = _load("chunking")
_blockio, _blockio_missing = _load("blockio")
MISSING = {name: err for name, err in (("erasure", _erasure_missing), ("hashing", _hashing_missing),
                                         ("chunking", _chunking_missing), ("blockio", _blockio_missing)) if err}

Encoder = _erasure.Encoder
Decoder = _erasure.Decoder
sha256_many = _hashing.sha256_many
sha256_spans = _hashing.sha256_spans
sha256_runs = _hashing.sha256_runs
HASH_LANES = _hashing.lanes()   # blocks a batch hashes at once (2: native/sha256_x2.c), for callers that group
fastcdc_cuts = _chunking.fastcdc_cuts
fixed_cuts = _chunking.fixed_cuts
b32lower = _blockio.b32lower
read_file = _blockio.read_file
read_blocks = _blockio.read_blocks


def erasure_path() -> str:
    """The Reed-Solomon path in use: a CPU path name, or 'reference'."""
    if "erasure" in MISSING:
        return "reference"
    return _erasure.selected_path()


def report() -> list[dict]:
    """One entry per kernel: whether it is native, what it runs on, and why not when it is not."""
    rows = []
    for name, (native, _) in KERNELS.items():
        if name in MISSING:
            rows.append({"kernel": name, "native": False, "detail": "pure-Python reference (slow)",
                         "error": MISSING[name]})
            continue
        if name == "erasure":
            try:
                path = _erasure.selected_path()
            except _erasure.PathUnavailable as exc:
                rows.append({"kernel": name, "native": True, "detail": "no usable path", "error": str(exc)})
                continue
            detail = (f"path {path} (CPU runs {', '.join(_erasure.supported_paths())}; "
                      f"built {', '.join(_erasure.compiled_paths())})")
        elif name == "hashing":
            detail = _hashing.backend()
        elif name == "chunking":
            detail = "FastCDC 2020 and fixed-size, C"
        else:
            detail = "block file reads and base32 names, C; GIL released around syscalls"
        rows.append({"kernel": name, "native": True, "detail": detail, "error": None})
    return rows


def warn_if_reference() -> None:
    """Log, loudly, every kernel that fell back to the reference (called when the agent starts)."""
    for name, err in MISSING.items():
        log.warning("native %s kernel missing (%s): running the pure-Python reference, which is far slower; "
                    "rebuild with REQUIRE_NATIVE=1 to find out why", name, err)


__all__ = ["Encoder", "Decoder", "sha256_many", "sha256_spans", "fastcdc_cuts", "fixed_cuts", "b32lower", "read_file",
           "read_blocks", "erasure_path", "report", "warn_if_reference", "MISSING"]
