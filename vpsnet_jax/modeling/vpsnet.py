"""VPSNet (Kim et al., CVPR 2020): the assembled video panoptic model.

  backbone -> FPN -> [extra neck: gather -> fuse (align -> attend) ->
  refine -> redistribute] -> RPN, box, mask, [track], semantic and
  panoptic heads

`VPSNet` extends the image-level `detector.MaskRCNN` (same parameter names,
so detector checkpoints and the torchvision importers apply; the release's
checkpoints import with `checkpoints.release_import`) with the
gather/redistribute neck, the Fuse module, the UPSNet semantic and panoptic
heads and the MaskTrack track head. The paper's variants are one field,
`VPSNetConfig.variant`, not copies of code:

  variant    fuse  align  attend  track
  base        -     -      -       -     image-level UPSNet-style model
  align       x     x      -       -     aligned reference averaged in
  attend      x     -      x       -     attention over the unwarped reference
  fuse        x     x      x       -     the release's PanopticFuse
  track       -     -      -       x     the release's PanopticTrack
  fusetrack   x     x      x       x     the full VPSNet (PanopticFuseTrack)
  disjoined   x     x      x       x*    Table 4's Disjoined: * the track
                                         head reads the unfused FPN features

The extra neck (gather -> [fuse] -> refine -> redistribute, the release's
`BFPTcea`) exists in the variants that fuse, as in the release, whose
`PanopticTrack` (configs/cityscapes/track.py) has no extra neck: there the
heads read the FPN levels. `base`, `align` and `attend` have no release
counterpart; `base` follows `track` (no extra neck: an image-level
UPSNet), `align` and `attend` follow `fuse` (the extra neck, one half of
the Fuse module).

Methods (one `flax.linen` module, parameters shared):
  losses(batch, key)  training: dict of loss terms, aux (targets, metrics)
  infer(images, image_size, ref_gathered, flow, has_reference, ref_images)
                      online inference of one frame per image: panoptic
                      detections, track embeddings, the panoptic map, and
                      this frame's gathered feature (the next frame's
                      reference, so the backbone runs once per frame);
                      with cfg.flownet2 the flow is FlowNet2's from the
                      images to ref_images, computed here.

Training batch (per device; N images padded to H x W, both multiples of
32; G instances padded; the reference's keys are read only by variants that
fuse or track):
  images:        (N, H, W, 3) float32, normalised
  image_size:    (N, 2) int32 (h, w) before padding
  gt_boxes:      (N, G, 4) float32, the detector's box convention
  gt_classes:    (N, G) int32 0-based thing class
  gt_valid:      (N, G) bool (things only)
  gt_masks:      (N, G, H, W) uint8
  semantic:      (N, H/4, W/4) int32 semantic train ids, 255 = ignore,
                 pixels (4i, 4j) of semantic_full (the panoptic target; the
                 semantic loss with semantic_loss="quarter")
  semantic_full: (N, H, W) int32 the same at image resolution (the
                 semantic loss with semantic_loss="full", the release's)
  ref_images:    (N, H, W, 3) float32 the reference frames
  flow:          (N, H/4, W/4, 2) float32 initial flow target -> reference
                 at 1/4 scale, (dx, dy) in 1/4-scale pixels
                 (`ops.resize.quarter_flow`)
  has_reference: (N,) bool; False: the target is its own reference
  ref_boxes:     (N, G, 4) float32 reference ground-truth boxes
  ref_valid:     (N, G) bool
  gt_ref_index:  (N, G) int32 1 + index of each target instance in the
                 reference's instances, 0 when it is not there
"""

import dataclasses
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

from vpsnet_jax.modeling import detector
from vpsnet_jax.modeling import flownet2 as flownet2_lib
from vpsnet_jax.modeling import fuse as fuse_lib
from vpsnet_jax.modeling import neck as neck_lib
from vpsnet_jax.modeling import panoptic_head
from vpsnet_jax.modeling import roi_heads
from vpsnet_jax.modeling import semantic_head as semantic_lib
from vpsnet_jax.modeling import track_head as track_lib
from vpsnet_jax.ops.resize import quarter_flow


class Variant(NamedTuple):
  fuse: bool
  align: bool
  attend: bool
  track: bool
  # The track head reads the unfused FPN features (Disjoined).
  track_unfused: bool = False


VARIANTS = {
    "base": Variant(False, False, False, False),
    "align": Variant(True, True, False, False),
    "attend": Variant(True, False, True, False),
    "fuse": Variant(True, True, True, False),
    "track": Variant(False, False, False, True),
    "fusetrack": Variant(True, True, True, True),
    "disjoined": Variant(True, True, True, True, track_unfused=True),
}

