"""BLAS calls numpy does not offer, from the OpenBLAS that numpy itself uses.

numpy has no fused multiply-add over arrays: `h = m*h - lr*g` costs three
passes over memory in numpy and one in BLAS's `saxpby`, which OpenBLAS also
spreads over its threads. The updaters use these for their largest cost.
Nor can `np.matmul` accumulate into its output (GEMM's beta); convolution
sums several products into one output with `sgemm`.

`saxpby(a, x, b, y)` computes y = a*x + b*y in place; `saxpy(a, x, y)`
computes y += a*x; `sscal(a, x)` x *= a. They need C-contiguous float32
arrays of one size. OpenBLAS spreads saxpy and sscal over its threads but
runs saxpby on one: on memory-bound arrays sscal + saxpy is the faster
saxpby when there are several threads.
`available()` is False where no such library is found (numpy built against
another BLAS); callers then use numpy. `sgemm` works either way (numpy is its
fallback).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
from typing import Any

import numpy as np

# ctypes functions, set by _load() when a CBLAS library is found
_saxpby: Any = None
_saxpy: Any = None
_sscal: Any = None
_sgemm: Any = None

# CBLAS enums
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112


def _load() -> None:
    global _saxpby, _saxpy, _sscal, _sgemm
    candidates: list[tuple[str, str, type]] = []
    libs_dir = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    # numpy's wheels bundle scipy-openblas (64-bit ints, prefixed symbols)
    for path in sorted(glob.glob(os.path.join(libs_dir, "libscipy_openblas64_*.so*"))):
        candidates.append((path, "scipy_cblas_{}64_", ctypes.c_int64))
    for path in sorted(glob.glob(os.path.join(libs_dir, "libscipy_openblas*.so*"))):
        candidates.append((path, "scipy_cblas_{}", ctypes.c_int))
    system = ctypes.util.find_library("openblas")
    if system:
        candidates.append((system, "cblas_{}", ctypes.c_int))
    for path, pattern, int_t in candidates:
        try:
            lib = ctypes.CDLL(path)
            axpby = getattr(lib, pattern.format("saxpby"))
            axpy = getattr(lib, pattern.format("saxpy"))
            scal = getattr(lib, pattern.format("sscal"))
            gemm = getattr(lib, pattern.format("sgemm"))
        except (OSError, AttributeError):
            continue
        ptr, f, enum = ctypes.c_void_p, ctypes.c_float, ctypes.c_int
        axpby.restype = axpy.restype = scal.restype = gemm.restype = None
        axpby.argtypes = [int_t, f, ptr, int_t, f, ptr, int_t]
        axpy.argtypes = [int_t, f, ptr, int_t, ptr, int_t]
        scal.argtypes = [int_t, f, ptr, int_t]
        gemm.argtypes = [enum, enum, enum, int_t, int_t, int_t, f, ptr, int_t, ptr, int_t,
                         f, ptr, int_t]
        _saxpby, _saxpy, _sscal, _sgemm = axpby, axpy, scal, gemm
        return


_load()


def available() -> bool:
    return _saxpby is not None


def usable(*arrays: np.ndarray) -> bool:
    """Whether the arrays can be handed to BLAS as they are."""
    return _saxpby is not None and all(
        a.dtype == np.float32 and a.flags.c_contiguous and a.size == arrays[0].size
        for a in arrays)


def saxpby(a: float, x: np.ndarray, b: float, y: np.ndarray) -> None:
    _saxpby(y.size, a, x.ctypes.data, 1, b, y.ctypes.data, 1)


def saxpy(a: float, x: np.ndarray, y: np.ndarray) -> None:
    _saxpy(y.size, a, x.ctypes.data, 1, y.ctypes.data, 1)


def sscal(a: float, x: np.ndarray) -> None:
    _sscal(x.size, a, x.ctypes.data, 1)


def _ld(m: np.ndarray) -> int | None:
    """The leading dimension of a 2-D float32 view with contiguous rows, else None."""
    if m.dtype != np.float32 or m.ndim != 2 or (m.shape[1] > 1 and m.strides[1] != 4):
        return None
    if m.shape[0] <= 1:
        return max(1, m.shape[1])
    if m.strides[0] % 4 or m.strides[0] < 4 * m.shape[1]:
        return None
    return m.strides[0] // 4


def sgemm(a: np.ndarray, b: np.ndarray, c: np.ndarray, beta: float = 0.0,
          trans_a: bool = False, trans_b: bool = False) -> None:
    """c = op(a) @ op(b) + beta * c in place, op(m) = m.T when its flag is set.

    a, b, c are 2-D float32 arrays whose rows are contiguous; the rows may be
    further apart than their length (a window of a wider array), so a product
    can read or accumulate into part of a larger buffer without a copy.
    """
    opa = a.T if trans_a else a
    opb = b.T if trans_b else b
    m, k = opa.shape
    n = opb.shape[1]
    if opb.shape[0] != k or c.shape != (m, n):
        raise ValueError(f"sgemm: shapes {opa.shape} @ {opb.shape} -> {c.shape}")
    lds: tuple[int | None, ...] = (_ld(a), _ld(b), _ld(c)) if _sgemm is not None else (None,)
    if None in lds or min(m, n, k) == 0:
        if beta == 0.0:
            np.matmul(opa, opb, out=c)
        else:
            c *= beta
            c += opa @ opb
        return
    _sgemm(_ROW_MAJOR, _TRANS if trans_a else _NO_TRANS, _TRANS if trans_b else _NO_TRANS,
           m, n, k, 1.0, a.ctypes.data, lds[0], b.ctypes.data, lds[1], beta, c.ctypes.data,
           lds[2])
