"""Peak memory and time of the training step with activation
rematerialisation (`config.model.remat`), on the CPU.

    python benchmarks/remat.py [--height 512 --width 1024]
        [--variant fusetrack] [--steps 2] [--modes none,backbone,heads,all]

For each mode, in a fresh subprocess: the paper's model (ResNet-50, full
head widths) of `--variant` at HxW, batch 1, its loss and gradients jitted
on one frame pair of generated `vps_synthetic` data. Reported: XLA's
planned temporary memory of the compiled step (`memory_analysis()`:
activations kept for the backward pass and scratch; what remat trades),
the process's peak resident memory after running it, compile time and the
median step time. The last line is `remat_all_peak_temp_ratio=<x>`: the
planned temporary memory with remat='all' over remat='none'.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

MODES = ("none", "backbone", "heads", "all")


def measure(mode: str, variant: str, size: str, steps: int,
            data_dir: str) -> dict:
  """One remat mode in this process."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from benchmarks import train_step  # pylint: disable=g-import-not-at-top
  from data_pipeline import sources  # pylint: disable=g-import-not-at-top
  from vpsnet_jax.train import input as input_lib  # pylint: disable=g-import-not-at-top
  from vpsnet_jax.train import tasks  # pylint: disable=g-import-not-at-top

  c = train_step._config(variant, size, data_dir)  # pylint: disable=protected-access
  c.model.remat = mode
  source, index = sources.open_split(c, data_dir, "train")
  task = tasks.create_task(c, sources.meta(c))
  key = jax.random.PRNGKey(0)
  variables = jax.jit(task.init)(key)
  batch = jax.tree_util.tree_map(
      lambda x: x[0], next(input_lib.train_batches(source, index, c, 1)))
  keys = jax.random.split(key, 1)
  grad = jax.jit(jax.value_and_grad(task.loss_fn, has_aux=True))
  t0 = time.perf_counter()
  compiled = grad.lower(variables["params"], variables["batch_stats"],
                        batch, keys).compile()
  compile_s = time.perf_counter() - t0
  memory = compiled.memory_analysis()
  times = []
  for _ in range(steps + 1):
    t0 = time.perf_counter()
    (loss, _), _ = compiled(variables["params"], variables["batch_stats"],
                            batch, keys)
    jax.block_until_ready(loss)
    times.append(time.perf_counter() - t0)
  return {"mode": mode, "variant": variant, "size": size,
          "temp_mb": memory.temp_size_in_bytes / 2**20,
          "argument_mb": memory.argument_size_in_bytes / 2**20,
          "peak_rss_mb": resource.getrusage(
              resource.RUSAGE_SELF).ru_maxrss / 1024,
          "compile_s": compile_s, "step_s": float(np.median(times[1:])),
          "loss": float(loss)}


def _run_child(mode, args, data_dir) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), "--child", mode,
         "--variant", args.variant, "--height", str(args.height), "--width",
         str(args.width), "--steps", str(args.steps), "--data_dir", data_dir]
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  for line in proc.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT "):])
  raise RuntimeError(f"remat={mode} failed:\n{proc.stderr[-3000:]}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--height", type=int, default=512)
  parser.add_argument("--width", type=int, default=1024)
  parser.add_argument("--variant", default="fusetrack")
  parser.add_argument("--steps", type=int, default=2)
  parser.add_argument("--modes", default=",".join(MODES))
  parser.add_argument("--child", default=None, help="internal")
  parser.add_argument("--data_dir", default="")
  args = parser.parse_args()
  size = f"{args.height}x{args.width}"
  if args.child:
    print("RESULT " + json.dumps(measure(args.child, args.variant, size,
                                         args.steps, args.data_dir)))
    return
  from benchmarks import train_step  # pylint: disable=g-import-not-at-top
  modes = args.modes.split(",")
  for m in modes:
    if m not in MODES:
      parser.error(f"--modes: {m!r} is not one of {MODES}")
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    train_step._write_data(size, tmp)  # pylint: disable=protected-access
    for mode in modes:
      rows.append(_run_child(mode, args, tmp))
      print(f"measured remat={mode}", file=sys.stderr)
  print(f"CPU: {os.cpu_count()} cores, load average "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}; {args.variant}, "
        f"ResNet-50, {size}, batch 1, loss + gradients, median of "
        f"{args.steps} steps after the first")
  print(f"{'remat':<10}{'temp MB':>9}{'args MB':>9}{'peak RSS MB':>13}"
        f"{'compile s':>11}{'step s':>8}{'loss':>10}")
  for r in rows:
    print(f"{r['mode']:<10}{r['temp_mb']:>9.0f}{r['argument_mb']:>9.0f}"
          f"{r['peak_rss_mb']:>13.0f}{r['compile_s']:>11.1f}"
          f"{r['step_s']:>8.2f}{r['loss']:>10.4f}")
  by = {r["mode"]: r for r in rows}
  if "none" in by and "all" in by:
    print("remat_all_peak_temp_ratio="
          f"{by['all']['temp_mb'] / by['none']['temp_mb']:.3f}")
  else:
    print("remat_all_peak_temp_ratio=nan")


if __name__ == "__main__":
  main()
