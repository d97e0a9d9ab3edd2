"""Property-based tests (hypothesis) of the Cython boundary and the model API.

Each test draws whole calls at random: shapes (0 and 1 included), dtypes
(float16/32/64, int8/32/64, bool, object, complex), memory layouts (Fortran
order, strided, reversed and padded-row views, byte-swapped, misaligned,
read-only, plain lists), aliasing between outputs and inputs (the same
array, a new view of it, a partially overlapping view) and values (NaN,
infinities, values near FLT_MAX, denormals).

Every test runs once on valid calls (150 examples: results checked against
float64 NumPy references, every output element written, outputs poisoned
first) and once per fault (15 examples each), a fault being one thing wrong
with the call: a bad layout or dtype of one named argument, a wrong shape,
an output aliasing an input, an out-of-range label or index, a bad geometry.
The test predicts from NumPy's own view of each argument whether the call
is valid; an invalid call must raise TypeError / ValueError whose message
names the function and a faulty argument. A crash, an unexpected exception
type or a bad argument accepted in silence fails the test. (One run per
fault, rather than faults drawn at random, gives every fault its examples
whatever hypothesis draws.)

Arrays are generated from a drawn seed with NumPy (hypothesis explores the
structure of the call, not every float), and every test is derandomized so a
run is repeatable. ``pytest -s`` prints how many calls were made.
"""
from __future__ import annotations

import collections
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastnn import _C, _conv

import reference as ref
import reference_conv as refc

SETTINGS = settings(deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.filter_too_much,
                                           HealthCheck.data_too_large])

F32 = np.dtype(np.float32)
SENTINEL = np.float32(-7.25e33)  # poison where NaN is a legitimate result
SPECIALS = np.array([np.nan, np.inf, -np.inf, 3.0e38, -3.0e38, 1e-40, -1e-45, -0.0],
                    dtype=np.float32)

# Dtypes the float32 arguments must refuse (and what the index arguments get).
BAD_DTYPES = ("float16", "float64", "int8", "int32", "int64", "bool", "object",
              "complex64", "uint8", ">f4")

# Memory layouts other than plain C order (some are still C-contiguous for
# some shapes: a reversed or Fortran-order array of one row, say).
LAYOUTS = ("f", "step", "neg", "rowpad", "rowstep", "swap", "ro", "unaligned", "list")


seeds = st.integers(0, 2**32 - 1)


class Plan:
    """What one example gets wrong: nothing (``fault`` None) or exactly one
    fault, so that the error must name the argument the fault was put into.

    Faults are strings: "layout:x" (x gets a layout from LAYOUTS), "dtype:x"
    (x gets a wrong dtype), "alias:..." (an output shares memory it must not)
    and test-specific ones. Every test runs once per fault (see ``run``), so
    each fault is tried on its own set of drawn calls.
    """

    def __init__(self, data: Any, fault: Optional[str]):
        self.data = data
        self.fault = fault

    @property
    def alias(self) -> bool:
        """True under an aliasing fault: the test then draws non-empty arrays,
        so that the arrays really share memory."""
        return self.fault is not None and self.fault.startswith("alias:")

    def draw(self, strategy: st.SearchStrategy, label: str) -> Any:
        return self.data.draw(strategy, label)

    def shape(self, max_dims: int = 3, sizes: Sequence[int] = (0, 1, 1, 2, 3, 5, 17)) -> List[int]:
        """A shape; under an alias fault without zeros and with two or more elements."""
        if self.alias:
            sizes = [n for n in sizes if n > 1]
        return self.draw(st.lists(st.sampled_from(list(sizes)), min_size=1, max_size=max_dims),
                         "shape")

    def __call__(self, fault: str) -> bool:
        return self.fault == fault

    def layout(self, name: str, valid: Sequence[str] = ("c",)) -> str:
        bad = self.fault == "layout:" + name
        return self.draw(st.sampled_from(LAYOUTS if bad else list(valid)), "layout " + name)

    def dtype(self, name: str, bad: Sequence[str] = BAD_DTYPES) -> Optional[str]:
        if self.fault != "dtype:" + name:
            return None
        return self.draw(st.sampled_from(list(bad)), "dtype " + name)

    def pick(self, fault: str, ok: Sequence[Any], bad: Sequence[Any]) -> Any:
        return self.draw(st.sampled_from(list(bad) if self.fault == fault else list(ok)), fault)


CLEAN_EXAMPLES = 150  # calls with nothing wrong: results checked against references
FAULT_EXAMPLES = 15   # calls per fault


def run(check: Callable[[Plan], None], fault: Optional[str], clean: int = CLEAN_EXAMPLES,
        faulty: int = FAULT_EXAMPLES) -> None:
    """Runs ``check`` as a hypothesis property, on valid calls or on calls
    with the one given fault."""
    @settings(SETTINGS, max_examples=clean if fault is None else faulty)
    @given(data=st.data())
    def prop(data: Any) -> None:
        check(Plan(data, fault))

    prop()


def array_faults(*names: str) -> List[str]:
    return [f"{kind}:{n}" for n in names for kind in ("layout", "dtype")]


# ---------------------------------------------------------------------------
# building arguments
# ---------------------------------------------------------------------------

