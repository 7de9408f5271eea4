"""What the training loop trains: a small `Task` interface and VPSNet's task.

A `Task` bundles the model side of training:
  init(key) -> {"params": ..., "batch_stats": ...}   (host-side shapes known
      from the config; `batch_stats` are frozen statistics, never trained)
  loss_fn(params, batch_stats, batch, keys) -> (total loss scalar,
      {name: scalar} metrics), pure, for ONE device's batch, whose arrays
      are [per_device_batch, ...] (keys of `data_pipeline.transforms.
      train_example`), `keys` [per_device_batch] one `jax.random` key per
      example (`step.example_keys`); metrics hold every loss term
      ("loss_*") and may hold other scalars (e.g. "track_accuracy")
  trainable(params) -> pytree of bools over params (False: frozen)
  eval_fn (optional) (params, batch_stats, batch, keys) -> (metrics averaged
      over devices and batches, counts summed over them), for validation
  summarize (optional) counts -> {name: scalar} (e.g. mIoU from a summed
      confusion matrix)
  prepare (optional) host variables -> host variables, once at step 0
      after init (and config.init_from): fills the frozen variables that
      come from files (FlowNet2's weights, batch_stats["flownet2"])

`create_task(config, meta)` builds VPSNet (`vpsnet_jax.modeling.vpsnet`) of
`config.variant` for the dataset `meta`.
"""

import dataclasses
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from vpsnet_jax import experiment
from vpsnet_jax.modeling import backbone as backbone_lib
from vpsnet_jax.modeling import vpsnet
from vpsnet_jax.ops import resize

IGNORE = 255


@dataclasses.dataclass(frozen=True)
class Task:
  init: Callable[[jnp.ndarray], Dict[str, Any]]
  loss_fn: Callable[..., Tuple[jnp.ndarray, Dict[str, jnp.ndarray]]]
  trainable: Callable[[Any], Any]
  eval_fn: Optional[Callable[..., Tuple[Dict[str, jnp.ndarray],
                                        Dict[str, jnp.ndarray]]]] = None
  summarize: Optional[Callable[[Dict[str, np.ndarray]],
                               Dict[str, float]]] = None
  prepare: Optional[Callable[[Dict[str, Any]], Dict[str, Any]]] = None


def thing_table(meta) -> np.ndarray:
  """int32 [num train ids]: train id -> 0-based thing class, -1 for stuff."""
  table = -np.ones(len(meta.categories), np.int32)
  things = [i for i, c in enumerate(meta.categories) if c.isthing]
  table[things] = np.arange(len(things))
  return table


def model_batch(batch: Dict[str, jnp.ndarray], table: np.ndarray,
                offset: float) -> Dict[str, jnp.ndarray]:
  """A pipeline batch ([N, ...], `transforms.train_example` keys) as
  VPSNet's batch (`vpsnet` module docstring): image size from the pad
  mask, thing classes 0-based with stuff instances invalid, boxes from
  pixel edges to the detector's convention (x2 - offset), the semantic map
  at 1/4 and at full resolution, the flow (when the pipeline has one) at 1/4."""
  pad = batch["pad_mask"]
  h = jnp.sum(jnp.any(pad, axis=2), axis=1)
  w = jnp.sum(jnp.any(pad, axis=1), axis=1)
  table = jnp.asarray(table)
  cls = table[batch["gt_classes"]]
  ref_cls = table[batch["ref_classes"]]
  edge = jnp.array([0., 0., offset, offset])
  out = {"images": batch["image"],
         "image_size": jnp.stack([h, w], -1).astype(jnp.int32),
         "gt_boxes": batch["gt_boxes"] - edge,
         "gt_classes": jnp.maximum(cls, 0),
         "gt_valid": batch["gt_valid"] & (cls >= 0),
         "gt_masks": batch["gt_masks"],
         "semantic": batch["semantic_quarter"],
         "semantic_full": batch["semantic"],
         "ref_images": batch["ref_image"],
         "has_reference": batch["frame_index"] != batch["ref_frame_index"],
         "ref_boxes": batch["ref_boxes"] - edge,
         "ref_valid": batch["ref_valid"] & (ref_cls >= 0),
         "gt_ref_index": batch["gt_ref_index"]}
  if "flow" in batch:
    out["flow"] = resize.quarter_flow(batch["flow"])
  return out


def confusion(pred: jnp.ndarray, labels: jnp.ndarray,
              num_classes: int) -> jnp.ndarray:
  """(K, K) int32 counts [label, prediction] over labelled pixels."""
  valid = labels != IGNORE
  index = jnp.where(valid, labels * num_classes + pred, num_classes ** 2)
  counts = jnp.bincount(index.reshape(-1), length=num_classes ** 2 + 1)
  return counts[:-1].reshape(num_classes, num_classes).astype(jnp.int32)


def mean_iou(confusion_matrix: np.ndarray) -> float:
  """Mean IoU (percent) over the classes that occur in labels or
  predictions."""
  c = np.asarray(confusion_matrix, np.float64)
  inter = np.diag(c)
  union = c.sum(0) + c.sum(1) - inter
  present = union > 0
  return float(100.0 * np.mean(inter[present] / union[present])) if (
      present.any()) else 0.0


def vpsnet_task(config, meta) -> Task:
  """VPSNet of config.variant, trained on the pipeline's pairs."""
  table = thing_table(meta)
  cfg = experiment.model_config(config, meta)
  model = vpsnet.VPSNet(cfg)
  h, w = experiment.init_image_size(config)

  def init(key):
    return dict(model.init(key, jnp.zeros((1, h, w, 3), jnp.float32)))

  def forward(params, batch_stats, batch, keys):
    parts, aux = model.apply({"params": params, "batch_stats": batch_stats},
                             model_batch(batch, table, cfg.offset), keys,
                             method=model.losses)
    metrics = dict(parts)
    if "track_accuracy" in aux:
      metrics["track_accuracy"] = aux["track_accuracy"]
    return sum(parts.values()), metrics, aux

  def loss_fn(params, batch_stats, batch, keys):
    total, metrics, _ = forward(params, batch_stats, batch, keys)
    return total, metrics

  def eval_fn(params, batch_stats, batch, keys):
    total, metrics, aux = forward(params, batch_stats, batch, keys)
    pred = jnp.argmax(aux["semantic_logits"], axis=-1)
    counts = {"semantic_confusion": confusion(pred, batch["semantic"],
                                              cfg.num_semantic)}
    return dict(metrics, loss=total), counts

  def summarize(counts):
    return {"semantic_miou": mean_iou(counts["semantic_confusion"])}

  def trainable(params):
    mask = jax.tree_util.tree_map(lambda _: True, params)
    mask["backbone"] = backbone_lib.trainable_mask(params["backbone"],
                                                   cfg.frozen_stages)
    return mask

  prepare = None
  if cfg.flownet2:
    def prepare(variables):
      from vpsnet_jax.checkpoints import flownet2_import  # pylint: disable=g-import-not-at-top
      return flownet2_import.fill_variables(
          variables, config.input.flownet2_checkpoint)

  return Task(init=init, loss_fn=loss_fn, trainable=trainable,
              eval_fn=eval_fn, summarize=summarize, prepare=prepare)



def create_task(config, meta) -> Task:
  experiment.check_variant(config.variant)
  return vpsnet_task(config, meta)
