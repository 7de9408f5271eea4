"""Mask pasting against OpenCV resize + paste (mmdetection v1 get_seg_masks)."""
import cv2
import jax
import numpy as np

from vpsnet_jax.ops import masks as mask_ops


def _reference(masks, boxes, shape):
  out = np.zeros((len(masks),) + shape, np.float32)
  for i, (m, b) in enumerate(zip(masks, boxes)):
    x1, y1, x2, y2 = b.astype(np.int32)
    w, h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
    out[i, y1:y1 + h, x1:x1 + w] = cv2.resize(m, (w, h),
                                              interpolation=cv2.INTER_LINEAR)
  return out


def test_paste_matches_opencv_and_compiles_once():
  rng = np.random.default_rng(0)
  shape = (37, 53)
  n = 12
  masks = rng.uniform(size=(n, 28, 28)).astype(np.float32)
  xy = rng.uniform(0, 45, (n, 2))
  wh = rng.uniform(0, 40, (n, 2))
  boxes = np.concatenate([xy, xy + wh], 1)
  boxes[:, 0::2] = boxes[:, 0::2].clip(0, shape[1] - 1)
  boxes[:, 1::2] = boxes[:, 1::2].clip(0, shape[0] - 1)
  boxes[0] = [3, 4, 3.5, 4.2]                          # a single pixel
  boxes[1] = [0, 0, shape[1] - 1, shape[0] - 1]        # the whole image
  boxes[2] = [10.7, 2.2, 60.0, 9.9]                    # larger than 28 wide
  boxes = boxes.astype(np.float32)
  boxes[2, 2] = shape[1] - 1
  fn = jax.jit(lambda m, b: mask_ops.paste_masks(m, b, shape))
  ours = np.asarray(fn(masks, boxes))
  np.testing.assert_allclose(ours, _reference(masks, boxes, shape), atol=1e-5)
  fn(masks * 0.5, boxes + 1)
  assert fn._cache_size() == 1
