"""Import the VPSNet release's checkpoints (GitHub mcahny/vps, mmdetection v1).

  python -m vpsnet_jax.checkpoints.release_import --checkpoint FILE.pth \
      --config configs/cityscapes_vps.py --workdir DIR [--config.field=...]

writes DIR/checkpoints/0 (the orbax "model" item: what `main.py
--mode=evaluate|predict --workdir DIR` and `config.init_from=DIR/
checkpoints/0` read) and DIR/flownet2_state.npz (the release's frozen
FlowNet2, keys without the "flownet2." prefix: what
`config.input.flownet2_checkpoint` takes). With `--config.input.flow=
flownet2` the model's checkpoint holds FlowNet2's weights too.

Release key -> our variables (`release_table`; kernels OIHW -> HWIO, Linear
weights transposed):

  backbone.*                          backbone (`torchvision_import`: same
                                      names as torchvision's ResNet; BN
                                      weight/bias/running_* frozen)
  neck.lateral_convs.{i}.conv         fpn/lateral_{i}
  neck.fpn_convs.{i}.conv             fpn/output_{i}
  extra_neck.liteflownet.flow_estimator.convs.{0.0,1.0,2.0,3}
                                      fuse/align/flow_conv{0,1,2}, flow_out
  extra_neck.tcea_fusion.tAtt_2       fuse/attend/t_att_center (the centre
                                      frame's embedding)
  extra_neck.tcea_fusion.tAtt_1       fuse/attend/t_att_frames (every frame)
  extra_neck.tcea_fusion.fea_fusion   fuse/attend/fusion
  extra_neck.tcea_fusion.sAtt_{1..4}, sAtt_add_{1,2}
                                      fuse/attend/s_att_{1..4}, s_att_add_*
  extra_neck.refine.conv              refine/conv (ConvModule: conv + ReLU)
  panopticFPN.deform_convs.0.{3i}.conv_offset
                                      semantic_head/stack/dconv{i}/offset
  panopticFPN.deform_convs.0.{3i}.conv
                                      semantic_head/stack/dconv{i}/kernel
  panopticFPN.deform_convs.0.{3i+1}   semantic_head/stack/gn{i} (scale, bias)
  panopticFPN.conv_pred.conv          semantic_head/logits
  rpn_head.rpn_conv / rpn_cls / rpn_reg
                                      rpn_head/rpn_conv / rpn_cls / rpn_reg
  bbox_head.shared_fcs.0              box_head/fc1 (input (C,7,7) -> (7,7,C))
  bbox_head.shared_fcs.1              box_head/fc2
  bbox_head.fc_cls / fc_reg           box_head/cls / reg (class 0 background
                                      in both; deltas class-major)
  mask_head.convs.{i}.conv            mask_head/conv{i+1}
  mask_head.upsample                  mask_head/deconv (ConvTranspose2d)
  mask_head.conv_logits               mask_head/logits
  track_head.fcs.0 / fcs.1            track_head/fc1 (input reordered as
                                      the box head's) / fc2
  flownet2.*                          batch_stats/flownet2 with
                                      config.input.flow='flownet2'
                                      (`flownet2_import`), else set aside

Which parts exist follows the variant (`VPSNetConfig.spec`): fuse ->
extra_neck.refine, align -> extra_neck.liteflownet, attend ->
extra_neck.tcea_fusion, track -> track_head. `num_batches_tracked` is
ignored. Anything else (a key that maps nowhere, a missing key, a shape
that differs) is a `ReleaseImportError` naming the keys.
"""

import os
from typing import Any, Dict, List, Mapping, Tuple

from absl import logging
import flax
import jax
import numpy as np

from vpsnet_jax.checkpoints import flownet2_import
from vpsnet_jax import errors
from vpsnet_jax.checkpoints import manager as ckpt
from vpsnet_jax.checkpoints import maskrcnn_import
from vpsnet_jax.checkpoints import torchvision_import

