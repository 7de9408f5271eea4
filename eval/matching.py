"""Tube matching of one window and the per-class statistics (host, NumPy).

A window's confusion matrix (from `eval.confusion`, summed over the window's
frames) holds every count the VPQ definition needs, so matching never touches
pixels. The rules are those of the paper's reference evaluation (panopticapi's
PQ applied to tubes):

* a predicted and a ground-truth tube match when they have the same category,
  the ground truth is not crowd and IoU > 0.5, with
  union = |pred| + |gt| - |pred & gt| - |pred & void|;
* an unmatched non-crowd ground-truth tube is a false negative;
* an unmatched predicted tube is a false positive unless more than half of it
  lies on void plus the crowd ground-truth tube of its category. When a window
  holds several crowd tubes of one category, the reference keeps the last one
  in order of first appearance (frames in order, then the JSON order of the
  frame), and so do we;
* a tube's category and crowd flag are those of its first frame in the window;
* with a size threshold (the VIPER protocol, `eval.protocols`), a
  ground-truth tube with fewer pixels over the window is skipped: neither
  matched nor a false negative, while predictions on it are judged as any
  other unmatched prediction; a small crowd tube still excuses predictions.
"""

import dataclasses
from typing import Mapping, Sequence

import numpy as np


@dataclasses.dataclass
class ClassStats:
  """Accumulated per-class counts; arrays are indexed by category position."""
  iou: np.ndarray  # (C,) float64, sum of matched IoUs.
  tp: np.ndarray  # (C,) int64
  fp: np.ndarray  # (C,) int64
  fn: np.ndarray  # (C,) int64

  @classmethod
  def zeros(cls, num_classes: int) -> "ClassStats":
    return cls(np.zeros(num_classes, np.float64),
               *(np.zeros(num_classes, np.int64) for _ in range(3)))

  def __iadd__(self, other: "ClassStats") -> "ClassStats":
    self.iou += other.iou
    self.tp += other.tp
    self.fp += other.fp
    self.fn += other.fn
    return self


@dataclasses.dataclass(frozen=True)
class FrameAttributes:
  """Per-frame segment attributes of one video, as dense per-video arrays.

  F frames, G ground-truth and P predicted segments of the video. Category
  values are category *positions* (0..C-1), -1 where the segment is absent
  from the frame's segment table.
  """
  gt_category: np.ndarray  # (F, G) int64
  gt_crowd: np.ndarray  # (F, G) bool
  gt_order: np.ndarray  # (F, G) int64, position in the frame's table.
  pred_category: np.ndarray  # (F, P) int64


def _first_in_window(values: np.ndarray, present: np.ndarray) -> np.ndarray:
  """values[f0(s), s] with f0(s) the first frame where segment s is present.

  Args:
    values: (n, S) per-frame values of a window.
    present: (n, S) bool.

  Returns:
    (S,) values; for segments absent from every frame, values[0].
  """
  first = np.argmax(present, axis=0)
  return values[first, np.arange(values.shape[1])]


