"""Parity of `deform_conv2d` with `torchvision.ops.deform_conv2d` (float64)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from vpsnet_jax.ops.deform_conv import deform_conv2d, output_size

# (kh, kw, stride, padding, dilation, bias)
CASES = [
    (3, 3, 1, 1, 1, True),
    (3, 3, 2, 1, 1, False),
    (3, 3, 1, 2, 2, True),
    (2, 3, (2, 1), (0, 1), (1, 2), True),
]


def _inputs(kh, kw, stride, padding, dilation, seed=0):
  rng = np.random.default_rng(seed)
  n, h, w, cin, cout = 2, 7, 9, 5, 4
  pair = lambda v: (v, v) if isinstance(v, int) else v
  s, p, d = pair(stride), pair(padding), pair(dilation)
  ho = output_size(h, kh, s[0], p[0], d[0])
  wo = output_size(w, kw, s[1], p[1], d[1])
  x = rng.standard_normal((n, h, w, cin)).astype(np.float32)
  # Large offsets: many taps sample partly or fully outside the image.
  offset = (3.0 * rng.standard_normal((n, ho, wo, 2 * kh * kw))).astype(
      np.float32)
  kernel = (0.3 * rng.standard_normal((kh, kw, cin, cout))).astype(np.float32)
  bias = rng.standard_normal((cout,)).astype(np.float32)
  cot = rng.standard_normal((n, ho, wo, cout)).astype(np.float32)
  return x, offset, kernel, bias, cot


def _torch_reference(x, offset, kernel, bias, cot, stride, padding, dilation):
  """Output and gradients (x, offset, kernel) in NHWC, float64."""
  xt = torch.tensor(x, dtype=torch.float64).permute(0, 3, 1, 2)
  ot = torch.tensor(offset, dtype=torch.float64).permute(0, 3, 1, 2)
  kt = torch.tensor(kernel, dtype=torch.float64).permute(3, 2, 0, 1)
  xt, ot, kt = [t.contiguous().requires_grad_(True) for t in (xt, ot, kt)]
  bt = None if bias is None else torch.tensor(bias, dtype=torch.float64)
  out = torchvision.ops.deform_conv2d(xt, ot, kt, bt, stride=stride,
                                      padding=padding, dilation=dilation)
  ct = torch.tensor(cot, dtype=torch.float64).permute(0, 3, 1, 2)
  (out * ct).sum().backward()
  nhwc = lambda t: t.detach().permute(0, 2, 3, 1).numpy()
  return (nhwc(out), nhwc(xt.grad), nhwc(ot.grad),
          kt.grad.permute(2, 3, 1, 0).numpy())


@pytest.mark.parametrize("kh,kw,stride,padding,dilation,use_bias", CASES)
def test_matches_torchvision(kh, kw, stride, padding, dilation, use_bias):
  x, offset, kernel, bias, cot = _inputs(kh, kw, stride, padding, dilation)
  bias = bias if use_bias else None
  ref_out, ref_dx, ref_doff, ref_dk = _torch_reference(
      x, offset, kernel, bias, cot, stride, padding, dilation)

  def loss(x, offset, kernel):
    out = deform_conv2d(x, offset, kernel, bias, stride=stride,
                        padding=padding, dilation=dilation)
    return jnp.sum(out * cot), out

  (_, out), (dx, doff, dk) = jax.jit(
      jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(
          x, offset, kernel)
  np.testing.assert_allclose(out, ref_out, atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(dx, ref_dx, atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(doff, ref_doff, atol=5e-5, rtol=1e-5)
  np.testing.assert_allclose(dk, ref_dk, atol=5e-5, rtol=1e-5)


def test_zero_offset_is_plain_conv():
  x, offset, kernel, bias, _ = _inputs(3, 3, 1, 1, 1, seed=1)
  out = deform_conv2d(x, jnp.zeros_like(offset), kernel, bias)
  ref = jax.lax.conv_general_dilated(
      x, kernel, (1, 1), ((1, 1), (1, 1)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=jax.lax.Precision.HIGHEST) + bias
  np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)


def test_bfloat16_compute_dtype_close_to_float32():
  x, offset, kernel, bias, _ = _inputs(3, 3, 1, 1, 1, seed=2)
  ref = deform_conv2d(x, offset, kernel, bias)
  out = deform_conv2d(x.astype(jnp.bfloat16), offset, kernel, bias)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(out.astype(np.float32), ref, atol=0.1, rtol=0.05)


def test_rejects_wrong_offset_shape():
  x, offset, kernel, _, _ = _inputs(3, 3, 1, 1, 1)
  with pytest.raises(ValueError, match="offset must be"):
    deform_conv2d(x, offset[:, :-1], kernel)


def test_gradients_with_chunked_backward_loop(monkeypatch):
  """The backward loops over chunks of samples; force many, uneven chunks."""
  from vpsnet_jax.ops import warp as warp_module
  monkeypatch.setattr(warp_module, "_BWD_CHUNK_ELEMENTS", 5 * 7)  # 7 samples.
  x, offset, kernel, bias, cot = _inputs(3, 3, 2, 1, 1, seed=3)
  _, ref_dx, ref_doff, ref_dk = _torch_reference(x, offset, kernel, bias, cot,
                                                 2, 1, 1)
  loss = lambda *a: jnp.sum(deform_conv2d(*a, bias, stride=2) * cot)
  dx, doff, dk = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(x, offset, kernel)
  np.testing.assert_allclose(dx, ref_dx, atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(doff, ref_doff, atol=5e-5, rtol=1e-5)
  np.testing.assert_allclose(dk, ref_dk, atol=5e-5, rtol=1e-5)