WARP_GRIDS = ("exact", "release")
SEMANTIC_LOSSES = ("full", "quarter")


@dataclasses.dataclass(frozen=True)
class VPSNetConfig(detector.DetectorConfig):
  """Detector fields plus VPSNet's (release defaults; paper choices noted).

  `num_classes` (from DetectorConfig) is the number of thing classes C;
  `thing_channels[c]` is the semantic channel of thing class c, the other
  channels of the `num_semantic` are stuff, in increasing order.
  """
  variant: str = "fusetrack"
  num_semantic: int = 19
  thing_channels: Tuple[int, ...] = tuple(range(11, 19))
  # The release's UPSNetFPN: 256 -> 256 -> 128 -> 128 deformable convs.
  semantic_features: Tuple[int, ...] = (256, 128, 128)
  semantic_groups: int = 32
  # Release: cross-entropy of the x4 upsampled logits against the
  # full-resolution labels ("full"); the paper's 1/4-scale loss: "quarter".
  semantic_loss: str = "full"
  # The feature warp's grid (`ops.warp.warp`): the release's WarpingLayer
  # ("release": grid_sample on a linspace grid, align_corners=False), or
  # "exact" (x + dx).
  warp_grid: str = "release"
  # Release 0.5; the paper says 1.0.
  panoptic_weight: float = 0.5
  track_weight: float = 0.5
  track_dim: int = 1024
  # Release: dot product; the paper says cosine.
  track_cosine: bool = False
  max_displacement: int = 4
  # Panoptic detections (UPSNet MaskROI): class probability above this
  # after class-agnostic NMS; at most `max_detections` of them.
  panoptic_score_threshold: float = 0.6
  panoptic_nms: float = 0.5
  # Mask removal: drop a mask more than this fraction covered by
  # higher-scoring masks of its class.
  mask_overlap_threshold: float = 0.3
  # The initial flow from FlowNet2 on the device (config.input.flow=
  # 'flownet2', the release's) instead of batch["flow"]: its frozen weights
  # are batch_stats["flownet2"] (zeros until loaded: `flownet2_import`),
  # the images are de-normalised with pixel_mean / pixel_std (RGB).
  flownet2: bool = False
  pixel_mean: Tuple[float, ...] = (0.0, 0.0, 0.0)
  pixel_std: Tuple[float, ...] = (1.0, 1.0, 1.0)

  def __post_init__(self):
    super().__post_init__()
    if self.variant not in VARIANTS:
      raise ValueError(f"Unknown VPSNet variant {self.variant!r}; one of "
                       f"{sorted(VARIANTS)}")
    if self.warp_grid not in WARP_GRIDS:
      raise ValueError(f"warp_grid must be one of {WARP_GRIDS}, got "
                       f"{self.warp_grid!r}")
    if self.semantic_loss not in SEMANTIC_LOSSES:
      raise ValueError(f"semantic_loss must be one of {SEMANTIC_LOSSES}, got "
                       f"{self.semantic_loss!r}")
    if len(self.thing_channels) != self.num_classes:
      raise ValueError(f"thing_channels has {len(self.thing_channels)} "
                       f"entries for num_classes={self.num_classes}")
    if len(set(self.thing_channels)) != len(self.thing_channels) or any(
        not 0 <= c < self.num_semantic for c in self.thing_channels):
      raise ValueError(f"thing_channels {self.thing_channels} must be "
                       f"distinct channels of num_semantic={self.num_semantic}")

  @property
  def spec(self) -> Variant:
    return VARIANTS[self.variant]

  @property
  def stuff_channels(self) -> Tuple[int, ...]:
    things = set(self.thing_channels)
    return tuple(c for c in range(self.num_semantic) if c not in things)


