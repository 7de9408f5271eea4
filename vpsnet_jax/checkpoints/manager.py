"""Checkpoints of a workdir (orbax): save, restore, `init_from`.

WORKDIR/checkpoints/<step>/ holds two orbax items, so that inference
restores the model without building the optimizer:

  model/         {"params", "batch_stats"}: the variables the model applies
  train_state/   {"step", "opt_state", "input_position"}: what resuming
                 training needs besides the model (`input_position`: the
                 training examples consumed, step * global batch)

Both hold ONE host copy (NumPy), so they restore on any device count.
Checkpoints of the earlier layout (one item `default/` holding the whole
train state) restore too (`LEGACY_ITEM`).

  manager = checkpoint_manager(workdir, keep=3, every=1000, training=True)
  save(manager, step, model_variables, train_state)
  model, train_state = restore(manager, model_target, train_state_target)
  variables, step = restore_model(manager, model_target)
  variables = init_from(path, variables)
"""

import os
from typing import Any, Dict, Optional, Tuple

from absl import logging
import flax
import jax
import numpy as np
import orbax.checkpoint as ocp

from vpsnet_jax.errors import ConfigError

MODEL = "model"
TRAIN_STATE = "train_state"
LEGACY_ITEM = "default"


class CheckpointError(ConfigError):
  """A checkpoint folder that cannot be restored."""


def checkpoint_manager(workdir: str, keep: int = 3, every: int = 1,
                       training: bool = False) -> ocp.CheckpointManager:
  """Async, keeps the last `keep`, saves every `every` steps (and when
  forced), in WORKDIR/checkpoints.

  Saves are atomic: orbax writes `<step>.orbax-checkpoint-tmp*` and renames
  it to `<step>` when complete, so a process killed during a save leaves
  only a temporary folder, which is never restored; `training` (the one
  writer of the folder) removes such leftovers when it opens the folder.
  """
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, save_interval_steps=max(1, every),
      enable_async_checkpointing=True, cleanup_tmp_directories=training)
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, "checkpoints")), options=options,
      item_names=(MODEL, TRAIN_STATE))


def save(manager: ocp.CheckpointManager, step: int, model: Dict[str, Any],
         train_state: Dict[str, Any]) -> None:
  """Saves (asynchronously) the host copies `model` and `train_state`."""
  manager.save(step, args=ocp.args.Composite(**{
      MODEL: ocp.args.StandardSave(model),
      TRAIN_STATE: ocp.args.StandardSave(train_state)}), force=True)


def _folder(manager, step: int) -> str:
  return os.path.join(os.fspath(manager.directory), str(step))


def _damaged(manager, step: int, error: Exception) -> CheckpointError:
  folder = _folder(manager, step)
  earlier = [s for s in manager.all_steps() if s < step]
  if earlier:
    fallback = (f"to resume from the checkpoint of step {max(earlier)}, "
                f"move it out of the checkpoint folder (mv {folder} "
                f"{folder}.damaged) and run again")
  else:
    fallback = (f"it is the only checkpoint: move it out of the folder "
                f"(mv {folder} {folder}.damaged) to start from step 0")
  return CheckpointError(
      f"The checkpoint {folder} (step {step}) cannot be restored: "
      f"{type(error).__name__}: {error}. It may be damaged or written by "
      f"another model or config; {fallback}.")


def _numpy(tree):
  """NumPy copies of `tree`'s arrays; zeros for abstract leaves
  (jax.ShapeDtypeStruct), so a restore target needs no compile."""
  def one(x):
    if isinstance(x, jax.ShapeDtypeStruct):
      return np.zeros(x.shape, x.dtype)
    return np.asarray(x)
  return jax.tree_util.tree_map(one, tree)


def _legacy(manager, step: int) -> Optional[str]:
  path = os.path.join(_folder(manager, step), LEGACY_ITEM)
  return path if os.path.isdir(path) else None


