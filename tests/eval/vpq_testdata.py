"""Seeded random videos of ground truth and imperfect predictions for VPQ tests.

Ground truth: stuff in horizontal bands (category 0 is a real class) and thing
objects as moving rectangles that enter and leave, occlude each other, some of
them crowd, plus void regions. Predictions start from the same scene and add
what a real model gets wrong: shifted boundaries, identity switches, class
confusions (per tube and per frame), merged objects, spurious segments and
predicted void.
"""

import numpy as np

from eval.common import Frame
from eval.common import ids_to_rgb as to_rgb  # pylint: disable=unused-import

CATEGORIES = [
    {"id": 0, "name": "road", "isthing": 0},
    {"id": 1, "name": "building", "isthing": 0},
    {"id": 2, "name": "sky", "isthing": 0},
    {"id": 3, "name": "person", "isthing": 1},
    {"id": 4, "name": "car", "isthing": 1},
    {"id": 5, "name": "bicycle", "isthing": 1},
]
STUFF = (0, 1, 2)
THINGS = (3, 4, 5)


def _unique_ids(rng, n, used):
  out = []
  while len(out) < n:
    i = int(rng.integers(1, 1 << 24))
    if i not in used:
      used.add(i)
      out.append(i)
  return out


def _render(h, w, bands, objects, t):
  """(H, W) int64 ids: bands of stuff, then objects (later ones on top)."""
  ids = np.zeros((h, w), np.int64)
  for y0, y1, sid in bands:
    ids[int(y0 * h):int(np.ceil(y1 * h))] = sid
  for obj in objects:
    if not obj["t0"] <= t < obj["t1"]:
      continue
    x, y = obj["x"] + obj["vx"] * t, obj["y"] + obj["vy"] * t
    x0, y0 = int(round(x)), int(round(y))
    x1, y1 = x0 + obj["w"], y0 + obj["h"]
    ids[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = obj["ids"][t]
  return ids


def _segments(ids, categories_of, crowd=()):
  present = [int(i) for i in np.unique(ids) if i != 0]
  return [{"id": i, "category_id": categories_of[i],
           "iscrowd": int(i in crowd), "area": int((ids == i).sum())}
          for i in present]


def random_video(rng, num_frames=6, height=24, width=32, num_objects=6,
                 rgb=False, name="0001"):
  """One video of `Frame`s with ground truth and an imperfect prediction."""
  used = set()
  # Stuff bands, jittered in the prediction; stuff confusion in some frames.
  cuts = np.sort(rng.uniform(0.2, 0.8, 2))
  stuff_cats = rng.permutation(STUFF)
  stuff_ids = _unique_ids(rng, 3, used)
  gt_bands = [(0, cuts[0], stuff_ids[0]), (cuts[0], cuts[1], stuff_ids[1]),
              (cuts[1], 1, stuff_ids[2])]
  gt_cat = dict(zip(stuff_ids, (int(c) for c in stuff_cats)))

  objects, crowd = [], set()
  for _ in range(num_objects):
    cat = int(rng.choice(THINGS))
    t0 = int(rng.integers(0, num_frames))
    t1 = int(rng.integers(t0 + 1, num_frames + 1))
    oid = _unique_ids(rng, 1, used)[0]
    obj = {"cat": cat, "t0": t0, "t1": t1,
           "x": float(rng.uniform(-width / 4, width)),
           "y": float(rng.uniform(0, height * 0.8)),
           "vx": float(rng.normal(0, 3)), "vy": float(rng.normal(0, 1)),
           "w": int(rng.integers(2, width // 2)),
           "h": int(rng.integers(2, height // 2)),
           "ids": [oid] * num_frames}
    gt_cat[oid] = cat
    if rng.random() < 0.15:
      crowd.add(oid)
    objects.append(obj)

  # Prediction: perturbed copies of the objects plus spurious ones.
  pred_bands = [(max(0, y0 + rng.normal(0, 0.03)), y1, sid)
                for y0, y1, sid in gt_bands]
  pred_cat_frames = [{} for _ in range(num_frames)]
  stuff_pred = _unique_ids(rng, 3, used)
  pred_bands = [(y0, y1, p) for (y0, y1, _), p in zip(pred_bands, stuff_pred)]
  pred_objects = []
  for obj in objects:
    p = dict(obj)
    p["x"] += rng.integers(-2, 3)
    p["y"] += rng.integers(-1, 2)
    p["w"] = max(1, obj["w"] + int(rng.integers(-2, 3)))
    pid = _unique_ids(rng, 1, used)[0]
    p["ids"] = [pid] * num_frames
    if rng.random() < 0.3:  # Identity switch from a random frame on.
      switch = int(rng.integers(0, num_frames))
      new = _unique_ids(rng, 1, used)[0]
      p["ids"] = [pid] * switch + [new] * (num_frames - switch)
    if rng.random() < 0.15 and pred_objects:  # Merged with another object.
      p["ids"] = list(pred_objects[-1]["ids"])
      p["cat"] = pred_objects[-1]["cat"]
    elif rng.random() < 0.2:  # Wrong class for the whole tube.
      p["cat"] = int(rng.choice(THINGS))
    p["flip"] = rng.random() < 0.1  # Class changes between frames.
    if rng.random() < 0.1:  # Missed entirely.
      p["t1"] = p["t0"]
    pred_objects.append(p)
  for _ in range(int(rng.integers(0, 3))):  # Spurious detections.
    t0 = int(rng.integers(0, num_frames))
    pred_objects.append({
        "cat": int(rng.choice(THINGS)), "t0": t0,
        "t1": int(rng.integers(t0 + 1, num_frames + 1)),
        "x": float(rng.uniform(0, width)), "y": float(rng.uniform(0, height)),
        "vx": 0.0, "vy": 0.0, "w": int(rng.integers(1, 6)),
        "h": int(rng.integers(1, 6)),
        "ids": _unique_ids(rng, 1, used) * num_frames, "flip": False})

  frames = []
  for t in range(num_frames):
    gt = _render(height, width, gt_bands, objects, t)
    pred = _render(height, width, pred_bands, pred_objects, t)
    # Void in the ground truth and in the prediction.
    if rng.random() < 0.6:
      y0, x0 = rng.integers(0, height), rng.integers(0, width)
      gt[y0:y0 + int(rng.integers(1, 8)), x0:x0 + int(rng.integers(1, 10))] = 0
    if rng.random() < 0.4:
      y0, x0 = rng.integers(0, height), rng.integers(0, width)
      pred[y0:y0 + int(rng.integers(1, 6)), x0:x0 + int(rng.integers(1, 6))] = 0
    cats = pred_cat_frames[t]
    for (_, _, pid), c in zip(pred_bands, stuff_cats):
      cats[pid] = int(c) if rng.random() > 0.1 else int(rng.choice(STUFF))
    for p in pred_objects:
      for pid in set(p["ids"]):
        cats.setdefault(pid, p["cat"])
        if p["flip"] and t % 2:
          cats[pid] = int(rng.choice(THINGS))
    gt_segs = _segments(gt, gt_cat, crowd)
    pred_segs = [{"id": s["id"], "category_id": s["category_id"]}
                 for s in _segments(pred, cats)]
    if rgb:
      gt, pred = to_rgb(gt), to_rgb(pred)
    frames.append(Frame(f"{name}_{t:04d}", gt, gt_segs, pred, pred_segs))
  return frames




def as_tuples(video):
  """Frames as the reference's (gt, gt_segments, pred, pred_segments)."""
  return [(f.gt, f.gt_segments, f.pred, f.pred_segments) for f in video]
