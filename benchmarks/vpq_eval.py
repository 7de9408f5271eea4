"""VPQ evaluation as a user runs it: whole processes, start-up included.

Generates a set the size of the Cityscapes-VPS validation set (by default 50
videos of 6 annotated frames at 1024x2048: ground truth and imperfect
predictions as RGB PNGs in the evaluation layout), then times, in one run,
each as a fresh process (imports, compilation and PNG decoding count):

* `python -m eval.vpq` (all four windows k = 0, 5, 10, 15);
* the per-window NumPy reference (`tests/eval/vpq_reference.py`, decoding
  with PIL), whose statistics must equal ours;
* hotcoco's `coco panoptic eval` (image-level PQ only, in Rust; PyPI
  `hotcoco`, the `benchmarks` extra) on the same frames written as a
  COCO panoptic JSON; its PQ is printed beside our k = 0 PQ (the same
  definition);
* the peak RSS of `python -m eval.vpq` on half and on all the videos.

    python benchmarks/vpq_eval.py [--videos 50] [--height 1024 --width 2048]
        [--skip_reference] [--skip_hotcoco]

The last line is `vpq_time_ratio_vs_hotcoco=<ours / hotcoco's seconds>`
(target: at most 1.5).
"""

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.eval import test_vpq  # noqa: E402
from tests.eval import vpq_testdata  # noqa: E402

KS = (0, 5, 10, 15)

_REFERENCE = """
import json, sys
sys.path.insert(0, {root!r})
from eval import layout
from tests.eval import vpq_reference
plan = layout.plan_videos({gt_json!r}, {gt_dir!r}, {pred_dir!r})
stats = {{}}
for video in plan.videos:
  frames = [(layout.read_id_png(s.gt_path), s.gt_segments,
             layout.read_id_png(s.pred_path), s.pred_segments)
            for s in video]
  part = vpq_reference.reference_stats([frames], {ks!r}, 5)
  for k in part:
    for c, v in part[k].items():
      acc = stats.setdefault(str(k), {{}}).setdefault(str(c), [0.0, 0, 0, 0])
      for i in range(4):
        acc[i] += v[i]
json.dump(stats, open({out!r}, "w"))
"""


def _generate(root, num_videos, height, width, seed=0):
  rng = np.random.default_rng(seed)
  videos = (vpq_testdata.random_video(rng, num_frames=6, height=height,
                                      width=width, num_objects=30,
                                      name=f"{v:04d}")
            for v in range(num_videos))
  # write_layout takes a list; write video by video to bound memory.
  paths = None
  gt_all = {"images": [], "annotations": []}
  pred_all = []
  for v in videos:
    paths = test_vpq.write_layout(root, [v])
    gt = json.loads(pathlib.Path(paths[0]).read_text())
    gt_all["images"] += gt["images"]
    gt_all["annotations"] += gt["annotations"]
    gt_all["categories"] = gt["categories"]
    pred_all += json.loads(
        (pathlib.Path(paths[2]) / "pred.json").read_text())["annotations"]
  pathlib.Path(paths[0]).write_text(json.dumps(gt_all))
  (pathlib.Path(paths[2]) / "pred.json").write_text(
      json.dumps({"annotations": pred_all}))
  return paths


def _half(paths, num_videos, root):
  """A ground-truth JSON of the first `num_videos` videos (same PNGs)."""
  gt = json.loads(pathlib.Path(paths[0]).read_text())
  keep = {f"{v:04d}" for v in range(num_videos)}
  gt["annotations"] = [a for a in gt["annotations"]
                       if a["image_id"].split("_")[0] in keep]
  gt["images"] = [i for i in gt["images"] if i["id"].split("_")[0] in keep]
  out = root / "gt_half.json"
  out.write_text(json.dumps(gt))
  return (str(out),) + tuple(paths[1:])


def _coco_panoptic(paths, root):
  """The same frames as COCO panoptic JSONs for hotcoco (PNGs copied to
  `<image_id>.png` folders, as panopticapi reads them)."""
  gt_json, gt_dir, pred_dir = paths
  gt = json.loads(pathlib.Path(gt_json).read_text())
  pred = json.loads((pathlib.Path(pred_dir) / "pred.json").read_text())
  gt_png, pred_png = root / "coco_gt", root / "coco_pred"
  os.makedirs(gt_png)
  os.makedirs(pred_png)
  # hotcoco wants integer image ids.
  number = {im["id"]: i + 1 for i, im in enumerate(gt["images"])}
  for ann in gt["annotations"]:
    os.link(os.path.join(gt_dir, ann["file_name"]),
            gt_png / f"{ann['image_id']}.png")
    ann["file_name"] = f"{ann['image_id']}.png"
    ann["image_id"] = number[ann["image_id"]]
  for ann in pred["annotations"]:
    os.link(os.path.join(pred_dir, "pan_pred", f"{ann['image_id']}.png"),
            pred_png / f"{ann['image_id']}.png")
    ann["file_name"] = f"{ann['image_id']}.png"
    ann["image_id"] = number[ann["image_id"]]
  for im in gt["images"]:
    im["file_name"] = f"{im['id']}.png"
    im["id"] = number[im["id"]]
  pred["images"] = gt["images"]
  pred["categories"] = gt["categories"]
  (root / "coco_gt.json").write_text(json.dumps(gt))
  (root / "coco_pred.json").write_text(json.dumps(pred))
  return (str(root / "coco_gt.json"), str(root / "coco_pred.json"),
          str(gt_png), str(pred_png))


def _run(cmd):
  """(wall seconds, stdout) of `cmd` as a fresh process."""
  t = time.perf_counter()
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                        check=False)
  wall = time.perf_counter() - t
  if proc.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
  return wall, proc.stdout


