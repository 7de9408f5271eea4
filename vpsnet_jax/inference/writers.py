"""Writers of predictions in the evaluation layout, and of demo videos.

`PredictionWriter(out_dir, layout=...)` writes one benchmark's prediction
layout (`LAYOUTS`), the one its evaluation reads:

  * "cityscapes_vps" (also VIPER's and vps_synthetic's): per frame
    `pan_pred/<image_id>.png` (RGB segment ids, id = R + 256 G + 65536 B,
    0 void), and `pred.json` ({"annotations": [{"image_id", "file_name",
    "segments_info"}]}), read by `eval.vpq` and `eval.stq`;
  * "vipseg": image ids `<video>/<frame>`; `pan_pred/<video>/<frame>.png`
    (the same RGB ids) and `pred.json` in VIPSeg's video-structured schema
    ({"annotations": [{"video_id", "annotations": [{"image_id",
    "file_name", "segments_info"}]}]}, videos in order of first frame),
    read by `eval.vpq --protocol vipseg` / `eval.stq --protocol vipseg`;
  * "kitti_step": image ids `<sequence>/<frame>`;
    `pan_pred/<sequence>/<frame>.png` in KITTI-STEP's encoding (R = the
    category id, which is the train id there, 255 void; G * 256 + B = the
    track id of person and car segments, 0 for the rest), read by
    `eval.stq --protocol kitti_step --pred_dir OUT/pan_pred`; `pred.json`
    as for "cityscapes_vps" (the frames written, their segments).

Output is never half-written:

  * PNGs are encoded on a worker thread into a temporary name and renamed
    (`os.replace`) when complete, so a killed run never leaves a truncated
    PNG under a frame's name;
  * `pred.json` is written atomically (temporary file + `os.replace`) and
    lists only frames whose PNG is complete: every `flush_seconds` of wall
    time while writing (queued behind the PNGs it lists, so it costs the
    caller nothing), and on `close()` (which callers also reach on failure),
    then exactly the frames written. Even after a SIGKILL, `pred.json` names
    no missing or partial file (it may lag the last few PNGs).
  * A new writer starts over (`clean=True`, the default): it first removes
    an earlier run's `pan_pred/*.png`, `pan_pred/*/*.png` and `pred.json`
    (only those files of these layouts), so that a folder never mixes two
    runs' frames.

`VideoWriter` writes colourised frames as a GIF and an MP4 (each through a
temporary name; it removes an earlier run's GIF and MP4 when created).
"""

import collections
import concurrent.futures
import glob
import json
import os
import time
from typing import Dict, List, Optional, Sequence

from absl import logging
import cv2
import numpy as np
from PIL import Image

from eval import common

# PNG encodes in flight before `write` waits for the oldest.
MAX_PENDING = 8
LAYOUTS = ("cityscapes_vps", "vipseg", "kitti_step")
KITTI_STEP_VOID = 255


def kitti_step_png(ids: np.ndarray, segments: Sequence[Dict]) -> np.ndarray:
  """uint8 [H, W, 3] KITTI-STEP encoding of segment ids and their table
  (`inference.panoptic.segments`: "id", "category_id", "isthing",
  "track_id")."""
  ids = np.asarray(ids)
  rgb = np.zeros(ids.shape + (3,), np.uint8)
  rgb[..., 0] = KITTI_STEP_VOID
  for s in segments:
    category, track = int(s["category_id"]), int(s["track_id"])
    if not 0 <= category < KITTI_STEP_VOID:
      raise ValueError(f"segment {s['id']}: category {category} does not fit "
                       "KITTI-STEP's R channel (0..254)")
    if not 0 <= track < 1 << 16:
      raise ValueError(f"segment {s['id']}: track id {track} does not fit "
                       "KITTI-STEP's G * 256 + B")
    instance = track if s["isthing"] else 0
    rgb[ids == s["id"]] = (category, instance >> 8, instance & 255)
  return rgb


