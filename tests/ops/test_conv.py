"""`conv2d` with impl="xla" (lax.conv) and impl="cpu" (im2col + matmul on
small maps, a matmul weight gradient on large ones, XLA's convolution
otherwise) equals `lax.conv_general_dilated`, values and gradients, on
shapes that hit every branch; the branch depends on `impl` only, never on
the default backend; `resolve_conv_impl` maps the config's 'auto'; `Conv`
has flax.linen.Conv's parameters whatever its `impl`."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jax_core

from vpsnet_jax.ops import conv as conv_ops

IMPLS = ("xla", "cpu")


def _reference(x, k, strides, padding):
  return jax.lax.conv_general_dilated(
      x, k, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _primitives(fn, *args):
  """Names of the primitives in fn's jaxpr, custom_vjp bodies included."""
  names = set()

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      names.add(eqn.primitive.name)
      for v in eqn.params.values():
        for sub in v if isinstance(v, (tuple, list)) else (v,):
          if isinstance(sub, jax_core.ClosedJaxpr):
            walk(sub.jaxpr)
          elif isinstance(sub, jax_core.Jaxpr):
            walk(sub)

  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return names


def _check_values_and_gradients(x, k, strides, padding, impl):
  ours = conv_ops.conv2d(x, k, strides, padding, impl=impl)
  ref = _reference(x, k, strides, padding)
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
  loss = lambda f: lambda a, b: jnp.sum(jnp.sin(f(a, b)))
  g_ours = jax.jit(jax.grad(loss(lambda a, b: conv_ops.conv2d(
      a, b, strides, padding, impl=impl)), argnums=(0, 1)))(x, k)
  g_ref = jax.grad(loss(lambda a, b: _reference(a, b, strides, padding)),
                   argnums=(0, 1))(x, k)
  for a, b in zip(g_ours, g_ref):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


