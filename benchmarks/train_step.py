"""Training step of VPSNet (`base`, `fusetrack`) against torchvision's Mask
R-CNN training step, on the CPU, in one run.

    python benchmarks/train_step.py [--steps 6] [--large_height 512
        --large_width 1024] [--skip_large] [--skip_torchvision]

For each (variant, size), in a fresh subprocess so that peak memory and
compile caches do not mix, through the real training path (the `tf.data`
pipeline on generated `vps_synthetic` frames of that size, prefetch to the
device, the `pmap`-ed train step with SGD): compile time, the median
steady-state step time, images/s, the fraction of the step spent waiting
for input, the peak resident memory, and the FLOPs of one step's loss and
gradients (ours: XLA's cost analysis; torchvision: `FlopCounterMode`), so
that the time ratio can be read as work done times speed of doing it.
Sizes: the synthetic config's (128x256, ResNet-18 and its small heads) and
`--large` (512x1024, the paper's ResNet-50 and head widths). The
reference is torchvision's `maskrcnn_resnet50_fpn` (random weights, the
same number of thing classes) training on the same frames at 512x1024 with
SGD, `torch.set_num_threads` = the machine's cores, no resizing.

`train_step_time_ratio_vs_torchvision=<x>`: our `base` variant's step time
at the large size (ResNet-50) over torchvision's. The last line is
`train_throughput_ratio_vs_torch=<x>`: the `base` step's GFLOP/s at the
large size over torchvision's (equal work per second; the two models do
different work).
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


def _peak_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _config(variant: str, size: str, data_dir: str):
  """`size`: "synthetic" (configs/synthetic.py: 128x256, ResNet-18, small
  heads), "tiny" (tests/vps_tiny.py: 64x128, narrow heads; the CPU run of
  benchmarks/accelerator_check.py) or "HxW" (the paper's ResNet-50 model)."""
  from configs import synthetic  # pylint: disable=g-import-not-at-top
  if size == "tiny":
    from tests import vps_tiny  # pylint: disable=g-import-not-at-top
    c = vps_tiny.config(variant)
  else:
    c = synthetic.get_config()
    c.variant = variant
  c.dataset.data_dir = data_dir
  c.per_device_batch_size = 1
  if size not in ("synthetic", "tiny"):
    h, w = (int(v) for v in size.split("x"))
    c.dataset.synthetic.height, c.dataset.synthetic.width = h, w
    c.dataset.synthetic.num_train_videos = 1
    c.input.crop_size = (h, w)
    c.input.max_instances = 50
    # The paper's model (configs/default.py): ResNet-50, full-width heads.
    from configs import default  # pylint: disable=g-import-not-at-top
    c.model = default.get_config().model
  return c


def device_memory_mb() -> dict:
  """Peak and limit of the first local device's memory (MB; NaN where the
  backend reports none, e.g. the CPU)."""
  import jax  # pylint: disable=g-import-not-at-top
  stats = jax.local_devices()[0].memory_stats() or {}
  get = lambda k: stats[k] / 2**20 if k in stats else float("nan")
  return {"peak_device_mb": get("peak_bytes_in_use"),
          "device_limit_mb": get("bytes_limit")}


def measure(variant: str, size: str, steps: int, data_dir: str,
            batch: int = 1, dtype: str = "float32", flops: bool = True
            ) -> dict:
  """One (variant, size) in this process: times of the real training path
  (`batch` images per device, compute `dtype`; `flops`: also XLA's FLOP
  count, one more compile)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from data_pipeline import sources  # pylint: disable=g-import-not-at-top
  from vpsnet_jax.train import input as input_lib  # pylint: disable=g-import-not-at-top
  from vpsnet_jax.train import optim  # pylint: disable=g-import-not-at-top
  from vpsnet_jax.train import parallel  # pylint: disable=g-import-not-at-top
  from vpsnet_jax.train import step as step_lib  # pylint: disable=g-import-not-at-top
  from vpsnet_jax.train import tasks  # pylint: disable=g-import-not-at-top
  import functools  # pylint: disable=g-import-not-at-top

  c = _config(variant, size, data_dir)
  c.per_device_batch_size = batch
  c.model.dtype = dtype
  source, index = sources.open_split(c, data_dir, "train")
  task = tasks.create_task(c, sources.meta(c))
  schedule = optim.create_learning_rate_fn(c, jax.device_count())
  key = jax.random.PRNGKey(0)
  shapes = jax.eval_shape(task.init, key)
  tx = optim.create_optimizer(c, schedule, task.trainable(shapes["params"]))
  host = step_lib.create_train_state(key, task, tx)
  par = parallel.Parallel("pmap")
  step_fn = par.wrap(functools.partial(
      step_lib.train_step, loss_fn=task.loss_fn, tx=tx, schedule=schedule),
                     True)
  state = par.put_state(host)
  batches = parallel.prefetch(
      input_lib.train_batches(source, index, c, batch), par.put_batch)
  t0 = time.perf_counter()
  state, metrics = step_fn(state, next(batches), key)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t0
  step_s, wait_s = [], []
  for _ in range(steps):
    t0 = time.perf_counter()
    batch = next(batches)
    t1 = time.perf_counter()
    state, metrics = step_fn(state, batch, key)
    jax.block_until_ready(metrics)
    t2 = time.perf_counter()
    wait_s.append(t1 - t0)
    step_s.append(t2 - t0)
  step = float(np.median(step_s))
  images = jax.device_count() * c.per_device_batch_size
  peak_mb = _peak_mb()  # before the extra compile below
  memory = device_memory_mb()
  # FLOPs of loss + gradients on one device's batch (the optimizer update is
  # negligible), from XLA's cost analysis of the compiled function.
  cost = {"flops": float("nan")}
  if flops:
    first = jax.tree_util.tree_map(
        lambda x: x[0], next(input_lib.train_batches(source, index, c, 1)))
    cost = jax.jit(jax.value_and_grad(task.loss_fn, has_aux=True)).lower(
        host.params, host.batch_stats, first, key).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {"variant": variant, "size": size, "depth": c.model.depth,
          "batch": images, "dtype": dtype,
          "gflop": float(cost["flops"]) / 1e9,
          "compile_s": compile_s - step, "step_s": step,
          "images_per_s": images / step,
          "input_wait_fraction": float(np.sum(wait_s) / np.sum(step_s)),
          "peak_mb": peak_mb, **memory,
          "loss": float(np.asarray(metrics["loss"]))}


def measure_torchvision(size: str, steps: int, data_dir: str) -> dict:
  """torchvision Mask R-CNN R50-FPN training steps on the same frames."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import torchvision  # pylint: disable=g-import-not-at-top
  from data_pipeline import sources  # pylint: disable=g-import-not-at-top
  from vpsnet_jax.train import input as input_lib  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(os.cpu_count())
  c = _config("base", size, data_dir)
  source, index = sources.open_split(c, data_dir, "train")
  meta = sources.meta(c)
  things = [i for i, cat in enumerate(meta.categories) if cat.isthing]
  h, w = c.input.crop_size
  model = torchvision.models.detection.maskrcnn_resnet50_fpn(
      weights=None, weights_backbone=None, num_classes=len(things) + 1,
      min_size=h, max_size=w, image_mean=[0.0] * 3, image_std=[1.0] * 3)
  model.train()
  opt = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9,
                        weight_decay=1e-4)
  batches = input_lib.train_batches(source, index, c, 1)

  def sample():
    b = next(batches)
    keep = b["gt_valid"][0, 0] & np.isin(b["gt_classes"][0, 0], things)
    image = torch.from_numpy(np.ascontiguousarray(
        b["image"][0, 0].transpose(2, 0, 1)))
    target = {
        "boxes": torch.from_numpy(b["gt_boxes"][0, 0][keep]),
        "labels": torch.from_numpy(np.searchsorted(
            things, b["gt_classes"][0, 0][keep]) + 1).long(),
        "masks": torch.from_numpy(b["gt_masks"][0, 0][keep])}
    return [image], [target]

  def step(images, targets):
    opt.zero_grad()
    losses = model(images, targets)
    loss = sum(losses.values())
    loss.backward()
    opt.step()
    return float(loss)

  from torch.utils.flop_counter import FlopCounterMode  # pylint: disable=g-import-not-at-top
  with FlopCounterMode(display=False) as counter:  # also the warm-up
    step(*sample())
  times = []
  for _ in range(steps):
    images, targets = sample()
    t0 = time.perf_counter()
    loss = step(images, targets)
    times.append(time.perf_counter() - t0)
  t = float(np.median(times))
  return {"variant": "torchvision maskrcnn_resnet50_fpn", "size": size,
          "depth": 50, "gflop": counter.get_total_flops() / 1e9,
          "compile_s": float("nan"), "step_s": t,
          "images_per_s": 1.0 / t, "input_wait_fraction": float("nan"),
          "peak_mb": _peak_mb(), "loss": loss}


