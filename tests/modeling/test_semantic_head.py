"""UPSNet semantic head against a torch/torchvision float64 reference."""
import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from vpsnet_jax.modeling.semantic_head import (DeformConv, SemanticHead,
                                                semantic_loss)

N, C, K = 1, 16, 5
SIZES = [(8, 12), (4, 6), (2, 3), (1, 2)]
HEAD = SemanticHead(num_classes=K, features=(8, 8, 8), num_groups=4)
TRACES = []


@jax.jit
def head_out_and_grads(params, levels, labels):
  """Logits (1/4 and full) and the gradient of the loss w.r.t. the params."""
  TRACES.append(1)

  def loss(p):
    quarter, full = HEAD.apply(p, levels)
    return semantic_loss(full, labels), (quarter, full)

  (value, outs), grads = jax.value_and_grad(loss, has_aux=True)(params)
  return value, outs, grads


def random_params(model, seed, *args):
  """NumPy-drawn params (shapes from `eval_shape`, no init compile)."""
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), *args)
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(
          np.float32)
    if name == "scale":
      return (1.0 + 0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)
    return (0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module")
def data():
  rng = np.random.default_rng(0)
  levels = [rng.standard_normal((N,) + s + (C,)).astype(np.float32)
            for s in SIZES]
  labels = rng.integers(0, K, (N, 32, 48)).astype(np.int32)
  labels[:, :10] = 255
  params = random_params(HEAD, 1, levels)
  return levels, labels, params


def _t(x):
  return torch.tensor(np.asarray(x), dtype=torch.float64)


def _torch_head(params, levels):
  p = params["params"]["stack"]
  outs = []
  for lvl in levels:
    x = _t(lvl).permute(0, 3, 1, 2)
    for i in range(3):
      d = p[f"dconv{i}"]
      off = F.conv2d(x, _t(d["offset"]["kernel"]).permute(3, 2, 0, 1),
                     _t(d["offset"]["bias"]), padding=1)
      x = torchvision.ops.deform_conv2d(
          x, off, _t(d["kernel"]).permute(3, 2, 0, 1), padding=1)
      gn = p[f"gn{i}"]
      x = F.relu(F.group_norm(x, 4, _t(gn["scale"]), _t(gn["bias"]), 1e-5))
    if outs:
      x = F.interpolate(x, size=SIZES[0], mode="bilinear",
                        align_corners=False)
    outs.append(x)
  lg = params["params"]["logits"]
  logits = F.conv2d(torch.cat(outs, 1),
                    _t(lg["kernel"]).permute(3, 2, 0, 1), _t(lg["bias"]))
  full = F.interpolate(logits, scale_factor=4, mode="bilinear",
                       align_corners=False)
  return logits, full


def test_head_and_loss_match_torch(data):
  levels, labels, params = data
  value, (quarter, full), _ = head_out_and_grads(params, levels, labels)
  ref_q, ref_full = _torch_head(params, levels)
  assert quarter.shape == (N, 8, 12, K) and full.shape == (N, 32, 48, K)
  np.testing.assert_allclose(quarter, ref_q.permute(0, 2, 3, 1).numpy(),
                             atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(full, ref_full.permute(0, 2, 3, 1).numpy(),
                             atol=1e-4, rtol=1e-4)
  ref_loss = F.cross_entropy(ref_full, torch.tensor(labels).long(),
                             ignore_index=255)
  np.testing.assert_allclose(value, ref_loss.item(), rtol=1e-5)


def test_loss_ignores_255():
  rng = np.random.default_rng(3)
  logits = rng.standard_normal((2, 4, 5, 3)).astype(np.float32)
  labels = rng.integers(0, 3, (2, 4, 5))
  ignored = labels.copy()
  ignored[:, :2] = 255
  ref = F.cross_entropy(torch.tensor(logits).permute(0, 3, 1, 2),
                        torch.tensor(ignored).long(), ignore_index=255)
  np.testing.assert_allclose(semantic_loss(logits, ignored), ref.item(),
                             rtol=1e-5)
  # Changing the logits of ignored pixels changes nothing.
  moved = logits.copy()
  moved[:, :2] += 10.0
  np.testing.assert_allclose(semantic_loss(moved, ignored),
                             semantic_loss(logits, ignored), rtol=1e-6)
  assert float(semantic_loss(logits, np.full_like(labels, 255))) == 0.0


def test_grads_reach_every_param_one_compile(data):
  levels, labels, params = data
  for i in range(2):
    value, _, grads = head_out_and_grads(
        params, [lvl * (1 + i) for lvl in levels], labels)
    assert np.isfinite(value)
  assert len(TRACES) == 1
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  assert len(flat) == 3 * 5 + 2  # per block: offset k/b, kernel, gn s/b.
  for path, g in flat:
    assert np.all(np.isfinite(g)), path
    assert np.any(g != 0), path


def test_deform_conv_initialises_to_plain_conv():
  """Zero-initialised offset conv: the deformable conv starts as a 3x3 conv."""
  x = np.random.default_rng(4).standard_normal((1, 6, 7, 4)).astype(
      np.float32)
  layer = DeformConv(3)
  params = jax.jit(layer.init)(jax.random.PRNGKey(0), x)
  np.testing.assert_array_equal(params["params"]["offset"]["kernel"], 0.0)
  kernel = params["params"]["kernel"]
  ref = jax.lax.conv_general_dilated(
      x, kernel, (1, 1), ((1, 1), (1, 1)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=jax.lax.Precision.HIGHEST)
  np.testing.assert_allclose(jax.jit(layer.apply)(params, x), ref, atol=1e-5,
                             rtol=1e-5)
