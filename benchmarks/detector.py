"""Mask R-CNN R50-FPN inference and training step: ours against torchvision.

Both models get the same weights (imported with
`vpsnet_jax.checkpoints.maskrcnn_import`) and the same normalised input, on
the CPU, in one run:

* inference time per frame at 512x1024 (torchvision's resize disabled),
  median of repeats after warm-up, and our compile time;
* peak host memory (RSS) after each;
* our training step time (loss + gradients + SGD update) at a small size.

    python benchmarks/detector.py [--height 512 --width 1024 --repeats 5]

The last line is `inference_time_ratio_vs_torchvision=<x>` (ours over
torchvision's; below 1 is faster).
"""

import argparse
import functools
import os
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import optax
import torch
import torchvision
from torchvision.models.detection.image_list import ImageList

from vpsnet_jax.checkpoints import maskrcnn_import
from vpsnet_jax.modeling import detector


def _rss_mb():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _median_time(fn, repeats):
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--height", type=int, default=512)
  parser.add_argument("--width", type=int, default=1024)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--classes", type=int, default=8)
  parser.add_argument("--train_height", type=int, default=256)
  parser.add_argument("--train_width", type=int, default=512)
  args = parser.parse_args()
  h, w, k = args.height, args.width, args.classes + 1
  print(f"CPU threads: torch {torch.get_num_threads()}, "
        f"{os.cpu_count()} cores; jax {jax.__version__}, "
        f"torch {torch.__version__}", file=sys.stderr)

  torch.manual_seed(0)
  tv = torchvision.models.detection.maskrcnn_resnet50_fpn(
      weights=None, weights_backbone=None, num_classes=k, min_size=h,
      max_size=w).eval()
  cfg = detector.DetectorConfig(num_classes=args.classes, depth=50,
                                offset=0.0, anchor_style="torchvision",
                                max_candidates=None)
  model = detector.MaskRCNN(cfg)
  images = np.random.default_rng(0).normal(size=(1, h, w, 3)).astype(
      np.float32)

  t = time.perf_counter()
  init = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.asarray(images))
  variables = maskrcnn_import.import_maskrcnn(tv.state_dict(), init)
  variables = jax.device_put(variables)
  init_s = time.perf_counter() - t

  detect = jax.jit(functools.partial(model.apply, method=model.detect))
  size = jnp.array([[h, w]], jnp.int32)
  x = jnp.asarray(images)
  t = time.perf_counter()
  jax.block_until_ready(detect(variables, x, size))
  compile_s = time.perf_counter() - t
  ours_s = _median_time(
      lambda: jax.block_until_ready(detect(variables, x, size)), args.repeats)
  ours_rss = _rss_mb()

  xt = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()

  def tv_detect():
    with torch.no_grad():
      feats = tv.backbone(xt)
      il = ImageList(xt, [(h, w)])
      props, _ = tv.rpn(il, feats)
      dets, _ = tv.roi_heads(feats, props, il.image_sizes)
      tv.transform.postprocess(dets, il.image_sizes, [(h, w)])  # paste masks

  tv_detect()
  tv_s = _median_time(tv_detect, args.repeats)
  tv_rss = _rss_mb()

  # Training step at a small size (ours): loss, gradients, SGD update.
  th, tw = args.train_height, args.train_width
  rng = np.random.default_rng(1)
  g = 8
  boxes = np.zeros((1, g, 4), np.float32)
  xy = rng.uniform(0, [tw - 64, th - 64], (g, 2))
  boxes[0] = np.concatenate([xy, xy + rng.uniform(16, 64, (g, 2))], 1)
  masks = np.zeros((1, g, th, tw), np.uint8)
  for i, b in enumerate(boxes[0].astype(int)):
    masks[0, i, b[1]:b[3], b[0]:b[2]] = 1
  batch = {"images": jnp.asarray(rng.normal(size=(1, th, tw, 3)), jnp.float32),
           "image_size": jnp.array([[th, tw]], jnp.int32),
           "gt_boxes": jnp.asarray(boxes),
           "gt_classes": jnp.asarray(rng.integers(0, args.classes, (1, g)),
                                     jnp.int32),
           "gt_valid": jnp.ones((1, g), bool), "gt_masks": jnp.asarray(masks)}
  tx = optax.sgd(0.005, momentum=0.9)
  params, stats = variables["params"], variables["batch_stats"]
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, key):
    def loss(p):
      out, _ = model.apply({"params": p, "batch_stats": stats}, batch, key,
                           method=model.losses)
      return sum(out.values())
    value, grads = jax.value_and_grad(loss)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, value

  t = time.perf_counter()
  params, opt, _ = jax.block_until_ready(step(params, opt,
                                              jax.random.PRNGKey(0)))
  train_compile_s = time.perf_counter() - t
  times = []
  for i in range(args.repeats):
    t = time.perf_counter()
    params, opt, _ = jax.block_until_ready(
        step(params, opt, jax.random.PRNGKey(i + 1)))
    times.append(time.perf_counter() - t)
  train_s = float(np.median(times))

  ratio = ours_s / tv_s
  print(f"\nMask R-CNN R50-FPN, {args.classes} thing classes, CPU")
  print(f"{'':40} {'ours':>10} {'torchvision':>12}")
  print(f"{f'inference per frame {h}x{w} (s)':40} {ours_s:10.3f} "
        f"{tv_s:12.3f}")
  print(f"{'compile (inference, s)':40} {compile_s:10.1f} {'-':>12}")
  print(f"{'init + weight import (s)':40} {init_s:10.1f} {'-':>12}")
  print(f"{'peak RSS after inference (MB)':40} {ours_rss:10.0f} "
        f"{tv_rss:12.0f}")
  print(f"{f'train step {th}x{tw}, batch 1 (s)':40} {train_s:10.3f} "
        f"{'-':>12}")
  print(f"{'compile (train step, s)':40} {train_compile_s:10.1f} "
        f"{'-':>12}")
  print(f"inference_time_ratio_vs_torchvision={ratio:.3f}")


if __name__ == "__main__":
  main()
