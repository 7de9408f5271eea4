"""2-D convolution with a choice of implementation, fixed by the caller.

`conv2d(..., impl=...)` and `Conv(impl=...)` take one of `IMPLS`:

  "xla"  `lax.conv_general_dilated` for every convolution: the path for
         GPU/TPU (and a valid, if slower, path on the CPU). The default.
  "cpu"  the CPU-tuned choice per convolution, by map size and channels:
         XLA's CPU backend lowers a convolution whose feature map is
         smaller than, or not much larger than, its kernel window to a form
         that runs at a few GFLOP/s: a 3x3, 512 -> 512 convolution on a 2x4
         map (ResNet's last stage at 64x128) takes 54 ms forward against
         2 ms as im2col + matmul, and small maps with many channels are
         1.3-3x slower in forward + backward. Large maps are faster as
         native convolutions. "cpu" therefore uses im2col + one matmul when
         the input map has at most `IM2COL_MAX_PIXELS` pixels
         (`use_im2col`), and `lax.conv_general_dilated` otherwise. Its
         weight gradient is another slow path: for 256 output channels on
         maps of 32k pixels and more (the FPN, RPN and neck convolutions at
         P2 of a 512x1024 image) XLA's CPU kernel takes 992 ms for a 3x3,
         256 -> 256 convolution on 128x256, against 519 ms as one
         contraction of the input's shifted copies with the output
         gradient, which "cpu" then uses (`use_matmul_weight_grad`;
         stride 1; the input gradient stays XLA's).

All implementations compute the same values (to float rounding). Nothing in
this module looks at the process's default backend except
`resolve_conv_impl`, which the code that builds a model calls once to turn
the config value "auto" into "cpu" or "xla"; the model's modules then get
the resolved name (`conv: ModuleDef = functools.partial(Conv, impl=...)`),
so one model traces the same way whatever the default backend is.

`Conv` is a drop-in for the `flax.linen.Conv` uses of this project: the same
parameter names and shapes (`kernel` (kh, kw, Cin, Cout), `bias`), so the
torchvision importers and checkpoints are unaffected by `impl`.
"""
import functools
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

# Implementations of `conv2d` (module docstring) and the config value that
# `resolve_conv_impl` maps to one of them.
IMPLS = ("xla", "cpu")
AUTO = "auto"

# Largest H * W of an input map computed as im2col + matmul by impl="cpu"
# (measured on a 2-core CPU with jax 0.10; see the module docstring).
IM2COL_MAX_PIXELS = 256
# impl="cpu": weight gradients as a matmul from this many output channels
# and batch * H * W pixels on (stride 1).
MATMUL_GRAD_MIN_FEATURES = 256
MATMUL_GRAD_MIN_PIXELS = 32768

Padding = Union[str, int, Sequence[Tuple[int, int]]]
# A module constructor such as `Conv` or `functools.partial(Conv, impl=...)`
# (the `conv` attribute of the model's modules).
ModuleDef = Any


