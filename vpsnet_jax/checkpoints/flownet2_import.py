"""Import FlowNet2 weights (NVIDIA flownet2-pytorch) into `modeling.flownet2`.

  python -m vpsnet_jax.checkpoints.flownet2_import \
      --checkpoint FlowNet2_checkpoint.pth.tar --out DIR

writes DIR as an orbax folder of the FlowNet2 variables, which
`config.input.flownet2_checkpoint=DIR` reads (as it reads the `.pth.tar`
or an `.npz` of the state dict directly, converting on every start).

The keys are those of `FlowNet2_checkpoint.pth.tar["state_dict"]`
(`flownetc.conv1.0.weight`, ..., `flownetfusion.upsampled_flow1_to_0.bias`:
220 arrays, 162,518,834 values), and of the `flownet2.*` keys inside a
release VPSNet checkpoint, which `release_import` writes without the prefix
to `flownet2_state.npz`; a file that still has the prefix (a whole release
checkpoint) has its `flownet2.*` keys taken.

Key -> variable: `{net}.{layer}[.0].{weight|bias}` ->
params/{net}/{layer}/{kernel|bias}; the `.0` is the `nn.Sequential` of
`conv`, `i_conv` and `deconv` (absent for `predict_flow*` and
`upsampled_flow*`). Conv2d weights (out, in, kh, kw) -> (kh, kw, in, out);
ConvTranspose2d weights (in, out, kh, kw) -> (kh, kw, in, out), taps
unflipped (`flownet2.ConvTranspose` flips them). A key that maps nowhere, a
missing key or a shape that differs is a `Flownet2ImportError` naming them.
"""

import os
from typing import Any, Dict, Mapping, Tuple

from absl import logging
import flax
import jax
import numpy as np

from vpsnet_jax import errors
from vpsnet_jax.checkpoints import manager as ckpt
from vpsnet_jax.checkpoints import torchvision_import
from vpsnet_jax.modeling import flownet2 as flownet2_lib

_SHOWN = 8  # Keys named per kind of error.
# The release's detectors register FlowNet2 as `self.flownet2`.
FLOWNET2_PREFIX = "flownet2."
WEIGHTS_HELP = flownet2_lib.WEIGHTS_HELP


class Flownet2ImportError(ckpt.CheckpointError):
  """A FlowNet2 state dict or file that does not fit `FlowNet2`."""


def _transposed(layer: str) -> bool:
  return layer.startswith(("deconv", "upsampled_flow"))


def _torch_key(path: Tuple[str, ...]) -> str:
  """("flownetc", "conv1", "kernel") -> "flownetc.conv1.0.weight"."""
  net, layer, leaf = path
  bare = layer.startswith(("predict_flow", "upsampled_flow"))
  return (f"{net}.{layer}{'' if bare else '.0'}."
          f"{'weight' if leaf == 'kernel' else 'bias'}")


def _to_torch_shape(path, shape) -> Tuple[int, ...]:
  if path[-1] != "kernel":
    return tuple(shape)
  kh, kw, cin, cout = shape
  return (cin, cout, kh, kw) if _transposed(path[1]) else (cout, cin, kh, kw)


def flownet2_table() -> Dict[str, Tuple[Tuple[str, ...], Tuple[int, ...]]]:
  """torch key -> (our params path, torch shape), for all 220 arrays."""
  flat = flax.traverse_util.flatten_dict(
      flownet2_lib.abstract_variables()["params"])
  return {_torch_key(path): (path, _to_torch_shape(path, v.shape))
          for path, v in flat.items()}


def _listing(keys) -> str:
  keys = sorted(keys)
  more = f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
  return ", ".join(keys[:_SHOWN]) + more


