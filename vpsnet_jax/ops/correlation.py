"""FlowNet correlation (kernel size 1, stride1 1), as the VPSNet release's
Align module (displacements up to 4 in steps of 1) and FlowNet2's FlowNetC
(up to 20 in steps of 2: `Correlation(pad_size=20, kernel_size=1,
max_displacement=20, stride1=1, stride2=2)`) use it.

out[n, y, x, (j + r) * D + (i + r)] =
    mean_c x1[n, y, x, c] * x2[n, y + j*s, x + i*s, c],   i, j in [-r, r],
zero where (y + j*s, x + i*s) falls outside; s the displacement stride
(stride2), r = max_displacement // s and D = 2r + 1. The mean over channels
is the CUDA kernel's division by kernel_size**2 * C with kernel_size 1.

Computed with matmuls rather than D*D channel reductions (which XLA's CPU
backend runs several times slower): each row is cut into blocks of `bw`
pixels; per vertical displacement, one batched matmul gives the products of
a block of x1 with the `bw + 2d` pixels of x2 it can reach, and the band
dx in [-d, d] is read off with a pad-and-reshape (no gather, so the gradient
is a pad too), then every s-th displacement kept. About (bw + 2d) * s / D
times the minimal multiply-adds.
"""
import jax.numpy as jnp

_BLOCK = 32


def correlation(x1: jnp.ndarray, x2: jnp.ndarray,
                max_displacement: int = 4, stride: int = 1) -> jnp.ndarray:
  """Local correlation of x1 with displaced x2.

  Args:
    x1, x2: (N, H, W, C) features of the same shape.
    max_displacement: d, the search radius in pixels.
    stride: s, the step between displacements (FlowNet's stride2); d must
      be a multiple of it.

  Returns:
    (N, H, W, D*D) with D = 2 * (d // s) + 1, float32 whatever the
    inputs' dtype (bfloat16 compute: the products are summed over C in
    float32, a bfloat16 sum of C = 256 products keeps about 2 digits);
    channel (j + r) * D + (i + r) holds the displacement (dx, dy) =
    (i * s, j * s), r = d // s.
  """
  if x1.shape != x2.shape or x1.ndim != 4:
    raise ValueError(f"x1 {x1.shape} and x2 {x2.shape} must be equal NHWC")
  if max_displacement < 0:
    raise ValueError(f"max_displacement must be >= 0, got {max_displacement}")
  if stride < 1 or max_displacement % stride:
    raise ValueError(f"stride must be >= 1 and divide max_displacement "
                     f"{max_displacement}, got {stride}")
  d = max_displacement
  size = 2 * d + 1  # Displacements -d..d at stride 1; every s-th is kept.
  n, h, w, c = x1.shape
  bw = max(_BLOCK, 2 * d)  # Block width; the reach of a block is bw + 2d.
  reach = bw + 2 * d
  nb = -(-w // bw)
  wp = nb * bw
  a = jnp.pad(x1, ((0, 0), (0, 0), (0, wp - w), (0, 0)))
  a = a.reshape(n, h, nb, bw, c)
  # Zeros outside: d on every side, and on the right up to (nb + 1) blocks.
  x2p = jnp.pad(x2, ((0, 0), (d, d), (d, wp + bw - w - d), (0, 0)))
  head = x2p[:, :, :wp].reshape(n, h + 2 * d, nb, bw, c)
  tail = x2p[:, :, bw:wp + bw].reshape(n, h + 2 * d, nb, bw, c)[:, :, :, :2 * d]
  b = jnp.concatenate([head, tail], axis=3)  # (n, h + 2d, nb, reach, c)
  # Channels before the reach: every batched product is a plain A @ B
  # (XLA's CPU matmuls run ~2x faster than on A @ B^T).
  b = jnp.swapaxes(b, 3, 4)  # (n, h + 2d, nb, c, reach)
  outs = []
  for dy in range(0, size, stride):
    r = jnp.einsum("nhbic,nhbcj->nhbij", a, b[:, dy:dy + h],
                   preferred_element_type=jnp.float32)
    # r[..., i, j] is pixel i against reach pixel j; the band j = i + dx.
    # Viewing the flat (bw * reach) block with row stride reach + 1 puts
    # r[i, i + dx] at [i, dx].
    r = r.reshape(n, h, nb, bw * reach)
    r = jnp.pad(r, ((0, 0), (0, 0), (0, 0), (0, bw)))
    outs.append(r.reshape(n, h, nb, bw, reach + 1)[..., :size:stride])
  out = jnp.stack(outs, axis=-2)  # (n, h, nb, bw, dy, dx)
  kept = len(outs)
  return out.reshape(n, h, wp, kept * kept)[:, :, :w] / c
