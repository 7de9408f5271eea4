"""What training and inference share: the experiment config made concrete.

  validate_config(config, fields)   clear errors before any compile
                                    (`fields`: the full field set, e.g.
                                    `configs/default.py`'s, passed in by the
                                    entry point; the library never imports
                                    `configs/`)
  per_device_batch_size(config)     the batch split over the devices
  model_config(config, meta)        the typed `VPSNetConfig` of the variant
  create_writer(workdir)            the clu metric writer

The registries live with what they name, one place each: variants in
`vpsnet_jax.modeling.vpsnet.VARIANTS`, datasets in `data_pipeline.sources.
DATASETS`, optimizers in `vpsnet_jax.train.optim`, parallel modes in
`vpsnet_jax.train.parallel`, trackers in `vpsnet_jax.inference.tracker`;
`check_choice` is the one enum check they all use. Training and inference
validate their own fields (`train.train.validate`, `inference.run.
validate`); this module validates the shared ones.
"""

import difflib
import os
from typing import Iterable, List, Optional, Sequence

from clu import metric_writers
import jax
import ml_collections

from data_pipeline import sources
from data_pipeline import transforms
from vpsnet_jax.errors import ConfigError
from vpsnet_jax.modeling import flownet2 as flownet2_lib
from vpsnet_jax.modeling import vpsnet

# Initial optical flow of the variants that fuse (config.input.flow).
FLOWS = ("dis", "ground_truth", "flownet2")
# config.model.conv: the convolution implementation (`ops.conv`).
CONV_IMPLS = ("auto", "xla", "cpu")


def check_choice(name: str, value, choices: Iterable) -> None:
  """ConfigError unless `value` is one of `choices` (config.`name`)."""
  choices = list(choices)
  if value not in choices:
    raise ConfigError(f"Unknown config.{name} {value!r}; config.{name} must "
                      f"be one of {choices}")


def field_names(config: ml_collections.ConfigDict,
                prefix: str = "") -> List[str]:
  """Every field of `config` as a dotted path ("model.depth")."""
  out = []
  for k in config.keys():
    out.append(prefix + k)
    if isinstance(config[k], ml_collections.ConfigDict):
      out += field_names(config[k], f"{prefix}{k}.")
  return out


def nearest_fields(name: str, known: Sequence[str], n: int = 3) -> List[str]:
  """The existing field paths closest to `name` (difflib), best first; the
  siblings of its parent when none is close."""
  parent = name.rpartition(".")[0]
  close = [k for k in difflib.get_close_matches(name, known, n=n + 1,
                                                cutoff=0.6)
           if k != parent][:n]
  if not close:
    leaf = name.rpartition(".")[2]
    siblings = [k for k in known if k.rpartition(".")[0] == parent]
    by_leaf = {k.rpartition(".")[2]: k for k in siblings}
    close = [by_leaf[m] for m in difflib.get_close_matches(
        leaf, list(by_leaf), n=n, cutoff=0.4)]
  return close


def unknown_field_message(names: Sequence[str], known: Sequence[str]) -> str:
  """'Unknown config field ...; did you mean ...' for `names`."""
  parts = []
  for name in names:
    near = nearest_fields(name, known)
    parts.append(f"{name!r}" + (f" (did you mean {', '.join(near)}?)"
                                if near else ""))
  return (f"Unknown config field(s) {'; '.join(parts)}; the fields are those "
          "of configs/default.py")


def _unknown_fields(config, reference, prefix="") -> List[str]:
  out = []
  for k in config.keys():
    name = prefix + k
    if k not in reference:
      out.append(name)
    elif isinstance(config[k], ml_collections.ConfigDict) and isinstance(
        reference[k], ml_collections.ConfigDict):
      out += _unknown_fields(config[k], reference[k], name + ".")
  return out


def check_variant(variant: str) -> None:
  check_choice("variant", variant, sorted(vpsnet.VARIANTS))


def variant_uses_flow(config) -> bool:
  """Whether the model of config.variant takes an initial flow (it fuses)."""
  return vpsnet.VARIANTS[config.variant].fuse


def tracker_reads_flow(config) -> bool:
  """Whether the tracker warps masks with the flow (IoU-Match, the track
  head's mask-IoU cue)."""
  return config.tracker == "iou_match" or (
      config.tracker == "track_head" and config.tracking.mask_iou_weight != 0)


def reads_flow(config) -> bool:
  """Whether the initial flow is needed: the variant fuses, or the tracker
  reads it."""
  return variant_uses_flow(config) or tracker_reads_flow(config)


def variant_tracks(config) -> bool:
  """Whether the model of config.variant has the track head."""
  return vpsnet.VARIANTS[config.variant].track