FLOWNET2_PREFIX = flownet2_import.FLOWNET2_PREFIX
split_flownet2 = flownet2_import.split_flownet2
FLOWNET2_FILE = "flownet2_state.npz"
# Enough to trace every parameter; the shapes do not depend on it.
_INIT_IMAGE = (1, 64, 64, 3)
_SHOWN = 8  # Keys named per kind of error.
_FPN_INPUTS = 4  # C2..C5; P6 is max-pooled (no weights).


class ReleaseImportError(ckpt.CheckpointError):
  """A release state dict that does not fit the model."""


# Kinds of torch module: (torch leaf -> our leaf), our converter, and the
# torch shape of our leaf's shape (for `release_shapes`).
def _oihw(shape):
  return (shape[3], shape[2], shape[0], shape[1])


def _linear(shape):
  return (shape[1], shape[0])


def _iohw(shape):
  return (shape[2], shape[3], shape[0], shape[1])


_KINDS = {
    "conv": ({"weight": "kernel", "bias": "bias"},
             maskrcnn_import.conv_params, _oihw),
    "dense": ({"weight": "kernel", "bias": "bias"},
              maskrcnn_import.dense_params, _linear),
    "roi_fc": ({"weight": "kernel", "bias": "bias"},
               maskrcnn_import.roi_fc_params, _linear),
    "deconv": ({"weight": "kernel", "bias": "bias"},
               maskrcnn_import.deconv_params, _iohw),
    "norm": ({"weight": "scale", "bias": "bias"}, None, tuple),
    # A deformable conv's weight (no bias): our module holds the kernel
    # next to its offset conv.
    "kernel": ({"weight": "kernel"}, None, _oihw),
}


def _norm_params(sd, key):
  return {"scale": _np(sd[key + ".weight"]), "bias": _np(sd[key + ".bias"])}


def _kernel_params(sd, key):
  return {"kernel": _np(sd[key + ".weight"]).transpose(2, 3, 1, 0)}


def _np(x) -> np.ndarray:
  return torchvision_import.to_numpy(x)


_CONVERTERS = {"norm": _norm_params, "kernel": _kernel_params}

_TCEA = (("tAtt_2", "t_att_center"), ("tAtt_1", "t_att_frames"),
         ("fea_fusion", "fusion"), ("sAtt_1", "s_att_1"),
         ("sAtt_2", "s_att_2"), ("sAtt_3", "s_att_3"), ("sAtt_4", "s_att_4"),
         ("sAtt_add_1", "s_att_add_1"), ("sAtt_add_2", "s_att_add_2"))
_FLOW = (("0.0", "flow_conv0"), ("1.0", "flow_conv1"), ("2.0", "flow_conv2"),
         ("3", "flow_out"))