def _peak(cmd):
  """Peak RSS (MB) of `cmd` in a fresh process of its own."""
  wrapper = ("import resource, subprocess, sys; "
             "subprocess.run(sys.argv[1:], check=True, "
             "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
  out = subprocess.run([sys.executable, "-c", wrapper] + cmd, cwd=ROOT,
                       capture_output=True, text=True, check=True)
  return float(out.stdout.strip()) / 1024


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--videos", type=int, default=50)
  parser.add_argument("--height", type=int, default=1024)
  parser.add_argument("--width", type=int, default=2048)
  parser.add_argument("--skip_reference", action="store_true",
                      help="leave out the (slow) NumPy reference")
  parser.add_argument("--skip_hotcoco", action="store_true",
                      help="leave out hotcoco (the last line is then nan)")
  args = parser.parse_args()
  coco = shutil.which("coco") or os.path.join(os.path.dirname(
      sys.executable), "coco")
  if not args.skip_hotcoco and not os.path.exists(coco):
    sys.exit("hotcoco's `coco` command is missing: pip install -e "
             "'.[benchmarks]' (or pip install hotcoco), or --skip_hotcoco")

  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(tmp)
    t = time.perf_counter()
    paths = _generate(root, args.videos, args.height, args.width)
    print(f"generated {args.videos} videos x 6 frames at "
          f"{args.height}x{args.width} in {time.perf_counter() - t:.1f} s",
          file=sys.stderr)
    out_json = root / "ours.json"
    ours_cmd = [sys.executable, "-m", "eval.vpq", "--gt_json", paths[0],
                "--gt_dir", paths[1], "--pred_dir", paths[2],
                "--output", str(out_json)]
    coco_cmd = None
    if not args.skip_hotcoco:
      coco_paths = _coco_panoptic(paths, root)
      coco_cmd = [coco, "panoptic", "eval", "--gt", coco_paths[0],
                  "--pred", coco_paths[1], "--gt-folder", coco_paths[2],
                  "--pred-folder", coco_paths[3], "--json"]
    # Warm the file cache and the interpreter's bytecode for every command.
    _run([sys.executable, "-c", "import eval.vpq"])

    ours_s, _ = _run(ours_cmd)
    ours = json.loads(out_json.read_text())
    coco_s = coco_pq = None
    if coco_cmd:
      coco_s, coco_out = _run(coco_cmd)
      coco_pq = _hotcoco_pq(coco_out)
    import_s, _ = _run([sys.executable, "-c", "import eval.vpq"])
    ref_s = None
    if not args.skip_reference:
      ref_out = root / "ref.json"
      ref_s, _ = _run([sys.executable, "-c", _REFERENCE.format(
          root=ROOT, gt_json=paths[0], gt_dir=paths[1], pred_dir=paths[2],
          ks=KS, out=str(ref_out))])
      ref = json.loads(ref_out.read_text())
      for k in KS:
        for c, (iou, tp, fp, fn) in ref[str(k)].items():
          s = ours["k"][str(k)]["classes"][c]
          assert (s["tp"], s["fp"], s["fn"]) == (tp, fp, fn), (k, c)
          assert abs(s["iou"] - iou) < 1e-6 * max(1.0, iou), (k, c)

    half = max(1, args.videos // 2)
    half_paths = _half(paths, half, root)
    mem_half = _peak([sys.executable, "-m", "eval.vpq", "--gt_json",
                      half_paths[0], "--gt_dir", paths[1], "--pred_dir",
                      paths[2]])
    mem_full = _peak(ours_cmd)
    mem_coco = _peak(coco_cmd) if coco_cmd else None

  frames = 6 * args.videos
  print(f"\nVPQ evaluation as whole processes: {args.videos} videos, "
        f"{frames} annotated frames at {args.height}x{args.width}, "
        f"{os.cpu_count()} cores")
  print(f"{'':44} {'seconds':>8} {'peak RSS MB':>12}")
  print(f"{'python -m eval.vpq (k = 0, 5, 10, 15)':44} {ours_s:8.2f} "
        f"{mem_full:12.0f}")
  label = "  of which: python -c 'import eval.vpq'"
  print(f"{label:44} {import_s:8.2f}")
  if coco_cmd:
    print(f"{'hotcoco coco panoptic eval (image PQ only)':44} {coco_s:8.2f} "
          f"{mem_coco:12.0f}")
  if ref_s is not None:
    print(f"{'NumPy reference, per window (same numbers)':44} {ref_s:8.2f}")
  print(f"peak RSS of python -m eval.vpq: {mem_half:.0f} MB on {half} "
        f"videos, {mem_full:.0f} MB on {args.videos}")
  if coco_cmd:
    print(f"image PQ (all): ours k = 0 {ours['k']['0']['all']:.4f}, "
          f"hotcoco {coco_pq:.4f}")
  print(f"VPQ all/things/stuff: {ours['vpq']['all']:.2f} / "
        f"{ours['vpq']['things']:.2f} / {ours['vpq']['stuff']:.2f}")
  if ref_s is not None:
    print(f"speedup_vs_numpy_reference={ref_s / ours_s:.2f}")
  ratio = ours_s / coco_s if coco_cmd else float("nan")
  print(f"vpq_time_ratio_vs_hotcoco={ratio:.2f}")


def _hotcoco_pq(stdout: str) -> float:
  """The All PQ (percent) of `coco panoptic eval --json`'s output."""
  return 100.0 * float(json.loads(stdout)["All"]["pq"])


if __name__ == "__main__":
  main()
