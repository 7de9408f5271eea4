"""RoIAlign (Mask R-CNN) with static shapes, single and multi-level (FPN).

Bilinear sampling follows torchvision's `roi_align(aligned=False)` and the
mmdetection v1 CUDA kernel: a regular grid of `sampling_ratio` x
`sampling_ratio` points per output bin, averaged; points further than one
pixel outside the map give 0, points in the last pixel row/column are clamped.
The two references differ only in the box extent, selected by `offset`:

* `offset=1.0` (mmdetection v1): the RoI ends at (x2 + 1) * scale, no minimum
  size;
* `offset=0.0` (torchvision, aligned=False): it ends at x2 * scale and RoIs are
  at least 1 x 1 feature pixel.

Multi-level RoIAlign concatenates the flattened levels and gathers every RoI's
samples from its own level with one gather (no loop over boxes or levels in
the compiled graph, and no wasted work on the other levels).
"""
from typing import Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

# mmdetection v1 SingleRoIExtractor default.
FINEST_SCALE = 56.0


def _axis_weights(start, size, pooled: int, sampling_ratio: int, limit):
  """Sample indices and weights along one axis.

  Args:
    start: (R,) RoI start in feature pixels.
    size: (R,) RoI size in feature pixels.
    pooled: output bins along this axis.
    sampling_ratio: samples per bin along this axis.
    limit: (R,) feature map size along this axis (float).

  Returns:
    idx: (R, pooled, 2 * sampling_ratio) int32 (low and high neighbours).
    w: same shape float32; includes 1 / sampling_ratio and the validity.
  """
  bin_size = size / pooled
  p = jnp.arange(pooled, dtype=start.dtype)
  s = (jnp.arange(sampling_ratio, dtype=start.dtype) + 0.5) / sampling_ratio
  coord = (start[:, None, None] + (p[None, :, None] + s[None, None, :]) *
           bin_size[:, None, None])  # (R, pooled, S)
  lim = limit[:, None, None]
  inside = (coord >= -1.0) & (coord <= lim)
  coord = jnp.maximum(coord, 0.0)
  low = jnp.floor(coord)
  at_edge = low >= lim - 1
  low = jnp.where(at_edge, lim - 1, low)
  coord = jnp.where(at_edge, low, coord)
  high = jnp.where(at_edge, low, low + 1)
  frac = coord - low
  scale = inside.astype(start.dtype) / sampling_ratio
  idx = jnp.concatenate([low, high], axis=-1).astype(jnp.int32)
  w = jnp.concatenate([(1.0 - frac) * scale, frac * scale], axis=-1)
  return idx, w


def _roi_geometry(boxes, spatial_scale, offset: float):
  """(x0, y0, w, h) of each RoI in feature pixels.

  boxes: (R, 4); spatial_scale: (R,) or scalar; offset: static float.
  """
  x0 = boxes[:, 0] * spatial_scale
  y0 = boxes[:, 1] * spatial_scale
  w = (boxes[:, 2] + offset) * spatial_scale - x0
  h = (boxes[:, 3] + offset) * spatial_scale - y0
  min_size = 1.0 if offset == 0.0 else 0.0
  return x0, y0, jnp.maximum(w, min_size), jnp.maximum(h, min_size)


def _gather_bins(flat, base, row_stride, yi, wy, xi, wx):
  """Weighted sum of flat features over the separable sample grid.

  The (2S)^2 terms (S x S samples per bin, 2 x 2 neighbours each, merged per
  axis) are written as a static sum of gathers, which XLA fuses into one
  loop: no (R, PH, 2S, PW, 2S, C) intermediate is materialised. The sum is
  accumulated in float32 whatever the feature dtype.

  Args:
    flat: (P, C) features of all levels, flattened.
    base: (R,) int32 offset of each RoI's level in `flat`.
    row_stride: (R,) int32 width of each RoI's level.
    yi, wy: (R, PH, K) rows and their weights.
    xi, wx: (R, PW, K) columns and their weights.

  Returns:
    (R, PH, PW, C) in the dtype of `flat`.
  """
  rows = base[:, None, None] + yi * row_stride[:, None, None]  # (R, PH, K)
  out = None
  for a in range(yi.shape[-1]):
    for b in range(xi.shape[-1]):
      index = rows[:, :, a, None] + xi[:, None, :, b]  # (R, PH, PW)
      weight = wy[:, :, a, None] * wx[:, None, :, b]
      values = jnp.take(flat, index, axis=0, mode="clip")
      term = weight[..., None] * values.astype(jnp.float32)
      out = term if out is None else out + term
  return out.astype(flat.dtype)


def _chunked(fn, num_rois: int, chunk_size: Optional[int], *args):
  """Apply fn to RoI-major args in chunks (bounds the gather's memory)."""
  if chunk_size is None or num_rois <= chunk_size:
    return fn(*args)
  pad = -num_rois % chunk_size
  chunks = num_rois // chunk_size + (pad > 0)

  def split(a):
    a = jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1))
    return a.reshape((chunks, chunk_size) + a.shape[1:])

  out = jax.lax.map(lambda xs: fn(*xs), tuple(split(a) for a in args))
  return out.reshape((chunks * chunk_size,) + out.shape[2:])[:num_rois]