def release_table(model_config) -> List[Tuple[str, Tuple[str, ...], str]]:
  """(release module prefix, our module path under params, kind) of every
  part but the backbone, for `VPSNet(model_config)`."""
  cfg, spec = model_config, model_config.spec
  table = []
  for ours, subs in torchvision_import.FPN_LAYOUTS["mmdet"].items():
    for i in range(_FPN_INPUTS):
      table.append(("neck." + subs[0].format(i=i)[:-1], ("fpn", f"{ours}_{i}"),
                    "conv"))
  if spec.fuse:
    table.append(("extra_neck.refine.conv", ("refine", "conv"), "conv"))
  if spec.fuse and spec.align:
    for theirs, ours in _FLOW:
      table.append(("extra_neck.liteflownet.flow_estimator.convs." + theirs,
                    ("fuse", "align", ours), "conv"))
  if spec.fuse and spec.attend:
    for theirs, ours in _TCEA:
      table.append(("extra_neck.tcea_fusion." + theirs,
                    ("fuse", "attend", ours), "conv"))
  for i in range(len(cfg.semantic_features)):
    theirs, ours = f"panopticFPN.deform_convs.0.{3 * i}", (
        "semantic_head", "stack", f"dconv{i}")
    table += [(theirs + ".conv_offset", ours + ("offset",), "conv"),
              (theirs + ".conv", ours, "kernel"),
              (f"panopticFPN.deform_convs.0.{3 * i + 1}",
               ("semantic_head", "stack", f"gn{i}"), "norm")]
  table.append(("panopticFPN.conv_pred.conv", ("semantic_head", "logits"),
                "conv"))
  for name in ("rpn_conv", "rpn_cls", "rpn_reg"):
    table.append((f"rpn_head.{name}", ("rpn_head", name), "conv"))
  table += [("bbox_head.shared_fcs.0", ("box_head", "fc1"), "roi_fc"),
            ("bbox_head.shared_fcs.1", ("box_head", "fc2"), "dense"),
            ("bbox_head.fc_cls", ("box_head", "cls"), "dense"),
            ("bbox_head.fc_reg", ("box_head", "reg"), "dense")]
  for i in range(4):
    table.append((f"mask_head.convs.{i}.conv", ("mask_head", f"conv{i + 1}"),
                  "conv"))
  table += [("mask_head.upsample", ("mask_head", "deconv"), "deconv"),
            ("mask_head.conv_logits", ("mask_head", "logits"), "conv")]
  if spec.track:
    table += [("track_head.fcs.0", ("track_head", "fc1"), "roi_fc"),
              ("track_head.fcs.1", ("track_head", "fc2"), "dense")]
  return table


def model_shapes(model_config) -> Dict[str, Any]:
  """`jax.eval_shape` of `VPSNet(model_config)`'s variables (no compute)."""
  from vpsnet_jax.modeling import vpsnet  # pylint: disable=g-import-not-at-top
  model = vpsnet.VPSNet(model_config)
  return jax.eval_shape(lambda k, x: dict(model.init(k, x)),
                        jax.random.PRNGKey(0),
                        jax.ShapeDtypeStruct(_INIT_IMAGE, np.float32))


def _flat(tree) -> Dict[Tuple[str, ...], Any]:
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree))


def release_shapes(model_config, shapes=None, buffers: bool = False
                   ) -> Dict[str, Tuple[int, ...]]:
  """{release key: torch shape} of every weight `import_release` reads for
  `VPSNet(model_config)` (`shapes`: its `model_shapes`, computed when not
  given). `buffers`: also the BatchNorms' `num_batches_tracked` (shape (),
  ignored by the import), as the release's files hold them."""
  shapes = model_shapes(model_config) if shapes is None else shapes
  flat = _flat(shapes)
  out = {}
  for path, leaf in flat.items():
    if path[1] != "backbone":
      continue
    key = "backbone." + torchvision_import.resnet_torch_key(path[2:])
    shape = tuple(leaf.shape)
    out[key] = _oihw(shape) if path[-1] == "kernel" else shape
    if buffers and key.endswith(".running_mean"):
      out[key[:-len("running_mean")] + "num_batches_tracked"] = ()
  for prefix, module, kind in release_table(model_config):
    leaves, _, torch_shape = _KINDS[kind]
    for theirs, ours in leaves.items():
      leaf = flat.get(("params",) + module + (ours,))
      if leaf is None:
        raise ReleaseImportError(
            f"the model has no {'/'.join(module + (ours,))} for "
            f"{prefix}.{theirs}")
      shape = tuple(leaf.shape)
      out[f"{prefix}.{theirs}"] = (torch_shape(shape) if ours == "kernel"
                                   else shape)
  return out


def _ignored(key: str) -> bool:
  return key.endswith(".num_batches_tracked")


def _listing(keys, expected=None) -> str:
  keys = sorted(keys)
  shown = [f"{k} {tuple(expected[k])}" if expected else k
           for k in keys[:_SHOWN]]
  more = f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
  return ", ".join(shown) + more


