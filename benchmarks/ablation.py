"""The paper's Table 4 in miniature: VPSNet variants and trackers on the
built-in synthetic data, next to the paper's VIPER numbers.

    python benchmarks/ablation.py [--workdir /tmp/vpsnet_ablation]
        [--steps N] [--val_videos 10] [--data_dir DIR]
        [--config.field=value ...]

Trains `base`, `fuse`, `track`, `disjoined` and `fusetrack` with
configs/synthetic.py and
the same budget (`--steps`, default the config's num_train_steps), each in
WORKDIR/<variant> (a finished variant is not trained again: delete its
folder to retrain), then evaluates them online on the synthetic validation
videos: Base and Fuse without tracking (new ids every frame), Track,
Disjoined (the fused feature feeds every branch but the track head) and
FuseTrack with the track head, and FuseTrack with the paper's baselines
Cls-Sort and IoU-Match. Each cell is VPQ^k All / Things / Stuff; k = 0 is
image PQ. The last line is `fusetrack_vpq=<x>`.
"""

import argparse
import ast
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# (row, variant trained, tracker at inference)
ROWS = (
    ("Base", "base", "none"),
    ("Fuse", "fuse", "none"),
    ("Track", "track", "track_head"),
    ("FuseTrack Cls-Sort", "fusetrack", "cls_sort"),
    ("FuseTrack IoU-Match", "fusetrack", "iou_match"),
    ("FuseTrack Disjoined", "disjoined", "track_head"),
    ("FuseTrack (VPSNet)", "fusetrack", "track_head"),
)
KS = ("0", "5", "10", "15")
# Table 4 of the paper (VIPER): VPQ^k All / Things / Stuff for k = 1 (the
# paper's label of the image-level column), 5, 10, 15, and VPQ.
PAPER_VIPER = {
    "Base": ((52.1, 47.2, 56.2), (29.4, 0.8, 53.2), (29.3, 0.6, 53.2),
             (29.0, 0.5, 52.8), (34.9, 12.3, 54.1)),
    "Fuse": ((53.0, 48.3, 57.0), (30.0, 0.8, 54.4), (29.8, 0.8, 54.0),
             (29.6, 0.6, 53.8), (35.6, 12.6, 54.8)),
    "Track": ((53.0, 47.9, 57.2), (47.1, 39.3, 53.6), (42.7, 30.0, 53.2),
              (40.4, 25.4, 52.8), (45.8, 35.7, 54.2)),
    "FuseTrack Cls-Sort": ((55.4, 52.2, 58.0), (30.5, 0.8, 55.2),
                           (30.1, 0.6, 54.6), (29.8, 0.5, 54.3),
                           (36.5, 13.5, 55.5)),
    "FuseTrack IoU-Match": ((55.4, 52.2, 58.0), (45.0, 32.8, 55.2),
                            (40.1, 22.8, 54.6), (37.9, 18.2, 54.3),
                            (44.6, 31.5, 55.5)),
    "FuseTrack Disjoined": ((55.4, 52.2, 58.0), (52.0, 48.3, 55.2),
                            (48.6, 40.4, 54.6), (46.9, 37.5, 54.3),
                            (50.7, 44.6, 55.5)),
    "FuseTrack (VPSNet)": ((55.4, 52.2, 58.0), (53.6, 51.7, 55.2),
                           (50.1, 44.7, 54.6), (48.4, 41.4, 54.3),
                           (51.9, 47.5, 55.5)),
}


def _cell(values) -> str:
  return " / ".join(f"{v:4.1f}" for v in values)


def _cells(result) -> list:
  groups = ("all", "things", "stuff")
  out = [[result["k"][k][g] for g in groups] for k in KS]
  out.append([result["vpq"][g] for g in groups])
  return out


