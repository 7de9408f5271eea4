"""Panoptic logits, targets and loss on small hand-made cases."""

import numpy as np
import torch
import torch.nn.functional as F

import jax.numpy as jnp

from vpsnet_jax.modeling import panoptic_head

STUFF = (0, 1)
THINGS = (2, 3)


def _sem_logits(h=8, w=8, k=4, seed=0):
  return np.random.default_rng(seed).normal(size=(h, w, k)).astype(np.float32)


def test_two_overlapping_instances():
  sem = _sem_logits()
  boxes = np.array([[1, 1, 4, 4], [3, 3, 6, 6], [0, 0, 0, 0]], np.float32)
  classes = np.array([0, 1, 0], np.int32)
  valid = np.array([True, True, False])
  masks = np.stack([np.full((4, 4), 2.0), np.full((4, 4), 3.0),
                    np.zeros((4, 4))]).astype(np.float32)
  out = np.asarray(panoptic_head.panoptic_logits(
      jnp.asarray(sem), jnp.asarray(masks), jnp.asarray(boxes),
      jnp.asarray(classes), jnp.asarray(valid), STUFF, THINGS))
  assert out.shape == (8, 8, 2 + 3)
  np.testing.assert_allclose(out[..., :2], sem[..., :2])
  expect0 = np.zeros((8, 8), np.float32)
  expect0[1:5, 1:5] = sem[1:5, 1:5, 2] + 2.0
  expect1 = np.zeros((8, 8), np.float32)
  expect1[3:7, 3:7] = sem[3:7, 3:7, 3] + 3.0
  np.testing.assert_allclose(out[..., 2], expect0, atol=1e-6)
  np.testing.assert_allclose(out[..., 3], expect1, atol=1e-6)
  assert (out[..., 4] <= -1e3).all()  # padding never wins


def test_quarter_scale_boxes():
  sem = _sem_logits(4, 4)
  boxes = np.array([[4, 4, 11, 11]], np.float32)  # image pixels
  out = np.asarray(panoptic_head.panoptic_logits(
      jnp.asarray(sem), jnp.ones((1, 28, 28)), jnp.asarray(boxes),
      jnp.array([1]), jnp.array([True]), STUFF, THINGS, scale=0.25))
  expect = np.zeros((4, 4), np.float32)
  expect[1:3, 1:3] = sem[1:3, 1:3, 3] + 1.0
  np.testing.assert_allclose(out[..., 2], expect, atol=1e-6)


def test_stuff_only_and_empty_frame():
  sem = _sem_logits()
  out = np.asarray(panoptic_head.panoptic_logits(
      jnp.asarray(sem), jnp.zeros((2, 28, 28)), jnp.zeros((2, 4)),
      jnp.zeros(2, jnp.int32), jnp.zeros(2, bool), STUFF, THINGS))
  np.testing.assert_array_equal(out.argmax(-1), sem[..., :2].argmax(-1))
  # Empty frame: everything void, loss 0.
  target = panoptic_head.panoptic_target(
      jnp.full((8, 8), 255), jnp.zeros((2, 8, 8)), jnp.zeros(2, bool), STUFF,
      4)
  assert (np.asarray(target) == 255).all()
  assert float(panoptic_head.panoptic_loss(jnp.asarray(out), target)) == 0.0


def test_target_from_semantic_and_masks():
  semantic = np.array([[0, 0, 1, 1],
                       [2, 2, 3, 255],
                       [2, 2, 3, 1],
                       [0, 2, 1, 1]], np.int32)
  masks = np.zeros((3, 4, 4), np.uint8)
  masks[0, 1:3, 0:2] = 1  # instance 0 (class 2)
  masks[1, 1:3, 1:3] = 1  # instance 1 overlaps instance 0 at column 1
  masks[2, 3, 1] = 1  # invalid instance: its pixel stays void
  target = np.asarray(panoptic_head.panoptic_target(
      jnp.asarray(semantic), jnp.asarray(masks),
      jnp.array([True, True, False]), STUFF, 4))
  expect = np.array([[0, 0, 1, 1],
                     [2, 3, 3, 255],
                     [2, 3, 3, 1],
                     [0, 255, 1, 1]])
  np.testing.assert_array_equal(target, expect)


def test_loss_matches_torch_cross_entropy_with_ignore():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 6, 6, 5)).astype(np.float32)
  target = rng.integers(0, 5, (2, 6, 6)).astype(np.int32)
  target[0, :2] = 255
  ours = panoptic_head.panoptic_loss(jnp.asarray(logits), jnp.asarray(target))
  ref = F.cross_entropy(torch.from_numpy(logits).permute(0, 3, 1, 2),
                        torch.from_numpy(target).long(), ignore_index=255)
  np.testing.assert_allclose(ours, ref.item(), rtol=1e-5)
