"""Track head: embeddings vs NumPy, affinity and loss on hand-computed cases."""
import jax
import numpy as np

from vpsnet_jax.modeling.track_head import (TrackHead, track_affinity,
                                            track_loss)

HEAD = TrackHead(hidden=16)
TRACES = []


@jax.jit
def loss_and_grads(params, rois, ref_rois, ref_valid, target_index,
                   positive):
  TRACES.append(1)

  def loss(p):
    emb = HEAD.apply(p, rois)
    ref = HEAD.apply(p, ref_rois)
    return track_loss(track_affinity(emb, ref, ref_valid), target_index,
                      positive)

  return jax.value_and_grad(loss)(params)


def _params(seed=0, c=3):
  rng = np.random.default_rng(seed)
  d = 7 * 7 * c
  draw = lambda *s: (rng.standard_normal(s) / np.sqrt(s[0])).astype(
      np.float32)
  return {"params": {
      "fc1": {"kernel": draw(d, 16), "bias": 0.1 * draw(16)},
      "fc2": {"kernel": draw(16, 16), "bias": 0.1 * draw(16)}}}


def test_embeddings_match_numpy():
  rng = np.random.default_rng(1)
  rois = rng.standard_normal((5, 7, 7, 3)).astype(np.float32)
  shapes = jax.eval_shape(HEAD.init, jax.random.PRNGKey(0), rois)
  params = _params()
  assert jax.tree_util.tree_map(np.shape, params) == jax.tree_util.tree_map(
      lambda s: s.shape, shapes)
  p = params["params"]
  x = rois.reshape(5, -1).astype(np.float64)
  hidden = np.maximum(x @ p["fc1"]["kernel"] + p["fc1"]["bias"], 0.0)
  ref = hidden @ p["fc2"]["kernel"] + p["fc2"]["bias"]
  np.testing.assert_allclose(jax.jit(HEAD.apply)(params, rois), ref,
                             atol=1e-5, rtol=1e-5)


def test_affinity_hand_case():
  emb = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)
  ref = np.array([[1.0, 1.0], [0.0, 1.0], [9.0, 9.0]], np.float32)
  valid = np.array([True, True, False])
  aff = np.asarray(track_affinity(emb, ref, valid))
  np.testing.assert_allclose(aff[:, :3], [[0, 1, 0], [0, 2, 2]])
  assert np.all(aff[:, 3] < -1e8)  # Padded reference never wins.
  cos = np.asarray(track_affinity(emb, ref, valid, cosine=True))
  s = 1 / np.sqrt(2)
  np.testing.assert_allclose(cos[:, :3], [[0, s, 0], [0, s, 1]], rtol=1e-6)


def test_loss_hand_case():
  aff = np.array([[0.0, 1.0, 0.0],
                  [0.0, 2.0, 2.0],
                  [0.0, 5.0, -3.0]], np.float32)
  target = np.array([1, 0, 2])
  positive = np.array([True, True, False])
  e = np.e
  nll0 = -np.log(e / (1 + e + 1))
  nll1 = -np.log(1 / (1 + e**2 + e**2))
  expected = 0.5 * (nll0 + nll1) / 2
  np.testing.assert_allclose(track_loss(aff, target, positive), expected,
                             rtol=1e-6)
  np.testing.assert_allclose(track_loss(aff, target, positive, weight=1.0),
                             2 * expected, rtol=1e-6)
  assert float(track_loss(aff, target, np.zeros(3, bool))) == 0.0


def test_grads_reach_every_param_one_compile():
  rng = np.random.default_rng(2)
  params = _params(3)
  ref_valid = np.array([True, True, True, False])
  target_index = np.array([1, 2, 0, 3, 0, 1])
  positive = np.array([True, True, True, True, False, False])
  for _ in range(2):
    rois = rng.standard_normal((6, 7, 7, 3)).astype(np.float32)
    ref_rois = rng.standard_normal((4, 7, 7, 3)).astype(np.float32)
    value, grads = loss_and_grads(params, rois, ref_rois, ref_valid,
                                  target_index, positive)
    assert np.isfinite(value) and value > 0
  assert len(TRACES) == 1
  for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
    assert np.all(np.isfinite(g)), path
    assert np.any(g != 0), path
