"""Cost of the release's semantic head and loss against the paper's, on
the CPU, with a PyTorch implementation of the release's head in the same
run.

    python benchmarks/semantic_loss.py [--height 256 --width 512]
        [--steps 5] [--skip_torch]

Forward + backward of the UPSNet semantic head (deformable 3x3 stack shared
over P2..P5, GroupNorm 32, 1x1 logits, x4 bilinear upsampling) and its
cross-entropy, for FPN-256 levels of an H x W image, 19 classes, batch 1:

  widths (128, 128, 128), loss at 1/4   this project's earlier default
  widths (256, 128, 128), loss at 1/4   the release's head, the paper's loss
  widths (256, 128, 128), loss at 1/1   the release (model.semantic_loss=
                                        "full", the default)

and the last configuration in PyTorch (`torchvision.ops.deform_conv2d`,
`F.cross_entropy` of the upsampled logits against full-resolution labels,
`torch.set_num_threads` = the machine's cores). Median of `--steps` after
one warm-up (ours: after the compile). The last line is
`semantic_full_over_quarter=<x>`: the release's loss time over the
quarter-scale loss's, same (256, 128, 128) head.
"""

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402


def _median_time(fn, steps):
  fn()
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def _levels(rng, h, w, c=256):
  return [rng.standard_normal((1, h // s, w // s, c)).astype(np.float32)
          for s in (4, 8, 16, 32)]


def jax_time(widths, loss_scale, h, w, steps, num_classes=19):
  import jax  # pylint: disable=import-outside-toplevel
  from vpsnet_jax.modeling import semantic_head  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  levels = _levels(rng, h, w)
  labels_full = rng.integers(0, num_classes, (1, h, w)).astype(np.int32)
  labels_q = labels_full[:, ::4, ::4]
  head = semantic_head.SemanticHead(num_classes, widths, 32)
  params = head.init(jax.random.PRNGKey(0), levels)

  def loss(p, lv):
    quarter, full = head.apply(p, lv)
    if loss_scale == "full":
      return semantic_head.semantic_loss(full, labels_full)
    return semantic_head.semantic_loss(quarter, labels_q)

  grad = jax.jit(jax.value_and_grad(loss))
  return _median_time(
      lambda: jax.block_until_ready(grad(params, levels)), steps)


def torch_time(h, w, steps, num_classes=19):
  import torchvision  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  from torch import nn  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(os.cpu_count() or 1)
  torch.manual_seed(0)

  class DeformBlock(nn.Module):
    def __init__(self, cin, cout):
      super().__init__()
      self.offset = nn.Conv2d(cin, 18, 3, padding=1)
      self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3) * 0.01)
      self.norm = nn.GroupNorm(32, cout)

    def forward(self, x):
      y = torchvision.ops.deform_conv2d(x, self.offset(x), self.weight,
                                        padding=1)
      return F.relu(self.norm(y))

  stack = nn.Sequential(DeformBlock(256, 256), DeformBlock(256, 128),
                        DeformBlock(128, 128))
  pred = nn.Conv2d(512, num_classes, 1)
  rng = np.random.default_rng(0)
  levels = [torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
            for x in _levels(rng, h, w)]
  labels = torch.from_numpy(
      rng.integers(0, num_classes, (1, h, w)).astype(np.int64))

  def step():
    stack.zero_grad()
    pred.zero_grad()
    outs = [stack(p) for p in levels]
    size = outs[0].shape[-2:]
    outs = [outs[0]] + [F.interpolate(o, size=size, mode="bilinear",
                                      align_corners=False) for o in outs[1:]]
    logits = F.interpolate(pred(torch.cat(outs, 1)), scale_factor=4,
                           mode="bilinear", align_corners=False)
    F.cross_entropy(logits, labels, ignore_index=255).backward()

  return _median_time(step, steps)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--height", type=int, default=256)
  parser.add_argument("--width", type=int, default=512)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--skip_torch", action="store_true")
  args = parser.parse_args()
  h, w = args.height, args.width
  if h % 32 or w % 32:
    parser.error("--height and --width must be multiples of 32")
  rows = [("(128, 128, 128), 1/4", (128, 128, 128), "quarter"),
          ("(256, 128, 128), 1/4", (256, 128, 128), "quarter"),
          ("(256, 128, 128), full (release)", (256, 128, 128), "full")]
  times = {}
  print(f"semantic head + loss, forward + backward, {h}x{w}, FPN 256, "
        f"19 classes, batch 1, median of {args.steps}")
  print(f"{'configuration':<36}{'time (s)':>10}")
  for name, widths, scale in rows:
    times[name] = jax_time(widths, scale, h, w, args.steps)
    print(f"{name:<36}{times[name]:>10.3f}", flush=True)
  if not args.skip_torch:
    t = torch_time(h, w, args.steps)
    print(f"{'PyTorch (256, 128, 128), full':<36}{t:>10.3f}")
  ratio = times[rows[2][0]] / times[rows[1][0]]
  print(f"semantic_full_over_quarter={ratio:.3f}")


if __name__ == "__main__":
  main()
