# cython: language_level=3, boundscheck=False, wraparound=False
"""Typed wrappers over the C kernels of ext/fastnn.h.

One function per kernel, named as the kernel without its ``fnn_`` prefix.
Each wrapper is the kernels' only guard: it checks every argument (type,
dtype, ndim, shapes, C-contiguity, writeable outputs, no output overlapping an
input unless the contract allows exact aliasing, label and index ranges),
then releases the GIL and calls C, which trusts its inputs.

Bad calls raise ``TypeError`` (not an ndarray, wrong dtype) or ``ValueError``
(shape, contiguity, read-only output, overlap, out-of-range values), each
message naming the function and the argument.

Arrays are NumPy arrays: float32 data, int32 labels, int64 indices. Outputs
are written in full; nothing is allocated here.
"""
import os

cimport numpy as cnp
from libc.stdint cimport int32_t, int64_t

from fastnn._checks cimport F32, I32, I64, checked_array

cnp.import_array()

# Activation codes (the C enum fnn_activation).
ACT_LINEAR = FNN_ACT_LINEAR
ACT_RELU = FNN_ACT_RELU
ACT_SIGMOID = FNN_ACT_SIGMOID
ACT_TANH = FNN_ACT_TANH
ACT_SOFTMAX = FNN_ACT_SOFTMAX
ACTIVATION_CODES = {
    "linear": FNN_ACT_LINEAR,
    "relu": FNN_ACT_RELU,
    "sigmoid": FNN_ACT_SIGMOID,
    "tanh": FNN_ACT_TANH,
    "softmax": FNN_ACT_SOFTMAX,
}

# ---------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------

cdef inline cnp.ndarray _array(str fn, str name, object obj, int kind, int ndim,
                               bint out):
    """obj as a checked C-contiguous array; ndim < 0 accepts any ndim >= 1."""
    return checked_array(fn, name, obj, kind, ndim, out, 1)


cdef cnp.ndarray _like(str fn, str name, object obj, int kind, bint out,
                       str ref_name, cnp.ndarray ref):
    """A checked array with exactly the shape of ``ref``."""
    cdef cnp.ndarray a = _array(fn, name, obj, kind, -1, out)
    if (<object>a).shape != (<object>ref).shape:
        raise ValueError(f"{fn}: argument '{name}' has shape {(<object>a).shape} but "
                         f"'{ref_name}' has shape {(<object>ref).shape}; they must match")
    return a


cdef int _check_dim(str fn, str name, cnp.ndarray a, int axis, Py_ssize_t want,
                    str why) except -1:
    if cnp.PyArray_DIM(a, axis) != want:
        raise ValueError(f"{fn}: argument '{name}' has shape {(<object>a).shape} but {why} "
                         f"needs {want} along axis {axis}")
    return 0


cdef inline void _extent(cnp.ndarray a, char **lo, char **hi) noexcept:
    """Byte range [lo, hi) spanned by an array with non-negative strides."""
    cdef char *p = <char *>cnp.PyArray_DATA(a)
    cdef int nd = cnp.PyArray_NDIM(a), d
    cdef Py_ssize_t span = cnp.PyArray_ITEMSIZE(a)
    for d in range(nd):
        if cnp.PyArray_DIM(a, d) == 0:
            lo[0] = p
            hi[0] = p
            return
        span += (cnp.PyArray_DIM(a, d) - 1) * cnp.PyArray_STRIDE(a, d)
    lo[0] = p
    hi[0] = p + span


cdef inline bint _overlap(cnp.ndarray a, cnp.ndarray b) noexcept:
    cdef char *alo
    cdef char *ahi
    cdef char *blo
    cdef char *bhi
    _extent(a, &alo, &ahi)
    _extent(b, &blo, &bhi)
    return alo < bhi and blo < ahi


cdef int _disjoint(str fn, str out_name, cnp.ndarray out, str in_name,
                   cnp.ndarray other) except -1:
    if other is not None and _overlap(out, other):
        raise ValueError(f"{fn}: output '{out_name}' overlaps argument '{in_name}'; "
                         f"it must not share memory with it")
    return 0


cdef int _same_or_disjoint(str fn, str out_name, cnp.ndarray out, str in_name,
                           cnp.ndarray other) except -1:
    """Where the contract says "may alias": the very same array, or no overlap."""
    if not _overlap(out, other):
        return 0
    if (cnp.PyArray_DATA(out) == cnp.PyArray_DATA(other) and (<object>out).shape == (<object>other).shape
            and (<object>out).strides == (<object>other).strides):
        return 0
    raise ValueError(f"{fn}: output '{out_name}' partially overlaps argument '{in_name}'; "
                     f"it may be the very same array but not an overlapping view")


cdef int _check_labels(str fn, str name, cnp.ndarray labels, int64_t cols) except -1:
    cdef const int32_t *lab = <const int32_t *>cnp.PyArray_DATA(labels)
    cdef int64_t n = cnp.PyArray_SIZE(labels), i, bad = -1
    with nogil:
        for i in range(n):
            if lab[i] < 0 or lab[i] >= cols:
                bad = i
                break
    if bad >= 0:
        raise ValueError(f"{fn}: argument '{name}' has value {lab[bad]} at index {bad}, "
                         f"outside the valid range [0, {cols})")
    return 0


cdef int _check_indices(str fn, str name, cnp.ndarray idx, int64_t n_src) except -1:
    cdef const int64_t *ix = <const int64_t *>cnp.PyArray_DATA(idx)
    cdef int64_t n = cnp.PyArray_SIZE(idx), i, bad = -1
    with nogil:
        for i in range(n):
            if ix[i] < 0 or ix[i] >= n_src:
                bad = i
                break
    if bad >= 0:
        raise ValueError(f"{fn}: argument '{name}' has value {ix[bad]} at index {bad}, "
                         f"outside the valid range [0, {n_src})")
    return 0