def validate_config(config, fields: Optional[ml_collections.ConfigDict] = None,
                    device_count: Optional[int] = None,
                    check_devices: bool = True) -> None:
  """ConfigError for the shared fields: unknown fields (when `fields`, the
  full field set, is given), variant, dataset, flow, batch.
  check_devices=False skips the batch check (it initialises jax's
  backends; main.py first sets up multi-process)."""
  if fields is not None:
    unknown = _unknown_fields(config, fields)
    if unknown:
      raise ConfigError(unknown_field_message(unknown, field_names(fields)))
  check_variant(config.variant)
  check_choice("dataset.name", config.dataset.name, sources.DATASETS)
  check_choice("input.flow", config.input.flow, FLOWS)
  check_choice("model.conv", config.model.conv, CONV_IMPLS)
  check_choice("model.warp_grid", config.model.warp_grid, vpsnet.WARP_GRIDS)
  check_choice("model.semantic_loss", config.model.semantic_loss,
               vpsnet.SEMANTIC_LOSSES)
  if (config.input.flow == "ground_truth" and
      not sources.DATASETS[config.dataset.name].has_flow):
    raise ConfigError("config.input.flow='ground_truth' needs the exact "
                      "motion of vps_synthetic; use 'dis' for "
                      f"{config.dataset.name}")
  if config.input.flow == "flownet2" and config.input.flownet2_checkpoint:
    check_flownet2_checkpoint(config)
  if check_devices:
    per_device_batch_size(config, device_count)


def check_flownet2_checkpoint(config) -> None:
  """ConfigError unless config.input.flownet2_checkpoint names weights
  (training needs them at step 0; inference reads them from the model's
  checkpoint, and checks a given path all the same)."""
  path = config.input.flownet2_checkpoint
  if not path:
    raise ConfigError("config.input.flow='flownet2' needs FlowNet2's weights "
                      "in config.input.flownet2_checkpoint: "
                      f"{flownet2_lib.WEIGHTS_HELP}")
  if not os.path.exists(path):
    raise ConfigError(f"config.input.flownet2_checkpoint={path!r} does not "
                      f"exist. {flownet2_lib.WEIGHTS_HELP}")


def flow_on_device(config) -> bool:
  """Whether the model computes the initial flow itself (FlowNet2)."""
  return config.input.flow == "flownet2"


def global_batch_size(config, device_count: Optional[int] = None) -> int:
  n = jax.device_count() if device_count is None else device_count
  return config.global_batch_size or config.per_device_batch_size * n


def per_device_batch_size(config, device_count: Optional[int] = None) -> int:
  """Checks the global batch against the device count (ConfigError)."""
  n = jax.device_count() if device_count is None else device_count
  if config.global_batch_size:
    if config.global_batch_size % n:
      raise ConfigError(f"config.global_batch_size={config.global_batch_size}"
                        f" is not divisible by the {n} devices")
    return config.global_batch_size // n
  if config.per_device_batch_size < 1:
    raise ConfigError("config.per_device_batch_size must be >= 1, got "
                      f"{config.per_device_batch_size}")
  return config.per_device_batch_size


def conv_impl(config, backend: Optional[str] = None) -> str:
  """config.model.conv with 'auto' resolved for `backend` (default: jax's
  default backend, read once here): 'cpu' (the CPU-tuned convolutions of
  `ops.conv`) on the CPU, else 'xla'."""
  from vpsnet_jax.ops import conv  # pylint: disable=g-import-not-at-top
  return conv.resolve_conv_impl(config.model.conv, backend)


def model_config(config, meta, backend: Optional[str] = None
                 ) -> vpsnet.VPSNetConfig:
  """`VPSNetConfig` of config.variant / config.model for dataset `meta`."""
  check_variant(config.variant)
  m = config.model
  things = tuple(i for i, c in enumerate(meta.categories) if c.isthing)
  return vpsnet.VPSNetConfig(
      variant=config.variant, num_classes=len(things),
      num_semantic=len(meta.categories), thing_channels=things,
      depth=m.depth, frozen_stages=m.frozen_stages, fpn_dim=m.fpn_dim,
      box_fc_dim=m.box_fc_dim, mask_conv_dim=m.mask_conv_dim,
      anchor_scales=tuple(m.anchor_scales),
      rpn_train_proposals=m.rpn_train_proposals,
      rpn_test_proposals=m.rpn_test_proposals,
      rpn_allowed_border=m.rpn_allowed_border, rcnn_samples=m.rcnn_samples,
      max_detections=m.max_detections,
      max_candidates=m.max_candidates or None, dtype=m.dtype,
      semantic_features=tuple(m.semantic_features),
      semantic_groups=m.semantic_groups, semantic_loss=m.semantic_loss,
      warp_grid=m.warp_grid, panoptic_weight=m.panoptic_weight,
      track_weight=m.track_weight, track_dim=m.track_dim,
      track_cosine=m.track_cosine,
      panoptic_score_threshold=m.panoptic_score_threshold,
      panoptic_nms=m.panoptic_nms,
      mask_overlap_threshold=m.mask_overlap_threshold,
      flownet2=flow_on_device(config) and reads_flow(config),
      pixel_mean=tuple(float(v) for v in transforms.MEAN),
      pixel_std=tuple(float(v) for v in transforms.STD),
      conv_impl=conv_impl(config, backend), remat=m.remat)


def init_image_size(config):
  """(H, W): config.input.crop_size rounded up to the size divisor, the
  input the model's variables are initialised with."""
  d = config.input.size_divisor
  return tuple(-(-s // d) * d for s in config.input.crop_size)


def create_writer(workdir: str):
  """clu's default writer (TensorBoard events + console) in `workdir`;
  processes other than 0 only log."""
  return metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() != 0, asynchronous=False)
