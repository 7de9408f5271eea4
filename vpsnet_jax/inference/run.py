"""Inference entry points (main.py's modes; notebooks call the same).

  evaluate(config, workdir)   VPQ and STQ of the latest checkpoint on the
                              validation split: WORKDIR/predictions,
                              the tables printed, WORKDIR/vpq.json and
                              WORKDIR/stq.json, clu logs
  predict(config, workdir)    any folder of ordered frames
                              (config.predict.frames_dir): panoptic PNGs,
                              pred.json with track ids, a colourised GIF
                              and MP4
"""

import json
import os
from typing import Any, Dict, Optional, Tuple

from absl import logging
import jax
import numpy as np

from data_pipeline import sources
from data_pipeline import transforms
from vpsnet_jax import experiment
from vpsnet_jax.checkpoints import flownet2_import
from vpsnet_jax.checkpoints import manager as ckpt
from vpsnet_jax.errors import ConfigError
from vpsnet_jax.inference import online
from vpsnet_jax.inference import panoptic
from vpsnet_jax.inference import tracker as tracker_lib
from vpsnet_jax.inference import writers
from vpsnet_jax.modeling import flownet2 as flownet2_lib
from vpsnet_jax.modeling import vpsnet


def _tracking_variants():
  return [repr(v) for v, spec in vpsnet.VARIANTS.items() if spec.track]


def validate(config, fields=None, check_devices: bool = True) -> None:
  """`experiment.validate_config` plus the inference fields: the tracker,
  and that it fits the variant (ConfigError)."""
  experiment.validate_config(config, fields, check_devices=check_devices)
  experiment.check_choice("tracker", config.tracker, tracker_lib.TRACKERS)
  if (tracker_lib.TRACKERS[config.tracker][1] and
      not experiment.variant_tracks(config)):
    raise ConfigError(
        f"config.tracker={config.tracker!r} needs a variant with the track "
        f"head ({', '.join(_tracking_variants())}), not "
        f"{config.variant!r}; use tracker "
        "'none', 'cls_sort' or 'iou_match'")


def load_variables(config, workdir: str, meta) -> Tuple[Dict[str, Any], int]:
  """({"params", "batch_stats"}, step) of the latest checkpoint in
  WORKDIR/checkpoints (NumPy; no compile, no optimizer)."""
  model = vpsnet.VPSNet(experiment.model_config(config, meta))
  image = jax.ShapeDtypeStruct((1, *experiment.init_image_size(config), 3),
                               np.float32)
  shapes = jax.eval_shape(lambda k, x: dict(model.init(k, x)),
                          jax.random.PRNGKey(config.seed), image)
  manager = ckpt.checkpoint_manager(workdir)
  try:
    step = manager.latest_step()
    if not (model.cfg.flownet2 and step is not None and not ckpt.model_has(
        manager, step, ("batch_stats", "flownet2"))):
      return ckpt.restore_model(manager, shapes)
    # A checkpoint without FlowNet2's weights (trained with another flow):
    # they come from config.input.flownet2_checkpoint.
    path = config.input.flownet2_checkpoint
    if not path:
      raise ConfigError(
          f"The checkpoint of step {step} in {workdir} holds no FlowNet2 "
          "weights (it was trained with another config.input.flow): give "
          f"config.input.flownet2_checkpoint. {flownet2_lib.WEIGHTS_HELP}")
    shapes["batch_stats"] = {k: v for k, v in shapes["batch_stats"].items()
                             if k != "flownet2"}
    variables, step = ckpt.restore_model(manager, shapes, step)
    logging.info("FlowNet2's weights from %s", path)
    return flownet2_import.fill_variables(variables, path), step
  finally:
    manager.close()


def build_model(config, meta, variables=None, workdir: Optional[str] = None,
                devices=None) -> Tuple[online.FrameModel, Optional[int]]:
  """The `FrameModel` of config.variant with `variables` (default: the
  latest checkpoint of `workdir`) on `devices` (default: every local
  device, one stream each) and the checkpoint's step (None when variables
  are given)."""
  step = None
  if variables is None:
    if workdir is None:
      raise ValueError("build_model needs variables or a workdir")
    variables, step = load_variables(config, workdir, meta)
    logging.info("Inference with the checkpoint of step %d", step)
  model = vpsnet.VPSNet(experiment.model_config(config, meta))
  return online.FrameModel(model, variables, devices=devices), step


