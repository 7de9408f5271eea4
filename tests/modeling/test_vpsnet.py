"""The assembled VPSNet on tiny synthetic frame pairs (that every variant
trains and its gradients reach every trainable parameter it has, and that
both convolution paths agree: tests/test_accelerator_path.py): one compile per
input shape across frames, features aligned by the synthetic
data's exact flow, and a short overfit in which the semantic, panoptic and
track losses fall and the track head matches > 90 % of RoIs; the
convolution implementation (`conv_impl`) reaches every convolution, leaves
the parameters alone (that "xla" and "cpu" give the same losses,
gradients and outputs: tests/test_accelerator_path.py, on fusetrack)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from data_pipeline import metadata
from data_pipeline import sources
from data_pipeline import synthetic
from data_pipeline import transforms
from tests import tiny_models
from tests import vps_tiny
from vpsnet_jax import experiment
from vpsnet_jax.modeling import detector
from vpsnet_jax.modeling import vpsnet
from vpsnet_jax.ops import conv as conv_ops
from vpsnet_jax.train import tasks
from vpsnet_jax.ops.resize import quarter_flow
from vpsnet_jax.ops.warp import warp
from vpsnet_jax.train import input as input_lib

META = metadata.SYNTHETIC


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
  """Four training pairs of the tiny synthetic set, as two batches of 2."""
  root = tmp_path_factory.mktemp("vps")
  c = vps_tiny.config()
  source, index = sources.open_split(c, str(root), "train")
  it = input_lib.train_batches(source, index, c, 2)
  return [jax.tree_util.tree_map(lambda x: x[0], next(it)) for _ in range(2)]


def _infer_inputs(batch, gathered=None, has_ref=True):
  n = batch["image"].shape[0]
  h, w = batch["image"].shape[1:3]
  flow = np.zeros((n, h // 4, w // 4, 2), np.float32)
  if gathered is None:
    gathered = np.zeros((n, h // 4, w // 4, 32), np.float32)
  return (batch["image"], np.array([[h, w]] * n, np.int32), gathered, flow,
          np.full((n,), has_ref))


@pytest.mark.slow  # Compiles the tiny VPSNet's train step and inference.
def test_one_compile_per_shape_across_frames(pairs):
  c = tiny_models.compiled("fusetrack")
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


@pytest.mark.slow  # Compiles the tiny VPSNet's inference.
def test_first_frame_is_its_own_reference(pairs):
  """has_reference=False ignores the reference: any value gives the same
  output as the target passed as its own reference."""
  c = tiny_models.compiled("fusetrack")
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
  c = tiny_models.compiled("base")
  features = jax.jit(lambda v, x: c.model.apply(
      v, x, method=c.model.features)[0])
  ratios = []
  for t, r in ((20, 15), (10, 5), (25, 20), (30, 25), (15, 10)):
    images = np.stack([transforms.normalize(video.frames[t - 1]),
                       transforms.normalize(video.frames[r - 1])])
    p2 = np.asarray(features(c.variables, images))
    flow, visible = synthetic.flow_between(video, t, r)
    flow_q = quarter_flow(flow[None])
    assert np.abs(flow_q).max() > 1.0  # The frames really moved.
    aligned = np.asarray(warp(jnp.asarray(p2[1:]), flow_q))[0]
    vis = visible.reshape(32, 4, 64, 4).all(axis=(1, 3))
    err = lambda a: np.mean((a - p2[0]) ** 2, axis=-1)[vis].mean()
    ratios.append(err(aligned) / err(p2[1]))
  assert max(ratios) < 0.97 and np.mean(ratios) < 0.9, ratios


def test_variant_structure_follows_the_release():
  """Parameters of each variant (abstract init, no compile): the extra neck
  (`refine`, `fuse`) exactly in the variants that fuse, the track head in
  the tracking ones; the release's semantic widths 256 -> 256 -> 128 -> 128
  by default."""
  image = jnp.zeros((1, 64, 128, 3), jnp.float32)
  for variant, spec in vpsnet.VARIANTS.items():
    model = vpsnet.VPSNet(experiment.model_config(vps_tiny.config(variant),
                                                  META))
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), image)[
        "params"]
    assert ("refine" in params) == ("fuse" in params) == spec.fuse, variant
    assert ("track_head" in params) == spec.track, variant
  assert vpsnet.VARIANTS["disjoined"] == vpsnet.Variant(
      True, True, True, True, track_unfused=True)
  cfg = vpsnet.VPSNetConfig(num_classes=8)
  assert cfg.semantic_features == (256, 128, 128)
  assert (cfg.semantic_loss, cfg.warp_grid) == ("full", "release")
  model = vpsnet.VPSNet(dataclasses.replace(cfg, depth=18, fpn_dim=256))
  stack = jax.eval_shape(model.init, jax.random.PRNGKey(0), image)[
      "params"]["semantic_head"]["stack"]
  assert [stack[f"dconv{i}"]["kernel"].shape for i in range(3)] == [
      (3, 3, 256, 256), (3, 3, 256, 128), (3, 3, 128, 128)]
  with pytest.raises(ValueError, match="warp_grid"):
    vpsnet.VPSNetConfig(num_classes=8, warp_grid="torch")
  with pytest.raises(ValueError, match="semantic_loss"):
    vpsnet.VPSNetConfig(num_classes=8, semantic_loss="half")


@pytest.mark.slow  # Compiles the tiny Disjoined's inference.
def test_disjoined_track_head_reads_unfused_features(pairs):
  """Disjoined: the embeddings are the track head on RoI features of the
  target's FPN levels (not the fused ones); the boxes, the masks and the
  semantic map come from the fused features as in FuseTrack."""
  c = tiny_models.compiled("disjoined")
  gathered = np.asarray(c.infer(c.variables, *_infer_inputs(
      pairs[1], has_ref=False))["gathered"])
  inputs = _infer_inputs(pairs[0], gathered)
  out = c.infer(c.variables, *inputs)

  def embed(m, images, boxes, ref, flow, has_ref, fused):
    feats = m.features(images)
    if fused:
      feats, _ = m.neck_features(feats, ref, flow, has_ref)
    return m.track_head(m._roi_features(feats, boxes, 7))  # pylint: disable=protected-access

  images, _, ref, flow, has_ref = inputs
  unfused, fused = (np.asarray(c.model.apply(
      c.variables, images, out["boxes"], ref, flow, has_ref, f,
      method=embed)) for f in (False, True))
  # Every detection slot (the random model's scores may all be below the
  # panoptic threshold; the embeddings are computed for every slot).
  np.testing.assert_allclose(np.asarray(out["embeddings"]), unfused,
                             rtol=1e-4, atol=1e-4)
  assert not np.allclose(unfused, fused, atol=1e-3)


@pytest.mark.slow  # Compiles the tiny Base's forward twice.
def test_semantic_loss_at_full_resolution_or_quarter(pairs):
  """semantic_loss='full' (release): cross-entropy of the x4 upsampled
  logits against the pipeline's full-resolution labels; 'quarter' (paper):
  of the 1/4-scale logits against the labels at pixels (4i, 4j)."""
  batch = jax.tree_util.tree_map(lambda x: x, pairs[0])
  values = {}
  for mode in ("full", "quarter"):
    config = vps_tiny.config("base", model__semantic_loss=mode)
    task = tasks.create_task(config, META)
    model = vpsnet.VPSNet(experiment.model_config(config, META))
    variables = tiny_models.compiled("base").variables
    mb = tasks.model_batch(batch, tasks.thing_table(META),
                           model.cfg.offset)
    keys = jax.random.split(jax.random.PRNGKey(0), batch["image"].shape[0])
    _, metrics = jax.jit(task.loss_fn)(variables["params"],
                                       variables["batch_stats"], batch, keys)
    quarter, full = jax.jit(lambda v, x: model.apply(
        v, x, method=lambda m, y: m.semantic_head(m.features(y)[:4])))(
            variables, mb["images"])
    logits, labels = ((full, batch["semantic"]) if mode == "full" else
                      (quarter, batch["semantic"][:, ::4, ::4]))
    logits, labels = np.asarray(logits, np.float64), np.asarray(labels)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(
        -1, keepdims=True)) - logits.max(-1, keepdims=True)
    valid = labels != 255
    nll = -np.take_along_axis(logp, np.where(valid, labels, 0)[..., None],
                              -1)[..., 0]
    expected = nll[valid].mean()
    values[mode] = float(metrics["loss_semantic"])
    assert values[mode] == pytest.approx(expected, rel=1e-4), mode
  assert values["full"] != pytest.approx(values["quarter"], rel=1e-3)


STEPS = 120


@pytest.mark.slow  # Compiles the tiny VPSNet's train step (training loop).
def test_overfits_pairs_and_track_head_matches(pairs):
  c = tiny_models.compiled("fusetrack")
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


@pytest.mark.slow  # Compiles the tiny VPSNet's train step twice.
def test_bfloat16_compute_keeps_float32_parameters(pairs):
  """model.dtype='bfloat16': float32 parameters and gradients, finite, and
  the loss terms near float32's at the same parameters."""
  f32 = tiny_models.compiled("fusetrack")
  config = tiny_models.config("fusetrack", model__dtype="bfloat16")
  task = tasks.create_task(config, META)
  params = f32.variables["params"]
  grad = jax.jit(jax.value_and_grad(
      lambda p, b, k: task.loss_fn(p, f32.variables["batch_stats"], b,
                                   tiny_models.example_keys(k, 2)),
      has_aux=True))
  (loss, metrics), grads = grad(params, pairs[0], jax.random.PRNGKey(1))
  (ref_loss, ref), _ = f32.grad(params, pairs[0], jax.random.PRNGKey(1))
  for leaf in jax.tree_util.tree_leaves(grads):
    assert leaf.dtype == jnp.float32 and np.all(np.isfinite(leaf))
  # The stated tolerance: the total and each term within 10 % of float32.
  assert float(loss) == pytest.approx(float(ref_loss), rel=0.1)
  for k in ("loss_semantic", "loss_panoptic", "loss_rpn_cls", "loss_mask",
            "loss_track"):
    assert float(metrics[k]) == pytest.approx(float(ref[k]), rel=0.1), k


