"""Quick start on the built-in synthetic dataset (no download, CPU friendly).

  python main.py --config=configs/synthetic.py --workdir=/tmp/vpsnet_synthetic
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.dataset.name = "vps_synthetic"
  # Written to `data_dir` (default WORKDIR/data) on first use when empty.
  config.dataset.synthetic = ml_collections.ConfigDict()
  config.dataset.synthetic.num_train_videos = 4
  config.dataset.synthetic.num_val_videos = 2
  config.dataset.synthetic.height = 128
  config.dataset.synthetic.width = 256

  # Until the model exists (issues 4-8), the main job evaluates an example
  # prediction derived from the ground truth (eval/example.py).
  config.example = ml_collections.ConfigDict()
  config.example.switch_rate = 0.15
  config.example.miss_rate = 0.05
  config.example.erode_px = 1
  return config
