"""bfloat16 compute: the ops that keep float32 where precision needs it.

With model.dtype='bfloat16' the features are bfloat16 (8 bits of
mantissa); positions and sums that bfloat16 cannot hold stay float32:
- `correlation` sums C products per displacement in float32 and returns
  float32 (a bfloat16 running sum of 32-256 products keeps ~2 digits);
- `warp` and `deform_conv2d` compute sampling positions and bilinear
  weights in float32 (bfloat16's spacing is 1 px at x in [128, 256) and 2
  px beyond: a 0.3 px flow at x = 200 would round to 0 or 1 px);
- flows (the pipeline's, the Align module's refined flow, FlowNet2's),
  box decoding, RoIAlign positions, softmaxes and losses are float32 in
  the model (their modules cast to float32 before them).
Each test computes the bfloat16 op and the float32 op on the same
bfloat16-rounded values: they must agree to bfloat16's value rounding,
which they would not if the positions or the sum were rounded.
"""
import jax.numpy as jnp
import numpy as np

from vpsnet_jax.ops.correlation import correlation
from vpsnet_jax.ops.deform_conv import deform_conv2d
from vpsnet_jax.ops.warp import warp

BF16 = jnp.bfloat16


def _rounded(rng, shape):
  """float32 values that bfloat16 holds exactly (so both ops see them)."""
  x = rng.standard_normal(shape).astype(np.float32)
  return np.asarray(jnp.asarray(x).astype(BF16).astype(jnp.float32))


def test_correlation_accumulates_in_float32():
  rng = np.random.default_rng(0)
  a, b = _rounded(rng, (1, 6, 40, 256)), _rounded(rng, (1, 6, 40, 256))
  out = correlation(jnp.asarray(a, BF16), jnp.asarray(b, BF16), 4)
  ref = correlation(jnp.asarray(a), jnp.asarray(b), 4)
  assert out.dtype == jnp.float32
  # Exact products (bf16 x bf16 fits float32), float32 sums: only the
  # summation order differs.
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_warp_positions_stay_float32():
  rng = np.random.default_rng(1)
  # A smooth but varying image 400 px wide: positions near x = 300, where
  # bfloat16's spacing is 2 px.
  xs = np.arange(400, dtype=np.float32)
  image = np.sin(xs / 3.0)[None, None, :, None] * np.ones((1, 4, 1, 8))
  image = np.asarray(jnp.asarray(image, BF16).astype(jnp.float32))
  flow = np.zeros((1, 4, 400, 2), np.float32)
  flow[..., 0] = rng.uniform(-0.5, 0.5, (1, 4, 400)).astype(np.float32)
  out = warp(jnp.asarray(image, BF16), jnp.asarray(flow))
  ref = warp(jnp.asarray(image), jnp.asarray(flow))
  assert out.dtype == BF16
  # bfloat16 output rounding (values in [-1, 1]: 2^-8), nothing more.
  np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=8e-3)


def test_deform_conv_positions_stay_float32():
  rng = np.random.default_rng(2)
  xs = np.arange(300, dtype=np.float32)
  x = np.sin(xs / 2.0)[None, None, :, None] * np.ones((1, 3, 1, 4))
  x = np.asarray(jnp.asarray(x, BF16).astype(jnp.float32))
  offset = rng.uniform(-0.5, 0.5, (1, 3, 300, 18)).astype(np.float32)
  kernel = _rounded(rng, (3, 3, 4, 2)) * 0.1
  out = deform_conv2d(jnp.asarray(x, BF16), jnp.asarray(offset),
                      jnp.asarray(kernel, BF16))
  ref = deform_conv2d(jnp.asarray(x), jnp.asarray(offset),
                      jnp.asarray(kernel))
  assert out.dtype == BF16
  scale = float(np.abs(ref).max())
  # bfloat16 rounding of the sampled values and of the 36-term sum.
  np.testing.assert_allclose(np.asarray(out, np.float32), ref,
                             atol=2e-2 * scale)
