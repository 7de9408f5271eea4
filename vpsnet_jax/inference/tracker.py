"""Online trackers (host side, NumPy): VPSNet's track head and the paper's
baselines (Table 4).

Every tracker sees one video's frames in order and gives each of a frame's
detections a track id (an int >= 1, unique within the video and class for
the whole video); `reset()` starts a new video. A frame is a `Detections`:
the valid panoptic detections of the model (decreasing class
probability), and for the mask-based cues the frame's instance map (which
detection owns each pixel after the panoptic fusion) and the flow to the
previous frame.

Trackers own their state: `assign` starts from `Detections.owned()`, its
own writable copy of the frame, so the caller's arrays (read-only NumPy
views of JAX device arrays, Python lists, buffers it reuses) are never
kept, aliased or written to.

  TrackHeadTracker  the release's MaskTrack matching: keeps the embedding,
                    box and class of every object seen so far; a
                    detection's score over [new, object 1..m] is
                    a * log_softmax(affinity) + s * log(probability)
                    + i * box IoU + c * same class (+ m * mask IoU), with
                    IoU 0 and "same class" 1 for the "new" column; argmax;
                    several detections on one object: the best keeps it,
                    the others become new objects.
  ClsSortTracker    Cls-Sort: the k-th most probable detection of a class
                    is object k of that class (no appearance, no motion).
  IoUMatchTracker   IoU-Match: each mask takes the id of the previous
                    frame's mask of its class it overlaps most after the
                    previous frame is warped by the flow (greedy by IoU,
                    above a threshold).
  NewIdTracker      no tracking: new ids in every frame (Base / Fuse).
"""

import dataclasses
from typing import Optional

import cv2
import numpy as np

from vpsnet_jax import experiment


@dataclasses.dataclass
class Detections:
  """One frame's detections (n of them, decreasing class probability).

  boxes: (n, 4) float (x1, y1, x2, y2); scores: (n,) class probability;
  classes: (n,) int 0-based thing class; embeddings: (n, E) track head
  embeddings (E may be 0); instance_map: optional (H, W) int, index of the
  detection owning each pixel in the fused panoptic map, -1 elsewhere;
  flow: optional (H, W, 2) float (dx, dy) from this frame to the previous
  one (this(x) ~ previous(x + flow(x))). Any array-likes (read-only views,
  nested lists) will do: the trackers work on `owned()` copies.
  """
  boxes: np.ndarray
  scores: np.ndarray
  classes: np.ndarray
  embeddings: np.ndarray
  instance_map: Optional[np.ndarray] = None
  flow: Optional[np.ndarray] = None

  def __len__(self):
    return len(self.scores)

  def owned(self) -> "Detections":
    """A new `Detections` owning writable copies of every field.

    Accepts arrays of any dtype, read-only arrays (e.g. `np.asarray` of a
    JAX array) and nested Python lists. The copies have normalised dtypes
    and shapes: boxes (n, 4) float64, scores (n,) float64, classes (n,)
    int64, embeddings (n, E) float64 (E may be 0), instance_map (H, W)
    int64 and flow (H, W, 2) float32 (what `warp_labels` needs) when given.

    Returns:
      The normalised copy; `self` is left as it is.

    Raises:
      ValueError: a field has the wrong shape, or the fields disagree on
        the number of detections.
    """
    scores = _owned_vector("scores", self.scores, np.float64)
    n = len(scores)
    classes = _owned_vector("classes", self.classes, np.int64)
    boxes = np.array(self.boxes, np.float64, copy=True)
    if boxes.size == 0:
      boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
      raise ValueError(f"boxes must be (n, 4), got shape {boxes.shape}")
    embeddings = np.array(self.embeddings, np.float64, copy=True)
    if embeddings.ndim == 1 and embeddings.size == 0:
      embeddings = embeddings.reshape(0, 0)
    if embeddings.ndim != 2:
      raise ValueError("embeddings must be (n, E), got shape "
                       f"{embeddings.shape}")
    for name, value in (("boxes", boxes), ("classes", classes),
                        ("embeddings", embeddings)):
      if len(value) != n:
        raise ValueError(f"{name} has {len(value)} rows for {n} detections "
                         "(scores)")
    instance_map = flow = None
    if self.instance_map is not None:
      instance_map = np.array(self.instance_map, np.int64, copy=True)
      if instance_map.ndim != 2:
        raise ValueError("instance_map must be (H, W), got shape "
                         f"{instance_map.shape}")
    if self.flow is not None:
      flow = np.array(self.flow, np.float32, copy=True)
      if flow.ndim != 3 or flow.shape[2] != 2 or (
          instance_map is not None and flow.shape[:2] != instance_map.shape):
        raise ValueError(f"flow must be (H, W, 2), got shape {flow.shape}"
                         + ("" if instance_map is None else
                            f" for instance_map {instance_map.shape}"))
    return Detections(boxes, scores, classes, embeddings, instance_map, flow)


