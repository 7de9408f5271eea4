"""VPSNet in JAX: the main entry point.

  python main.py --config=configs/synthetic.py --workdir=DIR
      [--mode=train_and_evaluate|train|evaluate|predict|example]
      [--config.field=value ...]

Modes:
  train_and_evaluate (default)  train config.variant on config.dataset
      (resuming from the latest checkpoint in WORKDIR/checkpoints),
      validation losses and semantic mIoU every eval_every_steps, then
      online inference on the validation split, its VPQ and STQ
      (WORKDIR/predictions, WORKDIR/vpq.json, WORKDIR/stq.json);
  train      the same without any evaluation;
  evaluate   online inference + VPQ and STQ of the latest checkpoint;
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
Configuration and input errors (an unknown or invalid field, a missing
dataset) end with one line `error: <message>` and exit status 2; pass
--verbosity=1 for the traceback.

This file composes the library: `vpsnet_jax.train.train` trains,
`vpsnet_jax.inference.run` evaluates and predicts (notebooks call the same
functions).
"""

import json
import os
import shlex
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from vpsnet_jax.errors import USAGE_EXIT_CODE  # A leaf module: imports nothing.

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
  """Synthetic data -> example prediction -> VPQ and STQ tables,
  WORKDIR/vpq.json and WORKDIR/stq.json."""
  from data_pipeline import sources  # pylint: disable=g-import-not-at-top
  from eval import example  # pylint: disable=g-import-not-at-top
  from vpsnet_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  from vpsnet_jax.inference import run  # pylint: disable=g-import-not-at-top

  if not sources.dataset(config).generated:
    raise ConfigError("--mode=example runs on the built-in vps_synthetic "
                      f"data; config.dataset.name is {config.dataset.name!r}")
  source, _ = sources.open_split(config, workdir, "val")
  gt_json, gt_dir = source.reader.evaluation_ground_truth(workdir)
  pred_dir = os.path.join(workdir, "predictions")
  example.write_example_predictions(
      gt_json, gt_dir, pred_dir, seed=config.seed,
      switch_rate=config.example.switch_rate,
      miss_rate=config.example.miss_rate, erode_px=config.example.erode_px)
  return run.score_predictions(config, workdir, gt_json, gt_dir, pred_dir)


class EvaluationAfterTrainingError(RuntimeError):
  """The evaluation at the end of `train_and_evaluate` failed; the
  training's checkpoint of `step` is saved (`--mode=evaluate` resumes)."""

  def __init__(self, step: int, checkpoint_dir: str, cause: BaseException):
    self.step, self.checkpoint_dir = step, checkpoint_dir
    super().__init__(
        f"Training finished and its checkpoint of step {step} is saved in "
        f"{checkpoint_dir}, but the final evaluation failed: "
        f"{type(cause).__name__}: {cause}. Evaluate that checkpoint with the "
        "same command and --mode=evaluate.")


def train_and_evaluate(config, workdir: str, evaluate: bool = True) -> dict:
  """Training (with validation losses when `evaluate`), then the VPQ of the
  final model on process 0 (`inference.run.evaluate`: WORKDIR/predictions,
  WORKDIR/vpq.json, WORKDIR/stq.json). Returns the training's dict plus
  "vpq" (or None; with the STQ under "stq")."""
  import jax  # pylint: disable=g-import-not-at-top
  from vpsnet_jax import experiment  # pylint: disable=g-import-not-at-top
  from vpsnet_jax.inference import run  # pylint: disable=g-import-not-at-top
  from vpsnet_jax.train import train  # pylint: disable=g-import-not-at-top
  validate(config, "train_and_evaluate" if evaluate else "train")
  writer = experiment.create_writer(workdir)
  result = train.train(config, workdir, validation=evaluate, writer=writer)
  result["vpq"] = None
  if evaluate and jax.process_index() == 0:
    state = result["state"]
    try:
      result["vpq"] = run.evaluate(config, workdir, state.variables,
                                   step=int(state.step), writer=writer)
    except (Exception, KeyboardInterrupt) as e:
      raise EvaluationAfterTrainingError(
          int(state.step), os.path.join(workdir, "checkpoints"), e) from e
  return result


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


