"""STQ evaluation as a user runs it, at the size of KITTI-STEP's validation
set, against a NumPy STQ written from deeplab2's published definition.

Generates KITTI-STEP-encoded PNGs (by default 9 sequences, 3000 frames in
all, at 375x1242: R = semantic train id, G * 256 + B = instance id; stuff
bands, moving persons and cars with crowd and void, an imperfect prediction),
then times each as a fresh process (imports and PNG decoding count):

* `python -m eval.stq --protocol kitti_step`;
* the NumPy STQ: deeplab2's `STQuality` semantics (per-frame `np.unique`
  counting of the confusion, tube areas and intersections, dictionaries per
  sequence), decoding with PIL; its STQ, AQ and IoU must equal ours.

    python benchmarks/stq_eval.py [--sequences 9] [--frames 3000]
        [--height 375 --width 1242]

The last line is `stq_speedup_vs_numpy=<numpy seconds / ours>` (target: at
least 5).
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# deeplab2's definition, vectorised per frame as its NumPy implementation.
_NUMPY_STQ = r"""
import collections, json, os, sys
import numpy as np
from PIL import Image
gt_dir, pred_dir, out = sys.argv[1:4]
C, VOID, THINGS, SHIFT, OFFSET = 19, 255, (11, 13), 16, 1 << 32

def read(path):
  x = np.asarray(Image.open(path)).astype(np.int64)
  return (x[..., 0] << SHIFT) + x[..., 1] * 256 + x[..., 2]

def add(d, ids):
  u, c = np.unique(ids, return_counts=True)
  for i, n in zip(u.tolist(), c.tolist()):
    d[i] = d.get(i, 0) + n

