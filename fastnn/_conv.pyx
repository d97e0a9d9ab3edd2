# cython: language_level=3, boundscheck=False, wraparound=False
"""Typed wrappers over the convolution, pooling and batch-normalisation
kernels of ext/fastnn.h (conv.c, pool.c, batchnorm.c).

Each wrapper checks every argument (type, dtype, ndim, shapes implied by the
geometry, C-contiguity, writeable outputs, no output overlapping an input),
then releases the GIL and calls C, which trusts its inputs. Bad calls raise
``TypeError`` (not an ndarray, wrong dtype) or ``ValueError`` (shape,
geometry, contiguity, read-only output, overlap), naming the function and
the argument.

Images are NHWC float32, kernels (kh, kw, C, F), padding (top, bottom,
left, right). ``nthreads`` is the thread count to use (the caller reads the
project's setting; see fastnn.backend.cpu_conv). Nothing is allocated here:
scratch space comes from the caller (``work``, a uint8 array of at least the
size the matching ``*_workspace_bytes`` reports).
"""
import operator

cimport numpy as cnp
from libc.stdint cimport int32_t, int64_t

from fastnn._checks cimport F32, INDEX, U8, checked_array

cnp.import_array()

cdef extern from "fastnn.h" nogil:
    ctypedef struct fnn_conv2d_geom:
        int64_t B, H, W, C, F, kh, kw, sh, sw, dh, dw, pt, pb, pl, pr, Ho, Wo
    ctypedef struct fnn_pool2d_geom:
        int64_t B, H, W, C, ph, pw, sh, sw, pt, pb, pl, pr, Ho, Wo

    int64_t fnn_conv2d_workspace_bytes(const fnn_conv2d_geom *g, int nthreads)
    void fnn_conv2d_fwd(const fnn_conv2d_geom *g, int act, const float *x,
                        const float *w, const float *bias, float *out,
                        void *work, int64_t work_bytes, int nthreads)
    void fnn_conv2d_bwd(const fnn_conv2d_geom *g, const float *x, const float *w,
                        const float *dz, float *dw, float *db, float *dx,
                        void *work, int64_t work_bytes, int nthreads)
    int fnn_conv_simd_path()
    void fnn_conv_force_generic(int on)

    void fnn_maxpool2d_fwd(const fnn_pool2d_geom *g, const float *x, float *out,
                           int32_t *arg32, int64_t *arg64, int nthreads)
    void fnn_maxpool_bwd(int64_t B, int64_t n_out, int64_t n_in, const float *dy,
                         const int32_t *arg32, const int64_t *arg64, float *dx,
                         int nthreads)
    void fnn_avgpool2d_fwd(const fnn_pool2d_geom *g, const float *x, float *out,
                           int nthreads)
    void fnn_avgpool2d_bwd(const fnn_pool2d_geom *g, const float *dy, float *dx,
                           int nthreads)
    void fnn_global_avgpool_fwd(int64_t B, int64_t HW, int64_t C, const float *x,
                                float *out, int nthreads)
    void fnn_global_avgpool_bwd(int64_t B, int64_t HW, int64_t C, const float *dy,
                                float *dx, int nthreads)
    void fnn_global_maxpool_fwd(int64_t B, int64_t HW, int64_t C, const float *x,
                                float *out, int32_t *arg32, int64_t *arg64,
                                int nthreads)
    void fnn_zeropad2d_fwd(int64_t B, int64_t H, int64_t W, int64_t C, int64_t pt,
                           int64_t pb, int64_t pl, int64_t pr, const float *x,
                           float *out, int nthreads)
    void fnn_zeropad2d_bwd(int64_t B, int64_t H, int64_t W, int64_t C, int64_t pt,
                           int64_t pb, int64_t pl, int64_t pr, const float *dy,
                           float *dx, int nthreads)

    int64_t fnn_batchnorm_workspace_bytes(int64_t rows, int64_t C)
    void fnn_batchnorm_fwd_train(int64_t rows, int64_t C, const float *x, float *out,
                                 const float *gamma, const float *beta,
                                 float *moving_mean, float *moving_var,
                                 float *save_mean, float *save_invstd,
                                 float momentum, float epsilon, void *work,
                                 int nthreads)
    void fnn_batchnorm_fwd_infer(int64_t rows, int64_t C, const float *x, float *out,
                                 const float *gamma, const float *beta,
                                 const float *moving_mean, const float *moving_var,
                                 float epsilon, int nthreads)
    void fnn_batchnorm_bwd(int64_t rows, int64_t C, const float *x, const float *dy,
                           const float *gamma, const float *save_mean,
                           const float *save_invstd, float *dx, float *dgamma,
                           float *dbeta, void *work, int nthreads)

# The C enum fnn_activation.
ACTIVATION_CODES = {"linear": 0, "relu": 1, "sigmoid": 2, "tanh": 3, "softmax": 4}

