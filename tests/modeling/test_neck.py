"""Neck: gather / redistribute against torch's resize and pooling ops."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vpsnet_jax.modeling import neck


def _nchw(x):
  return torch.tensor(np.asarray(x)).permute(0, 3, 1, 2)


def _nhwc(t):
  return t.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("src,dst", [((2, 3), (8, 12)), ((3, 5), (7, 9)),
                                     ((8, 8), (8, 8))])
def test_resize_nearest_matches_torch(src, dst):
  x = np.random.default_rng(0).standard_normal((2,) + src + (3,)).astype(
      np.float32)
  ref = _nhwc(F.interpolate(_nchw(x), size=dst, mode="nearest"))
  np.testing.assert_array_equal(neck.resize_nearest(x, dst), ref)


@pytest.mark.parametrize("src,dst", [((8, 12), (2, 3)), ((7, 9), (3, 4)),
                                     ((5, 5), (5, 5))])
def test_adaptive_max_pool_matches_torch(src, dst):
  x = np.random.default_rng(1).standard_normal((2,) + src + (3,)).astype(
      np.float32)
  ref = _nhwc(F.adaptive_max_pool2d(_nchw(x), dst))
  np.testing.assert_array_equal(neck.adaptive_max_pool(x, dst), ref)


def _levels(seed=0, n=1, c=4):
  rng = np.random.default_rng(seed)
  return [rng.standard_normal((n, 16 // 2**i, 24 // 2**i, c)).astype(
      np.float32) for i in range(5)]


def test_gather_hand_case():
  p2 = np.ones((1, 2, 2, 1), np.float32)
  p3 = np.full((1, 1, 1, 1), 3.0, np.float32)
  np.testing.assert_array_equal(neck.gather([p2, p3]),
                                np.full((1, 2, 2, 1), 2.0))


def test_gather_and_redistribute_match_torch():
  levels = _levels()
  size = levels[0].shape[1:3]
  ref = sum(F.interpolate(_nchw(p), size=size, mode="nearest")
            for p in levels) / len(levels)
  bsf = neck.gather(levels)
  np.testing.assert_allclose(bsf, _nhwc(ref), rtol=1e-6, atol=1e-6)
  refined = np.random.default_rng(5).standard_normal(bsf.shape).astype(
      np.float32)
  outs = neck.redistribute(refined, levels)
  assert len(outs) == len(levels)
  np.testing.assert_array_equal(outs[0], levels[0] + refined)  # P2 as is.
  for p, out in zip(levels, outs):
    pooled = _nhwc(F.adaptive_max_pool2d(_nchw(refined), p.shape[1:3]))
    np.testing.assert_allclose(out, p + pooled, rtol=1e-6, atol=1e-6)


def test_refine_is_conv_relu_and_grads_reach_params():
  x = _levels(c=8)[0]
  model = neck.Refine()
  params = jax.jit(model.init)(jax.random.PRNGKey(0), x)
  k = params["params"]["conv"]["kernel"]
  b = params["params"]["conv"]["bias"]
  ref = F.relu(F.conv2d(_nchw(x), torch.tensor(np.asarray(k)).permute(
      3, 2, 0, 1), torch.tensor(np.asarray(b)) + 0.0, padding=1))
  np.testing.assert_allclose(jax.jit(model.apply)(params, x), _nhwc(ref),
                             atol=1e-5, rtol=1e-5)
  grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply(p, x) ** 2)))(params)
  for g in jax.tree_util.tree_leaves(grads):
    assert np.all(np.isfinite(g)) and np.any(g != 0)
