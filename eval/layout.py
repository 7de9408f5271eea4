"""Reads the Cityscapes-VPS evaluation layout into videos of `Frame`s.

Ground truth: a JSON with `images`, `annotations` (`image_id`, `file_name`,
`segments_info`) and `categories` (`id`, `name`, `isthing`), and RGB PNGs of
segment ids in `gt_dir`, named by each annotation's `file_name`.
Prediction: `pred.json` (`annotations` with `image_id` and `segments_info`)
and `pan_pred/<image_id>.png`.

Frames are grouped into videos by the first `_`-separated field of the image
id and ordered by image id. Every ground-truth frame must have a prediction;
predictions of other frames are ignored. Problems are found before any pixel
is read, so a long run does not fail at its end for a missing file.
"""

import collections
import concurrent.futures
import dataclasses
import json
import os
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np
from PIL import Image

from eval.common import Frame, VPQInputError


@dataclasses.dataclass(frozen=True)
class FrameSpec:
  """Where one annotated frame's ground truth and prediction live."""
  name: str
  gt_path: str
  gt_segments: Sequence[Mapping[str, Any]]
  pred_path: str
  pred_segments: Sequence[Mapping[str, Any]]


@dataclasses.dataclass(frozen=True)
class Plan:
  categories: list
  videos: list  # list of lists of FrameSpec, frames in order.


def video_id(image_id: str) -> str:
  """`0005_0025_frankfurt_000000_001736` -> `0005`."""
  return str(image_id).split("_")[0]


def _load_json(path: str, what: str) -> Mapping:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{what} JSON not found: {path}")
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise VPQInputError(f"{path}: cannot read {what} JSON: {e}") from e


def _require(obj: Mapping, keys: Sequence[str], where: str):
  if not isinstance(obj, Mapping):
    raise VPQInputError(
        f"{where}: expected an object, got {type(obj).__name__}")
  missing = [k for k in keys if k not in obj]
  if missing:
    raise VPQInputError(f"{where}: missing key(s) {missing}")


def plan_videos(gt_json: str, gt_dir: str, pred_dir: str,
                pred_json: Optional[str] = None) -> Plan:
  """Validates the layout and lists every video's frames, without decoding."""
  if not os.path.isdir(gt_dir):
    raise FileNotFoundError(f"ground-truth PNG folder not found: {gt_dir}")
  pred_png_dir = os.path.join(pred_dir, "pan_pred")
  if not os.path.isdir(pred_png_dir):
    raise FileNotFoundError(f"prediction PNG folder not found: {pred_png_dir}")
  pred_json = pred_json or os.path.join(pred_dir, "pred.json")
  gt = _load_json(gt_json, "ground-truth")
  _require(gt, ("annotations", "categories"), gt_json)
  pred = _load_json(pred_json, "prediction")
  _require(pred, ("annotations",), pred_json)

  for i, cat in enumerate(gt["categories"]):
    _require(cat, ("id", "isthing"), f"{gt_json}: categories[{i}]")
  preds = {}
  for i, ann in enumerate(pred["annotations"]):
    _require(ann, ("image_id", "segments_info"),
             f"{pred_json}: annotations[{i}]")
    key = str(ann["image_id"])
    if key in preds:
      raise VPQInputError(f"{pred_json}: image {key} is predicted twice")
    preds[key] = ann

  frames = collections.defaultdict(list)
  seen = set()
  for i, ann in enumerate(gt["annotations"]):
    _require(ann, ("image_id", "file_name", "segments_info"),
             f"{gt_json}: annotations[{i}]")
    name = str(ann["image_id"])
    if name in seen:
      raise VPQInputError(f"{gt_json}: image {name} is annotated twice")
    seen.add(name)
    gt_path = os.path.join(gt_dir, ann["file_name"])
    if not os.path.isfile(gt_path):
      raise FileNotFoundError(
          f"ground-truth PNG of image {name} not found: {gt_path}")
    if name not in preds:
      raise VPQInputError(f"{pred_json}: no prediction for ground-truth "
                          f"image {name}")
    pred_path = os.path.join(pred_png_dir, name + ".png")
    if not os.path.isfile(pred_path):
      raise FileNotFoundError(
          f"predicted PNG of image {name} not found: {pred_path}")
    frames[video_id(name)].append(FrameSpec(
        name, gt_path, ann["segments_info"], pred_path,
        preds[name]["segments_info"]))
  videos = [sorted(frames[v], key=lambda s: s.name) for v in sorted(frames)]
  return Plan(list(gt["categories"]), videos)


def read_id_png(path: str) -> np.ndarray:
  """Reads an RGB PNG of segment ids as (H, W, 3) uint8."""
  try:
    with Image.open(path) as img:
      if img.mode != "RGB":
        raise VPQInputError(f"{path}: expected an RGB PNG of segment ids "
                            f"(id = R + 256 G + 65536 B), got mode {img.mode}")
      return np.asarray(img)
  except VPQInputError:
    raise
  except Exception as e:  # PIL raises many types for corrupt files.
    raise VPQInputError(f"{path}: unreadable PNG: {e}") from e


def _load_frame(spec: FrameSpec) -> Frame:
  return Frame(spec.name, read_id_png(spec.gt_path), spec.gt_segments,
               read_id_png(spec.pred_path), spec.pred_segments,
               gt_source=spec.gt_path, pred_source=spec.pred_path)


class FrameLoader:
  """Decodes PNGs on a thread pool, one video ahead of the consumer."""

  def __init__(self, num_threads: Optional[int] = None):
    self._pool = concurrent.futures.ThreadPoolExecutor(
        num_threads or os.cpu_count() or 1)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self._pool.shutdown(wait=True, cancel_futures=True)

  def videos(self, specs: Sequence[Sequence[FrameSpec]],
             prefetch: int = 1) -> Iterator[list]:
    """Yields each video as a list of decoded `Frame`s, in order."""
    queue = collections.deque()
    for video in specs:
      queue.append([self._pool.submit(_load_frame, s) for s in video])
      if len(queue) > prefetch:
        yield [f.result() for f in queue.popleft()]
    while queue:
      yield [f.result() for f in queue.popleft()]
