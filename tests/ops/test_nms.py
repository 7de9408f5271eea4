"""Static-shape NMS against torchvision `nms` / `batched_nms`."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from vpsnet_jax.ops import nms as nms_ops


def _random_case(seed, n, num_classes=3):
  rng = np.random.default_rng(seed)
  xy = rng.uniform(0, 100, (n, 2))
  wh = rng.uniform(2, 40, (n, 2))
  boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
  scores = (rng.permutation(n) / n).astype(np.float32)  # distinct
  classes = rng.integers(0, num_classes, n).astype(np.int32)
  return boxes, scores, classes


def _kept(idx, valid):
  return np.asarray(idx)[np.asarray(valid)]


def _np_greedy_nms_plus_one(boxes, scores, thr):
  """Reference greedy NMS with mmdetection v1's +1 areas."""
  order = np.argsort(-scores, kind="stable")
  keep = []
  for i in order:
    ok = True
    for j in keep:
      iw = max(min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0])
               + 1, 0)
      ih = max(min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1])
               + 1, 0)
      inter = iw * ih
      a = (boxes[i, 2] - boxes[i, 0] + 1) * (boxes[i, 3] - boxes[i, 1] + 1)
      b = (boxes[j, 2] - boxes[j, 0] + 1) * (boxes[j, 3] - boxes[j, 1] + 1)
      if inter / (a + b - inter) > thr:
        ok = False
        break
    if ok:
      keep.append(i)
  return np.array(keep, np.int64)


@pytest.fixture(scope="module")
def jitted():
  traces = []

  def run(boxes, scores, classes, valid, thr):
    traces.append(1)
    plain = nms_ops.nms(boxes, scores, thr, 300, valid=valid, offset=0.0,
                        tile_size=64)
    per_class = nms_ops.batched_nms(boxes, scores, classes, thr, 300,
                                    valid=valid, offset=0.0, tile_size=64)
    legacy = nms_ops.nms(boxes, scores, thr, 300, valid=valid, offset=1.0,
                         tile_size=64)
    return plain, per_class, legacy

  return jax.jit(run), traces


@pytest.mark.parametrize("seed,thr", [(0, 0.5), (1, 0.7), (2, 0.3)])
def test_matches_torchvision(jitted, seed, thr):
  fn, _ = jitted
  boxes, scores, classes = _random_case(seed, 200)
  valid = np.ones(200, bool)
  plain, per_class, legacy = fn(boxes, scores, classes, valid,
                                jnp.float32(thr))
  tb, ts = torch.tensor(boxes), torch.tensor(scores)
  ref = torchvision.ops.nms(tb, ts, thr).numpy()
  np.testing.assert_array_equal(_kept(*plain), ref)
  ref_b = torchvision.ops.batched_nms(tb, ts, torch.tensor(classes),
                                      thr).numpy()
  np.testing.assert_array_equal(_kept(*per_class), ref_b)
  np.testing.assert_array_equal(
      _kept(*legacy), _np_greedy_nms_plus_one(boxes, scores, thr))


def test_compiles_once_and_respects_valid(jitted):
  fn, traces = jitted
  boxes, scores, classes = _random_case(3, 200)
  valid = np.arange(200) % 3 != 0
  plain, _, _ = fn(boxes, scores, classes, valid, jnp.float32(0.5))
  sub = np.nonzero(valid)[0]
  ref = torchvision.ops.nms(torch.tensor(boxes[sub]), torch.tensor(
      scores[sub]), 0.5).numpy()
  np.testing.assert_array_equal(_kept(*plain), sub[ref])
  assert len(traces) == 1
  assert fn._cache_size() == 1


def test_max_output_truncates_in_score_order():
  boxes, scores, _ = _random_case(4, 50)
  ref = torchvision.ops.nms(torch.tensor(boxes), torch.tensor(scores),
                            0.5).numpy()
  idx, valid = nms_ops.nms(jnp.asarray(boxes), jnp.asarray(scores), 0.5, 5,
                           offset=0.0, tile_size=8)
  assert idx.shape == (5,) and bool(np.all(valid))
  np.testing.assert_array_equal(np.asarray(idx), ref[:5])
  # More slots than boxes: padding is marked invalid.
  idx, valid = nms_ops.nms(jnp.asarray(boxes[:3]), jnp.asarray(scores[:3]),
                           0.99, 10, offset=0.0)
  assert idx.shape == (10,)
  np.testing.assert_array_equal(np.asarray(valid), [True] * 3 + [False] * 7)


def test_vmap_over_images():
  cases = [_random_case(s, 64) for s in (5, 6)]
  boxes = np.stack([c[0] for c in cases])
  scores = np.stack([c[1] for c in cases])
  idx, valid = jax.vmap(lambda b, s: nms_ops.nms(b, s, 0.5, 64, offset=0.0,
                                                 tile_size=16))(boxes, scores)
  for i in range(2):
    ref = torchvision.ops.nms(torch.tensor(boxes[i]), torch.tensor(scores[i]),
                              0.5).numpy()
    np.testing.assert_array_equal(_kept(idx[i], valid[i]), ref)
