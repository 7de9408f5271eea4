"""Mask R-CNN RoI heads (mmdetection v1 settings): box head, mask head, their
targets, losses and inference, with static shapes.

Classes: the heads predict K = C + 1 classes, 0 is background and k >= 1 is
thing class k - 1 (ground-truth `classes` are 0-based thing indices).
Boxes are (x1, y1, x2, y2) in pixels; `offset` selects the box convention
(1.0 for mmdetection v1, 0.0 for torchvision), see `vpsnet_jax.ops.boxes`.
"""

from typing import NamedTuple, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from vpsnet_jax import losses
from vpsnet_jax.modeling import assign
from vpsnet_jax.ops import boxes as box_ops
from vpsnet_jax.ops import conv as conv_ops
from vpsnet_jax.ops import masks as mask_ops
from vpsnet_jax.ops import nms as nms_ops
from vpsnet_jax.ops import roi_align as roi_ops

BOX_STDS = (0.1, 0.1, 0.2, 0.2)
BOX_MEANS = (0.0, 0.0, 0.0, 0.0)


class BoxHead(nn.Module):
  """Two shared FC layers, then classification and class-specific regression.

  Attributes:
    num_classes: K, including background.
    fc_dim: width of the two FC layers (1024).
    dtype: compute dtype (parameters stay float32).
  """
  num_classes: int
  fc_dim: int = 1024
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, roi_features: jnp.ndarray, return_embedding=False):
    """roi_features: (R, 7, 7, C) -> logits (R, K), deltas (R, K, 4) float32.

    With `return_embedding`, also the (R, fc_dim) output of the FC layers.
    """
    # mmdetection v1 initialisation: shared FCs Xavier-uniform, classifier
    # N(0, 0.01), regressor N(0, 0.001), zero biases.
    dense = lambda f, init, name: nn.Dense(f, dtype=self.dtype,
                                           kernel_init=init, name=name)
    xavier = nn.initializers.xavier_uniform()
    x = roi_features.reshape(roi_features.shape[0], -1).astype(self.dtype)
    x = nn.relu(dense(self.fc_dim, xavier, "fc1")(x))
    x = nn.relu(dense(self.fc_dim, xavier, "fc2")(x))
    logits = dense(self.num_classes, nn.initializers.normal(0.01), "cls")(x)
    deltas = dense(4 * self.num_classes, nn.initializers.normal(0.001),
                   "reg")(x)
    out = (logits.astype(jnp.float32),
           deltas.reshape(-1, self.num_classes, 4).astype(jnp.float32))
    return out + (x,) if return_embedding else out


class Upsample2x(nn.Module):
  """2x2 transposed convolution with stride 2 (no overlap), as one matmul.

  out[n, 2i + a, 2j + b] = x[n, i, j] @ kernel[a, b] + bias; the kernel is
  torchvision's ConvTranspose2d weight (in, out, a, b) moved to
  (a, b, in, out). Written as an einsum because XLA's CPU gradient of a
  strided transposed convolution is many times slower than a matmul.
  """
  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """x: (N, H, W, C) -> (N, 2H, 2W, features)."""
    kernel = self.param(
        "kernel", nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
        (2, 2, x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,),
                      jnp.float32)
    n, h, w, _ = x.shape
    y = jnp.einsum("nijc,abco->niajbo", x.astype(self.dtype),
                   kernel.astype(self.dtype))
    return y.reshape(n, 2 * h, 2 * w, self.features) + bias.astype(self.dtype)


