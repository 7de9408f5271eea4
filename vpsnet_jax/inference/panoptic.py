"""Panoptic fusion on the host: from the model's panoptic map to segments.

The model (`VPSNet.infer`) gives, per frame, the argmax of the panoptic
logits (stuff channel s < S, or S + detection index d, after the mask
removal) and the semantic argmax. As the release's
`get_unified_pan_result` does, `resolve` then checks every instance against
the semantic head: when the majority semantic class inside an instance's
region is not its class but a stuff class covering at least half of the
region, the region becomes that stuff class. After the tracker has given
the surviving instances ids, `segments` builds the frame's segments: stuff
segments smaller than the area limit become void, every instance is the
segment of its (category, track id).

Segment ids (RGB PNG ids of the evaluation layout) are
`(category_id + 1) * SEGMENT_DIVISOR + track_id`, track id 0 for stuff, so
an object keeps its id over a video.
"""

import dataclasses
from typing import Dict, List, Sequence, Tuple

import numpy as np

SEGMENT_DIVISOR = 10000
VOID = -1


@dataclasses.dataclass
class Resolved:
  """A frame after `resolve`.

  channels: (H, W) int32 semantic channel of every pixel (0..K-1).
  instance_map: (H, W) int32 detection index owning each pixel, -1 for
    stuff pixels (instances relabelled as stuff included).
  """
  channels: np.ndarray
  instance_map: np.ndarray


def resolve(panoptic: np.ndarray, semantic: np.ndarray, classes: np.ndarray,
            stuff_channels: Sequence[int], thing_channels: Sequence[int],
            majority_check: bool = True) -> Resolved:
  """Semantic channels and instance ownership of every pixel.

  Args:
    panoptic: (H, W) int, stuff channel index s < S or S + detection index.
    semantic: (H, W) int semantic argmax (channels 0..K-1).
    classes: (D,) int 0-based thing class of every detection.
    stuff_channels: the S semantic channels of the stuff classes.
    thing_channels: semantic channel of each thing class.
    majority_check: relabel instances whose region is mostly (>= 50 %) one
      other stuff class (the release's rule).

  Returns:
    `Resolved`.
  """
  panoptic = np.asarray(panoptic, np.int64)
  semantic = np.asarray(semantic, np.int64)
  stuff = np.asarray(stuff_channels, np.int64)
  things = np.asarray(thing_channels, np.int64)
  classes = np.asarray(classes, np.int64)
  s, d = len(stuff), len(classes)
  k = int(max(stuff.max(initial=-1), things.max(initial=-1))) + 1
  if panoptic.max(initial=0) >= s + d:
    raise ValueError(f"panoptic map has channel {panoptic.max()}, only "
                     f"{s} stuff + {d} detections")
  inst = np.where(panoptic >= s, panoptic - s, -1)
  own = things[classes] if d else np.zeros((0,), np.int64)
  channel_of_det = own.copy()
  if majority_check and d:
    sel = inst >= 0
    counts = np.bincount(inst[sel] * k + semantic[sel],
                         minlength=d * k).reshape(d, k)
    total = counts.sum(axis=1)
    major = counts.argmax(axis=1)
    is_stuff = np.zeros(k, bool)
    is_stuff[stuff] = True
    relabel = ((total > 0) & (major != own) & is_stuff[major] &
               (2 * counts[np.arange(d), major] >= total))
    channel_of_det = np.where(relabel, major, own)
  else:
    relabel = np.zeros(d, bool)
  channels = np.where(inst >= 0, channel_of_det[np.maximum(inst, 0)]
                      if d else 0, stuff[np.clip(panoptic, 0, s - 1)])
  keep = inst >= 0
  if d:
    keep &= ~relabel[np.maximum(inst, 0)]
  instance_map = np.where(keep, inst, -1)
  return Resolved(channels.astype(np.int32), instance_map.astype(np.int32))


def segment_id(category_id: int, track_id: int) -> int:
  if not 0 <= track_id < SEGMENT_DIVISOR:
    raise ValueError(f"track id {track_id} out of range "
                     f"[0, {SEGMENT_DIVISOR})")
  return (int(category_id) + 1) * SEGMENT_DIVISOR + int(track_id)


def segments(resolved: Resolved, track_ids: np.ndarray,
             channel_categories: Sequence[int],
             thing_channels: Sequence[int], stuff_area_limit: int = 0
             ) -> Tuple[np.ndarray, List[Dict]]:
  """The frame's segment id map and segment table.

  Args:
    resolved: `resolve`'s output.
    track_ids: (D,) int track id of every detection (those owning pixels
      must be >= 1).
    channel_categories: dataset category id of every semantic channel.
    thing_channels: semantic channels of the thing classes.
    stuff_area_limit: stuff segments with fewer pixels become void.

  Returns:
    ids: (H, W) int32 segment ids, 0 = void.
    table: [{"id", "category_id", "isthing", "track_id", "area"}] sorted
      by id.
  """
  channels = resolved.channels.astype(np.int64)
  inst = resolved.instance_map.astype(np.int64)
  cats = np.asarray(channel_categories, np.int64)
  track_ids = np.asarray(track_ids, np.int64)
  is_thing = np.zeros(len(cats), bool)
  is_thing[list(thing_channels)] = True
  ids = np.zeros(channels.shape, np.int64)
  stuff_px = inst < 0
  area = np.bincount(channels[stuff_px], minlength=len(cats))
  for ch in np.flatnonzero(area):
    if is_thing[ch]:
      raise ValueError(f"stuff pixels carry thing channel {ch}")
    if area[ch] >= stuff_area_limit:
      ids[stuff_px & (channels == ch)] = segment_id(cats[ch], 0)
  present = np.unique(inst[inst >= 0])
  for det in present:
    tid = int(track_ids[det])
    if tid < 1:
      raise ValueError(f"detection {det} owns pixels but has track id {tid}")
    mask = inst == det
    ids[mask] = segment_id(cats[channels[mask][0]], tid)
  table = []
  values, counts = np.unique(ids[ids > 0], return_counts=True)
  for value, count in zip(values, counts):
    category, track = divmod(int(value), SEGMENT_DIVISOR)
    table.append({"id": int(value), "category_id": category - 1,
                  "isthing": bool(track), "track_id": track,
                  "area": int(count)})
  return ids.astype(np.int32), table


def panoptic_values(ids: np.ndarray, table: Sequence[Dict],
                    id_to_train_id: Dict[int, int]) -> np.ndarray:
  """Segment ids -> the project's panoptic encoding (train_id * 1000 +
  track id, -1 void) for `data_pipeline.visualize.colorize`."""
  out = np.full(ids.shape, -1, np.int64)
  for seg in table:
    out[ids == seg["id"]] = (id_to_train_id[seg["category_id"]] * 1000 +
                             seg["track_id"] % 1000)
  return out
