"""VPSNet's Fuse module: align (learned flow refinement) + attend (TCEA).

Both work on the gathered neck feature (1/4 of the image, NHWC). Frames
without a reference (the first frame of a video, or the "Base" input) run
the same code with the target as its own reference and zero flow, selected
per sample by `has_reference`, so shapes and compiled functions are the same
for every frame.
"""
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from vpsnet_jax.ops import conv as conv_ops
from vpsnet_jax.ops.correlation import correlation
from vpsnet_jax.ops.resize import upsample_bilinear
from vpsnet_jax.ops.warp import warp

ModuleDef = conv_ops.ModuleDef

# The release's BFPTcea.init_weights re-initialises every conv of the neck,
# flow estimator and TCEA included, Xavier-uniform with zero bias (TCEA's own
# Kaiming init is overwritten).
_XAVIER = nn.initializers.xavier_uniform()


def _conv(conv: ModuleDef, features: int, size: int, dtype: Any,
          name: str) -> nn.Module:
  pad = (size - 1) // 2
  return conv(features, (size, size), padding=((pad, pad), (pad, pad)),
              dtype=dtype, kernel_init=_XAVIER, name=name)


def _lrelu(x: jnp.ndarray) -> jnp.ndarray:
  return nn.leaky_relu(x, negative_slope=0.1)


def select_reference(target: jnp.ndarray, reference: jnp.ndarray,
                     flow: jnp.ndarray, has_reference: jnp.ndarray
                    ) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """Per sample: (reference, flow) if it has one, else (target, zero flow).

  Args:
    target, reference: (N, H, W, C).
    flow: (N, H, W, 2).
    has_reference: (N,) bool.
  """
  m = has_reference.reshape(-1, 1, 1, 1)
  return jnp.where(m, reference, target), jnp.where(m, flow, 0.0)


class Align(nn.Module):
  """Warps the reference to the target by the initial flow, refines, rewarps.

  refined_flow = conv3x3->2 o [conv3x3 + lrelu(0.1)] x3 (64, 64, 32) of
  concat(target, correlation(target, warped, 4), initial_flow), as the
  release's `LiteFlowNetCorr`; output = warp(warped, refined_flow): two
  warps in sequence, as the release's `BFPTcea.forward`, not one by the sum
  of the flows. `grid`: the warp's sampling grid (`ops.warp.warp`: "exact"
  or the release's "release"). `conv`: the convolution module
  (`conv_ops.Conv` or `conv_ops.conv_def(impl)`).
  """
  max_displacement: int = 4
  dtype: Any = jnp.float32
  conv: ModuleDef = conv_ops.Conv
  grid: str = "exact"

  @nn.compact
  def __call__(self, target: jnp.ndarray, reference: jnp.ndarray,
               flow: jnp.ndarray) -> Tuple[jnp.ndarray, jnp.ndarray]:
    """target, reference: (N, H, W, C); flow: (N, H, W, 2) as (dx, dy) pixels.

    Returns:
      aligned reference (N, H, W, C) and refined flow (N, H, W, 2) (the
      residual flow applied after the initial one).
    """
    warped = warp(reference, flow, grid=self.grid)
    corr = correlation(target, warped, self.max_displacement)
    x = jnp.concatenate(
        [target.astype(self.dtype), corr.astype(self.dtype),
         flow.astype(self.dtype)], axis=-1)
    conv = lambda f, name: _conv(self.conv, f, 3, self.dtype, name)
    for i, features in enumerate((64, 64, 32)):
      x = _lrelu(conv(features, f"flow_conv{i}")(x))
    fine = conv(2, "flow_out")(x).astype(jnp.float32)
    return warp(warped, fine, grid=self.grid), fine


def _max_pool(x: jnp.ndarray) -> jnp.ndarray:
  """3x3, stride 2, pad 1 (padding never wins the max)."""
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


def _avg_pool(x: jnp.ndarray) -> jnp.ndarray:
  """3x3, stride 2, pad 1, zeros counted (torch's count_include_pad=True)."""
  return nn.avg_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                     count_include_pad=True)