# ---------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------

cdef inline cnp.ndarray _array(str fn, str name, object obj, int kind, int ndim,
                               bint out):
    """obj as a checked C-contiguous array; ndim < 0 accepts any ndim >= 2."""
    return checked_array(fn, name, obj, kind, ndim, out, 2)


cdef cnp.ndarray _opt(str fn, str name, object obj, int kind, int ndim, bint out):
    if obj is None:
        return None
    return _array(fn, name, obj, kind, ndim, out)


cdef int _shape(str fn, str name, cnp.ndarray a, tuple want) except -1:
    if (<object>a).shape != want:
        raise ValueError(f"{fn}: argument '{name}' has shape {(<object>a).shape}, "
                         f"expected {want}")
    return 0


cdef inline void _extent(cnp.ndarray a, char **lo, char **hi) noexcept:
    cdef char *p = <char *>cnp.PyArray_DATA(a)
    lo[0] = p
    hi[0] = p + cnp.PyArray_NBYTES(a)


cdef int _no_overlap(str fn, list outs, list ins) except -1:
    """No output may share bytes with an input or with another output."""
    cdef char *alo
    cdef char *ahi
    cdef char *blo
    cdef char *bhi
    cdef Py_ssize_t i, j
    cdef list named = [(n, a) for n, a in outs + ins if a is not None]
    cdef Py_ssize_t nout = len([1 for n, a in outs if a is not None])
    for i in range(nout):
        _extent(named[i][1], &alo, &ahi)
        for j in range(i + 1, len(named)):
            _extent(named[j][1], &blo, &bhi)
            if alo < bhi and blo < ahi:
                raise ValueError(f"{fn}: output '{named[i][0]}' overlaps "
                                 f"'{named[j][0]}' in memory")
    return 0


# Geometry limits. Sizes are checked in Python integers before they reach
# the int64 fields of a geometry: a stride, dilation or window beyond int32
# and a padded image of 2**40 elements or more are refused, so no size or
# index the kernels derive from them can overflow int64 (an overflowing
# padding once wrapped to a small workspace and a write far outside it).
cdef object _MAX_STEP = 2**31 - 1
cdef object _MAX_PADDED = 2**40


cdef tuple _pair(str fn, str name, object v, int minimum):
    try:
        a, b = v
        a = operator.index(a)
        b = operator.index(b)
    except (TypeError, ValueError):
        raise ValueError(f"{fn}: argument '{name}' must be a pair of ints, got {v!r}") from None
    if a < minimum or b < minimum or a > _MAX_STEP or b > _MAX_STEP:
        raise ValueError(f"{fn}: argument '{name}' must be in [{minimum}, {_MAX_STEP}], "
                         f"got {v!r}")
    return (a, b)


cdef tuple _pad4(str fn, object v):
    try:
        t, b, l, r = v
        t = operator.index(t)
        b = operator.index(b)
        l = operator.index(l)
        r = operator.index(r)
    except (TypeError, ValueError):
        raise ValueError(f"{fn}: argument 'padding' must be 4 ints (top, bottom, left, "
                         f"right), got {v!r}") from None
    if t < 0 or b < 0 or l < 0 or r < 0:
        raise ValueError(f"{fn}: argument 'padding' must be >= 0, got {v!r}")
    return (t, b, l, r)


cdef int _threads(str fn, object n) except -1:
    try:
        k = operator.index(n)
    except TypeError:
        raise TypeError(f"{fn}: argument 'nthreads' must be an int, "
                        f"got {type(n).__name__}") from None
    if k < 1 or k > _MAX_STEP:
        raise ValueError(f"{fn}: argument 'nthreads' must be in [1, {_MAX_STEP}], got {n!r}")
    return k


cdef int _act(str fn, object act) except -1:
    try:
        return ACTIVATION_CODES[act]
    except (KeyError, TypeError):
        raise ValueError(f"{fn}: argument 'act' must be an activation in "
                         f"{tuple(ACTIVATION_CODES)}, got {act!r}") from None


cdef inline float *_f(cnp.ndarray a) noexcept:
    return NULL if a is None else <float *>cnp.PyArray_DATA(a)


# ---------------------------------------------------------------------------
# convolution
# ---------------------------------------------------------------------------