def validate(config, mode: str) -> None:
  """Every check of `mode`'s config before any compile (ConfigError)."""
  from configs import default  # pylint: disable=g-import-not-at-top
  fields = default.get_config()
  if mode in ("evaluate", "predict", "train_and_evaluate"):
    from vpsnet_jax.inference import run  # pylint: disable=g-import-not-at-top
    run.validate(config, fields, check_devices=False)
  if mode in ("evaluate", "train_and_evaluate"):
    # Before training, not after it: the protocol reads the dataset's
    # prediction layout.
    from data_pipeline import sources  # pylint: disable=g-import-not-at-top
    sources.check_protocol(config)
  if mode in ("train", "train_and_evaluate"):
    from vpsnet_jax.train import train  # pylint: disable=g-import-not-at-top
    train.validate(config, fields, check_devices=False)


def _main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  os.makedirs(FLAGS.workdir, exist_ok=True)
  if FLAGS.mode == "example":
    run_example(FLAGS.config, FLAGS.workdir)
    return
  validate(FLAGS.config, FLAGS.mode)
  init_distributed()
  if FLAGS.mode in ("evaluate", "predict"):
    from vpsnet_jax.inference import run  # pylint: disable=g-import-not-at-top
    if FLAGS.mode == "evaluate":
      result = run.evaluate(FLAGS.config, FLAGS.workdir)
      print(json.dumps({"vpq": result["vpq"],
                        "stq": _stq_summary(result)}, indent=2))
    else:
      run.predict(FLAGS.config, FLAGS.workdir)
    return
  from vpsnet_jax.train import preemption  # pylint: disable=g-import-not-at-top
  try:
    result = train_and_evaluate(FLAGS.config, FLAGS.workdir,
                                evaluate=FLAGS.mode == "train_and_evaluate")
  except preemption.TrainingInterrupted as e:
    print(f"{e}\nExit status {preemption.PREEMPTED_EXIT_CODE} (stopped on "
          "request, resumable).", file=sys.stderr)
    sys.exit(preemption.PREEMPTED_EXIT_CODE)
  except EvaluationAfterTrainingError as e:
    logging.exception("The final evaluation failed")
    print(f"error: {e}\n  {evaluate_command(sys.argv)}", file=sys.stderr)
    sys.exit(1)
  vpq = result.get("vpq")
  print(json.dumps({"step": result["step"], "train": result["train"],
                    "eval": result["eval"],
                    "vpq": vpq["vpq"] if vpq else None,
                    "stq": _stq_summary(vpq)}, indent=2))
  shutdown_distributed()


def _stq_summary(result):
  """{"stq", "aq", "iou"} of an evaluation's result (None without one)."""
  if not result or "stq" not in result:
    return None
  return {m: result["stq"][m] for m in ("stq", "aq", "iou")}


def shutdown_distributed() -> None:
  """Several processes: leave the coordination service now, while every
  process is past its last collective, rather than from JAX's exit hook
  after the interpreter's own teardown (TensorFlow's, orbax's threads),
  whose duration differs between processes: a process that reaches the
  shutdown barrier 5 minutes before another aborts (seen once in CI, 4
  processes on 2 cores)."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() > 1:
    logging.info("process %d: training done, leaving the coordination "
                 "service", jax.process_index())
    sys.stdout.flush()
    jax.distributed.shutdown()


def _fail(message: str) -> None:
  """Configuration and input errors: one line and exit status 2."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(USAGE_EXIT_CODE)


def main(argv):
  """`_main` with configuration and input errors (`ConfigError`) as one
  `error:` line and exit status 2; the traceback with --verbosity=1."""
  from vpsnet_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  try:
    _main(argv)
  except ConfigError as e:
    if FLAGS.verbosity >= 1:
      logging.exception("Configuration or input error")
    _fail(str(e))


def parse_flags(argv):
  """absl's flag parsing, with an unknown `--config.field` override as an
  `error:` line naming the nearest existing fields (exit status 2)."""
  try:
    return FLAGS(argv)
  except AttributeError:
    from configs import default  # pylint: disable=g-import-not-at-top
    from vpsnet_jax import experiment  # pylint: disable=g-import-not-at-top
    known = experiment.field_names(default.get_config())
    unknown = [a.split("=", 1)[0][len("--config."):] for a in argv[1:]
               if a.startswith("--config.") and
               a.split("=", 1)[0][len("--config."):] not in known]
    if not unknown:
      raise
    _fail(experiment.unknown_field_message(unknown, known))
  except flags.Error as e:
    _fail(f"{e}\nPass --help for the flags.")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
