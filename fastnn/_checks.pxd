# The argument checks every Cython wrapper module shares (fastnn/_checks.pyx):
# ``from fastnn._checks cimport F32, checked_array``.
cimport numpy as cnp

cdef enum Kind:
    F32 = 0
    I32 = 1
    I64 = 2
    U8 = 3
    INDEX = 4  # int32 or int64

cdef bint dtype_ok(cnp.ndarray a, int kind) noexcept
cdef cnp.ndarray checked_array(str fn, str name, object obj, int kind, int ndim,
                               bint out, int min_ndim, bint contiguous=*)
