"""FlowNet2 (Ilg et al., CVPR 2017) as the VPSNet release instantiates it.

The release computes the initial optical flow of its Align module with
NVIDIA's flownet2-pytorch `FlowNet2(args, batchNorm=False, div_flow=20)`,
`rgb_max=255`, `fp16=False`, frozen and in eval mode, under PyTorch 1.4.
This is that network in Flax, NHWC, number for number:

  FlowNet2
  |-- FlowNetC     correlation network: a shared 3-conv tower per image,
  |                correlation (d 20, stride 2: 441 channels), flow at 1/4
  |-- FlowNetS x2  ("flownets_1", "flownets_2") on the images, the warped
  |                second image, the flow so far and the brightness error
  |-- FlowNetSD    small-displacement network on the two images
  `-- FlowNetFusion  fuses the FlowNetS2 and FlowNetSD flows at full size

Every convolution is followed by LeakyReLU(0.1) except `predict_flow*`,
`inter_conv*` and the `upsampled_flow*` transposed convolutions; there is no
batch norm (batchNorm=False: every conv has a bias). Conventions kept from
the official code, each of which changes the numbers:

- Input: each image minus the per-channel mean over *both* images and all
  pixels, divided by `rgb_max`.
- FlowNetC and FlowNetS1 flows are multiplied by `div_flow` and upsampled x4
  bilinearly (align_corners=False, PyTorch >= 0.4's default); FlowNetS2's
  by nearest neighbour; FlowNetSD's flow is *divided* by `div_flow` before
  its nearest x4 upsampling (as trained). The fusion network's output is the
  flow in pixels (no further scaling).
- FlowNetS's `upsampled_flow*` have no bias; FlowNetC's, FlowNetSD's and
  FlowNetFusion's have one.
- Warping is `Resample2d` (`ops.warp.resample2d`: bilinear, positions
  outside take edge values), brightness errors `ChannelNorm` (L2 over
  channels).
- Convolutions pad (k - 1) // 2 on every side (PyTorch), not XLA's "SAME"
  (which pads stride-2 convolutions asymmetrically).

Parameter names follow the PyTorch module names (`flownetc/conv3_1`,
`flownets_d/inter_conv5`, `flownetfusion/upsampled_flow2_to_1`, ...), so
`checkpoints.flownet2_import` maps a state dict onto them by name.
"""
from typing import Any, Dict, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from vpsnet_jax.ops import conv as conv_lib
from vpsnet_jax.ops.correlation import correlation
from vpsnet_jax.ops.resize import upsample_bilinear
from vpsnet_jax.ops.warp import resample2d

# The release's `div_flow` and `rgb_max` (flownet2-pytorch's defaults).
DIV_FLOW = 20.0
RGB_MAX = 255.0
# Input sizes must be multiples of this (six stride-2 levels).
SIZE_DIVISOR = 64
# FlowNetC's correlation: Correlation(pad_size=20, kernel_size=1,
# max_displacement=20, stride1=1, stride2=2).
CORR_MAX_DISPLACEMENT = 20
CORR_STRIDE = 2
# Where the weights come from (errors that ask for them say it).
WEIGHTS_HELP = (
    "FlowNet2_checkpoint.pth.tar comes from NVIDIA's flownet2-pytorch "
    "(github.com/NVIDIA/flownet2-pytorch, README 'Converted Caffe "
    "Pre-trained Models'); a release VPSNet checkpoint imported with "
    "`python -m vpsnet_jax.checkpoints.release_import` leaves "
    "WORKDIR/flownet2_state.npz")


def channelnorm(x: jnp.ndarray) -> jnp.ndarray:
  """ChannelNorm (norm_deg 2): (N, H, W, C) -> (N, H, W, 1) L2 norm."""
  return jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))


def upsample_nearest(x: jnp.ndarray, factor: int) -> jnp.ndarray:
  """nn.Upsample(scale_factor=factor, mode='nearest'): (N, H, W, C) ->
  (N, H*f, W*f, C)."""
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def _leaky(x):
  return nn.leaky_relu(x, 0.1)


