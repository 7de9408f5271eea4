"""Feature pyramid network (mmdetection v1 `FPN`, num_outs=5, P6 by pooling).

Inputs C2..C5, outputs P2..P6 with `features` channels: 1x1 lateral
convolutions, a top-down path with nearest upsampling and addition, 3x3
output convolutions (no activation), and P6 = max-pool(P5, kernel 1,
stride 2), i.e. P5[:, ::2, ::2]. Convolutions have biases and Xavier-uniform
initialisation as in mmdetection v1.

Upsampling uses PyTorch's `nearest` rule for an output size
(src = floor(dst * in / out)), which equals mmdetection's scale_factor=2 for
the usual inputs padded to a multiple of 32 and torchvision's
FeaturePyramidNetwork for any size.
"""
from typing import Any, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vpsnet_jax.ops import conv as conv_ops

Dtype = Any
ModuleDef = conv_ops.ModuleDef


def upsample_nearest(x: jnp.ndarray, size: Tuple[int, int]) -> jnp.ndarray:
  """(N, h, w, C) -> (N, H, W, C) with src = floor(dst * in / out)."""
  h, w = x.shape[1:3]
  rows = np.floor(np.arange(size[0]) * (h / size[0])).astype(np.int32)
  cols = np.floor(np.arange(size[1]) * (w / size[1])).astype(np.int32)
  if size[0] == 2 * h:
    rows = np.arange(size[0]) // 2
  if size[1] == 2 * w:
    cols = np.arange(size[1]) // 2
  return x[:, rows][:, :, cols]


class FPN(nn.Module):
  """Attributes:
    features: output channels (256 in mmdetection v1).
    num_outs: number of outputs; levels beyond the inputs are max-pooled
      (kernel 1, stride 2) from the previous output.
    dtype: compute dtype; parameters are float32.
    conv: the convolution module (`conv_ops.Conv` or `conv_ops.conv_def(
      impl)`).
  """
  features: int = 256
  num_outs: int = 5
  dtype: Dtype = jnp.float32
  conv: ModuleDef = conv_ops.Conv

  @nn.compact
  def __call__(self, inputs: Sequence[jnp.ndarray]) -> Tuple[jnp.ndarray, ...]:
    """inputs: L arrays (N, H_l, W_l, C_l), finest first -> num_outs arrays
    (N, H_l, W_l, features)."""
    if self.num_outs < len(inputs):
      raise ValueError("num_outs must be at least the number of inputs")
    conv = lambda k, name: self.conv(
        self.features, (k, k), padding=((k // 2, k // 2),) * 2,
        dtype=self.dtype, kernel_init=nn.initializers.xavier_uniform(),
        bias_init=nn.initializers.zeros, name=name)
    laterals = [conv(1, f"lateral_{i}")(x.astype(self.dtype))
                for i, x in enumerate(inputs)]
    for i in range(len(laterals) - 1, 0, -1):
      laterals[i - 1] = laterals[i - 1] + upsample_nearest(
          laterals[i], laterals[i - 1].shape[1:3])
    outs = [conv(3, f"output_{i}")(x) for i, x in enumerate(laterals)]
    while len(outs) < self.num_outs:
      outs.append(outs[-1][:, ::2, ::2])
    return tuple(outs)