cdef int _act_code(str fn, object act) except -1:
    if isinstance(act, str):
        if act not in ACTIVATION_CODES:
            raise ValueError(f"{fn}: argument 'act' must be one of "
                             f"{tuple(ACTIVATION_CODES)}, got {act!r}")
        return ACTIVATION_CODES[act]
    if isinstance(act, bool) or not isinstance(act, int):
        raise TypeError(f"{fn}: argument 'act' must be an int code or a name, "
                        f"got {type(act).__name__}")
    if not FNN_ACT_LINEAR <= act <= FNN_ACT_SOFTMAX:
        raise ValueError(f"{fn}: argument 'act' must be an activation code in "
                         f"[{FNN_ACT_LINEAR}, {FNN_ACT_SOFTMAX}], got {act}")
    return act


cdef inline float *_f32(cnp.ndarray a) noexcept:
    return <float *>cnp.PyArray_DATA(a) if a is not None else NULL


cdef inline const int32_t *_i32(cnp.ndarray a) noexcept:
    return <const int32_t *>cnp.PyArray_DATA(a)


cdef inline int64_t _rows_of(cnp.ndarray a) noexcept:
    """Rows of an array seen as (rows, last axis): all leading axes flattened."""
    cdef int64_t cols = cnp.PyArray_DIM(a, cnp.PyArray_NDIM(a) - 1)
    if cols == 0:
        return 0
    return cnp.PyArray_SIZE(a) // cols


# ---------------------------------------------------------------------------
# threads
# ---------------------------------------------------------------------------

def has_openmp() -> bool:
    """True if the kernels were compiled with OpenMP."""
    return fnn_has_openmp() != 0


def set_num_threads(int n) -> None:
    """Sets the number of threads every kernel uses.

    Args:
        n: thread count, at least 1.

    Raises:
        ValueError: n < 1.
    """
    if n < 1:
        raise ValueError(f"set_num_threads: argument 'n' must be >= 1, got {n}")
    fnn_set_num_threads(n)


def get_num_threads() -> int:
    """The number of threads kernels will use (1 when forced serial)."""
    return fnn_get_num_threads()


def force_serial(bint on=True) -> None:
    """Makes every later kernel run on the calling thread only (or undoes it).

    A forked child does this automatically: an OpenMP thread pool inherited
    through fork() is unusable and would hang the child.
    """
    fnn_force_serial(1 if on else 0)


def _serial_after_fork() -> None:
    fnn_force_serial(1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_serial_after_fork)


# ---------------------------------------------------------------------------
# GEMM
# ---------------------------------------------------------------------------

cdef int64_t _leading_dim(str fn, str name, cnp.ndarray a) except -1:
    """Leading dimension (in elements) of a 2-D float32 array with unit-stride
    rows: C-contiguous arrays and row/column slices of one qualify."""
    cdef Py_ssize_t r = cnp.PyArray_DIM(a, 0), c = cnp.PyArray_DIM(a, 1)
    cdef Py_ssize_t s0 = cnp.PyArray_STRIDE(a, 0), s1 = cnp.PyArray_STRIDE(a, 1)
    if r == 0 or c == 0:
        return c if c > 1 else 1  # no element is ever addressed
    if c > 1 and s1 != 4:
        raise ValueError(f"{fn}: argument '{name}' must have unit stride along its last "
                         f"axis, got strides {(<object>a).strides} (use numpy.ascontiguousarray)")
    if r <= 1:
        return c if c > 1 else 1
    if s0 < 0 or s0 % 4 != 0 or s0 // 4 < c:
        raise ValueError(f"{fn}: argument '{name}' has row stride {s0} bytes, which does "
                         f"not hold its {c} columns (use numpy.ascontiguousarray)")
    return s0 // 4 if s0 // 4 > 1 else 1


cdef cnp.ndarray _matrix(str fn, str name, object obj, bint out):
    """A 2-D float32 array whose rows are contiguous (any row stride; see
    _leading_dim, which every caller applies)."""
    return checked_array(fn, name, obj, F32, 2, out, 2, False)


def sgemm(a, b, c, bint trans_a=False, bint trans_b=False, float alpha=1.0,
          float beta=0.0, bias=None, act="linear") -> None:
    """c = act(alpha * op(a) @ op(b) + beta * c + bias), op(x) = x.T if trans_x else x.

    Args:
        a: float32 (M, K), or (K, M) when trans_a.
        b: float32 (K, N), or (N, K) when trans_b.
        c: float32 (M, N) output, not overlapping a or b. Not read when beta == 0.
        trans_a, trans_b: use the transpose of a / b.
        alpha, beta: scalars.
        bias: float32 (N,) added to every row in the GEMM's epilogue, or None.
        act: elementwise activation applied in the epilogue (not "softmax").

    Arrays must have unit-stride rows (C-contiguous, or a slice of rows or
    columns of one).

    Raises:
        TypeError: non-array or non-float32 argument.
        ValueError: bad ndim, shapes, strides, read-only or overlapping c.
    """
    cdef str fn = "sgemm"
    cdef cnp.ndarray A = _matrix(fn, "a", a, False)
    cdef cnp.ndarray B = _matrix(fn, "b", b, False)
    cdef cnp.ndarray C = _matrix(fn, "c", c, True)
    cdef int64_t lda = _leading_dim(fn, "a", A)
    cdef int64_t ldb = _leading_dim(fn, "b", B)
    cdef int64_t ldc = _leading_dim(fn, "c", C)
    cdef int64_t M = cnp.PyArray_DIM(A, 1 if trans_a else 0)
    cdef int64_t K = cnp.PyArray_DIM(A, 0 if trans_a else 1)
    cdef int64_t N = cnp.PyArray_DIM(B, 0 if trans_b else 1)
    cdef int64_t Kb = cnp.PyArray_DIM(B, 1 if trans_b else 0)
    if Kb != K:
        raise ValueError(f"{fn}: argument 'b' has shape {(<object>B).shape}"
                         f"{' (used transposed)' if trans_b else ''} but op('a') from "
                         f"'a' of shape {(<object>A).shape}{' (used transposed)' if trans_a else ''}"
                         f" has {K} columns, so op('b') needs {K} rows")
    if cnp.PyArray_DIM(C, 0) != M or cnp.PyArray_DIM(C, 1) != N:
        raise ValueError(f"{fn}: argument 'c' has shape {(<object>C).shape} but "
                         f"op('a') @ op('b') has shape ({M}, {N})")
    _disjoint(fn, "c", C, "a", A)
    _disjoint(fn, "c", C, "b", B)
    cdef int code = _act_code(fn, act)
    if code == FNN_ACT_SOFTMAX:
        raise ValueError(f"{fn}: argument 'act' must be elementwise; softmax needs whole "
                         f"rows (use dense_fwd)")
    cdef cnp.ndarray Bi = None
    if bias is not None:
        Bi = _array(fn, "bias", bias, F32, 1, False)
        _check_dim(fn, "bias", Bi, 0, N, "the columns of 'c'")
        _disjoint(fn, "c", C, "bias", Bi)
    cdef const float *pa = _f32(A)
    cdef const float *pb = _f32(B)
    cdef const float *pbias = _f32(Bi)
    cdef float *pc = _f32(C)
    with nogil:
        fnn_sgemm_bias_act(1 if trans_a else 0, 1 if trans_b else 0, M, N, K, alpha,
                           pa, lda, pb, ldb, beta, pc, ldc, pbias, code)