class MaskHead(nn.Module):
  """Four 3x3 convs, a 2x2 stride-2 deconvolution, per-class mask logits.

  Attributes:
    num_classes: K, including background (its channel is never used).
    conv_dim: channels of the convolutions (256).
    num_convs: number of 3x3 convolutions (4).
    dtype: compute dtype.
    conv: the convolution module (`conv_ops.Conv` or `conv_ops.conv_def(
      impl)`).
  """
  num_classes: int
  conv_dim: int = 256
  num_convs: int = 4
  dtype: jnp.dtype = jnp.float32
  conv: conv_ops.ModuleDef = conv_ops.Conv

  @nn.compact
  def __call__(self, roi_features: jnp.ndarray) -> jnp.ndarray:
    """roi_features: (R, 14, 14, C) -> mask logits (R, 28, 28, K) float32."""
    # mmdetection v1 initialisation: Kaiming normal (fan_out, ReLU) for
    # every conv, the deconvolution and the logits, zero biases.
    kaiming = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
    x = roi_features.astype(self.dtype)
    for i in range(self.num_convs):
      x = nn.relu(self.conv(self.conv_dim, (3, 3), padding=1,
                            dtype=self.dtype, kernel_init=kaiming,
                            name=f"conv{i + 1}")(x))
    x = nn.relu(Upsample2x(self.conv_dim, dtype=self.dtype, name="deconv")(x))
    x = self.conv(self.num_classes, (1, 1), dtype=self.dtype,
                  kernel_init=kaiming, name="logits")(x)
    return x.astype(jnp.float32)


class RcnnTargets(NamedTuple):
  """Sampled RoIs and their targets; S samples, positives first."""
  rois: jnp.ndarray  # (S, 4) float32
  valid: jnp.ndarray  # (S,) bool
  labels: jnp.ndarray  # (S,) int32, 0 background, k >= 1 thing class k - 1
  box_targets: jnp.ndarray  # (S, 4) float32 normalised deltas
  positive: jnp.ndarray  # (S,) bool
  gt_index: jnp.ndarray  # (S,) int32, matched ground-truth box (positives)


def sample_rois(key: jnp.ndarray, proposals: jnp.ndarray,
                proposal_valid: jnp.ndarray, gt_boxes: jnp.ndarray,
                gt_classes: jnp.ndarray, gt_valid: jnp.ndarray,
                num_samples: int = 512, pos_fraction: float = 0.25,
                pos_iou: float = 0.5, neg_iou: float = 0.5,
                add_gt: bool = True, stds: Sequence[float] = BOX_STDS,
                offset: float = 1.0) -> RcnnTargets:
  """Assigns proposals to boxes and samples the R-CNN training RoIs.

  mmdetection v1 R-CNN settings: IoU >= 0.5 positive, [0, 0.5) negative,
  512 samples, at most 25 % positive, ground-truth boxes added as proposals.

  Args:
    key: `jax.random` key.
    proposals: (N, 4) float32.
    proposal_valid: (N,) bool.
    gt_boxes: (G, 4) float32, padded.
    gt_classes: (G,) int32 thing class (0-based).
    gt_valid: (G,) bool.
    num_samples, pos_fraction, pos_iou, neg_iou, add_gt: sampling settings.
    stds: regression target normalisation.
    offset: box convention.

  Returns:
    `RcnnTargets` of S = num_samples RoIs.
  """
  if add_gt:
    proposals = jnp.concatenate([gt_boxes, proposals], axis=0)
    proposal_valid = jnp.concatenate([gt_valid, proposal_valid], axis=0)
  iou = box_ops.pairwise_iou(proposals, gt_boxes, offset=offset)
  assigned = assign.max_iou_assign(iou, proposal_valid, gt_valid,
                                   pos_iou=pos_iou, neg_iou=neg_iou,
                                   min_pos_iou=pos_iou)
  s = assign.sample(key, assigned, num_samples, pos_fraction)
  rois = proposals[s.index]
  gt_index = jnp.maximum(assigned[s.index] - 1, 0)
  labels = jnp.where(s.positive, gt_classes[gt_index] + 1, 0)
  targets = box_ops.encode(rois, gt_boxes[gt_index], BOX_MEANS, stds,
                           offset=offset)
  targets = jnp.where(s.positive[:, None], targets, 0.0)
  return RcnnTargets(jax.lax.stop_gradient(rois), s.valid,
                     labels.astype(jnp.int32), targets, s.positive,
                     gt_index.astype(jnp.int32))