# (shape, kernel, strides, padding, the branch impl="cpu" takes)
CASES = [
    ((2, 2, 4, 8), 3, (1, 1), ((1, 1), (1, 1)), "im2col"),  # < the window
    ((1, 7, 9, 4), 3, (2, 2), ((1, 1), (1, 1)), "im2col"),  # odd, stride 2
    ((2, 5, 6, 3), 1, (1, 1), ((0, 0), (0, 0)), "im2col"),  # 1x1
    ((1, 8, 8, 2), 7, (2, 2), ((3, 3), (3, 3)), "im2col"),  # stem-like
    ((1, 4, 5, 3), 3, (1, 1), ((0, 1), (2, 0)), "im2col"),  # asymmetric pad
    ((1, 20, 20, 4), 3, (1, 1), ((1, 1), (1, 1)), "plain"),  # 400 px
    ((1, 16, 20, 3), 3, (2, 2), ((1, 1), (1, 1)), "plain"),  # strided
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape,kernel,strides,padding,branch", CASES)
def test_matches_lax_conv_values_and_gradients(shape, kernel, strides,
                                               padding, branch, impl):
  cpu_branch = "im2col" if conv_ops.use_im2col(shape[1], shape[2],
                                               "cpu") else "plain"
  assert cpu_branch == branch
  assert not conv_ops.use_im2col(shape[1], shape[2], "xla")
  rng = np.random.default_rng(0)
  x = rng.standard_normal(shape).astype(np.float32)
  k = rng.standard_normal((kernel, kernel, shape[-1], 5)).astype(np.float32)
  _check_values_and_gradients(x, k, strides, padding, impl)
  prims = _primitives(lambda a, b: conv_ops.conv2d(a, b, strides, padding,
                                                   impl=impl), x, k)
  taken = "im2col" if impl == "cpu" and branch == "im2col" else "plain"
  assert ("conv_general_dilated" in prims) == (taken == "plain"), prims
  assert ("dot_general" in prims) == (taken == "im2col"), prims


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("padding", [((1, 1), (1, 1)), ((0, 2), (1, 0))])
def test_matmul_weight_gradient_matches_lax(monkeypatch, padding, impl):
  monkeypatch.setattr(conv_ops, "MATMUL_GRAD_MIN_FEATURES", 4)
  monkeypatch.setattr(conv_ops, "MATMUL_GRAD_MIN_PIXELS", 64)
  shape = (2, 16, 20, 3)
  assert conv_ops.use_matmul_weight_grad(shape, 5, (1, 1), impl) == (
      impl == "cpu")
  rng = np.random.default_rng(1)
  x = rng.standard_normal(shape).astype(np.float32)
  k = rng.standard_normal((3, 3, 3, 5)).astype(np.float32)
  np.testing.assert_allclose(jax.jit(lambda a, b: conv_ops.conv2d(
      a, b, (1, 1), padding, impl=impl))(x, k),
                             _reference(x, k, (1, 1), padding),
                             rtol=1e-5, atol=1e-5)
  _check_values_and_gradients(x, k, (1, 1), padding, impl)
  prims = _primitives(jax.grad(lambda a, b: jnp.sum(conv_ops.conv2d(
      a, b, (1, 1), padding, impl=impl)), argnums=1), x, k)
  # The matmul weight gradient is an einsum of shifted copies; XLA's is a
  # convolution of the input with the output gradient (the map is too
  # large for im2col, so the forward is a convolution on both paths).
  assert "conv_general_dilated" in prims
  assert ("dot_general" in prims) == (impl == "cpu"), prims


def test_path_choice():
  assert conv_ops.use_im2col(16, 16, "cpu")
  assert not conv_ops.use_im2col(16, 17, "cpu")
  assert not conv_ops.use_im2col(2, 4, "xla")
  big = (1, 128, 256, 256)
  assert conv_ops.use_matmul_weight_grad(big, 256, (1, 1), "cpu")
  assert not conv_ops.use_matmul_weight_grad(big, 256, (1, 1), "xla")
  assert not conv_ops.use_matmul_weight_grad(big, 256, (2, 2), "cpu")
  assert not conv_ops.use_matmul_weight_grad((1, 64, 128, 256), 256, (1, 1),
                                             "cpu")
  assert not conv_ops.use_matmul_weight_grad(big, 128, (1, 1), "cpu")


def test_branch_does_not_depend_on_the_default_backend(monkeypatch):
  """impl alone picks the branch: the same jaxpr whatever
  jax.default_backend() says (only resolve_conv_impl reads it)."""
  x = jnp.ones((1, 4, 4, 3))
  k = jnp.ones((3, 3, 3, 2))
  jaxprs = {}
  for backend in ("cpu", "gpu", "tpu"):
    monkeypatch.setattr(jax, "default_backend", lambda b=backend: b)
    for impl in IMPLS:
      jaxprs[backend, impl] = str(jax.make_jaxpr(
          lambda a, b, i=impl: conv_ops.conv2d(a, b, impl=i))(x, k))
  for impl in IMPLS:
    assert len({jaxprs[b, impl] for b in ("cpu", "gpu", "tpu")}) == 1
  assert jaxprs["gpu", "xla"] != jaxprs["gpu", "cpu"]


def test_default_impl_is_xla_and_positional_signature():
  rng = np.random.default_rng(2)
  x = rng.standard_normal((1, 4, 4, 3)).astype(np.float32)
  k = rng.standard_normal((3, 3, 3, 2)).astype(np.float32)
  # conv2d(x, kernel, strides, padding): the old positional call, "xla".
  np.testing.assert_array_equal(
      conv_ops.conv2d(x, k, (1, 1), ((1, 1), (1, 1))),
      conv_ops.conv2d(x, k, (1, 1), ((1, 1), (1, 1)), impl="xla"))
  np.testing.assert_allclose(conv_ops.conv2d(x, k),
                             _reference(x, k, (1, 1), ((1, 1), (1, 1))),
                             rtol=1e-5, atol=1e-5)
  assert "conv_general_dilated" in _primitives(conv_ops.conv2d, x, k)
  assert conv_ops.Conv(2, (3, 3)).impl == "xla"
  with pytest.raises(TypeError):
    conv_ops.conv2d(x, k, (1, 1), "SAME", "cpu")  # impl is keyword-only
  for bad in ("auto", "gpu", ""):
    with pytest.raises(ValueError, match="xla"):
      conv_ops.conv2d(x, k, impl=bad)
    with pytest.raises(ValueError, match="cpu"):
      conv_ops.conv_def(bad)


def test_resolve_conv_impl():
  assert conv_ops.resolve_conv_impl("auto", "cpu") == "cpu"
  assert conv_ops.resolve_conv_impl("auto", "gpu") == "xla"
  assert conv_ops.resolve_conv_impl("auto", "cuda") == "xla"
  assert conv_ops.resolve_conv_impl("auto", "tpu") == "xla"
  for backend in ("cpu", "gpu", "tpu", None):
    assert conv_ops.resolve_conv_impl("xla", backend) == "xla"
    assert conv_ops.resolve_conv_impl("cpu", backend) == "cpu"
  expected = "cpu" if jax.default_backend() == "cpu" else "xla"
  assert conv_ops.resolve_conv_impl("auto") == expected
  for bad in ("Auto", "gpu", "im2col", ""):
    with pytest.raises(ValueError) as info:
      conv_ops.resolve_conv_impl(bad, "cpu")
    for name in ("auto", "xla", "cpu"):
      assert repr(name) in str(info.value)


@pytest.mark.parametrize("impl", IMPLS)
def test_module_params_match_flax_conv(impl):
  x = jax.random.normal(jax.random.PRNGKey(1), (1, 6, 6, 3))
  ours = conv_ops.Conv(4, (3, 3), padding=((1, 1), (1, 1)), impl=impl)
  flax_conv = nn.Conv(4, (3, 3), padding=((1, 1), (1, 1)))
  p = ours.init(jax.random.PRNGKey(0), x)
  q = flax_conv.init(jax.random.PRNGKey(0), x)
  assert jax.tree_util.tree_map(jnp.shape, p) == jax.tree_util.tree_map(
      jnp.shape, q)
  np.testing.assert_allclose(ours.apply(q, x), flax_conv.apply(q, x),
                             rtol=1e-5, atol=1e-5)
  y = conv_ops.Conv(4, (3, 3), dtype=jnp.bfloat16, impl=impl).apply(q, x)
  assert y.dtype == jnp.bfloat16
  made = conv_ops.conv_def(impl)(4, (3, 3), padding=((1, 1), (1, 1)))
  assert made.impl == impl
  np.testing.assert_allclose(made.apply(q, x), flax_conv.apply(q, x),
                             rtol=1e-5, atol=1e-5)