class ConvTranspose(nn.Module):
  """PyTorch `ConvTranspose2d(cin, features, kernel, stride, padding)`.

  `kernel` (kh, kw, cin, features) holds torch's weight (cin, features, kh,
  kw) with the tap axes first and unflipped: out[s*i - p + a, s*j - p + b]
  += x[i, j] @ kernel[a, b]. Computed as the convolution of the input
  dilated by `stride` with the flipped kernel, padded k - 1 - p.
  """
  features: int
  kernel_size: int = 4
  stride: int = 2
  padding: int = 1
  use_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    k = self.kernel_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (k, k, x.shape[-1], self.features), jnp.float32)
    pad = k - 1 - self.padding
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel[::-1, ::-1].astype(self.dtype),
        window_strides=(1, 1), padding=((pad, pad), (pad, pad)),
        lhs_dilation=(self.stride, self.stride),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if self.use_bias:
      bias = self.param("bias", nn.initializers.zeros, (self.features,),
                        jnp.float32)
      y = y + bias.astype(self.dtype)
    return y


class _Net(nn.Module):
  """Shared pieces of the FlowNet sub-networks (no parameters of its own).

  conv_impl: `ops.conv.conv2d`'s implementation ("xla" or "cpu").
  """
  conv_impl: str = "xla"
  dtype: Any = jnp.float32

  def layer(self, features: int, name: str, kernel: int = 3,
            stride: int = 1, relu: bool = True):
    """`submodules.conv` / `i_conv` / `predict_flow` as a function: Conv2d
    with bias, padding (k - 1) // 2, then LeakyReLU(0.1) when `relu`."""
    p = (kernel - 1) // 2
    module = conv_lib.Conv(features, (kernel, kernel), (stride, stride),
                           ((p, p), (p, p)), dtype=self.dtype,
                           impl=self.conv_impl, name=name)
    return lambda x: _leaky(module(x)) if relu else module(x)

  def conv(self, x, features: int, name: str, kernel: int = 3,
           stride: int = 1, relu: bool = True):
    """`layer(...)(x)`."""
    return self.layer(features, name, kernel, stride, relu)(x)

  def pair(self, x, features: int, level: int, first_features=None,
           kernel: int = 3):
    """conv{level} (stride 2, `first_features`, default `features`) then
    conv{level}_1 (3x3, `features`), as the encoders stack them."""
    x = self.conv(x, first_features or features, f"conv{level}", kernel=kernel,
                  stride=2)
    return self.conv(x, features, f"conv{level}_1")

  def deep_levels(self, conv3):
    """conv4 .. conv6_1 of FlowNetC, FlowNetS and FlowNetSD: the features
    of levels 4, 5 and 6."""
    conv4 = self.pair(conv3, 512, 4)
    conv5 = self.pair(conv4, 512, 5)
    return conv4, conv5, self.pair(conv5, 1024, 6)

  def deconv(self, x, features: int, name: str):
    """`submodules.deconv`: ConvTranspose2d(k 4, s 2, p 1) + LeakyReLU."""
    return _leaky(ConvTranspose(features, dtype=self.dtype, name=name)(x))

  def upsample_flow(self, flow, name: str, bias: bool):
    """`upsampled_flowA_to_B`: ConvTranspose2d(2, 2, 4, 2, 1)."""
    return ConvTranspose(2, use_bias=bias, dtype=self.dtype, name=name)(flow)

  def refine(self, top, skips: Sequence[jnp.ndarray], levels: Sequence[int],
             deconv_features: Sequence[int], flow_bias: bool,
             inter_features: Sequence[int] = ()) -> jnp.ndarray:
    """The FlowNet decoder: from the coarsest features `top` (level L) up
    through `skips` (the encoder features of levels L-1, ..., 1), each step
    concat(skip, deconv(previous), upsampled flow) -> flow; returns the flow
    of the finest level. With `inter_features` (FlowNetSD, FlowNetFusion) an
    `inter_conv` (no ReLU) comes before each `predict_flow`.

    levels: the level numbers [L, L-1, ..., finest] naming the layers.
    """
    flow = self.conv(top, 2, f"predict_flow{levels[0]}", relu=False)
    features = top
    for i, (skip, level) in enumerate(zip(skips, levels[1:])):
      up = self.upsample_flow(flow, f"upsampled_flow{levels[i]}_to_{level}",
                              flow_bias)
      deconv = self.deconv(features, deconv_features[i], f"deconv{level}")
      features = jnp.concatenate([skip, deconv, up], axis=-1)
      head = features
      if inter_features:
        head = self.conv(features, inter_features[i], f"inter_conv{level}",
                         relu=False)
      flow = self.conv(head, 2, f"predict_flow{level}", relu=False)
    return flow