def sgemm_set_kernel(int kind) -> int:
    """Testing only: forces the SGEMM micro-kernel (0 auto, 1 portable C,
    2 AVX2, 3 AVX-512). Returns 0, or -1 (nothing changed) if this CPU lacks it.
    """
    if not 0 <= kind <= 3:
        raise ValueError(f"sgemm_set_kernel: argument 'kind' must be in [0, 3], got {kind}")
    return fnn_sgemm_set_kernel(kind)


def sgemm_get_kernel() -> int:
    """Testing only: the SGEMM micro-kernel in use (1 portable C, 2 AVX2, 3 AVX-512)."""
    return fnn_sgemm_get_kernel()


def sgemm_set_sparse_density(double max_density) -> float:
    """Sets when a product skips the zeros of op(a); returns the previous setting.

    A product whose op(a) has at most this fraction of nonzero entries (and
    whose b is not transposed, with the AVX-512 or portable kernels) runs a
    path that skips them: same results, less work on mostly-zero inputs such
    as MNIST's pixels. 0 turns the path off, 1 takes it whenever it applies;
    the default is 0.25.

    Raises:
        ValueError: max_density outside [0, 1] or NaN.
    """
    if not 0.0 <= max_density <= 1.0:
        raise ValueError(f"sgemm_set_sparse_density: argument 'max_density' must be in "
                         f"[0, 1], got {max_density}")
    return fnn_sgemm_set_sparse_density(max_density)


# ---------------------------------------------------------------------------
# activations and dense
# ---------------------------------------------------------------------------

def bias_act_fwd(act, x, bias, y) -> None:
    """y = act(x + bias) over the last axis.

    Args:
        act: activation code (ACT_*) or name ("relu", ...).
        x: float32 (..., cols); the leading axes are rows.
        bias: float32 (cols,) or None.
        y: float32 output of x's shape; may be x itself (in place).
    """
    cdef str fn = "bias_act_fwd"
    cdef int code = _act_code(fn, act)
    cdef cnp.ndarray X = _array(fn, "x", x, F32, -1, False)
    cdef cnp.ndarray Y = _like(fn, "y", y, F32, True, "x", X)
    cdef cnp.ndarray Bi = None
    cdef int64_t cols = cnp.PyArray_DIM(X, cnp.PyArray_NDIM(X) - 1)
    if bias is not None:
        Bi = _array(fn, "bias", bias, F32, 1, False)
        _check_dim(fn, "bias", Bi, 0, cols, "the last axis of 'x'")
        _disjoint(fn, "y", Y, "bias", Bi)
    _same_or_disjoint(fn, "y", Y, "x", X)
    cdef int64_t rows = _rows_of(X)
    cdef const float *px = _f32(X)
    cdef const float *pb = _f32(Bi)
    cdef float *py = _f32(Y)
    with nogil:
        fnn_bias_act_fwd(code, rows, cols, px, pb, py)


def act_bwd(act, y, dy, dx) -> None:
    """dx = dy * act'(.), computed from the forward output y.

    Args:
        act: activation code or name.
        y: float32 forward output (..., cols).
        dy: float32 gradient w.r.t. y, y's shape.
        dx: float32 output, y's shape; may be dy itself.
    """
    cdef str fn = "act_bwd"
    cdef int code = _act_code(fn, act)
    cdef cnp.ndarray Y = _array(fn, "y", y, F32, -1, False)
    cdef cnp.ndarray DY = _like(fn, "dy", dy, F32, False, "y", Y)
    cdef cnp.ndarray DX = _like(fn, "dx", dx, F32, True, "y", Y)
    _disjoint(fn, "dx", DX, "y", Y)
    _same_or_disjoint(fn, "dx", DX, "dy", DY)
    cdef int64_t cols = cnp.PyArray_DIM(Y, cnp.PyArray_NDIM(Y) - 1)
    cdef int64_t rows = _rows_of(Y)
    cdef const float *py = _f32(Y)
    cdef const float *pdy = _f32(DY)
    cdef float *pdx = _f32(DX)
    with nogil:
        fnn_act_bwd(code, rows, cols, py, pdy, pdx)


def act_bias_bwd(act, y, dy, dz, db) -> None:
    """dz = dy * act'(.) from the forward output y, and db = column sums of dz, in one pass.

    Args:
        act: activation code or name.
        y: float32 forward output (..., cols).
        dy: float32 gradient w.r.t. y, y's shape.
        dz: float32 output, y's shape; may be dy itself.
        db: float32 (cols,) output, or None (then this is act_bwd).
    """
    cdef str fn = "act_bias_bwd"
    cdef int code = _act_code(fn, act)
    cdef cnp.ndarray Y = _array(fn, "y", y, F32, -1, False)
    cdef cnp.ndarray DY = _like(fn, "dy", dy, F32, False, "y", Y)
    cdef cnp.ndarray DZ = _like(fn, "dz", dz, F32, True, "y", Y)
    _disjoint(fn, "dz", DZ, "y", Y)
    _same_or_disjoint(fn, "dz", DZ, "dy", DY)
    cdef int64_t cols = cnp.PyArray_DIM(Y, cnp.PyArray_NDIM(Y) - 1)
    cdef cnp.ndarray DB = None
    if db is not None:
        DB = _array(fn, "db", db, F32, 1, True)
        _check_dim(fn, "db", DB, 0, cols, "the last axis of 'y'")
        for other_name, other in (("y", Y), ("dy", DY), ("dz", DZ)):
            _disjoint(fn, "db", DB, other_name, other)
    cdef int64_t rows = _rows_of(Y)
    cdef const float *py = _f32(Y)
    cdef const float *pdy = _f32(DY)
    cdef float *pdz = _f32(DZ)
    cdef float *pdb = _f32(DB)
    with nogil:
        fnn_act_bias_bwd(code, rows, cols, py, pdy, pdz, pdb)


