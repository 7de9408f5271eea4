"""Tiny VPSNet settings shared by the tests (CPU friendly: 64x128 frames,
ResNet-18 with narrow heads), as a config and as command-line overrides."""

from configs import synthetic

OVERRIDES = {
    "dataset.synthetic.height": 64,
    "dataset.synthetic.width": 128,
    "dataset.synthetic.num_train_videos": 1,
    "dataset.synthetic.num_val_videos": 1,
    "input.crop_size": (64, 128),
    "input.max_instances": 8,
    "model.anchor_scales": (2.0,),
    "model.fpn_dim": 32,
    "model.box_fc_dim": 64,
    "model.mask_conv_dim": 16,
    "model.rcnn_samples": 32,
    "model.rpn_train_proposals": 100,
    "model.rpn_test_proposals": 50,
    "model.max_candidates": 100,
    "model.max_detections": 8,
    "model.semantic_features": (16, 16, 16),
    "model.semantic_groups": 8,
    "model.track_dim": 32,
    "inference.stuff_area_limit": 8,
}


def config(variant: str = "fusetrack", **overrides):
  """configs/synthetic.py at the tiny sizes; `overrides` use '__' for '.'
  (e.g. model__dtype='bfloat16')."""
  c = synthetic.get_config()
  c.variant = variant
  items = dict(OVERRIDES)
  items.update({k.replace("__", "."): v for k, v in overrides.items()})
  return override(c, items)


def override(c, items: dict):
  """`c` with each dotted field of `items` ("model.depth") set."""
  for key, value in items.items():
    parent = c
    *path, last = key.split(".")
    for p in path:
      parent = parent[p]
    parent[last] = value
  return c


def flags(**extra) -> list:
  """The same as `--config.x=y` flags for main.py."""
  items = dict(OVERRIDES)
  items.update(extra)
  out = []
  for k, v in items.items():
    if isinstance(v, tuple):
      v = "(" + ",".join(str(x) for x in v) + ")"
    out.append(f"--config.{k}={v}")
  return out