def check_keys(state_dict: Mapping[str, Any],
               expected: Mapping[str, Tuple[int, ...]], variant: str) -> None:
  """`ReleaseImportError` naming every key of `state_dict` (without
  flownet2) that maps nowhere, every `expected` key it lacks, and every
  shape that differs."""
  keys = {k for k in state_dict if not _ignored(k)}
  extra = keys - set(expected)
  missing = set(expected) - keys
  wrong = {k: (tuple(np.shape(state_dict[k])), tuple(expected[k]))
           for k in keys & set(expected)
           if tuple(np.shape(state_dict[k])) != tuple(expected[k])}
  problems = []
  if extra:
    problems.append(f"{len(extra)} keys map to nothing of variant "
                    f"{variant!r}: {_listing(extra)}")
  if missing:
    problems.append(f"{len(missing)} keys are missing (expected shapes): "
                    f"{_listing(missing, expected)}")
  if wrong:
    names = sorted(wrong)
    shown = ", ".join(f"{k} is {wrong[k][0]}, the model needs {wrong[k][1]}"
                      for k in names[:_SHOWN])
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    problems.append(f"{len(wrong)} shapes differ: {shown}{more}")
  if problems:
    raise ReleaseImportError("The release state dict does not fit the model: "
                             + "; ".join(problems))


def import_release(state_dict: Mapping[str, Any], model_config
                   ) -> Dict[str, Any]:
  """Variables {"params", "batch_stats"} (NumPy float32) of
  `VPSNet(model_config)` from a release state dict.

  Args:
    state_dict: release key -> NumPy array or torch tensor (the `state_dict`
      of an mmcv checkpoint); `flownet2.*` keys go to batch_stats/flownet2
      when the model computes FlowNet2's flow (model_config.flownet2), and
      are set aside (logged) otherwise.
    model_config: a `VPSNetConfig`; its variant says which parts exist.

  Raises:
    ReleaseImportError naming the keys that map nowhere, are missing or
    have another shape, or any model leaf the file does not fill.
  """
  state_dict, flownet2 = split_flownet2(state_dict)
  shapes = model_shapes(model_config)
  check_keys(state_dict, release_shapes(model_config, shapes),
             model_config.variant)
  target = _flat(shapes)
  backbone = torchvision_import.import_resnet(
      state_dict, {c: shapes[c]["backbone"] for c in ("params", "batch_stats")
                   if "backbone" in shapes.get(c, {})}, "backbone.")
  out = {(c, "backbone") + k: v for c in backbone
         for k, v in _flat(backbone[c]).items()}
  fpn = torchvision_import.import_fpn(state_dict, _FPN_INPUTS, "neck.",
                                     layout="mmdet")["params"]
  out.update({("params", "fpn") + k: v for k, v in _flat(fpn).items()})
  for prefix, module, kind in release_table(model_config):
    if module[0] == "fpn":  # Done by import_fpn.
      continue
    convert = _CONVERTERS.get(kind) or _KINDS[kind][1]
    for leaf, value in convert(state_dict, prefix).items():
      out[("params",) + module + (leaf,)] = value
  if model_config.flownet2:  # input.flow='flownet2': FlowNet2 in the model.
    if not flownet2:
      raise ReleaseImportError(
          "The model computes FlowNet2's flow (config.input.flow="
          "'flownet2') but the state dict has no flownet2.* keys")
    weights = flownet2_import.import_flownet2(flownet2)["params"]
    out.update({("batch_stats", "flownet2") + k: v
                for k, v in _flat(weights).items()})
  unfilled = sorted("/".join(k) for k in target if k not in out)
  unknown = sorted("/".join(k) for k in out if k not in target)
  if unfilled or unknown:
    raise ReleaseImportError(
        f"The import leaves {len(unfilled)} model variables unset "
        f"({', '.join(unfilled[:_SHOWN])}) and fills {len(unknown)} the "
        f"model lacks ({', '.join(unknown[:_SHOWN])})")
  for k, v in out.items():
    if tuple(v.shape) != tuple(target[k].shape):  # Guarded by check_keys.
      raise ReleaseImportError(f"{'/'.join(k)}: imported {v.shape}, the "
                               f"model has {target[k].shape}")
  logging.info("Imported %d release arrays into %d variables; %d flownet2 "
               "keys %s", len(state_dict), len(out), len(flownet2),
               "imported into batch_stats/flownet2" if model_config.flownet2
               else "set aside (config.input.flow is not 'flownet2')")
  return flax.traverse_util.unflatten_dict(
      {k: np.asarray(v, target[k].dtype) for k, v in out.items()})