def restore(manager: ocp.CheckpointManager, model: Dict[str, Any],
            train_state: Dict[str, Any], step: Optional[int] = None
            ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """(model, train_state) of checkpoint `step` (default the latest) as
  NumPy, restored into the structure of the targets (NumPy or abstract).

  A damaged checkpoint raises `CheckpointError` naming its folder and
  saying how to fall back to the step before it (no silent fallback: the
  run would otherwise repeat steps without saying so)."""
  step = manager.latest_step() if step is None else step
  if step is None:
    raise CheckpointError(f"No checkpoint in {manager.directory}")
  try:
    legacy = _legacy(manager, step)
    if legacy:
      target = dict(step=train_state["step"], params=model["params"],
                    batch_stats=model["batch_stats"],
                    opt_state=train_state["opt_state"])
      old = ocp.StandardCheckpointer().restore(legacy, _numpy(target))
      out_model = {"params": old["params"], "batch_stats": old["batch_stats"]}
      out_state = {"step": old["step"], "opt_state": old["opt_state"],
                   "input_position": np.asarray(-1, np.int64)}
      logging.info("Restored step %d from the earlier one-item layout", step)
    else:
      restored = manager.restore(step, args=ocp.args.Composite(**{
          MODEL: ocp.args.StandardRestore(_numpy(model)),
          TRAIN_STATE: ocp.args.StandardRestore(_numpy(train_state))}))
      out_model, out_state = restored[MODEL], restored[TRAIN_STATE]
  except Exception as e:  # orbax / tensorstore raise many types.
    raise _damaged(manager, step, e) from e
  logging.info("Restored checkpoint of step %d", step)
  return _numpy(out_model), _numpy(out_state)


def restore_model(manager: ocp.CheckpointManager, model: Dict[str, Any],
                  step: Optional[int] = None) -> Tuple[Dict[str, Any], int]:
  """(model variables, step) of checkpoint `step` (default the latest),
  without the training state (no optimizer needed)."""
  step = manager.latest_step() if step is None else step
  if step is None:
    raise CheckpointError(
        f"No checkpoint in {manager.directory}; train first (--mode=train "
        "or train_and_evaluate)")
  try:
    legacy = _legacy(manager, step)
    if legacy:
      # The earlier layout: read the whole state, keep the model.
      old = ocp.StandardCheckpointer().restore(legacy)
      variables = {"params": old["params"],
                   "batch_stats": old.get("batch_stats", {})}
      variables = jax.tree_util.tree_map(
          lambda t, x: np.asarray(x, np.asarray(t).dtype).reshape(
              np.shape(t)), _numpy(model), variables)
    else:
      variables = manager.restore(step, args=ocp.args.Composite(**{
          MODEL: ocp.args.StandardRestore(_numpy(model))}))[MODEL]
  except Exception as e:  # orbax / tensorstore raise many types.
    raise _damaged(manager, step, e) from e
  logging.info("Model variables of checkpoint step %d", step)
  return _numpy(variables), step


def model_has(manager: ocp.CheckpointManager, step: int,
              path: Tuple[str, ...]) -> bool:
  """Whether the model item of checkpoint `step` has the subtree `path`
  (e.g. ("batch_stats", "flownet2")), read from its metadata."""
  folder = os.path.join(os.fspath(manager.directory), str(step), MODEL)
  if not os.path.isdir(folder):
    return False
  tree = ocp.StandardCheckpointer().metadata(folder)
  tree = getattr(tree, "item_metadata", tree)
  for key in path:
    try:
      tree = tree[key]
    except (KeyError, TypeError):
      return False
  return True


def _merge(target, source, path=""):
  """`target` with every leaf that `source` has at the same path and shape
  replaced by source's; returns (tree, number of leaves copied)."""
  if isinstance(target, dict):
    out, n = {}, 0
    for k, v in target.items():
      if isinstance(source, dict) and k in source:
        out[k], m = _merge(v, source[k], f"{path}/{k}")
        n += m
      else:
        out[k] = v
    return out, n
  if np.shape(source) != np.shape(target):
    raise ConfigError(f"init_from: {path} has shape {np.shape(source)}, the "
                      f"model's is {np.shape(target)}")
  return np.asarray(source, np.asarray(target).dtype), 1


def init_from(path: str, variables: Dict[str, Any]) -> Dict[str, Any]:
  """Variables initialised from `path`: a torchvision ResNet state dict
  (`.pth` / `.npz`, ImageNet weights, into the `backbone`) or an orbax
  checkpoint step folder of an earlier stage (every parameter and batch
  statistic with the same path and shape; either layout)."""
  variables = flax.core.unfreeze(jax.device_get(variables))
  if not os.path.exists(path):
    raise ConfigError(f"config.init_from={path!r} does not exist")
  if path.endswith((".pth", ".pt", ".npz")):
    from vpsnet_jax.checkpoints import torchvision_import  # pylint: disable=g-import-not-at-top
    sub = {c: variables[c]["backbone"] for c in ("params", "batch_stats")
           if "backbone" in variables.get(c, {})}
    if "params" not in sub:
      raise ConfigError("init_from: a ResNet state dict needs a model with "
                        "a 'backbone'")
    new = torchvision_import.load_torchvision_resnet(path, sub)
    for c in sub:
      variables[c]["backbone"], _ = _merge(sub[c], dict(new[c]))
    return variables
  path = os.path.abspath(path)
  for item in (MODEL, LEGACY_ITEM):  # A manager's step folder.
    if os.path.isdir(os.path.join(path, item)):
      path = os.path.join(path, item)
      break
  restored = ocp.StandardCheckpointer().restore(path)
  copied = 0
  for c in ("params", "batch_stats"):
    if c in variables and c in restored:
      variables[c], n = _merge(variables[c], restored[c])
      copied += n
  if not copied:
    raise ConfigError(f"init_from: {path} has no parameter of this model")
  logging.info("init_from %s: %d arrays", path, copied)
  return variables
