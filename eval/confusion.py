"""Per-frame confusion counts between ground-truth and predicted segments.

This is the only pass over pixels in the VPQ evaluator. For one annotated
frame it counts, for every pair (ground-truth segment, predicted segment), the
pixels they share. Segment ids are first mapped to dense per-video indices
(0 = void, 1..G / 1..P = the video's segments in sorted id order) through a
look-up table indexed by the RGB-encoded id; the counts are then one
`bincount` of `gt_index * P + pred_index`. Because segment ids are consistent
over the frames of a video, the confusion of a tube window is the sum of its
frames' confusions, so every window size k reuses the same per-frame counts.

Shapes are static inside `jit`: the numbers of segments are padded to buckets
(powers of two), so a dataset compiles a handful of times, not once per video.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from eval import common

ID_LIMIT = common.ID_LIMIT
# Marks padding in id tables; out of range of the look-up table, so dropped.
_PAD_ID = ID_LIMIT
_MIN_BUCKET = 16


def bucket_size(num_segments: int) -> int:
  """Static size for `num_segments` dense indices plus the void index 0."""
  n = max(_MIN_BUCKET, num_segments + 1)
  return 1 << (n - 1).bit_length()


def _padded_ids(ids: np.ndarray) -> np.ndarray:
  """Pads sorted segment ids (S,) to a bucket (B - 1,) with `_PAD_ID`."""
  out = np.full((bucket_size(len(ids)) - 1,), _PAD_ID, np.int32)
  out[:len(ids)] = ids
  return out


@functools.partial(jax.jit, donate_argnums=(0,))
def _update_lut(lut, old_ids, new_ids):
  """Replaces the ids of the previous video in `lut` by the new video's.

  Args:
    lut: (ID_LIMIT,) int32, dense index of each id, -1 for unknown ids and
      0 for id 0 (void). Donated: updated in place.
    old_ids: (B_old,) int32 ids to forget, padded with `_PAD_ID`.
    new_ids: (B_new,) int32 sorted ids, padded with `_PAD_ID`; id
      `new_ids[i]` gets dense index i + 1.

  Returns:
    The updated (ID_LIMIT,) int32 table.
  """
  lut = lut.at[old_ids].set(-1, mode="drop")
  dense = jnp.arange(1, new_ids.shape[0] + 1, dtype=jnp.int32)
  return lut.at[new_ids].set(dense, mode="drop")


def _decode_ids(x):
  """(H, W, 3) uint8 RGB-encoded or (H, W) integer ids -> (H, W) int32."""
  if x.ndim == 3:
    x = x.astype(jnp.int32)
    return x[..., 0] + 256 * x[..., 1] + 65536 * x[..., 2]
  return x.astype(jnp.int32)


def _dense_index(lut, x):
  """Maps ids to dense indices; -1 for ids the look-up table does not know."""
  ids = _decode_ids(x)
  dense = jnp.take(lut, ids, mode="fill", fill_value=-1)
  return jnp.where(ids < 0, -1, dense)


@functools.partial(jax.jit, static_argnames=("num_gt", "num_pred"))
def frame_confusion(gt_lut, pred_lut, gt, pred, *, num_gt, num_pred):
  """Counts the pixels shared by each (ground-truth, predicted) segment pair.

  Args:
    gt_lut: (ID_LIMIT,) int32 dense index of each ground-truth id (-1 unknown).
    pred_lut: (ID_LIMIT,) int32 dense index of each predicted id.
    gt: (H, W, 3) uint8 RGB-encoded ids or (H, W) integer ids.
    pred: same form and spatial size as `gt`.
    num_gt: static bucket size G_b > number of ground-truth segments.
    num_pred: static bucket size P_b > number of predicted segments.

  Returns:
    confusion: (G_b, P_b) int32; [i, j] = pixels with ground-truth dense index
      i and predicted dense index j (index 0 = void). Pixels with an unknown id
      are left out.
    unknown_gt: () int32, pixels whose ground-truth id is not in `gt_lut`.
    unknown_pred: () int32, pixels whose predicted id is not in `pred_lut`
      (among those with a known ground-truth id).
  """
  gi = _dense_index(gt_lut, gt)
  pi = _dense_index(pred_lut, pred)
  # Unknown ids go to two extra bins (a separate reduction would cost more
  # than the bincount itself on CPU).
  size = num_gt * num_pred
  key = jnp.where(gi < 0, size, jnp.where(pi < 0, size + 1, gi * num_pred + pi))
  counts = jnp.bincount(key.reshape(-1), length=size + 2)
  return counts[:size].reshape(num_gt, num_pred), counts[size], counts[size + 1]


class FrameConfusion:
  """Holds the device look-up tables and computes per-frame confusions.

  Usage, once per video: `set_video(gt_ids, pred_ids)` with the sorted segment
  ids of the whole video, then `__call__(gt, pred)` per frame. Calls return
  device arrays immediately (asynchronous dispatch).
  """

  def __init__(self):
    self._gt_lut = self._pred_lut = None
    self._gt_ids = self._pred_ids = np.full((0,), _PAD_ID, np.int32)
    self.num_gt = self.num_pred = 0

  @staticmethod
  def _empty_lut():
    return jnp.full((ID_LIMIT,), -1, jnp.int32).at[0].set(0)

  def set_video(self, gt_ids: np.ndarray, pred_ids: np.ndarray):
    """Installs the sorted (G,) and (P,) segment ids of one video (no 0)."""
    if self._gt_lut is None:
      self._gt_lut, self._pred_lut = self._empty_lut(), self._empty_lut()
    new_gt, new_pred = _padded_ids(gt_ids), _padded_ids(pred_ids)
    self._gt_lut = _update_lut(self._gt_lut, self._gt_ids, new_gt)
    self._pred_lut = _update_lut(self._pred_lut, self._pred_ids, new_pred)
    self._gt_ids, self._pred_ids = new_gt, new_pred
    self.num_gt, self.num_pred = len(new_gt) + 1, len(new_pred) + 1

  def __call__(self, gt, pred):
    return frame_confusion(self._gt_lut, self._pred_lut, gt, pred,
                           num_gt=self.num_gt, num_pred=self.num_pred)