def _print_table(title, rows):
  print(title)
  print(f"{'':<22}" + "".join(f"{h:>20}" for h in
                              ("k = 0 (PQ)", "k = 5", "k = 10", "k = 15",
                               "VPQ")))
  for name, cells in rows:
    print(f"{name:<22}" + "".join(f"{_cell(c):>20}" for c in cells))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", default="/tmp/vpsnet_ablation")
  parser.add_argument("--steps", type=int, default=0,
                      help="training steps per variant (0: the config's)")
  parser.add_argument("--val_videos", type=int, default=10,
                      help="synthetic validation videos (the quick start's "
                      "2 are too few to rank the variants)")
  parser.add_argument("--data_dir", default="",
                      help="the dataset (default WORKDIR/data; written on "
                      "first use)")
  args, overrides = parser.parse_known_args()
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.INFO)  # training progress and metrics

  from configs import synthetic  # pylint: disable=g-import-not-at-top
  from vpsnet_jax.inference import run  # pylint: disable=g-import-not-at-top
  from vpsnet_jax.train import train  # pylint: disable=g-import-not-at-top

  def config_for(variant, tracker):
    c = synthetic.get_config()
    for item in overrides:
      if not item.startswith("--config.") or "=" not in item:
        raise SystemExit(f"unknown argument {item!r}")
      key, value = item[len("--config."):].split("=", 1)
      parent = c
      *path, last = key.split(".")
      for p in path:
        parent = parent[p]
      try:
        parent[last] = ast.literal_eval(value)
      except (ValueError, SyntaxError):
        parent[last] = value
    c.variant, c.tracker = variant, tracker
    if args.steps:
      c.num_train_steps = args.steps
    # One dataset for every variant.
    c.dataset.synthetic.num_val_videos = args.val_videos
    c.dataset.data_dir = args.data_dir or os.path.join(args.workdir, "data")
    return c

  results, timing = {}, {}
  for name, variant, tracker in ROWS:
    workdir = os.path.join(args.workdir, variant)
    c = config_for(variant, tracker)
    if variant not in timing:
      manager = train.checkpoint_manager(workdir, c)
      done = (manager.latest_step() or 0) >= c.num_train_steps
      manager.close()
      t0 = time.perf_counter()
      train.train(c, workdir, validation=False)
      timing[variant] = None if done else time.perf_counter() - t0
      print(f"{variant}: " + ("trained earlier" if done else
                              f"trained in {timing[variant]:.0f} s"),
            file=sys.stderr)
    results[name] = run.evaluate(c, workdir, progress=False)
    with open(os.path.join(args.workdir, "ablation.json"), "w") as f:
      json.dump({k: {"vpq": v["vpq"], "k": {
          kk: {g: v["k"][kk][g] for g in ("all", "things", "stuff")}
          for kk in v["k"]}} for k, v in results.items()}, f, indent=1)

  c = config_for("fusetrack", "track_head")
  trained = ", ".join(f"{v} " + ("trained earlier" if t is None else
                                 f"{t:.0f} s") for v, t in timing.items())
  print(f"\nvps_synthetic validation ({c.dataset.synthetic.num_val_videos} "
        f"videos), {c.num_train_steps} training steps per variant "
        f"({trained})")
  _print_table("Ours, synthetic data: VPQ^k All / Things / Stuff",
               [(n, _cells(results[n])) for n, _, _ in ROWS])
  print()
  _print_table("Paper, VIPER (Table 4; its first column is labelled k = 1)",
               [(n, PAPER_VIPER[n]) for n, _, _ in ROWS])
  vpq = {n: results[n]["vpq"]["all"] for n, _, _ in ROWS}
  pq = {n: results[n]["k"]["0"]["all"] for n, _, _ in ROWS}
  checks = [
      ("FuseTrack > Track (VPQ)", vpq["FuseTrack (VPSNet)"] > vpq["Track"]),
      ("Track > IoU-Match (VPQ)", vpq["Track"] > vpq["FuseTrack IoU-Match"]),
      ("IoU-Match > Cls-Sort (VPQ)",
       vpq["FuseTrack IoU-Match"] > vpq["FuseTrack Cls-Sort"]),
      ("Fuse >= Base (image PQ)", pq["Fuse"] >= pq["Base"]),
  ]
  print("\nThe paper's ordering:")
  for text, ok in checks:
    print(f"  {text:<30} {'holds' if ok else 'does NOT hold'}")
  print(f"fusetrack_vpq={vpq['FuseTrack (VPSNet)']:.2f}")


if __name__ == "__main__":
  main()