def dense_fwd(act, x, w, bias, y) -> None:
    """y = act(x @ w + bias).

    Args:
        act: activation code or name.
        x: float32 (M, K).
        w: float32 (K, N).
        bias: float32 (N,) or None.
        y: float32 (M, N) output, overlapping none of the inputs.
    """
    cdef str fn = "dense_fwd"
    cdef int code = _act_code(fn, act)
    cdef cnp.ndarray X = _array(fn, "x", x, F32, 2, False)
    cdef cnp.ndarray W = _array(fn, "w", w, F32, 2, False)
    cdef int64_t M = cnp.PyArray_DIM(X, 0), K = cnp.PyArray_DIM(X, 1)
    _check_dim(fn, "w", W, 0, K, f"'x' of shape {(<object>X).shape}")
    cdef int64_t N = cnp.PyArray_DIM(W, 1)
    cdef cnp.ndarray Y = _array(fn, "y", y, F32, 2, True)
    if cnp.PyArray_DIM(Y, 0) != M or cnp.PyArray_DIM(Y, 1) != N:
        raise ValueError(f"{fn}: argument 'y' has shape {(<object>Y).shape} but 'x' @ 'w' "
                         f"has shape ({M}, {N})")
    cdef cnp.ndarray Bi = None
    if bias is not None:
        Bi = _array(fn, "bias", bias, F32, 1, False)
        _check_dim(fn, "bias", Bi, 0, N, f"'w' of shape {(<object>W).shape}")
        _disjoint(fn, "y", Y, "bias", Bi)
    _disjoint(fn, "y", Y, "x", X)
    _disjoint(fn, "y", Y, "w", W)
    cdef const float *px = _f32(X)
    cdef const float *pw = _f32(W)
    cdef const float *pb = _f32(Bi)
    cdef float *py = _f32(Y)
    with nogil:
        fnn_dense_fwd(code, M, N, K, px, pw, pb, py)


def bias_grad(dz, db) -> None:
    """db = sum of dz over all leading axes (rows), in row order.

    Args:
        dz: float32 (..., cols).
        db: float32 (cols,) output.
    """
    cdef str fn = "bias_grad"
    cdef cnp.ndarray DZ = _array(fn, "dz", dz, F32, -1, False)
    cdef cnp.ndarray DB = _array(fn, "db", db, F32, 1, True)
    cdef int64_t cols = cnp.PyArray_DIM(DZ, cnp.PyArray_NDIM(DZ) - 1)
    _check_dim(fn, "db", DB, 0, cols, "the last axis of 'dz'")
    _disjoint(fn, "db", DB, "dz", DZ)
    cdef int64_t rows = _rows_of(DZ)
    cdef const float *pdz = _f32(DZ)
    cdef float *pdb = _f32(DB)
    with nogil:
        fnn_bias_grad(rows, cols, pdz, pdb)


def vexpf(x, y) -> None:
    """y = exp(x) elementwise, within 1.3 ulp (single-threaded building block).

    Args:
        x: float32 array of any shape.
        y: float32 output of x's shape; may be x itself.
    """
    cdef str fn = "vexpf"
    cdef cnp.ndarray X = _array(fn, "x", x, F32, -1, False)
    cdef cnp.ndarray Y = _like(fn, "y", y, F32, True, "x", X)
    _same_or_disjoint(fn, "y", Y, "x", X)
    cdef int64_t n = cnp.PyArray_SIZE(X)
    cdef const float *px = _f32(X)
    cdef float *py = _f32(Y)
    with nogil:
        fnn_vexpf(n, px, py)


# ---------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------

cdef cnp.ndarray _batch(str fn, str name, object obj):
    """A (rows, cols) float32 prediction array with rows, cols >= 1."""
    cdef cnp.ndarray a = _array(fn, name, obj, F32, 2, False)
    if cnp.PyArray_DIM(a, 0) < 1 or cnp.PyArray_DIM(a, 1) < 1:
        raise ValueError(f"{fn}: argument '{name}' has shape {(<object>a).shape}; a loss needs "
                         f"at least one row and one column")
    return a


cdef cnp.ndarray _labels_for(str fn, str name, object obj, cnp.ndarray pred, str pred_name):
    cdef cnp.ndarray lab = _array(fn, name, obj, I32, 1, False)
    _check_dim(fn, name, lab, 0, cnp.PyArray_DIM(pred, 0), f"'{pred_name}' of shape {(<object>pred).shape}")
    _check_labels(fn, name, lab, cnp.PyArray_DIM(pred, 1))
    return lab


def softmax_cce_logits(logits, target, probs, grad) -> float:
    """Categorical cross-entropy from logits (softmax inside).

    Args:
        logits: float32 (rows, cols).
        target: float32 (rows, cols), e.g. one-hot.
        probs: float32 output (rows, cols): softmax(logits).
        grad: float32 output (rows, cols): d(mean loss)/d(logits).

    Returns:
        The mean over rows of the per-sample loss.
    """
    cdef str fn = "softmax_cce_logits"
    cdef cnp.ndarray X = _batch(fn, "logits", logits)
    cdef cnp.ndarray T = _like(fn, "target", target, F32, False, "logits", X)
    cdef cnp.ndarray P = _like(fn, "probs", probs, F32, True, "logits", X)
    cdef cnp.ndarray G = _like(fn, "grad", grad, F32, True, "logits", X)
    _disjoint(fn, "probs", P, "logits", X)
    _disjoint(fn, "probs", P, "target", T)
    _disjoint(fn, "grad", G, "logits", X)
    _disjoint(fn, "grad", G, "target", T)
    _disjoint(fn, "grad", G, "probs", P)
    cdef int64_t rows = cnp.PyArray_DIM(X, 0), cols = cnp.PyArray_DIM(X, 1)
    cdef const float *px = _f32(X)
    cdef const float *pt = _f32(T)
    cdef float *pp = _f32(P)
    cdef float *pg = _f32(G)
    cdef double r
    with nogil:
        r = fnn_softmax_cce_logits(rows, cols, px, pt, pp, pg)
    return r


