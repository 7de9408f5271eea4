"""Paste per-RoI mask predictions into the image, with static shapes.

Follows mmdetection v1 `FCNMaskHead.get_seg_masks`: each box is truncated to
integer pixels, the M x M mask is resized to the box's (h, w) =
(y2 - y1 + 1, x2 - x1 + 1) with OpenCV-style bilinear interpolation
(half-pixel centres, edge clamping) and written at [y1, y1 + h) x
[x1, x1 + w); everything else is 0. The resize is separable, so it is done as
two small gathers per RoI instead of a loop over boxes.
"""
from typing import Tuple

import jax.numpy as jnp


def _resize_weights(start, length, out_size: int, mask_size: int):
  """Source indices/weights of a 1-D half-pixel bilinear resize into a box.

  Args:
    start: (R,) int32 first pixel of the box.
    length: (R,) int32 box length in pixels (>= 1).
    out_size: image size along this axis.
    mask_size: M.

  Returns:
    low, high: (R, out_size) int32 source indices in [0, M - 1].
    frac: (R, out_size) float32 weight of `high`.
    inside: (R, out_size) bool, pixel lies in the box.
  """
  pix = jnp.arange(out_size)[None, :] - start[:, None]  # (R, out)
  inside = (pix >= 0) & (pix < length[:, None])
  src = ((pix.astype(jnp.float32) + 0.5) * (mask_size / length[:, None]
                                            .astype(jnp.float32)) - 0.5)
  src = jnp.clip(src, 0.0, mask_size - 1)
  low = jnp.floor(src)
  frac = src - low
  low = low.astype(jnp.int32)
  high = jnp.minimum(low + 1, mask_size - 1)
  return low, high, frac, inside


def paste_masks(masks: jnp.ndarray, boxes: jnp.ndarray,
                image_shape: Tuple[int, int]) -> jnp.ndarray:
  """Paste masks into images.

  Args:
    masks: (R, M, M) float32 mask probabilities (or logits; the resize is
      linear, so pasting logits then thresholding at 0 is also valid inside
      the box).
    boxes: (R, 4) float32 (x1, y1, x2, y2) in image pixels, clipped to the
      image (as the detector's outputs are).
    image_shape: static (H, W).

  Returns:
    (R, H, W) float32, 0 outside each box.
  """
  height, width = image_shape
  m = masks.shape[-1]
  if masks.shape[-2] != m:
    raise ValueError(f"masks must be square, got {masks.shape}")
  ib = jnp.floor(boxes).astype(jnp.int32)  # mmdet v1: astype(np.int32)
  w = jnp.maximum(ib[:, 2] - ib[:, 0] + 1, 1)
  h = jnp.maximum(ib[:, 3] - ib[:, 1] + 1, 1)
  xl, xh, xf, xin = _resize_weights(ib[:, 0], w, width, m)
  yl, yh, yf, yin = _resize_weights(ib[:, 1], h, height, m)
  take_cols = jnp.vectorize(lambda a, i: a[:, i],
                            signature="(m,n),(w)->(m,w)")
  take_rows = jnp.vectorize(lambda a, i: a[i, :],
                            signature="(m,w),(h)->(h,w)")
  cols = (take_cols(masks, xl) * (1.0 - xf[:, None, :]) +
          take_cols(masks, xh) * xf[:, None, :])  # (R, M, W)
  out = (take_rows(cols, yl) * (1.0 - yf[:, :, None]) +
         take_rows(cols, yh) * yf[:, :, None])  # (R, H, W)
  keep = yin[:, :, None] & xin[:, None, :]
  return jnp.where(keep, out, 0.0).astype(masks.dtype)
