"""VPSNet CPU benchmark: deformable conv vs torchvision and a plain conv.

Usage: python benchmarks/vpsnet.py [--repeats 5] [--shape N,H,W,Cin,Cout]
    [--skip_backward] [--skip_memory] [--skip_fuse]

Shapes default to the semantic head's first deformable conv at P2 for a
512x1024 image: N=1, 128x256, 256 -> 128 channels, 3x3, stride 1, pad 1.
Ours, torchvision's and the plain conv run on the same inputs, interleaved
(one of each per round) so that other load on the machine hits all of them;
the table reports medians. The correlation and Fuse rows run on gathered
features of Cin channels at HxW (the neck's P2 map); the VPSNet rows time
the whole per-frame inference (`VPSNet.infer`, ResNet-50, random weights) of
the `base` and `fuse` variants on the same 512x1024 input, with their FLOPs
from XLA's cost analysis of the compiled function. Peak memory is the growth
of the peak resident set over the first call in a fresh process (VmHWM after
resetting it, minus VmRSS before), inputs already built and JAX functions
already compiled.

The last line printed is `deform_conv_time_ratio_vs_torchvision=<x>`, our
forward time over torchvision's.
"""
import argparse
import os
import subprocess
import sys
import time

# configs/ is read from the checkout (it is not installed).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np
import torch
import torchvision

from vpsnet_jax.modeling.fuse import Fuse
from vpsnet_jax.ops.correlation import correlation
from vpsnet_jax.ops.deform_conv import deform_conv2d



def make_inputs(n, h, w, cin, cout, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, h, w, cin)).astype(np.float32)
  offset = (2.0 * rng.standard_normal((n, h, w, 18))).astype(np.float32)
  kernel = (0.05 * rng.standard_normal((3, 3, cin, cout))).astype(np.float32)
  return x, offset, kernel


def to_torch(x, offset, kernel):
  return (torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(),
          torch.from_numpy(offset).permute(0, 3, 1, 2).contiguous(),
          torch.from_numpy(kernel).permute(3, 2, 0, 1).contiguous())


def plain_conv(x, kernel):
  return jax.lax.conv_general_dilated(
      x, kernel, (1, 1), ((1, 1), (1, 1)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def ours_fwd_bwd(x, offset, kernel):
  return jax.grad(lambda a, b, c: jnp.sum(deform_conv2d(a, b, c)),
                  argnums=(0, 1, 2))(x, offset, kernel)


def build(x, offset, kernel, only=None):
  """name -> (callable running once and blocking, compile seconds or None).

  `only`: compile just this one of the JAX functions.
  """
  fns = {}
  for name, fn, args in (
      ("ours", deform_conv2d, (x, offset, kernel)),
      ("plain", plain_conv, (x, kernel)),
      ("ours_fwd_bwd", ours_fwd_bwd, (x, offset, kernel)),
  ):
    if only is not None and name != only:
      continue
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    fns[name] = (lambda c=compiled, a=args: jax.block_until_ready(c(*a)),
                 compile_s)
  xt, ot, kt = to_torch(x, offset, kernel)

  def tv():
    with torch.no_grad():
      return torchvision.ops.deform_conv2d(xt, ot, kt, padding=1)

  def tv_fwd_bwd():
    a, b, c = [t.clone().requires_grad_(True) for t in (xt, ot, kt)]
    torchvision.ops.deform_conv2d(a, b, c, padding=1).sum().backward()
    return a.grad

  fns["torchvision"] = (tv, None)
  fns["torchvision_fwd_bwd"] = (tv_fwd_bwd, None)
  return fns


def compile_and_time(fn, args, repeats):
  """(compile s, median s, min s, FLOPs from XLA's cost analysis) of
  `jax.jit(fn)` on `args`."""
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float((cost or {}).get("flops", float("nan")))
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  return compile_s, float(np.median(times)), min(times), flops


def time_video_parts(n, h, w, c, repeats):
  """Compile and median forward time of the Fuse module and correlation.

  Fuse (align + attend) on gathered features at P2 size with constant
  weights (its cost does not depend on the weight values).
  """
  rng = np.random.default_rng(1)
  target = rng.standard_normal((n, h, w, c)).astype(np.float32)
  reference = rng.standard_normal((n, h, w, c)).astype(np.float32)
  flow = rng.uniform(-2, 2, (n, h, w, 2)).astype(np.float32)
  has_ref = np.ones((n,), bool)
  model = Fuse()
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), target,
                          reference, flow, has_ref)
  params = jax.tree_util.tree_map(
      lambda s: np.full(s.shape, 0.01, np.float32), shapes)
  rows = {}
  for name, fn, args in (
      ("correlation", correlation, (target, reference)),
      ("fuse", model.apply, (params, target, reference, flow, has_ref)),
  ):
    rows[name] = compile_and_time(fn, args, repeats)[:3]
  return rows


