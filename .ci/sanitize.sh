#!/usr/bin/env bash
# The kernel tests against an AddressSanitizer + UndefinedBehaviorSanitizer
# build of the extension.
#
# The build happens in a scratch copy of the sources (never in the checkout,
# whose own build stays untouched), with FASTNN_SANITIZE=address,undefined
# (see setup.py). The tests then run from the copy's tests/ directory with
# PYTHONPATH at the copy, so they import the sanitized build and not an
# installed fastnn, under the ASan runtime preloaded into the (uninstrumented)
# Python. Any sanitizer report aborts the process (no recovery), and the log
# is also searched for reports, so one fails this script.
#
# Usage: .ci/sanitize.sh [extra pytest arguments]
# Environment: FASTNN_SANITIZE (default address,undefined), SANITIZE_KEEP=1
# keeps the scratch copy, PYTHON (default python).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-python}"
sanitizers="${FASTNN_SANITIZE:-address,undefined}"

work="$(mktemp -d "${TMPDIR:-/tmp}/fastnn-sanitize.XXXXXX")"
cleanup() { if [[ "${SANITIZE_KEEP:-0}" != 1 ]]; then rm -rf "$work"; fi; }
trap cleanup EXIT

# The sources only: no build/, no compiled modules or generated C from the
# checkout, which setuptools would otherwise take as up to date.
mkdir -p "$work/src"
cp -R "$repo/setup.py" "$repo/pyproject.toml" "$repo/ext" "$repo/fastnn" "$repo/tests" "$work/src/"
find "$work/src" \( -name '*.so' -o -name '*.pyd' -o -name '__pycache__' \) -prune -exec rm -rf {} +
for pyx in "$work"/src/fastnn/*.pyx; do rm -f "${pyx%.pyx}.c"; done
src="$work/src"

# setup.py needs the build requirements (pip installs them only in its own
# isolated build environment).
if ! "$py" -c "import Cython, numpy, setuptools" 2>/dev/null; then
    "$py" -m pip install -q "setuptools>=64" "Cython>=3" "numpy>=1.23"
fi

echo "sanitize: building with FASTNN_SANITIZE=$sanitizers in $src"
start=$SECONDS
(cd "$src" && FASTNN_SANITIZE="$sanitizers" "$py" setup.py -q build_ext --inplace) \
    > "$work/build.log" 2>&1 || { cat "$work/build.log"; echo "sanitize: build failed"; exit 1; }
echo "sanitize: built in $((SECONDS - start)) s"

# ASan's runtime must come first in the process: preload it into Python
# (UBSan's loads as a dependency of the extension).
preload=""
if [[ ",$sanitizers," == *,address,* ]]; then
    preload="$(${CC:-gcc} -print-file-name=libasan.so)"
    if [[ "$preload" != /* || ! -e "$preload" ]]; then
        echo "sanitize: cannot find libasan.so (${CC:-gcc} -print-file-name gave '$preload')"
        exit 1
    fi
fi

# detect_leaks=0: CPython keeps objects alive at exit by design.
# allocator_may_return_null=1: huge allocations raise MemoryError as usual.
export ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:halt_on_error=1:abort_on_error=1:detect_stack_use_after_return=1:check_initialization_order=1"
export UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1"
export PYTHONPATH="$src"
export PYTHONDONTWRITEBYTECODE=1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
cd "$src/tests"

# The tests must see the sanitized build, not an installed fastnn.
LD_PRELOAD="$preload" "$py" - "$src" <<'EOF'
import os, sys
import fastnn, fastnn._C, fastnn._conv
for mod in (fastnn, fastnn._C, fastnn._conv):
    path = os.path.realpath(mod.__file__)
    if not path.startswith(os.path.realpath(sys.argv[1]) + os.sep):
        sys.exit(f"sanitize: {mod.__name__} was imported from {path}, not the sanitized build")
print("sanitize: importing", os.path.dirname(os.path.realpath(fastnn._C.__file__)))
EOF

# Every kernel family: GEMM, activations, losses, metrics, reductions,
# optimisers, data movement (test_kernels, test_backend_ops, test_gemm,
# test_optim), the argument checks (test_boundary, test_properties) and
# convolution, pooling and batch norm (test_conv_ops). CPU only.
tests=(test_kernels.py test_backend_ops.py test_boundary.py test_optim.py test_gemm.py test_fusion.py
       test_conv_ops.py test_properties.py)
start=$SECONDS
set +e
# --capture=sys: the runtimes write their reports to file descriptor 2, which
# pytest's default capture would swallow along with the aborting process.
LD_PRELOAD="$preload" "$py" -m pytest -q -p no:cacheprovider --capture=sys -x -k "not cuda" \
    "${tests[@]}" "$@" 2>&1 | tee "$work/pytest.log"
rc=${PIPESTATUS[0]}
set -e
echo "sanitize: tests ran in $((SECONDS - start)) s (pytest exit status $rc)"
if grep -qE "ERROR: AddressSanitizer|runtime error:|SUMMARY: [A-Za-z]+Sanitizer" \
        "$work/pytest.log"; then
    echo "sanitize: FAILED: the sanitizers reported the errors above"
    exit 1
fi
if [[ $rc -ne 0 ]]; then
    echo "sanitize: FAILED: the tests failed under the sanitized build"
    exit "$rc"
fi
echo "sanitize: passed"
