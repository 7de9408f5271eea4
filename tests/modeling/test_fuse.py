"""Fuse = Align + Attend: identities, synthetic translation, torch parity."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vpsnet_jax.modeling import fuse
from vpsnet_jax.ops.correlation import correlation

N, H, W, C = 2, 16, 16, 8

ALIGN = fuse.Align()
ALIGN_APPLY = jax.jit(ALIGN.apply)
ATTEND = fuse.Attend()
ATTEND_APPLY = jax.jit(ATTEND.apply)


def random_params(model, seed, *args, scale=1.0):
  """Params of `model` drawn with NumPy (shapes from `eval_shape`, no compile).

  Kernels ~ N(0, scale^2 / fan_in), biases ~ N(0, 0.1^2).
  """
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), *args)
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    if path[-1].key == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      return (scale * rng.standard_normal(leaf.shape) /
              np.sqrt(fan_in)).astype(np.float32)
    return (0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _t(x):
  return torch.tensor(np.asarray(x), dtype=torch.float64)


def _conv(x, p, pad):
  """torch conv2d of NCHW float64 `x` with a Flax conv's params."""
  return F.conv2d(x, _t(p["kernel"]).permute(3, 2, 0, 1), _t(p["bias"]),
                  padding=pad)


def _lrelu(x):
  return F.leaky_relu(x, 0.1)


@pytest.fixture(scope="module")
def feats():
  rng = np.random.default_rng(0)
  target = rng.standard_normal((N, H, W, C)).astype(np.float32)
  reference = rng.standard_normal((N, H, W, C)).astype(np.float32)
  flow = rng.uniform(-1.5, 1.5, (N, H, W, 2)).astype(np.float32)
  return target, reference, flow


def _zero_out_flow_head(params):
  p = jax.tree_util.tree_map(lambda a: a, params)
  head = p["params"]["flow_out"]
  head["kernel"] = jnp.zeros_like(head["kernel"])
  head["bias"] = jnp.zeros_like(head["bias"])
  return p


def test_align_zero_flow_zero_refinement_is_identity(feats):
  target, reference, _ = feats
  zero = np.zeros((N, H, W, 2), np.float32)
  params = _zero_out_flow_head(random_params(ALIGN, 0, target, reference,
                                             zero))
  out, fine = ALIGN_APPLY(params, target, reference, zero)
  np.testing.assert_array_equal(fine, 0.0)
  np.testing.assert_array_equal(out, reference)


def _smooth(x, y, c):
  """Smooth per-channel field, evaluated at (x, y) pixel coordinates."""
  return (np.sin(0.35 * x + 0.6 * c) + np.cos(0.27 * y - 0.4 * c) +
          0.5 * np.sin(0.2 * (x + y) + c))


def test_align_with_true_flow_lines_up_translated_reference():
  dx, dy = 1.5, -2.25
  yy, xx, cc = np.meshgrid(np.arange(H), np.arange(W), np.arange(C),
                           indexing="ij")
  target = np.stack([_smooth(xx, yy, cc), _smooth(xx, yy, cc + 3)]).astype(
      np.float32)
  # Reference content moved by (dx, dy): reference(y + dy, x + dx) = target.
  reference = np.stack([_smooth(xx - dx, yy - dy, cc),
                        _smooth(xx - dx, yy - dy, cc + 3)]).astype(np.float32)
  flow = np.broadcast_to(np.array([dx, dy], np.float32), (N, H, W, 2))
  params = _zero_out_flow_head(random_params(ALIGN, 1, target, reference,
                                             flow))
  aligned, _ = ALIGN_APPLY(params, target, reference, flow)
  inner = (slice(None), slice(3, -3), slice(3, -3))
  err_aligned = np.abs(np.asarray(aligned) - target)[inner].mean()
  err_none = np.abs(reference - target)[inner].mean()
  assert err_aligned < 0.1 * err_none, (err_aligned, err_none)


def test_align_refined_flow_matches_torch(feats):
  target, reference, _ = feats
  # Zero initial flow: the first warp is the identity (tested above).
  flow = np.zeros((N, H, W, 2), np.float32)
  params = random_params(ALIGN, 2, target, reference, flow)
  out, fine = ALIGN_APPLY(params, target, reference, flow)
  p = params["params"]
  corr = jax.jit(correlation)(target, reference)
  x = _t(np.concatenate([target, corr, flow], -1)).permute(0, 3, 1, 2)
  for name in ("flow_conv0", "flow_conv1", "flow_conv2"):
    x = _lrelu(_conv(x, p[name], 1))
  ref_fine = _conv(x, p["flow_out"], 1).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(fine, ref_fine, atol=1e-4, rtol=1e-4)
  # Second warp by the refined flow, against the NumPy-tested warp op.
  np.testing.assert_allclose(out, jax.jit(fuse.warp)(reference, fine),
                             atol=1e-6)


