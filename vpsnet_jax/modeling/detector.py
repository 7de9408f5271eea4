"""Mask R-CNN with a ResNet-FPN: VPSNet's image-level base (mmdetection v1).

`MaskRCNN` is one `flax.linen` module with three methods that share its
parameters: `features` (backbone + FPN), `losses` (training) and `detect`
(inference). VPSNet (issue 6) reuses the same parts and inserts its neck and
Fuse module between the FPN and the heads.

Batch (per device; N images padded to one size H x W, G instances padded):
  images:     (N, H, W, 3) float32, normalised
  image_size: (N, 2) int32, (h, w) before padding
  gt_boxes:   (N, G, 4) float32 (x1, y1, x2, y2)
  gt_classes: (N, G) int32, 0-based thing class
  gt_valid:   (N, G) bool
  gt_masks:   (N, G, H, W) uint8 / bool
"""

import dataclasses
from typing import Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vpsnet_jax.modeling import backbone as backbone_lib
from vpsnet_jax.modeling import fpn as fpn_lib
from vpsnet_jax.modeling import roi_heads
from vpsnet_jax.modeling import rpn as rpn_lib
from vpsnet_jax.ops import anchors as anchor_ops
from vpsnet_jax.ops import conv as conv_ops

# DetectorConfig.remat.
REMAT = ("none", "backbone", "heads", "all")


@dataclasses.dataclass(frozen=True)
class DetectorConfig:
  """Hyper-parameters (mmdetection v1 Mask R-CNN R50-FPN defaults)."""
  num_classes: int = 8  # Thing classes C (the heads predict C + 1).
  depth: int = 50
  frozen_stages: int = 1
  fpn_dim: int = 256
  anchor_scales: Tuple[float, ...] = (8.0,)
  anchor_ratios: Tuple[float, ...] = (0.5, 1.0, 2.0)
  anchor_strides: Tuple[int, ...] = (4, 8, 16, 32, 64)
  rpn_train_proposals: int = 2000  # pre-NMS per level, post-NMS, kept
  rpn_test_proposals: int = 1000
  rpn_nms: float = 0.7
  # Anchors crossing the image border by more than this are ignored in
  # training (mmdetection v1: 0); -1 keeps every anchor.
  rpn_allowed_border: float = 0.0
  rcnn_samples: int = 512
  rcnn_pos_fraction: float = 0.25
  box_fc_dim: int = 1024
  mask_conv_dim: int = 256
  score_threshold: float = 0.05
  nms_iou: float = 0.5
  max_detections: int = 100
  max_candidates: Optional[int] = 2000
  offset: float = 1.0  # Box convention: 1 mmdetection v1, 0 torchvision.
  anchor_style: str = "mmdet"  # Or "torchvision" (parity tests).
  dtype: str = "float32"  # Compute dtype; parameters are float32.
  # Convolution implementation of every conv of the model (`ops.conv`):
  # "xla" (lax.conv, for GPU/TPU) or "cpu" (CPU-tuned im2col / matmul
  # weight gradients). The config's "auto" is resolved by the code that
  # builds the model (`conv_ops.resolve_conv_impl`), not here. It changes
  # neither the parameters nor (beyond float rounding) the outputs.
  conv_impl: str = "xla"
  # Activation rematerialisation (`nn.remat`, recomputed in the backward
  # pass instead of stored): "none", "backbone" (every ResNet block),
  # "heads" (every module after the backbone: FPN, RPN, box, mask and
  # VPSNet's semantic, fuse, refine and track heads) or "all". Same
  # parameters and outputs; less activation memory, more compute.
  remat: str = "none"

  def __post_init__(self):
    if self.remat not in REMAT:
      raise ValueError(f"remat must be one of {REMAT}, got {self.remat!r}")
    if self.conv_impl not in conv_ops.IMPLS:
      raise ValueError(f"conv_impl must be one of {conv_ops.IMPLS}, got "
                       f"{self.conv_impl!r} (resolve 'auto' with "
                       "ops.conv.resolve_conv_impl)")

  @property
  def remat_backbone(self) -> bool:
    return self.remat in ("backbone", "all")

  def head(self, module_cls):
    """`module_cls`, rematerialised when `remat` covers the heads."""
    return nn.remat(module_cls) if self.remat in ("heads", "all") else (
        module_cls)

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def num_anchors(self) -> int:
    return len(self.anchor_scales) * len(self.anchor_ratios)

  @property
  def max_mask_rois(self) -> int:
    """Mask RoIs per image in training: at most the sampled positives."""
    return int(self.rcnn_samples * self.rcnn_pos_fraction)


def level_anchors(cfg: DetectorConfig, feats: Sequence[jnp.ndarray]) -> list:
  """Static anchors of every FPN level: L NumPy arrays (H_l * W_l * A, 4)."""
  sizes = [f.shape[1:3] for f in feats]
  if cfg.anchor_style == "mmdet":
    return anchor_ops.multilevel_anchors(sizes, cfg.anchor_strides,
                                         cfg.anchor_scales, cfg.anchor_ratios)
  if cfg.anchor_style == "torchvision":
    return [anchor_ops.torchvision_grid_anchors(s, st, cfg.anchor_scales,
                                                cfg.anchor_ratios)
            for s, st in zip(sizes, cfg.anchor_strides)]
  raise ValueError(f"unknown anchor_style {cfg.anchor_style!r}")


