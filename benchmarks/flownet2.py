"""FlowNet2 forward time per image pair on the CPU: this project's Flax
port against the PyTorch implementation of the tests (the official
definitions, `tests/modeling/flownet2_torch.py`, same threads) and
against OpenCV DIS (medium preset, the host-side stand-in) on the same
frames.

    python benchmarks/flownet2.py [--sizes 512x1024,1024x2048] [--steps 2]
        [--skip_torch]

Each measurement runs in its own process (so that peak memory is its own):
random weights of the official shapes (162,518,834 values), a pair of
synthetic frames with a known shift, forward only, batch 1; the median of
`--steps` timed calls after one warm-up (JAX: after the compile, whose time
is reported). Columns: time per pair, compile time (JAX), peak resident
memory of the process. The last line is
`flownet2_time_ratio_vs_torch=<ours / PyTorch>` at the largest size.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402


def _frames(h, w):
  """Two uint8 RGB frames: a smooth random texture and the same shifted by
  (3, 2) pixels."""
  rng = np.random.default_rng(0)
  small = rng.uniform(0, 255, (h // 8 + 2, w // 8 + 2, 3)).astype(np.float32)
  import cv2  # pylint: disable=import-outside-toplevel
  big = cv2.resize(small, (w + 16, h + 16), interpolation=cv2.INTER_CUBIC)
  a = np.clip(big[8:8 + h, 8:8 + w], 0, 255).astype(np.uint8)
  b = np.clip(big[6:6 + h, 5:5 + w], 0, 255).astype(np.uint8)
  return a, b


def _median(fn, steps):
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def _peak_mb():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker_jax(h, w, steps):
  import jax  # pylint: disable=import-outside-toplevel
  from vpsnet_jax.modeling import flownet2  # pylint: disable=import-outside-toplevel
  from vpsnet_jax.ops import conv  # pylint: disable=import-outside-toplevel
  impl = conv.resolve_conv_impl("auto")
  a, b = (x.astype(np.float32)[None] for x in _frames(h, w))
  net = flownet2.FlowNet2(conv_impl=impl)
  small = np.zeros((1, 64, 64, 3), np.float32)
  variables = jax.jit(net.init)(jax.random.PRNGKey(0), small, small)
  variables = jax.tree_util.tree_map(lambda x: x * 0.3, variables)
  fn = jax.jit(net.apply)
  t0 = time.perf_counter()
  jax.block_until_ready(fn(variables, a, b))
  first = time.perf_counter() - t0
  t = _median(lambda: jax.block_until_ready(fn(variables, a, b)), steps)
  return {"time": t, "compile": first - t, "peak_mb": _peak_mb(),
          "impl": impl}


def worker_torch(h, w, steps):
  import torch  # pylint: disable=import-outside-toplevel
  from tests.modeling import flownet2_torch as ref  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(os.cpu_count() or 1)
  model = ref.FlowNet2().eval()
  ref.init_random(model, 0)
  a, b = _frames(h, w)
  inputs = torch.from_numpy(
      np.stack([a, b], 0).astype(np.float32)).permute(3, 0, 1, 2)[None]
  with torch.no_grad():
    model(inputs)
    t = _median(lambda: model(inputs), steps)
  return {"time": t, "compile": 0.0, "peak_mb": _peak_mb()}


def worker_dis(h, w, steps):
  from data_pipeline import transforms  # pylint: disable=import-outside-toplevel
  a, b = _frames(h, w)
  transforms.dis_flow(a, b)
  t = _median(lambda: transforms.dis_flow(a, b), steps)
  return {"time": t, "compile": 0.0, "peak_mb": _peak_mb()}


WORKERS = {"jax": worker_jax, "torch": worker_torch, "dis": worker_dis}


def _run(name, h, w, steps):
  proc = subprocess.run(
      [sys.executable, os.path.abspath(__file__), "--worker", name,
       "--sizes", f"{h}x{w}", "--steps", str(steps)], cwd=ROOT,
      capture_output=True, text=True, check=False)
  if proc.returncode:
    raise RuntimeError(f"{name} at {h}x{w} failed:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="512x1024,1024x2048")
  parser.add_argument("--steps", type=int, default=2)
  parser.add_argument("--skip_torch", action="store_true")
  parser.add_argument("--worker", choices=sorted(WORKERS))
  args = parser.parse_args()
  sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
  for h, w in sizes:
    if h % 64 or w % 64:
      parser.error(f"size {h}x{w}: FlowNet2 needs multiples of 64")
  if args.worker:
    print(json.dumps(WORKERS[args.worker](*sizes[0], args.steps)))
    return
  names = ["jax", "dis"] + ([] if args.skip_torch else ["torch"])
  print(f"FlowNet2 forward per image pair, CPU ({os.cpu_count()} cores), "
        f"median of {args.steps} after a warm-up")
  print(f"{'size':<11}{'implementation':<30}{'time (s)':>10}"
        f"{'compile (s)':>13}{'peak (MB)':>11}")
  results = {}
  for h, w in sizes:
    for name in names:
      r = results[h, w, name] = _run(name, h, w, args.steps)
      label = {"jax": f"ours (JAX, conv {r.get('impl')})",
               "torch": "PyTorch reference",
               "dis": "OpenCV DIS (medium)"}[name]
      print(f"{f'{h}x{w}':<11}{label:<30}{r['time']:>10.3f}{r['compile']:>13.1f}"
            f"{r['peak_mb']:>11.0f}", flush=True)
  if not args.skip_torch:
    h, w = sizes[-1]
    ratio = results[h, w, "jax"]["time"] / results[h, w, "torch"]["time"]
    print(f"flownet2_time_ratio_vs_torch={ratio:.3f}")


if __name__ == "__main__":
  main()
