"""Anchor generation as in mmdetection v1 (`AnchorGenerator`).

Anchors of one level are ordered (y, x, anchor) to match a head output of
shape (H, W, A * k) reshaped to (H * W * A, k). All shapes are static: they
depend only on the (padded) feature map sizes.
"""
from typing import List, Sequence, Tuple

import jax.numpy as jnp
import numpy as np

# mmdetection v1 Mask R-CNN R50-FPN defaults.
DEFAULT_STRIDES = (4, 8, 16, 32, 64)
DEFAULT_SCALES = (8.0,)
DEFAULT_RATIOS = (0.5, 1.0, 2.0)


def base_anchors(base_size: float, scales: Sequence[float] = DEFAULT_SCALES,
                 ratios: Sequence[float] = DEFAULT_RATIOS) -> np.ndarray:
  """Anchors centred on the first cell, mmdetection v1 legacy convention.

  Ratios are h / w. The order is ratio-major (scale_major=True: for each
  ratio, every scale), and coordinates are rounded as in mmdetection v1.

  Returns:
    (len(ratios) * len(scales), 4) float32.
  """
  scales = np.asarray(scales, np.float32)
  ratios = np.asarray(ratios, np.float32)
  ctr = 0.5 * (base_size - 1)
  h_ratios = np.sqrt(ratios)
  w_ratios = 1.0 / h_ratios
  ws = (base_size * w_ratios[:, None] * scales[None, :]).reshape(-1)
  hs = (base_size * h_ratios[:, None] * scales[None, :]).reshape(-1)
  anchors = np.stack([ctr - 0.5 * (ws - 1), ctr - 0.5 * (hs - 1),
                      ctr + 0.5 * (ws - 1), ctr + 0.5 * (hs - 1)], axis=-1)
  return np.round(anchors).astype(np.float32)


def grid_anchors(featmap_size: Tuple[int, int], stride: int,
                 scales: Sequence[float] = DEFAULT_SCALES,
                 ratios: Sequence[float] = DEFAULT_RATIOS) -> np.ndarray:
  """All anchors of one level.

  Args:
    featmap_size: (H, W) of the feature map.
    stride: its stride in pixels; also the anchor base size.

  Returns:
    (H * W * A, 4) float32, ordered (y, x, anchor).
  """
  h, w = featmap_size
  base = base_anchors(stride, scales, ratios)
  xs = np.arange(w, dtype=np.float32) * stride
  ys = np.arange(h, dtype=np.float32) * stride
  xx, yy = np.meshgrid(xs, ys)  # (H, W)
  shifts = np.stack([xx, yy, xx, yy], axis=-1).reshape(-1, 1, 4)
  return (shifts + base[None]).reshape(-1, 4).astype(np.float32)


def multilevel_anchors(featmap_sizes: Sequence[Tuple[int, int]],
                       strides: Sequence[int] = DEFAULT_STRIDES,
                       scales: Sequence[float] = DEFAULT_SCALES,
                       ratios: Sequence[float] = DEFAULT_RATIOS
                       ) -> List[np.ndarray]:
  """Anchors for every level: a list of (H_l * W_l * A, 4) float32 arrays."""
  if len(featmap_sizes) != len(strides):
    raise ValueError(f"{len(featmap_sizes)} feature maps but "
                     f"{len(strides)} strides")
  return [grid_anchors(s, st, scales, ratios)
          for s, st in zip(featmap_sizes, strides)]


def featmap_sizes_for(image_size: Tuple[int, int],
                      strides: Sequence[int] = DEFAULT_STRIDES
                      ) -> List[Tuple[int, int]]:
  """Feature sizes of a ResNet-FPN on a (H, W) input: ceil(size / stride)."""
  h, w = image_size
  return [(-(-h // s), -(-w // s)) for s in strides]


def valid_flags(featmap_size: Tuple[int, int], valid_size, stride: int,
                num_base_anchors: int):
  """Anchors whose cell lies in the unpadded image (mmdet v1 `valid_flags`).

  Args:
    featmap_size: (H, W) static.
    valid_size: (h, w) of the unpadded image in pixels; ints or traced.
    stride: the level's stride.
    num_base_anchors: A.

  Returns:
    (H * W * A,) bool, ordered like `grid_anchors`.
  """
  h, w = featmap_size
  vh = jnp.minimum(jnp.ceil(jnp.asarray(valid_size[0], jnp.float32) / stride),
                   h)
  vw = jnp.minimum(jnp.ceil(jnp.asarray(valid_size[1], jnp.float32) / stride),
                   w)
  vy = jnp.arange(h) < vh
  vx = jnp.arange(w) < vw
  valid = vy[:, None] & vx[None, :]
  return jnp.repeat(valid.reshape(-1), num_base_anchors)


def torchvision_grid_anchors(featmap_size: Tuple[int, int], stride: int,
                             scales: Sequence[float] = DEFAULT_SCALES,
                             ratios: Sequence[float] = DEFAULT_RATIOS
                             ) -> np.ndarray:
  """All anchors of one level in torchvision's `AnchorGenerator` convention.

  Base anchors are centred on (0, 0) as round([-w/2, -h/2, w/2, h/2]) with
  size stride * scale (torchvision's `sizes`), instead of mmdetection v1's
  centre (stride - 1) / 2 with the +1 extent. Used for parity with
  torchvision's detectors.

  Returns:
    (H * W * A, 4) float32, ordered (y, x, anchor).
  """
  h, w = featmap_size
  sizes = np.asarray(scales, np.float32) * stride
  h_ratios = np.sqrt(np.asarray(ratios, np.float32))
  ws = (sizes[None, :] / h_ratios[:, None]).reshape(-1)
  hs = (sizes[None, :] * h_ratios[:, None]).reshape(-1)
  base = np.round(np.stack([-ws, -hs, ws, hs], axis=-1) / 2)
  xs = np.arange(w, dtype=np.float32) * stride
  ys = np.arange(h, dtype=np.float32) * stride
  xx, yy = np.meshgrid(xs, ys)
  shifts = np.stack([xx, yy, xx, yy], axis=-1).reshape(-1, 1, 4)
  return (shifts + base[None]).reshape(-1, 4).astype(np.float32)
