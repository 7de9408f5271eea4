"""Gather-and-redistribute neck (the release's `BFPTcea`, refine level P2).

gather:        resize P2..P6 to P2's size (torch-style nearest) and average;
refine:        a 3x3 conv + ReLU on the fused map (mmdet v1 `ConvModule`);
redistribute:  add the refined map back to every level, resized to the
               level by adaptive max pooling (P2 keeps it as is).

The video fusion (`fuse.Fuse`) runs between gather and refine; the
assembled model chains the three. All arrays NHWC.
"""
from typing import Any, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vpsnet_jax.ops import conv as conv_ops


def _nearest_indices(in_size: int, out_size: int) -> np.ndarray:
  """torch `F.interpolate(mode='nearest')` source indices: floor(i*in/out)."""
  return np.minimum((np.arange(out_size) * in_size) // out_size, in_size - 1)


def resize_nearest(x: jnp.ndarray, size: Tuple[int, int]) -> jnp.ndarray:
  """(N, H, W, C) -> (N, h, w, C), nearest neighbour as torch computes it."""
  _, h, w, _ = x.shape
  x = jnp.take(x, _nearest_indices(h, size[0]), axis=1)
  return jnp.take(x, _nearest_indices(w, size[1]), axis=2)


def _adaptive_max_1d(x: jnp.ndarray, axis: int, out_size: int) -> jnp.ndarray:
  """torch adaptive max pooling along one axis (bins [floor, ceil))."""
  in_size = x.shape[axis]
  if in_size == out_size:
    return x
  i = np.arange(out_size)
  start = (i * in_size) // out_size
  end = -((-(i + 1) * in_size) // out_size)
  length = int(np.max(end - start))
  idx = start[:, None] + np.arange(length)[None, :]  # (out, length)
  valid = idx < end[:, None]
  idx = np.minimum(idx, in_size - 1)
  g = jnp.take(x, idx.reshape(-1), axis=axis)
  shape = x.shape[:axis] + (out_size, length) + x.shape[axis + 1:]
  g = g.reshape(shape)
  mask_shape = [1] * len(shape)
  mask_shape[axis], mask_shape[axis + 1] = out_size, length
  g = jnp.where(valid.reshape(mask_shape), g, -jnp.inf)
  return jnp.max(g, axis=axis + 1)


def adaptive_max_pool(x: jnp.ndarray, size: Tuple[int, int]) -> jnp.ndarray:
  """(N, H, W, C) -> (N, h, w, C), same bins as torch `adaptive_max_pool2d`."""
  return _adaptive_max_1d(_adaptive_max_1d(x, 1, size[0]), 2, size[1])


def gather(levels: Sequence[jnp.ndarray]) -> jnp.ndarray:
  """Average of all levels resized (nearest) to the first level's size.

  Args:
    levels: [P2, P3, ...], each (N, H_l, W_l, C), finest first.

  Returns:
    (N, H_2, W_2, C).
  """
  if not levels:
    raise ValueError("gather needs at least one level")
  size = levels[0].shape[1:3]
  total = sum(resize_nearest(p, size) for p in levels)
  return total / len(levels)


def redistribute(refined: jnp.ndarray,
                 levels: Sequence[jnp.ndarray]) -> Tuple[jnp.ndarray, ...]:
  """Adds `refined` to every level, adaptive-max-pooled to the level's size.

  Args:
    refined: (N, H_2, W_2, C) at the first level's size.
    levels: [P2, P3, ...], each (N, H_l, W_l, C).

  Returns:
    Tuple of the levels' shapes: P_l + adaptive_max_pool(refined, size_l).
  """
  return tuple(
      p + adaptive_max_pool(refined, p.shape[1:3]).astype(p.dtype)
      for p in levels)


class Refine(nn.Module):
  """3x3 conv + ReLU on the fused map (Xavier-uniform init, zero bias).

  (N, H, W, C) -> (N, H, W, C). `conv`: the convolution module
  (`conv_ops.Conv` or `conv_ops.conv_def(impl)`).
  """
  dtype: Any = jnp.float32
  conv: conv_ops.ModuleDef = conv_ops.Conv

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    x = self.conv(x.shape[-1], (3, 3), padding=((1, 1), (1, 1)),
                  dtype=self.dtype,
                  kernel_init=nn.initializers.xavier_uniform(),
                  name="conv")(x)
    return nn.relu(x)