# ------------------------------------------------------------------- files


def read_state_dict(path: str, trust_pickle: bool = False) -> Dict[str, Any]:
  """A release checkpoint as {key: NumPy array}: a `.pth` (torch needed;
  an mmcv checkpoint's "state_dict" is taken) or an `.npz` of the keys
  (`torchvision_import.read_state_dict`, errors as ReleaseImportError)."""
  return torchvision_import.read_state_dict(path, trust_pickle,
                                            error=ReleaseImportError)


def save_model(workdir: str, variables: Mapping[str, Any], step: int = 0
               ) -> str:
  """Writes `variables` as the "model" item of WORKDIR/checkpoints/<step>
  (no training state: evaluate, predict and init_from need none); returns
  the step folder."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  manager = ckpt.checkpoint_manager(workdir)
  try:
    if manager.all_steps():  # evaluate would read the latest, not ours.
      raise ReleaseImportError(
          f"{workdir} already has checkpoints (steps "
          f"{sorted(manager.all_steps())}); use a new --workdir")
    manager.save(step, args=ocp.args.Composite(**{
        ckpt.MODEL: ocp.args.StandardSave(dict(variables))}), force=True)
    manager.wait_until_finished()
  finally:
    manager.close()
  return os.path.join(os.path.abspath(workdir), "checkpoints", str(step))


def run(config, checkpoint: str, workdir: str, trust_pickle: bool = False
        ) -> Dict[str, Any]:
  """The command line's work: read, import, write; returns what it wrote."""
  from data_pipeline import sources  # pylint: disable=g-import-not-at-top
  from vpsnet_jax import experiment  # pylint: disable=g-import-not-at-top
  model_config = experiment.model_config(config, sources.meta(config))
  state = read_state_dict(checkpoint, trust_pickle)
  # The whole state: import_release takes or sets aside flownet2.* (logged).
  variables = import_release(state, model_config)
  _, flownet2 = split_flownet2(state)
  os.makedirs(workdir, exist_ok=True)
  folder = save_model(workdir, variables)
  written = {"checkpoint": folder, "variant": model_config.variant,
             "arrays": len(_flat(variables)), "flownet2": None}
  if flownet2:
    written["flownet2"] = os.path.join(workdir, FLOWNET2_FILE)
    np.savez(written["flownet2"], **flownet2)
  return written


def _main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise ReleaseImportError(f"Unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  written = run(f.config, f.checkpoint, f.workdir, f.trust_pickle)
  print(f"Wrote {written['arrays']} arrays of variant "
        f"{written['variant']!r} to {written['checkpoint']}")
  if written["flownet2"]:
    print(f"Wrote the FlowNet2 state dict to {written['flownet2']}")
  print(f"Evaluate: python main.py --mode=evaluate --workdir={f.workdir} "
        "--config=... (the same config)")


def main(argv):
  errors.run_command(_main, argv)


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", None, "Experiment configuration "
                                  "file (the model to import into).",
                                  lock_config=True)
  flags.DEFINE_string("checkpoint", None, "The release's .pth (or .npz).")
  flags.DEFINE_string("workdir", None, "Where to write checkpoints/0.")
  flags.DEFINE_bool("trust_pickle", False, "Load a .pth that holds more "
                    "than tensors (torch.load weights_only=False).")
  flags.mark_flags_as_required(["config", "checkpoint", "workdir"])


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  _define_flags()
  app.run(main)
