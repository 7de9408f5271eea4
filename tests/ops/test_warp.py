"""`warp`: integer shifts exactly, sub-pixel flow against NumPy, flow grads;
`resample2d` (FlowNet2's edge-clamped warp) against a loop over its CUDA
kernel's definition."""
import jax
import jax.numpy as jnp
import numpy as np

from vpsnet_jax.ops.warp import resample2d
from vpsnet_jax.ops.warp import warp


def _numpy_warp(x, flow):
  """Reference: bilinear backward warp with zeros outside, plain loops."""
  n, h, w, c = x.shape
  out = np.zeros((n, h, w, c), np.float64)
  for b in range(n):
    for i in range(h):
      for j in range(w):
        py, px = i + flow[b, i, j, 1], j + flow[b, i, j, 0]
        y0, x0 = int(np.floor(py)), int(np.floor(px))
        for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
          for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= yy < h and 0 <= xx < w:
              out[b, i, j] += wy * wx * x[b, yy, xx]
  return out


def test_integer_flow_shifts_exactly():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 6, 7, 3)).astype(np.float32)
  dx, dy = 2, -1
  flow = np.broadcast_to(np.array([dx, dy], np.float32), (2, 6, 7, 2))
  out = np.asarray(jax.jit(warp)(x, flow))
  expected = np.zeros_like(x)
  # out[y, x] = x[y + dy, x + dx] where inside.
  expected[:, 1:, :5] = x[:, :5, 2:]
  np.testing.assert_array_equal(out, expected)


def test_subpixel_flow_matches_numpy_bilinear():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2, 5, 6, 4)).astype(np.float32)
  # Flows up to +-4 px: some positions fall partly or fully outside.
  flow = (2.0 * rng.standard_normal((2, 5, 6, 2))).astype(np.float32)
  out = jax.jit(warp)(x, flow)
  np.testing.assert_allclose(out, _numpy_warp(x, flow), atol=1e-5, rtol=1e-5)


def test_flow_gradient_matches_finite_differences():
  rng = np.random.default_rng(2)
  x = rng.standard_normal((1, 5, 6, 3)).astype(np.float32)
  # Keep fractional parts away from integers so the +-eps steps stay within
  # one bilinear cell (the interpolant is piecewise linear in the flow).
  flow = (rng.integers(-2, 3, (1, 5, 6, 2)) +
          rng.uniform(0.2, 0.8, (1, 5, 6, 2))).astype(np.float32)
  cot = rng.standard_normal((1, 5, 6, 3)).astype(np.float32)
  direction = rng.standard_normal(flow.shape).astype(np.float32)
  f = jax.jit(lambda fl: jnp.sum(warp(x, fl) * cot))
  grad = np.asarray(jax.jit(jax.grad(f))(flow))
  assert np.all(np.isfinite(grad))
  eps = 0.05
  fd = (f(flow + eps * direction) - f(flow - eps * direction)) / (2 * eps)
  np.testing.assert_allclose(np.sum(grad * direction), fd, rtol=2e-3)
  # Gradient w.r.t. the features is the transpose of the (linear) warp.
  gx = jax.jit(jax.grad(lambda xx: jnp.sum(warp(xx, flow) * cot)))(x)
  e = np.zeros_like(x)
  e[0, 2, 3, 1] = 1.0
  np.testing.assert_allclose(gx[0, 2, 3, 1], np.sum(_numpy_warp(e, flow) * cot),
                             atol=1e-5)


def _release_warping_layer(x, flow):
  """The release's `WarpingLayer`, written from its definition in torch.

  x: (N, C, H, W); flow: (N, 2, H, W) in pixels. A linspace(-1, 1) grid plus
  the flow divided by ((W - 1) / 2, (H - 1) / 2), sampled by grid_sample
  with align_corners=False (bilinear, zero padding).
  """
  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel
  n, _, h, w = x.shape
  gx = torch.linspace(-1.0, 1.0, w).view(1, 1, 1, w).expand(n, 1, h, w)
  gy = torch.linspace(-1.0, 1.0, h).view(1, 1, h, 1).expand(n, 1, h, w)
  norm = torch.cat([flow[:, :1] / ((w - 1.0) / 2.0),
                    flow[:, 1:] / ((h - 1.0) / 2.0)], 1)
  grid = (torch.cat([gx, gy], 1) + norm).permute(0, 2, 3, 1)
  return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros",
                       align_corners=False)


