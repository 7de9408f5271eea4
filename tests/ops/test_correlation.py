"""`correlation` against a plain NumPy FlowNet correlation (kernel 1)."""
import jax
import numpy as np
import pytest

from vpsnet_jax.ops.correlation import correlation


def _numpy_correlation(x1, x2, d, s=1):
  n, h, w, c = x1.shape
  r = d // s
  size = 2 * r + 1
  out = np.zeros((n, h, w, size * size), np.float64)
  for j in range(-r, r + 1):
    for i in range(-r, r + 1):
      ch = (j + r) * size + (i + r)
      dy, dx = j * s, i * s
      for y in range(h):
        for x in range(w):
          if 0 <= y + dy < h and 0 <= x + dx < w:
            out[:, y, x, ch] = np.mean(
                x1[:, y, x].astype(np.float64) * x2[:, y + dy, x + dx], -1)
  return out


# Widths below, at and above the 32-pixel block of the implementation.
@pytest.mark.parametrize("d,shape", [(1, (2, 6, 7, 5)), (4, (2, 6, 7, 5)),
                                     (4, (1, 5, 37, 3)), (2, (1, 3, 32, 2))])
def test_matches_numpy(d, shape):
  rng = np.random.default_rng(d)
  x1 = rng.standard_normal(shape).astype(np.float32)
  x2 = rng.standard_normal(shape).astype(np.float32)
  out = jax.jit(correlation, static_argnums=2)(x1, x2, d)
  assert out.shape == shape[:3] + ((2 * d + 1) ** 2,)
  np.testing.assert_allclose(out, _numpy_correlation(x1, x2, d), atol=1e-6,
                             rtol=1e-5)


# FlowNetC's stride2 = 2 (its d = 20 at a width beyond one block), and 3.
@pytest.mark.parametrize("d,s,shape", [(4, 2, (2, 6, 9, 3)),
                                       (20, 2, (1, 5, 47, 2)),
                                       (6, 3, (1, 7, 13, 4))])
def test_strided_displacements_match_numpy(d, s, shape):
  rng = np.random.default_rng(d + s)
  x1 = rng.standard_normal(shape).astype(np.float32)
  x2 = rng.standard_normal(shape).astype(np.float32)
  out = jax.jit(correlation, static_argnums=(2, 3))(x1, x2, d, s)
  assert out.shape == shape[:3] + ((2 * (d // s) + 1) ** 2,)
  np.testing.assert_allclose(out, _numpy_correlation(x1, x2, d, s),
                             atol=1e-6, rtol=1e-5)


def test_stride_must_divide_the_displacement():
  x = np.zeros((1, 4, 4, 2), np.float32)
  with pytest.raises(ValueError, match="stride"):
    correlation(x, x, 5, 2)


def test_peak_at_true_displacement():
  rng = np.random.default_rng(0)
  x2 = rng.standard_normal((1, 12, 12, 32)).astype(np.float32)
  # x1[y, x] = x2[y + 1, x - 2]: the peak is at (dx, dy) = (-2, 1).
  x1 = np.roll(x2, shift=(-1, 2), axis=(1, 2))
  out = np.asarray(jax.jit(correlation)(x1, x2))
  best = out[0, 5, 5].argmax()
  assert best == (1 + 4) * 9 + (-2 + 4)


def test_gradient_matches_numpy_transpose():
  """Correlation is bilinear: d/dx1 of <out, g> is sum_k g_k * shifted x2."""
  rng = np.random.default_rng(5)
  x1 = rng.standard_normal((1, 4, 35, 2)).astype(np.float32)
  x2 = rng.standard_normal((1, 4, 35, 2)).astype(np.float32)
  g = rng.standard_normal((1, 4, 35, 25)).astype(np.float32)
  grad = jax.jit(jax.grad(lambda a: (correlation(a, x2, 2) * g).sum()))(x1)
  e = np.zeros_like(x1)
  e[0, 1, 33, 1] = 1.0
  expected = np.sum(_numpy_correlation(e, x2, 2) * g)
  np.testing.assert_allclose(grad[0, 1, 33, 1], expected, rtol=1e-5,
                             atol=1e-6)