cdef int _conv_geom(str fn, tuple xs, tuple ws, object strides, object padding,
                    object dilation, fnn_conv2d_geom *g) except -1:
    cdef tuple s = _pair(fn, "strides", strides, 1)
    cdef tuple d = _pair(fn, "dilation", dilation, 1)
    cdef tuple p = _pad4(fn, padding)
    if len(xs) != 4:
        raise ValueError(f"{fn}: argument 'x' must be 4-D (B, H, W, C), got shape {xs}")
    if len(ws) != 4:
        raise ValueError(f"{fn}: argument 'w' must be 4-D (kh, kw, C, F), got shape {ws}")
    if ws[2] != xs[3]:
        raise ValueError(f"{fn}: argument 'w' has {ws[2]} input channels but 'x' "
                         f"has {xs[3]}")
    if xs[0] < 1 or xs[1] < 1 or xs[2] < 1 or xs[3] < 1 or ws[0] < 1 or ws[1] < 1 or ws[3] < 1:
        raise ValueError(f"{fn}: empty dimension in 'x' {xs} or 'w' {ws}")
    # Python integers until every size is known to be in range (see _MAX_PADDED).
    hp = xs[1] + p[0] + p[1]
    wp = xs[2] + p[2] + p[3]
    ho = hp - d[0] * (ws[0] - 1) - 1
    wo = wp - d[1] * (ws[1] - 1) - 1
    if ho < 0 or wo < 0:
        raise ValueError(f"{fn}: argument 'w' {(ws[0], ws[1])} with dilation {d} does "
                         f"not fit the padded input 'x' {(hp, wp)}")
    if hp * wp * xs[3] >= _MAX_PADDED:
        raise ValueError(f"{fn}: argument 'padding' {p} makes a padded image of "
                         f"{hp} x {wp} x {xs[3]} elements, more than fastnn supports")
    g.B, g.H, g.W, g.C = xs
    g.kh, g.kw, g.F = ws[0], ws[1], ws[3]
    g.sh, g.sw = s
    g.dh, g.dw = d
    g.pt, g.pb, g.pl, g.pr = p
    g.Ho = ho // g.sh + 1
    g.Wo = wo // g.sw + 1
    return 0


def conv2d_workspace_bytes(tuple x_shape, tuple w_shape, strides, padding, dilation,
                           nthreads):
    """Bytes of ``work`` conv2d_fwd / conv2d_bwd need for these shapes."""
    cdef fnn_conv2d_geom g
    _conv_geom("conv2d_workspace_bytes", x_shape, w_shape, strides, padding, dilation, &g)
    n = _threads("conv2d_workspace_bytes", nthreads)
    # shared + n * per-thread, multiplied here so a large n cannot overflow int64
    one = fnn_conv2d_workspace_bytes(&g, 1)
    return one + (n - 1) * (fnn_conv2d_workspace_bytes(&g, 2) - one)


def conv2d_output_shape(tuple x_shape, tuple w_shape, strides, padding, dilation):
    """(B, Ho, Wo, F) for these arguments (raises like conv2d_fwd)."""
    cdef fnn_conv2d_geom g
    _conv_geom("conv2d_output_shape", x_shape, w_shape, strides, padding, dilation, &g)
    return (g.B, g.Ho, g.Wo, g.F)


cdef int _work(str fn, cnp.ndarray work, int64_t need) except -1:
    if cnp.PyArray_NBYTES(work) < need:
        raise ValueError(f"{fn}: argument 'work' has {cnp.PyArray_NBYTES(work)} bytes, "
                         f"needs at least {need}")
    return 0


def conv2d_fwd(x, w, b, out, strides, padding, dilation, act, work, nthreads):
    """out = act(conv2d(x, w) + b); see fnn_conv2d_fwd."""
    fn = "conv2d_fwd"
    cdef cnp.ndarray ax = _array(fn, "x", x, F32, 4, False)
    cdef cnp.ndarray aw = _array(fn, "w", w, F32, 4, False)
    cdef cnp.ndarray ab = _opt(fn, "b", b, F32, 1, False)
    cdef cnp.ndarray ao = _array(fn, "out", out, F32, 4, True)
    cdef cnp.ndarray awk = _array(fn, "work", work, U8, 1, True)
    cdef fnn_conv2d_geom g
    _conv_geom(fn, (<object>ax).shape, (<object>aw).shape, strides, padding, dilation, &g)
    if ab is not None:
        _shape(fn, "b", ab, (g.F,))
    _shape(fn, "out", ao, (g.B, g.Ho, g.Wo, g.F))
    cdef int code = _act(fn, act)
    cdef int nt = _threads(fn, nthreads)
    cdef int64_t wbytes = cnp.PyArray_NBYTES(awk)
    _work(fn, awk, fnn_conv2d_workspace_bytes(&g, 1))
    _no_overlap(fn, [("out", ao), ("work", awk)], [("x", ax), ("w", aw), ("b", ab)])
    cdef void *wk = cnp.PyArray_DATA(awk)
    cdef float *p_ax = _f(ax)
    cdef float *p_aw = _f(aw)
    cdef float *p_ab = _f(ab)
    cdef float *p_ao = _f(ao)
    with nogil:
        fnn_conv2d_fwd(&g, code, p_ax, p_aw, p_ab, p_ao, wk, wbytes, nt)


