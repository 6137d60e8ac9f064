"""Level-1 BLAS (saxpby, saxpy) from the OpenBLAS that numpy itself uses.

numpy has no fused multiply-add over arrays: `h = m*h - lr*g` costs three
passes over memory in numpy and one in BLAS's `saxpby`, which OpenBLAS also
spreads over its threads. The updaters use these for their largest cost.

`saxpby(a, x, b, y)` computes y = a*x + b*y in place; `saxpy(a, x, y)`
computes y += a*x. Both need C-contiguous float32 arrays of one size.
`available()` is False where no such library is found (numpy built against
another BLAS); callers then use numpy.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os

import numpy as np

_saxpby = None
_saxpy = None


def _load() -> None:
    global _saxpby, _saxpy
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
        except (OSError, AttributeError):
            continue
        ptr, f = ctypes.c_void_p, ctypes.c_float
        axpby.restype = axpy.restype = None
        axpby.argtypes = [int_t, f, ptr, int_t, f, ptr, int_t]
        axpy.argtypes = [int_t, f, ptr, int_t, ptr, int_t]
        _saxpby, _saxpy = axpby, axpy
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
