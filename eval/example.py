"""An imperfect prediction derived from ground truth, to demonstrate VPQ.

`write_example_predictions` reads a ground truth in the Cityscapes-VPS
evaluation layout and writes a prediction folder (`pred.json` +
`pan_pred/<image_id>.png`) with the errors a video panoptic model makes:
thing boundaries eroded to void, missed instances, and identity switches
(a thing takes a new id from some frame on). Image PQ (k = 0) then stays high
while VPQ falls as k grows, as in the paper's Table 4. It stands in for a
model's output until the model exists, and serves the evaluation notebook.
"""

import json
import os

import cv2
import numpy as np
from PIL import Image

from eval import common
from eval import layout


def write_example_predictions(gt_json: str, gt_dir: str, out_dir: str,
                              seed: int = 0, switch_rate: float = 0.15,
                              miss_rate: float = 0.05,
                              erode_px: int = 1) -> str:
  """Writes a corrupted copy of the ground truth as a prediction folder.

  Args:
    gt_json: ground-truth JSON of the evaluation layout.
    gt_dir: folder of its PNGs.
    out_dir: the prediction folder to write (`pred.json`, `pan_pred/`).
    seed: seed of the corruptions.
    switch_rate: probability, per thing segment and annotated frame, that it
      takes a new id from that frame to the end of its video.
    miss_rate: probability that a thing segment is missed in a frame.
    erode_px: thing masks lose this many boundary pixels (to void).

  Returns:
    `out_dir`.
  """
  with open(gt_json) as f:
    gt = json.load(f)
  isthing = {c["id"]: bool(c["isthing"]) for c in gt["categories"]}
  os.makedirs(os.path.join(out_dir, "pan_pred"), exist_ok=True)
  rng = np.random.default_rng(seed)
  kernel = np.ones((2 * erode_px + 1,) * 2, np.uint8)
  # Fresh ids above every ground-truth id.
  next_id = 1 + max((s["id"] for a in gt["annotations"]
                     for s in a["segments_info"]), default=0)
  by_video = {}
  for ann in gt["annotations"]:
    by_video.setdefault(layout.video_id(ann["image_id"]), []).append(ann)
  annotations = []
  for video in sorted(by_video):
    renamed = {}  # gt id -> current predicted id in this video
    for ann in sorted(by_video[video], key=lambda a: str(a["image_id"])):
      rgb = layout.read_id_png(os.path.join(gt_dir, ann["file_name"]))
      ids = common.rgb_to_ids(rgb)
      out = ids.copy()
      segments = []
      for seg in ann["segments_info"]:
        mask = ids == seg["id"]
        if not isthing[seg["category_id"]] or seg.get("iscrowd", 0):
          segments.append({"id": seg["id"], "category_id": seg["category_id"]})
          continue
        if rng.random() < miss_rate:
          out[mask] = 0
          continue
        if rng.random() < switch_rate:
          renamed[seg["id"]] = next_id
          next_id += 1
        pid = renamed.get(seg["id"], seg["id"])
        kept = cv2.erode(mask.astype(np.uint8), kernel).astype(bool)
        out[mask] = 0
        out[kept] = pid
        if kept.any():
          segments.append({"id": pid, "category_id": seg["category_id"]})
      name = str(ann["image_id"])
      Image.fromarray(common.ids_to_rgb(out)).save(
          os.path.join(out_dir, "pan_pred", name + ".png"))
      annotations.append({"image_id": name, "segments_info": segments})
  with open(os.path.join(out_dir, "pred.json"), "w") as f:
    json.dump({"annotations": annotations}, f)
  return out_dir
