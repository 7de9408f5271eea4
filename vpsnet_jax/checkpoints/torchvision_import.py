"""Import torchvision ResNet weights into the Flax `ResNet` variables.

torchvision names map one-to-one onto ours:

  conv1.weight                       -> params/conv1/kernel
  bn1.{weight,bias,running_mean,running_var}
                                     -> {batch_stats|params}/bn1/{scale,bias},
                                        batch_stats/bn1/{mean,var}
  layer2.0.conv1.weight              -> params/layer2_0/conv1/kernel
  layer2.0.downsample.0.weight       -> params/layer2_0/downsample_conv/kernel
  layer2.0.downsample.1.*            -> .../layer2_0/downsample_bn/*

Convolution kernels go from (out, in, kh, kw) to (kh, kw, in, out). `fc.*` and
`num_batches_tracked` are dropped. A prefix such as "backbone.body." (from a
torchvision detector) can be stripped.
"""
import os
import re
from typing import Any, Dict, Mapping, Optional

import flax
import numpy as np

from vpsnet_jax.errors import ConfigError

_BN_FIELDS = {"running_mean": "mean", "running_var": "var",
              "weight": "scale", "bias": "bias"}


def to_numpy(value) -> np.ndarray:
  if hasattr(value, "detach"):  # torch.Tensor, without importing torch
    value = value.detach().cpu().numpy()
  return np.asarray(value, np.float32)


def _flax_path(key: str):
  """torchvision key -> (module path tuple, leaf kind, leaf name) or None."""
  parts = key.split(".")
  if parts[0] == "fc" or parts[-1] == "num_batches_tracked":
    return None
  field = parts[-1]
  if parts[0] in ("conv1", "bn1"):
    module = (parts[0],)
  else:
    m = re.fullmatch(r"layer(\d+)", parts[0])
    if not m or len(parts) < 4:
      raise KeyError(f"unexpected torchvision key {key!r}")
    block = f"layer{m.group(1)}_{parts[1]}"
    if parts[2] == "downsample":
      name = {"0": "downsample_conv", "1": "downsample_bn"}[parts[3]]
    else:
      name = parts[2]
    module = (block, name)
  if module[-1].startswith("conv") or module[-1] == "downsample_conv":
    if field != "weight":
      raise KeyError(f"unexpected convolution field in {key!r}")
    return module, "conv", "kernel"
  if field not in _BN_FIELDS:
    raise KeyError(f"unexpected BatchNorm field in {key!r}")
  return module, "bn", _BN_FIELDS[field]


_BN_KEYS = {v: k for k, v in _BN_FIELDS.items()}


def resnet_torch_key(path) -> str:
  """The inverse of `_flax_path`: torchvision key of a ResNet leaf.

  `path` is the leaf's path inside the backbone's variables without the
  collection, e.g. ("layer2_0", "downsample_bn", "mean") ->
  "layer2.0.downsample.1.running_mean"; ("conv1", "kernel") ->
  "conv1.weight".
  """
  *module, leaf = path
  if len(module) == 2:
    block, name = module
    layer, index = block.split("_")
    name = {"downsample_conv": "downsample.0",
            "downsample_bn": "downsample.1"}.get(name, name)
    module = [f"{layer}.{index}.{name}"]
  if leaf == "kernel":
    return f"{module[0]}.weight"
  return f"{module[0]}.{_BN_KEYS[leaf]}"


def import_resnet(state_dict: Mapping[str, Any], variables: Mapping[str, Any],
                  prefix: str = "") -> Dict[str, Any]:
  """Fill ResNet `variables` from a torchvision state dict.

  Args:
    state_dict: torchvision ResNet state dict (torch tensors or NumPy arrays).
    variables: the model's variables (e.g. from `model.init` or
      `jax.eval_shape(model.init, ...)`), used for the target structure,
      shapes and where the BatchNorm affine lives (`params` or
      `batch_stats`).
    prefix: stripped from keys; keys without it are ignored when given.

  Returns:
    A new variables dict {"params": ..., "batch_stats": ...} of NumPy arrays.

  Raises:
    KeyError / ValueError if a weight is missing, unexpected or misshapen.
  """
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables))
  out = {}
  for key, value in state_dict.items():
    if prefix:
      if not key.startswith(prefix):
        continue
      key = key[len(prefix):]
    mapped = _flax_path(key)
    if mapped is None:
      continue
    module, kind, leaf = mapped
    array = to_numpy(value)
    if kind == "conv":
      array = array.transpose(2, 3, 1, 0)
      candidates = [("params",) + module + (leaf,)]
    else:
      candidates = [(c,) + module + (leaf,) for c in ("batch_stats", "params")]
    target = next((c for c in candidates if c in flat), None)
    if target is None:
      raise KeyError(f"{key!r} has no place in the model ({candidates[0]})")
    if tuple(flat[target].shape) != array.shape:
      raise ValueError(f"{key!r}: shape {array.shape} but the model expects "
                       f"{tuple(flat[target].shape)}")
    out[target] = array
  missing = sorted("/".join(k) for k in flat if k not in out)
  if missing:
    raise KeyError(f"{len(missing)} model weights not in the state dict, "
                   f"e.g. {missing[:5]}")
  return flax.traverse_util.unflatten_dict(out)


