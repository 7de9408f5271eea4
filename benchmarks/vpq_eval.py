"""VPQ evaluator speed and memory against the per-window NumPy reference.

Generates a Cityscapes-sized set (videos of 6 annotated frames at 1024x2048,
ground truth and imperfect predictions as RGB PNGs in the evaluation layout),
then measures in one run:

* end to end (PNG decoding included): `eval.vpq.evaluate_folder` against the
  reference (decode with PIL, then stack / np.unique per window);
* excluding PNG decoding: both on the same decoded arrays;
* peak memory of the evaluator (a fresh process each) on N/2 and N videos.

    python benchmarks/vpq_eval.py [--videos 8] [--height 1024 --width 2048]

The last line is `speedup_vs_numpy_reference=<x>` (end to end).
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from eval import layout  # pylint: disable=g-import-not-at-top
from eval import vpq
from tests.eval import test_vpq
from tests.eval import vpq_reference
from tests.eval import vpq_testdata

KS = (0, 5, 10, 15)


def _generate(root, num_videos, height, width, seed=0):
  rng = np.random.default_rng(seed)
  videos = [vpq_testdata.random_video(rng, num_frames=6, height=height,
                                      width=width, num_objects=30,
                                      name=f"{v:04d}")
            for v in range(num_videos)]
  return test_vpq.write_layout(root, videos)


def _reference_end_to_end(paths):
  plan = layout.plan_videos(*paths)
  videos = []
  stats = {}
  t = time.perf_counter()
  for video in plan.videos:
    frames = [(layout.read_id_png(s.gt_path), s.gt_segments,
               layout.read_id_png(s.pred_path), s.pred_segments)
              for s in video]
    videos.append(frames)
    part = vpq_reference.reference_stats([frames], KS, 5)
    for k in KS:
      for c, v in part[k].items():
        acc = stats.setdefault(k, {}).setdefault(c, [0.0, 0, 0, 0])
        for i in range(4):
          acc[i] += v[i]
    videos.pop()
  return time.perf_counter() - t, stats


def _decoded(paths):
  plan = layout.plan_videos(*paths)
  with layout.FrameLoader() as loader:
    return plan.categories, list(loader.videos(plan.videos))


def _peak_rss_mb(paths, num_videos):
  """Peak RSS of a fresh process evaluating the first `num_videos` videos."""
  code = f"""
import json, resource, sys
sys.path.insert(0, {os.getcwd()!r})
from eval import layout, vpq
plan = layout.plan_videos(*{list(paths)!r})
with layout.FrameLoader() as loader:
  vpq.evaluate(loader.videos(plan.videos[:{num_videos}]), plan.categories)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, check=True)
  return float(out.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--videos", type=int, default=8)
  parser.add_argument("--height", type=int, default=1024)
  parser.add_argument("--width", type=int, default=2048)
  args = parser.parse_args()

  with tempfile.TemporaryDirectory() as tmp:
    t = time.perf_counter()
    paths = _generate(__import__("pathlib").Path(tmp), args.videos,
                      args.height, args.width)
    print(f"generated {args.videos} videos x 6 frames at "
          f"{args.height}x{args.width} in {time.perf_counter() - t:.1f} s",
          file=sys.stderr)

    # Warm-up: compile for this frame shape (counted separately).
    t = time.perf_counter()
    categories, decoded = _decoded(paths)
    vpq.evaluate(decoded[:1], categories)
    compile_s = time.perf_counter() - t

    t = time.perf_counter()
    ours = vpq.evaluate_folder(*paths)
    ours_e2e = time.perf_counter() - t

    ref_e2e, ref_stats = _reference_end_to_end(paths)

    t = time.perf_counter()
    ours_arrays = vpq.evaluate(decoded, categories)
    ours_compute = time.perf_counter() - t
    tuples = [[(f.gt, f.gt_segments, f.pred, f.pred_segments) for f in v]
              for v in decoded]
    t = time.perf_counter()
    vpq_reference.reference_stats(tuples, KS, 5)
    ref_compute = time.perf_counter() - t
    del decoded, tuples

    # Same numbers from every path.
    assert ours == ours_arrays
    for k in KS:
      for c, (iou, tp, fp, fn) in ref_stats[k].items():
        s = ours["k"][str(k)]["classes"][str(c)]
        assert (s["tp"], s["fp"], s["fn"]) == (tp, fp, fn)
        assert abs(s["iou"] - iou) < 1e-9

    half = max(1, args.videos // 2)
    mem_half = _peak_rss_mb(paths, half)
    mem_full = _peak_rss_mb(paths, args.videos)

  frames = 6 * args.videos
  print(f"\nVPQ evaluation, {args.videos} videos, {frames} annotated frames "
        f"at {args.height}x{args.width}, k = {KS}, "
        f"{os.cpu_count()} cores")
  print(f"{'':34} {'ours (s)':>10} {'numpy ref (s)':>14} {'speedup':>8}")
  print(f"{'end to end (PNG decoding incl.)':34} {ours_e2e:10.2f} "
        f"{ref_e2e:14.2f} {ref_e2e / ours_e2e:8.1f}x")
  print(f"{'excluding PNG decoding':34} {ours_compute:10.2f} "
        f"{ref_compute:14.2f} {ref_compute / ours_compute:8.1f}x")
  print(f"{'per frame, end to end (ms)':34} {1e3 * ours_e2e / frames:10.1f} "
        f"{1e3 * ref_e2e / frames:14.1f}")
  print(f"compile (first frame shape): {compile_s:.2f} s")
  print(f"peak RSS of the evaluator: {mem_half:.0f} MB on {half} videos, "
        f"{mem_full:.0f} MB on {args.videos} videos")
  print(f"VPQ all/things/stuff: {ours['vpq']['all']:.2f} / "
        f"{ours['vpq']['things']:.2f} / {ours['vpq']['stuff']:.2f}")
  print(f"speedup_vs_numpy_reference={ref_e2e / ours_e2e:.2f}")


if __name__ == "__main__":
  main()
