"""RoIAlign against torchvision (aligned=False) and mmdetection v1's kernel."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from torchvision.ops import MultiScaleRoIAlign

from vpsnet_jax.ops import roi_align as ra


def _boxes(rng, n, size):
  xy = rng.uniform(-10, size, (n, 2))
  wh = rng.uniform(0, size / 2, (n, 2))
  b = np.concatenate([xy, xy + wh], 1).astype(np.float32)
  edge_cases = [
      [0, 0, 0, 0],                        # degenerate
      [3, 4, 3.5, 4.2],                    # tiny
      [-8, -8, 2, 2],                      # beyond the top-left border
      [size - 6, size - 5, size + 9, size + 9],  # beyond bottom-right
      [0, 0, size - 1, size - 1],          # whole map
  ]
  b[:len(edge_cases)] = np.array(edge_cases, np.float32)
  return b


def _tv(features_hwc, boxes, scale):
  f = torch.tensor(features_hwc).permute(2, 0, 1)[None]
  out = torchvision.ops.roi_align(f, [torch.tensor(boxes)], (7, 7), scale, 2,
                                  aligned=False)
  return out.permute(0, 2, 3, 1).numpy()


def _np_mmdet_v1(feat, boxes, scale, out=7, s=2):
  """The mmdetection v1 RoIAlign CUDA kernel, written out in NumPy."""
  h, w, c = feat.shape

  def bilinear(y, x):
    if y < -1.0 or y > h or x < -1.0 or x > w:
      return np.zeros(c)
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= h - 1:
      y0 = y1 = h - 1
      y = float(y0)
    else:
      y1 = y0 + 1
    if x0 >= w - 1:
      x0 = x1 = w - 1
      x = float(x0)
    else:
      x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * feat[y0, x0] + (1 - ly) * lx * feat[y0, x1]
            + ly * (1 - lx) * feat[y1, x0] + ly * lx * feat[y1, x1])

  res = np.zeros((len(boxes), out, out, c))
  for r, (x1, y1, x2, y2) in enumerate(boxes.astype(np.float64)):
    sw, sh = x1 * scale, y1 * scale
    rw = max((x2 + 1) * scale - sw, 0.0)
    rh = max((y2 + 1) * scale - sh, 0.0)
    bw, bh = rw / out, rh / out
    for ph in range(out):
      for pw in range(out):
        acc = np.zeros(c)
        for iy in range(s):
          for ix in range(s):
            acc += bilinear(sh + ph * bh + (iy + 0.5) * bh / s,
                            sw + pw * bw + (ix + 0.5) * bw / s)
        res[r, ph, pw] = acc / (s * s)
  return res


@pytest.fixture(scope="module")
def data():
  rng = np.random.default_rng(0)
  feat = rng.normal(size=(13, 17, 6)).astype(np.float32)
  boxes = _boxes(rng, 40, 4 * 13)
  return feat, boxes


def test_single_level_matches_torchvision(data):
  feat, boxes = data
  ours = ra.roi_align(jnp.asarray(feat), jnp.asarray(boxes), (7, 7), 0.25, 2,
                      offset=0.0, chunk_size=16)
  ref = _tv(feat, boxes, 0.25)
  err = np.abs(np.asarray(ours) - ref).max()
  assert err < 1e-5, err


def test_single_level_matches_mmdet_v1_kernel(data):
  feat, boxes = data
  ours = ra.roi_align(jnp.asarray(feat), jnp.asarray(boxes[:12]), (7, 7),
                      0.25, 2, offset=1.0, chunk_size=None)
  ref = _np_mmdet_v1(feat, boxes[:12], 0.25)
  np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-5)


def test_map_roi_levels_mmdet_v1():
  # sqrt((w+1)(h+1)): 56 -> P2; 111 -> P2; 112 -> P3; 224 -> P4; 2000 -> P5.
  sides = np.array([55, 110, 111, 223, 447, 1999], np.float32)
  boxes = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides],
                   1)
  levels = np.asarray(ra.map_roi_levels(jnp.asarray(boxes), 4))
  np.testing.assert_array_equal(levels, [0, 0, 1, 2, 3, 3])


def test_multilevel_matches_torchvision_multiscale():
  rng = np.random.default_rng(1)
  image = (64, 96)
  feats = [rng.normal(size=(image[0] // s, image[1] // s, 4)).astype(
      np.float32) for s in (4, 8, 16, 32)]
  xy = rng.uniform(0, 60, (30, 2))
  wh = np.exp(rng.uniform(np.log(2), np.log(300), (30, 2)))
  boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
  fn = jax.jit(lambda f, b: ra.multilevel_roi_align(f, b, offset=0.0,
                                                    chunk_size=8))
  ours = np.asarray(fn([jnp.asarray(f) for f in feats], jnp.asarray(boxes)))
  pooler = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
  tf = {str(i): torch.tensor(f).permute(2, 0, 1)[None]
        for i, f in enumerate(feats)}
  ref = pooler(tf, [torch.tensor(boxes)], [image]).permute(0, 2, 3, 1).numpy()
  err = np.abs(ours - ref).max()
  assert err < 1e-5, err
  # Same shapes again: no recompilation.
  fn([jnp.asarray(f) + 1 for f in feats], jnp.asarray(boxes))
  assert fn._cache_size() == 1


def test_multilevel_explicit_levels_and_batch(data):
  feat, boxes = data
  rng = np.random.default_rng(2)
  coarse = rng.normal(size=(7, 9, 6)).astype(np.float32)
  levels = (np.arange(len(boxes)) % 2).astype(np.int32)
  fn = jax.vmap(lambda f0, f1, b, l: ra.multilevel_roi_align(
      [f0, f1], b, l, strides=(4, 8), offset=0.0, chunk_size=16))
  batch = [np.stack([x, x * 2]) for x in (feat, coarse)]
  out = np.asarray(fn(*batch, np.stack([boxes, boxes]), np.stack([levels] * 2)))
  for img in range(2):
    ref0 = _tv(batch[0][img], boxes, 0.25)
    ref1 = _tv(batch[1][img], boxes, 0.125)
    ref = np.where(levels[:, None, None, None] == 0, ref0, ref1)
    np.testing.assert_allclose(out[img], ref, atol=1e-5)


def test_gradient_reaches_features(data):
  feat, boxes = data
  g = jax.grad(lambda f: ra.roi_align(f, jnp.asarray(boxes), (7, 7), 0.25,
                                      offset=0.0).sum())(jnp.asarray(feat))
  assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).sum()) > 0
