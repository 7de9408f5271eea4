"""Loss functions as in mmdetection v1 (pure, weighted, with avg_factor).

Each takes per-element weights (0 for padding/ignored elements) and an
`avg_factor` (the normaliser, e.g. the number of sampled anchors); the result
is sum(weight * loss) / max(avg_factor, 1). Losses are computed in float32.
"""
from typing import Optional

import jax
import jax.numpy as jnp


def _reduce(loss, weights, avg_factor):
  if weights is not None:
    loss = loss * weights.astype(jnp.float32)
  total = jnp.sum(loss)
  if avg_factor is None:
    return total
  return total / jnp.maximum(jnp.asarray(avg_factor, jnp.float32), 1.0)


def sigmoid_cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray,
                          weights: Optional[jnp.ndarray] = None,
                          avg_factor=None) -> jnp.ndarray:
  """Binary cross-entropy with logits.

  Args:
    logits: (...,) any float dtype.
    labels: (...,) in [0, 1].
    weights: optional (...,).
    avg_factor: optional scalar normaliser.

  Returns:
    () float32.
  """
  x = logits.astype(jnp.float32)
  z = labels.astype(jnp.float32)
  loss = jnp.maximum(x, 0.0) - x * z + jnp.log1p(jnp.exp(-jnp.abs(x)))
  return _reduce(loss, weights, avg_factor)


def softmax_cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray,
                          weights: Optional[jnp.ndarray] = None,
                          avg_factor=None) -> jnp.ndarray:
  """Cross-entropy of class logits (..., K) and int labels (...,) -> ()."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  loss = -jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32),
                              axis=-1)[..., 0]
  return _reduce(loss, weights, avg_factor)


def smooth_l1(pred: jnp.ndarray, target: jnp.ndarray, beta: float = 1.0,
              weights: Optional[jnp.ndarray] = None,
              avg_factor=None) -> jnp.ndarray:
  """Smooth L1: 0.5 d^2 / beta if d < beta else d - 0.5 beta; d = |p - t|.

  pred, target, weights: (..., 4) (weights broadcastable) -> () float32.
  """
  if beta <= 0:
    raise ValueError("beta must be positive")
  d = jnp.abs(pred.astype(jnp.float32) - target.astype(jnp.float32))
  loss = jnp.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta)
  if weights is not None:
    weights = jnp.broadcast_to(weights, loss.shape)
  return _reduce(loss, weights, avg_factor)
