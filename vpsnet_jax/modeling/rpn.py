"""Region proposal network (mmdetection v1 `RPNHead` and its train/test path).

Shapes use N images, A anchors per location, L levels and K = sum_l H_l W_l A
anchors in total; per-level outputs are flattened in (y, x, anchor) order to
line up with `vpsnet_jax.ops.anchors.grid_anchors`. The per-image functions
(`assign_anchors`, `sample_anchors`, `anchor_targets`, `proposals`) are meant
to be `jax.vmap`-ed over images.
"""
from typing import Any, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from vpsnet_jax import losses
from vpsnet_jax.modeling import assign
from vpsnet_jax.ops import boxes as box_ops
from vpsnet_jax.ops import conv as conv_ops
from vpsnet_jax.ops import nms as nms_ops

Dtype = Any
ModuleDef = conv_ops.ModuleDef

# mmdetection v1 Mask R-CNN `train_cfg.rpn` (assigner, sampler, coder).
DEFAULT_TRAIN_CFG = dict(
    pos_iou=0.7, neg_iou=0.3, min_pos_iou=0.3, allowed_border=0.0,
    num_samples=256, pos_fraction=0.5, target_means=(0., 0., 0., 0.),
    target_stds=(1., 1., 1., 1.), offset=1.0)


class RPNHead(nn.Module):
  """Shared 3x3 conv + ReLU, then 1x1 objectness (sigmoid) and 1x1 deltas.

  Attributes:
    features: channels of the 3x3 conv (256).
    num_anchors: A (3 ratios x 1 scale).
    dtype: compute dtype; parameters float32; outputs are float32.
    conv: the convolution module (`conv_ops.Conv` or `conv_ops.conv_def(
      impl)`).
  """
  features: int = 256
  num_anchors: int = 3
  dtype: Dtype = jnp.float32
  conv: ModuleDef = conv_ops.Conv

  @nn.compact
  def __call__(self, feats: Sequence[jnp.ndarray]
               ) -> Tuple[Tuple[jnp.ndarray, ...], Tuple[jnp.ndarray, ...]]:
    """feats: L arrays (N, H_l, W_l, C).

    Returns:
      logits: L arrays (N, H_l * W_l * A) float32.
      deltas: L arrays (N, H_l * W_l * A, 4) float32.
    """
    init = nn.initializers.normal(0.01)  # mmdet v1 normal_init(std=0.01)
    conv = lambda f, k, name: self.conv(
        f, (k, k), padding=((k // 2, k // 2),) * 2, dtype=self.dtype,
        kernel_init=init,
        bias_init=nn.initializers.zeros, name=name)
    shared = conv(self.features, 3, "rpn_conv")
    cls = conv(self.num_anchors, 1, "rpn_cls")
    reg = conv(self.num_anchors * 4, 1, "rpn_reg")
    logits, deltas = [], []
    for x in feats:
      y = nn.relu(shared(x.astype(self.dtype)))
      n = x.shape[0]
      logits.append(cls(y).reshape(n, -1).astype(jnp.float32))
      deltas.append(reg(y).reshape(n, -1, 4).astype(jnp.float32))
    return tuple(logits), tuple(deltas)


def inside_flags(anchors: jnp.ndarray, valid: jnp.ndarray,
                 image_shape, allowed_border: float = 0.0) -> jnp.ndarray:
  """mmdet v1 `anchor_inside_flags`. anchors: (K, 4), valid: (K,) -> (K,)."""
  h = jnp.asarray(image_shape[0], jnp.float32)
  w = jnp.asarray(image_shape[1], jnp.float32)
  if allowed_border < 0:
    return valid
  return (valid & (anchors[:, 0] >= -allowed_border) &
          (anchors[:, 1] >= -allowed_border) &
          (anchors[:, 2] < w + allowed_border) &
          (anchors[:, 3] < h + allowed_border))


def assign_anchors(anchors: jnp.ndarray, anchor_valid: jnp.ndarray,
                   gt_boxes: jnp.ndarray, gt_valid: jnp.ndarray,
                   pos_iou: float = 0.7, neg_iou: float = 0.3,
                   min_pos_iou: float = 0.3, offset: float = 1.0
                   ) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """Max-IoU assignment (mmdet v1 `MaxIoUAssigner`, gt_max_assign_all=True).

  Negative if max IoU in [0, neg_iou); positive if >= pos_iou; additionally
  every anchor attaining a ground truth's highest IoU (if that is
  >= min_pos_iou) is positive for it (later ground truths win ties).

  Args:
    anchors: (K, 4); anchor_valid: (K,) bool (invalid -> ignored).
    gt_boxes: (G, 4); gt_valid: (G,) bool (padding rows False).

  Returns:
    labels: (K,) int32, 1 positive, 0 negative, -1 ignored.
    matched: (K,) int32 index of the assigned ground truth (0 if none).
  """
  iou = box_ops.pairwise_iou(anchors, gt_boxes, offset)  # (K, G)
  assigned = assign.max_iou_assign(iou, anchor_valid, gt_valid, pos_iou,
                                   neg_iou, min_pos_iou)
  return jnp.minimum(assigned, 1), jnp.maximum(assigned - 1, 0)


def sample_anchors(key: jax.Array, labels: jnp.ndarray, num: int = 256,
                   pos_fraction: float = 0.5
                   ) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """Random sampling (mmdet v1 `RandomSampler`, neg_pos_ub=-1).

  Up to num * pos_fraction positives, the rest of `num` filled with
  negatives, uniformly without replacement, with static shapes.

  Args:
    key: PRNG key.
    labels: (K,) int32 from `assign_anchors`.

  Returns:
    sampled_pos: (K,) bool; sampled_neg: (K,) bool.
  """
  s = assign.sample(key, labels, num, pos_fraction)
  k = labels.shape[0]
  sampled_pos = jnp.zeros((k,), bool).at[s.index].max(s.positive)
  sampled_neg = jnp.zeros((k,), bool).at[s.index].max(s.valid & ~s.positive)
  return sampled_pos, sampled_neg


def anchor_targets(key: jax.Array, anchors: jnp.ndarray,
                   anchor_valid: jnp.ndarray, gt_boxes: jnp.ndarray,
                   gt_valid: jnp.ndarray, image_shape,
                   cfg: Optional[Dict[str, Any]] = None
                   ) -> Dict[str, jnp.ndarray]:
  """Training targets of one image's anchors.

  Args:
    key: PRNG key for sampling.
    anchors: (K, 4) all levels concatenated; anchor_valid: (K,) bool (from
      `anchors.valid_flags`).
    gt_boxes: (G, 4); gt_valid: (G,) bool.
    image_shape: (h, w) unpadded image size (anchors crossing it are
      ignored, allowed_border=0).
    cfg: overrides of `DEFAULT_TRAIN_CFG`.

  Returns:
    dict with labels (K,) float32 in {0, 1}, label_weights (K,) float32,
    bbox_targets (K, 4) float32, bbox_weights (K,) float32, and the sampled
    counts num_pos, num_neg, num_samples () int32.
  """
  c = dict(DEFAULT_TRAIN_CFG, **(cfg or {}))
  ok = inside_flags(anchors, anchor_valid, image_shape, c["allowed_border"])
  labels, matched = assign_anchors(anchors, ok, gt_boxes, gt_valid,
                                   c["pos_iou"], c["neg_iou"],
                                   c["min_pos_iou"], c["offset"])
  pos, neg = sample_anchors(key, labels, c["num_samples"], c["pos_fraction"])
  targets = box_ops.encode(anchors, gt_boxes[matched], c["target_means"],
                           c["target_stds"], c["offset"])
  targets = jnp.where(pos[:, None], targets, 0.0)
  return dict(labels=pos.astype(jnp.float32),
              label_weights=(pos | neg).astype(jnp.float32),
              bbox_targets=targets,
              bbox_weights=pos.astype(jnp.float32),
              num_pos=jnp.sum(pos).astype(jnp.int32),
              num_neg=jnp.sum(neg).astype(jnp.int32),
              num_samples=jnp.sum(pos | neg).astype(jnp.int32))


def rpn_losses(logits: jnp.ndarray, deltas: jnp.ndarray,
               targets: Dict[str, jnp.ndarray], beta: float = 1.0 / 9.0
               ) -> Dict[str, jnp.ndarray]:
  """mmdet v1 RPN losses, normalised by the sampled anchors of the batch.

  The normaliser is mmdet v1's num_total_pos + num_total_neg, each summed
  over images of max(count, 1).

  Args:
    logits: (N, K) all levels concatenated; deltas: (N, K, 4).
    targets: `anchor_targets` output stacked over images (leading N).

  Returns:
    {"loss_rpn_cls": (), "loss_rpn_bbox": ()} float32.
  """
  avg = (jnp.sum(jnp.maximum(targets["num_pos"], 1)) +
         jnp.sum(jnp.maximum(targets["num_neg"], 1)))
  cls = losses.sigmoid_cross_entropy(logits, targets["labels"],
                                     targets["label_weights"], avg)
  reg = losses.smooth_l1(deltas, targets["bbox_targets"], beta,
                         targets["bbox_weights"][..., None], avg)
  return {"loss_rpn_cls": cls, "loss_rpn_bbox": reg}


def proposals(logits: Sequence[jnp.ndarray], deltas: Sequence[jnp.ndarray],
              anchors: Sequence[jnp.ndarray], image_shape,
              nms_pre: int = 1000, nms_post: int = 1000, max_num: int = 1000,
              nms_thr: float = 0.7, target_means=(0., 0., 0., 0.),
              target_stds=(1., 1., 1., 1.), offset: float = 1.0
              ) -> Tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """Proposals of one image (mmdet v1 `RPNHead.get_bboxes_single`).

  Per level: top `nms_pre` scores, decode and clip to the image, NMS at
  `nms_thr` keeping `nms_post`; then the top `max_num` over all levels.
  mmdet v1 uses 2000/2000/2000 in training and 1000/1000/1000 in testing.

  Args:
    logits: L arrays (K_l,); deltas: L arrays (K_l, 4).
    anchors: L arrays (K_l, 4).
    image_shape: (h, w) of the unpadded image (ints or traced).

  Returns:
    boxes: (max_num, 4) float32, sorted by score; scores: (max_num,)
    float32 sigmoid probabilities; valid: (max_num,) bool.
  """
  all_boxes, all_scores, all_valid = [], [], []
  for lg, dl, an in zip(logits, deltas, anchors):
    scores = jax.nn.sigmoid(lg.astype(jnp.float32))
    top, idx = jax.lax.top_k(scores, min(nms_pre, scores.shape[0]))
    boxes = box_ops.decode(jnp.asarray(an)[idx], dl[idx], target_means,
                           target_stds, max_shape=image_shape, offset=offset)
    keep, keep_valid = nms_ops.nms(boxes, top, nms_thr, nms_post,
                                   offset=offset)
    all_boxes.append(boxes[keep])
    all_scores.append(top[keep])
    all_valid.append(keep_valid)
  boxes = jnp.concatenate(all_boxes)
  scores = jnp.concatenate(all_scores)
  valid = jnp.concatenate(all_valid)
  masked = jnp.where(valid, scores, -1.0)
  top, idx = jax.lax.top_k(masked, min(max_num, masked.shape[0]))
  out_valid = top >= 0
  out = (jnp.where(out_valid[:, None], boxes[idx], 0.0),
         jnp.where(out_valid, scores[idx], 0.0), out_valid)
  if max_num > masked.shape[0]:
    pad = max_num - masked.shape[0]
    out = tuple(jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)) for a in out)
  return out