def score_predictions(config, workdir: str,
                      gt_json: Optional[str], gt_dir: str, pred_dir: str,
                      progress: bool = True) -> dict:
  """VPQ and STQ of a prediction folder (`pred.json` + `pan_pred/`) against
  the ground truth under `config.eval.protocol` (VPQ at `config.eval.ks`
  and `config.eval.stride`): prints both tables and writes
  `WORKDIR/vpq.json` and `WORKDIR/stq.json`; returns `eval.vpq`'s result
  with `eval.stq`'s under "stq".

  `kitti_step` (no `gt_json`: the PNGs carry the labels) is scored by STQ
  alone, the KITTI-STEP benchmark's metric: the result's "vpq" is None,
  "k" empty, and no vpq.json is written."""
  from eval import stq  # pylint: disable=g-import-not-at-top
  from eval import vpq  # pylint: disable=g-import-not-at-top
  protocol = config.eval.protocol
  if protocol == "kitti_step":
    result = {"protocol": protocol, "vpq": None, "k": {}}
    stq_pred_dir = os.path.join(pred_dir, "pan_pred")
    out = None
  else:
    details = {}
    result = vpq.evaluate_folder(gt_json, gt_dir, pred_dir,
                                 ks=config.eval.ks, stride=config.eval.stride,
                                 progress=progress, details=details,
                                 protocol=protocol)
    print(vpq.format_table(result, details))
    out = os.path.join(workdir, "vpq.json")
    with open(out, "w") as f:
      json.dump(result, f, indent=2)
    stq_pred_dir = pred_dir
  stq_result = stq.evaluate_folder(protocol, gt_dir, stq_pred_dir, gt_json,
                                   progress=progress)
  print(stq.format_table(stq_result))
  stq_out = os.path.join(workdir, "stq.json")
  with open(stq_out, "w") as f:
    json.dump(stq_result, f, indent=2)
  print(f"Predictions in {pred_dir}; " +
        (f"VPQ written to {out}, " if out else
         "no VPQ (KITTI-STEP is scored by STQ), ") + f"STQ to {stq_out}")
  return dict(result, stq=stq_result)


def evaluate(config, workdir: str, variables=None, step: Optional[int] = None,
             progress: bool = True, writer=None) -> Dict[str, Any]:
  """Online inference on the validation split of config.dataset, then VPQ.

  Args:
    config: the experiment config.
    workdir: predictions go to WORKDIR/predictions, the table to
      WORKDIR/vpq.json; the checkpoint comes from WORKDIR/checkpoints
      unless `variables` are given.
    variables: {"params", "batch_stats"} to evaluate instead.
    step: the training step to log the scores at (default: the loaded
      checkpoint's, else 0).
    progress: progress bars.
    writer: the clu metric writer for the scores (vpq/k{k}/{all,things,
      stuff}, vpq/{all,things,stuff} and stq/{stq,aq,iou}); default: a new
      one in `workdir`.

  Returns:
    `eval.vpq`'s result dict plus "stq" (`eval.stq`'s, also in
    WORKDIR/stq.json) and "inference" (frames, seconds, per-stage seconds).
  """
  validate(config)
  sources.check_protocol(config)
  meta = sources.meta(config)
  source, index = sources.open_split(config, workdir, "val")
  try:
    # A subset's ground truth is written to WORKDIR (its frames only).
    gt_json, gt_dir = source.reader.evaluation_ground_truth(workdir)
  except ValueError as e:
    raise ConfigError(f"{config.dataset.name}'s validation split cannot be "
                      f"evaluated: {e}") from e
  model, loaded_step = build_model(config, meta, variables, workdir)
  if step is None:
    step = loaded_step
  pred_dir = os.path.join(workdir, "predictions")
  stats = online.predict_videos(
      config, model, source, index, source.image_ids, pred_dir, meta,
      progress=progress, layout=sources.dataset(config).prediction_layout)
  result = score_predictions(config, workdir, gt_json, gt_dir, pred_dir,
                             progress)
  print(f"({stats['frames']} frames, {stats['fps']:.2f} frames/s)")
  if writer is None:
    writer = experiment.create_writer(workdir)
  scalars = {f"vpq/{g}": result["vpq"][g] for g in result["vpq"] or {}}
  for k, r in result["k"].items():
    scalars.update({f"vpq/k{k}/{g}": r[g] for g in ("all", "things", "stuff")})
  scalars.update({f"stq/{m}": result["stq"][m] for m in ("stq", "aq", "iou")
                  if result["stq"][m] is not None})
  writer.write_scalars(step or 0, scalars)
  writer.flush()
  return dict(result, inference=stats)


