"""Static-shape non-maximum suppression.

Greedy NMS (as torchvision `nms` / mmdetection v1 `nms`) returning a fixed
number of indices plus a validity mask, so it can run inside `jit` and `vmap`.

Algorithm: boxes are sorted by score with `top_k`, then processed in tiles of
`tile_size` boxes. For each tile, boxes overlapping an already kept box of an
earlier tile are removed with one (K, T) IoU block; suppression inside the
tile is resolved by a fixed-point iteration on its (T, T) overlap matrix,
which reaches the greedy result (the greedy keep vector is the unique fixed
point, and each iteration settles at least one more box). The loop over tiles
stops as soon as `max_output` boxes are kept. Memory is O(K * T), not O(K^2).
"""
from typing import Optional, Tuple

import jax
import jax.numpy as jnp

from vpsnet_jax.ops import boxes as box_ops


def _round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def nms(boxes: jnp.ndarray, scores: jnp.ndarray, iou_threshold: float,
        max_output: int, valid: Optional[jnp.ndarray] = None,
        classes: Optional[jnp.ndarray] = None, offset: float = 1.0,
        tile_size: int = 128) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """Greedy NMS with a static output size.

  Args:
    boxes: (N, 4) float32.
    scores: (N,) float32; higher first. Equal scores keep the lower index
      first.
    iou_threshold: a box is removed if its IoU with a kept, higher-scoring box
      is strictly greater than this (as torchvision and mmdetection).
    max_output: static number of returned indices.
    valid: optional (N,) bool; invalid (padding) boxes are never kept.
    classes: optional (N,) int32; if given, boxes only suppress boxes of the
      same class (per-class, "batched" NMS).
    offset: box convention for IoU, 1.0 for mmdetection v1, 0.0 for
      torchvision.
    tile_size: boxes per tile; a speed/memory trade-off only.

  Returns:
    indices: (max_output,) int32 indices into `boxes`, kept boxes in
      decreasing score order, then padding (index 0).
    keep_valid: (max_output,) bool, True for real entries.
  """
  n = boxes.shape[0]
  if n == 0:
    raise ValueError("nms needs at least one (possibly invalid) box")
  if scores.shape != (n,):
    raise ValueError(f"scores {scores.shape} do not match boxes {boxes.shape}")
  if valid is None:
    valid = jnp.ones((n,), bool)
  tile = min(tile_size, _round_up(n, 8))
  k = _round_up(n, tile)
  num_tiles = k // tile

  neg_inf = jnp.array(-jnp.inf, scores.dtype)
  masked = jnp.where(valid, scores, neg_inf)
  _, order = jax.lax.top_k(masked, n)
  pad = k - n
  sorted_boxes = jnp.pad(boxes[order], ((0, pad), (0, 0)))
  sorted_valid = jnp.pad(valid[order], (0, pad))
  if classes is not None:
    sorted_classes = jnp.pad(classes[order], (0, pad), constant_values=-1)
  positions = jnp.arange(k)
  tile_positions = jnp.arange(tile)
  upper = tile_positions[:, None] < tile_positions[None, :]

  def overlaps(start):
    """(k, tile) bool: box i overlaps box start + j (and same class)."""
    tile_boxes = jax.lax.dynamic_slice_in_dim(sorted_boxes, start, tile)
    over = box_ops.pairwise_iou(sorted_boxes, tile_boxes, offset) > (
        iou_threshold)
    if classes is not None:
      tile_classes = jax.lax.dynamic_slice_in_dim(sorted_classes, start, tile)
      over &= sorted_classes[:, None] == tile_classes[None, :]
    return over

  def tile_step(state):
    t, keep, count = state
    start = t * tile
    over = overlaps(start)
    earlier = keep & (positions < start)
    suppressed = jnp.any(earlier[:, None] & over, axis=0)
    candidates = jax.lax.dynamic_slice_in_dim(keep, start, tile) & ~suppressed
    inner = jax.lax.dynamic_slice_in_dim(over, start, tile, axis=0) & upper

    def not_done(s):
      return s[1]

    def settle(s):
      cur, _ = s
      new = candidates & ~jnp.any(cur[:, None] & inner, axis=0)
      return new, jnp.any(new != cur)

    tile_keep, _ = jax.lax.while_loop(not_done, settle, (candidates, True))
    keep = jax.lax.dynamic_update_slice_in_dim(keep, tile_keep, start, 0)
    return t + 1, keep, count + jnp.sum(tile_keep)

  def more(state):
    t, _, count = state
    return (t < num_tiles) & (count < max_output)

  t, keep, _ = jax.lax.while_loop(
      more, tile_step, (jnp.int32(0), sorted_valid, jnp.int32(0)))
  keep &= positions < t * tile

  # First `max_output` kept positions, in order.
  key = jnp.where(keep, k - positions, 0)
  top_key, top_pos = jax.lax.top_k(key, min(max_output, k))
  out_valid = top_key > 0
  out_idx = jnp.where(out_valid, order[jnp.minimum(top_pos, n - 1)], 0)
  if max_output > k:
    extra = max_output - k
    out_idx = jnp.pad(out_idx, (0, extra))
    out_valid = jnp.pad(out_valid, (0, extra))
  return out_idx.astype(jnp.int32), out_valid


def batched_nms(boxes: jnp.ndarray, scores: jnp.ndarray, classes: jnp.ndarray,
                iou_threshold: float, max_output: int,
                valid: Optional[jnp.ndarray] = None, offset: float = 1.0,
                tile_size: int = 128) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """Per-class NMS (torchvision `batched_nms`): see `nms` for shapes."""
  return nms(boxes, scores, iou_threshold, max_output, valid=valid,
             classes=classes, offset=offset, tile_size=tile_size)
