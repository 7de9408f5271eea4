"""The paper's video training on Cityscapes-VPS (Kim et al., CVPR 2020).

  python main.py --config=configs/cityscapes_vps.py --workdir=DIR \
      --config.dataset.data_dir=/path/to/cityscapes_vps

SGD momentum 0.9, lr 0.005 per 8 images scaled linearly with the global
batch, weight decay 1e-4, linear warm-up of 500 steps from 1/3, x0.1 at
epochs 8 and 11 of 12 (one epoch = the training pairs repeated 8 times, as
in the release), clipping at global norm 35, 800x1600 crops after a random
scale, reference frames the neighbouring annotated frames (+-5 raw frames).
With the release's 2400 annotated training frames and 8 images per step this
is 2400 steps per epoch, 28800 steps, decays at 19200 and 26400.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.dataset.name = "cityscapes_vps"
  config.variant = "fusetrack"
  config.model.depth = 50
  config.input.crop_size = (800, 1600)
  config.input.scale_range = (0.8, 1.5)
  config.input.ref_offsets = (-5, 5)
  config.per_device_batch_size = 1
  config.num_epochs = 12
  config.lr_decay_epochs = (8, 11)
  config.epoch_repeats = 8
  config.checkpoint_every_steps = 1000
  config.eval_every_steps = 2400
  return config
