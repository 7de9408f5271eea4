"""Fields shared by every experiment; each config file overrides a few.

Later issues add the model, training and inference fields here (issue 7);
the names below are already relied on by scripts and notebooks.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.dataset = ml_collections.ConfigDict()
  # One of `vps_synthetic`, `cityscapes_vps`, `viper`.
  config.dataset.name = "vps_synthetic"
  # The folder in the Cityscapes-VPS layout. Empty: WORKDIR/data.
  config.dataset.data_dir = ""

  # Video panoptic quality (eval.vpq).
  config.eval = ml_collections.ConfigDict()
  config.eval.ks = (0, 5, 10, 15)
  config.eval.stride = 5  # Annotation stride lambda, in raw frames.
  return config