def softmax_sparse_cce_logits(logits, labels, probs, grad) -> float:
    """Sparse categorical cross-entropy from logits.

    Args:
        logits: float32 (rows, cols).
        labels: int32 (rows,), each in [0, cols).
        probs: float32 output (rows, cols): softmax(logits).
        grad: float32 output (rows, cols).

    Returns:
        The mean over rows of the per-sample loss.
    """
    cdef str fn = "softmax_sparse_cce_logits"
    cdef cnp.ndarray X = _batch(fn, "logits", logits)
    cdef cnp.ndarray L = _labels_for(fn, "labels", labels, X, "logits")
    cdef cnp.ndarray P = _like(fn, "probs", probs, F32, True, "logits", X)
    cdef cnp.ndarray G = _like(fn, "grad", grad, F32, True, "logits", X)
    _disjoint(fn, "probs", P, "logits", X)
    _disjoint(fn, "probs", P, "labels", L)
    _disjoint(fn, "grad", G, "logits", X)
    _disjoint(fn, "grad", G, "labels", L)
    _disjoint(fn, "grad", G, "probs", P)
    cdef int64_t rows = cnp.PyArray_DIM(X, 0), cols = cnp.PyArray_DIM(X, 1)
    cdef const float *px = _f32(X)
    cdef const int32_t *pl = _i32(L)
    cdef float *pp = _f32(P)
    cdef float *pg = _f32(G)
    cdef double r
    with nogil:
        r = fnn_softmax_sparse_cce_logits(rows, cols, px, pl, pp, pg)
    return r


def cce_probs(probs, target, grad) -> float:
    """Categorical cross-entropy from probabilities (Keras: normalised by the
    row sum, clipped to [1e-7, 1 - 1e-7]).

    Args:
        probs: float32 (rows, cols).
        target: float32 (rows, cols).
        grad: float32 output (rows, cols): d(mean loss)/d(probs).

    Returns:
        The mean over rows of the per-sample loss.
    """
    cdef str fn = "cce_probs"
    cdef cnp.ndarray X = _batch(fn, "probs", probs)
    cdef cnp.ndarray T = _like(fn, "target", target, F32, False, "probs", X)
    cdef cnp.ndarray G = _like(fn, "grad", grad, F32, True, "probs", X)
    _disjoint(fn, "grad", G, "probs", X)
    _disjoint(fn, "grad", G, "target", T)
    cdef int64_t rows = cnp.PyArray_DIM(X, 0), cols = cnp.PyArray_DIM(X, 1)
    cdef const float *px = _f32(X)
    cdef const float *pt = _f32(T)
    cdef float *pg = _f32(G)
    cdef double r
    with nogil:
        r = fnn_cce_probs(rows, cols, px, pt, pg)
    return r


def sparse_cce_probs(probs, labels, grad) -> float:
    """Sparse categorical cross-entropy from probabilities (as cce_probs).

    Args:
        probs: float32 (rows, cols).
        labels: int32 (rows,), each in [0, cols).
        grad: float32 output (rows, cols).

    Returns:
        The mean over rows of the per-sample loss.
    """
    cdef str fn = "sparse_cce_probs"
    cdef cnp.ndarray X = _batch(fn, "probs", probs)
    cdef cnp.ndarray L = _labels_for(fn, "labels", labels, X, "probs")
    cdef cnp.ndarray G = _like(fn, "grad", grad, F32, True, "probs", X)
    _disjoint(fn, "grad", G, "probs", X)
    _disjoint(fn, "grad", G, "labels", L)
    cdef int64_t rows = cnp.PyArray_DIM(X, 0), cols = cnp.PyArray_DIM(X, 1)
    cdef const float *px = _f32(X)
    cdef const int32_t *pl = _i32(L)
    cdef float *pg = _f32(G)
    cdef double r
    with nogil:
        r = fnn_sparse_cce_probs(rows, cols, px, pl, pg)
    return r


def sigmoid_bce_logits(logits, target, probs, grad) -> float:
    """Binary cross-entropy from logits (per sample: mean over columns).

    Args:
        logits: float32 (rows, cols).
        target: float32 (rows, cols) in [0, 1].
        probs: float32 output (rows, cols): sigmoid(logits).
        grad: float32 output (rows, cols).

    Returns:
        The mean over rows of the per-sample loss.
    """
    cdef str fn = "sigmoid_bce_logits"
    cdef cnp.ndarray X = _batch(fn, "logits", logits)
    cdef cnp.ndarray T = _like(fn, "target", target, F32, False, "logits", X)
    cdef cnp.ndarray P = _like(fn, "probs", probs, F32, True, "logits", X)
    cdef cnp.ndarray G = _like(fn, "grad", grad, F32, True, "logits", X)
    _disjoint(fn, "probs", P, "logits", X)
    _disjoint(fn, "probs", P, "target", T)
    _disjoint(fn, "grad", G, "logits", X)
    _disjoint(fn, "grad", G, "target", T)
    _disjoint(fn, "grad", G, "probs", P)
    cdef int64_t rows = cnp.PyArray_DIM(X, 0), cols = cnp.PyArray_DIM(X, 1)
    cdef const float *px = _f32(X)
    cdef const float *pt = _f32(T)
    cdef float *pp = _f32(P)
    cdef float *pg = _f32(G)
    cdef double r
    with nogil:
        r = fnn_sigmoid_bce_logits(rows, cols, px, pt, pp, pg)
    return r