def values(seed: int, shape: Sequence[int], special: bool = False,
           scale: float = 1.0) -> np.ndarray:
    """Random float32 values; with ``special``, some replaced by NaN, +-inf,
    +-3e38, denormals and -0."""
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal(tuple(shape)) * scale).astype(np.float32)
    if special and a.size:
        k = int(rng.integers(1, max(1, a.size // 3) + 1))
        pos = rng.choice(a.size, size=k, replace=False)
        a.flat[pos] = rng.choice(SPECIALS, size=k)
    return a


def as_dtype(a: np.ndarray, dtype: Optional[str]) -> np.ndarray:
    if dtype is None:
        return a
    with np.errstate(invalid="ignore", over="ignore"):
        if dtype == "object":
            return a.astype(object)
        if dtype == "bool":
            return a > 0
        if dtype.startswith(("int", "uint")):
            return np.nan_to_num(a * 3, posinf=7, neginf=-7).clip(-100, 100).astype(dtype)
        return a.astype(dtype)


def place(a: np.ndarray, layout: str) -> Any:
    """``a``'s values (same shape and dtype) in the given memory layout."""
    if layout == "c":
        return np.array(a, order="C")
    if layout == "f":
        return np.array(a, order="F")
    if layout == "list":
        return a.tolist()
    if layout == "swap":
        return a.astype(a.dtype.newbyteorder()) if a.dtype.kind != "O" else np.array(a)
    if layout == "ro":
        r = np.array(a)
        r.flags.writeable = False
        return r
    if layout == "unaligned":
        if a.dtype.kind == "O" or a.dtype.itemsize == 1:
            return np.array(a)
        raw = np.zeros(a.nbytes + a.dtype.itemsize, np.uint8)
        v = raw[1:1 + a.nbytes].view(a.dtype).reshape(a.shape)
        v[...] = a
        return v
    if a.ndim == 0:
        return np.array(a)
    if layout == "neg":
        return np.array(a[::-1])[::-1]  # a copy, reversed in memory
    last = a.shape[-1]
    if layout == "step":
        buf = np.zeros(a.shape[:-1] + (2 * last,), a.dtype)
        v = buf[..., ::2]
    elif layout == "rowpad":
        buf = np.zeros(a.shape[:-1] + (last + 3,), a.dtype)
        v = buf[..., :last]
    elif layout == "rowstep":
        buf = np.zeros((2 * a.shape[0],) + a.shape[1:], a.dtype)
        v = buf[::2]
    else:
        raise AssertionError(layout)
    v[...] = a
    return v


def dtype_ok(obj: Any, kind: str) -> bool:
    dt = obj.dtype
    if not dt.isnative or dt.kind == "O":
        return False
    if kind == "f32":
        return dt == F32
    if kind == "u8":
        return dt == np.dtype(np.uint8)
    size = {"i32": 4, "i64": 8}.get(kind)
    if kind == "index":
        return dt.kind == "i" and dt.itemsize in (4, 8)
    return dt.kind == "i" and dt.itemsize == size


def layout_ok(obj: np.ndarray) -> bool:
    return bool(obj.flags.c_contiguous and obj.flags.aligned)


def rows_ok(obj: np.ndarray) -> bool:
    """sgemm's rule: 2-D with unit-stride rows (any non-negative row stride
    that holds a row)."""
    if not obj.flags.aligned:
        return False
    r, c = obj.shape
    if r == 0 or c == 0:
        return True
    s0, s1 = obj.strides
    if c > 1 and s1 != 4:
        return False
    return r <= 1 or (s0 >= 4 * c and s0 % 4 == 0)


# (function, "valid" / "invalid") -> calls made; printed at the end (pytest -s)
CALLS: collections.Counter = collections.Counter()


@pytest.fixture(scope="module", autouse=True)
def _report_call_counts():
    yield
    fns = sorted({fn for fn, _ in CALLS})
    print("\ncalls made (valid / refused):", ", ".join(
        f"{fn} {CALLS[fn, 'valid']}/{CALLS[fn, 'invalid']}" for fn in fns),
        f"; total {sum(CALLS.values())}")


class Call:
    """One call's expected outcome: the problems the test put into it.

    ``bad(exc, *names)`` records a problem that must raise ``exc`` naming one
    of ``names``. ``run`` then checks the call succeeds (no problem) or fails
    cleanly (some problem).
    """

    def __init__(self, fn: str):
        self.fn = fn
        self.problems: List[Tuple[type, Tuple[str, ...]]] = []

    def bad(self, exc: type, *names: str) -> None:
        self.problems.append((exc, names))

    def array(self, name: str, obj: Any, kind: str = "f32", ndim: Optional[int] = None,
              out: bool = False, rule: Callable[[np.ndarray], bool] = layout_ok) -> None:
        """Records what is wrong with one array argument, in the wrapper's order."""
        if obj is None:
            return
        if not isinstance(obj, np.ndarray):
            self.bad(TypeError, name)
        elif not dtype_ok(obj, kind):
            self.bad(TypeError, name)
        elif ndim is not None and obj.ndim != ndim:
            self.bad(ValueError, name)
        elif obj.ndim == 0 or not rule(obj):
            self.bad(ValueError, name)
        elif out and not obj.flags.writeable:
            self.bad(ValueError, name)

    def disjoint(self, out_name: str, out: Any, in_name: str, other: Any,
                 same_ok: bool = False) -> None:
        """An output may not overlap an input (unless it is the very same memory
        and the contract allows in-place use)."""
        if not (isinstance(out, np.ndarray) and isinstance(other, np.ndarray)):
            return
        if out.size == 0 or other.size == 0 or not np.may_share_memory(out, other):
            return
        same = (out.__array_interface__["data"][0] == other.__array_interface__["data"][0]
                and out.shape == other.shape and out.strides == other.strides)
        if not (same_ok and same):
            self.bad(ValueError, out_name, in_name)

    def run(self, f: Callable, *args: Any, **kwargs: Any) -> Tuple[bool, Any]:
        """(True, result) when the call must succeed; (False, None) after
        checking a clean failure."""
        CALLS[self.fn, "invalid" if self.problems else "valid"] += 1
        if not self.problems:
            return True, f(*args, **kwargs)
        try:
            f(*args, **kwargs)
        except (TypeError, ValueError) as exc:
            msg = str(exc)
            types = tuple({p[0] for p in self.problems})
            names = sorted({n for p in self.problems for n in p[1]})
            assert isinstance(exc, types), (
                f"{self.fn}: raised {type(exc).__name__} ({msg}); expected one of "
                f"{[t.__name__ for t in types]} for {self.problems}")
            assert self.fn in msg, f"{self.fn}: message does not name the function: {msg}"
            assert re.search("'(" + "|".join(map(re.escape, names)) + ")'", msg), (
                f"{self.fn}: message names none of {names}: {msg}")
            return False, None
        raise AssertionError(f"{self.fn}: accepted a call with problems {self.problems}")


def make_array(c: Call, name: str, base: np.ndarray, layout: str, dtype: Optional[str],
               kind: str = "f32", ndim: Optional[int] = None, out: bool = False,
               rule: Callable[[np.ndarray], bool] = layout_ok) -> Any:
    """``base`` turned into the drawn dtype and layout, its defects recorded."""
    obj = place(as_dtype(base, dtype), layout)
    c.array(name, obj, kind, ndim, out, rule)
    return obj


def overlapping(like: np.ndarray, shift_frac: float) -> Tuple[np.ndarray, np.ndarray]:
    """Two C-contiguous float32 arrays of ``like``'s shape that partially
    share one buffer (the second starts inside the first)."""
    n = like.size
    shift = min(max(1, int(n * shift_frac)), max(n - 1, 1))
    buf = np.full(n + shift, np.nan, np.float32)
    a = buf[:n].reshape(like.shape)
    a[...] = like
    b = buf[shift:shift + n].reshape(like.shape)
    return a, b


def f64(a: Any) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def assert_close(got: np.ndarray, want: np.ndarray, what: str, rtol: float = 2e-5,
                 atol_rel: float = 2e-6) -> None:
    got, want = f64(got), f64(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    unwritten = np.isnan(got) & ~np.isnan(want)
    assert not unwritten.any(), f"{what}: {int(unwritten.sum())} elements NaN (unwritten?)"
    fin = np.isfinite(want)
    scale = float(np.max(np.abs(want[fin]))) if fin.any() else 0.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol_rel * max(scale, 1e-30),
                               equal_nan=True, err_msg=what)


def assert_written(got: np.ndarray, what: str) -> None:
    got = np.asarray(got)
    assert not (got == SENTINEL).any(), f"{what}: elements left unwritten"


# ---------------------------------------------------------------------------
# SGEMM
# ---------------------------------------------------------------------------

SIZES = st.sampled_from([0, 1, 2, 3, 5, 8, 17, 33])
ALIAS_SIZES = st.sampled_from([1, 2, 3, 5, 8, 17])
# padded-row and strided-row views are valid sgemm operands
SGEMM_OK_LAYOUTS = ("c", "c", "rowpad", "rowstep")


SGEMM_FAULTS = array_faults("a", "b", "c") + [
    "shape:a", "shape:b", "shape:c", "ndim:a", "ndim:c", "alias:c_is_a", "alias:c_is_b",
    "alias:c_in_a", "alias:c_in_b"]


@pytest.mark.parametrize("fault", [None] + SGEMM_FAULTS)
def test_sgemm(fault):
    run(check_sgemm, fault)


def check_sgemm(p: Plan) -> None:
    M, N, K = (p.draw(ALIAS_SIZES if p.alias else SIZES, n) for n in "MNK")
    ta, tb = p.draw(st.booleans(), "trans_a"), p.draw(st.booleans(), "trans_b")
    if p("alias:c_is_a"):  # a of c's shape, so that only the aliasing is wrong
        K, ta = N, False
    if p("alias:c_is_b"):
        K, N, tb = M, M, False
    alpha = p.draw(st.sampled_from([1.0, -0.5, 2.5, 0.0]), "alpha")
    beta = p.draw(st.sampled_from([0.0, 1.0, -2.0]), "beta")
    special = p.draw(st.booleans(), "special")
    seed = p.draw(seeds, "seed")
    c = Call("sgemm")
    shapes = {"a": [K, M] if ta else [M, K], "b": [N, K] if tb else [K, N], "c": [M, N]}
    for nm in "abc":
        if p("shape:" + nm):
            shapes[nm][p.draw(st.integers(0, 1), "axis")] += 1
            c.bad(ValueError, "a", "b", "c")
        if p("ndim:" + nm):
            shapes[nm] = p.draw(st.sampled_from([[M * K], shapes[nm] + [1]]), "ndim")
    a0 = values(seed, shapes["a"], special)
    b0 = values(seed + 1, shapes["b"], special)
    c0 = values(seed + 2, shapes["c"], special) if beta != 0 else \
        np.full(shapes["c"], np.nan, np.float32)  # beta == 0 must never read c
    a = make_array(c, "a", a0, p.layout("a", SGEMM_OK_LAYOUTS), p.dtype("a"), ndim=2,
                   rule=rows_ok)
    b = make_array(c, "b", b0, p.layout("b", SGEMM_OK_LAYOUTS), p.dtype("b"), ndim=2,
                   rule=rows_ok)
    if p.fault in ("alias:c_is_a", "alias:c_is_b"):
        cc = a if p("alias:c_is_a") else b
        c.array("c", cc, ndim=2, out=True, rule=rows_ok)
    elif p.fault in ("alias:c_in_a", "alias:c_in_b"):
        # c is a view into the same buffer as a (or b), at a drawn offset
        which = p.fault[-1]
        src = a0 if which == "a" else b0
        n_c = M * N
        off = p.draw(st.integers(0, max(src.size - 1, 0)), "offset")
        buf = np.full(max(src.size, off + n_c), np.nan, np.float32)
        inp = buf[:src.size].reshape(src.shape)
        inp[...] = src
        cc = buf[off:off + n_c].reshape(shapes["c"])
        if which == "a":
            a = inp
        else:
            b = inp
    else:
        cc = make_array(c, "c", c0, p.layout("c", SGEMM_OK_LAYOUTS), p.dtype("c"), ndim=2,
                        out=True, rule=rows_ok)
    if isinstance(cc, np.ndarray) and cc.shape != (M, N):
        c.bad(ValueError, "a", "b", "c")
    c.disjoint("c", cc, "a", a)
    c.disjoint("c", cc, "b", b)
    c_before = f64(cc) if isinstance(cc, np.ndarray) else None
    ok, _ = c.run(_C.sgemm, a, b, cc, trans_a=ta, trans_b=tb, alpha=alpha, beta=beta)
    if not ok:
        return
    got = f64(cc)
    with np.errstate(invalid="ignore", over="ignore"):  # inf and NaN inputs
        want = ref.gemm(a0, b0, c_before, ta, tb, alpha, beta)
        bound = ref.gemm_error_bound(a0, b0, c_before, ta, tb, alpha, beta)
        check = np.isfinite(bound) & (bound < 1e30)
        err = np.abs(got - want)
    assert np.isfinite(got[check]).all(), "sgemm: non-finite result (c read when beta == 0?)"
    assert (err[check] <= bound[check]).all(), "sgemm: wrong result"
    if alpha != 0:
        # NaN in the float64 reference comes from a NaN input, inf - inf or 0 * inf,
        # which no order of summation avoids
        assert np.isnan(got[np.isnan(want)]).all(), "sgemm: NaN not propagated"


# ---------------------------------------------------------------------------
# activations
# ---------------------------------------------------------------------------

ACTS = ("linear", "relu", "sigmoid", "tanh", "softmax")
ACT_OK = ACTS + (0, 1, 2, 3, 4)
ACT_BAD = ("gelu", "", "RELU", 5, -1, 2**40, 1.0, True, None)


def act_name(c: Call, act: Any) -> Optional[str]:
    """The activation's name, or None after recording why it is invalid."""
    if isinstance(act, str):
        if act in ACTS:
            return act
        c.bad(ValueError, "act")
        return None
    if isinstance(act, bool) or not isinstance(act, int):
        c.bad(TypeError, "act")
        return None
    if not 0 <= act <= 4:
        c.bad(ValueError, "act")
        return None
    return ACTS[act]


def changed_shape(p: Plan, shape: Sequence[int]) -> List[int]:
    """A shape other than ``shape`` (one axis longer, or one more axis)."""
    if p.draw(st.booleans(), "grow axis"):
        new = list(shape)
        new[p.draw(st.integers(0, len(new) - 1), "axis")] += 1
        return new
    return list(shape) + [1]


BIAS_ACT_FAULTS = array_faults("x", "bias", "y") + [
    "act", "shape:bias", "shape:y", "alias:overlap", "alias:reshaped"]


@pytest.mark.parametrize("fault", [None] + BIAS_ACT_FAULTS)
def test_bias_act_fwd(fault):
    run(check_bias_act_fwd, fault)


def check_bias_act_fwd(p: Plan) -> None:
    c = Call("bias_act_fwd")
    act = p.pick("act", ACT_OK, ACT_BAD)
    name = act_name(c, act)
    shape = p.shape()
    seed, special = p.draw(seeds, "seed"), p.draw(st.booleans(), "special")
    cols = shape[-1]
    x0 = values(seed, shape, special, scale=3.0)
    b0 = values(seed + 1, [cols]) if p.draw(st.booleans(), "bias") else None
    if p("shape:bias"):
        b0 = values(seed + 1, p.draw(st.sampled_from([[cols + 1], [1, cols]]), "bias shape"))
        c.bad(ValueError, "bias")
    x = make_array(c, "x", x0, p.layout("x"), p.dtype("x"))
    bias = None if b0 is None else make_array(c, "bias", b0, p.layout("bias"), p.dtype("bias"))
    alias = p.draw(st.sampled_from(["fresh", "same", "view"]), "alias")
    if p("alias:overlap") and x0.size > 1:
        x, y = overlapping(x0, p.draw(st.floats(0.0, 1.0), "shift"))
    elif isinstance(x, np.ndarray) and (p("alias:reshaped") and x0.ndim > 1 or
                                        alias != "fresh" and not p("shape:y")):
        y = x.reshape(-1) if p("alias:reshaped") else x if alias == "same" else x[...]
        c.array("y", y, out=True)
    else:
        y_shape = changed_shape(p, shape) if p("shape:y") else shape
        y = make_array(c, "y", np.full(y_shape, np.nan, np.float32), p.layout("y"),
                       p.dtype("y"), out=True)
    if isinstance(y, np.ndarray) and isinstance(x, np.ndarray) and y.shape != x.shape:
        c.bad(ValueError, "y", "x")
    c.disjoint("y", y, "x", x, same_ok=True)
    c.disjoint("y", y, "bias", bias)
    ok, _ = c.run(_C.bias_act_fwd, act, x, bias, y)
    if not ok:
        return
    z = x0 if b0 is None else (x0 + b0).astype(np.float32)  # the float32 add C does
    with np.errstate(all="ignore"):
        want = ref.activation(name, z) if z.size else f64(z)
    assert_close(y, want, f"bias_act_fwd {name}", rtol=4e-6, atol_rel=1e-6)


def act_bwd_reference(name: str, y: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """dx from the forward output y (the contract of act_bwd)."""
    y, dy = f64(y), f64(dy)
    if name == "linear":
        return dy
    if name == "relu":
        return dy * (y > 0)
    if name == "sigmoid":
        return dy * y * (1 - y)
    if name == "tanh":
        return dy * (1 - y * y)
    return y * (dy - (dy * y).sum(axis=-1, keepdims=True))


ACT_BWD_FAULTS = array_faults("y", "dy", "dx") + [
    "act", "shape:dy", "shape:dx", "alias:dx_is_y", "alias:overlap"]


@pytest.mark.parametrize("fault", [None] + ACT_BWD_FAULTS)
def test_act_bwd(fault):
    run(check_act_bwd, fault)


def check_act_bwd(p: Plan) -> None:
    c = Call("act_bwd")
    act = p.pick("act", ACT_OK, ACT_BAD)
    name = act_name(c, act)
    shape = p.shape()
    seed = p.draw(seeds, "seed")
    rng = np.random.default_rng(seed)
    y0 = rng.uniform(-1, 1, shape).astype(np.float32)
    if name == "softmax" and y0.size:
        y0 = np.abs(y0)
        y0 = (y0 / np.maximum(y0.sum(-1, keepdims=True), 1e-3)).astype(np.float32)
    dy0 = values(seed + 1, changed_shape(p, shape) if p("shape:dy") else shape)
    y = make_array(c, "y", y0, p.layout("y"), p.dtype("y"))
    dy = make_array(c, "dy", dy0, p.layout("dy"), p.dtype("dy"))
    alias = p.draw(st.sampled_from(["fresh", "dy", "dy_view"]), "alias")
    if p("alias:overlap") and dy0.size > 1:
        dy, dx = overlapping(dy0, p.draw(st.floats(0.0, 1.0), "shift"))
    elif p("alias:dx_is_y"):
        dx = y
        c.array("dx", dx, out=True)
    elif alias != "fresh" and isinstance(dy, np.ndarray) and not p("shape:dx"):
        dx = dy if alias == "dy" else dy[...]
        c.array("dx", dx, out=True)
    else:
        dx_shape = changed_shape(p, shape) if p("shape:dx") else shape
        dx = make_array(c, "dx", np.full(dx_shape, np.nan, np.float32), p.layout("dx"),
                        p.dtype("dx"), out=True)
    for nm, arr in (("dy", dy), ("dx", dx)):
        if isinstance(arr, np.ndarray) and isinstance(y, np.ndarray) and arr.shape != y.shape:
            c.bad(ValueError, nm, "y")
    c.disjoint("dx", dx, "y", y)
    c.disjoint("dx", dx, "dy", dy, same_ok=True)
    ok, _ = c.run(_C.act_bwd, act, y, dy, dx)
    if not ok:
        return
    assert_close(dx, act_bwd_reference(name, y0, dy0), f"act_bwd {name}", rtol=2e-5,
                 atol_rel=2e-6)


# ---------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------

LOSS_FNS = {  # name: (prediction argument, target argument, writes probs)
    "softmax_cce_logits": ("logits", "target", True),
    "softmax_sparse_cce_logits": ("logits", "labels", True),
    "cce_probs": ("probs", "target", False),
    "sparse_cce_probs": ("probs", "labels", False),
    "sigmoid_bce_logits": ("logits", "target", True),
    "bce_probs": ("probs", "target", False),
    "mse": ("pred", "target", False),
    "mae": ("pred", "target", False),
}
LABEL_BAD_DTYPES = ("int64", "uint32", "float32", "int8", ">i4", "object", "bool")


def loss_faults(kind: str) -> List[str]:
    pred_name, tgt_name, has_probs = LOSS_FNS[kind]
    out_names = ["probs", "grad"] if has_probs else ["grad"]
    faults = array_faults(pred_name, tgt_name, *out_names) + [
        "empty", "shape:target", "shape:out", "alias:grad_is_pred", "alias:overlap"]
    if has_probs:
        faults.append("alias:grad_is_probs")
    if tgt_name == "labels":
        faults += ["labels:high", "labels:neg", "labels:2d", "alias:labels_in_grad"]
    return faults


@pytest.mark.parametrize("kind,fault", [(k, f) for k in sorted(LOSS_FNS)
                                        for f in [None] + loss_faults(k)])
def test_losses(kind, fault):
    run(lambda p: check_loss(kind, p), fault)


def check_loss(kind: str, p: Plan) -> None:
    pred_name, tgt_name, has_probs = LOSS_FNS[kind]
    sparse = tgt_name == "labels"
    out_names = ["probs", "grad"] if has_probs else ["grad"]
    c = Call(kind)
    rows = p.draw(st.sampled_from([1, 2, 3, 7]), "rows")
    cols = p.draw(st.sampled_from([2, 3, 10] if p.alias else [1, 2, 3, 10]), "cols")
    if p("empty"):
        rows, cols = p.draw(st.sampled_from([(0, cols), (rows, 0), (0, 0)]), "empty shape")
        c.bad(ValueError, pred_name)
    seed, special = p.draw(seeds, "seed"), p.draw(st.booleans(), "special")
    rng = np.random.default_rng(seed)
    if pred_name == "probs":
        x0 = rng.uniform(0, 1, (rows, cols)).astype(np.float32)
        if special and x0.size:
            x0.flat[rng.integers(0, x0.size)] = rng.choice([0.0, 1.0, np.nan, np.inf, 1e-40])
    else:
        x0 = values(seed, (rows, cols), special, scale=3.0)
    x = make_array(c, pred_name, x0, p.layout(pred_name), p.dtype(pred_name), ndim=2)
    if sparse:
        lab0 = rng.integers(0, max(cols, 1), rows).astype(np.int32)
        if cols == 0 and rows:
            c.bad(ValueError, "labels")  # every label is out of range
        if (p("labels:high") or p("labels:neg")) and rows:
            at = rng.integers(0, rows)
            if p("labels:high"):
                lab0[at] = cols + int(rng.integers(0, 3))
            else:
                lab0[at] = -1 - int(rng.integers(0, 2**31 - 1))
            c.bad(ValueError, "labels")
        if p("shape:target"):
            lab0 = np.resize(lab0, rows + p.draw(st.sampled_from([-1, 1]), "d") if rows else 1)
            c.bad(ValueError, "labels", pred_name)
        if p("labels:2d"):
            lab0 = lab0.reshape(-1, 1)
        tgt = make_array(c, "labels", lab0, p.layout("labels"),
                         p.dtype("labels", LABEL_BAD_DTYPES), kind="i32", ndim=1)
        t_ref = lab0
    else:
        tshape = changed_shape(p, (rows, cols)) if p("shape:target") else (rows, cols)
        t0 = rng.uniform(0, 1, tshape).astype(np.float32)
        tgt = make_array(c, "target", t0, p.layout("target"), p.dtype("target"))
        if isinstance(tgt, np.ndarray) and tgt.shape != (rows, cols):
            c.bad(ValueError, "target", pred_name)
        t_ref = t0
    poison = SENTINEL if special else np.nan
    outs: Dict[str, Any] = {}
    for nm in out_names:
        oshape = changed_shape(p, (rows, cols)) if p("shape:out") and nm == "grad" else \
            (rows, cols)
        outs[nm] = make_array(c, nm, np.full(oshape, poison, np.float32), p.layout(nm),
                              p.dtype(nm), out=True)
    if p("alias:grad_is_probs"):
        outs["grad"] = outs["probs"]
    elif p("alias:grad_is_pred") and isinstance(x, np.ndarray):
        outs["grad"] = x
        c.array("grad", x, out=True)
    elif p("alias:labels_in_grad") and rows:
        g = np.full((rows, max(cols, 1)), poison, np.float32)[:, :cols]
        outs["grad"] = g
        tgt = g.base.reshape(-1).view(np.int32)[:rows]
        tgt[...] = t_ref = rng.integers(0, max(cols, 1), rows)
        c.array("grad", g, out=True)
    elif p("alias:overlap") and x0.size > 1:
        x, outs["grad"] = overlapping(x0, p.draw(st.floats(0.0, 1.0), "shift"))
    for nm, arr in outs.items():
        if isinstance(arr, np.ndarray) and isinstance(x, np.ndarray) and arr.shape != x.shape:
            c.bad(ValueError, nm, pred_name)
        c.disjoint(nm, arr, pred_name, x)
        c.disjoint(nm, arr, tgt_name, tgt)
    if has_probs:
        c.disjoint("grad", outs["grad"], "probs", outs["probs"])
    ok, loss = c.run(getattr(_C, kind), x, tgt, *(outs[n] for n in out_names))
    if not ok:
        return
    assert isinstance(loss, float)
    if special:
        for nm in out_names:
            assert_written(outs[nm], f"{kind} {nm}")
        return
    with np.errstate(all="ignore"):
        want_loss, want_grad = ref.LOSSES[kind](x0, t_ref)
    np.testing.assert_allclose(loss, want_loss, rtol=2e-5, atol=1e-6, err_msg=f"{kind} loss")
    assert_close(outs["grad"], want_grad, f"{kind} grad", rtol=1e-4, atol_rel=1e-5)
    if has_probs:
        assert_close(outs["probs"], ref.loss_probs(kind, x0), f"{kind} probs", rtol=1e-5,
                     atol_rel=1e-6)


# ---------------------------------------------------------------------------
# gather_rows
# ---------------------------------------------------------------------------

IDX_BAD_DTYPES = ("int32", "uint64", "float64", ">i8", "object", "int8")


GATHER_FAULTS = array_faults("src", "idx", "dst") + [
    "idx:high", "idx:neg", "shape:dst", "ndim:src", "ndim:idx", "alias:dst_is_src",
    "alias:overlap", "alias:idx_in_dst"]


@pytest.mark.parametrize("which,fault", [(w, f) for w in ("f32", "i32")
                                         for f in [None] + GATHER_FAULTS])
def test_gather_rows(which, fault):
    run(lambda p: check_gather_rows(which, p), fault)


def check_gather_rows(which: str, p: Plan) -> None:
    fn = f"gather_rows_{which}"
    c = Call(fn)
    n_src = p.draw(st.integers(0, 6), "n_src")
    row_len = p.draw(st.integers(0, 4), "row_len")
    n_idx = p.draw(st.integers(0, 8), "n_idx")
    if p.alias:  # dst of src's shape, non-empty: only the aliasing is wrong
        n_src, row_len = max(n_src, 1), max(row_len, 2)
        n_idx = n_src
    seed = p.draw(seeds, "seed")
    rng = np.random.default_rng(seed)
    if which == "f32":
        src0 = values(seed, (n_src, row_len))
        poison: Any = np.float32(np.nan)
        src_bad = BAD_DTYPES
    else:
        src0 = rng.integers(-2**31, 2**31 - 1, (n_src, row_len)).astype(np.int32)
        poison = np.int32(-123456789)
        src_bad = tuple(d for d in BAD_DTYPES if d != "int32") + ("float32", "uint32")
    idx0 = rng.integers(0, n_src, n_idx) if n_src else np.zeros(0, np.int64)
    if n_src == 0 and n_idx:
        idx0 = rng.integers(-1, 2, n_idx)  # nothing is in range
        c.bad(ValueError, "idx")
    if (p("idx:high") or p("idx:neg")) and n_idx:
        idx0[rng.integers(0, n_idx)] = n_src + int(rng.integers(0, 2**40)) if \
            p("idx:high") else -1 - int(rng.integers(0, 2**62))
        c.bad(ValueError, "idx")
    if p("ndim:src"):
        src0 = src0.reshape(-1)
    src = make_array(c, "src", src0, p.layout("src"), p.dtype("src", src_bad), kind=which,
                     ndim=2)
    idx = make_array(c, "idx", idx0.reshape(-1, 1) if p("ndim:idx") else idx0.astype(np.int64),
                     p.layout("idx"), p.dtype("idx", IDX_BAD_DTYPES), kind="i64", ndim=1)
    dst_shape = changed_shape(p, (n_idx, row_len)) if p("shape:dst") else (n_idx, row_len)
    dst = make_array(c, "dst", np.full(dst_shape, poison), p.layout("dst"), None, kind=which,
                     ndim=2, out=True)
    if p("alias:dst_is_src") and isinstance(src, np.ndarray):
        dst = src
        c.array("dst", dst, kind=which, ndim=2, out=True)
    elif p("alias:overlap") and src0.size > 1 and which == "f32" and src0.ndim == 2:
        src, dst = overlapping(src0, p.draw(st.floats(0.0, 1.0), "shift"))
    elif p("alias:idx_in_dst") and which == "f32":
        dst = np.full((n_idx, row_len), np.nan, np.float32)  # row_len >= 2: room for idx
        idx = dst.reshape(-1)[:2 * n_idx].view(np.int64)
        idx[...] = idx0
    if isinstance(dst, np.ndarray) and dst.ndim == 2 and dst.shape != (n_idx, row_len):
        c.bad(ValueError, "dst")
    c.disjoint("dst", dst, "src", src)
    c.disjoint("dst", dst, "idx", idx)
    ok, _ = c.run(getattr(_C, fn), src, idx, dst)
    if not ok:
        return
    want = src0[idx0.astype(np.int64)] if n_idx else np.zeros((0, row_len), src0.dtype)
    np.testing.assert_array_equal(dst, want)


# ---------------------------------------------------------------------------
# optimiser steps
# ---------------------------------------------------------------------------

OPT_STATES = {"sgd": ("velocity",), "adam": ("m", "v"), "rmsprop": ("vel", "mom", "avg")}


def optimizer_faults(opt: str) -> List[str]:
    return array_faults("p", "g", *OPT_STATES[opt]) + [
        "shape:g", "shape:state", "alias:g_is_p", "alias:state_is_p", "alias:state_is_g",
        "alias:state_overlaps_p"] + {
        "sgd": ["momentum", "missing:velocity"], "adam": ["step", "alias:m_is_v"],
        "rmsprop": ["momentum", "missing:mom", "alias:mom_is_vel"]}[opt]


@pytest.mark.parametrize("opt,fault", [(o, f) for o in sorted(OPT_STATES)
                                       for f in [None] + optimizer_faults(o)])
def test_optimizer_steps(opt, fault):
    run(lambda p: check_optimizer_step(opt, p), fault)


def check_optimizer_step(opt: str, p: Plan) -> None:
    fn = f"{opt}_step"
    names = OPT_STATES[opt]
    c = Call(fn)
    shape = p.shape(2, (0, 1, 2, 5, 17))
    seed, special = p.draw(seeds, "seed"), p.draw(st.booleans(), "special")
    lr = p.draw(st.sampled_from([0.01, 0.1]), "lr")
    kw: Dict[str, Any] = {"weight_decay": p.draw(st.sampled_from([0.0, 0.01]), "wd"),
                          "grad_scale": p.draw(st.sampled_from([1.0, 0.5]), "gs"),
                          "clip_value": p.draw(st.sampled_from([0.0, 0.5]), "clip")}
    p0 = values(seed, shape, special)
    g0 = values(seed + 1, changed_shape(p, shape) if p("shape:g") else shape, special)
    if p("shape:g"):
        c.bad(ValueError, "g", "p")
    par = make_array(c, "p", p0, p.layout("p"), p.dtype("p"), out=True)
    g = make_array(c, "g", g0, p.layout("g"), p.dtype("g"))
    if p("alias:g_is_p"):
        g = par
        c.array("g", g)
    momentum = 0.0
    if opt != "adam":
        momentum = p.pick("momentum", [0.0, 0.9], [-0.1, -1.0])
        if momentum < 0:
            c.bad(ValueError, "momentum")
    states: Dict[str, Any] = {}
    st_ref: Dict[str, np.ndarray] = {}
    for i, nm in enumerate(names):
        if nm in ("velocity", "mom", "avg"):
            if p("missing:" + nm):
                momentum = 0.9
                states[nm] = None
                c.bad(ValueError, nm)
                continue
            if not p.draw(st.booleans(), "has " + nm):
                if momentum > 0 and nm != "avg":
                    momentum = 0.0
                states[nm] = None
                continue
        s0 = values(seed + 7 + i, shape)
        if nm in ("v", "vel"):  # second moments: positive, above avg**2 (centred RMSprop)
            s0 = np.abs(s0) + np.float32(0.5)
        elif nm == "avg":
            s0 = s0 * np.float32(0.1)
        sshape = changed_shape(p, shape) if p("shape:state") and i == 0 else shape
        if sshape != shape:
            s0 = np.resize(s0, sshape)
        states[nm] = make_array(c, nm, s0, p.layout(nm), p.dtype(nm), out=True)
        st_ref[nm] = f64(s0)
    present = [nm for nm in names if states[nm] is not None]
    if present:
        first = present[0]
        if p("alias:state_is_p"):
            states[first] = par
        elif p("alias:state_is_g"):
            states[first] = g
        elif p("alias:state_overlaps_p") and p0.size > 1:
            par, states[first] = overlapping(p0, p.draw(st.floats(0.0, 1.0), "shift"))
        elif p("alias:m_is_v"):
            states["m"] = states["v"]
        elif p("alias:mom_is_vel") and states["mom"] is not None:
            states["mom"] = states["vel"]
        if p.fault and p.fault.startswith("alias:"):
            for nm in present:
                c.array(nm, states[nm], out=True)
    for nm in present:
        arr = states[nm]
        if isinstance(arr, np.ndarray) and isinstance(par, np.ndarray) and \
                arr.shape != par.shape:
            c.bad(ValueError, nm, "p")
        c.disjoint(nm, arr, "p", par)
        c.disjoint(nm, arr, "g", g)
    c.disjoint("p", par, "g", g)
    for i, a in enumerate(present):
        for b in present[i + 1:]:
            c.disjoint(a, states[a], b, states[b])
    if opt == "sgd":
        nesterov = p.draw(st.booleans(), "nesterov")
        ok, _ = c.run(_C.sgd_step, par, g, states["velocity"], lr, momentum=momentum,
                      nesterov=nesterov, **kw)
    elif opt == "adam":
        step = p.pick("step", [1, 3, 1000], [0, -1, -2**40])
        if step < 1:
            c.bad(ValueError, "step")
        ok, _ = c.run(_C.adam_step, par, g, states["m"], states["v"], lr, step=step, **kw)
    else:
        ok, _ = c.run(_C.rmsprop_step, par, g, states["vel"], states["mom"], states["avg"], lr,
                      momentum=momentum, **kw)
    if not ok or special:
        return  # with NaN/inf in p or g, no crash and no clean-call refusal is the property
    if opt == "sgd":
        want = ref.sgd_step(p0, g0, st_ref, lr=lr, momentum=momentum, nesterov=nesterov, **kw)
    elif opt == "adam":
        want = ref.adam_step(p0, g0, st_ref, lr=lr, step=step, **kw)
    else:
        if momentum == 0:
            st_ref.pop("mom", None)  # not touched without momentum
        want = ref.rmsprop_step(p0, g0, st_ref, lr=lr, momentum=momentum,
                                centered=states["avg"] is not None, **kw)
    assert_close(par, want, f"{fn} p", rtol=2e-5, atol_rel=2e-6)
    for nm, s in st_ref.items():
        assert_close(states[nm], s, f"{fn} {nm}", rtol=2e-5, atol_rel=2e-6)


# ---------------------------------------------------------------------------
# elementwise: add / mul / vexpf / sumsq / scale
# ---------------------------------------------------------------------------

ADD_MUL_FAULTS = array_faults("a", "b", "out") + ["shape:b", "shape:out", "alias:overlap_a",
                                                   "alias:overlap_b"]


@pytest.mark.parametrize("op,fault", [(o, f) for o in ("add", "mul")
                                      for f in [None] + ADD_MUL_FAULTS])
def test_add_mul(op, fault):
    run(lambda p: check_add_mul(op, p), fault)


def check_add_mul(op: str, p: Plan) -> None:
    c = Call(op)
    shape = p.shape()
    seed, special = p.draw(seeds, "seed"), p.draw(st.booleans(), "special")
    a0 = values(seed, shape, special)
    b0 = values(seed + 1, changed_shape(p, shape) if p("shape:b") else shape, special)
    a = make_array(c, "a", a0, p.layout("a"), p.dtype("a"))
    b = make_array(c, "b", b0, p.layout("b"), p.dtype("b"))
    alias = p.draw(st.sampled_from(["fresh", "a", "b", "a_view"]), "alias")
    if p("alias:overlap_a") and a0.size > 1:
        a, out = overlapping(a0, p.draw(st.floats(0.0, 1.0), "shift"))
    elif p("alias:overlap_b") and b0.size > 1:
        b, out = overlapping(b0, p.draw(st.floats(0.0, 1.0), "shift"))
    elif alias != "fresh" and not p("shape:out"):
        out = {"a": a, "b": b, "a_view": a[...] if isinstance(a, np.ndarray) else a}[alias]
        c.array("out", out, out=True)
    else:
        oshape = changed_shape(p, shape) if p("shape:out") else shape
        out = make_array(c, "out", np.full(oshape, np.nan, np.float32), p.layout("out"),
                         p.dtype("out"), out=True)
    for nm, arr in (("b", b), ("out", out)):
        if isinstance(arr, np.ndarray) and isinstance(a, np.ndarray) and arr.shape != a.shape:
            c.bad(ValueError, nm, "a")
    c.disjoint("out", out, "a", a, same_ok=True)
    c.disjoint("out", out, "b", b, same_ok=True)
    ok, _ = c.run(getattr(_C, op), a, b, out)
    if not ok:
        return
    with np.errstate(all="ignore"):
        want = a0 + b0 if op == "add" else a0 * b0  # float32, as C computes it
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("fault", [None] + array_faults("x", "y") + ["shape:y", "alias:overlap"])
def test_vexpf(fault):
    run(check_vexpf, fault)


def check_vexpf(p: Plan) -> None:
    c = Call("vexpf")
    shape = p.shape()
    x0 = values(p.draw(seeds, "seed"), shape, p.draw(st.booleans(), "special"), scale=40.0)
    x = make_array(c, "x", x0, p.layout("x"), p.dtype("x"))
    if p("alias:overlap") and x0.size > 1:
        x, y = overlapping(x0, p.draw(st.floats(0.0, 1.0), "shift"))
    elif p.draw(st.booleans(), "in place") and not p("shape:y"):
        y = x
        c.array("y", y, out=True)
    else:
        y = make_array(c, "y", np.full(changed_shape(p, shape) if p("shape:y") else shape,
                                       np.nan, np.float32), p.layout("y"), p.dtype("y"),
                       out=True)
    if isinstance(y, np.ndarray) and isinstance(x, np.ndarray) and y.shape != x.shape:
        c.bad(ValueError, "y", "x")
    c.disjoint("y", y, "x", x, same_ok=True)
    ok, _ = c.run(_C.vexpf, x, y)
    if not ok:
        return
    with np.errstate(over="ignore"):
        want = np.exp(f64(x0))
    got = f64(y)
    fin = np.isfinite(want) & (want < 3.0e38)
    np.testing.assert_allclose(got[fin], want[fin], rtol=4e-7, atol=1e-44)
    assert np.isnan(got[np.isnan(want)]).all()
    assert (got[want > 3.0e38] >= 3.0e38).all()  # saturates near FLT_MAX or gives inf


@pytest.mark.parametrize("fault", [None] + array_faults("x"))
def test_sumsq_scale(fault):
    run(check_sumsq_scale, fault)


def check_sumsq_scale(p: Plan) -> None:
    shape = p.shape()
    x0 = values(p.draw(seeds, "seed"), shape, p.draw(st.booleans(), "special"), scale=3.0)
    layout, dtype = p.layout("x"), p.dtype("x")
    c = Call("sumsq")
    ok, s = c.run(_C.sumsq, make_array(c, "x", x0, layout, dtype))
    if ok:
        with np.errstate(over="ignore", invalid="ignore"):
            want = float(np.sum(f64(x0) ** 2))
        if np.isfinite(want):
            np.testing.assert_allclose(s, want, rtol=1e-12)
        else:
            assert np.isnan(s) if np.isnan(want) else s == want
    c = Call("scale")
    x = make_array(c, "x", x0, layout, dtype, out=True)
    ok, _ = c.run(_C.scale, x, -0.5)
    if ok:
        np.testing.assert_array_equal(x, x0 * np.float32(-0.5))


# ---------------------------------------------------------------------------
# convolution and pooling geometry
# ---------------------------------------------------------------------------

HUGE = (2**31, 2**40, 2**62, 2**63 - 1, 2**63, 2**70)
PAIRS_OK = [(1, 1), (2, 1), (1, 3), (2, 2)]
PAIRS_BAD = [(0, 1), (1, -2), (1,), (1, 2, 3), "ab", None, (1.5, 1), (2**31, 1), (1, 2**62),
             (2**63, 1), (2**80, 2**80)]
MAX_STEP = 2**31 - 1


def pair_ok(v: Any) -> bool:
    try:
        a, b = v
    except (TypeError, ValueError):
        return False
    return all(isinstance(t, int) and 1 <= t <= MAX_STEP for t in (a, b))


def conv_geometry(c: Call, x_shape, w_shape, strides, padding, dilation) -> Optional[Tuple]:
    """(Ho, Wo) of a conv call, or None after recording why the geometry is bad."""
    bad = False
    for nm, v in (("strides", strides), ("dilation", dilation)):
        if not pair_ok(v):
            c.bad(ValueError, nm)
            bad = True
    if len(padding) != 4 or min(padding) < 0:
        c.bad(ValueError, "padding")
        bad = True
    if bad:
        return None
    B, H, W, C = x_shape
    kh, kw, Cw, F = w_shape
    if Cw != C:
        c.bad(ValueError, "w", "x")
        return None
    pt, pb, pl, pr = padding
    ho = H + pt + pb - dilation[0] * (kh - 1) - 1
    wo = W + pl + pr - dilation[1] * (kw - 1) - 1
    if ho < 0 or wo < 0:
        c.bad(ValueError, "w", "x", "padding", "dilation")
        return None
    if (H + pt + pb) * (W + pl + pr) * C >= 2**40:
        c.bad(ValueError, "padding", "x")
        return None
    return ho // strides[0] + 1, wo // strides[1] + 1


CONV_FAULTS = array_faults("x", "w", "b") + [
    "channels", "strides", "dilation", "padding", "padding:huge", "nofit", "act",
    "shape:b", "shape:out", "alias:out_in_x", "work:small", "work:dtype", "nthreads"]


@pytest.mark.parametrize("fault", [None] + CONV_FAULTS)
def test_conv2d_fwd(fault):
    run(check_conv2d_fwd, fault)


def check_conv2d_fwd(p: Plan) -> None:
    c = Call("conv2d_fwd")
    B, H, W, C = (p.draw(st.integers(1, n), nm) for n, nm in
                  ((2, "B"), (6, "H"), (6, "W"), (3, "C")))
    kh, kw, F = (p.draw(st.integers(1, 3), nm) for nm in ("kh", "kw", "F"))
    seed = p.draw(seeds, "seed")
    strides = p.pick("strides", PAIRS_OK, PAIRS_BAD)
    dilation = p.pick("dilation", PAIRS_OK[:2], PAIRS_BAD)
    padding = tuple(p.draw(st.integers(0, 2), "pad") for _ in range(4))
    if p("padding"):
        padding = p.draw(st.sampled_from([(-1, 0, 0, 0), (0, 0, 0, -3)]), "bad padding")
    if p("padding:huge"):
        padding = tuple(p.draw(st.sampled_from((0,) + HUGE), "huge pad") for _ in range(4))
        if max(padding) < 2**40:  # not huge after all
            padding = (2**62, 2**62, 0, 0)
    if p("nofit"):  # a dilated kernel larger than the padded image
        kh, dilation, padding = H + 1, (1, 1), (0, 0, padding[2], padding[3])
    act = p.pick("act", ACTS, ["gelu", None, 3, ""])
    if act not in ACTS:
        c.bad(ValueError, "act")
    nthreads = p.pick("nthreads", [1, 2], [0, -1, 2**40, "2", None, 1.0])
    if not isinstance(nthreads, int):
        c.bad(TypeError, "nthreads")
    elif not 1 <= nthreads <= MAX_STEP:
        c.bad(ValueError, "nthreads")
    x0 = values(seed, (B, H, W, C))
    w0 = values(seed + 1, (kh, kw, C + p("channels"), F), scale=0.5)
    b0 = values(seed + 2, (F + p("shape:b"),)) if p.draw(st.booleans(), "bias") or \
        p("shape:b") or p("dtype:b") or p("layout:b") else None
    if p("shape:b"):
        c.bad(ValueError, "b")
    x = make_array(c, "x", x0, p.layout("x"), p.dtype("x"), ndim=4)
    w = make_array(c, "w", w0, p.layout("w"), p.dtype("w"), ndim=4)
    b = None if b0 is None else make_array(c, "b", b0, p.layout("b"), p.dtype("b"), ndim=1)
    geo = conv_geometry(c, x0.shape, w0.shape, strides, padding, dilation)
    ho, wo = geo if geo else (1, 1)
    out_shape = (B, ho, wo, F + p("shape:out"))
    if p("shape:out"):
        c.bad(ValueError, "out")
    if geo and p("alias:out_in_x"):
        n_out = int(np.prod(out_shape))
        buf = np.full(x0.size + n_out, np.nan, np.float32)
        x = buf[:x0.size].reshape(x0.shape)
        x[...] = x0
        off = p.draw(st.integers(0, x0.size - 1), "offset")
        out = buf[off:off + n_out].reshape(out_shape)
        c.bad(ValueError, "out", "x")
    else:
        out = np.full(out_shape, np.nan, np.float32)
    need = 1
    if geo:
        need = _conv.conv2d_workspace_bytes(x0.shape, (kh, kw, C, F), strides, padding,
                                            dilation, 1)
        assert 0 < need < 2**26, need
    if p("work:small"):
        c.bad(ValueError, "work")
        need = p.draw(st.integers(0, need - 1), "work bytes") if need > 0 else need
    work = np.zeros(need, np.int8 if p("work:dtype") else np.uint8)
    if p("work:dtype"):
        c.bad(TypeError, "work")
    ok, _ = c.run(_conv.conv2d_fwd, x, w, b, out, strides, padding, dilation, act, work,
                  nthreads)
    if not ok:
        return
    want = refc.conv2d_fwd(x0, w0, b0, strides, padding, dilation, act)
    assert_close(out, want, "conv2d_fwd", rtol=3e-5, atol_rel=3e-6)


@pytest.mark.parametrize("fault", [None, "pool", "strides", "padding", "padding:window",
                                   "padding:huge", "nofit"])
def test_pool_geometry(fault):
    """Window, stride and padding reach C only when they are sane; a valid
    call gives the reference's window means."""
    run(check_pool_geometry, fault)


def check_pool_geometry(p: Plan) -> None:
    c = Call("avgpool2d_fwd")
    H, W = p.draw(st.integers(1, 5), "H"), p.draw(st.integers(1, 5), "W")
    x0 = values(p.draw(seeds, "seed"), (1, H, W, 2))
    pool = p.pick("pool", [(1, 1), (2, 1), (2, 2), (1, 3)], PAIRS_BAD)
    strides = p.pick("strides", PAIRS_OK, PAIRS_BAD)
    padding = (0, 0, 0, 0)
    if pair_ok(pool):
        padding = tuple(p.draw(st.integers(0, k - 1), "pad") for k in
                        (pool[0], pool[0], pool[1], pool[1]))
    if p("padding"):
        padding = (0, -1, 0, 0)
    if p("padding:window") and pair_ok(pool):
        padding = (pool[0], 0, 0, 0)
    if p("padding:huge"):
        padding = (2**63 - 1, 2**63 - 1, 2**70, 0)
    if p("nofit") and pair_ok(pool):
        pool, padding = (H + 1, 1), (0, 0, 0, 0)
    for nm, v in (("pool", pool), ("strides", strides)):
        if not pair_ok(v):
            c.bad(ValueError, nm)
    if min(padding) < 0:
        c.bad(ValueError, "padding")
    geo = None
    if not c.problems:
        pt, pb, pl, pr = padding
        if pt >= pool[0] or pb >= pool[0] or pl >= pool[1] or pr >= pool[1]:
            c.bad(ValueError, "padding")
        else:
            ho, wo = H + pt + pb - pool[0], W + pl + pr - pool[1]
            if ho < 0 or wo < 0:
                c.bad(ValueError, "pool", "x", "padding")
            else:
                geo = (ho // strides[0] + 1, wo // strides[1] + 1)
    out = np.full((1,) + (geo or (1, 1)) + (2,), np.nan, np.float32)
    ok, _ = c.run(_conv.avgpool2d_fwd, x0, out, pool, strides, padding, 1)
    if ok:
        assert_close(out, refc.avgpool2d_fwd(x0, pool, strides, padding), "avgpool2d_fwd")


def test_conv_geometry_overflow_is_refused():
    """Paddings whose sums overflow int64 once wrapped the workspace size to a
    small number, and the kernel wrote far outside it (a segfault); they,
    and dilations or strides too large for any image, are refused."""
    x = np.ones((1, 3, 3, 1), np.float32)
    w = np.ones((1, 1, 1, 1), np.float32)
    out = np.full((1, 1, 3, 1), np.nan, np.float32)
    work = np.zeros(1 << 16, np.uint8)
    for pads in ((2**63 - 1, 2**63 - 1, 0, 0), (2**62, 2**62, 0, 0), (2**40, 2**40, 2**40, 0),
                 (2**70, 0, 0, 0)):
        with pytest.raises(ValueError, match="padding"):
            _conv.conv2d_fwd(x, w, None, out, (1, 1), pads, (1, 1), "linear", work, 1)
        with pytest.raises(ValueError, match="padding"):
            _conv.conv2d_workspace_bytes(x.shape, w.shape, (1, 1), pads, (1, 1), 1)
    with pytest.raises(ValueError, match="dilation"):
        _conv.conv2d_output_shape((1, 3, 3, 1), (3, 1, 1, 1), (1, 1), (0, 0, 0, 0),
                                  (2**62, 1))
    with pytest.raises(ValueError, match="strides"):
        _conv.conv2d_output_shape((1, 3, 3, 1), (1, 1, 1, 1), (2**63, 1), (0, 0, 0, 0),
                                  (1, 1))
    with pytest.raises(ValueError, match="nthreads"):
        _conv.conv2d_workspace_bytes(x.shape, w.shape, (1, 1), (0, 0, 0, 0), (1, 1), 2**40)
    one = _conv.conv2d_workspace_bytes(x.shape, w.shape, (1, 1), (1, 1, 1, 1), (1, 1), 1)
    four = _conv.conv2d_workspace_bytes(x.shape, w.shape, (1, 1), (1, 1, 1, 1), (1, 1), 4)
    assert 0 < one < four < 4 * one + 1024


# ---------------------------------------------------------------------------
# Model.fit / predict / evaluate
# ---------------------------------------------------------------------------

_MODELS: Dict[str, Any] = {}


def mlp(loss: str):
    """A small compiled MLP (built once per loss and reused)."""
    if loss not in _MODELS:
        import fastnn
        from fastnn.layers import Dense
        fastnn.utils.set_random_seed(3)
        m = fastnn.Sequential([Dense(5, activation="relu", input_shape=(4,)),
                               Dense(3, activation="softmax")])
        m.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
        _MODELS[loss] = m
    return _MODELS[loss]


def mlp_forward(model, x: np.ndarray) -> np.ndarray:
    w1, b1, w2, b2 = (f64(w) for w in model.get_weights())
    return ref.softmax(np.maximum(f64(x) @ w1 + b1, 0.0) @ w2 + b2)


X_FAULTS = ["x:features", "x:1d", "x:3d", "x:empty", "x:nan", "x:inf", "x:big64",
            "x:dtype", "x:ragged", "x:scalar"]
Y_FAULTS = ["y:short", "y:range", "y:neg", "y:frac", "y:nan", "y:object", "y:shape",
            "y:complex", "y:timedelta"]


def model_x(p: Plan, c: Call, n: int, seed: int) -> Tuple[Any, Optional[np.ndarray]]:
    """A drawn x (valid in any numeric dtype and layout, unless the fault is
    an x fault) and its float64 value (None when x is invalid)."""
    x0 = values(seed, (n, 4))
    dtype = p.draw(st.sampled_from(["float32", "float64", "int8", "int64", "bool",
                                    "float16"]), "x dtype")
    if dtype.startswith(("int", "bool")):
        x0 = np.round(x0 * 3).astype(np.float32)
    layout = p.draw(st.sampled_from(["c", "f", "step", "neg", "rowpad", "ro", "list", "swap",
                                     "unaligned"]), "x layout")
    x = place(as_dtype(x0, None if dtype == "float32" else dtype), layout)
    x_val: Optional[np.ndarray] = f64(np.array(x))
    fault = p.fault or ""
    if not fault.startswith("x:"):
        return x, x_val
    kind = fault[2:]
    c.bad(TypeError if kind in ("dtype", "ragged") else ValueError, "x")
    if kind == "ragged":
        c.bad(ValueError, "x")
        return [[1.0, 2.0, 3.0, 4.0], [1.0, 2.0]] * max(1, n // 2), None
    if kind == "dtype":
        return p.draw(st.sampled_from([
            np.full((n, 4), "a", dtype=object), x0.astype(np.complex64), x0.astype("U8"),
            np.zeros((n, 4), "datetime64[s]"), np.zeros((n, 4), "timedelta64[s]")]),
            "bad dtype"), None
    if kind in ("nan", "inf", "big64"):
        x = np.array(x0, np.float64)
        # 1e300 is finite in float64 but infinite as float32
        x[n // 2, p.draw(st.integers(0, 3), "col")] = {"nan": np.nan, "inf": -np.inf,
                                                        "big64": 1e300}[kind]
        return x, None
    return {"features": values(seed, (n, 5)), "1d": values(seed, (n,)),
            "3d": values(seed, (n, 4, 1)), "empty": np.zeros((0, 4), np.float32),
            "scalar": 3.0}[kind], None


def model_y(p: Plan, c: Call, n: int, seed: int, sparse: bool) -> Any:
    labels = np.random.default_rng(seed).integers(0, 3, n)
    y: Any = labels if sparse else np.eye(3, dtype=np.float32)[labels]
    if sparse and p.draw(st.booleans(), "column labels"):
        y = labels.reshape(n, 1)  # Keras accepts (n, 1) labels too
    fault = p.fault or ""
    if not fault.startswith("y:"):
        return y
    kind = fault[2:]
    if kind == "short":
        c.bad(ValueError, "y")
        return y[:-1] if n > 1 else y[:0]
    if kind == "nan":
        y = np.array(y, np.float64)
        y.flat[0] = np.nan
        c.bad(ValueError, "y")
    elif kind in ("object", "complex", "timedelta"):
        y = {"object": np.array([object()] * n, dtype=object),
             "complex": np.asarray(y) + 1j,  # the imaginary part must not vanish silently
             "timedelta": np.asarray(y).astype("timedelta64[s]")}[kind]
        c.bad(TypeError, "y")
    elif kind == "shape" and not sparse:
        y = np.ones((n, 4), np.float32)
        c.bad(ValueError, "y")
    elif sparse and kind in ("range", "neg", "frac"):
        y = labels.copy() if kind != "frac" else labels + 0.5
        if kind != "frac":
            y[p.draw(st.integers(0, n - 1), "at")] = 3 if kind == "range" else -1
        c.bad(ValueError, "y")
    return y


def model_run(c: Call, f: Callable, *args: Any, **kwargs: Any) -> Tuple[bool, Any]:
    """As Call.run, matching argument names as words (the model API says
    "x contains NaN", not "'x' ...")."""
    CALLS[c.fn, "invalid" if c.problems else "valid"] += 1
    if not c.problems:
        return True, f(*args, **kwargs)
    try:
        f(*args, **kwargs)
    except (TypeError, ValueError) as exc:
        msg = str(exc)
        names = sorted({nm for pr in c.problems for nm in pr[1]})
        assert isinstance(exc, tuple({pr[0] for pr in c.problems})), (
            f"{c.fn}: {type(exc).__name__}: {msg}; expected {c.problems}")
        assert re.search(r"\b(" + "|".join(map(re.escape, names)) + r")\b", msg), (
            f"{c.fn}: message names none of {names}: {msg}")
        return False, None
    raise AssertionError(f"{c.fn}: accepted a call with problems {c.problems}")


@pytest.mark.parametrize("fault", [None] + X_FAULTS + Y_FAULTS + [
    "batch_size", "epochs", "validation_split"])
def test_model_fit_predict(fault):
    run(check_model_fit_predict, fault, clean=100, faulty=15)


def check_model_fit_predict(p: Plan) -> None:
    sparse = p.draw(st.booleans(), "sparse")
    model = mlp("sparse_categorical_crossentropy" if sparse else "categorical_crossentropy")
    n = p.draw(st.integers(1, 9), "n")
    seed = p.draw(seeds, "seed")
    bs = p.pick("batch_size", [None, 1, 3, 64], [0, -2, 2.5, True, "8", np.float32(4)])
    epochs = p.pick("epochs", [1, 2, 0], [-1, 1.5, True, "1"])
    vsplit = p.pick("validation_split", [0.0, 0.0, 0.5], [1.0, -0.1, 2.0])

    c = Call("predict")
    x, x_val = model_x(p, c, n, seed)
    if p("batch_size"):
        c.bad(ValueError, "batch_size")
    with np.errstate(over="ignore"):
        ok, out = model_run(c, model.predict, x, batch_size=bs, verbose=0)
    if ok:
        assert out.shape == (n, 3) and out.dtype == np.float32
        assert_close(out, mlp_forward(model, x_val), "predict", rtol=2e-5, atol_rel=2e-6)

    c = Call("fit")
    x, x_val = model_x(p, c, n, seed + 1)
    y = model_y(p, c, n, seed + 2, sparse)
    for nm in ("batch_size", "epochs", "validation_split"):
        if p(nm):
            c.bad(ValueError, nm)
    if vsplit > 0 and int(n * (1 - vsplit)) in (0, n):
        c.bad(ValueError, "validation_split")  # nothing left to train on (or to validate)
    before = [w.copy() for w in model.get_weights()]
    with np.errstate(over="ignore"):  # x:big64 overflows in the cast before it is refused
        ok, hist = model_run(c, model.fit, x, y, batch_size=bs, epochs=epochs,
                             validation_split=vsplit, verbose=0)
    if not ok:
        for w0, w1 in zip(before, model.get_weights()):
            np.testing.assert_array_equal(w0, w1, err_msg="a refused fit changed the weights")
        return
    losses = hist.history.get("loss", [])
    assert len(losses) == epochs and np.isfinite(losses).all()
    if vsplit and epochs:
        assert np.isfinite(hist.history["val_loss"]).all()
    assert np.isfinite(model.evaluate(x, y, batch_size=bs, verbose=0)).all()
    assert_close(model.predict(x_val, verbose=0), mlp_forward(model, x_val),
                 "predict after fit")
