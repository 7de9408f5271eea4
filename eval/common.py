"""Types shared by the evaluator's array and folder interfaces."""

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np


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


class VPQInputError(ValueError):
  """Malformed ground truth or predictions; the message names file and
  segment."""


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
