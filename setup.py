"""Build script for fastnn's compiled core.

Every ``ext/*.c`` is compiled once into a static library (``build_clib``) and
linked into every Cython module ``fastnn/*.pyx`` (built as ``fastnn.<name>``).
Both lists are globbed at build time, so new kernel files and new modules are
picked up without editing this file.

Flags: ``-O3 -std=c99``, ``-fopenmp`` when a tiny OpenMP program compiles and
links (otherwise a single-threaded build with a loud warning), and
``-march=native`` only when ``FASTNN_NATIVE=1``. Never ``-ffast-math``: the
kernels rely on IEEE semantics (NaN propagation, ordered reductions).

``FASTNN_SANITIZE=address,undefined`` (any comma-separated list of GCC/Clang
sanitizers) builds kernels and extensions for testing under sanitizers:
``-fsanitize=<list> -fno-sanitize-recover=all -fno-omit-frame-pointer -O1 -g``
on compile and link, and ``-fno-wrapv`` on the kernels so that signed
overflow is reported. Load the result with the sanitizer runtime preloaded
(see .ci/sanitize.sh). Unset (the default), the build is unchanged.
Instruction-set specific code uses per-function target attributes, so no
global ``-mavx``-style flag is added here.
"""
from __future__ import annotations

import glob
import os
import sys
import tempfile

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_clib import build_clib as _build_clib
from setuptools.command.build_ext import build_ext as _build_ext
from setuptools.errors import CompileError, LinkError

KERNEL_LIB = "fastnn_kernels"
EXT_DIR = "ext"

_OPENMP_PROBE = r"""
#include <omp.h>
int main(void)
{
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    return n > 0 && omp_get_max_threads() > 0 ? 0 : 1;
}
"""

# (compile flags, link flags) per compiler type, tried in order.
_OPENMP_CANDIDATES = {
    "unix": ((["-fopenmp"], ["-fopenmp"]),
             # Apple clang with a separately installed libomp.
             (["-Xpreprocessor", "-fopenmp"], ["-lomp"])),
    "msvc": ((["/openmp"], []),),
}

_openmp_cache: dict[str, tuple[list[str], list[str]] | None] = {}


def _sanitize_flags() -> list[str]:
    """Compile/link flags for FASTNN_SANITIZE (empty when it is unset)."""
    wanted = os.environ.get("FASTNN_SANITIZE", "").strip()
    if not wanted:
        return []
    names = [n.strip() for n in wanted.split(",")]
    if not all(n and n.replace("-", "").isalnum() for n in names):
        raise SystemExit(f"FASTNN_SANITIZE must be a comma-separated list of sanitizer "
                         f"names such as address,undefined; got {wanted!r}")
    # -O1 and -g after the default -O3: the last -O wins; frame pointers give
    # readable sanitizer stack traces; no recovery, so a report fails the run.
    return [f"-fsanitize={','.join(names)}", "-fno-sanitize-recover=all",
            "-fno-omit-frame-pointer", "-O1", "-g"]


def _kernel_sources() -> list[str]:
    return sorted(glob.glob(os.path.join(EXT_DIR, "*.c")))


def _kernel_headers() -> list[str]:
    return sorted(glob.glob(os.path.join(EXT_DIR, "*.h")))


def _openmp_flags(compiler) -> tuple[list[str], list[str]] | None:
    """Compile and link flags that enable OpenMP, or None if none work."""
    ctype = compiler.compiler_type
    if ctype in _openmp_cache:
        return _openmp_cache[ctype]
    found = None
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "omp_probe.c")
        with open(src, "w") as fh:
            fh.write(_OPENMP_PROBE)
        for cflags, lflags in _OPENMP_CANDIDATES.get(ctype, ()):
            try:
                objs = compiler.compile([src], output_dir=tmp, extra_postargs=cflags)
                compiler.link_executable(objs, "omp_probe", output_dir=tmp,
                                         extra_postargs=lflags)
            except (CompileError, LinkError):
                continue
            found = (cflags, lflags)
            break
    if found is None:
        bar = "!" * 78
        msg = (f"\n{bar}\n"
               "fastnn: the C compiler does not support OpenMP.\n"
               "fastnn is being built SINGLE-THREADED: every kernel runs on one core.\n"
               "Install an OpenMP-capable compiler (gcc, or clang with libomp) and\n"
               "rebuild for multi-threaded kernels.\n"
               f"{bar}\n")
        sys.stderr.write(msg)
    _openmp_cache[ctype] = found
    return found


def _kernel_cflags(compiler) -> list[str]:
    if compiler.compiler_type == "msvc":
        flags = ["/O2"]
    else:
        # -fno-math-errno lets sqrtf vectorise and -fno-trapping-math lets
        # branch-free selects in the exp/tanh/sigmoid loops vectorise; unlike
        # -ffast-math neither changes any floating-point result (the kernels
        # never read errno or the FP exception flags).
        flags = ["-O3", "-std=c99", "-fno-math-errno", "-fno-trapping-math", "-Wall",
                 "-Wno-unknown-pragmas"]
        if os.environ.get("FASTNN_NATIVE", "") == "1":
            flags.append("-march=native")
    omp = _openmp_flags(compiler)
    if omp is not None:
        flags += omp[0]
    sanitize = _sanitize_flags()
    if sanitize:
        # Python's CFLAGS carry -fwrapv, which hides signed overflow from UBSan;
        # the kernels never rely on wrapping.
        flags += sanitize + ["-fno-wrapv"]
    return flags


class build_clib(_build_clib):
    """Compiles ext/*.c into one static library with flags probed for this compiler."""

    def build_libraries(self, libraries):
        cflags = _kernel_cflags(self.compiler)
        for _name, info in libraries:
            info["cflags"] = list(cflags)
        super().build_libraries(libraries)


class build_ext(_build_ext):
    """Builds the kernel library first (plain build_ext does not) and links OpenMP."""

    def run(self):
        if self.distribution.has_c_libraries():
            self.run_command("build_clib")
        super().run()

    def build_extensions(self):
        omp = _openmp_flags(self.compiler)
        sanitize = _sanitize_flags()
        for ext in self.extensions:
            if omp is not None:
                ext.extra_link_args = list(ext.extra_link_args or []) + omp[1]
            if sanitize:
                ext.extra_compile_args = list(ext.extra_compile_args or []) + sanitize
                ext.extra_link_args = list(ext.extra_link_args or []) + sanitize
            # The kernel library before libm, so that --as-needed linkers
            # still see its math calls.
            libs = [lib for lib in ext.libraries if lib not in (KERNEL_LIB, "m")]
            libs.append(KERNEL_LIB)
            if self.compiler.compiler_type != "msvc":
                libs.append("m")
            ext.libraries = libs
        super().build_extensions()


def _extensions() -> list[Extension]:
    exts = []
    for pyx in sorted(glob.glob(os.path.join("fastnn", "*.pyx"))):
        name = os.path.splitext(os.path.basename(pyx))[0]
        exts.append(Extension(
            f"fastnn.{name}",
            sources=[pyx],
            include_dirs=[numpy.get_include(), EXT_DIR],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            # Relink when a kernel changes even if the .pyx did not.
            depends=_kernel_sources() + _kernel_headers(),
        ))
    return cythonize(
        exts,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "language_level": 3,
        },
        quiet=True,
    )


setup(
    libraries=[(KERNEL_LIB, {
        "sources": _kernel_sources(),
        "include_dirs": [EXT_DIR],
        "obj_deps": {"": _kernel_headers()},
    })],
    ext_modules=_extensions(),
    cmdclass={"build_clib": build_clib, "build_ext": build_ext},
)