def _split_id(image_id: str, layout: str):
  """('<video>', '<frame>') of a '<video>/<frame>' image id."""
  parts = image_id.split("/")
  if len(parts) != 2 or not all(parts):
    raise ValueError(f"the {layout} layout names frames <video>/<frame>, "
                     f"got image id {image_id!r}")
  return parts


def _save_png(rgb: np.ndarray, path: str) -> None:
  """Writes `rgb` to `path` through `path + ".tmp"` (atomic rename)."""
  tmp = path + ".tmp"
  Image.fromarray(rgb).save(tmp, format="PNG")
  os.replace(tmp, path)


def _write_json(path: str, data) -> None:
  """Writes `data` to `path` through `path + ".tmp"` (atomic rename)."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(data, f)
  os.replace(tmp, path)


def remove_outputs(paths: Sequence[str], what: str) -> int:
  """Removes the existing files among `paths`; logs how many (a rerun
  starting over, `what` names the output); returns the count."""
  removed = 0
  for path in paths:
    if os.path.isfile(path):
      os.remove(path)
      removed += 1
  if removed:
    logging.info("Removed %d file(s) of an earlier run's %s (a rerun starts "
                 "over)", removed, what)
  return removed


class PredictionWriter:
  """pan_pred/<image_id>.png + pred.json in `out_dir`.

  Args:
    out_dir: the prediction folder (created if missing).
    clean: first remove an earlier run's `pan_pred/*.png`,
      `pan_pred/*/*.png` and `pred.json` in `out_dir` (never other files).
    flush_seconds: rewrite `pred.json` (the frames whose PNGs are complete)
      when this much wall time has passed since the last time, checked at
      each `write`; None: only on `close()`.
    layout: one of `LAYOUTS` (the module docstring).
  """

  def __init__(self, out_dir: str, *, clean: bool = True,
               flush_seconds: Optional[float] = 10.0,
               layout: str = "cityscapes_vps"):
    if layout not in LAYOUTS:
      raise ValueError(f"prediction layout must be one of {LAYOUTS}, got "
                       f"{layout!r}")
    self.out_dir, self.layout = out_dir, layout
    self.png_dir = os.path.join(out_dir, "pan_pred")
    self.json_path = os.path.join(out_dir, "pred.json")
    os.makedirs(self.png_dir, exist_ok=True)
    if clean:
      root = glob.escape(self.png_dir)
      remove_outputs(
          [p for pattern in ("*.png", "*.png.tmp", "*/*.png", "*/*.png.tmp")
           for p in sorted(glob.glob(os.path.join(root, pattern)))]
          + [self.json_path, self.json_path + ".tmp"],
          f"predictions in {out_dir}")
    self.flush_seconds = flush_seconds
    self._names = set()
    # (annotation, its PNG's future), in write order.
    self._frames: List = []
    self._pool = concurrent.futures.ThreadPoolExecutor(1)
    self._pending = collections.deque()
    self._last_flush = time.monotonic()
    self._closed = False

  def write(self, image_id: str, ids: np.ndarray,
            segments: Sequence[Dict]) -> None:
    """One frame: (H, W) int segment ids and their table."""
    if self._closed:
      raise ValueError(f"PredictionWriter({self.out_dir}) is closed")
    name = str(image_id)
    if name in self._names:
      raise ValueError(f"frame {name} written twice")
    if self.layout == "cityscapes_vps":
      if "/" in name:
        raise ValueError(f"image id {name!r}: the cityscapes_vps layout "
                         "names frames without '/'")
      annotation = {"image_id": name, "file_name": name + ".png"}
    else:
      video, frame = _split_id(name, self.layout)
      os.makedirs(os.path.join(self.png_dir, video), exist_ok=True)
      annotation = ({"video_id": video, "image_id": frame,
                     "file_name": frame + ".png"}
                    if self.layout == "vipseg" else
                    {"image_id": name, "file_name": name + ".png"})
    self._names.add(name)
    annotation["segments_info"] = list(segments)
    rgb = (kitti_step_png(ids, segments) if self.layout == "kitti_step"
           else common.ids_to_rgb(ids))
    path = os.path.join(self.png_dir, name + ".png")
    future = self._pool.submit(_save_png, rgb, path)
    self._frames.append((annotation, future))
    self._pending.append(future)
    if (self.flush_seconds is not None and
        time.monotonic() - self._last_flush >= self.flush_seconds):
      self.flush()
    if len(self._pending) > MAX_PENDING:
      self._pending.popleft().result()

  def flush(self, wait: bool = False) -> None:
    """Queues a rewrite of `pred.json` behind the PNGs written so far (it
    lists those that completed); `wait`: until it is on disk."""
    frames = list(self._frames)
    self._last_flush = time.monotonic()

    def task():
      try:
        _write_json(self.json_path, self._pred_json(_completed(frames)))
      except OSError as e:  # close() writes it again, and raises.
        logging.warning("Could not update %s: %s", self.json_path, e)

    future = self._pool.submit(task)
    if wait:
      future.result()

  def close(self) -> str:
    """Waits for the PNGs and writes `pred.json` listing every frame whose
    PNG was written; then raises the first PNG error not raised by `write`
    yet. Returns pred.json's path (again on a second call)."""
    if self._closed:
      return self.json_path
    self._closed = True
    self._pool.shutdown(wait=True)
    _write_json(self.json_path, self._pred_json(_completed(self._frames)))
    for f in self._pending:
      if f.exception() is not None:
        raise f.exception()
    return self.json_path

  def _pred_json(self, annotations: List[Dict]) -> Dict:
    """pred.json of the layout for the completed frames' annotations."""
    if self.layout != "vipseg":
      return {"annotations": annotations}
    videos = {}
    for a in annotations:
      entry = dict(a)
      videos.setdefault(entry.pop("video_id"), []).append(entry)
    return {"annotations": [{"video_id": v, "annotations": frames}
                            for v, frames in videos.items()]}

  @property
  def num_written(self) -> int:
    """Frames whose PNG is complete (so far)."""
    return len(_completed(self._frames))