def conv2d_bwd(x, w, dz, dw, db, dx, strides, padding, dilation, work, nthreads):
    """dw, db, dx from dz (w.r.t. the pre-activation); see fnn_conv2d_bwd."""
    fn = "conv2d_bwd"
    cdef cnp.ndarray ax = _array(fn, "x", x, F32, 4, False)
    cdef cnp.ndarray aw = _array(fn, "w", w, F32, 4, False)
    cdef cnp.ndarray adz = _array(fn, "dz", dz, F32, 4, False)
    cdef cnp.ndarray adw = _opt(fn, "dw", dw, F32, 4, True)
    cdef cnp.ndarray adb = _opt(fn, "db", db, F32, 1, True)
    cdef cnp.ndarray adx = _opt(fn, "dx", dx, F32, 4, True)
    cdef cnp.ndarray awk = _array(fn, "work", work, U8, 1, True)
    cdef fnn_conv2d_geom g
    _conv_geom(fn, (<object>ax).shape, (<object>aw).shape, strides, padding, dilation, &g)
    _shape(fn, "dz", adz, (g.B, g.Ho, g.Wo, g.F))
    if adw is not None:
        _shape(fn, "dw", adw, (<object>aw).shape)
    if adb is not None:
        _shape(fn, "db", adb, (g.F,))
    if adx is not None:
        _shape(fn, "dx", adx, (<object>ax).shape)
    cdef int nt = _threads(fn, nthreads)
    cdef int64_t wbytes = cnp.PyArray_NBYTES(awk)
    _work(fn, awk, fnn_conv2d_workspace_bytes(&g, 1))
    _no_overlap(fn, [("dw", adw), ("db", adb), ("dx", adx), ("work", awk)],
                [("x", ax), ("w", aw), ("dz", adz)])
    cdef void *wk = cnp.PyArray_DATA(awk)
    cdef float *p_ax = _f(ax)
    cdef float *p_aw = _f(aw)
    cdef float *p_adz = _f(adz)
    cdef float *p_adw = _f(adw)
    cdef float *p_adb = _f(adb)
    cdef float *p_adx = _f(adx)
    with nogil:
        fnn_conv2d_bwd(&g, p_ax, p_aw, p_adz, p_adw, p_adb, p_adx,
                       wk, wbytes, nt)


def simd_path():
    """1 when the conv kernels run their AVX2+FMA path, else 0."""
    return fnn_conv_simd_path()


def force_generic(bint on):
    """Forces the conv kernels onto their plain C path (for tests)."""
    fnn_conv_force_generic(1 if on else 0)


# ---------------------------------------------------------------------------
# pooling and padding
# ---------------------------------------------------------------------------

cdef int _pool_geom(str fn, tuple xs, object pool, object strides, object padding,
                    fnn_pool2d_geom *g) except -1:
    cdef tuple k = _pair(fn, "pool", pool, 1)
    cdef tuple s = _pair(fn, "strides", strides, 1)
    cdef tuple p = _pad4(fn, padding)
    if xs[0] < 1 or xs[1] < 1 or xs[2] < 1 or xs[3] < 1:
        raise ValueError(f"{fn}: argument 'x' has an empty dimension: {xs}")
    if p[0] >= k[0] or p[1] >= k[0] or p[2] >= k[1] or p[3] >= k[1]:
        raise ValueError(f"{fn}: argument 'padding' {p} must be smaller than the "
                         f"pool window {k} on each side")
    g.B, g.H, g.W, g.C = xs
    g.ph, g.pw = k
    g.sh, g.sw = s
    g.pt, g.pb, g.pl, g.pr = p
    cdef int64_t ho = g.H + g.pt + g.pb - g.ph
    cdef int64_t wo = g.W + g.pl + g.pr - g.pw
    if ho < 0 or wo < 0:
        raise ValueError(f"{fn}: argument 'pool' {k} does not fit the padded input 'x' "
                         f"{(g.H + g.pt + g.pb, g.W + g.pl + g.pr)}")
    g.Ho = ho // g.sh + 1
    g.Wo = wo // g.sw + 1
    return 0


def pool2d_output_shape(tuple x_shape, pool, strides, padding):
    """(B, Ho, Wo, C) for these arguments (raises like the pool kernels)."""
    cdef fnn_pool2d_geom g
    _pool_geom("pool2d_output_shape", x_shape, pool, strides, padding, &g)
    return (g.B, g.Ho, g.Wo, g.C)


cdef int _index_fits(str fn, cnp.ndarray arg, int64_t n_in) except -1:
    if cnp.PyArray_ITEMSIZE(arg) == 4 and n_in > 2147483647:
        raise ValueError(f"{fn}: argument 'argmax' is int32 but an image has {n_in} "
                         f"elements; use int64")
    return 0


