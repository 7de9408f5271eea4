"""The paper's image-level training of `fuse` on Cityscapes (Kim et al., 2020).

  python main.py --config=configs/cityscapes.py --workdir=DIR \
      --config.dataset.data_dir=/path/to/cityscapes

As the VPSNet release's Cityscapes stage: every annotated (gtFine) training
image is a target and its reference an unannotated neighbouring frame of
leftImg8bit_sequence drawn from t-5..t+5 (so the sequence folder is needed
for training), with DIS flow standing in for FlowNet2. No tracking; the
evaluation is image PQ (k = 0) on val. SGD as in default.py (momentum 0.9,
lr 0.005 per 8 images, warm-up, clipping at 35), 800x1600 crops after a
random scale, 144 epochs with x0.1 at epochs 96 and 128: with the 2975
training images and 8 images per step, 372 steps per epoch, 53568 steps,
decays at 35712 and 47616.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.dataset.name = "cityscapes"
  config.variant = "fuse"
  config.tracker = "none"
  config.model.depth = 50
  config.input.flow = "dis"
  config.input.crop_size = (800, 1600)
  config.input.scale_range = (0.8, 1.5)
  config.input.ref_offsets = (-5, -4, -3, -2, -1, 1, 2, 3, 4, 5)
  config.per_device_batch_size = 1
  config.num_epochs = 144
  config.lr_decay_epochs = (96, 128)
  config.epoch_repeats = 1
  config.eval.ks = (0,)
  return config
