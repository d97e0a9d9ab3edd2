# cython: language_level=3, boundscheck=False, wraparound=False
"""Argument checks shared by the kernel wrappers (fastnn/_C.pyx, fastnn/_conv.pyx).

Each raises ``TypeError`` (not an ndarray, wrong dtype) or ``ValueError`` (ndim,
contiguity, alignment, read-only output), naming the calling function and the
argument, so the C kernels can trust what they are given.
"""
cimport numpy as cnp

cnp.import_array()

cdef tuple _KIND_NAMES = ("float32", "int32", "int64", "uint8", "int32 or int64")


cdef bint dtype_ok(cnp.ndarray a, int kind) noexcept:
    """Native-byte-order ``kind``; int32/int64 may be spelled by several type
    numbers (int/long/longlong) by platform: size and signedness are what C uses."""
    cdef int tn = cnp.PyArray_TYPE(a)
    cdef Py_ssize_t size = cnp.PyArray_ITEMSIZE(a)
    if not cnp.PyArray_ISNOTSWAPPED(a):
        return False
    if kind == F32:
        return tn == cnp.NPY_FLOAT
    if kind == U8:
        return tn == cnp.NPY_UBYTE
    if not cnp.PyTypeNum_ISSIGNED(tn) or not cnp.PyTypeNum_ISINTEGER(tn):
        return False
    if kind == I32:
        return size == 4
    if kind == I64:
        return size == 8
    return size == 4 or size == 8


cdef cnp.ndarray checked_array(str fn, str name, object obj, int kind, int ndim,
                               bint out, int min_ndim, bint contiguous=True):
    """obj as a checked, aligned array of ``kind``, C-contiguous unless
    ``contiguous`` is False (the caller then checks the strides it accepts);
    ``ndim`` >= 0 asks for exactly that many dimensions, otherwise at least
    ``min_ndim``."""
    if not isinstance(obj, cnp.ndarray):
        raise TypeError(f"{fn}: argument '{name}' must be a numpy.ndarray, "
                        f"got {type(obj).__name__}")
    cdef cnp.ndarray a = <cnp.ndarray>obj
    if not dtype_ok(a, kind):
        raise TypeError(f"{fn}: argument '{name}' must have dtype {_KIND_NAMES[kind]} "
                        f"(native byte order), got {(<object>a).dtype}")
    cdef int nd = cnp.PyArray_NDIM(a)
    if ndim >= 0 and nd != ndim:
        raise ValueError(f"{fn}: argument '{name}' must be {ndim}-D, "
                         f"got shape {(<object>a).shape}")
    if ndim < 0 and nd < min_ndim:
        raise ValueError(f"{fn}: argument '{name}' must have at least {min_ndim} "
                         f"dimension{'s' if min_ndim > 1 else ''}, "
                         f"got shape {(<object>a).shape}")
    if contiguous and not cnp.PyArray_IS_C_CONTIGUOUS(a):
        raise ValueError(f"{fn}: argument '{name}' must be C-contiguous, got strides "
                         f"{(<object>a).strides} for shape {(<object>a).shape} "
                         f"(use numpy.ascontiguousarray)")
    if not cnp.PyArray_ISALIGNED(a):
        raise ValueError(f"{fn}: argument '{name}' is not aligned for its dtype")
    if out and not cnp.PyArray_ISWRITEABLE(a):
        raise ValueError(f"{fn}: output argument '{name}' is read-only")
    return a
