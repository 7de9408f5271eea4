"""The paper's video training on VIPER (the VPSNet release's layout).

  python main.py --config=configs/viper.py --workdir=DIR \
      --config.dataset.data_dir=/path/to/viper

The same recipe as `cityscapes_vps.py` (SGD momentum 0.9, lr 0.005 per 8
images scaled with the global batch, weight decay 1e-4, warm-up 500 steps
from 1/3, x0.1 at epochs 8 and 11 of 12, clipping at 35, 800x1600 crops
after a random scale); VIPER has 23 classes and its own train/val_day
splits. Steps are derived from the prepared training split's size.
`--mode=evaluate` scores with the release's VIPER protocol (`eval.vpq
--protocol viper`: every frame annotated, windows of 1, 5, 10 and 15 frames,
ground-truth tubes under 32 x 32 pixels skipped, "mobilebarrier" left out
of the averages) on the paper's evaluation subset of val_day (10 videos,
their first 60 frames: `config.dataset.subset = "paper"`; set it to "" for
all of val_day).
"""

import ml_collections

from configs import cityscapes_vps


def get_config() -> ml_collections.ConfigDict:
  # The paper trains both video datasets with the same settings.
  config = cityscapes_vps.get_config()
  config.dataset.name = "viper"
  config.eval.protocol = "viper"
  config.eval.ks = (1, 5, 10, 15)
  config.eval.stride = None
  config.dataset.subset = "paper"
  return config