def match_window(confusion: np.ndarray, attrs: FrameAttributes, start: int,
                 stop: int, num_classes: int,
                 min_gt_area: int = 0) -> ClassStats:
  """Matches the tubes of frames [start, stop) of a video.

  Args:
    confusion: (G + 1, P + 1) int64, pixels per (gt, pred) dense index pair
      summed over the window; index 0 is void.
    attrs: the video's per-frame segment attributes.
    start, stop: the window's frames.
    num_classes: C, the number of categories.
    min_gt_area: ground-truth tubes of fewer pixels over the window are
      skipped (0: none).

  Returns:
    The window's per-class statistics.
  """
  stats = ClassStats.zeros(num_classes)
  gt_present_f = attrs.gt_category[start:stop] >= 0
  pred_present_f = attrs.pred_category[start:stop] >= 0
  gt_present = gt_present_f.any(axis=0)
  pred_present = pred_present_f.any(axis=0)
  gt_cat = _first_in_window(attrs.gt_category[start:stop], gt_present_f)
  gt_crowd = _first_in_window(attrs.gt_crowd[start:stop], gt_present_f)
  pred_cat = _first_in_window(attrs.pred_category[start:stop], pred_present_f)

  inter = confusion[1:, 1:]
  gt_area = confusion[1:].sum(axis=1)
  pred_area = confusion[:, 1:].sum(axis=0)
  pred_void = confusion[0, 1:]

  # The release's VIPER evaluation skips small ground truth first.
  small = gt_area < min_gt_area

  # True positives. IoU > 0.5 makes matches unique in both directions.
  candidate = ((inter > 0) & (gt_cat[:, None] == pred_cat[None, :]) &
               ~gt_crowd[:, None] & ~small[:, None] & gt_present[:, None] &
               pred_present[None, :])
  union = gt_area[:, None] + pred_area[None, :] - inter - pred_void[None, :]
  iou = np.where(candidate, inter / np.maximum(union, 1), 0.0)
  matched = iou > 0.5
  g_idx, p_idx = np.nonzero(matched)
  np.add.at(stats.tp, gt_cat[g_idx], 1)
  np.add.at(stats.iou, gt_cat[g_idx], iou[g_idx, p_idx])
  gt_matched = np.zeros(len(gt_cat), bool)
  gt_matched[g_idx] = True
  pred_matched = np.zeros(len(pred_cat), bool)
  pred_matched[p_idx] = True

  # False negatives: unmatched, non-crowd, not small ground truth.
  fn = gt_present & ~gt_matched & ~gt_crowd & ~small
  np.add.at(stats.fn, gt_cat[fn], 1)

  # The crowd tube of each category: the last one in first-appearance order.
  crowd_of_class = np.full(num_classes, -1, np.int64)
  crowd = np.nonzero(gt_present & gt_crowd)[0]
  if len(crowd):
    first = np.argmax(gt_present_f[:, crowd], axis=0)
    order = attrs.gt_order[start:stop][first, crowd]
    for g in crowd[np.lexsort((order, first))]:
      crowd_of_class[gt_cat[g]] = g

  # False positives, unless mostly on void plus the crowd of their category.
  unmatched = np.nonzero(pred_present & ~pred_matched)[0]
  cats = pred_cat[unmatched]
  ignored = pred_void[unmatched].copy()
  crowd_g = crowd_of_class[cats]
  has_crowd = crowd_g >= 0
  ignored[has_crowd] += inter[crowd_g[has_crowd], unmatched[has_crowd]]
  fp = ignored / pred_area[unmatched] <= 0.5
  np.add.at(stats.fp, cats[fp], 1)
  return stats


def summarize(stats: ClassStats, category_ids: Sequence[int],
              isthing: Sequence[bool],
              excluded: Sequence[int] = ()) -> Mapping:
  """PQ, SQ and RQ per class and averaged (All / Things / Stuff), in percent.

  A class enters the averages only when TP + FP + FN > 0 (as panopticapi)
  and its id is not in `excluded` (its own figures are still reported); a
  group without such a class averages to 0 with `n` = 0.

  Returns:
    {"classes": {id: {"pq", "sq", "rq", "iou", "tp", "fp", "fn"}},
     "all" | "things" | "stuff": {"pq", "sq", "rq", "n"}}.
  """
  tp, fp, fn, iou = stats.tp, stats.fp, stats.fn, stats.iou
  counted = (tp + fp + fn) > 0
  averaged = counted & ~np.isin(np.asarray(category_ids), list(excluded))
  denom = np.where(counted, tp + 0.5 * fp + 0.5 * fn, 1.0)
  pq = np.where(counted, iou / denom, 0.0)
  sq = np.where(tp > 0, iou / np.maximum(tp, 1), 0.0)
  rq = np.where(counted, tp / denom, 0.0)
  out = {"classes": {}}
  for i, cid in enumerate(category_ids):
    out["classes"][str(cid)] = {
        "pq": 100 * float(pq[i]), "sq": 100 * float(sq[i]),
        "rq": 100 * float(rq[i]), "iou": float(iou[i]), "tp": int(tp[i]),
        "fp": int(fp[i]), "fn": int(fn[i])}
  thing = np.asarray(isthing, bool)
  for name, members in (("all", np.ones_like(thing)), ("things", thing),
                        ("stuff", ~thing)):
    sel = members & averaged
    n = int(sel.sum())
    out[name] = {key: 100 * float(val[sel].mean()) if n else 0.0
                 for key, val in (("pq", pq), ("sq", sq), ("rq", rq))}
    out[name]["n"] = n
  return out
