"""Anchors against hand-computed mmdetection v1 values."""
import numpy as np

from vpsnet_jax.ops import anchors


def test_base_anchors_stride_16():
  # mmdet v1 AnchorGenerator(16, [8], [0.5, 1, 2]): ratio = h / w, rounded.
  expected = np.array([[-83, -37, 98, 52], [-56, -56, 71, 71],
                       [-37, -83, 52, 98]], np.float32)
  np.testing.assert_array_equal(anchors.base_anchors(16), expected)


def test_base_anchors_stride_4():
  # ctr 1.5, ws = 4 * 8 * sqrt(2) = 45.25..., hs = 22.62...
  expected = np.array([[-21, -9, 24, 12], [-14, -14, 17, 17],
                       [-9, -21, 12, 24]], np.float32)
  np.testing.assert_array_equal(anchors.base_anchors(4), expected)


def test_grid_order_is_y_x_anchor():
  a = anchors.grid_anchors((3, 5), 8)
  base = anchors.base_anchors(8)
  assert a.shape == (3 * 5 * 3, 4)
  for y in range(3):
    for x in range(5):
      for k in range(3):
        np.testing.assert_array_equal(
            a[(y * 5 + x) * 3 + k], base[k] + np.array([x, y, x, y]) * 8)


def test_multilevel_sizes_and_valid_flags():
  sizes = anchors.featmap_sizes_for((100, 130))
  assert sizes == [(25, 33), (13, 17), (7, 9), (4, 5), (2, 3)]
  levels = anchors.multilevel_anchors(sizes)
  assert [len(l) for l in levels] == [h * w * 3 for h, w in sizes]
  valid = np.asarray(anchors.valid_flags((4, 5), (40, 70), 16, 3))
  grid = valid.reshape(4, 5, 3)
  expected = np.zeros((4, 5), bool)
  expected[:3, :5] = True  # ceil(40/16)=3 rows, ceil(70/16)=5 columns
  np.testing.assert_array_equal(grid, np.repeat(expected[..., None], 3, -1))


def test_torchvision_style_anchors_match_torchvision():
  import torch
  from torchvision.models.detection.anchor_utils import AnchorGenerator
  gen = AnchorGenerator(sizes=((32,), (64,)),
                        aspect_ratios=((0.5, 1.0, 2.0),) * 2)
  sizes, strides = [(5, 7), (3, 4)], [4, 8]
  ref = gen.grid_anchors(
      sizes, [[torch.tensor(s), torch.tensor(s)] for s in strides])
  for (h, w), s, r in zip(sizes, strides, ref):
    ours = anchors.torchvision_grid_anchors((h, w), s)
    np.testing.assert_array_equal(ours, r.numpy())