cdef double _pred_target_grad(str fn, int which, object pred, object target,
                              object grad, str pred_name) except? -1.0:
    """Shared body of the (pred, target, grad) losses: 0 bce_probs, 1 mse, 2 mae."""
    cdef cnp.ndarray X = _batch(fn, pred_name, pred)
    cdef cnp.ndarray T = _like(fn, "target", target, F32, False, pred_name, X)
    cdef cnp.ndarray G = _like(fn, "grad", grad, F32, True, pred_name, X)
    _disjoint(fn, "grad", G, pred_name, X)
    _disjoint(fn, "grad", G, "target", T)
    cdef int64_t rows = cnp.PyArray_DIM(X, 0), cols = cnp.PyArray_DIM(X, 1)
    cdef const float *px = _f32(X)
    cdef const float *pt = _f32(T)
    cdef float *pg = _f32(G)
    cdef double r
    with nogil:
        if which == 0:
            r = fnn_bce_probs(rows, cols, px, pt, pg)
        elif which == 1:
            r = fnn_mse(rows, cols, px, pt, pg)
        else:
            r = fnn_mae(rows, cols, px, pt, pg)
    return r


def bce_probs(probs, target, grad) -> float:
    """Binary cross-entropy from probabilities (Keras clipping at 1e-7).

    Args:
        probs: float32 (rows, cols).
        target: float32 (rows, cols) in [0, 1].
        grad: float32 output (rows, cols).

    Returns:
        The mean over rows of the per-sample loss (mean over columns).
    """
    return _pred_target_grad("bce_probs", 0, probs, target, grad, "probs")


def mse(pred, target, grad) -> float:
    """Mean squared error; returns the mean over rows of the per-row mean.

    Args:
        pred, target: float32 (rows, cols).
        grad: float32 output (rows, cols).
    """
    return _pred_target_grad("mse", 1, pred, target, grad, "pred")


def mae(pred, target, grad) -> float:
    """Mean absolute error; returns the mean over rows of the per-row mean.

    Args:
        pred, target: float32 (rows, cols).
        grad: float32 output (rows, cols).
    """
    return _pred_target_grad("mae", 2, pred, target, grad, "pred")


# ---------------------------------------------------------------------------
# metrics (each returns the sum over rows)
# ---------------------------------------------------------------------------

cdef cnp.ndarray _metric_pred(str fn, object pred):
    cdef cnp.ndarray a = _array(fn, "pred", pred, F32, 2, False)
    if cnp.PyArray_DIM(a, 1) < 1:
        raise ValueError(f"{fn}: argument 'pred' has shape {(<object>a).shape}; it needs at "
                         f"least one column")
    return a


cdef double _pred_target_sum(str fn, int which, object pred, object target,
                             float threshold) except? -1.0:
    """0 categorical accuracy, 1 binary accuracy, 2 mse, 3 mae."""
    cdef cnp.ndarray X = _metric_pred(fn, pred)
    cdef cnp.ndarray T = _like(fn, "target", target, F32, False, "pred", X)
    cdef int64_t rows = cnp.PyArray_DIM(X, 0), cols = cnp.PyArray_DIM(X, 1)
    cdef const float *px = _f32(X)
    cdef const float *pt = _f32(T)
    cdef double r
    with nogil:
        if which == 0:
            r = fnn_categorical_accuracy_sum(rows, cols, px, pt)
        elif which == 1:
            r = fnn_binary_accuracy_sum(rows, cols, px, pt, threshold)
        elif which == 2:
            r = fnn_mse_sum(rows, cols, px, pt)
        else:
            r = fnn_mae_sum(rows, cols, px, pt)
    return r


def categorical_accuracy_sum(pred, target) -> float:
    """Number of rows where argmax(pred) == argmax(target) (first maximum).

    Args:
        pred, target: float32 (rows, cols).
    """
    return _pred_target_sum("categorical_accuracy_sum", 0, pred, target, 0.0)


def sparse_categorical_accuracy_sum(pred, labels) -> float:
    """Number of rows where argmax(pred) == label.

    Args:
        pred: float32 (rows, cols).
        labels: int32 (rows,), each in [0, cols).
    """
    cdef str fn = "sparse_categorical_accuracy_sum"
    cdef cnp.ndarray X = _metric_pred(fn, pred)
    cdef cnp.ndarray L = _labels_for(fn, "labels", labels, X, "pred")
    cdef int64_t rows = cnp.PyArray_DIM(X, 0), cols = cnp.PyArray_DIM(X, 1)
    cdef const float *px = _f32(X)
    cdef const int32_t *pl = _i32(L)
    cdef double r
    with nogil:
        r = fnn_sparse_categorical_accuracy_sum(rows, cols, px, pl)
    return r


def binary_accuracy_sum(pred, target, float threshold=0.5) -> float:
    """Sum over rows of the mean over columns of (pred > threshold) == (target > 0.5).

    Args:
        pred, target: float32 (rows, cols).
        threshold: decision threshold on pred.
    """
    return _pred_target_sum("binary_accuracy_sum", 1, pred, target, threshold)


def mse_sum(pred, target) -> float:
    """Sum over rows of the per-row mean squared error."""
    return _pred_target_sum("mse_sum", 2, pred, target, 0.0)


def mae_sum(pred, target) -> float:
    """Sum over rows of the per-row mean absolute error."""
    return _pred_target_sum("mae_sum", 3, pred, target, 0.0)


# ---------------------------------------------------------------------------
# reductions
# ---------------------------------------------------------------------------

def sumsq(x) -> float:
    """Sum of squares of all elements, accumulated in float64 in a fixed order.

    Args:
        x: float32 array of any shape (C-contiguous).
    """
    cdef cnp.ndarray X = _array("sumsq", "x", x, F32, -1, False)
    cdef int64_t n = cnp.PyArray_SIZE(X)
    cdef const float *px = _f32(X)
    cdef double r
    with nogil:
        r = fnn_sumsq(n, px)
    return r


def first_nonfinite(x) -> int:
    """Flat index of the first NaN or infinity in x, or -1 if every value is finite.

    Args:
        x: float32 array of any shape (C-contiguous).
    """
    cdef cnp.ndarray X = _array("first_nonfinite", "x", x, F32, -1, False)
    cdef int64_t n = cnp.PyArray_SIZE(X)
    cdef const float *px = _f32(X)
    cdef int64_t r
    with nogil:
        r = fnn_first_nonfinite(n, px)
    return r


