"""The assembled Mask R-CNN: losses, gradients, compiles, and an overfit run
on synthetic frames that must reach high box recall."""

import functools

import numpy as np
import optax
import pytest

import jax
import jax.numpy as jnp

from data_pipeline import synthetic
from vpsnet_jax.modeling import detector
from vpsnet_jax.ops import boxes as box_ops
from vpsnet_jax.ops import conv as conv_ops

# Every test shares the compiled Mask R-CNN losses; one overfits.
pytestmark = pytest.mark.slow

CFG = detector.DetectorConfig(
    num_classes=3, depth=18, fpn_dim=64, box_fc_dim=128, mask_conv_dim=32,
    rpn_train_proposals=300, rpn_test_proposals=150, rcnn_samples=64,
    max_detections=20, max_candidates=300, anchor_scales=(4.0,),
    # Every level sees sampled anchors at this tiny size (P5 / P6 anchors
    # would all cross the border), so every parameter gets a gradient.
    rpn_allowed_border=-1.0,
    # The convolutions for this backend (the CPU-tuned ones on the CPU), as
    # the experiment's model factory resolves config.model.conv="auto".
    conv_impl=conv_ops.resolve_conv_impl("auto"))
H, W, G = 128, 256, 8


def synthetic_batch(num_frames=2, seed=0):
  """Annotated frames of the built-in dataset as a detector batch."""
  cfg = synthetic.SyntheticConfig(height=H, width=W)
  video = synthetic.generate_video(cfg, seed, "train", 0)
  things = {c: i for i, c in enumerate(synthetic.THING_CLASSES)}
  out = {k: [] for k in ("images", "gt_boxes", "gt_classes", "gt_valid",
                         "gt_masks")}
  for t in np.linspace(4, 29, num_frames).astype(int):
    seg = video.segments[t]
    boxes, classes, masks = [], [], []
    for sid in np.unique(seg):
      cat = video.categories.get(int(sid))
      if sid == 0 or cat not in things:
        continue
      m = seg == sid
      ys, xs = np.nonzero(m)
      # Objects under 6 px on a side are under 2 cells of P2: left out.
      if xs.max() - xs.min() < 5 or ys.max() - ys.min() < 5:
        continue
      boxes.append([xs.min(), ys.min(), xs.max(), ys.max()])
      classes.append(things[cat])
      masks.append(m)
    boxes, classes, masks = boxes[:G], classes[:G], masks[:G]
    k = len(boxes)
    b = np.zeros((G, 4), np.float32)
    b[:k] = boxes
    c = np.zeros(G, np.int32)
    c[:k] = classes
    mm = np.zeros((G, H, W), np.uint8)
    if k:
      mm[:k] = np.stack(masks)
    img = (video.frames[t].astype(np.float32) -
           [123.675, 116.28, 103.53]) / [58.395, 57.12, 57.375]
    out["images"].append(img.astype(np.float32))
    out["gt_boxes"].append(b)
    out["gt_classes"].append(c)
    out["gt_valid"].append(np.arange(G) < k)
    out["gt_masks"].append(mm)
  batch = {k: jnp.asarray(np.stack(v)) for k, v in out.items()}
  batch["image_size"] = jnp.tile(jnp.array([[H, W]], jnp.int32),
                                 (num_frames, 1))
  return batch


@pytest.fixture(scope="module")
def model_and_params():
  model = detector.MaskRCNN(CFG)
  batch = synthetic_batch(seed=2)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), batch["images"])
  return model, variables, batch


@pytest.fixture(scope="module")
def loss_fn(model_and_params):
  model, _, _ = model_and_params

  def total(params, stats, batch, key):
    out, _ = model.apply({"params": params, "batch_stats": stats}, batch, key,
                         method=model.losses)
    return sum(out.values()), out

  return jax.jit(jax.value_and_grad(total, has_aux=True))


def test_losses_finite_and_one_compile(model_and_params, loss_fn):
  _, variables, batch = model_and_params
  for seed in range(2):
    (total, parts), _ = loss_fn(variables["params"], variables["batch_stats"],
                                batch, jax.random.PRNGKey(seed))
    assert np.isfinite(float(total))
    assert set(parts) == {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls",
                          "loss_bbox", "loss_mask"}
    assert all(float(v) > 0 for v in parts.values()), parts
  assert loss_fn._cache_size() == 1