class Attend(nn.Module):
  """EDVR-style TCEA fusion with the frame `center` (the target) as centre.

  Temporal attention: sigmoid(sum_c emb_t * emb_centre) multiplies each
  frame's features (embeddings: 3x3 convs, one for the centre, one shared by
  all frames). Fusion: lrelu(1x1 conv) of the frames' concatenation. Spatial
  attention from the concatenation: lrelu(1x1), max- and avg-pool (3x3,
  stride 2), lrelu(1x1) of both, lrelu(3x3), bilinear x2, 3x3 -> att;
  att_add = 1x1(lrelu(1x1(att))). Output fused * sigmoid(att) * 2 + att_add.
  `conv`: the convolution module.
  """
  center: int = 0
  dtype: Any = jnp.float32
  conv: ModuleDef = conv_ops.Conv

  @nn.compact
  def __call__(self, frames: jnp.ndarray) -> jnp.ndarray:
    """frames: (N, T, H, W, C), H and W even -> (N, H, W, C)."""
    n, t, h, w, c = frames.shape
    if h % 2 or w % 2:
      raise ValueError(f"Attend needs even H and W, got {h}x{w}")
    conv = lambda f, k, name: _conv(self.conv, f, k, self.dtype, name)
    frames = frames.astype(self.dtype)
    emb_ref = conv(c, 3, "t_att_center")(frames[:, self.center])
    emb = conv(c, 3, "t_att_frames")(frames.reshape(n * t, h, w, c))
    emb = emb.reshape(n, t, h, w, c)
    prob = jax.nn.sigmoid(jnp.sum(emb * emb_ref[:, None], axis=-1))
    weighted = frames * prob[..., None]
    # Frame-major channel order, as the release's view(B, -1, H, W).
    stacked = jnp.moveaxis(weighted, 1, 3).reshape(n, h, w, t * c)
    fea = _lrelu(conv(c, 1, "fusion")(stacked))

    att = _lrelu(conv(c, 1, "s_att_1")(stacked))
    att = jnp.concatenate([_max_pool(att), _avg_pool(att)], axis=-1)
    att = _lrelu(conv(c, 1, "s_att_2")(att))
    att = _lrelu(conv(c, 3, "s_att_3")(att))
    att = upsample_bilinear(att, (h, w))
    att = conv(c, 3, "s_att_4")(att)
    att_add = conv(c, 1, "s_att_add_2")(_lrelu(conv(c, 1, "s_att_add_1")(att)))
    return fea * jax.nn.sigmoid(att) * 2 + att_add


class Fuse(nn.Module):
  """Align the reference to the target, then attend over [target, aligned].

  Attributes:
    max_displacement: correlation search radius of the flow refinement.
    use_align: False for the "attend" variant (fusion without alignment:
      the reference goes to attend unwarped).
    use_attend: False for the "align" variant (fusion without attention:
      the mean of the target and the aligned reference).
    dtype: compute dtype; params stay float32.
    conv: the convolution module (`conv_ops.Conv` or `conv_ops.conv_def(
      impl)`), passed to align and attend.
    warp_grid: align's warp grid, "exact" or "release" (`ops.warp.warp`).
  """
  max_displacement: int = 4
  use_align: bool = True
  use_attend: bool = True
  dtype: Any = jnp.float32
  conv: ModuleDef = conv_ops.Conv
  warp_grid: str = "exact"

  @nn.compact
  def __call__(self, target: jnp.ndarray, reference: jnp.ndarray,
               flow: jnp.ndarray,
               has_reference: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    """Fuses gathered features of the target and its reference frame.

    Args:
      target, reference: (N, H, W, C) gathered neck features.
      flow: (N, H, W, 2) initial flow target -> reference, (dx, dy) pixels.
      has_reference: optional (N,) bool; where False the target is its own
        reference with zero flow (same code path and shapes).

    Returns:
      (N, H, W, C) fused feature.
    """
    if has_reference is not None:
      reference, flow = select_reference(target, reference, flow,
                                         has_reference)
    if self.use_align:
      reference, _ = Align(self.max_displacement, self.dtype, conv=self.conv,
                           grid=self.warp_grid, name="align")(
                               target, reference, flow)
    reference = reference.astype(target.dtype)
    if not self.use_attend:
      return (target + reference) * 0.5
    frames = jnp.stack([target, reference], axis=1)
    return Attend(center=0, dtype=self.dtype, conv=self.conv,
                  name="attend")(frames)
