"""Reads the benchmarks' evaluation layouts into videos of `Frame`s.

`plan_videos`, the Cityscapes-VPS layout (also the one `--mode=evaluate`
writes for every dataset). Ground truth: a JSON with `images`,
`annotations` (`image_id`, `file_name`, `segments_info`) and `categories`
(`id`, `name`, `isthing`), and RGB PNGs of segment ids in `gt_dir`, named
by each annotation's `file_name`.
Prediction: `pred.json` (`annotations` with `image_id` and `segments_info`)
and `pan_pred/<image_id>.png`.

Frames are grouped into videos by the first `_`-separated field of the image
id and ordered by image id. Every ground-truth frame must have a prediction;
predictions of other frames are ignored.

`plan_vipseg`, the VIPSeg layout its own scripts write
(`create_panoptic_video_labels.py`, read by `ClipPanoFCN/eval_vpq_vspw.py`).
Ground truth: `panoptic_gt_VIPSeg_val.json` with `videos` (`video_id`,
`images`: `id`, `file_name`), `annotations` (`video_id`, `annotations`:
`image_id`, `file_name`, `segments_info` with `area`) and `categories`, and
the RGB PNGs `panomasksRGB/<video_id>/<file_name>`. Prediction: `pred.json`
(`annotations`: `video_id`, `annotations`: `image_id`, `segments_info`) and
`pan_pred/<video_id>/<file_name>`. A video's frames are in the order of its
`images`. VIPSeg's script pairs a video's prediction entries with its
ground-truth frames by list position; we pair them by `image_id`, which
gives the same numbers whenever the two lists are in the same order (and
an error, not a silent mismatch, when an image has no prediction). The
segment areas of the ground-truth JSON, which VIPSeg's script uses in the
IoU, are checked against the PNG's pixel counts (its converter writes
them so), and we use the pixel counts.

In both layouts problems are found before any pixel is read, so a long run
does not fail at its end for a missing file.
"""

import collections
import concurrent.futures
import dataclasses
import json
import os
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np

from eval.common import Frame, VPQInputError, read_rgb_png, rgb_to_ids


@dataclasses.dataclass(frozen=True)
class FrameSpec:
  """Where one annotated frame's ground truth and prediction live."""
  name: str
  gt_path: str
  gt_segments: Sequence[Mapping[str, Any]]
  pred_path: str
  pred_segments: Sequence[Mapping[str, Any]]
  check_gt_area: bool = False  # JSON "area" must equal the PNG's counts.


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


def _open_layout(gt_json: str, gt_dir: str, pred_dir: str,
                 pred_json: Optional[str], gt_keys: Sequence[str]):
  """(gt, pred, pan_pred folder, prediction JSON path) of either layout,
  the folders, the JSONs' top-level keys and the categories checked."""
  if not os.path.isdir(gt_dir):
    raise FileNotFoundError(f"ground-truth PNG folder not found: {gt_dir}")
  pred_png_dir = os.path.join(pred_dir, "pan_pred")
  if not os.path.isdir(pred_png_dir):
    raise FileNotFoundError(f"prediction PNG folder not found: {pred_png_dir}")
  pred_json = pred_json or os.path.join(pred_dir, "pred.json")
  gt = _load_json(gt_json, "ground-truth")
  _require(gt, gt_keys, gt_json)
  pred = _load_json(pred_json, "prediction")
  _require(pred, ("annotations",), pred_json)
  for i, cat in enumerate(gt["categories"]):
    _require(cat, ("id", "isthing"), f"{gt_json}: categories[{i}]")
  return gt, pred, pred_png_dir, pred_json


def plan_videos(gt_json: str, gt_dir: str, pred_dir: str,
                pred_json: Optional[str] = None) -> Plan:
  """Validates the layout and lists every video's frames, without decoding."""
  gt, pred, pred_png_dir, pred_json = _open_layout(
      gt_json, gt_dir, pred_dir, pred_json, ("annotations", "categories"))
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


def _video_list(obj: Mapping, key: str, path: str) -> dict:
  """{video_id: entry} of a VIPSeg JSON's `key` list, checked."""
  out = {}
  if not isinstance(obj[key], list):
    raise VPQInputError(f"{path}: {key!r} must be a list")
  for i, entry in enumerate(obj[key]):
    where = f"{path}: {key}[{i}]"
    _require(entry, ("video_id",), where)
    vid = str(entry["video_id"])
    if vid in out:
      raise VPQInputError(f"{where}: video {vid} appears twice")
    out[vid] = entry
  return out


