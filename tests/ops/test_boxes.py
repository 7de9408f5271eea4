"""Box IoU, delta coding and clipping against torchvision and NumPy."""
import jax
import jax.numpy as jnp
import numpy as np
import torch
import torchvision
from torchvision.models.detection import _utils as det_utils

from vpsnet_jax.ops import boxes as box_ops


def _random_boxes(rng, n, size=100.0):
  xy = rng.uniform(0, size, (n, 2))
  wh = rng.uniform(1, size / 2, (n, 2))
  return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def _np_iou_plus_one(a, b):
  """mmdetection v1 `bbox_overlaps` written out in NumPy."""
  out = np.zeros((len(a), len(b)), np.float64)
  for i, p in enumerate(a):
    for j, q in enumerate(b):
      iw = max(min(p[2], q[2]) - max(p[0], q[0]) + 1, 0)
      ih = max(min(p[3], q[3]) - max(p[1], q[1]) + 1, 0)
      inter = iw * ih
      area_p = (p[2] - p[0] + 1) * (p[3] - p[1] + 1)
      area_q = (q[2] - q[0] + 1) * (q[3] - q[1] + 1)
      out[i, j] = inter / (area_p + area_q - inter)
  return out


def test_iou_matches_torchvision_and_mmdet():
  rng = np.random.default_rng(0)
  a, b = _random_boxes(rng, 20), _random_boxes(rng, 15)
  ours = np.asarray(box_ops.pairwise_iou(a, b, offset=0.0))
  ref = torchvision.ops.box_iou(torch.tensor(a), torch.tensor(b)).numpy()
  np.testing.assert_allclose(ours, ref, atol=1e-6)
  ours1 = np.asarray(box_ops.pairwise_iou(a, b, offset=1.0))
  np.testing.assert_allclose(ours1, _np_iou_plus_one(a, b), atol=1e-6)


def test_iou_of_padding_is_zero():
  a = np.zeros((2, 4), np.float32)
  iou = np.asarray(box_ops.pairwise_iou(a, a, offset=0.0))
  np.testing.assert_array_equal(iou, np.zeros((2, 2)))


def _np_bbox2delta(p, g, means, stds):
  """mmdetection v1 `bbox2delta` (+1 widths) in NumPy."""
  pw, ph = p[:, 2] - p[:, 0] + 1, p[:, 3] - p[:, 1] + 1
  px, py = (p[:, 0] + p[:, 2]) / 2, (p[:, 1] + p[:, 3]) / 2
  gw, gh = g[:, 2] - g[:, 0] + 1, g[:, 3] - g[:, 1] + 1
  gx, gy = (g[:, 0] + g[:, 2]) / 2, (g[:, 1] + g[:, 3]) / 2
  d = np.stack([(gx - px) / pw, (gy - py) / ph, np.log(gw / pw),
                np.log(gh / ph)], 1)
  return (d - np.array(means)) / np.array(stds)


def test_encode_matches_mmdet_formula_and_round_trips():
  rng = np.random.default_rng(1)
  p, g = _random_boxes(rng, 30), _random_boxes(rng, 30)
  means, stds = (0.0, 0.0, 0.0, 0.0), (0.1, 0.1, 0.2, 0.2)
  d = np.asarray(box_ops.encode(p, g, means, stds))
  np.testing.assert_allclose(d, _np_bbox2delta(p, g, means, stds),
                             rtol=1e-5, atol=1e-5)
  back = np.asarray(box_ops.decode(p, d, means, stds))
  np.testing.assert_allclose(back, g, atol=1e-3)


def test_coding_matches_torchvision_box_coder():
  """offset=0 with stds = 1 / weights is torchvision's BoxCoder."""
  rng = np.random.default_rng(2)
  p, g = _random_boxes(rng, 30), _random_boxes(rng, 30)
  coder = det_utils.BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
  stds = (0.1, 0.1, 0.2, 0.2)
  ref_d = coder.encode_single(torch.tensor(g), torch.tensor(p)).numpy()
  d = np.asarray(box_ops.encode(p, g, stds=stds, offset=0.0))
  np.testing.assert_allclose(d, ref_d, rtol=1e-5, atol=1e-5)
  # Large deltas exercise the identical exp clip (log(1000 / 16)).
  deltas = rng.normal(0, 3, (30, 4)).astype(np.float32)
  ref_b = coder.decode_single(torch.tensor(deltas), torch.tensor(p)).numpy()
  ours = np.asarray(box_ops.decode(p, deltas, stds=stds, offset=0.0))
  np.testing.assert_allclose(ours, ref_b, rtol=1e-5, atol=1e-3)


def test_decode_clips_like_mmdet():
  p = np.array([[10, 10, 50, 50]], np.float32)
  d = np.array([[0.0, 0.0, 3.0, 3.0]], np.float32)  # 20x wider, then clip
  out = np.asarray(box_ops.decode(p, d, max_shape=(40, 60)))
  np.testing.assert_allclose(out, [[0, 0, 59, 39]])
  out0 = np.asarray(box_ops.clip_boxes(jnp.array([[-3.0, 5, 70, 45]]),
                                       (40, 60), offset=0.0))
  np.testing.assert_allclose(out0, [[0, 5, 60, 40]])


def test_decode_jits_once():
  f = jax.jit(lambda p, d: box_ops.decode(p, d, max_shape=(40, 60)))
  x = jnp.zeros((5, 4))
  f(x, x)
  f(x + 1, x)
  assert f._cache_size() == 1