def maxpool2d_fwd(x, out, argmax, pool, strides, padding, nthreads):
    """out = window max, argmax = its flat index within the image."""
    fn = "maxpool2d_fwd"
    cdef cnp.ndarray ax = _array(fn, "x", x, F32, 4, False)
    cdef cnp.ndarray ao = _array(fn, "out", out, F32, 4, True)
    cdef cnp.ndarray aa = _array(fn, "argmax", argmax, INDEX, 4, True)
    cdef fnn_pool2d_geom g
    _pool_geom(fn, (<object>ax).shape, pool, strides, padding, &g)
    _shape(fn, "out", ao, (g.B, g.Ho, g.Wo, g.C))
    _shape(fn, "argmax", aa, (g.B, g.Ho, g.Wo, g.C))
    _index_fits(fn, aa, g.H * g.W * g.C)
    cdef int nt = _threads(fn, nthreads)
    _no_overlap(fn, [("out", ao), ("argmax", aa)], [("x", ax)])
    cdef int32_t *w32 = NULL
    cdef int64_t *w64 = NULL
    if cnp.PyArray_ITEMSIZE(aa) == 8:
        w64 = <int64_t *>cnp.PyArray_DATA(aa)
    else:
        w32 = <int32_t *>cnp.PyArray_DATA(aa)
    cdef float *p_ax = _f(ax)
    cdef float *p_ao = _f(ao)
    with nogil:
        fnn_maxpool2d_fwd(&g, p_ax, p_ao, w32, w64, nt)


def global_maxpool_fwd(x, out, argmax, nthreads):
    """out (B, C) = max over pixels; argmax = pixel*C + c."""
    fn = "global_maxpool_fwd"
    cdef cnp.ndarray ax = _array(fn, "x", x, F32, 4, False)
    cdef cnp.ndarray ao = _array(fn, "out", out, F32, 2, True)
    cdef cnp.ndarray aa = _array(fn, "argmax", argmax, INDEX, 2, True)
    b, h, w, c = (<object>ax).shape
    if b < 1 or h < 1 or w < 1 or c < 1:
        raise ValueError(f"{fn}: argument 'x' has an empty dimension: {(<object>ax).shape}")
    _shape(fn, "out", ao, (b, c))
    _shape(fn, "argmax", aa, (b, c))
    _index_fits(fn, aa, h * w * c)
    cdef int nt = _threads(fn, nthreads)
    _no_overlap(fn, [("out", ao), ("argmax", aa)], [("x", ax)])
    cdef int32_t *w32 = NULL
    cdef int64_t *w64 = NULL
    if cnp.PyArray_ITEMSIZE(aa) == 8:
        w64 = <int64_t *>cnp.PyArray_DATA(aa)
    else:
        w32 = <int32_t *>cnp.PyArray_DATA(aa)
    cdef int64_t B = b, HW = h * w, C = c
    cdef float *p_ax = _f(ax)
    cdef float *p_ao = _f(ao)
    with nogil:
        fnn_global_maxpool_fwd(B, HW, C, p_ax, p_ao, w32, w64, nt)


def maxpool_bwd(dy, argmax, dx, nthreads):
    """dx = 0, then dx[b].flat[argmax[b]] += dy[b] (2-D or global max pool)."""
    fn = "maxpool_bwd"
    cdef cnp.ndarray ady = _array(fn, "dy", dy, F32, -1, False)
    cdef cnp.ndarray aa = _array(fn, "argmax", argmax, INDEX, -1, False)
    cdef cnp.ndarray adx = _array(fn, "dx", dx, F32, 4, True)
    if (<object>aa).shape != (<object>ady).shape:
        raise ValueError(f"{fn}: argument 'argmax' has shape {(<object>aa).shape} but "
                         f"'dy' has shape {(<object>ady).shape}; they must match")
    cdef int64_t B = cnp.PyArray_DIM(adx, 0)
    if cnp.PyArray_DIM(ady, 0) != B or B < 1:
        raise ValueError(f"{fn}: arguments 'dy' {(<object>ady).shape} and 'dx' "
                         f"{(<object>adx).shape} must have the same non-zero batch size")
    cdef int64_t n_out = cnp.PyArray_SIZE(ady) // B
    cdef int64_t n_in = cnp.PyArray_SIZE(adx) // B
    cdef int nt = _threads(fn, nthreads)
    _no_overlap(fn, [("dx", adx)], [("dy", ady), ("argmax", aa)])
    # an out-of-range index would write outside dx: check them all (cheap
    # next to the scatter, and argmax may come from anywhere)
    cdef object amin, amax
    if cnp.PyArray_SIZE(aa) > 0:
        amin = (<object>aa).min()
        amax = (<object>aa).max()
        if amin < 0 or amax >= n_in:
            raise ValueError(f"{fn}: argument 'argmax' holds indices in [{amin}, {amax}] "
                             f"but an image of 'dx' has {n_in} elements")
    cdef const int32_t *a32 = NULL
    cdef const int64_t *a64 = NULL
    if cnp.PyArray_ITEMSIZE(aa) == 8:
        a64 = <const int64_t *>cnp.PyArray_DATA(aa)
    else:
        a32 = <const int32_t *>cnp.PyArray_DATA(aa)
    cdef float *p_ady = _f(ady)
    cdef float *p_adx = _f(adx)
    with nogil:
        fnn_maxpool_bwd(B, n_out, n_in, p_ady, a32, a64, p_adx, nt)