def time_fuse_vs_base(height, width, repeats):
  """Median `VPSNet.infer` time of the `fuse` and `base` variants (the
  paper's ResNet-50 model, random weights, same input, the fuse variant
  with a reference and a flow), and their compile times."""
  from configs import default  # pylint: disable=g-import-not-at-top
  from data_pipeline import metadata  # pylint: disable=g-import-not-at-top
  from vpsnet_jax.modeling import vpsnet  # pylint: disable=g-import-not-at-top
  from vpsnet_jax import experiment  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(2)
  images = rng.standard_normal((1, height, width, 3)).astype(np.float32)
  size = np.array([[height, width]], np.int32)
  flow = rng.uniform(-2, 2, (1, height // 4, width // 4, 2)).astype(
      np.float32)
  rows = {}
  for variant in ("base", "fuse"):
    c = default.get_config()
    c.variant = variant
    model = vpsnet.VPSNet(experiment.model_config(c, metadata.CITYSCAPES_VPS))
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), images)
    ref = np.asarray(jax.jit(lambda v, x: model.apply(
        v, x, method=model.features))(variables, images)[0])
    ref = rng.standard_normal(ref.shape).astype(np.float32)
    fn = lambda v, i, s, r, f, h: model.apply(v, i, s, r, f, h,
                                              method=model.infer)
    args = (variables, images, size, ref, flow, np.ones((1,), bool))
    rows[variant] = compile_and_time(fn, args, repeats)
  return rows


def _status_mb(field):
  with open("/proc/self/status", encoding="ascii") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) / 1024.0
  raise RuntimeError(f"{field} not in /proc/self/status")


def peak_mb(fn):
  """Peak resident memory (MB) one call adds over the resident set before it.

  Resets the kernel's high-water mark (VmHWM, via /proc/self/clear_refs) so
  that earlier steps do not hide this call; Linux only.
  """
  try:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
      f.write("5")
  except OSError:
    return float("nan")
  before = _status_mb("VmRSS")
  fn()
  return max(_status_mb("VmHWM") - before, 0.0)


