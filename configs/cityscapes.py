"""Image-level training of `fuse` on Cityscapes: the release's or the paper's.

  python main.py --config=configs/cityscapes.py --workdir=DIR \
      --config.dataset.data_dir=/path/to/cityscapes
  python main.py --config=configs/cityscapes.py:paper ...   # the paper's

Every annotated (gtFine) training image is a target and its reference an
unannotated neighbouring frame of leftImg8bit_sequence (so the sequence
folder is needed for training), with DIS flow standing in for FlowNet2. No
tracking; the evaluation is image PQ (k = 0) on val, each val image with
the raw frame before it as reference (as the release's test set: the
data pipeline's evaluation always takes the previous frame, and the
Cityscapes reader keeps only that one in val; no config field). Both
choices: SGD as in default.py (momentum 0.9, lr 0.005 per 8 images, linear
warm-up of 500 steps from 1/3, clipping at 35, weight decay 1e-4), a random
scale of 0.8..1.5, flip, 800x1600 crops (redrawn while they hold no
instance, `input.crop_retries`), one image per device (8 images per step on
8 devices, the counts below; the lr follows the global batch).

`release` (the default; the VPSNet release's configs/cityscapes/fuse.py):
the reference is the raw frame at t-1 or t+1, drawn per example; 24 epochs
of the training set repeated 8 times (RepeatDataset times=8), x0.1 at
epochs 16 and 22. With the 2975 training images and 8 images per step,
2975 * 8 / 8 = 2975 steps per epoch, 71400 steps, decays at 47600 and
65450.

`paper` (Kim et al., 2020): references drawn from t-5..t+5 (t excluded),
144 epochs with x0.1 at epochs 96 and 128, no repeat: ceil(2975 / 8) = 372
steps per epoch, 53568 steps, decays at 35712 and 47616.
"""

from typing import Optional

import ml_collections

from configs import default

CHOICES = ("release", "paper")


def get_config(arg: Optional[str] = None) -> ml_collections.ConfigDict:
  """The config of `arg` (the text after ':' in --config): None or
  'release' (the release's schedule), 'paper' (the paper's)."""
  choice = "release" if arg is None or arg == "" else arg
  if choice not in CHOICES:
    raise ValueError(f"configs/cityscapes.py:{arg}: unknown choice {arg!r}; "
                     f"use one of {CHOICES} (or none: release)")
  config = default.get_config()
  config.dataset.name = "cityscapes"
  config.variant = "fuse"
  config.tracker = "none"
  config.model.depth = 50
  config.input.flow = "dis"
  config.input.crop_size = (800, 1600)
  config.input.scale_range = (0.8, 1.5)
  config.per_device_batch_size = 1
  config.eval.ks = (0,)
  if choice == "release":
    config.input.ref_offsets = (-1, 1)
    config.num_epochs = 24
    config.lr_decay_epochs = (16, 22)
    config.epoch_repeats = 8
  else:
    config.input.ref_offsets = (-5, -4, -3, -2, -1, 1, 2, 3, 4, 5)
    config.num_epochs = 144
    config.lr_decay_epochs = (96, 128)
    config.epoch_repeats = 1
  return config
