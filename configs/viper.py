"""The paper's video training on VIPER (the VPSNet release's layout).

  python main.py --config=configs/viper.py --workdir=DIR \
      --config.dataset.data_dir=/path/to/viper

The same recipe as `cityscapes_vps.py` (SGD momentum 0.9, lr 0.005 per 8
images scaled with the global batch, weight decay 1e-4, warm-up 500 steps
from 1/3, x0.1 at epochs 8 and 11 of 12, clipping at 35, 800x1600 crops
after a random scale); VIPER has 23 classes and its own train/val_day
splits. Steps are derived from the prepared training split's size.
"""

import ml_collections

from configs import cityscapes_vps


def get_config() -> ml_collections.ConfigDict:
  # The paper trains both video datasets with the same settings.
  config = cityscapes_vps.get_config()
  config.dataset.name = "viper"
  return config
