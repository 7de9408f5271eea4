"""Writers of predictions in the evaluation layout, and of demo videos.

`PredictionWriter(out_dir)` writes `pan_pred/<image_id>.png` (RGB segment
ids, id = R + 256 G + 65536 B, 0 void) per frame and, on `close()`,
`pred.json` ({"annotations": [{"image_id", "file_name", "segments_info"}]}),
the layout `eval.vpq.evaluate_folder` reads. PNGs are encoded on a worker
thread; `pred.json` is written atomically at the end, so an interrupted run
never leaves a JSON that names missing files.

`VideoWriter` writes colourised frames as a GIF and an MP4.
"""

import concurrent.futures
import json
import os
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np
from PIL import Image

from eval import common


class PredictionWriter:
  """pan_pred/<image_id>.png + pred.json in `out_dir`."""

  def __init__(self, out_dir: str):
    self.out_dir = out_dir
    self.png_dir = os.path.join(out_dir, "pan_pred")
    os.makedirs(self.png_dir, exist_ok=True)
    self.annotations: List[Dict] = []
    self._names = set()
    self._pool = concurrent.futures.ThreadPoolExecutor(1)
    self._pending: List[concurrent.futures.Future] = []

  def write(self, image_id: str, ids: np.ndarray,
            segments: Sequence[Dict]) -> None:
    """One frame: (H, W) int segment ids and their table."""
    name = str(image_id)
    if name in self._names:
      raise ValueError(f"frame {name} written twice")
    self._names.add(name)
    rgb = common.ids_to_rgb(ids)
    path = os.path.join(self.png_dir, name + ".png")
    self._pending.append(self._pool.submit(
        lambda: Image.fromarray(rgb).save(path)))
    self.annotations.append({"image_id": name, "file_name": name + ".png",
                             "segments_info": list(segments)})
    if len(self._pending) > 8:
      self._pending.pop(0).result()

  def close(self) -> str:
    """Waits for the PNGs, writes pred.json; returns its path."""
    for f in self._pending:
      f.result()
    self._pending = []
    self._pool.shutdown()
    path = os.path.join(self.out_dir, "pred.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      json.dump({"annotations": self.annotations}, f)
    os.replace(tmp, path)
    return path


class VideoWriter:
  """Collects uint8 (H, W, 3) frames; `close()` writes `<stem>.gif` and
  `<stem>.mp4` (OpenCV's mp4v codec) and returns their paths."""

  def __init__(self, stem: str, fps: float = 5.0):
    self.stem, self.fps = stem, fps
    self.frames: List[np.ndarray] = []

  def add(self, frame: np.ndarray) -> None:
    self.frames.append(np.asarray(frame, np.uint8))

  def close(self) -> List[str]:
    from data_pipeline import visualize  # pylint: disable=g-import-not-at-top
    if not self.frames:
      raise ValueError(f"no frames to write to {self.stem}.*")
    gif = self.stem + ".gif"
    visualize.write_gif(self.frames, gif, fps=self.fps)
    mp4 = self.stem + ".mp4"
    h, w = self.frames[0].shape[:2]
    video = cv2.VideoWriter(mp4, cv2.VideoWriter_fourcc(*"mp4v"), self.fps,
                            (w, h))
    if not video.isOpened():
      raise OSError(f"OpenCV cannot write {mp4} (mp4v codec)")
    for frame in self.frames:
      video.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    video.release()
    return [gif, mp4]


def read_prediction(out_dir: str, image_id: str) -> Optional[np.ndarray]:
  """(H, W) int64 segment ids of a written frame (for tests and demos)."""
  path = os.path.join(out_dir, "pan_pred", f"{image_id}.png")
  if not os.path.isfile(path):
    return None
  return common.rgb_to_ids(np.asarray(Image.open(path)))