def predict(config, workdir: str, variables=None, progress: bool = True
            ) -> Dict[str, Any]:
  """Online inference on config.predict.frames_dir (sorted file names are
  the frame order; one video, so one device). Writes to
  config.predict.output_dir (default WORKDIR/predict): pan_pred/*.png and
  pred.json (segments with their category and track id), panoptic.gif and
  panoptic.mp4 (colours fixed per track id, blended over the frames).
  Returns the paths and timing.

  A rerun on the same output folder starts over cleanly: the earlier run's
  pan_pred/*.png, pred.json, panoptic.gif and panoptic.mp4 are removed
  first (logged; other files in the folder are left alone). Resuming is
  not offered because online tracking depends on every earlier frame, so
  the remaining frames would need all the done ones replayed anyway.

  Output is never half-written: pred.json is rewritten every few seconds
  while running (listing only frames whose PNG is complete); if inference
  fails, pred.json, the GIF and the MP4 are written for the frames done, a
  line says how many of how many, and the error propagates.
  """
  from data_pipeline import visualize  # pylint: disable=g-import-not-at-top
  validate(config)
  if not config.predict.frames_dir:
    raise ConfigError("--mode=predict needs --config.predict.frames_dir=DIR "
                     "(a folder of ordered frames)")
  if config.input.flow == "ground_truth" and experiment.reads_flow(config):
    raise ConfigError("config.input.flow='ground_truth' exists only for "
                     "vps_synthetic's own frames; use "
                     "--config.input.flow=dis for a folder of frames")
  meta = sources.meta(config)
  source = sources.FolderSource(config.predict.frames_dir)
  out_dir = config.predict.output_dir or os.path.join(workdir, "predict")
  if _same_dir(config.predict.frames_dir, os.path.join(out_dir, "pan_pred")):
    raise ConfigError(f"config.predict.frames_dir={config.predict.frames_dir!r}"
                     " is the output's pan_pred/ folder (a rerun clears it);"
                     " choose another config.predict.output_dir")
  os.makedirs(out_dir, exist_ok=True)
  # One folder is one video: more devices would only run empty streams.
  model, _ = build_model(config, meta, variables, workdir,
                         devices=jax.local_devices()[:1])
  video = writers.VideoWriter(os.path.join(out_dir, "panoptic"),
                              fps=config.predict.fps, clean=True)
  id_to_train = meta.id_to_train_id

  def on_frame(frame):
    values = panoptic.panoptic_values(frame.ids, frame.segments, id_to_train)
    image = np.clip(np.asarray(frame.image) * transforms.STD +
                    transforms.MEAN, 0, 255)
    video.add(visualize.colorize(values, meta, image=image))

  try:
    stats = online.predict_videos(config, model, source, source.index(),
                                  source.image_ids, out_dir, meta,
                                  write_all=True, progress=progress,
                                  on_frame=on_frame)
  except BaseException as error:
    _report_failure(out_dir, video, len(source), error)
    raise
  paths = video.close()
  print(f"Predicted {stats['frames']} frames ({stats['fps']:.2f} frames/s): "
        f"{out_dir}/pan_pred, {out_dir}/pred.json, {', '.join(paths)}")
  return {"out_dir": out_dir, "videos": paths, "inference": stats}


def _same_dir(a: str, b: str) -> bool:
  return os.path.realpath(a) == os.path.realpath(b)


def _report_failure(out_dir: str, video: writers.VideoWriter, total: int,
                    error: BaseException) -> None:
  """After a failed `predict`: the GIF/MP4 of the frames done and a line
  saying how many there are (the caller re-raises `error`; a failure here
  is logged and noted on it)."""
  done = len(video.frames)
  paths = []
  if video.frames:
    try:
      paths = video.close()
    except Exception as e:  # noqa: BLE001  # pylint: disable=broad-except
      logging.exception("Writing %s.* after the failure also failed",
                        video.stem)
      error.add_note(f"(writing {video.stem}.* also failed: {e!r})")
  try:
    with open(os.path.join(out_dir, "pred.json")) as f:
      listed = len(json.load(f)["annotations"])
  except (OSError, ValueError, KeyError):
    listed = 0
  print(f"Prediction failed after {done} of {total} frames: "
        f"{out_dir}/pred.json lists the {listed} frames written to "
        f"{out_dir}/pan_pred" +
        (f", {' and '.join(paths)} show the {done} frames done" if paths
         else "") + "; a rerun starts over.", flush=True)

