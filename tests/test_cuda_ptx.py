"""Every CUDA kernel compiles to PTX for a real target (sm_90), without a GPU.

The simulator that runs the op tests executes kernels as Python, so it cannot
catch what only the compiler sees: typing errors, unsupported constructs, or a
stray float64 in a float32 kernel. This builds every kernel of
fastnn.backend.cuda_kernels for compute capability 9.0 with the signatures the
backend launches it with. Compiling needs NUMBA_ENABLE_CUDASIM=0, and the test
process has the simulator on, so the build runs in one subprocess.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# Children import the same fastnn as this process (the installed one in CI),
# and run outside the repository root so its unbuilt sources cannot shadow it.
import fastnn  # noqa: E402
PACKAGE_PARENT = Path(fastnn.__file__).resolve().parents[1]
CHILD_CWD = Path(__file__).resolve().parent
TARGET_CC = (9, 0)

_BUILD = textwrap.dedent(r"""
    import importlib, json, pkgutil, sys
    from numba import cuda
    import numba.cuda.dispatcher as dispatcher_mod

    CC = tuple(json.loads(sys.argv[1]))

    # Numba compiles a device function called from a kernel for the compute
    # capability of the *current* device, even inside compile_ptx(cc=...);
    # with no GPU there is none, so stand in one of the target capability.
    class _TargetDevice:
        compute_capability = CC

    if hasattr(dispatcher_mod, "get_current_device"):
        dispatcher_mod.get_current_device = lambda: _TargetDevice()

    def trivial(a):
        i = cuda.grid(1)
        if i < a.shape[0]:
            a[i] = a[i] + a[i]

    try:
        cuda.compile_ptx(trivial, "void(float32[::1])", cc=CC)
    except Exception as exc:  # no NVVM / libdevice / NVRTC: nothing to test with
        print(json.dumps({"toolchain_error": f"{type(exc).__name__}: {exc}"}))
        sys.exit(0)

    import fastnn.backend.cuda_kernels as pkg
    from fastnn.backend.cuda_kernels import DEVICE_FUNCTIONS, KERNELS

    # Every module of the package, not only the listed families: a new module
    # whose kernels nobody registered must show up here too.
    modules = [importlib.import_module(f"{pkg.__name__}.{m.name}")
               for m in pkgutil.iter_modules(pkg.__path__)]
    registered = {spec.py_func for spec in KERNELS}
    unregistered = []
    for mod in modules:
        for attr, obj in vars(mod).items():
            if not isinstance(obj, dispatcher_mod.CUDADispatcher):
                continue
            if obj.py_func.__module__ != mod.__name__:
                continue  # imported from a sibling module; checked there
            name = f"{obj.py_func.__module__}.{obj.py_func.__name__}"
            if obj.targetoptions.get("device"):
                if name not in DEVICE_FUNCTIONS:
                    unregistered.append(name + " (device function)")
            elif obj.py_func not in registered:
                unregistered.append(name)

    results = []
    for spec in KERNELS:
        if not spec.signatures:
            results.append({"name": spec.name, "sig": None, "error": "no signature"})
        for sig in spec.signatures:
            entry = {"name": spec.name, "sig": sig, "allow_f64": spec.allow_f64}
            try:
                ptx, _ = cuda.compile_ptx(spec.py_func, sig, cc=CC)
            except Exception as exc:
                entry["error"] = f"{type(exc).__name__}: {exc}"[:2000]
            else:
                entry["target_ok"] = f".target sm_{CC[0]}{CC[1]}" in ptx
                entry["f64_lines"] = [ln.strip() for ln in ptx.splitlines()
                                      if ".f64" in ln][:5]
                entry["entry_ok"] = ".entry" in ptx
            results.append(entry)
    print(json.dumps({"results": results, "unregistered": sorted(set(unregistered)),
                      "n_kernels": len(KERNELS)}))
""")


def _numba_cuda_installed() -> bool:
    try:
        return importlib.util.find_spec("numba") is not None and \
            importlib.util.find_spec("numba.cuda") is not None
    except ImportError:
        return False


@pytest.fixture(scope="module")
def ptx_build():
    """Builds every kernel once, in a subprocess with the simulator off."""
    if not _numba_cuda_installed():
        pytest.skip("numba-cuda is not installed (pip install fastnn[cuda])")
    env = dict(os.environ)
    env["NUMBA_ENABLE_CUDASIM"] = "0"
    env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_PARENT)] + [p for p in [env.get("PYTHONPATH")] if p])
    proc = subprocess.run([sys.executable, "-c", _BUILD, json.dumps(TARGET_CC)],
                          cwd=str(CHILD_CWD), env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, f"PTX build subprocess failed:\n{proc.stderr[-4000:]}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if "toolchain_error" in out:
        pytest.skip("the CUDA compiler toolchain (NVVM/libdevice/NVRTC) is not usable "
                    "here; pip install 'numba-cuda[cu13]' brings it: "
                    + out["toolchain_error"][:300])
    return out


def test_registry_lists_kernels(ptx_build):
    # The families exist: a broken import that registered nothing must not pass.
    assert ptx_build["n_kernels"] >= 20


def test_every_kernel_is_registered_with_a_signature(ptx_build):
    assert ptx_build["unregistered"] == [], (
        "kernels defined without the registry decorator (cuda_kernels._registry."
        f"kernel): {ptx_build['unregistered']}")
    missing = [r["name"] for r in ptx_build["results"] if r["sig"] is None]
    assert missing == [], f"kernels registered without a launch signature: {missing}"


def test_every_kernel_compiles_for_sm90(ptx_build):
    failed = [f"{r['name']} {r['sig']}: {r['error']}" for r in ptx_build["results"]
              if r.get("error") and r["sig"] is not None]
    assert failed == [], "kernels that do not compile to PTX:\n" + "\n\n".join(failed)
    built = [r for r in ptx_build["results"] if "target_ok" in r]
    assert built and all(r["target_ok"] and r["entry_ok"] for r in built)


def test_float32_kernels_have_no_float64_instructions(ptx_build):
    # A bare Python float literal promotes float32 arithmetic to float64 in
    # Numba; only the float64 reductions may contain .f64 instructions.
    offenders = {f"{r['name']} {r['sig']}": r["f64_lines"] for r in ptx_build["results"]
                 if r.get("f64_lines") and not r["allow_f64"]}
    assert offenders == {}, f"float64 instructions in float32 kernels: {offenders}"


def test_registry_names_are_unique():
    if not _numba_cuda_installed():
        pytest.skip("numba-cuda is not installed (pip install fastnn[cuda])")
    from fastnn.backend.cuda_kernels import KERNELS
    names = [k.name for k in KERNELS]
    assert len(names) == len(set(names))
