"""UPSNet's panoptic head without the "unknown" class (as VPSNet uses it).

Panoptic logits have one channel per stuff class (the semantic head's stuff
logits) and one per instance: the semantic logit of the instance's class
inside its box plus its mask logit pasted into the box, both zero outside
the box (as the release does). Instances are the ground-truth boxes in
training and the detections at inference; instance channels are padded to a
fixed maximum with a validity mask, and padded channels never win. At
inference `panoptic_inference` adds the release's mask removal and takes the
argmax without materialising every channel.

Everything is a pure function of arrays; the head has no parameters.
"""

from typing import Sequence, Tuple

import jax
import jax.numpy as jnp

from vpsnet_jax import losses
from vpsnet_jax.ops import masks as mask_ops

IGNORE = 255
# Logit of padded instance channels: far below any real logit.
_PAD_LOGIT = -1e4


def box_mask(boxes: jnp.ndarray, shape: Tuple[int, int]) -> jnp.ndarray:
  """(I, H, W) bool: pixels inside each box (integer box, inclusive).

  Boxes are truncated to integers as for mask pasting (mmdetection v1).
  """
  ib = jnp.floor(boxes).astype(jnp.int32)
  ys = jnp.arange(shape[0])[None, :, None]
  xs = jnp.arange(shape[1])[None, None, :]
  return ((ys >= ib[:, 1, None, None]) & (ys <= ib[:, 3, None, None]) &
          (xs >= ib[:, 0, None, None]) & (xs <= ib[:, 2, None, None]))


def panoptic_logits(semantic_logits: jnp.ndarray, mask_logits: jnp.ndarray,
                    boxes: jnp.ndarray, classes: jnp.ndarray,
                    valid: jnp.ndarray, stuff_channels: Sequence[int],
                    thing_channels: Sequence[int],
                    scale: float = 1.0) -> jnp.ndarray:
  """Panoptic logits of one image.

  Args:
    semantic_logits: (H, W, K) semantic head logits, at `scale` of the image.
    mask_logits: (I, M, M) each instance's mask logits (of its own class).
    boxes: (I, 4) float32 instance boxes in image pixels.
    classes: (I,) int32 0-based thing class of each instance.
    valid: (I,) bool.
    stuff_channels: S semantic channels of the stuff classes, in order.
    thing_channels: C semantic channels of the thing classes (thing class c
      is semantic channel thing_channels[c]).
    scale: resolution of `semantic_logits` relative to the image (0.25 in
      training at 1/4 scale, 1.0 at full resolution).

  Returns:
    (H, W, S + I) float32: stuff channels, then one channel per instance.
  """
  h, w = semantic_logits.shape[:2]
  logits = semantic_logits.astype(jnp.float32)
  stuff = logits[..., jnp.asarray(stuff_channels, jnp.int32)]
  scaled = boxes * scale
  inside = box_mask(scaled, (h, w))  # (I, H, W)
  sem = jnp.take(logits, jnp.asarray(thing_channels, jnp.int32)[classes],
                 axis=-1)  # (H, W, I)
  sem = jnp.where(jnp.moveaxis(inside, 0, -1), sem, 0.0)
  pasted = mask_ops.paste_masks(mask_logits.astype(jnp.float32), scaled,
                                (h, w))  # (I, H, W), 0 outside the box
  inst = sem + jnp.moveaxis(pasted, 0, -1)
  inst = jnp.where(valid[None, None, :], inst, _PAD_LOGIT)
  return jnp.concatenate([stuff, inst], axis=-1)


def panoptic_target(semantic: jnp.ndarray, masks: jnp.ndarray,
                    valid: jnp.ndarray, stuff_channels: Sequence[int],
                    num_semantic: int) -> jnp.ndarray:
  """Panoptic training target of one image at the logits' resolution.

  Args:
    semantic: (H, W) int32 semantic train ids, 255 = ignore.
    masks: (I, H, W) bool / {0, 1} instance masks at the same resolution.
    valid: (I,) bool.
    stuff_channels: S semantic channels of the stuff classes.
    num_semantic: K, the number of semantic classes.

  Returns:
    (H, W) int32: stuff pixel -> its stuff channel (0..S-1), instance pixel ->
    S + instance index, everything else (void, thing pixels of no valid
    instance) -> 255.
  """
  s = len(stuff_channels)
  stuff_index = jnp.full((num_semantic + 1,), IGNORE, jnp.int32)
  stuff_index = stuff_index.at[jnp.asarray(stuff_channels)].set(
      jnp.arange(s, dtype=jnp.int32))
  sem = jnp.where(semantic == IGNORE, num_semantic, semantic)
  target = stuff_index[jnp.clip(sem, 0, num_semantic)]
  owned = (masks > 0) & valid[:, None, None]
  # A pixel of several (overlapping) masks goes to the last one.
  last = masks.shape[0] - 1 - jnp.argmax(owned[::-1], axis=0)
  return jnp.where(owned.any(axis=0), s + last, target).astype(jnp.int32)


