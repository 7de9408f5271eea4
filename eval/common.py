"""Types shared by the evaluator's array and folder interfaces."""

import dataclasses
from typing import Any, Mapping, Sequence

import io

import numpy as np
from PIL import Image


def rgb_to_ids(rgb: np.ndarray) -> np.ndarray:
  """(H, W, 3) uint8 RGB-encoded ids -> (H, W) int64,
  id = R + 256 G + 65536 B."""
  rgb = rgb.astype(np.int64)
  return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def ids_to_rgb(ids: np.ndarray) -> np.ndarray:
  """(H, W) ids (< 2^24) -> (H, W, 3) uint8, the inverse of `rgb_to_ids`."""
  ids = np.asarray(ids, np.int64)
  return np.stack([ids % 256, ids // 256 % 256, ids // 65536],
                  axis=-1).astype(np.uint8)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOUR_TYPES = {0: "greyscale", 2: "RGB", 3: "palette", 4: "greyscale + alpha",
                 6: "RGBA"}


def read_rgb_png(path: str, encoding: str) -> np.ndarray:
  """Decodes an 8-bit RGB PNG (colour type 2) as (H, W, 3) uint8.

  The header is checked first, so that a palette, grey or 16-bit PNG is an
  error (naming `encoding`, what the channels mean) rather than silently
  converted. PIL decodes: libspng (PyPI `pyspng`) is 2.2x faster on one
  thread but holds the GIL, so on the evaluators' decoding threads it was
  slower end to end (measured in benchmarks/stq_eval.py: 29.4 s against
  23.3-27.0 s with PIL).

  Raises:
    VPQInputError: not a PNG, not 8-bit RGB, or corrupt.
  """
  with open(path, "rb") as f:
    data = f.read()
  if len(data) < 26 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
    raise VPQInputError(f"{path}: unreadable PNG: no PNG signature / header")
  depth, colour = data[24], data[25]
  if colour != 2 or depth != 8:
    raise VPQInputError(
        f"{path}: expected an RGB PNG ({encoding}) of 8 bits per channel, "
        f"got {_COLOUR_TYPES.get(colour, f'colour type {colour}')} at "
        f"{depth} bits")
  try:
    with Image.open(io.BytesIO(data)) as img:
      return np.asarray(img)
  except Exception as e:  # PIL raises many types for corrupt files.
    raise VPQInputError(f"{path}: unreadable PNG: {e}") from e


class VPQInputError(ValueError):
  """Malformed ground truth or predictions; the message names file and
  segment."""


# Segment ids are RGB-encoded in PNGs (id = R + 256 G + 65536 B).
ID_LIMIT = 1 << 24


def segment_table(segments: Sequence[Mapping[str, Any]],
                  category_pos: Mapping[Any, int], *, pred: bool, where: str,
                  image: str):
  """Validated ids (S,) int64, category positions (S,) int64 and crowd
  flags (S,) bool of one frame's segment table (predictions are never
  crowd), in the table's order.

  Raises:
    VPQInputError: a malformed segment, an id outside [1, ID_LIMIT), an
      unknown category or an id listed twice, naming `where` and `image`.
  """
  what = "prediction" if pred else "ground truth"
  ids, cats, crowd = [], [], []
  for seg in segments:
    try:
      sid, cid = int(seg["id"]), seg["category_id"]
    except (KeyError, TypeError, ValueError) as e:
      raise VPQInputError(
          f"{where}: malformed {what} segment {seg} of image "
          f"{image}: needs 'id' and 'category_id'") from e
    if not 0 < sid < ID_LIMIT:
      raise VPQInputError(f"{where}: {what} segment id {sid} of image "
                          f"{image} is outside [1, {ID_LIMIT}) "
                          "(0 is void; ids are RGB-encoded)")
    if cid not in category_pos:
      raise VPQInputError(f"{where}: {what} segment {sid} of image "
                          f"{image} has unknown category_id {cid}")
    ids.append(sid)
    cats.append(category_pos[cid])
    crowd.append(bool(seg.get("iscrowd", 0)) and not pred)
  ids = np.asarray(ids, np.int64)
  if len(np.unique(ids)) != len(ids):
    dup = sorted(set(i for i in ids.tolist() if ids.tolist().count(i) > 1))
    raise VPQInputError(f"{where}: {what} segment ids {dup} appear twice in "
                        f"the segment table of image {image}")
  return ids, np.asarray(cats, np.int64), np.asarray(crowd, bool)


@dataclasses.dataclass(frozen=True)
class Frame:
  """One annotated frame of a video, with its prediction.

  Attributes:
    name: the image id, used in error messages.
    gt: (H, W) integer segment ids or (H, W, 3) uint8 RGB-encoded ids
      (id = R + 256 G + 65536 B); id 0 is void.
    gt_segments: the ground-truth segment table, mappings with `id`,
      `category_id` and optionally `iscrowd` (default 0).
    pred: predicted segment ids in the same form and size as `gt`.
    pred_segments: mappings with `id` and `category_id`.
    gt_source: where `gt` came from (a file), for error messages.
    pred_source: where `pred` came from, for error messages.
  """
  name: str
  gt: np.ndarray
  gt_segments: Sequence[Mapping[str, Any]]
  pred: np.ndarray
  pred_segments: Sequence[Mapping[str, Any]]
  gt_source: str = ""
  pred_source: str = ""