def _write_data(size: str, data_dir: str) -> None:
  from data_pipeline import synthetic  # pylint: disable=g-import-not-at-top
  c = _config("base", size, data_dir)
  s = c.dataset.synthetic
  synthetic.write_dataset(data_dir, s.num_train_videos, 1, s.height, s.width,
                          0, progress=False)


def _child(args) -> None:
  if args.what == "torchvision":
    out = measure_torchvision(args.size, args.steps, args.data_dir)
  else:
    out = measure(args.what, args.size, args.steps, args.data_dir,
                  args.batch, args.dtype, flops=not args.no_flops)
  print("RESULT " + json.dumps(out))


def _run_child(what: str, size: str, steps: int, data_dir: str) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), "--child", what,
         "--size", size, "--steps", str(steps), "--data_dir", data_dir]
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  for line in proc.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT "):])
  raise RuntimeError(f"{what} at {size} failed:\n{proc.stderr[-3000:]}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--steps", type=int, default=6)
  parser.add_argument("--large_height", type=int, default=512)
  parser.add_argument("--large_width", type=int, default=1024)
  parser.add_argument("--skip_large", action="store_true")
  parser.add_argument("--skip_torchvision", action="store_true")
  parser.add_argument("--variants", default="base,fusetrack",
                      help="comma-separated variants to measure")
  parser.add_argument("--child", dest="what", default=None,
                      help="internal: measure one configuration")
  parser.add_argument("--size", default="synthetic")
  parser.add_argument("--data_dir", default="")
  parser.add_argument("--batch", type=int, default=1,
                      help="internal: images per device")
  parser.add_argument("--dtype", default="float32",
                      help="internal: compute dtype")
  parser.add_argument("--no_flops", action="store_true",
                      help="internal: skip the FLOP count's compile")
  args = parser.parse_args()
  if args.what:
    _child(args)
    return

  large = f"{args.large_height}x{args.large_width}"
  sizes = ["synthetic"] + ([] if args.skip_large else [large])
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for size in sizes:
      data_dir = os.path.join(tmp, size)
      _write_data(size, data_dir)
      for variant in args.variants.split(","):
        rows.append(_run_child(variant, size, args.steps, data_dir))
        print(f"measured {variant} at {size}", file=sys.stderr)
      if size == large and not args.skip_torchvision:
        rows.append(_run_child("torchvision", size, args.steps, data_dir))
  print(f"CPU: {os.cpu_count()} cores, load average "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}; median of "
        f"{args.steps} steps after the first (batch 1, one device)")
  head = (f"{'model':<36}{'size':>10}{'R':>4}{'GFLOP':>7}{'compile s':>11}"
          f"{'step s':>9}{'GFLOP/s':>9}{'img/s':>8}{'input wait':>12}"
          f"{'peak MB':>9}")
  print(head)
  for r in rows:
    print(f"{r['variant']:<36}{r['size']:>10}{r['depth']:>4}{r['gflop']:>7.0f}"
          f"{r['compile_s']:>11.1f}{r['step_s']:>9.3f}"
          f"{r['gflop'] / r['step_s']:>9.1f}"
          f"{r['images_per_s']:>8.2f}{r['input_wait_fraction']:>12.1%}"
          f"{r['peak_mb']:>9.0f}")
  ours = [r for r in rows if r["variant"] == "base" and r["size"] == large]
  ref = [r for r in rows if r["variant"].startswith("torchvision")]
  if ours and ref:
    ratio = ours[0]["step_s"] / ref[0]["step_s"]
    throughput = ((ours[0]["gflop"] / ours[0]["step_s"]) /
                  (ref[0]["gflop"] / ref[0]["step_s"]))
    print(f"train_step_time_ratio_vs_torchvision={ratio:.3f}")
    print(f"train_throughput_ratio_vs_torch={throughput:.3f}")
  else:
    print("train_step_time_ratio_vs_torchvision=nan")
    print("train_throughput_ratio_vs_torch=nan")


if __name__ == "__main__":
  main()