def avgpool2d_fwd(x, out, pool, strides, padding, nthreads):
    """out = mean of each window's in-image elements."""
    fn = "avgpool2d_fwd"
    cdef cnp.ndarray ax = _array(fn, "x", x, F32, 4, False)
    cdef cnp.ndarray ao = _array(fn, "out", out, F32, 4, True)
    cdef fnn_pool2d_geom g
    _pool_geom(fn, (<object>ax).shape, pool, strides, padding, &g)
    _shape(fn, "out", ao, (g.B, g.Ho, g.Wo, g.C))
    cdef int nt = _threads(fn, nthreads)
    _no_overlap(fn, [("out", ao)], [("x", ax)])
    cdef float *p_ax = _f(ax)
    cdef float *p_ao = _f(ao)
    with nogil:
        fnn_avgpool2d_fwd(&g, p_ax, p_ao, nt)


def avgpool2d_bwd(dy, dx, pool, strides, padding, nthreads):
    """dx = 0, then each window's in-image elements += dy / count."""
    fn = "avgpool2d_bwd"
    cdef cnp.ndarray ady = _array(fn, "dy", dy, F32, 4, False)
    cdef cnp.ndarray adx = _array(fn, "dx", dx, F32, 4, True)
    cdef fnn_pool2d_geom g
    _pool_geom(fn, (<object>adx).shape, pool, strides, padding, &g)
    _shape(fn, "dy", ady, (g.B, g.Ho, g.Wo, g.C))
    cdef int nt = _threads(fn, nthreads)
    _no_overlap(fn, [("dx", adx)], [("dy", ady)])
    cdef float *p_ady = _f(ady)
    cdef float *p_adx = _f(adx)
    with nogil:
        fnn_avgpool2d_bwd(&g, p_ady, p_adx, nt)


def global_avgpool_fwd(x, out, nthreads):
    """out (B, C) = mean over pixels of x (B, H, W, C)."""
    fn = "global_avgpool_fwd"
    cdef cnp.ndarray ax = _array(fn, "x", x, F32, 4, False)
    cdef cnp.ndarray ao = _array(fn, "out", out, F32, 2, True)
    b, h, w, c = (<object>ax).shape
    if b < 1 or h < 1 or w < 1 or c < 1:
        raise ValueError(f"{fn}: argument 'x' has an empty dimension: {(<object>ax).shape}")
    _shape(fn, "out", ao, (b, c))
    cdef int nt = _threads(fn, nthreads)
    _no_overlap(fn, [("out", ao)], [("x", ax)])
    cdef int64_t B = b, HW = h * w, C = c
    cdef float *p_ax = _f(ax)
    cdef float *p_ao = _f(ao)
    with nogil:
        fnn_global_avgpool_fwd(B, HW, C, p_ax, p_ao, nt)


def global_avgpool_bwd(dy, dx, nthreads):
    """dx[b, h, w, c] = dy[b, c] / (H*W)."""
    fn = "global_avgpool_bwd"
    cdef cnp.ndarray ady = _array(fn, "dy", dy, F32, 2, False)
    cdef cnp.ndarray adx = _array(fn, "dx", dx, F32, 4, True)
    b, h, w, c = (<object>adx).shape
    if b < 1 or h < 1 or w < 1 or c < 1:
        raise ValueError(f"{fn}: argument 'dx' has an empty dimension: {(<object>adx).shape}")
    _shape(fn, "dy", ady, (b, c))
    cdef int nt = _threads(fn, nthreads)
    _no_overlap(fn, [("dx", adx)], [("dy", ady)])
    cdef int64_t B = b, HW = h * w, C = c
    cdef float *p_ady = _f(ady)
    cdef float *p_adx = _f(adx)
    with nogil:
        fnn_global_avgpool_bwd(B, HW, C, p_ady, p_adx, nt)


def zeropad2d_fwd(x, out, padding, nthreads):
    """out = x with zero rows/columns around it."""
    fn = "zeropad2d_fwd"
    cdef cnp.ndarray ax = _array(fn, "x", x, F32, 4, False)
    cdef cnp.ndarray ao = _array(fn, "out", out, F32, 4, True)
    cdef tuple p = _pad4(fn, padding)
    b, h, w, c = (<object>ax).shape
    _shape(fn, "out", ao, (b, h + p[0] + p[1], w + p[2] + p[3], c))
    cdef int nt = _threads(fn, nthreads)
    _no_overlap(fn, [("out", ao)], [("x", ax)])
    cdef int64_t B = b, H = h, W = w, C = c, pt = p[0], pb = p[1], pl = p[2], pr = p[3]
    cdef float *p_ax = _f(ax)
    cdef float *p_ao = _f(ao)
    with nogil:
        fnn_zeropad2d_fwd(B, H, W, C, pt, pb, pl, pr, p_ax, p_ao, nt)


