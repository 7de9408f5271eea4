"""Max-IoU assignment and random sampling with static shapes.

mmdetection v1's `MaxIoUAssigner` + `RandomSampler`, shared by the RPN
(anchors) and the R-CNN heads (proposals). Everything is a pure function of
arrays and a `jax.random` key: no boolean indexing, so shapes stay static
under `jit` and `pmap`.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

NEGATIVE = 0
IGNORE = -1


def max_iou_assign(iou: jnp.ndarray, candidate_valid: jnp.ndarray,
                   gt_valid: jnp.ndarray, pos_iou: float, neg_iou: float,
                   min_pos_iou: float, neg_iou_low: float = 0.0,
                   gt_max_assign_all: bool = True) -> jnp.ndarray:
  """Assigns each candidate to a ground-truth box, background or ignore.

  As mmdetection v1 `MaxIoUAssigner`: a candidate whose best IoU is
  >= `pos_iou` takes that box; one whose best IoU is in
  [`neg_iou_low`, `neg_iou`) is background; then every ground-truth box
  takes the candidates of its own best IoU when that IoU is >= `min_pos_iou`
  (all of them on ties when `gt_max_assign_all`), overriding the first rule.

  Args:
    iou: (N, G) float32 IoU of candidates with ground-truth boxes.
    candidate_valid: (N,) bool; invalid candidates are ignored.
    gt_valid: (G,) bool; padding boxes take part in nothing.
    pos_iou, neg_iou, min_pos_iou, neg_iou_low: thresholds.
    gt_max_assign_all: on ties for a box's best IoU, assign all candidates.

  Returns:
    (N,) int32: g + 1 for ground-truth box g, 0 for background, -1 ignored.
  """
  # Padding takes IoU 0, so that an image without boxes is all background.
  iou = jnp.where(gt_valid[None, :] & candidate_valid[:, None], iou, 0.0)
  if iou.shape[1] == 0:
    return jnp.where(candidate_valid, NEGATIVE, IGNORE).astype(jnp.int32)
  best_iou = iou.max(axis=1)
  best_gt = iou.argmax(axis=1)
  assigned = jnp.full(iou.shape[:1], IGNORE, jnp.int32)
  assigned = jnp.where((best_iou >= neg_iou_low) & (best_iou < neg_iou),
                       NEGATIVE, assigned)
  assigned = jnp.where(best_iou >= pos_iou, best_gt + 1, assigned)
  # Each box's best candidates, in box order (a later box wins, as the
  # reference's loop over boxes).
  gt_best = iou.max(axis=0)  # (G,)
  eligible = gt_valid & (gt_best >= min_pos_iou)
  if gt_max_assign_all:
    hit = (iou == gt_best[None, :]) & eligible[None, :]
  else:
    hit = (jax.nn.one_hot(iou.argmax(axis=0), iou.shape[0], axis=0) > 0) & (
        eligible[None, :])
  g = iou.shape[1]
  last = g - 1 - jnp.argmax(hit[:, ::-1], axis=1)
  assigned = jnp.where(hit.any(axis=1), last + 1, assigned)
  return jnp.where(candidate_valid, assigned, IGNORE).astype(jnp.int32)


class Samples(NamedTuple):
  """A fixed number S of sampled candidates; positives come first."""
  index: jnp.ndarray  # (S,) int32 candidate index (0 for padding).
  valid: jnp.ndarray  # (S,) bool, a real sample.
  positive: jnp.ndarray  # (S,) bool, a real positive sample.
  num_positive: jnp.ndarray  # () int32


def sample(key: jnp.ndarray, assigned: jnp.ndarray, num: int,
           pos_fraction: float) -> Samples:
  """Uniformly samples up to `num` candidates, at most a fraction positive.

  As mmdetection v1 `RandomSampler` (neg_pos_ub = -1): up to
  floor(num * pos_fraction) positives, then negatives fill the rest; fewer
  samples when there are not enough candidates.

  Args:
    key: a `jax.random` key.
    assigned: (N,) int32 from `max_iou_assign`.
    num: S, static number of samples.
    pos_fraction: the largest share of positives.

  Returns:
    `Samples`; slots [0, num_positive) hold positives.
  """
  n = assigned.shape[0]
  max_pos = min(int(num * pos_fraction), n)
  k_pos, k_neg = jax.random.split(key)
  u_pos = jax.random.uniform(k_pos, (n,))
  u_neg = jax.random.uniform(k_neg, (n,))
  pos = assigned > 0
  neg = assigned == NEGATIVE
  pos_score, pos_idx = jax.lax.top_k(jnp.where(pos, u_pos, -1.0), max_pos)
  num_pos = jnp.sum(pos_score >= 0, dtype=jnp.int32)
  k_negs = min(num, n)
  neg_score, neg_idx = jax.lax.top_k(jnp.where(neg, u_neg, -1.0), k_negs)
  num_neg_avail = jnp.sum(neg_score >= 0, dtype=jnp.int32)
  num_neg = jnp.minimum(num - num_pos, num_neg_avail)

  slot = jnp.arange(num)
  is_pos = slot < num_pos
  j = jnp.clip(slot - num_pos, 0, k_negs - 1)
  is_neg = (~is_pos) & (slot - num_pos < num_neg)
  pos_pad = jnp.concatenate(
      [pos_idx, jnp.zeros((num - max_pos,), pos_idx.dtype)])
  index = jnp.where(is_pos, pos_pad, jnp.where(is_neg, neg_idx[j], 0))
  return Samples(index.astype(jnp.int32), is_pos | is_neg, is_pos, num_pos)
