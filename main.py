"""VPSNet in JAX: the main entry point.

  python main.py --config=configs/synthetic.py --workdir=DIR [--mode=example]
      [--config.field=value ...]

Modes: `example` (today's main job: write the built-in synthetic dataset if
needed, derive an imperfect example prediction from its validation ground
truth and evaluate it with VPQ). `train`, `evaluate`, `train_and_evaluate`
and `predict` arrive with the training (issue 7) and inference (issue 8)
issues and fail with a clear message until then.
"""

import json
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Experiment configuration file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for data, predictions, "
                    "checkpoints and metrics.")
flags.DEFINE_enum("mode", "example", ["example", "train", "evaluate",
                                      "train_and_evaluate", "predict"],
                  "What to run.")
flags.mark_flags_as_required(["config", "workdir"])


def run_example(config, workdir: str) -> dict:
  """Synthetic data -> example prediction -> VPQ table and WORKDIR/vpq.json."""
  from data_pipeline import synthetic  # pylint: disable=g-import-not-at-top
  from eval import example  # pylint: disable=g-import-not-at-top
  from eval import vpq  # pylint: disable=g-import-not-at-top

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
  details = {}
  result = vpq.evaluate_folder(gt_json, gt_dir, pred_dir, ks=config.eval.ks,
                               stride=config.eval.stride, progress=True,
                               details=details)
  print(vpq.format_table(result, details))
  with open(os.path.join(workdir, "vpq.json"), "w") as f:
    json.dump(result, f, indent=2)
  print(f"Predictions in {pred_dir}; VPQ written to "
        f"{os.path.join(workdir, 'vpq.json')}")
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  os.makedirs(FLAGS.workdir, exist_ok=True)
  if FLAGS.mode == "example":
    run_example(FLAGS.config, FLAGS.workdir)
  elif FLAGS.mode == "predict":
    raise NotImplementedError("--mode=predict arrives with issue 8 "
                              "(video inference).")
  else:
    raise NotImplementedError(f"--mode={FLAGS.mode} arrives with issue 7 "
                              "(training system).")


if __name__ == "__main__":
  app.run(main)