def _owned_vector(name: str, value, dtype) -> np.ndarray:
  """A writable (n,) copy of `value` as `dtype` (`Detections.owned`)."""
  out = np.array(value, dtype, copy=True)
  if out.size == 0:
    out = out.reshape(0)
  if out.ndim != 1:
    raise ValueError(f"{name} must be (n,), got shape {out.shape}")
  return out


def box_iou(a: np.ndarray, b: np.ndarray, offset: float = 1.0) -> np.ndarray:
  """(n, 4), (m, 4) -> (n, m) IoU (offset 1: mmdetection v1 widths)."""
  a = np.asarray(a, np.float64).reshape(-1, 4)
  b = np.asarray(b, np.float64).reshape(-1, 4)
  area = lambda x: ((x[:, 2] - x[:, 0] + offset) *
                    (x[:, 3] - x[:, 1] + offset))
  lt = np.maximum(a[:, None, :2], b[None, :, :2])
  rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
  wh = np.clip(rb - lt + offset, 0, None)
  inter = wh[..., 0] * wh[..., 1]
  union = area(a)[:, None] + area(b)[None, :] - inter
  return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def warp_labels(labels: np.ndarray, flow: np.ndarray) -> np.ndarray:
  """Backward-warps an int label map of the previous frame into this one:
  out(x) = labels(x + flow(x)) (nearest), -1 outside the previous frame."""
  h, w = labels.shape
  if flow.shape != (h, w, 2):
    raise ValueError(f"flow {flow.shape} does not match labels {labels.shape}")
  ys, xs = np.mgrid[:h, :w].astype(np.float32)
  return cv2.remap(labels.astype(np.float32), xs + flow[..., 0],
                   ys + flow[..., 1], cv2.INTER_NEAREST,
                   borderMode=cv2.BORDER_CONSTANT,
                   borderValue=-1).astype(np.int64)


def label_iou(current: np.ndarray, n: int, previous: np.ndarray,
              m: int) -> np.ndarray:
  """(n, m) IoU between the segments 0..n-1 of `current` and 0..m-1 of
  `previous` (int label maps of one size, -1 = no segment)."""
  cur = current.reshape(-1)
  prev = previous.reshape(-1)
  both = (cur >= 0) & (prev >= 0)
  inter = np.bincount(cur[both] * m + prev[both],
                      minlength=n * m).reshape(n, m).astype(np.float64)
  area_c = np.bincount(cur[cur >= 0], minlength=n)[:n].astype(np.float64)
  area_p = np.bincount(prev[prev >= 0], minlength=m)[:m].astype(np.float64)
  union = area_c[:, None] + area_p[None, :] - inter
  return np.where(union > 0, inter / np.maximum(union, 1.0), 0.0)


