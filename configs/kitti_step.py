"""Video training on KITTI-STEP (Weber et al., 2021).

  python main.py --config=configs/kitti_step.py --workdir=DIR \
      --config.dataset.data_dir=/path/to/kitti_step

The paper never trained VPSNet on KITTI-STEP; this is the recipe of
`cityscapes_vps.py` (SGD momentum 0.9, lr 0.005 per 8 images scaled with the
global batch, weight decay 1e-4, warm-up 500 steps from 1/3, x0.1 at epochs
8 and 11 of 12, clipping at 35) with KITTI-STEP's classes (the 19
Cityscapes classes, person and car the only things) and these choices of
ours: crops of 384 x 1248 (KITTI frames are 375 x 1242, padded to the size
divisor) after a random scale of 0.8-1.5, reference frames the neighbouring
frames (every frame is annotated, so +-1). Steps follow from the training
split's size. `--mode=evaluate` writes KITTI-STEP's prediction layout
(`predictions/pan_pred/<sequence>/<frame>.png`, R = semantic id, G * 256 +
B = track id) and scores it with STQ (`eval.stq --protocol kitti_step`),
the benchmark's metric; no VPQ is computed (`config.eval.ks` is unused).
"""

import ml_collections

from configs import cityscapes_vps


def get_config() -> ml_collections.ConfigDict:
  config = cityscapes_vps.get_config()
  config.dataset.name = "kitti_step"
  config.input.crop_size = (384, 1248)
  config.input.ref_offsets = (-1, 1)
  config.eval.protocol = "kitti_step"
  return config