def _pairs(padding: Padding, kernel: Tuple[int, int]):
  if padding == "SAME":
    return tuple(((k - 1) // 2, k // 2) for k in kernel)
  if padding == "VALID":
    return ((0, 0), (0, 0))
  if isinstance(padding, int):
    return ((padding, padding), (padding, padding))
  return tuple((int(a), int(b)) for a, b in padding)


def resolve_conv_impl(name: str, backend: Optional[str] = None) -> str:
  """The `conv2d` implementation of a config value.

  Args:
    name: "auto", "xla" or "cpu" (`config.model.conv`).
    backend: the platform the model will run on ("cpu", "gpu", "tpu", ...);
      None reads `jax.default_backend()`. Only "auto" depends on it.

  Returns:
    "cpu" for "auto" on a CPU backend, "xla" for "auto" elsewhere; "xla"
    and "cpu" unchanged.

  Raises:
    ValueError: `name` is none of "auto", "xla", "cpu".
  """
  if name in IMPLS:
    return name
  if name != AUTO:
    raise ValueError(f"unknown convolution implementation {name!r}; one of "
                     f"{(AUTO,) + IMPLS}")
  if backend is None:
    backend = jax.default_backend()
  return "cpu" if backend == "cpu" else "xla"


def _check_impl(impl: str) -> None:
  if impl not in IMPLS:
    raise ValueError(f"conv2d impl must be one of {IMPLS}, got {impl!r} "
                     "(resolve 'auto' with resolve_conv_impl first)")


def use_im2col(height: int, width: int, impl: str) -> bool:
  """Whether `conv2d(..., impl=impl)` takes the im2col path for an input of
  this size (only impl="cpu" ever does)."""
  _check_impl(impl)
  return impl == "cpu" and height * width <= IM2COL_MAX_PIXELS


def use_matmul_weight_grad(shape, features: int, strides, impl: str) -> bool:
  """Whether `conv2d(..., impl=impl)` computes the weight gradient of an
  (N, H, W, C) input as a matmul (only impl="cpu" ever does)."""
  _check_impl(impl)
  n, h, w, _ = shape
  return (impl == "cpu" and tuple(strides) == (1, 1) and
          features >= MATMUL_GRAD_MIN_FEATURES and
          n * h * w >= MATMUL_GRAD_MIN_PIXELS)


def _lax_conv(x, kernel, strides, padding):
  return jax.lax.conv_general_dilated(
      x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_matmul_grad(x, kernel, strides, padding):
  return _lax_conv(x, kernel, strides, padding)


def _conv_matmul_grad_fwd(x, kernel, strides, padding):
  return _lax_conv(x, kernel, strides, padding), (x, kernel)


def _conv_matmul_grad_bwd(strides, padding, res, g):
  """dx from XLA's convolution transpose; dkernel[i, j] = sum over pixels of
  the input shifted by tap (i, j) times the output gradient (stride 1)."""
  x, kernel = res
  _, vjp_x = jax.vjp(lambda a: _lax_conv(a, kernel, strides, padding), x)
  (dx,) = vjp_x(g)
  kh, kw, cin, cout = kernel.shape
  (pt, pb), (pl, pr) = padding
  xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  ho, wo = g.shape[1:3]
  taps = jnp.stack([xp[:, i:i + ho, j:j + wo]
                    for i in range(kh) for j in range(kw)])
  dk = jnp.einsum("tnhwc,nhwo->tco", taps, g.astype(x.dtype))
  return dx, dk.reshape(kh, kw, cin, cout).astype(kernel.dtype)


_conv_matmul_grad.defvjp(_conv_matmul_grad_fwd, _conv_matmul_grad_bwd)


def _im2col(x, kernel, strides, padding):
  n, h, w, c = x.shape
  kh, kw, _, cout = kernel.shape
  (pt, pb), (pl, pr) = padding
  xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  ho = (h + pt + pb - kh) // strides[0] + 1
  wo = (w + pl + pr - kw) // strides[1] + 1
  taps = [xp[:, i:i + strides[0] * (ho - 1) + 1:strides[0],
             j:j + strides[1] * (wo - 1) + 1:strides[1]]
          for i in range(kh) for j in range(kw)]
  cols = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)
  out = jnp.dot(cols.reshape(n * ho * wo, kh * kw * c),
                kernel.reshape(kh * kw * c, cout))
  return out.reshape(n, ho, wo, cout)


def conv2d(x: jnp.ndarray, kernel: jnp.ndarray,
           strides: Tuple[int, int] = (1, 1),
           padding: Padding = "SAME", *, impl: str = "xla") -> jnp.ndarray:
  """NHWC convolution, no dilation, one group.

  Args:
    x: (N, H, W, Cin).
    kernel: (kh, kw, Cin, Cout), in the compute dtype of `x`.
    strides: (rows, columns).
    padding: "SAME", "VALID", an int, or ((top, bottom), (left, right)).
    impl: keyword only; "xla" (default: `lax.conv_general_dilated`, as on
      GPU/TPU) or "cpu" (im2col / matmul weight gradient where XLA's CPU
      kernels are slow); see the module docstring. Not "auto": resolve it
      once with `resolve_conv_impl` where the model is built.

  Returns:
    (N, Ho, Wo, Cout), the same values as `lax.conv_general_dilated`.
  """
  _check_impl(impl)
  pads = _pairs(padding, kernel.shape[:2])
  strides = tuple(int(v) for v in strides)
  if use_im2col(x.shape[1], x.shape[2], impl):
    return _im2col(x, kernel, strides, pads)
  if use_matmul_weight_grad(x.shape, kernel.shape[-1], strides, impl):
    return _conv_matmul_grad(x, kernel, strides, pads)
  return _lax_conv(x, kernel, strides, pads)


class Conv(nn.Module):
  """`flax.linen.Conv` subset (NHWC, no dilation, one group) on `conv2d`.

  Parameters are float32 (`kernel` (kh, kw, Cin, Cout), `bias` (Cout,));
  the computation runs in `dtype`, with `conv2d`'s implementation `impl`
  ("xla" or "cpu"; it does not change the parameters).
  """
  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] = (1, 1)
  padding: Padding = "SAME"
  use_bias: bool = True
  dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros
  impl: str = "xla"

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    kh, kw = self.kernel_size
    kernel = self.param("kernel", self.kernel_init,
                        (kh, kw, x.shape[-1], self.features), jnp.float32)
    y = conv2d(x.astype(self.dtype), kernel.astype(self.dtype),
               tuple(self.strides), self.padding, impl=self.impl)
    if self.use_bias:
      bias = self.param("bias", self.bias_init, (self.features,),
                        jnp.float32)
      y = y + bias.astype(self.dtype)
    return y


def conv_def(impl: str = "xla") -> ModuleDef:
  """`Conv` with `impl` fixed: the `conv` attribute the model's modules take
  (`impl` as for `conv2d`; checked here, once)."""
  _check_impl(impl)
  return functools.partial(Conv, impl=impl)