def _completed(frames) -> List[Dict]:
  """The annotations of (annotation, future) pairs whose PNG is written."""
  return [a for a, f in frames
          if f.done() and not f.cancelled() and f.exception() is None]


class VideoWriter:
  """Collects uint8 (H, W, 3) frames; `close()` writes `<stem>.gif` and
  `<stem>.mp4` (OpenCV's mp4v codec) and returns their paths. Each is
  written to `<stem>.tmp.gif` / `<stem>.tmp.mp4` first and renamed when
  complete; `clean` first removes an earlier run's `<stem>.gif`/`.mp4`."""

  def __init__(self, stem: str, fps: float = 5.0, *, clean: bool = True):
    self.stem, self.fps = stem, fps
    self.frames: List[np.ndarray] = []
    if clean:
      remove_outputs([stem + s for s in (".gif", ".mp4", ".tmp.gif",
                                         ".tmp.mp4")], f"videos {stem}.*")

  def add(self, frame: np.ndarray) -> None:
    self.frames.append(np.asarray(frame, np.uint8))

  def close(self) -> List[str]:
    from data_pipeline import visualize  # pylint: disable=g-import-not-at-top
    if not self.frames:
      raise ValueError(f"no frames to write to {self.stem}.*")
    gif = self.stem + ".gif"
    visualize.write_gif(self.frames, self.stem + ".tmp.gif", fps=self.fps)
    os.replace(self.stem + ".tmp.gif", gif)
    mp4 = self.stem + ".mp4"
    tmp = self.stem + ".tmp.mp4"
    h, w = self.frames[0].shape[:2]
    video = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), self.fps,
                            (w, h))
    if not video.isOpened():
      raise OSError(f"OpenCV cannot write {mp4} (mp4v codec)")
    for frame in self.frames:
      video.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    video.release()
    os.replace(tmp, mp4)
    return [gif, mp4]


def read_prediction(out_dir: str, image_id: str) -> Optional[np.ndarray]:
  """(H, W) int64 segment ids of a written frame (for tests and demos)."""
  path = os.path.join(out_dir, "pan_pred", f"{image_id}.png")
  if not os.path.isfile(path):
    return None
  return common.rgb_to_ids(np.asarray(Image.open(path)))