def roi_align(features: jnp.ndarray, boxes: jnp.ndarray,
              output_size: Tuple[int, int] = (7, 7),
              spatial_scale: float = 1.0, sampling_ratio: int = 2,
              offset: float = 1.0,
              chunk_size: Optional[int] = None) -> jnp.ndarray:
  """RoIAlign on one feature map of one image.

  Args:
    features: (H, W, C).
    boxes: (R, 4) float32 (x1, y1, x2, y2) in image pixels.
    output_size: (PH, PW).
    spatial_scale: feature pixels per image pixel (1 / stride).
    sampling_ratio: samples per bin along each axis (> 0, static).
    offset: 1.0 mmdetection v1, 0.0 torchvision aligned=False (see module).
    chunk_size: optional number of RoIs processed at once (lax.map);
      None (default) processes all at once.

  Returns:
    (R, PH, PW, C) in the dtype of `features`.
  """
  return multilevel_roi_align([features], boxes, jnp.zeros(
      boxes.shape[:1], jnp.int32), output_size, (1.0 / spatial_scale,),
                              sampling_ratio, offset, chunk_size)


def map_roi_levels(boxes: jnp.ndarray, num_levels: int,
                   finest_scale: float = FINEST_SCALE,
                   offset: float = 1.0) -> jnp.ndarray:
  """FPN level of each RoI (mmdetection v1 `map_roi_levels`).

  level = floor(log2(sqrt(w * h) / finest_scale + 1e-6)), clipped to
  [0, num_levels - 1]; w, h include `offset` (1 in mmdetection v1).

  Args:
    boxes: (..., 4) float32.

  Returns:
    (...,) int32 level index (0 is the finest level, P2).
  """
  w = boxes[..., 2] - boxes[..., 0] + offset
  h = boxes[..., 3] - boxes[..., 1] + offset
  scale = jnp.sqrt(jnp.maximum(w * h, 0.0))
  lvl = jnp.floor(jnp.log2(scale / finest_scale + 1e-6))
  return jnp.clip(lvl, 0, num_levels - 1).astype(jnp.int32)


def multilevel_roi_align(features: Sequence[jnp.ndarray], boxes: jnp.ndarray,
                         levels: Optional[jnp.ndarray] = None,
                         output_size: Tuple[int, int] = (7, 7),
                         strides: Sequence[float] = (4, 8, 16, 32),
                         sampling_ratio: int = 2, offset: float = 1.0,
                         chunk_size: Optional[int] = None) -> jnp.ndarray:
  """RoIAlign of each RoI on its FPN level, for one image.

  Args:
    features: L arrays (H_l, W_l, C), finest first (P2..P5).
    boxes: (R, 4) float32 in image pixels.
    levels: optional (R,) int32 level per RoI; default `map_roi_levels`.
    output_size: (PH, PW).
    strides: L strides in pixels (spatial scale of level l is 1 / stride).
    sampling_ratio: samples per bin along each axis (> 0, static).
    offset: 1.0 mmdetection v1, 0.0 torchvision (see module docstring).
    chunk_size: optional number of RoIs processed at once (lax.map);
      None (default) processes all at once.

  Returns:
    (R, PH, PW, C) in the dtype of the features.
  """
  if len(features) != len(strides):
    raise ValueError(f"{len(features)} levels but {len(strides)} strides")
  if sampling_ratio <= 0:
    raise ValueError("sampling_ratio must be positive (static shapes)")
  channels = {f.shape[-1] for f in features}
  if len(channels) != 1:
    raise ValueError(f"levels have different channels: {channels}")
  if levels is None:
    levels = map_roi_levels(boxes, len(features), offset=offset)
  ph, pw = output_size
  heights = jnp.array([f.shape[0] for f in features], jnp.int32)
  widths = jnp.array([f.shape[1] for f in features], jnp.int32)
  sizes = [f.shape[0] * f.shape[1] for f in features]
  bases = jnp.array([sum(sizes[:i]) for i in range(len(sizes))], jnp.int32)
  scales = jnp.array([1.0 / s for s in strides], jnp.float32)
  flat = jnp.concatenate([f.reshape(-1, f.shape[-1]) for f in features], 0)

  boxes = boxes.astype(jnp.float32)
  scale = scales[levels]
  x0, y0, w, h = _roi_geometry(boxes, scale, offset)
  height = heights[levels].astype(jnp.float32)
  width = widths[levels].astype(jnp.float32)
  yi, wy = _axis_weights(y0, h, ph, sampling_ratio, height)
  xi, wx = _axis_weights(x0, w, pw, sampling_ratio, width)

  def run(base, row_stride, yi, wy, xi, wx):
    return _gather_bins(flat, base, row_stride, yi, wy, xi, wx)

  return _chunked(run, boxes.shape[0], chunk_size, bases[levels],
                  widths[levels], yi, wy, xi, wx)