def peak_in_fresh_process(name, shape):
  """`peak_mb` of the first call of `name` in a new process.

  A fresh process, because allocators keep freed memory for reuse: a warm
  call in this process would reuse it and show almost no growth.
  """
  cmd = [sys.executable, os.path.abspath(__file__), "--peak_of", name,
         "--shape", ",".join(str(s) for s in shape)]
  out = subprocess.run(cmd, capture_output=True, text=True, check=True)
  return float(out.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--shape", default="1,128,256,256,128",
                      help="N,H,W,Cin,Cout")
  parser.add_argument("--skip_backward", action="store_true")
  parser.add_argument("--skip_memory", action="store_true")
  parser.add_argument("--skip_fuse", action="store_true",
                      help="skip timing the Fuse module and correlation")
  parser.add_argument("--skip_model", action="store_true",
                      help="skip the fuse-vs-base model inference timing")
  parser.add_argument("--model_size", default="512,1024",
                      help="H,W of the fuse-vs-base model timing")
  parser.add_argument("--peak_of", default=None,
                      help="internal: print the first-call peak of one op")
  args = parser.parse_args()
  shape = tuple(int(s) for s in args.shape.split(","))
  if args.peak_of:
    fn = build(*make_inputs(*shape), only=args.peak_of)[args.peak_of][0]
    print(peak_mb(fn))
    return

  n, h, w, cin, cout = shape
  x, offset, kernel = make_inputs(*shape)
  fns = build(x, offset, kernel)
  names = ["ours", "torchvision", "plain"]
  if not args.skip_backward:
    names += ["ours_fwd_bwd", "torchvision_fwd_bwd"]
  for name in names:  # Warm-up round.
    fns[name][0]()
  times = {name: [] for name in names}
  for _ in range(args.repeats):
    for name in names:
      t0 = time.perf_counter()
      fns[name][0]()
      times[name].append(time.perf_counter() - t0)
  med = {name: float(np.median(ts)) for name, ts in times.items()}
  peaks = {}
  if not args.skip_memory:
    for name in names:
      peaks[name] = peak_in_fresh_process(name, shape)

  labels = {
      "ours": "deform_conv2d (ours, XLA)",
      "torchvision": "torchvision.ops.deform_conv2d",
      "plain": "plain 3x3 conv (jax.lax.conv)",
      "ours_fwd_bwd": "deform_conv2d fwd+bwd (ours)",
      "torchvision_fwd_bwd": "torchvision fwd+bwd",
  }
  print(f"jax {jax.__version__} ({jax.default_backend()}), torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), "
        f"{os.cpu_count()} CPUs, load average "
        f"{', '.join(f'{l:.2f}' for l in os.getloadavg())}")
  print(f"N={n}, {h}x{w}, {cin}->{cout} channels, 3x3, stride 1, pad 1; "
        f"median of {args.repeats} interleaved rounds")
  print(f"{'op':<34}{'compile s':>10}{'median s':>10}{'min s':>9}"
        f"{'peak MB':>9}")
  for name in names:
    compile_s = fns[name][1]
    cs = f"{compile_s:.2f}" if compile_s is not None else "-"
    pk = f"{peaks[name]:.0f}" if name in peaks else "-"
    print(f"{labels[name]:<34}{cs:>10}{med[name]:>10.3f}"
          f"{min(times[name]):>9.3f}{pk:>9}")
  if not args.skip_fuse:
    video = time_video_parts(n, h, w, cin, max(1, args.repeats // 2))
    for name, label in (("correlation", "correlation (d=4, ours)"),
                        ("fuse", "Fuse module (align + attend)")):
      compile_s, median_s, min_s = video[name]
      print(f"{label:<34}{compile_s:>10.2f}{median_s:>10.3f}{min_s:>9.3f}"
            f"{'-':>9}")
  ratio_tv = med["ours"] / med["torchvision"]
  ratio_plain = med["ours"] / med["plain"]
  print(f"ours / torchvision: {ratio_tv:.3f} (target <= 0.25)")
  print(f"ours / plain conv: {ratio_plain:.2f} (target <= 3)")
  if "ours_fwd_bwd" in med:
    print(f"fwd+bwd ours / torchvision: "
          f"{med['ours_fwd_bwd'] / med['torchvision_fwd_bwd']:.3f}")
  if not args.skip_model:
    mh, mw = (int(v) for v in args.model_size.split(","))
    models = time_fuse_vs_base(mh, mw, max(1, args.repeats // 2))
    for name in ("base", "fuse"):
      compile_s, median_s, min_s, flops = models[name]
      label = f"VPSNet {name} infer {mh}x{mw} R50"
      print(f"{label:<34}{compile_s:>10.2f}{median_s:>10.3f}{min_s:>9.3f}"
            f"{'-':>9}  ({flops / 1e9:.0f} GFLOP, XLA cost analysis)")
    extra = models["fuse"][1] / models["base"][1] - 1.0
    extra_flops = models["fuse"][3] / models["base"][3] - 1.0
    print(f"fuse vs base extra inference time: {extra:+.1%} (target <= 25%);"
          f" extra FLOPs: {extra_flops:+.1%}")
  print(f"deform_conv_time_ratio_vs_torchvision={ratio_tv:.4f}")


if __name__ == "__main__":
  main()
