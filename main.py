"""VPSNet in JAX: the main entry point.

  python main.py --config=configs/synthetic.py --workdir=DIR
      [--mode=train_and_evaluate|train|evaluate|predict|example]
      [--config.field=value ...]

Modes:
  train_and_evaluate (default)  train config.variant on config.dataset
      (resuming from the latest checkpoint in WORKDIR/checkpoints),
      validation losses and semantic mIoU every eval_every_steps, then
      online inference on the validation split and its VPQ
      (WORKDIR/predictions, WORKDIR/vpq.json);
  train      the same without any evaluation;
  evaluate   online inference + VPQ of the latest checkpoint;
  predict    online inference on any folder of ordered frames
      (--config.predict.frames_dir=DIR): panoptic PNGs, pred.json with
      track ids, a colourised GIF and MP4;
  example    the evaluator alone, on an imperfect prediction derived from
      the synthetic ground truth.

Stopping: SIGTERM or SIGINT (Ctrl-C) during training saves the checkpoint
of the current step and exits with status 75 (EX_TEMPFAIL: "retry"); the
same command resumes exactly. If the evaluation after training fails, the
message gives the --mode=evaluate command that evaluates the saved
checkpoint.

Several processes (hosts): `jax.distributed.initialize()` runs automatically
on SLURM (several tasks) and TPU pods, or explicitly with
--coordinator_address=HOST:PORT --num_processes=N --process_id=I.
The logic lives in `vpsnet_jax.train.train` and `vpsnet_jax.inference.run`
(notebooks call the same functions).
"""

import json
import os
import shlex
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Experiment configuration file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for data, predictions, "
                    "checkpoints and metrics.")
flags.DEFINE_enum("mode", "train_and_evaluate",
                  ["train_and_evaluate", "train", "evaluate", "predict",
                   "example"], "What to run.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 "
                    "for multi-process runs (jax.distributed.initialize).")
flags.DEFINE_integer("num_processes", None, "Number of processes.")
flags.DEFINE_integer("process_id", None, "This process's id, 0..N-1.")
flags.mark_flags_as_required(["config", "workdir"])


def init_distributed() -> None:
  """jax.distributed.initialize() for explicit flags, SLURM or TPU pods."""
  import jax  # pylint: disable=g-import-not-at-top
  if FLAGS.coordinator_address or FLAGS.num_processes:
    if None in (FLAGS.coordinator_address, FLAGS.num_processes,
                FLAGS.process_id):
      raise app.UsageError("--coordinator_address, --num_processes and "
                           "--process_id go together")
    jax.distributed.initialize(FLAGS.coordinator_address,
                               FLAGS.num_processes, FLAGS.process_id)
  elif (int(os.environ.get("SLURM_NTASKS", "1")) > 1 or
        "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")):
    jax.distributed.initialize()
  logging.info("process %d of %d, %d local / %d devices",
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())


def run_example(config, workdir: str) -> dict:
  """Synthetic data -> example prediction -> VPQ table and WORKDIR/vpq.json."""
  from data_pipeline import synthetic  # pylint: disable=g-import-not-at-top
  from eval import example  # pylint: disable=g-import-not-at-top
  from vpsnet_jax.inference import run  # pylint: disable=g-import-not-at-top

  if config.dataset.name != "vps_synthetic":
    raise ValueError("--mode=example runs on the built-in vps_synthetic data; "
                     f"config.dataset.name is {config.dataset.name!r}")
  data_dir = config.dataset.data_dir or os.path.join(workdir, "data")
  gt_json = os.path.join(data_dir, "panoptic_gt_val_city_vps.json")
  if not os.path.exists(gt_json):
    if os.path.isdir(data_dir) and os.listdir(data_dir):
      raise FileNotFoundError(
          f"{data_dir} is not empty but has no {os.path.basename(gt_json)}; "
          "point config.dataset.data_dir at an empty folder or a complete "
          "vps_synthetic dataset")
    s = config.dataset.synthetic
    logging.info("Writing vps_synthetic to %s", data_dir)
    synthetic.write_dataset(data_dir, s.num_train_videos, s.num_val_videos,
                            s.height, s.width, config.seed)
  gt_dir = os.path.join(data_dir, "val", "panoptic_video")
  pred_dir = os.path.join(workdir, "predictions")
  example.write_example_predictions(
      gt_json, gt_dir, pred_dir, seed=config.seed,
      switch_rate=config.example.switch_rate,
      miss_rate=config.example.miss_rate, erode_px=config.example.erode_px)
  return run.score_predictions(config, workdir, gt_json, gt_dir, pred_dir)


def evaluate_command(argv) -> str:
  """The command line `argv` (this run's) with --mode=evaluate."""
  args, skip = [], False
  for a in argv[1:]:
    if skip:
      skip = False
      continue
    if a in ("--mode", "-mode"):
      skip = True
      continue
    if not a.startswith(("--mode=", "-mode=")):
      args.append(a)
  return shlex.join(["python", argv[0], *args,
                     "--mode=evaluate"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  os.makedirs(FLAGS.workdir, exist_ok=True)
  if FLAGS.mode == "example":
    run_example(FLAGS.config, FLAGS.workdir)
    return
  from vpsnet_jax.train import train  # pylint: disable=g-import-not-at-top
  train.validate_config(FLAGS.config, check_devices=False,
                        inference=FLAGS.mode != "train")
  init_distributed()
  if FLAGS.mode in ("evaluate", "predict"):
    from vpsnet_jax.inference import run  # pylint: disable=g-import-not-at-top
    if FLAGS.mode == "evaluate":
      result = run.evaluate(FLAGS.config, FLAGS.workdir)
      print(json.dumps({"vpq": result["vpq"]}, indent=2))
    else:
      run.predict(FLAGS.config, FLAGS.workdir)
    return
  from vpsnet_jax.train import preemption  # pylint: disable=g-import-not-at-top
  try:
    result = train.train_and_evaluate(
        FLAGS.config, FLAGS.workdir,
        evaluate=FLAGS.mode == "train_and_evaluate")
  except preemption.TrainingInterrupted as e:
    print(f"{e}\nExit status {preemption.PREEMPTED_EXIT_CODE} (stopped on "
          "request, resumable).", file=sys.stderr)
    sys.exit(preemption.PREEMPTED_EXIT_CODE)
  except train.EvaluationAfterTrainingError as e:
    logging.exception("The final evaluation failed")
    print(f"error: {e}\n  {evaluate_command(sys.argv)}", file=sys.stderr)
    sys.exit(1)
  vpq = result.get("vpq")
  print(json.dumps({"step": result["step"], "train": result["train"],
                    "eval": result["eval"],
                    "vpq": vpq["vpq"] if vpq else None}, indent=2))


if __name__ == "__main__":
  app.run(main)