def read_state_dict(path: str, trust_pickle: bool = False,
                    error: type = ConfigError) -> Dict[str, Any]:
  """A PyTorch state dict file as {key: NumPy array}: a `.pth` / `.pth.tar`
  (torch needed; a checkpoint dict's "state_dict" is taken, a "module."
  prefix on every key removed) or an `.npz` of the keys. Problems raise
  `error` (a ConfigError class) naming the file."""
  if not os.path.isfile(path):
    raise error(f"{path!r} is not a file")
  if path.endswith(".npz"):
    with np.load(path) as data:
      return {k: data[k] for k in data.files}
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise error(
        f"reading {path} needs PyTorch: install the test extra "
        "(pip install -e '.[test]') or convert the file to .npz") from e
  try:
    state = torch.load(path, map_location="cpu",
                       weights_only=not trust_pickle)
  except Exception as e:  # torch raises many types (pickle, zip, ...).
    raise error(
        f"cannot read {path}: {type(e).__name__}: {e} (a file you trust "
        "may need --trust_pickle)") from e
  if isinstance(state, Mapping) and "state_dict" in state:
    state = state["state_dict"]
  if not isinstance(state, Mapping):
    raise error(f"{path} holds no state dict")
  if state and all(k.startswith("module.") for k in state):
    state = {k[len("module."):]: v for k, v in state.items()}
  return {k: (v.detach().cpu().numpy() if hasattr(v, "detach")
              else np.asarray(v)) for k, v in state.items()}


def load_torchvision_resnet(path: str, variables: Mapping[str, Any],
                            prefix: Optional[str] = None) -> Dict[str, Any]:
  """Read a torchvision `.pth` state dict (needs torch) or `.npz` and import.

  If `prefix` is None, a common detector prefix ("backbone.body.") is
  stripped when every ResNet key carries it.
  """
  state = read_state_dict(path)
  if prefix is None:
    prefix = ""
    if state and all(k.startswith("backbone.body.") for k in state
                     if "conv1" in k):
      prefix = "backbone.body."
  return import_resnet(state, variables, prefix)


# FPN key names: our module name -> the torch prefixes of level {i}, first
# match wins (older torchvision versions lack the `.0`; mmdetection v1's
# `FPN` wraps each conv in a `ConvModule`).
FPN_LAYOUTS = {
    "torchvision": {"lateral": ("inner_blocks.{i}.0.", "inner_blocks.{i}."),
                    "output": ("layer_blocks.{i}.0.", "layer_blocks.{i}.")},
    "mmdet": {"lateral": ("lateral_convs.{i}.conv.",),
              "output": ("fpn_convs.{i}.conv.",)},
}


def import_fpn(state_dict: Mapping[str, Any], num_levels: int = 4,
               prefix: str = "", layout: str = "torchvision"
               ) -> Dict[str, Any]:
  """`params` of our `FPN` from torchvision `FeaturePyramidNetwork` weights.

  torchvision `inner_blocks.{i}.0.*` -> `lateral_{i}`, `layer_blocks.{i}.0.*`
  -> `output_{i}` (older torchvision versions lack the `.0`). Use
  prefix="backbone.fpn." for a torchvision Mask R-CNN. layout="mmdet":
  mmdetection v1's `lateral_convs.{i}.conv.*` / `fpn_convs.{i}.conv.*`
  (`FPN_LAYOUTS`).
  """
  params = {}
  for ours, subs in FPN_LAYOUTS[layout].items():
    for i in range(num_levels):
      for sub in subs:
        key = prefix + sub.format(i=i)
        if key + "weight" in state_dict:
          weight = to_numpy(state_dict[key + "weight"]).transpose(2, 3, 1, 0)
          params[f"{ours}_{i}"] = {
              "kernel": weight, "bias": to_numpy(state_dict[key + "bias"])}
          break
      else:
        raise KeyError(f"no weights for {prefix}{subs[0].format(i=i)}")
  return {"params": params}