def zeropad2d_bwd(dy, dx, padding, nthreads):
    """dx = the interior of dy."""
    fn = "zeropad2d_bwd"
    cdef cnp.ndarray ady = _array(fn, "dy", dy, F32, 4, False)
    cdef cnp.ndarray adx = _array(fn, "dx", dx, F32, 4, True)
    cdef tuple p = _pad4(fn, padding)
    b, h, w, c = (<object>adx).shape
    _shape(fn, "dy", ady, (b, h + p[0] + p[1], w + p[2] + p[3], c))
    cdef int nt = _threads(fn, nthreads)
    _no_overlap(fn, [("dx", adx)], [("dy", ady)])
    cdef int64_t B = b, H = h, W = w, C = c, pt = p[0], pb = p[1], pl = p[2], pr = p[3]
    cdef float *p_ady = _f(ady)
    cdef float *p_adx = _f(adx)
    with nogil:
        fnn_zeropad2d_bwd(B, H, W, C, pt, pb, pl, pr, p_ady, p_adx, nt)


# ---------------------------------------------------------------------------
# batch normalisation
# ---------------------------------------------------------------------------

cdef tuple _rows_c(str fn, cnp.ndarray x):
    cdef int64_t C = cnp.PyArray_DIM(x, cnp.PyArray_NDIM(x) - 1)
    cdef int64_t rows = cnp.PyArray_SIZE(x) // C if C > 0 else 0
    if rows < 1 or C < 1:
        raise ValueError(f"{fn}: argument 'x' must not be empty, got shape {(<object>x).shape}")
    return rows, C


def batchnorm_workspace_bytes(int64_t rows, int64_t channels):
    """Bytes of ``work`` batchnorm_fwd_train / batchnorm_bwd need."""
    if rows < 1 or channels < 1:
        raise ValueError(f"batchnorm_workspace_bytes: rows and channels must be >= 1, "
                         f"got {rows}, {channels}")
    return fnn_batchnorm_workspace_bytes(rows, channels)


def batchnorm_fwd_train(x, out, gamma, beta, moving_mean, moving_var, save_mean,
                        save_invstd, float momentum, float epsilon, work, nthreads):
    """Training-mode batch norm over the last axis of x; see fnn_batchnorm_fwd_train."""
    fn = "batchnorm_fwd_train"
    cdef cnp.ndarray ax = _array(fn, "x", x, F32, -1, False)
    cdef cnp.ndarray ao = _array(fn, "out", out, F32, -1, True)
    cdef cnp.ndarray ag = _opt(fn, "gamma", gamma, F32, 1, False)
    cdef cnp.ndarray ab = _opt(fn, "beta", beta, F32, 1, False)
    cdef cnp.ndarray amm = _array(fn, "moving_mean", moving_mean, F32, 1, True)
    cdef cnp.ndarray amv = _array(fn, "moving_var", moving_var, F32, 1, True)
    cdef cnp.ndarray asm = _array(fn, "save_mean", save_mean, F32, 1, True)
    cdef cnp.ndarray asi = _array(fn, "save_invstd", save_invstd, F32, 1, True)
    cdef cnp.ndarray awk = _array(fn, "work", work, U8, 1, True)
    rows, C = _rows_c(fn, ax)
    _shape(fn, "out", ao, (<object>ax).shape)
    for name, a in (("gamma", ag), ("beta", ab), ("moving_mean", amm),
                    ("moving_var", amv), ("save_mean", asm), ("save_invstd", asi)):
        if a is not None:
            _shape(fn, name, a, (C,))
    if not epsilon > 0.0:
        raise ValueError(f"{fn}: argument 'epsilon' must be > 0, got {epsilon}")
    cdef int nt = _threads(fn, nthreads)
    _work(fn, awk, fnn_batchnorm_workspace_bytes(rows, C))
    _no_overlap(fn, [("out", ao), ("moving_mean", amm), ("moving_var", amv),
                     ("save_mean", asm), ("save_invstd", asi), ("work", awk)],
                [("x", ax), ("gamma", ag), ("beta", ab)])
    cdef int64_t r = rows, c = C
    cdef void *wk = cnp.PyArray_DATA(awk)
    cdef float *p_ax = _f(ax)
    cdef float *p_ao = _f(ao)
    cdef float *p_ag = _f(ag)
    cdef float *p_ab = _f(ab)
    cdef float *p_amm = _f(amm)
    cdef float *p_amv = _f(amv)
    cdef float *p_asm = _f(asm)
    cdef float *p_asi = _f(asi)
    with nogil:
        fnn_batchnorm_fwd_train(r, c, p_ax, p_ao, p_ag, p_ab, p_amm, p_amv,
                                p_asm, p_asi, momentum, epsilon, wk, nt)


