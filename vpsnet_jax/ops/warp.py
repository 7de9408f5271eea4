"""Bilinear sampling with zeros outside the image, and backward warping.

`bilinear_sample` is the shared primitive: `warp` samples every pixel at its
own position plus a flow, and `deform_conv2d` samples every kernel tap at its
deformed position. Sampling reads the four corners with flat `take`s from an
image padded by one zero pixel, so that XLA fuses the reads and the weighted
sum into one loop and no (..., 4, C) intermediate is written.
"""
import jax
import jax.numpy as jnp


def _corners(x: jnp.ndarray, py: jnp.ndarray, px: jnp.ndarray):
  """Flat corner indices and bilinear factors of sampling positions.

  A corner outside the image gets weight 0; this is bilinear interpolation
  of the image extended by zeros (torchvision's `deform_conv2d` convention).
  Indices address the image padded by one zero pixel and flattened to
  (N * (H + 2) * (W + 2), C); windows clamped to that image only occur where
  every corner has weight 0.

  Args:
    x: (N, H, W, C).
    py, px: (N, ...) float32 positions.

  Returns:
    flat: (N * (H + 2) * (W + 2), C) padded image.
    index: dict (a, b) -> (N, ...) int32 flat index of corner (y0 + a, x0 + b).
    ly, lx: (N, ...) fractional parts.
    my, mx: pairs of (N, ...) float32 masks, corner row / column inside.
  """
  n, h, w, c = x.shape
  y0 = jnp.floor(py)
  x0 = jnp.floor(px)
  ly = py - y0
  lx = px - x0
  y0 = y0.astype(jnp.int32)
  x0 = x0.astype(jnp.int32)

  def inside(i, size):
    return ((i >= 0) & (i <= size - 1)).astype(jnp.float32)

  my = (inside(y0, h), inside(y0 + 1, h))
  mx = (inside(x0, w), inside(x0 + 1, w))
  row0 = jnp.clip(y0, -1, h - 1) + 1
  col0 = jnp.clip(x0, -1, w - 1) + 1
  batch = jnp.arange(n, dtype=jnp.int32).reshape((n,) + (1,) * (py.ndim - 1))
  base = (batch * (h + 2) + row0) * (w + 2) + col0
  index = {(a, b): base + a * (w + 2) + b for a in range(2) for b in range(2)}
  flat = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))).reshape(-1, c)
  return flat, index, ly, lx, my, mx


def _read(flat: jnp.ndarray, index: jnp.ndarray) -> jnp.ndarray:
  return jnp.take(flat, index.reshape(-1), axis=0, mode="clip").reshape(
      index.shape + (flat.shape[-1],))


def _bilinear(x, py, px):
  flat, index, ly, lx, my, mx = _corners(x, py, px)
  wy = ((1.0 - ly) * my[0], ly * my[1])
  wx = ((1.0 - lx) * mx[0], lx * mx[1])
  out = None
  for (a, b), idx in index.items():
    term = _read(flat, idx) * (wy[a] * wx[b]).astype(x.dtype)[..., None]
    out = term if out is None else out + term
  return out


@jax.custom_vjp
def _bilinear_sample(x, py, px):
  return _bilinear(x, py, px)


def _bilinear_fwd(x, py, px):
  # Residuals are the inputs only; the backward pass re-reads the corners.
  return _bilinear(x, py, px), (x, py, px)


# Samples per step of the backward loop: about 64 MB per corner read at
# 256 channels, small enough to keep the backward's memory near the forward's.
_BWD_CHUNK_ELEMENTS = 1 << 24