def panoptic_loss(logits: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
  """Cross-entropy over panoptic channels, mean over non-ignored pixels.

  Args:
    logits: (..., H, W, S + I) float32.
    target: (..., H, W) int32 with 255 = ignore.
  """
  keep = target != IGNORE
  return losses.softmax_cross_entropy(
      logits, jnp.where(keep, target, 0), keep, jnp.sum(keep))


def panoptic_inference(semantic_logits: jnp.ndarray, mask_logits: jnp.ndarray,
                       boxes: jnp.ndarray, classes: jnp.ndarray,
                       valid: jnp.ndarray, stuff_channels: Sequence[int],
                       thing_channels: Sequence[int],
                       overlap_threshold: float = 0.3
                      ) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """UPSNet's mask removal and panoptic argmax of one image (inference).

  Detections are visited in the given order (decreasing score). Each mask's
  logits are pasted into its integer box at the logits' resolution; the
  mask (logit > 0) is dropped when it is empty or more than
  `overlap_threshold` of it is covered by kept masks of the same class
  (the release's `MaskRemoval`). The panoptic logits are those of
  `panoptic_logits` (stuff channels, then one channel per kept detection:
  semantic logit of its class plus mask logit inside the box, 0 outside);
  their argmax is computed as a running maximum over detections, so memory
  is O(H * W) rather than O(D * H * W).

  Args:
    semantic_logits: (H, W, K) semantic logits at image resolution.
    mask_logits: (D, M, M) each detection's mask logits (of its class).
    boxes: (D, 4) float32 detection boxes in image pixels.
    classes: (D,) int32 0-based thing classes.
    valid: (D,) bool.
    stuff_channels, thing_channels: as in `panoptic_logits`.
    overlap_threshold: the mask removal's covered fraction (0.3).

  Returns:
    panoptic: (H, W) int32; s < S is stuff channel s, S + d is detection d.
    keep: (D,) bool, detections that survived mask removal.
  """
  h, w = semantic_logits.shape[:2]
  s = len(stuff_channels)
  logits = semantic_logits.astype(jnp.float32)
  stuff = logits[..., jnp.asarray(stuff_channels, jnp.int32)]
  best = jnp.max(stuff, axis=-1)
  arg = jnp.argmax(stuff, axis=-1).astype(jnp.int32)
  things = jnp.asarray(thing_channels, jnp.int32)
  occupied = jnp.zeros((len(thing_channels), h, w), bool)

  def step(carry, inputs):
    best, arg, occupied = carry
    mask, box, cls, ok, index = inputs
    pasted = mask_ops.paste_masks(mask[None].astype(jnp.float32), box[None],
                                  (h, w))[0]
    inside = box_mask(box[None], (h, w))[0]
    binary = (pasted > 0) & inside
    area = jnp.sum(binary)
    covered = jnp.sum(binary & occupied[cls])
    keep = ok & (area > 0) & (covered <= overlap_threshold * area)
    occupied = occupied.at[cls].set(occupied[cls] | (binary & keep))
    inst = jnp.where(inside, jnp.take(logits, things[cls], axis=-1) + pasted,
                     0.0)
    better = keep & (inst > best)
    best = jnp.where(better, inst, best)
    arg = jnp.where(better, s + index, arg)
    return (best, arg, occupied), keep

  d = boxes.shape[0]
  (_, arg, _), keep = jax.lax.scan(
      step, (best, arg, occupied),
      (mask_logits, boxes, classes.astype(jnp.int32), valid,
       jnp.arange(d, dtype=jnp.int32)))
  return arg, keep
