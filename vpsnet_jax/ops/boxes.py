"""Box utilities: areas, pairwise IoU, delta coding and clipping.

Boxes are (x1, y1, x2, y2) in pixels. ``offset`` selects the box convention:
``offset=1.0`` is mmdetection v1's legacy "+1" convention (a box from pixel 0
to pixel 9 has width 10), ``offset=0.0`` is torchvision's continuous one.
VPSNet (mmdetection v1) uses ``offset=1.0``, the default here.
"""
from typing import Optional, Sequence, Tuple

import jax.numpy as jnp
import numpy as np

# mmdetection v1 `delta2bbox`: wh_ratio_clip=16/1000, i.e. |dw| <= log(1000/16).
DEFAULT_WH_RATIO_CLIP = 16.0 / 1000.0


def box_area(boxes: jnp.ndarray, offset: float = 1.0) -> jnp.ndarray:
  """Areas. boxes: (..., 4) float32 -> (...,) float32 (never negative)."""
  w = jnp.maximum(boxes[..., 2] - boxes[..., 0] + offset, 0.0)
  h = jnp.maximum(boxes[..., 3] - boxes[..., 1] + offset, 0.0)
  return w * h


def pairwise_iou(boxes1: jnp.ndarray, boxes2: jnp.ndarray,
                 offset: float = 1.0, eps: float = 1e-6) -> jnp.ndarray:
  """Intersection over union of every pair.

  Args:
    boxes1: (..., N, 4) float32.
    boxes2: (..., M, 4) float32.
    offset: 1.0 for mmdetection v1 (`bbox_overlaps`), 0.0 for torchvision
      (`box_iou`).
    eps: guards the division for empty (padding) boxes, whose IoU is 0.

  Returns:
    (..., N, M) float32.
  """
  b1 = boxes1[..., :, None, :]
  b2 = boxes2[..., None, :, :]
  lt = jnp.maximum(b1[..., :2], b2[..., :2])
  rb = jnp.minimum(b1[..., 2:], b2[..., 2:])
  wh = jnp.maximum(rb - lt + offset, 0.0)
  inter = wh[..., 0] * wh[..., 1]
  union = box_area(b1, offset) + box_area(b2, offset) - inter
  return inter / jnp.maximum(union, eps)


def _as_array(values: Sequence[float], dtype) -> jnp.ndarray:
  return jnp.asarray(np.asarray(values, np.float32), dtype)


def encode(boxes: jnp.ndarray, gt_boxes: jnp.ndarray,
           means: Sequence[float] = (0., 0., 0., 0.),
           stds: Sequence[float] = (1., 1., 1., 1.),
           offset: float = 1.0) -> jnp.ndarray:
  """Regression targets from `boxes` to `gt_boxes` (mmdet v1 `bbox2delta`).

  Args:
    boxes: (..., 4) float32 reference boxes (anchors or proposals).
    gt_boxes: (..., 4) float32 target boxes, broadcastable with `boxes`.
    means, stds: 4 floats each; deltas are normalised as (d - mean) / std.
    offset: box convention, see the module docstring.

  Returns:
    (..., 4) float32 deltas (dx, dy, dw, dh).
  """
  pw = boxes[..., 2] - boxes[..., 0] + offset
  ph = boxes[..., 3] - boxes[..., 1] + offset
  px = (boxes[..., 0] + boxes[..., 2]) * 0.5
  py = (boxes[..., 1] + boxes[..., 3]) * 0.5
  gw = gt_boxes[..., 2] - gt_boxes[..., 0] + offset
  gh = gt_boxes[..., 3] - gt_boxes[..., 1] + offset
  gx = (gt_boxes[..., 0] + gt_boxes[..., 2]) * 0.5
  gy = (gt_boxes[..., 1] + gt_boxes[..., 3]) * 0.5
  deltas = jnp.stack([(gx - px) / pw, (gy - py) / ph,
                      jnp.log(gw / pw), jnp.log(gh / ph)], axis=-1)
  return (deltas - _as_array(means, deltas.dtype)) / _as_array(
      stds, deltas.dtype)


def decode(boxes: jnp.ndarray, deltas: jnp.ndarray,
           means: Sequence[float] = (0., 0., 0., 0.),
           stds: Sequence[float] = (1., 1., 1., 1.),
           max_shape: Optional[Tuple[int, int]] = None,
           wh_ratio_clip: float = DEFAULT_WH_RATIO_CLIP,
           offset: float = 1.0) -> jnp.ndarray:
  """Apply deltas to boxes (mmdet v1 `delta2bbox`).

  Args:
    boxes: (..., 4) float32 reference boxes.
    deltas: (..., 4) float32, broadcastable with `boxes`.
    means, stds: the normalisation used by `encode`.
    max_shape: optional (height, width); results are clipped into the image
      (to [0, width - offset] and [0, height - offset]).
    wh_ratio_clip: |dw|, |dh| are clipped to |log(wh_ratio_clip)|.
    offset: box convention, see the module docstring.

  Returns:
    (..., 4) float32 decoded boxes.
  """
  d = deltas * _as_array(stds, deltas.dtype) + _as_array(means, deltas.dtype)
  max_ratio = float(np.abs(np.log(wh_ratio_clip)))
  dw = jnp.clip(d[..., 2], -max_ratio, max_ratio)
  dh = jnp.clip(d[..., 3], -max_ratio, max_ratio)
  pw = boxes[..., 2] - boxes[..., 0] + offset
  ph = boxes[..., 3] - boxes[..., 1] + offset
  px = (boxes[..., 0] + boxes[..., 2]) * 0.5
  py = (boxes[..., 1] + boxes[..., 3]) * 0.5
  gw = pw * jnp.exp(dw)
  gh = ph * jnp.exp(dh)
  gx = px + pw * d[..., 0]
  gy = py + ph * d[..., 1]
  half = 0.5 * offset
  out = jnp.stack([gx - gw * 0.5 + half, gy - gh * 0.5 + half,
                   gx + gw * 0.5 - half, gy + gh * 0.5 - half], axis=-1)
  if max_shape is not None:
    out = clip_boxes(out, max_shape, offset)
  return out


def clip_boxes(boxes: jnp.ndarray, image_shape: Tuple[int, int],
               offset: float = 1.0) -> jnp.ndarray:
  """Clip boxes (..., 4) into an image of (height, width).

  mmdetection v1 clips to [0, W - 1] x [0, H - 1] (offset=1); torchvision to
  [0, W] x [0, H] (offset=0). `image_shape` may hold Python ints or traced
  scalars (e.g. the unpadded size of each image).
  """
  h, w = image_shape
  x_max = jnp.asarray(w, boxes.dtype) - offset
  y_max = jnp.asarray(h, boxes.dtype) - offset
  x1 = jnp.clip(boxes[..., 0], 0.0, x_max)
  y1 = jnp.clip(boxes[..., 1], 0.0, y_max)
  x2 = jnp.clip(boxes[..., 2], 0.0, x_max)
  y2 = jnp.clip(boxes[..., 3], 0.0, y_max)
  return jnp.stack([x1, y1, x2, y2], axis=-1)