def mask_targets(gt_masks: jnp.ndarray, rois: jnp.ndarray,
                 gt_index: jnp.ndarray, size: int = 28,
                 offset: float = 1.0) -> jnp.ndarray:
  """Binary mask targets: RoIAlign of each RoI's ground-truth mask.

  Args:
    gt_masks: (G, H, W) {0, 1} masks at image resolution.
    rois: (P, 4) float32 positive RoIs.
    gt_index: (P,) int32 their ground-truth boxes.
    size: M, the mask head's output size.
    offset: box convention of RoIAlign.

  Returns:
    (P, M, M) float32 in {0, 1} (RoIAlign value >= 0.5).
  """
  # One RoIAlign over the masks as channels; each RoI keeps its own channel.
  feats = jnp.moveaxis(gt_masks.astype(jnp.float32), 0, -1)  # (H, W, G)
  sampled = roi_ops.roi_align(feats, rois, (size, size), 1.0, 2, offset)
  own = jnp.take_along_axis(sampled, gt_index[:, None, None, None], axis=-1)
  return (own[..., 0] >= 0.5).astype(jnp.float32)


def box_losses(logits: jnp.ndarray, deltas: jnp.ndarray,
               targets: RcnnTargets, beta: float = 1.0) -> Tuple[jnp.ndarray,
                                                                 jnp.ndarray]:
  """Softmax cross-entropy and smooth L1 of the box head (mmdetection v1).

  Both are averaged over the valid samples; the regression is the smooth L1
  of the labelled class's deltas on positives only.

  Args:
    logits: (S, K) float32.
    deltas: (S, K, 4) float32.
    targets: the sampled `RcnnTargets`.
    beta: smooth L1 transition point.

  Returns:
    (loss_cls, loss_box) scalars.
  """
  count = jnp.sum(targets.valid)
  loss_cls = losses.softmax_cross_entropy(logits, targets.labels,
                                          targets.valid, count)
  pred = jnp.take_along_axis(deltas, targets.labels[:, None, None], axis=1)
  loss_box = losses.smooth_l1(pred[:, 0], targets.box_targets, beta,
                              targets.positive[:, None], count)
  return loss_cls, loss_box


def mask_loss(mask_logits: jnp.ndarray, labels: jnp.ndarray,
              targets: jnp.ndarray, positive: jnp.ndarray) -> jnp.ndarray:
  """Per-class binary cross-entropy, mean over positive RoIs' pixels.

  Args:
    mask_logits: (P, M, M, K) float32.
    labels: (P,) int32 class of each RoI (k >= 1 for positives).
    targets: (P, M, M) float32 in {0, 1}.
    positive: (P,) bool.

  Returns:
    The scalar loss (0 without positives).
  """
  logit = jnp.take_along_axis(mask_logits, labels[:, None, None, None],
                              axis=-1)[..., 0]
  pixels = jnp.sum(positive) * logit.shape[1] * logit.shape[2]
  return losses.sigmoid_cross_entropy(logit, targets,
                                      positive[:, None, None], pixels)


class Detections(NamedTuple):
  """At most D detections of one image, by decreasing score."""
  boxes: jnp.ndarray  # (D, 4) float32
  scores: jnp.ndarray  # (D,) float32
  classes: jnp.ndarray  # (D,) int32, 0-based thing class
  valid: jnp.ndarray  # (D,) bool