def scale(x, float s) -> None:
    """x *= s in place.

    Args:
        x: float32 array of any shape (C-contiguous, writeable).
        s: the factor.
    """
    cdef cnp.ndarray X = _array("scale", "x", x, F32, -1, True)
    cdef int64_t n = cnp.PyArray_SIZE(X)
    cdef float *px = _f32(X)
    with nogil:
        fnn_scale(n, px, s)


# ---------------------------------------------------------------------------
# optimisers
# ---------------------------------------------------------------------------

cdef cnp.ndarray _state(str fn, str name, object obj, cnp.ndarray p, cnp.ndarray g):
    """An optimiser state buffer: p's shape, writeable, sharing no memory with
    p or g."""
    cdef cnp.ndarray a = _like(fn, name, obj, F32, True, "p", p)
    _disjoint(fn, name, a, "p", p)
    _disjoint(fn, name, a, "g", g)
    return a


def sgd_step(p, g, velocity, float lr, float momentum=0.0, bint nesterov=False,
             float weight_decay=0.0, float grad_scale=1.0, float clip_value=0.0) -> None:
    """One SGD step in place (Keras semantics; see fnn_sgd_step).

    Args:
        p: float32 parameters (any shape), updated in place.
        g: float32 gradient, p's shape.
        velocity: float32 momentum buffer, p's shape; may be None iff momentum == 0.
        lr, momentum, nesterov, weight_decay: as in Keras.
        grad_scale: g is multiplied by this first.
        clip_value: clip the scaled gradient to [-clip_value, clip_value] when > 0.
    """
    cdef str fn = "sgd_step"
    cdef cnp.ndarray P = _array(fn, "p", p, F32, -1, True)
    cdef cnp.ndarray G = _like(fn, "g", g, F32, False, "p", P)
    _disjoint(fn, "p", P, "g", G)
    if momentum < 0:
        raise ValueError(f"{fn}: argument 'momentum' must be >= 0, got {momentum}")
    cdef cnp.ndarray V = None
    if velocity is None:
        if momentum != 0:
            raise ValueError(f"{fn}: argument 'velocity' is required when momentum != 0")
    else:
        V = _state(fn, "velocity", velocity, P, G)
    cdef int64_t n = cnp.PyArray_SIZE(P)
    cdef float *pp = _f32(P)
    cdef const float *pg = _f32(G)
    cdef float *pv = _f32(V)
    with nogil:
        fnn_sgd_step(n, pp, pg, pv, lr, momentum, 1 if nesterov else 0,
                     weight_decay, grad_scale, clip_value)


def adam_step(p, g, m, v, float lr, float beta_1=0.9, float beta_2=0.999,
              float epsilon=1e-7, int64_t step=1, float weight_decay=0.0,
              float grad_scale=1.0, float clip_value=0.0) -> None:
    """One Adam/AdamW step in place (Keras semantics; see fnn_adam_step).

    Args:
        p: float32 parameters, updated in place.
        g: float32 gradient, p's shape.
        m, v: float32 first/second moment buffers, p's shape.
        lr, beta_1, beta_2, epsilon: as in Keras.
        step: 1-based step number (bias correction).
        weight_decay: decoupled decay (AdamW) when > 0.
        grad_scale, clip_value: as in sgd_step.
    """
    cdef str fn = "adam_step"
    cdef cnp.ndarray P = _array(fn, "p", p, F32, -1, True)
    cdef cnp.ndarray G = _like(fn, "g", g, F32, False, "p", P)
    _disjoint(fn, "p", P, "g", G)
    cdef cnp.ndarray Mm = _state(fn, "m", m, P, G)
    cdef cnp.ndarray Vv = _state(fn, "v", v, P, G)
    _disjoint(fn, "v", Vv, "m", Mm)
    if step < 1:
        raise ValueError(f"{fn}: argument 'step' is 1-based and must be >= 1, got {step}")
    cdef int64_t n = cnp.PyArray_SIZE(P)
    cdef float *pp = _f32(P)
    cdef const float *pg = _f32(G)
    cdef float *pm = _f32(Mm)
    cdef float *pv = _f32(Vv)
    with nogil:
        fnn_adam_step(n, pp, pg, pm, pv, lr, beta_1, beta_2, epsilon, step,
                      weight_decay, grad_scale, clip_value)


def rmsprop_step(p, g, vel, mom, avg, float lr, float rho=0.9, float momentum=0.0,
                 float epsilon=1e-7, float weight_decay=0.0, float grad_scale=1.0,
                 float clip_value=0.0) -> None:
    """One RMSprop step in place (Keras semantics; see fnn_rmsprop_step).

    Args:
        p: float32 parameters, updated in place.
        g: float32 gradient, p's shape.
        vel: float32 mean-square buffer, p's shape.
        mom: float32 momentum buffer; may be None iff momentum == 0.
        avg: float32 mean-gradient buffer for the centred variant, or None.
        lr, rho, momentum, epsilon, weight_decay: as in Keras.
        grad_scale, clip_value: as in sgd_step.
    """
    cdef str fn = "rmsprop_step"
    cdef cnp.ndarray P = _array(fn, "p", p, F32, -1, True)
    cdef cnp.ndarray G = _like(fn, "g", g, F32, False, "p", P)
    _disjoint(fn, "p", P, "g", G)
    cdef cnp.ndarray VE = _state(fn, "vel", vel, P, G)
    if momentum < 0:
        raise ValueError(f"{fn}: argument 'momentum' must be >= 0, got {momentum}")
    cdef cnp.ndarray MO = None
    cdef cnp.ndarray AV = None
    if mom is None:
        if momentum > 0:
            raise ValueError(f"{fn}: argument 'mom' is required when momentum > 0")
    else:
        MO = _state(fn, "mom", mom, P, G)
        _disjoint(fn, "mom", MO, "vel", VE)
    if avg is not None:
        AV = _state(fn, "avg", avg, P, G)
        _disjoint(fn, "avg", AV, "vel", VE)
        _disjoint(fn, "avg", AV, "mom", MO)
    cdef int64_t n = cnp.PyArray_SIZE(P)
    cdef float *pp = _f32(P)
    cdef const float *pg = _f32(G)
    cdef float *pve = _f32(VE)
    cdef float *pmo = _f32(MO) if momentum > 0 else NULL
    cdef float *pav = _f32(AV)
    with nogil:
        fnn_rmsprop_step(n, pp, pg, pve, pmo, pav, lr, rho, momentum, epsilon,
                         weight_decay, grad_scale, clip_value)