def test_gradients_reach_every_trainable_parameter(model_and_params, loss_fn):
  _, variables, batch = model_and_params
  _, grads = loss_fn(variables["params"], variables["batch_stats"], batch,
                     jax.random.PRNGKey(0))
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  for path, g in flat:
    name = jax.tree_util.keystr(path)
    g = np.asarray(g)
    assert np.isfinite(g).all(), name
    keys = [getattr(k, "key", None) for k in path]
    frozen = keys[0] == "backbone" and (
        keys[1] in ("conv1", "bn1") or keys[1].startswith("layer1_"))
    if frozen:  # Stem and first stage are frozen (frozen_stages=1).
      assert not g.any(), name
    else:
      assert np.abs(g).max() > 0, name


def _recall(dets, batch, iou=0.5):
  hits = total = 0
  for i in range(batch["images"].shape[0]):
    valid = np.asarray(batch["gt_valid"][i])
    gt = np.asarray(batch["gt_boxes"][i])[valid]
    gcls = np.asarray(batch["gt_classes"][i])[valid]
    keep = np.asarray(dets["valid"][i]) & (np.asarray(dets["scores"][i]) > 0.3)
    boxes = np.asarray(dets["boxes"][i])[keep]
    cls = np.asarray(dets["classes"][i])[keep]
    total += len(gt)
    if not len(boxes) or not len(gt):
      continue
    ious = np.asarray(box_ops.pairwise_iou(jnp.asarray(gt),
                                           jnp.asarray(boxes)))
    same = gcls[:, None] == cls[None, :]
    hits += int(((ious >= iou) & same).any(axis=1).sum())
  return hits / max(total, 1)


def test_overfits_a_few_synthetic_frames(model_and_params, loss_fn):
  model, variables, batch = model_and_params
  assert int(np.asarray(batch["gt_valid"]).sum()) >= 3
  params, stats = variables["params"], variables["batch_stats"]
  tx = optax.adam(2e-3)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, key):
    (_, parts), grads = loss_fn(params, stats, batch, key)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, parts

  history = []
  for i in range(200):
    params, opt, parts = step(params, opt, jax.random.PRNGKey(i))
    history.append({k: float(v) for k, v in parts.items()})
  first = {k: np.mean([h[k] for h in history[:5]]) for k in history[0]}
  last = {k: np.mean([h[k] for h in history[-5:]]) for k in history[0]}
  for k in first:
    assert last[k] < 0.5 * first[k], (k, first[k], last[k])

  detect = jax.jit(functools.partial(model.apply, method=model.detect))
  dets = detect({"params": params, "batch_stats": stats}, batch["images"],
                batch["image_size"])
  assert _recall(dets, batch) >= 0.9
  # Masks follow the objects: mean IoU of the best mask per ground truth.
  masks = np.asarray(dets["masks"]) > 0.5
  ious = []
  for i in range(batch["images"].shape[0]):
    for g in np.nonzero(np.asarray(batch["gt_valid"][i]))[0]:
      gt = np.asarray(batch["gt_masks"][i, g]).astype(bool)
      inter = (masks[i] & gt).sum((1, 2))
      union = (masks[i] | gt).sum((1, 2))
      ious.append((inter / np.maximum(union, 1)).max())
  assert np.mean(ious) > 0.6, ious


def test_losses_under_pmap_match_single_device(model_and_params, loss_fn):
  """One image per simulated device under pmap, against jit per image."""
  _, variables, batch = model_and_params
  n = batch["images"].shape[0]
  assert jax.local_device_count() >= n
  keys = jnp.stack([jax.random.PRNGKey(7 + i) for i in range(n)])
  per_device = jax.tree.map(lambda x: x[:, None], batch)  # (n, 1, ...)
  pmapped = jax.pmap(lambda p, s, b, k: loss_fn(p, s, b, k)[0][1],
                     in_axes=(None, None, 0, 0),
                     devices=jax.local_devices()[:n])
  out = pmapped(variables["params"], variables["batch_stats"], per_device,
                keys)
  for i in range(n):
    single = jax.tree.map(lambda x: x[i:i + 1], batch)
    (_, ref), _ = loss_fn(variables["params"], variables["batch_stats"],
                          single, keys[i])
    for k in ref:
      np.testing.assert_allclose(np.asarray(out[k])[i], ref[k], rtol=2e-4,
                                 atol=1e-6)
