"""The assembled VPSNet on tiny synthetic frame pairs: every variant trains
(finite losses, gradients reach every trainable parameter it has), one
compile per input shape across frames, features aligned by the synthetic
data's exact flow, and a short overfit in which the semantic, panoptic and
track losses fall and the track head matches > 90 % of RoIs."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from data_pipeline import metadata
from data_pipeline import synthetic
from data_pipeline import transforms
from tests import vps_tiny
from vpsnet_jax.modeling import vpsnet
from vpsnet_jax.ops.warp import warp
from vpsnet_jax.train import input as input_lib
from vpsnet_jax.train import tasks

META = metadata.SYNTHETIC
DETECTOR_LOSSES = {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox",
                   "loss_mask", "loss_semantic", "loss_panoptic"}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
  """Four training pairs of the tiny synthetic set, as two batches of 2."""
  root = tmp_path_factory.mktemp("vps")
  c = vps_tiny.config()
  source, index = input_lib.open_split(c, str(root), "train")
  it = input_lib.train_batches(source, index, c, 2)
  return [jax.tree_util.tree_map(lambda x: x[0], next(it)) for _ in range(2)]


class Compiled:
  """A variant's task with its jitted gradient and inference functions and
  trace counters (shared by the tests of this module)."""

  def __init__(self, variant):
    self.config = vps_tiny.config(variant)
    self.task = tasks.create_task(self.config, META)
    self.model = vpsnet.VPSNet(tasks.model_config(self.config, META))
    self.variables = jax.jit(self.task.init)(jax.random.PRNGKey(0))
    self.traces = {"grad": 0, "infer": 0}

    def loss(params, batch, key):
      self.traces["grad"] += 1
      total, metrics = self.task.loss_fn(params, self.variables["batch_stats"],
                                         batch, key)
      return total, metrics

    self.grad = jax.jit(jax.value_and_grad(loss, has_aux=True))

    def infer(variables, images, size, ref, flow, has_ref):
      self.traces["infer"] += 1
      return self.model.apply(variables, images, size, ref, flow, has_ref,
                              method=self.model.infer)

    self.infer = jax.jit(infer)


@functools.lru_cache(maxsize=None)
def compiled(variant) -> Compiled:
  return Compiled(variant)


@pytest.mark.parametrize("variant", list(vpsnet.VARIANTS))
def test_variant_trains_and_gradients_reach_its_parameters(pairs, variant):
  c = compiled(variant)
  spec = vpsnet.VARIANTS[variant]
  params = c.variables["params"]
  assert ("fuse" in params) == spec.fuse
  assert ("track_head" in params) == spec.track
  if spec.fuse:
    assert ("align" in params["fuse"]) == spec.align
    assert ("attend" in params["fuse"]) == spec.attend
  (loss, metrics), grads = c.grad(params, pairs[0], jax.random.PRNGKey(1))
  expected = DETECTOR_LOSSES | ({"loss_track"} if spec.track else set())
  assert {k for k in metrics if k.startswith("loss_")} == expected
  assert np.isfinite(float(loss))
  assert float(loss) == pytest.approx(
      sum(float(metrics[k]) for k in expected), rel=1e-5)
  trainable = c.task.trainable(params)
  for (path, g), t in zip(jax.tree_util.tree_leaves_with_path(grads),
                          jax.tree_util.tree_leaves(trainable)):
    g = np.asarray(g)
    assert np.all(np.isfinite(g)), jax.tree_util.keystr(path)
    if t:
      assert np.any(g != 0), f"no gradient reaches {jax.tree_util.keystr(path)}"


def _infer_inputs(batch, gathered=None, has_ref=True):
  n = batch["image"].shape[0]
  h, w = batch["image"].shape[1:3]
  flow = np.zeros((n, h // 4, w // 4, 2), np.float32)
  if gathered is None:
    gathered = np.zeros((n, h // 4, w // 4, 32), np.float32)
  return (batch["image"], np.array([[h, w]] * n, np.int32), gathered, flow,
          np.full((n,), has_ref))


def test_one_compile_per_shape_across_frames(pairs):
  c = compiled("fusetrack")
  for i in range(3):
    c.grad(c.variables["params"], pairs[i % 2], jax.random.PRNGKey(i))
  assert c.traces["grad"] == 1
  first = c.infer(c.variables, *_infer_inputs(pairs[0], has_ref=False))
  second = c.infer(c.variables, *_infer_inputs(pairs[1], first["gathered"]))
  c.infer(c.variables, *_infer_inputs(pairs[0], second["gathered"]))
  assert c.traces["infer"] == 1
  n, h, w = pairs[0]["image"].shape[:3]
  d = c.model.cfg.max_detections
  s = len(c.model.cfg.stuff_channels)
  assert second["panoptic"].shape == (n, h, w)
  assert second["embeddings"].shape == (n, d, 32)
  pan = np.asarray(second["panoptic"])
  assert pan.min() >= 0 and pan.max() < s + d
  keep = np.asarray(second["keep"])
  assert not np.any(keep & ~np.asarray(second["valid"]))
  for i in range(n):  # Only kept detections own pixels.
    owners = np.unique(pan[i][pan[i] >= s]) - s
    assert keep[i][owners].all()


def test_first_frame_is_its_own_reference(pairs):
  """has_reference=False ignores the reference: any value gives the same
  output as the target passed as its own reference."""
  c = compiled("fusetrack")
  a = c.infer(c.variables, *_infer_inputs(pairs[0], has_ref=False))
  noise = np.random.default_rng(0).standard_normal(
      a["gathered"].shape).astype(np.float32)
  b = c.infer(c.variables, *_infer_inputs(pairs[0], noise, has_ref=False))
  np.testing.assert_array_equal(a["panoptic"], b["panoptic"])
  np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-6)


def test_exact_flow_aligns_reference_features():
  """Warped by the synthetic data's exact flow (at 1/4 scale), the
  reference frame's features line up with the target's better than
  unwarped, for every frame pair. Features: P2 of the (random) backbone +
  FPN at 128x256, the scale the align module warps at (the random model's
  gathered map itself is dominated by nearest-upsampled P5-P6 blocks,
  which do not move with the content)."""
  video = synthetic.generate_video(
      synthetic.SyntheticConfig(height=128, width=256), 1, "train", 0)
  c = compiled("base")
  features = jax.jit(lambda v, x: c.model.apply(
      v, x, method=c.model.features)[0])
  ratios = []
  for t, r in ((20, 15), (10, 5), (25, 20), (30, 25), (15, 10)):
    images = np.stack([transforms.normalize(video.frames[t - 1]),
                       transforms.normalize(video.frames[r - 1])])
    p2 = np.asarray(features(c.variables, images))
    flow, visible = synthetic.flow_between(video, t, r)
    flow_q = vpsnet.quarter_flow(flow[None])
    assert np.abs(flow_q).max() > 1.0  # The frames really moved.
    aligned = np.asarray(warp(jnp.asarray(p2[1:]), flow_q))[0]
    vis = visible.reshape(32, 4, 64, 4).all(axis=(1, 3))
    err = lambda a: np.mean((a - p2[0]) ** 2, axis=-1)[vis].mean()
    ratios.append(err(aligned) / err(p2[1]))
  assert max(ratios) < 0.97 and np.mean(ratios) < 0.9, ratios


STEPS = 120


def test_overfits_pairs_and_track_head_matches(pairs):
  c = compiled("fusetrack")
  tx = optax.adam(1e-3)
  params = c.variables["params"]
  mask = c.task.trainable(params)
  opt = tx.init(params)

  @jax.jit
  def update(params, opt, grads):
    grads = jax.tree_util.tree_map(lambda g, m: g if m else jnp.zeros_like(g),
                                   grads, mask)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt

  history = []
  for i in range(STEPS):
    # The module's compiled gradient function; no second compile.
    (_, metrics), grads = c.grad(params, pairs[i % 2], jax.random.PRNGKey(i))
    params, opt = update(params, opt, grads)
    history.append(jax.device_get(metrics))
  first = {k: np.mean([h[k] for h in history[:4]]) for k in history[0]}
  last = {k: np.mean([h[k] for h in history[-4:]]) for k in history[0]}
  for k in ("loss_semantic", "loss_panoptic", "loss_track"):
    assert last[k] < 0.5 * first[k], (k, first[k], last[k])
  acc = [float(c.grad(params, b, jax.random.PRNGKey(1000 + i))[0][1][
      "track_accuracy"]) for i, b in enumerate(pairs)]
  assert np.mean(acc) > 0.9, acc


def test_bfloat16_compute_keeps_float32_parameters(pairs):
  """model.dtype='bfloat16': float32 parameters and gradients, finite, and
  the loss terms near float32's at the same parameters."""
  f32 = compiled("fusetrack")
  config = vps_tiny.config(model__dtype="bfloat16")
  task = tasks.create_task(config, META)
  params = f32.variables["params"]
  grad = jax.jit(jax.value_and_grad(
      lambda p, b, k: task.loss_fn(p, f32.variables["batch_stats"], b, k),
      has_aux=True))
  (loss, metrics), grads = grad(params, pairs[0], jax.random.PRNGKey(1))
  (_, ref), _ = f32.grad(params, pairs[0], jax.random.PRNGKey(1))
  for leaf in jax.tree_util.tree_leaves(grads):
    assert leaf.dtype == jnp.float32 and np.all(np.isfinite(leaf))
  for k in ("loss_semantic", "loss_panoptic", "loss_rpn_cls", "loss_mask",
            "loss_track"):
    assert float(metrics[k]) == pytest.approx(float(ref[k]), rel=0.1), k