def batchnorm_fwd_infer(x, out, gamma, beta, moving_mean, moving_var, float epsilon,
                        nthreads):
    """Inference-mode batch norm with the moving statistics."""
    fn = "batchnorm_fwd_infer"
    cdef cnp.ndarray ax = _array(fn, "x", x, F32, -1, False)
    cdef cnp.ndarray ao = _array(fn, "out", out, F32, -1, True)
    cdef cnp.ndarray ag = _opt(fn, "gamma", gamma, F32, 1, False)
    cdef cnp.ndarray ab = _opt(fn, "beta", beta, F32, 1, False)
    cdef cnp.ndarray amm = _array(fn, "moving_mean", moving_mean, F32, 1, False)
    cdef cnp.ndarray amv = _array(fn, "moving_var", moving_var, F32, 1, False)
    rows, C = _rows_c(fn, ax)
    _shape(fn, "out", ao, (<object>ax).shape)
    for name, a in (("gamma", ag), ("beta", ab), ("moving_mean", amm), ("moving_var", amv)):
        if a is not None:
            _shape(fn, name, a, (C,))
    if not epsilon > 0.0:
        raise ValueError(f"{fn}: argument 'epsilon' must be > 0, got {epsilon}")
    cdef int nt = _threads(fn, nthreads)
    _no_overlap(fn, [("out", ao)], [("x", ax), ("gamma", ag), ("beta", ab),
                                    ("moving_mean", amm), ("moving_var", amv)])
    cdef int64_t r = rows, c = C
    cdef float *p_ax = _f(ax)
    cdef float *p_ao = _f(ao)
    cdef float *p_ag = _f(ag)
    cdef float *p_ab = _f(ab)
    cdef float *p_amm = _f(amm)
    cdef float *p_amv = _f(amv)
    with nogil:
        fnn_batchnorm_fwd_infer(r, c, p_ax, p_ao, p_ag, p_ab, p_amm, p_amv,
                                epsilon, nt)


def batchnorm_bwd(x, dy, gamma, save_mean, save_invstd, dx, dgamma, dbeta, work,
                  nthreads):
    """dx, dgamma, dbeta of the training forward; see fnn_batchnorm_bwd."""
    fn = "batchnorm_bwd"
    cdef cnp.ndarray ax = _array(fn, "x", x, F32, -1, False)
    cdef cnp.ndarray ady = _array(fn, "dy", dy, F32, -1, False)
    cdef cnp.ndarray ag = _opt(fn, "gamma", gamma, F32, 1, False)
    cdef cnp.ndarray asm = _array(fn, "save_mean", save_mean, F32, 1, False)
    cdef cnp.ndarray asi = _array(fn, "save_invstd", save_invstd, F32, 1, False)
    cdef cnp.ndarray adx = _array(fn, "dx", dx, F32, -1, True)
    cdef cnp.ndarray adg = _opt(fn, "dgamma", dgamma, F32, 1, True)
    cdef cnp.ndarray adb = _opt(fn, "dbeta", dbeta, F32, 1, True)
    cdef cnp.ndarray awk = _array(fn, "work", work, U8, 1, True)
    rows, C = _rows_c(fn, ax)
    _shape(fn, "dy", ady, (<object>ax).shape)
    _shape(fn, "dx", adx, (<object>ax).shape)
    for name, a in (("gamma", ag), ("save_mean", asm), ("save_invstd", asi),
                    ("dgamma", adg), ("dbeta", adb)):
        if a is not None:
            _shape(fn, name, a, (C,))
    cdef int nt = _threads(fn, nthreads)
    _work(fn, awk, fnn_batchnorm_workspace_bytes(rows, C))
    _no_overlap(fn, [("dx", adx), ("dgamma", adg), ("dbeta", adb), ("work", awk)],
                [("x", ax), ("dy", ady), ("gamma", ag), ("save_mean", asm),
                 ("save_invstd", asi)])
    cdef int64_t r = rows, c = C
    cdef void *wk = cnp.PyArray_DATA(awk)
    cdef float *p_ax = _f(ax)
    cdef float *p_ady = _f(ady)
    cdef float *p_ag = _f(ag)
    cdef float *p_asm = _f(asm)
    cdef float *p_asi = _f(asi)
    cdef float *p_adx = _f(adx)
    cdef float *p_adg = _f(adg)
    cdef float *p_adb = _f(adb)
    with nogil:
        fnn_batchnorm_bwd(r, c, p_ax, p_ady, p_ag, p_asm, p_asi, p_adx,
                          p_adg, p_adb, wk, nt)