def _log_softmax(x: np.ndarray) -> np.ndarray:
  x = x - x.max(axis=1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


class TrackHeadTracker:
  """VPSNet's online matching with the track head (module docstring).

  Attributes follow `config.tracking`: affinity_weight, score_weight,
  iou_weight, class_weight, mask_iou_weight; `cosine` as the model's
  `track_cosine`; `offset` the box convention of the IoU.
  """

  def __init__(self, affinity_weight: float = 1.0, score_weight: float = 1.0,
               iou_weight: float = 2.0, class_weight: float = 10.0,
               mask_iou_weight: float = 0.0, cosine: bool = False,
               offset: float = 1.0):
    self.weights = (affinity_weight, score_weight, iou_weight, class_weight,
                    mask_iou_weight)
    self.cosine = cosine
    self.offset = offset
    self.reset()

  def reset(self) -> None:
    self.embeddings = None  # (m, E) of every object seen in this video
    self.boxes = np.zeros((0, 4))
    self.classes = np.zeros((0,), np.int64)
    self.previous_objects = None  # (H, W) object index map, last frame

  def _add(self, det: Detections, i: int) -> int:
    self.embeddings = (det.embeddings[i:i + 1] if self.embeddings is None
                       else np.concatenate([self.embeddings,
                                            det.embeddings[i:i + 1]]))
    self.boxes = np.concatenate([self.boxes, det.boxes[i:i + 1]])
    self.classes = np.concatenate([self.classes, det.classes[i:i + 1]])
    return len(self.classes) - 1

  def scores(self, det: Detections) -> np.ndarray:
    """(n, m + 1) match scores against [new, objects]."""
    a, s, i, c, mw = self.weights
    emb = np.asarray(det.embeddings, np.float64)
    mem = np.asarray(self.embeddings, np.float64)
    if self.cosine:
      emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
      mem = mem / np.maximum(np.linalg.norm(mem, axis=1, keepdims=True), 1e-12)
    n = len(det)
    affinity = np.concatenate([np.zeros((n, 1)), emb @ mem.T], axis=1)
    ious = np.concatenate([np.zeros((n, 1)), box_iou(det.boxes, self.boxes,
                                                     self.offset)], axis=1)
    same = np.concatenate([np.ones((n, 1)), (
        det.classes[:, None] == self.classes[None, :]).astype(np.float64)],
                          axis=1)
    prob = np.log(np.maximum(np.asarray(det.scores, np.float64), 1e-12))
    total = (a * _log_softmax(affinity) + s * prob[:, None] + i * ious +
             c * same)
    if mw:
      total[:, 1:] += mw * self._mask_iou(det)
    return total

  def _mask_iou(self, det: Detections) -> np.ndarray:
    m = len(self.classes)
    if (self.previous_objects is None or det.instance_map is None):
      return np.zeros((len(det), m))
    prev = self.previous_objects
    if det.flow is not None:
      prev = warp_labels(prev, det.flow)
    return label_iou(det.instance_map, len(det), prev, m)

  def assign(self, det: Detections) -> np.ndarray:
    """Track ids (>= 1) of the detections; updates the memory."""
    det = det.owned()
    n = len(det)
    if not n:  # Nothing to match (and a list gives no E for 0 rows).
      ids = np.zeros((0,), np.int64)
    elif self.embeddings is None or not len(self.classes):
      ids = np.array([self._add(det, k) for k in range(n)], np.int64)
    else:
      total = self.scores(det)
      best = np.argmax(total, axis=1)
      likelihood = total[np.arange(n), best]
      ids = -np.ones(n, np.int64)
      m = len(self.classes)
      best_score = np.full(m, -np.inf)
      best_det = -np.ones(m, np.int64)
      for k in range(n):
        if best[k] == 0:
          ids[k] = self._add(det, k)
          continue
        obj = best[k] - 1
        if likelihood[k] > best_score[obj]:
          if best_det[obj] >= 0:
            ids[best_det[obj]] = -1
          ids[k] = obj
          best_score[obj] = likelihood[k]
          best_det[obj] = k
          self.embeddings[obj] = det.embeddings[k]
          self.boxes[obj] = det.boxes[k]
      for k in np.flatnonzero(ids < 0):
        ids[k] = self._add(det, k)
    if det.instance_map is not None:
      objects = np.where(det.instance_map >= 0,
                         ids[np.maximum(det.instance_map, 0)] if n else -1,
                         -1)
      self.previous_objects = objects
    return ids + 1


class ClsSortTracker:
  """Cls-Sort: id = rank of the detection's probability within its class."""

  def reset(self) -> None:
    pass

  def assign(self, det: Detections) -> np.ndarray:
    """Ids: rank (from 1) of each detection's probability in its class."""
    det = det.owned()
    ids = np.zeros(len(det), np.int64)
    for c in np.unique(det.classes):
      members = np.flatnonzero(det.classes == c)
      order = members[np.argsort(-det.scores[members],
                                 kind="stable")]
      ids[order] = np.arange(1, len(order) + 1)
    return ids


class IoUMatchTracker:
  """IoU-Match: greedy matching of this frame's masks to the previous
  frame's masks of the same class warped by the flow; IoU at least
  `threshold`; unmatched masks get new ids."""

  def __init__(self, threshold: float = 0.5):
    self.threshold = threshold
    self.reset()

  def reset(self) -> None:
    self.previous = None  # (labels (H, W) of previous ids, {id: class})
    self.next_id = 1

  def assign(self, det: Detections) -> np.ndarray:
    """Track ids (>= 1) of the detections; remembers this frame's masks."""
    if det.instance_map is None:
      raise ValueError("IoUMatchTracker needs the frame's instance map")
    det = det.owned()
    n = len(det)
    ids = np.zeros(n, np.int64)
    if self.previous is not None and n:
      labels, classes = self.previous
      prev_ids = np.array(sorted(classes), np.int64)
      index = -np.ones(labels.max() + 2 if labels.size else 1, np.int64)
      index[prev_ids] = np.arange(len(prev_ids))
      dense = np.where(labels > 0, index[np.maximum(labels, 0)], -1)
      if det.flow is not None:
        dense = warp_labels(dense, det.flow)
      iou = label_iou(det.instance_map, n, dense, len(prev_ids))
      same = det.classes[:, None] == np.array(
          [classes[i] for i in prev_ids], np.int64)[None, :]
      iou = np.where(same, iou, 0.0)
      taken = set()
      for flat in np.argsort(-iou, axis=None, kind="stable"):
        k, j = divmod(int(flat), len(prev_ids))
        if iou[k, j] < self.threshold or iou[k, j] <= 0:
          break
        if ids[k] or j in taken:
          continue
        ids[k] = prev_ids[j]
        taken.add(j)
    for k in np.flatnonzero(ids == 0):
      ids[k] = self.next_id
      self.next_id += 1
    self.next_id = max(self.next_id, int(ids.max(initial=0)) + 1)
    labels = np.where(det.instance_map >= 0,
                      ids[np.maximum(det.instance_map, 0)] if n else 0, 0)
    self.previous = (labels, {int(i): int(c) for i, c in zip(ids, det.classes)
                              if np.any(labels == i)})
    return ids


class NewIdTracker:
  """No tracking: every detection of every frame gets a new id."""

  def __init__(self):
    self.reset()

  def reset(self) -> None:
    self.next_id = 1

  def assign(self, det: Detections) -> np.ndarray:
    """Fresh ids for the detections."""
    det = det.owned()
    ids = np.arange(self.next_id, self.next_id + len(det), dtype=np.int64)
    self.next_id += len(det)
    return ids


def _track_head(config, offset):
  t = config.tracking
  return TrackHeadTracker(t.affinity_weight, t.score_weight, t.iou_weight,
                          t.class_weight, t.mask_iou_weight,
                          cosine=config.model.track_cosine, offset=offset)


# config.tracker -> (factory(config, offset), needs the track head).
TRACKERS = {
    "track_head": (_track_head, True),
    "cls_sort": (lambda config, offset: ClsSortTracker(), False),
    "iou_match": (lambda config, offset: IoUMatchTracker(
        config.tracking.iou_match_threshold), False),
    "none": (lambda config, offset: NewIdTracker(), False),
}


def create(config, offset: float = 1.0):
  """The tracker named by config.tracker with config.tracking's weights."""
  experiment.check_choice("tracker", config.tracker, TRACKERS)
  return TRACKERS[config.tracker][0](config, offset)