def test_release_grid_matches_torch_grid_sample():
  import torchvision  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  import torch  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(3)
  x = rng.standard_normal((2, 7, 9, 5)).astype(np.float32)
  flow = (2.0 * rng.standard_normal((2, 7, 9, 2))).astype(np.float32)
  expected = _release_warping_layer(
      torch.from_numpy(x).permute(0, 3, 1, 2),
      torch.from_numpy(flow).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
  out = np.asarray(jax.jit(lambda a, f: warp(a, f, grid="release"))(x, flow))
  np.testing.assert_allclose(out, expected, atol=2e-5, rtol=1e-5)
  # The release's zero flow is not the identity: half-weight borders.
  zero = np.zeros_like(flow)
  ident = np.asarray(warp(x, zero, grid="release"))
  assert not np.allclose(ident, x, atol=1e-3)
  np.testing.assert_allclose(
      ident, _release_warping_layer(
          torch.from_numpy(x).permute(0, 3, 1, 2),
          torch.from_numpy(zero).permute(0, 3, 1, 2)).permute(
              0, 2, 3, 1).numpy(), atol=2e-5, rtol=1e-5)
  # Position formula: x' = x * W / (W - 1) - 0.5; corner (0, 0) -> -0.5.
  np.testing.assert_allclose(ident[:, 0, 0], 0.25 * x[:, 0, 0], rtol=1e-5)


def test_unknown_grid_is_an_error():
  x = np.zeros((1, 4, 4, 1), np.float32)
  with np.testing.assert_raises_regex(ValueError, "grid must be one of"):
    warp(x, np.zeros((1, 4, 4, 2), np.float32), grid="torch")


def _numpy_resample2d(x, flow):
  """resample2d_kernel.cu, bilinear branch: factors from the position, the
  four corner indices each clamped to [0, size - 1]."""
  n, h, w, c = x.shape
  out = np.zeros((n, h, w, c), np.float64)
  for b in range(n):
    for i in range(h):
      for j in range(w):
        xf, yf = j + float(flow[b, i, j, 0]), i + float(flow[b, i, j, 1])
        alpha, beta = xf - np.floor(xf), yf - np.floor(yf)
        xl = min(max(int(np.floor(xf)), 0), w - 1)
        xr = min(max(int(np.floor(xf)) + 1, 0), w - 1)
        yt = min(max(int(np.floor(yf)), 0), h - 1)
        yb = min(max(int(np.floor(yf)) + 1, 0), h - 1)
        out[b, i, j] = ((1 - alpha) * (1 - beta) * x[b, yt, xl] +
                        alpha * (1 - beta) * x[b, yt, xr] +
                        (1 - alpha) * beta * x[b, yb, xl] +
                        alpha * beta * x[b, yb, xr])
  return out


def test_resample2d_matches_the_kernel_inside_and_outside():
  rng = np.random.default_rng(3)
  x = rng.standard_normal((2, 7, 9, 3)).astype(np.float32)
  # Sub-pixel, integer and far-outside flows (edge values, not zeros).
  flow = rng.uniform(-4, 4, (2, 7, 9, 2)).astype(np.float32)
  flow[0, :2] = np.round(flow[0, :2])
  flow[1, 0, :, 0] = -30.0
  flow[1, -1, :, 1] = 12.5
  out = np.asarray(jax.jit(resample2d)(x, flow))
  expected = _numpy_resample2d(x, flow)
  np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)
  # Far left of the image: the left edge column of the same row.
  np.testing.assert_allclose(out[1, 0, 3], expected[1, 0, 3], atol=1e-5)
  assert np.abs(out[1, 0]).min() > 0  # Not the zeros `warp` gives.
  zero = np.zeros_like(flow)
  np.testing.assert_allclose(np.asarray(resample2d(x, zero)), x, atol=0)