def _bilinear_bwd(res, g):
  """Loop over chunks of samples: re-read the corners of the chunk, form
  d/dpy and d/dpx from corner differences, scatter-add d/dx into the image.
  """
  x, py, px = res
  n, h, w, c = x.shape
  flat, index, ly, lx, my, mx = _corners(x, py, px)
  wy = ((1.0 - ly) * my[0], ly * my[1])
  wx = ((1.0 - lx) * mx[0], lx * mx[1])
  keys = list(index)
  # Per-sample scalars, stacked: corner indices (4, S) and factors (10, S).
  idx = jnp.stack([index[k].reshape(-1) for k in keys])
  fac = jnp.stack([t.reshape(-1) for t in (wy + wx + my + mx)] +
                  [(wy[a] * wx[b]).reshape(-1) for a, b in keys])
  samples = idx.shape[1]
  chunk = max(1, min(samples, _BWD_CHUNK_ELEMENTS // max(c, 1)))
  steps = -(-samples // chunk)
  pad = steps * chunk - samples
  g2 = g.astype(jnp.float32).reshape(samples, c)
  if pad:  # Padded samples carry a zero cotangent and zero weights.
    idx = jnp.pad(idx, ((0, 0), (0, pad)))
    fac = jnp.pad(fac, ((0, 0), (0, pad)))
    g2 = jnp.pad(g2, ((0, pad), (0, 0)))
  idx = idx.reshape(4, steps, chunk).transpose(1, 0, 2)
  fac = fac.reshape(fac.shape[0], steps, chunk).transpose(1, 0, 2)
  g2 = g2.reshape(steps, chunk, c)

  def step(gflat, xs):
    ii, ff, gg = xs
    wy_, wx_, my_, mx_, wab = ff[0:2], ff[2:4], ff[4:6], ff[6:8], ff[8:12]
    v = {k: jnp.take(flat, ii[j], axis=0, mode="clip").astype(jnp.float32)
         for j, k in enumerate(keys)}
    # d out / d py = sum_b wx_b (my1 v_1b - my0 v_0b); likewise for px.
    dy = sum(wx_[b][:, None] * (my_[1][:, None] * v[(1, b)] -
                                my_[0][:, None] * v[(0, b)]) for b in range(2))
    dx = sum(wy_[a][:, None] * (mx_[1][:, None] * v[(a, 1)] -
                                mx_[0][:, None] * v[(a, 0)]) for a in range(2))
    for j in range(4):
      gflat = gflat.at[ii[j]].add(gg * wab[j][:, None], mode="drop")
    return gflat, (jnp.sum(gg * dy, axis=-1), jnp.sum(gg * dx, axis=-1))

  gflat, (gpy, gpx) = jax.lax.scan(
      step, jnp.zeros(flat.shape, jnp.float32), (idx, fac, g2))
  gpy = gpy.reshape(-1)[:samples].reshape(py.shape)
  gpx = gpx.reshape(-1)[:samples].reshape(px.shape)
  gx = gflat.reshape(n, h + 2, w + 2, c)[:, 1:-1, 1:-1].astype(x.dtype)
  return gx, gpy.astype(py.dtype), gpx.astype(px.dtype)


_bilinear_sample.defvjp(_bilinear_fwd, _bilinear_bwd)


def bilinear_sample(x: jnp.ndarray, py: jnp.ndarray,
                    px: jnp.ndarray) -> jnp.ndarray:
  """Samples `x` bilinearly at (py, px), zeros outside the image.

  The four corners are read with flat `take`s that XLA fuses with the
  weighted sum (no (..., 4, C) intermediate). Custom gradient: it keeps only
  the inputs and loops over chunks of samples, re-reading their corners and
  scatter-adding d/dx, so its memory stays near the forward's.

  Args:
    x: (N, H, W, C) image.
    py, px: (N, ...) row and column positions in pixels; any number of
      trailing sample dims.

  Returns:
    (N, ..., C) samples, dtype of `x`. Differentiable in x, py and px
    (the gradient in py, px is the one-sided one at integer positions, as
    in torchvision).
  """
  if x.ndim != 4:
    raise ValueError(f"x must be (N, H, W, C), got shape {x.shape}")
  if py.shape != px.shape or py.shape[:1] != x.shape[:1]:
    raise ValueError(f"py {py.shape} and px {px.shape} must match and start "
                     f"with the batch size {x.shape[0]}")
  return _bilinear_sample(x, py.astype(jnp.float32), px.astype(jnp.float32))


WARP_GRIDS = ("exact", "release")


def warp(x: jnp.ndarray, flow: jnp.ndarray, grid: str = "exact"
        ) -> jnp.ndarray:
  """Backward warping: out[n, y, x] = bilinear(x[n], y', x').

  grid="exact": x' = x + dx, y' = y + dy (zero flow is the identity).
  grid="release": the VPSNet release's `WarpingLayer`, a `linspace(-1, 1)`
    grid plus the flow scaled by 2 / (W - 1), sampled by `grid_sample` with
    `align_corners=False` (PyTorch >= 1.3's default), which is the position
    x' = (x + dx) * W / (W - 1) - 0.5, y' = (y + dy) * H / (H - 1) - 0.5:
    about half a pixel off at the borders, where a sample gets half its
    weight from the zero padding; zero flow is not the identity. Weights
    trained by the release expect it.

  Args:
    x: (N, H, W, C) features.
    flow: (N, H, W, 2) flow in pixels as (dx, dy).
    grid: "exact" or "release".

  Returns:
    (N, H, W, C), zeros where the sampled position falls outside the image.
    Differentiable in both `x` and `flow`.
  """
  if flow.shape != x.shape[:3] + (2,):
    raise ValueError(f"flow must be {x.shape[:3] + (2,)}, got {flow.shape}")
  if grid not in WARP_GRIDS:
    raise ValueError(f"grid must be one of {WARP_GRIDS}, got {grid!r}")
  _, h, w, _ = x.shape
  flow = flow.astype(jnp.float32)
  py = jnp.arange(h, dtype=jnp.float32)[None, :, None] + flow[..., 1]
  px = jnp.arange(w, dtype=jnp.float32)[None, None, :] + flow[..., 0]
  if grid == "release":
    if h < 2 or w < 2:
      raise ValueError(f"the release grid needs H, W >= 2, got {h}x{w}")
    py = py * (h / (h - 1)) - 0.5
    px = px * (w / (w - 1)) - 0.5
  return bilinear_sample(x, py, px)


def resample2d(x: jnp.ndarray, flow: jnp.ndarray) -> jnp.ndarray:
  """FlowNet2's `Resample2d` (bilinear, kernel size 1): backward warping
  with the corner indices clamped to the image, so that a position outside
  takes the values of the nearest edge (not zeros, unlike `warp`).

  out[n, y, x] = sum over the corners (yc, xc) of floor(y + dy) and
  floor(x + dx) (+1) of the bilinear factor times x[n, clip(yc), clip(xc)],
  the factors computed from the unclamped position, as the CUDA kernel.

  Args:
    x: (N, H, W, C) image.
    flow: (N, H, W, 2) flow in pixels as (dx, dy).

  Returns:
    (N, H, W, C) in the dtype of `x`; differentiable in `x` and `flow`.
  """
  if flow.shape != x.shape[:3] + (2,):
    raise ValueError(f"flow must be {x.shape[:3] + (2,)}, got {flow.shape}")
  n, h, w, c = x.shape
  flow = flow.astype(jnp.float32)
  py = jnp.arange(h, dtype=jnp.float32)[None, :, None] + flow[..., 1]
  px = jnp.arange(w, dtype=jnp.float32)[None, None, :] + flow[..., 0]
  y0, x0 = jnp.floor(py), jnp.floor(px)
  beta, alpha = py - y0, px - x0
  y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)
  rows = (jnp.clip(y0, 0, h - 1), jnp.clip(y0 + 1, 0, h - 1))
  cols = (jnp.clip(x0, 0, w - 1), jnp.clip(x0 + 1, 0, w - 1))
  wy = (1.0 - beta, beta)
  wx = (1.0 - alpha, alpha)
  batch = jnp.arange(n, dtype=jnp.int32)[:, None, None] * (h * w)
  flat = x.reshape(n * h * w, c)
  out = None
  for a in range(2):
    for b in range(2):
      index = (batch + rows[a] * w + cols[b]).reshape(-1)
      term = jnp.take(flat, index, axis=0).reshape(n, h, w, c) * (
          wy[a] * wx[b]).astype(x.dtype)[..., None]
      out = term if out is None else out + term
  return out