def split_flownet2(state_dict: Mapping[str, Any]
                   ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """(the other keys, the `flownet2.*` keys without the prefix) of a
  release VPSNet state dict."""
  model, flownet2 = {}, {}
  for key, value in state_dict.items():
    if key.startswith(FLOWNET2_PREFIX):
      flownet2[key[len(FLOWNET2_PREFIX):]] = value
    else:
      model[key] = value
  return model, flownet2


def strip_prefix(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
  """The FlowNet2 keys of `state_dict`: those of a whole release checkpoint
  (`flownet2.*`, prefix removed) or all of them."""
  _, inner = split_flownet2(state_dict)
  return inner or dict(state_dict)


def import_flownet2(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
  """{"params": ...} (NumPy float32) of `FlowNet2` from a state dict.

  Args:
    state_dict: torch key -> NumPy array or torch tensor, the keys of
      flownet2-pytorch's FlowNet2 (optionally all prefixed `flownet2.`).

  Raises:
    Flownet2ImportError naming the keys that map nowhere, are missing or
    have another shape.
  """
  state_dict = strip_prefix(state_dict)
  table = flownet2_table()
  extra = set(state_dict) - set(table)
  missing = set(table) - set(state_dict)
  wrong = sorted(k for k in set(table) & set(state_dict)
                 if tuple(np.shape(state_dict[k])) != table[k][1])
  problems = []
  if extra:
    problems.append(f"{len(extra)} keys map to nothing: {_listing(extra)}")
  if missing:
    problems.append(f"{len(missing)} keys are missing: {_listing(missing)}")
  if wrong:
    problems.append(f"{len(wrong)} shapes differ: " + ", ".join(
        f"{k} is {tuple(np.shape(state_dict[k]))}, FlowNet2 needs "
        f"{table[k][1]}" for k in wrong[:_SHOWN]))
  if problems:
    raise Flownet2ImportError("The state dict is not FlowNet2's: " +
                              "; ".join(problems))
  params = {}
  for key, (path, _) in table.items():
    value = np.asarray(torchvision_import.to_numpy(state_dict[key]), np.float32)
    if path[-1] == "kernel":
      value = value.transpose((2, 3, 0, 1) if _transposed(path[1])
                              else (2, 3, 1, 0))
    params[path] = np.ascontiguousarray(value)
  logging.info("Imported %d FlowNet2 arrays (%d values)", len(params),
               sum(v.size for v in params.values()))
  return {"params": flax.traverse_util.unflatten_dict(params)}


def _refuse_existing(out: str) -> None:
  if os.path.exists(out):
    raise Flownet2ImportError(f"--out {out} exists; give a new folder")


def save(out: str, variables: Mapping[str, Any]) -> str:
  """Writes `variables` as an orbax folder `out` (absolute path returned)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  out = os.path.abspath(out)
  _refuse_existing(out)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(out, dict(variables))
  return out


def load(path: str, trust_pickle: bool = False) -> Dict[str, Any]:
  """FlowNet2 variables from a `.pth.tar` / `.pth` (torch needed), an
  `.npz` of the state dict, or an orbax folder written by `save`."""
  if os.path.isdir(path):
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    target = flownet2_lib.abstract_variables()
    try:
      with ocp.StandardCheckpointer() as checkpointer:
        variables = checkpointer.restore(os.path.abspath(path), target)
    except Exception as e:  # orbax raises many types for a bad folder.
      raise Flownet2ImportError(
          f"{path} is not a FlowNet2 folder written by "
          f"`python -m vpsnet_jax.checkpoints.flownet2_import`: "
          f"{type(e).__name__}: {e}") from e
    return jax.tree_util.tree_map(np.asarray, variables)
  if not os.path.isfile(path):
    raise Flownet2ImportError(f"FlowNet2 weights {path!r} do not exist. "
                              f"{WEIGHTS_HELP}")
  return import_flownet2(torchvision_import.read_state_dict(
      path, trust_pickle, error=Flownet2ImportError))


def fill_variables(variables: Mapping[str, Any], path: str) -> Dict[str, Any]:
  """VPSNet `variables` with batch_stats["flownet2"] read from `path`
  (`load`): where a model that computes FlowNet2's flow keeps them."""
  batch_stats = dict(variables.get("batch_stats", {}),
                     flownet2=load(path)["params"])
  return dict(variables, batch_stats=batch_stats)


def _main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise Flownet2ImportError(f"Unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  _refuse_existing(f.out)  # Before reading 650 MB.
  variables = import_flownet2(
      torchvision_import.read_state_dict(
          f.checkpoint, f.trust_pickle, error=Flownet2ImportError))
  out = save(f.out, variables)
  print(f"Wrote the FlowNet2 variables to {out}")
  print(f"Use: --config.input.flow=flownet2 "
        f"--config.input.flownet2_checkpoint={out}")


def main(argv):
  errors.run_command(_main, argv)


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("checkpoint", None, "FlowNet2_checkpoint.pth.tar, an "
                      ".npz of its state dict, or a release VPSNet .pth.")
  flags.DEFINE_string("out", None, "The orbax folder to write (new).")
  flags.DEFINE_bool("trust_pickle", False, "Load a .pth that holds more "
                    "than tensors (torch.load weights_only=False).")
  flags.mark_flags_as_required(["checkpoint", "out"])


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  _define_flags()
  app.run(main)