class VPSNet(detector.MaskRCNN):
  """See the module docstring; `cfg` is a `VPSNetConfig`."""
  cfg: VPSNetConfig

  def setup(self):
    super().setup()
    cfg, dt, conv = self.cfg, self.cfg.compute_dtype, self.conv
    if cfg.spec.fuse:
      self.refine = cfg.head(neck_lib.Refine)(dtype=dt, conv=conv)
      self.fuse = cfg.head(fuse_lib.Fuse)(
          cfg.max_displacement, use_align=cfg.spec.align,
          use_attend=cfg.spec.attend, dtype=dt, conv=conv,
          warp_grid=cfg.warp_grid)
    self.semantic_head = cfg.head(semantic_lib.SemanticHead)(
        cfg.num_semantic, tuple(cfg.semantic_features), cfg.semantic_groups,
        dtype=dt, conv=conv)
    if cfg.spec.track:
      self.track_head = cfg.head(track_lib.TrackHead)(cfg.track_dim,
                                                      dtype=dt)
    if cfg.flownet2:
      # A variable of batch_stats (frozen, no gradient, no optimizer
      # state), saved with the model like the release's `flownet2.*` keys.
      self.flownet2_weights = self.variable(
          "batch_stats", "flownet2", lambda: jax.tree_util.tree_map(
              lambda s: jnp.zeros(s.shape, s.dtype),
              flownet2_lib.abstract_variables()["params"]))

  def initial_flow(self, images: jnp.ndarray, ref_images: jnp.ndarray,
                   has_reference: jnp.ndarray) -> Tuple[jnp.ndarray,
                                                        jnp.ndarray]:
    """FlowNet2's flow target -> reference, as the release's `compute_flow`:
    the normalised images back to RGB, zero-padded at the bottom and right
    to multiples of 64, the flow cropped back, and its 1/4-scale bilinear
    downscale (`ops.resize.quarter_flow`). No gradient.

    Args:
      images, ref_images: (N, H, W, 3) normalised, H and W multiples of 4.
      has_reference: (N,) bool; where False the flow is zero (the target is
        its own reference, as with the pipeline's flow).

    Returns:
      (flow (N, H, W, 2), flow_quarter (N, H/4, W/4, 2)) in pixels of
      their scale.
    """
    if not self.cfg.flownet2:
      raise ValueError("initial_flow needs VPSNetConfig.flownet2=True")
    mean = jnp.asarray(self.cfg.pixel_mean, jnp.float32)
    std = jnp.asarray(self.cfg.pixel_std, jnp.float32)
    flow = flownet2_lib.flow_between(
        self.flownet2_weights.value,
        images.astype(jnp.float32) * std + mean,
        ref_images.astype(jnp.float32) * std + mean,
        conv_impl=self.cfg.conv_impl)
    flow = jnp.where(has_reference[:, None, None, None], flow, 0.0)
    flow = jax.lax.stop_gradient(flow)
    return flow, quarter_flow(flow)

  def __call__(self, images):
    """Initialises every parameter of the variant; returns the fused FPN."""
    n = images.shape[0]
    feats = self.features(images)
    gathered = neck_lib.gather(feats)
    flow = jnp.zeros(gathered.shape[:3] + (2,), jnp.float32)
    fused, _ = self.neck_features(feats, gathered, flow,
                                  jnp.zeros((n,), bool))
    self.semantic_head(fused[:4])
    self.rpn_head(fused)
    rois = jnp.tile(jnp.array([[0., 0., 15., 15.]]), (n, 1, 1))
    box_feats = self._roi_features(fused, rois, 7)
    self.box_head(box_feats[0])
    self.mask_head(self._roi_features(fused, rois, 14)[0])
    if self.cfg.spec.track:
      self.track_head(box_feats)
    return fused

  # ---------------------------------------------------------------- neck

  def neck_features(self, feats: Sequence[jnp.ndarray],
                    ref_gathered: Optional[jnp.ndarray] = None,
                    flow: Optional[jnp.ndarray] = None,
                    has_reference: Optional[jnp.ndarray] = None
                    ) -> Tuple[Tuple[jnp.ndarray, ...], jnp.ndarray]:
    """gather -> fuse -> refine -> redistribute (variants that fuse; the
    others return `feats` itself, with no extra neck).

    Args:
      feats: FPN levels P2..P6 of the target, (N, H_l, W_l, C).
      ref_gathered: (N, H_2, W_2, C) the reference's gathered feature
        (variants that fuse).
      flow: (N, H_2, W_2, 2) initial flow target -> reference at P2 scale.
      has_reference: (N,) bool; False: the target is its own reference.

    Returns:
      the redistributed levels (shapes of `feats`) and the target's
      gathered feature (N, H_2, W_2, C) before fusion.
    """
    gathered = neck_lib.gather(feats)
    if not self.cfg.spec.fuse:
      return tuple(feats), gathered
    if ref_gathered is None or flow is None:
      raise ValueError(f"variant {self.cfg.variant!r} fuses: it needs the "
                       "reference's gathered feature and the flow")
    fused = self.fuse(gathered, ref_gathered, flow, has_reference)
    return neck_lib.redistribute(self.refine(fused), feats), gathered

  def _take_class(self, mask_logits, classes):
    """(N, D, M, M, K) per-class logits -> (N, D, M, M) of 0-based classes."""
    return jnp.take_along_axis(
        mask_logits, (classes + 1)[:, :, None, None, None], axis=-1)[..., 0]

  def _mask_logits(self, feats, boxes):
    """Mask head on (N, D, 4) boxes -> (N, D, M, M, K) float32."""
    n, d = boxes.shape[:2]
    roi = self._roi_features(feats, boxes, 14)
    logits = self.mask_head(roi.reshape((n * d,) + roi.shape[2:]))
    return logits.reshape((n, d) + logits.shape[1:])

  # ------------------------------------------------------------ training

  def losses(self, batch: Dict[str, jnp.ndarray], key: jnp.ndarray,
             feats=None) -> Tuple[Dict[str, jnp.ndarray],
                                  Dict[str, jnp.ndarray]]:
    """Training losses of the variant on a batch (module docstring).

    Returns:
      losses: the detector's {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls",
        "loss_bbox", "loss_mask"} plus "loss_semantic", "loss_panoptic"
        (weighted) and, for tracking variants, "loss_track" (weighted);
        the total loss is their sum.
      aux: the detector's aux plus "semantic_logits" (N, H, W, K) at image
        resolution and "track_accuracy" (tracking variants: the fraction of
        positive RoIs whose affinity argmax is their reference object, or
        "new" when it is not in the reference).
    """
    if feats is not None:
      raise ValueError("VPSNet.losses computes its own features")
    cfg, spec = self.cfg, self.cfg.spec
    images = batch["images"]
    n = images.shape[0]
    if spec.fuse or spec.track:
      both = self.features(jnp.concatenate([images, batch["ref_images"]]))
      feats = tuple(f[:n] for f in both)
      ref_feats = tuple(f[n:] for f in both)
    else:
      feats, ref_feats = self.features(images), None
    flow = batch.get("flow")
    if cfg.flownet2 and spec.fuse:
      _, flow = self.initial_flow(images, batch["ref_images"],
                                  batch["has_reference"])
    fused, _ = self.neck_features(
        feats, neck_lib.gather(ref_feats) if spec.fuse else None,
        flow, batch.get("has_reference"))
    out, aux = super().losses(batch, key, feats=fused)

    # Semantic head: the release's loss on the x4 upsampled logits against
    # the full-resolution labels, or the paper's at 1/4 scale.
    sem_logits, aux["semantic_logits"] = self.semantic_head(fused[:4])
    if cfg.semantic_loss == "full":
      if "semantic_full" not in batch:
        raise ValueError("semantic_loss='full' needs batch['semantic_full'] "
                         "(N, H, W)")
      out["loss_semantic"] = semantic_lib.semantic_loss(
          aux["semantic_logits"], batch["semantic_full"])
    else:
      out["loss_semantic"] = semantic_lib.semantic_loss(sem_logits,
                                                        batch["semantic"])

    # Panoptic head on the ground-truth boxes, at 1/4 scale.
    mask_logits = self._take_class(
        self._mask_logits(fused, batch["gt_boxes"]), batch["gt_classes"])
    stuff, things = cfg.stuff_channels, cfg.thing_channels
    pan_logits = jax.vmap(
        lambda sl, ml, b, c, v: panoptic_head.panoptic_logits(
            sl, ml, b, c, v, stuff, things, scale=0.25))(
                sem_logits, mask_logits, batch["gt_boxes"],
                batch["gt_classes"], batch["gt_valid"])
    # Pixels (4i, 4j), as the release's gt_masks[:, ::4, ::4] and the
    # pipeline's `semantic_quarter`.
    masks_q = batch["gt_masks"][:, :, ::4, ::4]
    pan_target = jax.vmap(
        lambda s, m, v: panoptic_head.panoptic_target(
            s, m, v, stuff, cfg.num_semantic))(
                batch["semantic"], masks_q, batch["gt_valid"])
    out["loss_panoptic"] = cfg.panoptic_weight * panoptic_head.panoptic_loss(
        pan_logits, pan_target)

    if spec.track:
      t = aux["rcnn_targets"]
      # Disjoined: the track head reads the target's unfused FPN levels.
      emb = self.track_head(self._roi_features(feats, t.rois, 7)
                            if spec.track_unfused else aux["box_feats"])
      ref_emb = self.track_head(self._roi_features(ref_feats,
                                                   batch["ref_boxes"], 7))
      affinity = track_lib.track_affinity(emb, ref_emb, batch["ref_valid"],
                                          cosine=cfg.track_cosine)
      positive = t.positive & t.valid
      target = jnp.where(positive, jnp.take_along_axis(
          batch["gt_ref_index"], t.gt_index, axis=1), 0)
      out["loss_track"] = track_lib.track_loss(affinity, target, positive,
                                               cfg.track_weight)
      hit = (jnp.argmax(affinity, axis=-1) == target) & positive
      aux["track_accuracy"] = jnp.sum(hit) / jnp.maximum(jnp.sum(positive), 1)
    return out, aux

  # ----------------------------------------------------------- inference

  def infer(self, images: jnp.ndarray, image_size: jnp.ndarray,
            ref_gathered: Optional[jnp.ndarray] = None,
            flow: Optional[jnp.ndarray] = None,
            has_reference: Optional[jnp.ndarray] = None,
            ref_images: Optional[jnp.ndarray] = None
            ) -> Dict[str, jnp.ndarray]:
    """One frame per image with its reference (online inference).

    Args:
      images: (N, H, W, 3) the frames.
      image_size: (N, 2) int32 unpadded sizes.
      ref_gathered: (N, H/4, W/4, C) the previous frame's `gathered` output
        (fusing variants; any value where has_reference is False).
      flow: (N, H/4, W/4, 2) initial flow frame -> previous frame at 1/4
        (ignored with cfg.flownet2).
      has_reference: (N,) bool, False on the first frame of a video.
      ref_images: (N, H, W, 3) the previous frames (cfg.flownet2: the flow
        is FlowNet2's from `images` to them).

    Returns (D = cfg.max_detections, panoptic detections in decreasing
    class probability):
      boxes (N, D, 4), scores (N, D) class probability, classes (N, D)
      int32 0-based thing class, valid (N, D) bool;
      keep (N, D) bool: survived mask removal (owns panoptic channel S + d);
      embeddings (N, D, track_dim) float32 track head embeddings (tracking
        variants; (N, D, 0) otherwise);
      panoptic (N, H, W) int32: stuff channel s < S or S + detection index;
      semantic (N, H, W) int32 semantic argmax;
      gathered (N, H/4, W/4, C): this frame's gathered feature;
      flow (N, H, W, 2) FlowNet2's flow at image resolution (cfg.flownet2).
    """
    cfg = self.cfg
    n, height, width = images.shape[:3]
    flow_full = None
    if cfg.flownet2:
      if has_reference is None:
        has_reference = jnp.zeros((n,), bool)
      flow_full, flow = self.initial_flow(
          images, images if ref_images is None else ref_images,
          has_reference)
    feats = self.features(images)
    if cfg.spec.fuse:
      if has_reference is None:
        has_reference = jnp.zeros((n,), bool)
      gathered = neck_lib.gather(feats)
      if ref_gathered is None:
        ref_gathered = gathered
      if flow is None:
        flow = jnp.zeros(gathered.shape[:3] + (2,), jnp.float32)
    fused, gathered = self.neck_features(feats, ref_gathered, flow,
                                         has_reference)
    _, sem_full = self.semantic_head(fused[:4])

    _, _, _, props, prop_valid = self.proposals(fused, image_size,
                                                train=False)
    r = props.shape[1]
    box_feats = self._roi_features(fused, props, 7)
    logits, deltas = self.box_head(box_feats.reshape((n * r,) +
                                                     box_feats.shape[2:]))
    dets = jax.vmap(lambda lg, dl, p, v, size: roi_heads.detect(
        lg, dl, p, v, (size[0], size[1]), cfg.panoptic_score_threshold,
        cfg.panoptic_nms, cfg.max_detections, cfg.max_candidates,
        offset=cfg.offset, class_agnostic=True))(
            logits.reshape(n, r, -1), deltas.reshape(n, r, -1, 4), props,
            prop_valid, image_size)
    if cfg.spec.track:
      track_feats = feats if cfg.spec.track_unfused else fused
      embeddings = self.track_head(self._roi_features(track_feats,
                                                      dets.boxes, 7))
    else:
      embeddings = jnp.zeros(dets.scores.shape + (0,), jnp.float32)
    mask_logits = self._take_class(self._mask_logits(fused, dets.boxes),
                                   dets.classes)
    panoptic, keep = jax.vmap(
        lambda sl, ml, b, c, v: panoptic_head.panoptic_inference(
            sl, ml, b, c, v, cfg.stuff_channels, cfg.thing_channels,
            cfg.mask_overlap_threshold))(
                sem_full[:, :height, :width], mask_logits, dets.boxes,
                dets.classes, dets.valid)
    out = {"boxes": dets.boxes, "scores": dets.scores,
           "classes": dets.classes, "valid": dets.valid, "keep": keep,
           "embeddings": embeddings, "panoptic": panoptic,
           "semantic": jnp.argmax(sem_full[:, :height, :width],
                                  axis=-1).astype(jnp.int32),
           "gathered": gathered}
    if flow_full is not None:
      out["flow"] = flow_full
    return out