class FlowNetC(_Net):
  """FlowNetC: x (N, H, W, 6), the two normalised images -> flow2
  (N, H/4, W/4, 2) in units of 1/div_flow pixels."""

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    layers = (self.layer(64, "conv1", kernel=7, stride=2),
              self.layer(128, "conv2", kernel=5, stride=2),
              self.layer(256, "conv3", kernel=5, stride=2))

    def tower(image):  # The same weights for both images.
      c2 = layers[1](layers[0](image))
      return c2, layers[2](c2)

    conv2a, conv3a = tower(x[..., :3])
    _, conv3b = tower(x[..., 3:])
    corr = _leaky(correlation(conv3a.astype(jnp.float32),
                              conv3b.astype(jnp.float32),
                              CORR_MAX_DISPLACEMENT, CORR_STRIDE))
    redir = self.conv(conv3a, 32, "conv_redir", kernel=1)
    conv3 = self.conv(
        jnp.concatenate([redir, corr.astype(redir.dtype)], axis=-1), 256,
        "conv3_1")
    conv4, conv5, conv6 = self.deep_levels(conv3)
    return self.refine(conv6, [conv5, conv4, conv3, conv2a], [6, 5, 4, 3, 2],
                       [512, 256, 128, 64], flow_bias=True)


class FlowNetS(_Net):
  """FlowNetS: x (N, H, W, 12) -> flow2 (N, H/4, W/4, 2)."""

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    conv1 = self.conv(x, 64, "conv1", kernel=7, stride=2)
    conv2 = self.conv(conv1, 128, "conv2", kernel=5, stride=2)
    conv3 = self.pair(conv2, 256, 3, kernel=5)
    conv4, conv5, conv6 = self.deep_levels(conv3)
    return self.refine(conv6, [conv5, conv4, conv3, conv2], [6, 5, 4, 3, 2],
                       [512, 256, 128, 64], flow_bias=False)


class FlowNetSD(_Net):
  """FlowNetSD: x (N, H, W, 6) -> flow2 (N, H/4, W/4, 2)."""

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    conv0 = self.conv(x, 64, "conv0")
    conv1 = self.pair(conv0, 128, 1, first_features=64)
    conv2 = self.pair(conv1, 128, 2)
    conv3 = self.pair(conv2, 256, 3)
    conv4, conv5, conv6 = self.deep_levels(conv3)
    return self.refine(conv6, [conv5, conv4, conv3, conv2], [6, 5, 4, 3, 2],
                       [512, 256, 128, 64], flow_bias=True,
                       inter_features=[512, 256, 128, 64])


class FlowNetFusion(_Net):
  """FlowNetFusion: x (N, H, W, 11) -> flow0 (N, H, W, 2) in pixels."""

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    conv0 = self.conv(x, 64, "conv0")
    conv1 = self.pair(conv0, 128, 1, first_features=64)
    conv2 = self.pair(conv1, 128, 2)
    return self.refine(conv2, [conv1, conv0], [2, 1, 0], [32, 16],
                       flow_bias=True, inter_features=[32, 16])


def normalise(image1: jnp.ndarray, image2: jnp.ndarray,
              rgb_max: float = RGB_MAX) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """Both images minus their joint per-channel mean, over rgb_max."""
  mean = (jnp.mean(image1, axis=(1, 2), keepdims=True) +
          jnp.mean(image2, axis=(1, 2), keepdims=True)) / 2
  return (image1 - mean) / rgb_max, (image2 - mean) / rgb_max


