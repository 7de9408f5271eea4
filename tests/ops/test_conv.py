"""`conv2d` (im2col + matmul on small maps on the CPU, XLA's convolution
otherwise) equals `lax.conv_general_dilated`, values and gradients; `Conv`
has flax.linen.Conv's parameters."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vpsnet_jax.ops import conv as conv_ops


def _reference(x, k, strides, padding):
  return jax.lax.conv_general_dilated(
      x, k, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("shape,kernel,strides,padding", [
    ((2, 2, 4, 8), 3, (1, 1), ((1, 1), (1, 1))),   # smaller than the window
    ((1, 7, 9, 4), 3, (2, 2), ((1, 1), (1, 1))),   # odd size, stride 2
    ((2, 5, 6, 3), 1, (1, 1), ((0, 0), (0, 0))),   # 1x1
    ((1, 8, 8, 2), 7, (2, 2), ((3, 3), (3, 3))),   # stem-like
    ((1, 4, 5, 3), 3, (1, 1), ((0, 1), (2, 0))),   # asymmetric padding
    ((1, 20, 20, 4), 3, (1, 1), ((1, 1), (1, 1))),  # 400 px: native path
])
def test_matches_lax_conv_values_and_gradients(shape, kernel, strides,
                                               padding):
  rng = np.random.default_rng(0)
  x = rng.standard_normal(shape).astype(np.float32)
  k = rng.standard_normal((kernel, kernel, shape[-1], 5)).astype(np.float32)
  ours = conv_ops.conv2d(x, k, strides, padding)
  ref = _reference(x, k, strides, padding)
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
  loss = lambda f: lambda a, b: jnp.sum(jnp.sin(f(a, b)))
  g_ours = jax.grad(loss(lambda a, b: conv_ops.conv2d(a, b, strides,
                                                      padding)),
                    argnums=(0, 1))(x, k)
  g_ref = jax.grad(loss(lambda a, b: _reference(a, b, strides, padding)),
                   argnums=(0, 1))(x, k)
  for a, b in zip(g_ours, g_ref):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("padding", [((1, 1), (1, 1)), ((0, 2), (1, 0))])
def test_matmul_weight_gradient_matches_lax(monkeypatch, padding):
  monkeypatch.setattr(conv_ops, "MATMUL_GRAD_MIN_FEATURES", 4)
  monkeypatch.setattr(conv_ops, "MATMUL_GRAD_MIN_PIXELS", 64)
  assert conv_ops.use_matmul_weight_grad((2, 16, 20, 3), 5, (1, 1)) == (
      jax.default_backend() == "cpu")
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2, 16, 20, 3)).astype(np.float32)
  k = rng.standard_normal((3, 3, 3, 5)).astype(np.float32)
  f = lambda a, b: jnp.sum(jnp.sin(conv_ops.conv2d(a, b, (1, 1), padding)))
  r = lambda a, b: jnp.sum(jnp.sin(_reference(a, b, (1, 1), padding)))
  np.testing.assert_allclose(jax.jit(lambda a, b: conv_ops.conv2d(
      a, b, (1, 1), padding))(x, k), _reference(x, k, (1, 1), padding),
                             rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.grad(f, argnums=(0, 1))(x, k),
                  jax.grad(r, argnums=(0, 1))(x, k)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_path_choice():
  assert conv_ops.use_im2col(16, 16) == (jax.default_backend() == "cpu")
  assert not conv_ops.use_im2col(16, 17)
  cpu = jax.default_backend() == "cpu"
  assert conv_ops.use_matmul_weight_grad((1, 128, 256, 256), 256,
                                         (1, 1)) == cpu
  assert not conv_ops.use_matmul_weight_grad((1, 128, 256, 256), 256, (2, 2))
  assert not conv_ops.use_matmul_weight_grad((1, 64, 128, 256), 256, (1, 1))
  assert not conv_ops.use_matmul_weight_grad((1, 128, 256, 256), 128, (1, 1))


def test_module_params_match_flax_conv():
  x = jnp.ones((1, 6, 6, 3))
  ours = conv_ops.Conv(4, (3, 3), padding=((1, 1), (1, 1)))
  flax_conv = nn.Conv(4, (3, 3), padding=((1, 1), (1, 1)))
  p = ours.init(jax.random.PRNGKey(0), x)
  q = flax_conv.init(jax.random.PRNGKey(0), x)
  assert jax.tree_util.tree_map(jnp.shape, p) == jax.tree_util.tree_map(
      jnp.shape, q)
  np.testing.assert_allclose(ours.apply(q, x), flax_conv.apply(q, x),
                             rtol=1e-5, atol=1e-5)
  y = conv_ops.Conv(4, (3, 3), dtype=jnp.bfloat16).apply(q, x)
  assert y.dtype == jnp.bfloat16
