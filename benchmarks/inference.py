"""Speed of the full online pipeline: model + tracker + panoptic fusion +
writing, frame by frame, on the CPU.

    python benchmarks/inference.py [--frames 12] [--workdir DIR]
        [--skip_large]

Two sizes, each in a fresh process: the synthetic config's (128x256,
ResNet-18 and its small heads; with --workdir, that workdir's trained
checkpoint, else random weights) and 512x1024 (the paper's ResNet-50 model,
random weights). The frames are a generated synthetic clip written to a
folder, run as `--mode=predict` does (every frame written, GIF/MP4 not
included), with the DIS flow of the input pipeline and the track-head
tracker. With random weights the panoptic detection threshold is lowered to
0.2 so that the tracker and the fusion have instances to work on. Reported:
frames per second after the first (compiling) frame, and the share of the
wall time of each stage (input = waiting for the pipeline, model = waiting
for the device). The last line is `inference_fps_512x1024=<x>`.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

STAGES = ("input", "model", "tracker", "fusion", "write")


def measure(size: str, frames: int, workdir: str) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from configs import default, synthetic as synthetic_config  # pylint: disable=g-import-not-at-top
  from data_pipeline import synthetic  # pylint: disable=g-import-not-at-top
  from vpsnet_jax.inference import online, run  # pylint: disable=g-import-not-at-top
  from vpsnet_jax.modeling import vpsnet  # pylint: disable=g-import-not-at-top
  from data_pipeline import sources  # pylint: disable=g-import-not-at-top
  from vpsnet_jax import experiment  # pylint: disable=g-import-not-at-top
  from vpsnet_jax.train import tasks  # pylint: disable=g-import-not-at-top

  c = synthetic_config.get_config()
  c.input.flow = "dis"
  h, w = (128, 256) if size == "synthetic" else (
      int(v) for v in size.split("x"))
  if size != "synthetic":
    c.model = default.get_config().model
  meta = sources.meta(c)
  task = tasks.create_task(c, meta)
  if workdir and size == "synthetic":
    variables, _ = run.load_variables(c, workdir, meta)
    weights = "trained"
  else:
    variables = jax.device_get(jax.jit(task.init)(jax.random.PRNGKey(0)))
    c.model.panoptic_score_threshold = 0.2
    weights = "random"
  with tempfile.TemporaryDirectory() as tmp:
    video = synthetic.generate_video(
        synthetic.SyntheticConfig(height=h, width=w), 7, "val", 0)
    folder = os.path.join(tmp, "frames")
    os.makedirs(folder)
    for i in range(frames + 1):
      Image.fromarray(video.frames[i % len(video.frames)]).save(
          os.path.join(folder, f"f{i:04d}.png"))
    source = sources.FolderSource(folder)
    model = online.FrameModel(vpsnet.VPSNet(experiment.model_config(c, meta)),
                              variables, devices=jax.local_devices()[:1])
    # The first frame compiles: time it alone, then the rest.
    first = sources.FolderSource(folder)
    first.paths, first.image_ids = first.paths[:1], first.image_ids[:1]
    t0 = time.perf_counter()
    online.predict_videos(c, model, first, first.index(), first.image_ids,
                          os.path.join(tmp, "warm"), meta, write_all=True,
                          progress=False)
    compile_s = time.perf_counter() - t0
    stats = online.predict_videos(c, model, source, source.index(),
                                  source.image_ids, os.path.join(tmp, "out"),
                                  meta, write_all=True, progress=False)
  memory = jax.local_devices()[0].memory_stats() or {}
  return {"size": f"{h}x{w}", "depth": c.model.depth, "weights": weights,
          "peak_device_mb": memory.get("peak_bytes_in_use",
                                       float("nan") * 2**20) / 2**20,
          "frames": stats["frames"], "compile_s": compile_s,
          "fps": stats["fps"], "seconds": stats["seconds"],
          **{s: stats[s] for s in STAGES}}


def _run_child(size, frames, workdir):
  cmd = [sys.executable, os.path.abspath(__file__), "--child", size,
         "--frames", str(frames)] + (["--workdir", workdir] if workdir else [])
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  for line in proc.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT "):])
  raise RuntimeError(f"{size} failed:\n{proc.stderr[-3000:]}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--frames", type=int, default=12)
  parser.add_argument("--workdir", default="",
                      help="a trained synthetic workdir (else random weights)")
  parser.add_argument("--skip_large", action="store_true")
  parser.add_argument("--child", default=None, help="internal")
  args = parser.parse_args()
  if args.child:
    print("RESULT " + json.dumps(measure(args.child, args.frames,
                                         args.workdir)))
    return
  sizes = ["synthetic"] + ([] if args.skip_large else ["512x1024"])
  rows = [_run_child(s, args.frames, args.workdir) for s in sizes]
  print(f"CPU: {os.cpu_count()} cores, load average "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}; "
        f"{args.frames} frames after a first compiling frame, one device")
  print(f"{'size':>10}{'R':>4}{'weights':>9}{'compile s':>11}{'frames/s':>10}"
        + "".join(f"{s:>9}" for s in STAGES))
  for r in rows:
    share = {s: r[s] / r["seconds"] for s in STAGES}
    print(f"{r['size']:>10}{r['depth']:>4}{r['weights']:>9}"
          f"{r['compile_s']:>11.1f}{r['fps']:>10.2f}"
          + "".join(f"{share[s]:>9.1%}" for s in STAGES))
  large = [r for r in rows if r["size"] == "512x1024"]
  print(f"inference_fps_512x1024={large[0]['fps']:.3f}" if large else
        "inference_fps_512x1024=nan")


if __name__ == "__main__":
  main()
