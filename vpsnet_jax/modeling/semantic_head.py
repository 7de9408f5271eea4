"""UPSNet semantic head: shared deformable-conv stack on P2..P5, logits at 1/4.

Per level: three [3x3 deformable conv (own zero-initialised 3x3 offset conv)
-> GroupNorm(32) -> ReLU] with 256 -> 128 -> 128 channels, weights shared by
all levels; each level's output bilinearly upsampled to P2's size; the four
concatenated (512 channels); a 1x1 conv to class logits at 1/4 scale; the
logits bilinearly upsampled x4. All arrays NHWC.
"""
from typing import Any, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from vpsnet_jax.ops import conv as conv_ops
from vpsnet_jax.ops.deform_conv import deform_conv2d
from vpsnet_jax.ops.resize import upsample_bilinear

ModuleDef = conv_ops.ModuleDef


class DeformConv(nn.Module):
  """3x3 deformable conv v1 with its own offset conv (zero init), no bias.

  (N, H, W, Cin) -> (N, H, W, features). `conv` (the module of the offset
  convolution): `conv_ops.Conv` or `conv_ops.conv_def(impl)`; the
  deformable convolution itself has one implementation (sampling + matmul).
  """
  features: int
  dtype: Any = jnp.float32
  conv: ModuleDef = conv_ops.Conv

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    offset = self.conv(18, (3, 3), padding=((1, 1), (1, 1)),
                       dtype=self.dtype, kernel_init=nn.initializers.zeros,
                       bias_init=nn.initializers.zeros, name="offset")(x)
    kernel = self.param("kernel", nn.initializers.kaiming_normal(),
                        (3, 3, x.shape[-1], self.features), jnp.float32)
    return deform_conv2d(x.astype(self.dtype), offset.astype(jnp.float32),
                         kernel.astype(self.dtype), padding=1)


class DeformStack(nn.Module):
  """Three DeformConv + GroupNorm + ReLU blocks (the per-level branch)."""
  features: Sequence[int] = (128, 128, 128)
  num_groups: int = 32
  dtype: Any = jnp.float32
  conv: ModuleDef = conv_ops.Conv

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    for i, f in enumerate(self.features):
      x = DeformConv(f, self.dtype, conv=self.conv, name=f"dconv{i}")(x)
      x = nn.GroupNorm(num_groups=self.num_groups, epsilon=1e-5,
                       dtype=self.dtype, name=f"gn{i}")(x)
      x = nn.relu(x)
    return x


class SemanticHead(nn.Module):
  """UPSNet semantic head.

  Attributes:
    num_classes: number of semantic classes (stuff + things).
    features: channels of the three deformable convs.
    num_groups: GroupNorm groups.
    upsample: factor from the logits (P2 = 1/4) to the image.
    dtype: compute dtype; parameters are float32.
    conv: the convolution module (`conv_ops.Conv` or `conv_ops.conv_def(
      impl)`).
  """
  num_classes: int
  features: Sequence[int] = (128, 128, 128)
  num_groups: int = 32
  upsample: int = 4
  dtype: Any = jnp.float32
  conv: ModuleDef = conv_ops.Conv

  @nn.compact
  def __call__(self, levels: Sequence[jnp.ndarray]
              ) -> Tuple[jnp.ndarray, jnp.ndarray]:
    """levels: [P2, P3, P4, P5], each (N, H_l, W_l, C) (P6 is not used).

    Returns:
      logits at P2 size (N, H2, W2, num_classes), float32, and the same
      upsampled by `upsample` (N, upsample*H2, upsample*W2, num_classes).
    """
    stack = DeformStack(self.features, self.num_groups, self.dtype,
                        conv=self.conv, name="stack")
    n, h, w, _ = levels[0].shape
    outs = [upsample_bilinear(stack(p), (h, w)) if i else stack(p)
            for i, p in enumerate(levels)]
    x = jnp.concatenate(outs, axis=-1)
    logits = self.conv(self.num_classes, (1, 1), dtype=self.dtype,
                       name="logits")(x).astype(jnp.float32)
    full = upsample_bilinear(logits, (h * self.upsample, w * self.upsample))
    return logits, full


def semantic_loss(logits: jnp.ndarray, labels: jnp.ndarray,
                  ignore_label: int = 255) -> jnp.ndarray:
  """Mean pixel cross-entropy over labelled pixels.

  Args:
    logits: (N, H, W, K) float.
    labels: (N, H, W) int, `ignore_label` for unlabelled pixels.

  Returns:
    scalar float32; 0 if no pixel is labelled.
  """
  if logits.shape[:-1] != labels.shape:
    raise ValueError(f"logits {logits.shape} and labels {labels.shape} differ")
  valid = labels != ignore_label
  safe = jnp.where(valid, labels, 0).astype(jnp.int32)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
  count = jnp.sum(valid)
  return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.maximum(count, 1)