def _image_keys(key, n: int):
  """(RPN keys, R-CNN keys), each [n]: from one key for the batch (split
  per image), or from [n] keys, one per image (the trainer's
  `step.example_keys`: an image's samples then do not depend on the
  other images of its batch)."""
  typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
  if jnp.ndim(key) == (1 if typed else 2):
    keys = jax.vmap(jax.random.split)(key)
    return keys[:, 0], keys[:, 1]
  k_rpn, k_rcnn = jax.random.split(key)
  return jax.random.split(k_rpn, n), jax.random.split(k_rcnn, n)


class MaskRCNN(nn.Module):
  """ResNet-FPN Mask R-CNN; see the module docstring for the batch format."""
  cfg: DetectorConfig

  @property
  def conv(self) -> conv_ops.ModuleDef:
    """The convolution module of every submodule (`cfg.conv_impl`)."""
    return conv_ops.conv_def(self.cfg.conv_impl)

  def setup(self):
    cfg, dt, conv = self.cfg, self.cfg.compute_dtype, self.conv
    self.backbone = backbone_lib.ResNet(depth=cfg.depth,
                                        frozen_stages=cfg.frozen_stages,
                                        dtype=dt, conv=conv,
                                        remat=cfg.remat_backbone)
    self.fpn = cfg.head(fpn_lib.FPN)(features=cfg.fpn_dim,
                                     num_outs=len(cfg.anchor_strides),
                                     dtype=dt, conv=conv)
    self.rpn_head = cfg.head(rpn_lib.RPNHead)(features=cfg.fpn_dim,
                                              num_anchors=cfg.num_anchors,
                                              dtype=dt, conv=conv)
    self.box_head = cfg.head(roi_heads.BoxHead)(
        cfg.num_classes + 1, cfg.box_fc_dim, dtype=dt)
    self.mask_head = cfg.head(roi_heads.MaskHead)(
        cfg.num_classes + 1, cfg.mask_conv_dim, dtype=dt, conv=conv)

  def features(self, images: jnp.ndarray) -> Tuple[jnp.ndarray, ...]:
    """images (N, H, W, 3) -> FPN levels P2..P6, (N, H_l, W_l, fpn_dim)."""
    return self.fpn(self.backbone(images))

  def __call__(self, images):
    """Initialises every parameter: runs the features and all heads."""
    feats = self.features(images)
    self.rpn_head(feats)
    n = images.shape[0]
    rois = jnp.tile(jnp.array([[0., 0., 15., 15.]]), (n, 1, 1))
    self.box_head(self._roi_features(feats, rois, 7)[0])
    self.mask_head(self._roi_features(feats, rois, 14)[0])
    return feats

  # ------------------------------------------------------------- pieces

  def _roi_features(self, feats, rois, size):
    """RoIAlign of (N, R, 4) RoIs on P2-P5 -> (N, R, size, size, C)."""
    levels = feats[:4]
    return jax.vmap(lambda f, r: roi_heads.roi_features(
        f, r, size, self.cfg.anchor_strides[:4], self.cfg.offset))(levels,
                                                                    rois)

  def proposals(self, feats, image_size, train: bool):
    """RPN head outputs and (N, P, 4) proposals, (N, P) valid."""
    cfg = self.cfg
    logits, deltas = self.rpn_head(feats)
    anchors = level_anchors(cfg, feats)
    n = cfg.rpn_train_proposals if train else cfg.rpn_test_proposals
    props, _, valid = jax.vmap(lambda lg, dl, size: rpn_lib.proposals(
        lg, dl, [jnp.asarray(a) for a in anchors], size, nms_pre=n,
        nms_post=n, max_num=n, nms_thr=cfg.rpn_nms, offset=cfg.offset))(
            [jax.lax.stop_gradient(x) for x in logits],
            [jax.lax.stop_gradient(x) for x in deltas], image_size)
    return logits, deltas, anchors, props, valid

  # ------------------------------------------------------------ training

  def losses(self, batch: Dict[str, jnp.ndarray], key: jnp.ndarray,
             feats: Optional[Sequence[jnp.ndarray]] = None
             ) -> Tuple[Dict[str, jnp.ndarray], Dict[str, jnp.ndarray]]:
    """Training losses of Mask R-CNN.

    Args:
      batch: see the module docstring.
      key: `jax.random` key for anchor and RoI sampling, or [N] keys, one
        per image.
      feats: FPN levels to use instead of `features(images)` (VPSNet passes
        its fused features).

    Returns:
      losses: {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox",
        "loss_mask"} float32 scalars.
      aux: {"rcnn_targets": RcnnTargets stacked over images, "feats": the
        FPN levels used, "box_feats": (N, S, 7, 7, C) RoI features of the
        sampled RoIs (VPSNet's track head reuses them)}.
    """
    cfg = self.cfg
    if feats is None:
      feats = self.features(batch["images"])
    n = batch["images"].shape[0]
    rpn_keys, rcnn_keys = _image_keys(key, n)
    logits, deltas, anchors, props, valid = self.proposals(
        feats, batch["image_size"], train=True)

    # RPN.
    sizes = [f.shape[1:3] for f in feats]
    all_anchors = jnp.asarray(np.concatenate(anchors))
    anchor_valid = jax.vmap(lambda size: jnp.concatenate([
        anchor_ops.valid_flags(s, size, st, cfg.num_anchors)
        for s, st in zip(sizes, cfg.anchor_strides)]))(batch["image_size"])
    targets = jax.vmap(lambda k, v, b, g, size: rpn_lib.anchor_targets(
        k, all_anchors, v, b, g, size,
        dict(offset=cfg.offset, allowed_border=cfg.rpn_allowed_border)))(
            rpn_keys, anchor_valid, batch["gt_boxes"],
            batch["gt_valid"], batch["image_size"])
    out = rpn_lib.rpn_losses(jnp.concatenate(logits, axis=1),
                             jnp.concatenate(deltas, axis=1), targets)

    # R-CNN: sample RoIs, box head on all of them, mask head on positives.
    t = jax.vmap(lambda k, p, v, b, c, g: roi_heads.sample_rois(
        k, p, v, b, c, g, cfg.rcnn_samples, cfg.rcnn_pos_fraction,
        offset=cfg.offset))(rcnn_keys, props, valid,
                            batch["gt_boxes"], batch["gt_classes"],
                            batch["gt_valid"])
    s = cfg.rcnn_samples
    box_feats = self._roi_features(feats, t.rois, 7)
    cls_logits, box_deltas = self.box_head(
        box_feats.reshape((n * s,) + box_feats.shape[2:]))
    flat = jax.tree.map(lambda x: x.reshape((n * s,) + x.shape[2:]), t)
    out["loss_cls"], out["loss_bbox"] = roi_heads.box_losses(
        cls_logits, box_deltas, flat)

    p = cfg.max_mask_rois
    mask_rois = t.rois[:, :p]
    mask_feats = self._roi_features(feats, mask_rois, 14)
    mask_logits = self.mask_head(
        mask_feats.reshape((n * p,) + mask_feats.shape[2:]))
    mask_t = jax.vmap(lambda m, r, g: roi_heads.mask_targets(
        m, r, g, mask_logits.shape[1], cfg.offset))(
            batch["gt_masks"], mask_rois, t.gt_index[:, :p])
    out["loss_mask"] = roi_heads.mask_loss(
        mask_logits, t.labels[:, :p].reshape(-1),
        mask_t.reshape((n * p,) + mask_t.shape[2:]),
        t.positive[:, :p].reshape(-1))
    return out, {"rcnn_targets": t, "feats": feats, "box_feats": box_feats}

  # ----------------------------------------------------------- inference

  def detect(self, images: jnp.ndarray, image_size: jnp.ndarray,
             feats: Optional[Sequence[jnp.ndarray]] = None
             ) -> Dict[str, jnp.ndarray]:
    """Detections with masks pasted at the padded image size.

    Args:
      images: (N, H, W, 3).
      image_size: (N, 2) int32 unpadded sizes (boxes are clipped to them).
      feats: optional FPN levels to use instead of `features(images)`.

    Returns:
      {"boxes": (N, D, 4), "scores": (N, D), "classes": (N, D) int32,
       "valid": (N, D) bool, "masks": (N, D, H, W) float32 probabilities,
       "proposals": (N, P, 4), "proposal_valid": (N, P)}.
    """
    cfg = self.cfg
    if feats is None:
      feats = self.features(images)
    n, height, width = images.shape[:3]
    _, _, _, props, valid = self.proposals(feats, image_size, train=False)
    r = props.shape[1]
    box_feats = self._roi_features(feats, props, 7)
    logits, deltas = self.box_head(box_feats.reshape((n * r,) +
                                                     box_feats.shape[2:]))
    dets = jax.vmap(lambda lg, dl, p, v, size: roi_heads.detect(
        lg, dl, p, v, (size[0], size[1]), cfg.score_threshold, cfg.nms_iou,
        cfg.max_detections, cfg.max_candidates, offset=cfg.offset))(
            logits.reshape(n, r, -1), deltas.reshape(n, r, -1, 4), props,
            valid, image_size)
    d = cfg.max_detections
    mask_feats = self._roi_features(feats, dets.boxes, 14)
    mask_logits = self.mask_head(mask_feats.reshape((n * d,) +
                                                    mask_feats.shape[2:]))
    masks = jax.vmap(lambda m, det: roi_heads.detection_masks(
        m, det, (height, width)))(mask_logits.reshape((n, d) +
                                                     mask_logits.shape[1:]),
                                  dets)
    return {"boxes": dets.boxes, "scores": dets.scores,
            "classes": dets.classes, "valid": dets.valid, "masks": masks,
            "proposals": props, "proposal_valid": valid}
