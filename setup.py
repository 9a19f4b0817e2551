"""Build the native kernels (native/) as extensions of the edge package.

Modelled on python-zeroconf's build_ext: a compiler failure is logged and the pure-Python reference is used,
unless REQUIRE_NATIVE=1 (images, benchmarks, CI), which makes any failure fatal. SKIP_NATIVE=1 builds nothing.
No extension is compiled with -mavx2 or the like: the SIMD kernels carry per-function target attributes and
are chosen at run time from the CPU's features (native/rs_kernels.c).
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

REQUIRE_NATIVE = os.environ.get("REQUIRE_NATIVE", "") not in ("", "0")
SKIP_NATIVE = os.environ.get("SKIP_NATIVE", "") not in ("", "0")

COMMON_CFLAGS = ["-O3", "-std=gnu11", "-fno-strict-aliasing", "-Wall", "-Wno-unused-function"]


# Headers and shared Cython includes: touching one rebuilds the extensions that use it.
DEPENDS = ["native/gf256.h", "native/rs_kernels.h", "native/sha256_batch.h", "native/sha256_x2.h",
           "native/fastcdc.h", "native/fastcdc_gear.h", "native/_buffers.pxi", "native/sha256_runs.h"]


def _kernel(name, *sources, libraries=()):
    """The extension edge.kernels.NAME from native/ SOURCES."""
    return Extension(f"edge.kernels.{name}", sources=[f"native/{source}" for source in sources],
                     include_dirs=["native"], depends=DEPENDS, libraries=list(libraries),
                     extra_compile_args=COMMON_CFLAGS)


def native_extensions():
    return [
        _kernel("_erasure", "_erasure.pyx", "gf256.c", "rs_kernels.c"),
        _kernel("_hashing", "_hashing.pyx", "sha256_batch.c", "sha256_x2.c", "sha256_runs.c", libraries=["crypto"]),
        _kernel("_blockio", "_blockio.pyx", "sha256_batch.c", "sha256_x2.c", libraries=["crypto"]),
        _kernel("_chunking", "_chunking.pyx", "fastcdc.c"),
    ]


class BuildNative(build_ext):
    """build_ext that reports, and only under REQUIRE_NATIVE=1 fails on, a broken native build."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # a missing compiler surfaces here
            self._failed("the native build", exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._failed(ext.name, exc)

    def _failed(self, what, exc):
        if REQUIRE_NATIVE:
            raise
        sys.stderr.write(
            f"\n*** WARNING: {what} failed to build ({exc}).\n"
            "*** Hearth will run on the pure-Python reference kernels, which are much slower.\n"
            "*** Install a C compiler, the Python headers and libssl-dev, then reinstall.\n\n"
        )


def ext_modules():
    if SKIP_NATIVE:
        if REQUIRE_NATIVE:
            sys.exit("REQUIRE_NATIVE=1 and SKIP_NATIVE=1 contradict each other")
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        if REQUIRE_NATIVE:
            raise
        sys.stderr.write("*** WARNING: Cython is not installed; building no native kernels.\n")
        return []
    return cythonize(
        native_extensions(),
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
    )


setup(ext_modules=ext_modules(), cmdclass={"build_ext": BuildNative})
