"""`quarter_flow`: torch's bilinear downscale / stride (the release's) on
NumPy (stays NumPy) and JAX arrays, any leading axes; `upsample_bilinear`
equals torch's bilinear interpolation (align_corners=False) for
upsampling."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vpsnet_jax.ops.resize import quarter_flow
from vpsnet_jax.ops.resize import upsample_bilinear


def _loop_reference(flow, stride):
  """torch's F.interpolate(bilinear, scale 1/stride, align_corners=False)
  on (N, 2, H, W), divided by the stride (the release's flow downscale)."""
  import torchvision  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel
  *lead, h, w, _ = flow.shape
  flat = torch.from_numpy(flow.reshape((-1, h, w, 2)).astype(np.float64))
  out = F.interpolate(flat.permute(0, 3, 1, 2), scale_factor=1.0 / stride,
                      mode="bilinear", align_corners=False) / stride
  out = out.permute(0, 2, 3, 1).numpy()
  return out.reshape(tuple(lead) + out.shape[1:])


@pytest.mark.parametrize("shape,stride", [
    ((2, 8, 12, 2), 4), ((8, 12, 2), 4), ((3, 2, 8, 4, 2), 4),
    ((1, 6, 9, 2), 3)])
def test_quarter_flow_numpy_and_jax(shape, stride):
  flow = np.random.default_rng(0).normal(0, 5, shape).astype(np.float32)
  ref = _loop_reference(flow, stride)
  host = quarter_flow(flow, stride)
  assert type(host) is np.ndarray and host.dtype == np.float32
  np.testing.assert_allclose(host, ref, rtol=1e-5, atol=1e-5)
  dev = quarter_flow(jnp.asarray(flow), stride)
  assert isinstance(dev, jax.Array) and dev.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(dev), host, rtol=1e-6, atol=1e-6)
  jitted = jax.jit(lambda f: quarter_flow(f, stride))(flow)
  np.testing.assert_allclose(np.asarray(jitted), host, rtol=1e-6, atol=1e-6)
  # float64 input: float32 output.
  assert quarter_flow(flow.astype(np.float64), stride).dtype == np.float32


def test_quarter_flow_rejects_sizes_not_multiple_of_stride():
  with pytest.raises(ValueError, match="multiple of 4"):
    quarter_flow(np.zeros((1, 10, 8, 2), np.float32))
  with pytest.raises(ValueError, match="multiple of 4"):
    quarter_flow(jnp.zeros((1, 8, 6, 2)))


@pytest.mark.parametrize("size", [(8, 12), (16, 24), (7, 10)])
def test_upsample_bilinear_matches_torch(size):
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(1).standard_normal((2, 4, 6, 3)).astype(
      np.float32)
  ours = np.asarray(upsample_bilinear(jnp.asarray(x), size))
  ref = torch.nn.functional.interpolate(
      torch.from_numpy(x).permute(0, 3, 1, 2), size=size, mode="bilinear",
      align_corners=False).permute(0, 2, 3, 1).numpy()
  assert ours.shape == (2,) + size + (3,)
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