class FlowNet2(nn.Module):
  """The full FlowNet2 stack (FlowNet2-CSS-SD with fusion).

  Call: `FlowNet2().apply(variables, image1, image2)` with image1, image2
  (N, H, W, 3) float32 RGB in [0, 255], H and W multiples of 64. Returns the
  flow (N, H, W, 2) in pixels as (dx, dy) from image1 to image2:
  `resample2d(image2, flow)` (or `warp`) approximates image1. With
  `all_flows=True` returns a dict of every sub-network's full-resolution
  flow in pixels as it enters the fusion stage ("flownetc", "flownets_1",
  "flownets_2", "flownets_d") and the result ("flownetfusion").

  Attributes:
    div_flow, rgb_max: the official constants (20, 255).
    conv_impl: `ops.conv.conv2d`'s implementation ("xla" or "cpu").
    dtype: compute dtype (parameters stay float32; the correlation, the
      warps and the flows are float32).
  """
  div_flow: float = DIV_FLOW
  rgb_max: float = RGB_MAX
  conv_impl: str = "xla"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, image1: jnp.ndarray, image2: jnp.ndarray,
               all_flows: bool = False):
    if image1.shape != image2.shape or image1.ndim != 4 or (
        image1.shape[-1] != 3):
      raise ValueError(f"image1 {image1.shape} and image2 {image2.shape} "
                       "must be equal (N, H, W, 3)")
    _, h, w, _ = image1.shape
    if h % SIZE_DIVISOR or w % SIZE_DIVISOR:
      raise ValueError(f"FlowNet2 needs H and W multiples of {SIZE_DIVISOR}, "
                       f"got {h}x{w} (pad the images first)")
    kw = dict(conv_impl=self.conv_impl, dtype=self.dtype)
    x1, x2 = normalise(image1.astype(jnp.float32),
                       image2.astype(jnp.float32), self.rgb_max)
    x = jnp.concatenate([x1, x2], axis=-1)
    f32 = lambda t: t.astype(jnp.float32)

    def warped_inputs(flow):
      """concat(x, warped image2, flow / div_flow, brightness error)."""
      warped = resample2d(x2, flow)
      return jnp.concatenate(
          [x, warped, flow / self.div_flow, channelnorm(x1 - warped)],
          axis=-1)

    def up_bilinear(flow2):
      return upsample_bilinear(f32(flow2) * self.div_flow, (h, w))

    flows: Dict[str, jnp.ndarray] = {}
    flows["flownetc"] = up_bilinear(FlowNetC(name="flownetc", **kw)(x))
    flows["flownets_1"] = up_bilinear(
        FlowNetS(name="flownets_1", **kw)(warped_inputs(flows["flownetc"])))
    flows["flownets_2"] = upsample_nearest(
        f32(FlowNetS(name="flownets_2", **kw)(
            warped_inputs(flows["flownets_1"]))) * self.div_flow, 4)
    flows["flownets_d"] = upsample_nearest(
        f32(FlowNetSD(name="flownets_d", **kw)(x)) / self.div_flow, 4)
    s2, sd = flows["flownets_2"], flows["flownets_d"]
    fusion_in = jnp.concatenate(
        [x1, sd, s2, channelnorm(sd), channelnorm(s2),
         channelnorm(x1 - resample2d(x2, sd)),
         channelnorm(x1 - resample2d(x2, s2))], axis=-1)
    flows["flownetfusion"] = f32(
        FlowNetFusion(name="flownetfusion", **kw)(fusion_in))
    return flows if all_flows else flows["flownetfusion"]


def abstract_variables() -> Dict[str, Any]:
  """FlowNet2's variables {"params": ...} as ShapeDtypeStructs (no compute;
  they do not depend on the image size)."""
  image = jax.ShapeDtypeStruct((1, SIZE_DIVISOR, SIZE_DIVISOR, 3),
                               jnp.float32)
  return jax.eval_shape(FlowNet2().init, jax.random.PRNGKey(0), image, image)


def flow_between(params, image1: jnp.ndarray, image2: jnp.ndarray,
                 conv_impl: str = "xla", dtype: Any = jnp.float32
                 ) -> jnp.ndarray:
  """FlowNet2's flow image1 -> image2 at any size, as the release's
  `compute_flow`: both images zero-padded at the bottom and right to
  multiples of 64, the flow cropped back to (H, W).

  Args:
    params: FlowNet2's params (`variables["params"]`).
    image1, image2: (N, H, W, 3) float32 RGB in [0, 255].

  Returns:
    (N, H, W, 2) float32 flow in pixels as (dx, dy).
  """
  _, h, w, _ = image1.shape
  pad = ((0, 0), (0, -h % SIZE_DIVISOR), (0, -w % SIZE_DIVISOR), (0, 0))
  # parent=None: unbound even when called from another module's method.
  flow = FlowNet2(conv_impl=conv_impl, dtype=dtype, parent=None).apply(
      {"params": params}, jnp.pad(image1, pad), jnp.pad(image2, pad))
  return flow[:, :h, :w]
