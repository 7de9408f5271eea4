"""Resizing of NHWC feature maps and of optical flow.

`upsample_bilinear` is the bilinear upsampling of the semantic head and of
the Fuse module's spatial attention; `quarter_flow` brings a full-resolution
flow to the 1/4 scale of VPSNet's gathered feature, on the host (NumPy) or
on the device (JAX) with the same arithmetic.
"""
from typing import Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np


def upsample_bilinear(x: jnp.ndarray, size: Tuple[int, int]) -> jnp.ndarray:
  """(N, H, W, C) -> (N, h, w, C) bilinear; for upsampling equals torch's
  `F.interpolate(..., mode='bilinear', align_corners=False)`."""
  n, _, _, c = x.shape
  return jax.image.resize(x, (n, size[0], size[1], c), "bilinear")


def quarter_flow(flow: Union[np.ndarray, jnp.ndarray],
                 stride: int = 4) -> Union[np.ndarray, jnp.ndarray]:
  """Full-resolution flow [..., H, W, 2] in pixels -> [..., H/s, W/s, 2] at
  the gathered feature's scale (s = `stride`), vectors divided by s,
  float32: the release's `F.interpolate(flow, scale_factor=1/s,
  mode='bilinear', align_corners=False) / s`. Output pixel i samples the
  source position s*i + (s - 1)/2, i.e. the mean of the block's two centre
  rows and columns (s even) or its centre pixel (s odd).

  A NumPy array gives a NumPy array (host side, nothing goes to a device);
  anything else (a JAX array, a tracer) is computed with `jax.numpy`.

  Raises:
    ValueError: H or W is not a multiple of `stride`.
  """
  xp = np if isinstance(flow, np.ndarray) else jnp
  *lead, h, w, _ = flow.shape
  if h % stride or w % stride:
    raise ValueError(f"flow size {h}x{w} is not a multiple of {stride}")
  f = flow.astype(xp.float32).reshape(
      tuple(lead) + (h // stride, stride, w // stride, stride, 2))
  centre = sorted({(stride - 1) // 2, stride // 2})
  f = f[..., centre, :, :, :][..., centre, :]
  return (f.mean(axis=(-4, -2)) / xp.float32(stride)).astype(xp.float32)
