"""MaskTrack R-CNN track head: RoI embeddings, affinity, matching loss.

Embeddings: flatten the 7x7 RoI features, FC(1024) -> ReLU -> FC(1024),
weights shared by target RoIs and reference boxes. Affinity of a target RoI
with each reference object: dot product (release) or cosine (paper), with an
all-zero "new object" column first. Loss: cross-entropy against the index of
the RoI's object in the reference frame (0 = not there), over positive RoIs.
"""
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

# Large negative for padded reference columns (finite: keeps gradients clean).
_NEG = -1e9


class TrackHead(nn.Module):
  """(..., R, 7, 7, C) RoI features -> (..., R, hidden) float32 embeddings."""
  hidden: int = 1024
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, roi_features: jnp.ndarray) -> jnp.ndarray:
    # MaskTrack R-CNN / the release: N(0, 0.01) weights, zero biases.
    init = nn.initializers.normal(0.01)
    x = roi_features.reshape(roi_features.shape[:-3] + (-1,))
    x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, kernel_init=init,
                         name="fc1")(x))
    x = nn.Dense(self.hidden, dtype=self.dtype, kernel_init=init,
                 name="fc2")(x)
    return x.astype(jnp.float32)


def track_affinity(embeddings: jnp.ndarray, ref_embeddings: jnp.ndarray,
                   ref_valid: Optional[jnp.ndarray] = None,
                   cosine: bool = False) -> jnp.ndarray:
  """Affinity logits with a zero "new object" column first.

  Args:
    embeddings: (..., R, D) target RoI embeddings.
    ref_embeddings: (..., M, D) reference object embeddings.
    ref_valid: optional (..., M) bool; padded references get a large
      negative logit.
    cosine: cosine similarity instead of the dot product.

  Returns:
    (..., R, M + 1) float32; column 0 is 0, column j+1 is reference j.
  """
  a = embeddings.astype(jnp.float32)
  b = ref_embeddings.astype(jnp.float32)
  if cosine:
    a = a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    b = b / jnp.maximum(jnp.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
  scores = jnp.einsum("...rd,...md->...rm", a, b)
  if ref_valid is not None:
    scores = jnp.where(ref_valid[..., None, :], scores, _NEG)
  zeros = jnp.zeros(scores.shape[:-1] + (1,), scores.dtype)
  return jnp.concatenate([zeros, scores], axis=-1)


def track_loss(affinity: jnp.ndarray, target_index: jnp.ndarray,
               positive: jnp.ndarray, weight: float = 0.5) -> jnp.ndarray:
  """Weighted mean cross-entropy over positive RoIs.

  Args:
    affinity: (..., R, M + 1) logits from `track_affinity`.
    target_index: (..., R) int, 0 = new object, j + 1 = reference object j.
    positive: (..., R) bool, RoIs that count (positives, not padding).
    weight: loss weight (0.5 in the release).

  Returns:
    scalar float32; 0 if there is no positive RoI.
  """
  logp = jax.nn.log_softmax(affinity.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, target_index[..., None].astype(jnp.int32),
                             axis=-1)[..., 0]
  pos = positive.astype(jnp.float32)
  return weight * jnp.sum(nll * pos) / jnp.maximum(jnp.sum(pos), 1.0)