aq_sum, tubes, total = [], [], np.zeros((C + 1, C + 1), np.int64)
per_seq = {}
for seq in sorted(os.listdir(gt_dir)):
  conf = np.zeros_like(total)
  gts, preds, inter = {}, {}, {}
  for f in sorted(os.listdir(os.path.join(gt_dir, seq))):
    y = read(os.path.join(gt_dir, seq, f)).ravel()
    p = read(os.path.join(pred_dir, seq, f)).ravel()
    s, ps = y >> SHIFT, p >> SHIFT
    s = np.where(s == VOID, C, s)
    ps = np.where(ps == VOID, C, ps)
    u, c = np.unique(s * (C + 1) + ps, return_counts=True)
    conf[u // (C + 1), u % (C + 1)] += c
    lm, pm = np.isin(s, THINGS), np.isin(ps, THINGS)
    crowd = lm & ((y & 0xFFFF) == 0)
    lm &= ~crowd
    pm &= ~crowd
    add(preds, p[pm])
    add(gts, y[lm])
    both = lm & pm
    add(inter, y[both] * OFFSET + p[both])
  outer = 0.0
  for g, gs in gts.items():
    inner = 0.0
    for pid, psz in preds.items():
      t = inter.get(g * OFFSET + pid, 0)
      if t:
        inner += t * t / (psz + gs - t)
    outer += inner / gs
  aq_sum.append(outer)
  tubes.append(len(gts))
  conf[C, :] = 0
  total += conf
tp = np.diag(total).astype(float)
union = total.sum(0) + total.sum(1) - tp
iou = float(np.sum(tp / np.maximum(union, 1e-15)) / np.count_nonzero(union))
aq = sum(aq_sum) / max(sum(tubes), 1e-15)
json.dump({"stq": 100 * float(np.sqrt(aq * iou)), "aq": 100 * aq,
           "iou": 100 * iou}, open(out, "w"))
"""


def _frame(rng, t, objs, h, w, bands, cut):
  sem = np.empty((h, w), np.uint8)
  sem[:cut[0]], sem[cut[0]:cut[1]], sem[cut[1]:] = bands
  inst = np.zeros((h, w), np.uint16)
  psem, pinst = sem.copy(), inst.copy()
  psem[cut[1] - 3:cut[1] + 3] = bands[1]
  for o in objs:
    x = int(o["x"] + o["vx"] * t) % (w + 100) - 50
    sl = (slice(o["y"], o["y"] + o["h"]), slice(max(x, 0), max(x + o["w"],
                                                                 0)))
    sem[sl], inst[sl] = o["cls"], o["inst"]
    psem[sl] = o["cls"]
    pinst[sl] = o["inst"] + 1 + 100 * (t >= o["switch"])
  y, x = rng.integers(0, h - 20), rng.integers(0, w - 40)
  sem[y:y + 20, x:x + 40], inst[y:y + 20, x:x + 40] = 255, 0
  return sem, inst, psem, pinst


def _png(sem, inst):
  return np.stack([sem, (inst >> 8).astype(np.uint8),
                   (inst & 255).astype(np.uint8)], -1)


def _generate(root, num_seqs, num_frames, h, w, seed=0):
  rng = np.random.default_rng(seed)
  gt_dir, pred_dir = root / "gt", root / "pred"
  lengths = np.full(num_seqs, num_frames // num_seqs)
  lengths[:num_frames % num_seqs] += 1
  for s, n in enumerate(lengths):
    for d in (gt_dir, pred_dir):
      os.makedirs(d / f"{s:04d}")
    objs = [{"cls": int(rng.choice((11, 13))),
             "inst": 0 if rng.random() < 0.1 else i + 1,
             "x": int(rng.integers(0, w)), "y": int(rng.integers(h // 3,
                                                                 h - 60)),
             "vx": float(rng.normal(0, 4)), "w": int(rng.integers(20, 150)),
             "h": int(rng.integers(20, 60)),
             "switch": int(rng.integers(0, 2 * n))}
            for i in range(int(rng.integers(10, 30)))]
    bands = rng.permutation(11)[:3].astype(np.uint8)
    cut = np.sort(rng.integers(40, h - 40, 2))
    for t in range(n):
      sem, inst, psem, pinst = _frame(rng, t, objs, h, w, bands, cut)
      Image.fromarray(_png(sem, inst)).save(gt_dir / f"{s:04d}" /
                                            f"{t:06d}.png")
      Image.fromarray(_png(psem, pinst)).save(pred_dir / f"{s:04d}" /
                                              f"{t:06d}.png")
  return str(gt_dir), str(pred_dir)


def _run(cmd):
  t = time.perf_counter()
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                        check=False)
  if proc.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
  return time.perf_counter() - t


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--sequences", type=int, default=9)
  parser.add_argument("--frames", type=int, default=3000)
  parser.add_argument("--height", type=int, default=375)
  parser.add_argument("--width", type=int, default=1242)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(tmp)
    t = time.perf_counter()
    gt_dir, pred_dir = _generate(root, args.sequences, args.frames,
                                 args.height, args.width)
    print(f"generated {args.frames} frames in {args.sequences} sequences at "
          f"{args.height}x{args.width} in {time.perf_counter() - t:.1f} s",
          file=sys.stderr)
    _run([sys.executable, "-c", "import eval.stq"])  # warm the caches
    ours_json, ref_json = root / "ours.json", root / "ref.json"
    ours_s = _run([sys.executable, "-m", "eval.stq", "--protocol",
                   "kitti_step", "--gt_dir", gt_dir, "--pred_dir", pred_dir,
                   "--output", str(ours_json)])
    ref_s = _run([sys.executable, "-c", _NUMPY_STQ, gt_dir, pred_dir,
                  str(ref_json)])
    ours = json.loads(ours_json.read_text())
    ref = json.loads(ref_json.read_text())
  for key in ("stq", "aq", "iou"):
    assert abs(ours[key] - ref[key]) < 1e-9 * max(1.0, ref[key]), (key, ours,
                                                                   ref)
  print(f"\nSTQ as whole processes: {args.frames} frames, {args.sequences} "
        f"sequences at {args.height}x{args.width}, {os.cpu_count()} cores")
  print(f"{'':40} {'seconds':>8} {'ms/frame':>9}")
  for name, s in (("python -m eval.stq --protocol kitti_step", ours_s),
                  ("NumPy STQ (deeplab2's definition)", ref_s)):
    print(f"{name:40} {s:8.2f} {1e3 * s / args.frames:9.2f}")
  print(f"STQ / AQ / IoU: {ours['stq']:.3f} / {ours['aq']:.3f} / "
        f"{ours['iou']:.3f} (both the same)")
  print(f"stq_speedup_vs_numpy={ref_s / ours_s:.2f}")


if __name__ == "__main__":
  main()
