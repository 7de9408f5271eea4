"""A slow, plain NumPy VPQ, written straight from the definition.

Independent of `eval/`: for every window it stacks the frames, counts the
(gt id, pred id) pairs with `np.unique` and matches tubes with Python dicts,
the way the paper's reference evaluation does. Used by the tests (exactness)
and by `benchmarks/vpq_eval.py` (the speed baseline).
"""

import collections

import numpy as np

OFFSET = 1 << 24
VOID = 0


def decode(ids: np.ndarray) -> np.ndarray:
  """(H, W, 3) uint8 RGB-encoded or (H, W) ids -> (H, W) uint64 ids."""
  ids = np.asarray(ids)
  if ids.ndim == 3:
    ids = ids.astype(np.uint64)
    return ids[..., 0] + 256 * ids[..., 1] + 65536 * ids[..., 2]
  return ids.astype(np.uint64)


def window_stats(window, stats, min_gt_area=0):
  """Adds one window's tube statistics to stats[category] = [iou, tp, fp, fn].

  Args:
    window: list of (gt_ids, gt_segments, pred_ids, pred_segments) frames.
    stats: defaultdict(category_id -> [iou, tp, fp, fn]).
    min_gt_area: the VIPER release's SIZE_THR: in the loop over (gt, pred)
      pairs a ground-truth id with fewer pixels over the window is recorded
      as small and skipped before any other check; the false-negative loop
      looks at the crowd flag first, then at smallness.
  """
  gt = np.stack([decode(f[0]) for f in window])
  pred = np.stack([decode(f[2]) for f in window])
  # A tube's attributes come from its first frame in the window (and the dict
  # keeps the order of first appearance).
  gt_segs, pred_segs = {}, {}
  for _, gt_segments, _, pred_segments in window:
    for s in gt_segments:
      gt_segs.setdefault(s["id"], s)
    for s in pred_segments:
      pred_segs.setdefault(s["id"], s)
  labels, counts = np.unique(gt * OFFSET + pred, return_counts=True)
  pairs = {(int(l // OFFSET), int(l % OFFSET)): int(c)
           for l, c in zip(labels, counts)}
  gt_area = dict(zip(*(x.tolist() for x in np.unique(gt, return_counts=True))))
  pred_area = dict(zip(*(x.tolist() for x in np.unique(pred,
                                                        return_counts=True))))

  gt_matched, pred_matched, gt_small = set(), set(), set()
  for (g, p), inter in pairs.items():
    if gt_area[g] < min_gt_area:
      gt_small.add(g)
      continue
    if g not in gt_segs or p not in pred_segs:
      continue
    if gt_segs[g].get("iscrowd", 0) == 1:
      continue
    if gt_segs[g]["category_id"] != pred_segs[p]["category_id"]:
      continue
    union = pred_area[p] + gt_area[g] - inter - pairs.get((VOID, p), 0)
    iou = inter / union
    assert iou <= 1.0
    if iou > 0.5:
      st = stats[gt_segs[g]["category_id"]]
      st[0] += iou
      st[1] += 1
      gt_matched.add(g)
      pred_matched.add(p)

  crowd_of_class = {}
  for g, seg in gt_segs.items():
    if g in gt_matched:
      continue
    if seg.get("iscrowd", 0) == 1:
      crowd_of_class[seg["category_id"]] = g
      continue
    if g in gt_small:
      continue
    stats[seg["category_id"]][3] += 1

  for p, seg in pred_segs.items():
    if p in pred_matched:
      continue
    ignored = pairs.get((VOID, p), 0)
    if seg["category_id"] in crowd_of_class:
      ignored += pairs.get((crowd_of_class[seg["category_id"]], p), 0)
    if ignored / pred_area[p] > 0.5:
      continue
    stats[seg["category_id"]][2] += 1


def reference_stats(videos, ks, stride, min_gt_area=0):
  """{k: {category_id: [iou, tp, fp, fn]}} over all windows of all videos.

  A window of k spans k // stride + 1 frames, or k frames when stride is
  None (the VIPER and VIPSeg scripts' `nframes`).
  """
  out = {}
  for k in ks:
    n = k if stride is None else k // stride + 1
    stats = collections.defaultdict(lambda: [0.0, 0, 0, 0])
    for video in videos:
      for start in range(len(video) - n + 1):
        window_stats(video[start:start + n], stats, min_gt_area)
    out[k] = dict(stats)
  return out


def reference_vpq(videos, categories, ks, stride, min_gt_area=0,
                  excluded=()):
  """{"vpq": {...}, "k": {k: {"all", "things", "stuff"}}} in percent;
  `excluded` category ids are left out of the averages (the VIPER
  release's `pq_average` skips label 11)."""
  stats = reference_stats(videos, ks, stride, min_gt_area)
  out = {"k": {}, "vpq": {}}
  for k in ks:
    groups = {"all": [], "things": [], "stuff": []}
    for cat in categories:
      if cat["id"] in excluded:
        continue
      iou, tp, fp, fn = stats[k].get(cat["id"], [0.0, 0, 0, 0])
      if tp + fp + fn == 0:
        continue
      pq = iou / (tp + 0.5 * fp + 0.5 * fn)
      groups["all"].append(pq)
      groups["things" if cat["isthing"] else "stuff"].append(pq)
    out["k"][k] = {g: 100 * float(np.mean(v)) if v else 0.0
                   for g, v in groups.items()}
  for g in ("all", "things", "stuff"):
    out["vpq"][g] = float(np.mean([out["k"][k][g] for k in ks]))
  return out
