"""ResNet backbones (NHWC) with frozen BatchNorm, returning C2-C5.

Layout and parameter names mirror torchvision's ResNet so ImageNet weights
import one-to-one (`vpsnet_jax.checkpoints.torchvision_import`):
`conv1`, `bn1`, `layer{1..4}_{block}` with `conv{1,2,3}`, `bn{1,2,3}`,
`downsample_conv`, `downsample_bn`. Bottleneck blocks put the stride on the
3x3 convolution (torchvision v1.5 and mmdetection's style='pytorch').

BatchNorm is frozen: y = (x - mean) / sqrt(var + eps) * scale + bias with the
statistics (and, by default, the affine scale/bias too) stored in the
`batch_stats` collection, which the optimizer never sees. mmdetection v1
(norm_eval=True, requires_grad=True) trains the affine part; set
`train_bn_affine=True` to put scale/bias in `params` instead.
"""
from typing import Any, Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from vpsnet_jax.ops import conv as conv_ops

Dtype = Any
ModuleDef = conv_ops.ModuleDef

# depth -> (block kind, blocks per stage)
RESNET_SPECS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}
BN_EPS = 1e-5


class FrozenBatchNorm(nn.Module):
  """BatchNorm with fixed statistics. x: (..., C) -> (..., C)."""
  train_affine: bool = False
  epsilon: float = BN_EPS
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
    var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
    if self.train_affine:
      scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
      bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    else:
      scale = self.variable("batch_stats", "scale", jnp.ones, (c,),
                            jnp.float32).value
      bias = self.variable("batch_stats", "bias", jnp.zeros, (c,),
                           jnp.float32).value
    mul = scale * jax.lax.rsqrt(var.value + self.epsilon)
    add = bias - mean.value * mul
    return x * mul.astype(self.dtype) + add.astype(self.dtype)


def _conv(conv, features, kernel, stride, dtype, name):
  pad = kernel // 2
  return conv(features, (kernel, kernel), (stride, stride),
              padding=((pad, pad), (pad, pad)), use_bias=False, dtype=dtype,
              name=name)


class BasicBlock(nn.Module):
  """Two 3x3 convolutions (ResNet-18/34). x: (N, H, W, Cin)."""
  features: int
  stride: int = 1
  train_bn_affine: bool = False
  dtype: Dtype = jnp.float32
  conv: ModuleDef = conv_ops.Conv
  expansion = 1

  @nn.compact
  def __call__(self, x):
    bn = lambda name: FrozenBatchNorm(self.train_bn_affine, dtype=self.dtype,
                                      name=name)
    conv = lambda f, k, s, name: _conv(self.conv, f, k, s, self.dtype, name)
    y = nn.relu(bn("bn1")(conv(self.features, 3, self.stride, "conv1")(x)))
    y = bn("bn2")(conv(self.features, 3, 1, "conv2")(y))
    if self.stride != 1 or x.shape[-1] != self.features:
      x = bn("downsample_bn")(conv(self.features, 1, self.stride,
                                   "downsample_conv")(x))
    return nn.relu(x + y)


class Bottleneck(nn.Module):
  """1x1 - 3x3 (strided) - 1x1 block (ResNet-50/101). x: (N, H, W, Cin)."""
  features: int
  stride: int = 1
  train_bn_affine: bool = False
  dtype: Dtype = jnp.float32
  conv: ModuleDef = conv_ops.Conv
  expansion = 4

  @nn.compact
  def __call__(self, x):
    out = self.features * self.expansion
    bn = lambda name: FrozenBatchNorm(self.train_bn_affine, dtype=self.dtype,
                                      name=name)
    conv = lambda f, k, s, name: _conv(self.conv, f, k, s, self.dtype, name)
    y = nn.relu(bn("bn1")(conv(self.features, 1, 1, "conv1")(x)))
    y = nn.relu(bn("bn2")(conv(self.features, 3, self.stride, "conv2")(y)))
    y = bn("bn3")(conv(out, 1, 1, "conv3")(y))
    if self.stride != 1 or x.shape[-1] != out:
      x = bn("downsample_bn")(conv(out, 1, self.stride,
                                   "downsample_conv")(x))
    return nn.relu(x + y)


class ResNet(nn.Module):
  """ResNet trunk returning (C2, C3, C4, C5) at strides (4, 8, 16, 32).

  Attributes:
    depth: 18, 34, 50 or 101.
    frozen_stages: -1 trains everything; 0 freezes the stem; k >= 1 also
      freezes layer1..layerk (mmdetection v1 default: 1). Freezing is a
      `stop_gradient` (no gradient and no backward compute); the optimizer
      should also skip them (see `trainable_mask`).
    train_bn_affine: see the module docstring.
    dtype: compute dtype (e.g. jnp.bfloat16); parameters stay float32.
    conv: the convolution module (`conv_ops.Conv` or `conv_ops.conv_def(
      impl)`); it does not change the parameters.
    remat: rematerialise every residual block (`nn.remat`: its
      activations recomputed in the backward pass); same parameters.
  """
  depth: int = 50
  frozen_stages: int = 1
  train_bn_affine: bool = False
  dtype: Dtype = jnp.float32
  conv: ModuleDef = conv_ops.Conv
  remat: bool = False

  @nn.compact
  def __call__(self, images: jnp.ndarray) -> Tuple[jnp.ndarray, ...]:
    """images: (N, H, W, 3) float32 -> 4 arrays (N, H/s, W/s, C_s)."""
    if self.depth not in RESNET_SPECS:
      raise ValueError(f"unsupported depth {self.depth}; "
                       f"choose from {sorted(RESNET_SPECS)}")
    kind, blocks = RESNET_SPECS[self.depth]
    block_cls = BasicBlock if kind == "basic" else Bottleneck
    if self.remat:
      block_cls = nn.remat(block_cls)
    x = images.astype(self.dtype)
    x = _conv(self.conv, 64, 7, 2, self.dtype, "conv1")(x)
    x = nn.relu(FrozenBatchNorm(self.train_bn_affine, dtype=self.dtype,
                                name="bn1")(x))
    x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    if self.frozen_stages >= 0:
      x = jax.lax.stop_gradient(x)
    outputs = []
    for stage, num in enumerate(blocks):
      width = 64 * 2 ** stage
      for i in range(num):
        stride = 2 if (i == 0 and stage > 0) else 1
        x = block_cls(width, stride, self.train_bn_affine, self.dtype,
                      conv=self.conv, name=f"layer{stage + 1}_{i}")(x)
      if stage + 1 <= self.frozen_stages:
        x = jax.lax.stop_gradient(x)
      outputs.append(x)
    return tuple(outputs)


def out_channels(depth: int) -> Tuple[int, int, int, int]:
  """Channels of (C2, C3, C4, C5) for a ResNet depth."""
  kind, _ = RESNET_SPECS[depth]
  mult = 1 if kind == "basic" else 4
  return tuple(64 * 2 ** i * mult for i in range(4))


def trainable_mask(params: Dict[str, Any], frozen_stages: int) -> Any:
  """Pytree of bools over ResNet `params`: False for frozen modules.

  Use with `optax.masked` so weight decay does not move frozen weights.
  """
  frozen = set()
  if frozen_stages >= 0:
    frozen |= {"conv1", "bn1"}

  def is_frozen(name):
    if name in frozen:
      return True
    if name.startswith("layer"):
      return int(name[5:].split("_")[0]) <= frozen_stages
    return False

  return {name: jax.tree_util.tree_map(lambda _: not is_frozen(name), sub)
          for name, sub in params.items()}
