"""Video training on VIPSeg (Miao et al., CVPR 2022), 720P folder.

  python main.py --config=configs/vipseg.py --workdir=DIR \
      --config.dataset.data_dir=/path/to/VIPSeg_720P

The paper never trained VPSNet on VIPSeg; this is the recipe of
`cityscapes_vps.py` (SGD momentum 0.9, lr 0.005 per 8 images scaled with the
global batch, weight decay 1e-4, warm-up 500 steps from 1/3, x0.1 at epochs
8 and 11 of 12, clipping at 35) with VIPSeg's 124 classes and these
choices of ours: crops of 720 x 1280 (VIPSeg's frames are 720 pixels high)
after a random scale of 0.8-1.5, and reference frames the neighbouring
annotated frames (every VIPSeg frame is annotated, so +-1). Steps follow
from the training split's size. `--mode=evaluate` writes VIPSeg's
prediction layout (`pan_pred/<video>/<frame>.png` + its video-structured
pred.json) and scores it with its benchmark's VPQ (`eval.vpq --protocol
vipseg`: windows of 1, 2, 4, 6 and 8 frames) and STQ.
"""

import ml_collections

from configs import cityscapes_vps


def get_config() -> ml_collections.ConfigDict:
  config = cityscapes_vps.get_config()
  config.dataset.name = "vipseg"
  config.input.crop_size = (720, 1280)
  config.input.ref_offsets = (-1, 1)
  config.eval.protocol = "vipseg"
  config.eval.ks = (1, 2, 4, 6, 8)
  config.eval.stride = None
  return config
