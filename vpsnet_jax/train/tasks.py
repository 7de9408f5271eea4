"""What the training loop trains: a small `Task` interface and its models.

A `Task` bundles the model side of training:
  init(key) -> {"params": ..., "batch_stats": ...}   (host-side shapes known
      from the config; `batch_stats` are frozen statistics, never trained)
  loss_fn(params, batch_stats, batch, key) -> (total loss scalar,
      {name: scalar} loss terms), pure, for ONE device's batch, whose arrays
      are [per_device_batch, ...] (keys of `data_pipeline.transforms.
      train_example`)
  trainable(params) -> pytree of bools over params (False: frozen)

`create_task(config, meta)` builds the task of `config.variant`. Today the
`base` variant is the Mask R-CNN detector (issue 4); the VPSNet variants
with their semantic, panoptic and track heads need issue 6's model.
"""

import dataclasses
from typing import Any, Callable, Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from vpsnet_jax.modeling import backbone as backbone_lib
from vpsnet_jax.modeling import detector

# Variant -> None when available, else the reason it is not.
VARIANTS = {
    "base": None,
    "fuse": "needs issue 6's VPSNet model (Fuse module)",
    "track": "needs issue 6's VPSNet model (track head)",
    "fusetrack": "needs issue 6's VPSNet model (Fuse module and track head)",
}


@dataclasses.dataclass(frozen=True)
class Task:
  init: Callable[[jnp.ndarray], Dict[str, Any]]
  loss_fn: Callable[..., Tuple[jnp.ndarray, Dict[str, jnp.ndarray]]]
  trainable: Callable[[Any], Any]


def check_variant(variant: str) -> None:
  """Raises ValueError for an unknown or not yet available variant."""
  if variant not in VARIANTS:
    raise ValueError(f"Unknown config.variant {variant!r}; one of "
                     f"{sorted(VARIANTS)}")
  if VARIANTS[variant] is not None:
    raise NotImplementedError(f"config.variant={variant!r} "
                              f"{VARIANTS[variant]}; use variant 'base'")


def detector_config(config, num_things: int) -> detector.DetectorConfig:
  """The `base` variant's DetectorConfig from `config.model`."""
  m = config.model
  return detector.DetectorConfig(
      num_classes=num_things, depth=m.depth, frozen_stages=m.frozen_stages,
      fpn_dim=m.fpn_dim, box_fc_dim=m.box_fc_dim,
      mask_conv_dim=m.mask_conv_dim, anchor_scales=tuple(m.anchor_scales),
      rpn_train_proposals=m.rpn_train_proposals,
      rpn_test_proposals=m.rpn_test_proposals,
      rpn_allowed_border=m.rpn_allowed_border, rcnn_samples=m.rcnn_samples,
      max_detections=m.max_detections,
      max_candidates=m.max_candidates or None, dtype=m.dtype)


def thing_table(meta) -> np.ndarray:
  """int32 [num train ids]: train id -> 0-based thing class, -1 for stuff."""
  table = -np.ones(len(meta.categories), np.int32)
  things = [i for i, c in enumerate(meta.categories) if c.isthing]
  table[things] = np.arange(len(things))
  return table


def detector_batch(batch: Dict[str, jnp.ndarray], table: np.ndarray,
                   offset: float) -> Dict[str, jnp.ndarray]:
  """A pipeline batch ([N, ...], `transforms.train_example` keys) as the
  detector's batch: images (N, H, W, 3), image_size (N, 2) from the
  pad mask, thing classes 0-based, stuff instances marked invalid, boxes
  from pixel edges to the detector's convention (x2 - offset)."""
  pad = batch["pad_mask"]
  h = jnp.sum(jnp.any(pad, axis=2), axis=1)
  w = jnp.sum(jnp.any(pad, axis=1), axis=1)
  cls = jnp.asarray(table)[batch["gt_classes"]]
  boxes = batch["gt_boxes"] - jnp.array([0., 0., offset, offset])
  return {"images": batch["image"],
          "image_size": jnp.stack([h, w], -1).astype(jnp.int32),
          "gt_boxes": boxes, "gt_classes": jnp.maximum(cls, 0),
          "gt_valid": batch["gt_valid"] & (cls >= 0),
          "gt_masks": batch["gt_masks"]}


def detector_task(config, meta) -> Task:
  """The `base` variant today: Mask R-CNN on the target frames."""
  table = thing_table(meta)
  cfg = detector_config(config, int((table >= 0).sum()))
  model = detector.MaskRCNN(cfg)
  h, w = (-(-s // config.input.size_divisor) * config.input.size_divisor
          for s in config.input.crop_size)

  def init(key):
    return dict(model.init(key, jnp.zeros((1, h, w, 3), jnp.float32)))

  def loss_fn(params, batch_stats, batch, key):
    parts, _ = model.apply({"params": params, "batch_stats": batch_stats},
                           detector_batch(batch, table, cfg.offset), key,
                           method=model.losses)
    return sum(parts.values()), parts

  def trainable(params):
    mask = jax.tree_util.tree_map(lambda _: True, params)
    mask["backbone"] = backbone_lib.trainable_mask(params["backbone"],
                                                   cfg.frozen_stages)
    return mask

  return Task(init=init, loss_fn=loss_fn, trainable=trainable)


def create_task(config, meta) -> Task:
  check_variant(config.variant)
  return detector_task(config, meta)