def _frame_annotations(video_entry: Mapping, path: str, where: str,
                       keys: Sequence[str]) -> dict:
  """{image_id: annotation} of one VIPSeg video entry, checked."""
  _require(video_entry, ("annotations",), where)
  out = {}
  for i, ann in enumerate(video_entry["annotations"]):
    _require(ann, keys, f"{where}.annotations[{i}]")
    name = str(ann["image_id"])
    if name in out:
      raise VPQInputError(f"{path}: image {name} of video "
                          f"{video_entry['video_id']} appears twice")
    out[name] = ann
  return out


def plan_vipseg(gt_json: str, gt_dir: str, pred_dir: str,
                pred_json: Optional[str] = None) -> Plan:
  """Validates the VIPSeg layout and lists every video's frames.

  Args:
    gt_json: `panoptic_gt_VIPSeg_val.json` (or any split).
    gt_dir: `panomasksRGB`, holding `<video_id>/<file_name>`.
    pred_dir: holds `pred.json` and `pan_pred/<video_id>/<file_name>`.
    pred_json: defaults to `pred_dir/pred.json`.

  Returns:
    The plan; frames named `<video_id>/<image_id>`.
  """
  gt, pred, pred_png_dir, pred_json = _open_layout(
      gt_json, gt_dir, pred_dir, pred_json,
      ("videos", "annotations", "categories"))

  gt_videos = _video_list(gt, "videos", gt_json)
  gt_anns = _video_list(gt, "annotations", gt_json)
  pred_anns = _video_list(pred, "annotations", pred_json)
  videos = []
  for vid, video in gt_videos.items():
    where = f"{gt_json}: video {vid}"
    _require(video, ("images",), where)
    if vid not in gt_anns:
      raise VPQInputError(f"{where} has no entry in 'annotations'")
    if vid not in pred_anns:
      raise VPQInputError(f"{pred_json}: no prediction for video {vid}")
    gt_frames = _frame_annotations(
        gt_anns[vid], gt_json, f"{gt_json}: annotations of video {vid}",
        ("image_id", "segments_info"))
    pred_frames = _frame_annotations(
        pred_anns[vid], pred_json, f"{pred_json}: annotations of video {vid}",
        ("image_id", "segments_info"))
    frames = []
    for i, image in enumerate(video["images"]):
      _require(image, ("id", "file_name"), f"{where}: images[{i}]")
      name = str(image["id"])
      if name not in gt_frames:
        raise VPQInputError(f"{gt_json}: image {name} of video {vid} has "
                            "no annotation")
      if name not in pred_frames:
        raise VPQInputError(f"{pred_json}: no prediction for image {name} "
                            f"of video {vid}")
      for j, seg in enumerate(gt_frames[name]["segments_info"]):
        _require(seg, ("id", "category_id", "area"),
                 f"{gt_json}: image {name} of video {vid}, "
                 f"segments_info[{j}]")
      gt_path = os.path.join(gt_dir, vid, image["file_name"])
      if not os.path.isfile(gt_path):
        raise FileNotFoundError(
            f"ground-truth PNG of image {name} not found: {gt_path}")
      pred_path = os.path.join(pred_png_dir, vid, image["file_name"])
      if not os.path.isfile(pred_path):
        raise FileNotFoundError(
            f"predicted PNG of image {name} not found: {pred_path}")
      frames.append(FrameSpec(
          f"{vid}/{name}", gt_path, gt_frames[name]["segments_info"],
          pred_path, pred_frames[name]["segments_info"], check_gt_area=True))
    if frames:
      videos.append(frames)
  return Plan(list(gt["categories"]), videos)


def _check_areas(spec: FrameSpec, gt: np.ndarray):
  """The JSON areas of `spec`'s ground truth against the PNG's counts."""
  ids, counts = np.unique(rgb_to_ids(gt), return_counts=True)
  pixels = dict(zip(ids.tolist(), counts.tolist()))
  for seg in spec.gt_segments:
    if int(seg["area"]) != pixels.get(int(seg["id"]), 0):
      raise VPQInputError(
          f"{spec.gt_path}: segment {seg['id']} has area {seg['area']} in "
          f"the JSON but {pixels.get(int(seg['id']), 0)} pixels in the PNG "
          "(VIPSeg's script would use the JSON's; regenerate the JSON)")


def read_id_png(path: str) -> np.ndarray:
  """Reads an RGB PNG of segment ids as (H, W, 3) uint8."""
  return read_rgb_png(path, "segment ids, id = R + 256 G + 65536 B")


def load_frame(spec: FrameSpec) -> Frame:
  """Decodes one frame's PNGs (and checks its JSON areas if asked)."""
  gt = read_id_png(spec.gt_path)
  if spec.check_gt_area:
    _check_areas(spec, gt)
  return Frame(spec.name, gt, spec.gt_segments,
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
      queue.append([self._pool.submit(load_frame, s) for s in video])
      if len(queue) > prefetch:
        yield [f.result() for f in queue.popleft()]
    while queue:
      yield [f.result() for f in queue.popleft()]