def _torch_attend(p, frames):
  """TCEA with the target (frame 0) as centre, in torch float64, NCHW."""
  n, t, h, w, c = frames.shape
  fr = _t(frames).permute(0, 1, 4, 2, 3)
  emb_ref = _conv(fr[:, 0], p["t_att_center"], 1)
  emb = _conv(fr.reshape(n * t, c, h, w), p["t_att_frames"], 1).view(
      n, t, c, h, w)
  prob = torch.sigmoid((emb * emb_ref[:, None]).sum(2))
  weighted = (fr * prob[:, :, None]).reshape(n, t * c, h, w)
  fea = _lrelu(_conv(weighted, p["fusion"], 0))
  att = _lrelu(_conv(weighted, p["s_att_1"], 0))
  att = torch.cat([F.max_pool2d(att, 3, 2, 1), F.avg_pool2d(att, 3, 2, 1)], 1)
  att = _lrelu(_conv(att, p["s_att_2"], 0))
  att = _lrelu(_conv(att, p["s_att_3"], 1))
  att = F.interpolate(att, scale_factor=2, mode="bilinear",
                      align_corners=False)
  att = _conv(att, p["s_att_4"], 1)
  att_add = _conv(_lrelu(_conv(att, p["s_att_add_1"], 0)), p["s_att_add_2"], 0)
  return (fea * torch.sigmoid(att) * 2 + att_add).permute(0, 2, 3, 1).numpy()


def test_attend_matches_torch_tcea(feats):
  target, reference, _ = feats
  frames = np.stack([target, reference], 1)
  params = random_params(ATTEND, 3, frames)
  out = ATTEND_APPLY(params, frames)
  ref = _torch_attend(params["params"], frames)
  np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)


def test_attend_hand_case():
  frames = np.ones((N, 2, H, W, C), np.float32)
  params = jax.tree_util.tree_map(np.zeros_like,
                                  random_params(ATTEND, 0, frames))
  params["params"]["fusion"]["bias"][:2] = [1.0, -1.0]
  params["params"]["s_att_add_2"]["bias"][:2] = [0.25, 0.5]
  out = np.asarray(ATTEND_APPLY(params, frames))
  # att = 0 -> sigmoid 0.5; fused = lrelu([1, -1, 0..]) = [1, -0.1, 0..].
  expected = np.zeros(C)
  expected[:2] = np.array([1.0, -0.1]) * 0.5 * 2 + np.array([0.25, 0.5])
  np.testing.assert_allclose(out, np.broadcast_to(expected, out.shape),
                             rtol=1e-6)


FUSE = fuse.Fuse()
TRACES = []


@jax.jit
def fuse_out_and_grads(params, target, reference, flow, has_ref):
  """Fuse output and the gradient of sum(out^2) w.r.t. the params."""
  TRACES.append(1)
  f = lambda p: FUSE.apply(p, target, reference, flow, has_ref)
  out, vjp = jax.vjp(f, params)
  return out, vjp(2 * out)[0]


@pytest.fixture(scope="module")
def fuse_params(feats):
  target, reference, flow = feats
  return random_params(FUSE, 4, target, reference, flow, np.ones((N,), bool))


def test_no_reference_is_target_with_zero_flow(feats, fuse_params):
  target, reference, flow = feats
  run = lambda *a: np.asarray(fuse_out_and_grads(fuse_params, *a)[0])
  out = run(target, reference, flow, np.array([True, False]))
  both = run(target, reference, flow, np.array([True, True]))
  self_ref = run(target, target, np.zeros_like(flow), np.array([True, True]))
  np.testing.assert_allclose(out[0], both[0], atol=1e-6)
  np.testing.assert_allclose(out[1], self_ref[1], atol=1e-6)
  assert np.abs(out[1] - both[1]).max() > 1e-3  # The reference mattered.


def test_one_compile_per_shape_and_grads_reach_every_param(feats,
                                                           fuse_params):
  target, reference, flow = feats
  for i, has_ref in enumerate(([True, True], [False, True], [False, False])):
    out, grads = fuse_out_and_grads(fuse_params, target + i, reference,
                                    flow * i, np.array(has_ref))
    assert np.all(np.isfinite(out))
  assert len(TRACES) == 1
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  assert len(flat) == 2 * (4 + 9)  # kernel + bias of 4 align, 9 attend convs.
  for path, g in flat:
    assert np.all(np.isfinite(g)), path
    assert np.any(g != 0), path