def test_conv_impl_reaches_every_convolution(monkeypatch):
  """VPSNetConfig.conv_impl is the one switch: every conv2d call of the
  model (traced abstractly, nothing compiled) gets it, and the parameters
  (names, shapes, dtypes) are the same for both implementations."""
  cfg = experiment.model_config(vps_tiny.config("fusetrack"), META)
  seen = []
  original = conv_ops.conv2d

  def spy(*args, impl="xla", **kwargs):
    seen.append(impl)
    return original(*args, impl=impl, **kwargs)

  monkeypatch.setattr(conv_ops, "conv2d", spy)
  images = jnp.zeros((1, 64, 128, 3), jnp.float32)
  shapes = {}
  for impl in ("xla", "cpu"):
    seen.clear()
    model = vpsnet.VPSNet(dataclasses.replace(cfg, conv_impl=impl))
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
    assert len(seen) > 50 and set(seen) == {impl}, (impl, set(seen))
    shapes[impl] = jax.tree_util.tree_map(lambda a: (a.shape, a.dtype),
                                          variables)
  assert shapes["xla"] == shapes["cpu"]
  for bad in ("auto", "gpu"):
    with pytest.raises(ValueError, match="resolve_conv_impl"):
      dataclasses.replace(cfg, conv_impl=bad)
    with pytest.raises(ValueError, match="conv_impl"):
      detector.DetectorConfig(conv_impl=bad)
  assert vpsnet.VPSNetConfig().conv_impl == "xla"