def detect(logits: jnp.ndarray, deltas: jnp.ndarray, rois: jnp.ndarray,
           roi_valid: jnp.ndarray, image_size: Tuple[int, int],
           score_threshold: float = 0.05, nms_iou: float = 0.5,
           max_detections: int = 100, max_candidates: Optional[int] = None,
           stds: Sequence[float] = BOX_STDS, offset: float = 1.0,
           class_agnostic: bool = False) -> Detections:
  """Boxes, scores and classes from the box head (mmdet v1 multiclass NMS).

  Every (RoI, class) pair above the score threshold is a candidate, with its
  class-specific box; per-class NMS keeps the best `max_detections`. With
  `class_agnostic`, one NMS over all candidates instead (UPSNet's
  `MaskROI` for the panoptic head: threshold 0.6, NMS 0.5).

  Args:
    logits: (R, K) float32 box head logits.
    deltas: (R, K, 4) float32.
    rois: (R, 4) float32 proposals.
    roi_valid: (R,) bool.
    image_size: (H, W) to clip boxes to (Python ints or traced scalars).
    score_threshold: candidates need a larger class probability.
    nms_iou: per-class NMS IoU threshold.
    max_detections: D.
    max_candidates: if set, only the best this many candidates enter NMS
      (bounds the cost for many classes; None keeps all R * C).
    stds: regression normalisation.
    offset: box convention.
    class_agnostic: NMS across classes.

  Returns:
    `Detections`.
  """
  num_rois, num_k = logits.shape
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[:, 1:]
  boxes = box_ops.decode(rois[:, None, :], deltas[:, 1:], BOX_MEANS, stds,
                         max_shape=image_size, offset=offset)
  scores = probs.reshape(-1)
  boxes = boxes.reshape(-1, 4)
  classes = jnp.tile(jnp.arange(num_k - 1, dtype=jnp.int32), num_rois)
  valid = jnp.repeat(roi_valid, num_k - 1) & (scores > score_threshold)
  if max_candidates is not None and max_candidates < scores.shape[0]:
    _, top = jax.lax.top_k(jnp.where(valid, scores, -1.0), max_candidates)
    boxes, scores, classes, valid = (boxes[top], scores[top], classes[top],
                                     valid[top])
  keep, keep_valid = nms_ops.nms(
      boxes, scores, nms_iou, max_detections, valid=valid,
      classes=None if class_agnostic else classes, offset=offset)
  return Detections(jnp.where(keep_valid[:, None], boxes[keep], 0.0),
                    jnp.where(keep_valid, scores[keep], 0.0),
                    jnp.where(keep_valid, classes[keep], 0), keep_valid)


def detection_masks(mask_logits: jnp.ndarray, detections: Detections,
                    image_shape: Tuple[int, int]) -> jnp.ndarray:
  """Mask probabilities of the detections pasted into the image.

  Args:
    mask_logits: (D, M, M, K) float32 mask head output on the detected boxes.
    detections: the `Detections` they belong to.
    image_shape: static (H, W).

  Returns:
    (D, H, W) float32 probabilities, 0 outside each box and for padding.
  """
  logit = jnp.take_along_axis(
      mask_logits, (detections.classes + 1)[:, None, None, None],
      axis=-1)[..., 0]
  probs = mask_ops.paste_masks(jax.nn.sigmoid(logit), detections.boxes,
                               image_shape)
  return jnp.where(detections.valid[:, None, None], probs, 0.0)


def roi_features(features: Sequence[jnp.ndarray], rois: jnp.ndarray,
                 output_size: int, strides: Sequence[int] = (4, 8, 16, 32),
                 offset: float = 1.0) -> jnp.ndarray:
  """Multi-level RoIAlign (sampling ratio 2) of one image's P2-P5 maps.

  Args:
    features: 4 arrays (H_l, W_l, C), P2 first.
    rois: (R, 4) float32.
    output_size: 7 for the box / track heads, 14 for the mask head.
    strides: the levels' strides.
    offset: box convention (RoIAlign extent and FPN level assignment).

  Returns:
    (R, output_size, output_size, C).
  """
  return roi_ops.multilevel_roi_align(
      features, rois, None, (output_size, output_size), strides, 2, offset)