# ---------------------------------------------------------------------------
# data movement and elementwise
# ---------------------------------------------------------------------------

cdef tuple _gather_checks(str fn, int kind, object src, object idx, object dst):
    cdef cnp.ndarray S = _array(fn, "src", src, kind, 2, False)
    cdef cnp.ndarray I = _array(fn, "idx", idx, I64, 1, False)
    cdef cnp.ndarray D = _array(fn, "dst", dst, kind, 2, True)
    _check_dim(fn, "dst", D, 0, cnp.PyArray_DIM(I, 0), f"'idx' of shape {(<object>I).shape}")
    _check_dim(fn, "dst", D, 1, cnp.PyArray_DIM(S, 1), f"'src' of shape {(<object>S).shape}")
    _disjoint(fn, "dst", D, "src", S)
    _disjoint(fn, "dst", D, "idx", I)
    _check_indices(fn, "idx", I, cnp.PyArray_DIM(S, 0))
    return S, I, D


def gather_rows_f32(src, idx, dst) -> None:
    """dst[i, :] = src[idx[i], :].

    Args:
        src: float32 (n_src, row_len).
        idx: int64 (n_idx,), each in [0, n_src).
        dst: float32 (n_idx, row_len) output.
    """
    cdef cnp.ndarray S, I, D
    S, I, D = _gather_checks("gather_rows_f32", F32, src, idx, dst)
    cdef int64_t n_src = cnp.PyArray_DIM(S, 0), row_len = cnp.PyArray_DIM(S, 1)
    cdef int64_t n_idx = cnp.PyArray_DIM(I, 0)
    cdef const float *ps = _f32(S)
    cdef const int64_t *pi = <const int64_t *>cnp.PyArray_DATA(I)
    cdef float *pd = _f32(D)
    with nogil:
        fnn_gather_rows_f32(n_src, row_len, ps, n_idx, pi, pd)


def gather_rows_i32(src, idx, dst) -> None:
    """dst[i, :] = src[idx[i], :] for int32 data (e.g. labels as (n, 1)).

    Args:
        src: int32 (n_src, row_len).
        idx: int64 (n_idx,), each in [0, n_src).
        dst: int32 (n_idx, row_len) output.
    """
    cdef cnp.ndarray S, I, D
    S, I, D = _gather_checks("gather_rows_i32", I32, src, idx, dst)
    cdef int64_t n_src = cnp.PyArray_DIM(S, 0), row_len = cnp.PyArray_DIM(S, 1)
    cdef int64_t n_idx = cnp.PyArray_DIM(I, 0)
    cdef const int32_t *ps = <const int32_t *>cnp.PyArray_DATA(S)
    cdef const int64_t *pi = <const int64_t *>cnp.PyArray_DATA(I)
    cdef int32_t *pd = <int32_t *>cnp.PyArray_DATA(D)
    with nogil:
        fnn_gather_rows_i32(n_src, row_len, ps, n_idx, pi, pd)


def dropout_fwd(x, u, float rate, mask, y) -> None:
    """Inverted dropout: mask = (u >= rate) / (1 - rate); y = x * mask.

    Args:
        x: float32 input (any shape).
        u: float32 uniform [0, 1) draws, x's shape.
        rate: drop probability in [0, 1].
        mask, y: float32 outputs, x's shape, sharing no memory with any input
            or with each other.
    """
    cdef str fn = "dropout_fwd"
    cdef cnp.ndarray X = _array(fn, "x", x, F32, -1, False)
    cdef cnp.ndarray U = _like(fn, "u", u, F32, False, "x", X)
    cdef cnp.ndarray MK = _like(fn, "mask", mask, F32, True, "x", X)
    cdef cnp.ndarray Y = _like(fn, "y", y, F32, True, "x", X)
    if not (0.0 <= rate <= 1.0):
        raise ValueError(f"{fn}: argument 'rate' must be in [0, 1], got {rate}")
    _disjoint(fn, "mask", MK, "x", X)
    _disjoint(fn, "mask", MK, "u", U)
    _disjoint(fn, "y", Y, "x", X)
    _disjoint(fn, "y", Y, "u", U)
    _disjoint(fn, "y", Y, "mask", MK)
    cdef int64_t n = cnp.PyArray_SIZE(X)
    cdef const float *px = _f32(X)
    cdef const float *pu = _f32(U)
    cdef float *pm = _f32(MK)
    cdef float *py = _f32(Y)
    with nogil:
        fnn_dropout_fwd(n, px, pu, rate, pm, py)


cdef tuple _binary_checks(str fn, object a, object b, object out):
    cdef cnp.ndarray A = _array(fn, "a", a, F32, -1, False)
    cdef cnp.ndarray B = _like(fn, "b", b, F32, False, "a", A)
    cdef cnp.ndarray O = _like(fn, "out", out, F32, True, "a", A)
    _same_or_disjoint(fn, "out", O, "a", A)
    _same_or_disjoint(fn, "out", O, "b", B)
    return A, B, O


def mul(a, b, out) -> None:
    """out = a * b elementwise (same shapes); out may be a or b itself."""
    cdef cnp.ndarray A, B, O
    A, B, O = _binary_checks("mul", a, b, out)
    cdef int64_t n = cnp.PyArray_SIZE(A)
    cdef const float *pa = _f32(A)
    cdef const float *pb = _f32(B)
    cdef float *po = _f32(O)
    with nogil:
        fnn_mul(n, pa, pb, po)


def add(a, b, out) -> None:
    """out = a + b elementwise (same shapes); out may be a or b itself."""
    cdef cnp.ndarray A, B, O
    A, B, O = _binary_checks("add", a, b, out)
    cdef int64_t n = cnp.PyArray_SIZE(A)
    cdef const float *pa = _f32(A)
    cdef const float *pb = _f32(B)
    cdef float *po = _f32(O)
    with nogil:
        fnn_add(n, pa, pb, po)
