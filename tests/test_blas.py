"""runtime.blas: saxpby/saxpy/sscal and sgemm (on windows of larger arrays, with
beta accumulation, both transpositions) against numpy, with and without the
BLAS library (numpy is the fallback)."""
import numpy as np
import pytest

from runtime import blas

rng = np.random.default_rng(5)


@pytest.fixture(params=["blas", "numpy fallback"])
def backend(request, monkeypatch):
    if request.param == "numpy fallback":
        monkeypatch.setattr(blas, "_sgemm", None)
    elif not blas.available():
        pytest.skip("no BLAS library found")
    return request.param


def f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (True, False), (False, True),
                                              (True, True)])
@pytest.mark.parametrize("beta", [0.0, 1.0, 0.5])
def test_sgemm_matches_numpy(trans_a, trans_b, beta, backend):
    m, k, n = 5, 7, 6
    a = f32(k, m) if trans_a else f32(m, k)
    b = f32(n, k) if trans_b else f32(k, n)
    c = f32(m, n)
    want = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b) + beta * c
    blas.sgemm(a, b, c, beta=beta, trans_a=trans_a, trans_b=trans_b)
    np.testing.assert_allclose(c, want, rtol=1e-5, atol=1e-5)


def test_sgemm_on_windows_of_larger_arrays(backend):
    big_a, big_b, big_c = f32(9, 20), f32(12, 30), f32(10, 40)
    a = big_a[2:6, 3:10]        # 4 x 7, rows 20 apart
    b = big_b[1:8, 5:16]        # 7 x 11, rows 30 apart
    c = big_c[3:7, 10:21]       # 4 x 11, rows 40 apart
    around = big_c.copy()
    want = a.astype(np.float64) @ b + c
    blas.sgemm(a, b, c, beta=1.0)
    np.testing.assert_allclose(c, want, rtol=1e-5, atol=1e-5)
    outside = np.ones(big_c.shape, bool)
    outside[3:7, 10:21] = False
    np.testing.assert_array_equal(big_c[outside], around[outside])  # nothing else written


def test_sgemm_checks_shapes(backend):
    with pytest.raises(ValueError, match=r"sgemm: shapes \(2, 3\) @ \(4, 5\) -> \(2, 5\)"):
        blas.sgemm(f32(2, 3), f32(4, 5), f32(2, 5))


def test_sgemm_single_row_and_empty(backend):
    a, b, c = f32(1, 4), f32(4, 3), f32(1, 3)
    blas.sgemm(a, b, c)
    np.testing.assert_allclose(c, a @ b, rtol=1e-5, atol=1e-6)
    c = f32(0, 3)
    blas.sgemm(f32(0, 4), b, c)
    assert c.shape == (0, 3)


def test_saxpby_saxpy_sscal():
    if not blas.available():
        pytest.skip("no BLAS library found")
    x, y = f32(1000), f32(1000)
    want = 0.5 * x.astype(np.float64) + 2.0 * y
    blas.saxpby(0.5, x, 2.0, y)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
    want = y.astype(np.float64) - 3.0 * x
    blas.saxpy(-3.0, x, y)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    want = y.astype(np.float64) * 0.25
    blas.sscal(0.25, y)
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-7)
    assert blas.usable(x, y) and not blas.usable(x, y[::2])
    assert not blas.usable(x, y.astype(np.float64))
