"""R-CNN heads, targets, losses and inference against torchvision and NumPy."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection import roi_heads as tv_roi_heads
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
import torchvision.ops

import jax
import jax.numpy as jnp

from vpsnet_jax.modeling import assign
from vpsnet_jax.modeling import roi_heads
from vpsnet_jax.ops import boxes as box_ops

torch.manual_seed(0)


def _t(x):
  return torch.from_numpy(np.asarray(x))


def _random_boxes(rng, n, h, w, min_size=2.0):
  xy = rng.uniform(0, [w - min_size, h - min_size], (n, 2))
  wh = rng.uniform(min_size, [w / 2, h / 2], (n, 2))
  b = np.concatenate([xy, np.minimum(xy + wh, [w - 1, h - 1])], 1)
  return b.astype(np.float32)


# ---------------------------------------------------------------- heads


def test_box_head_matches_torchvision_with_copied_weights():
  c, fc, k, r = 8, 32, 4, 5
  tv_head, tv_pred = TwoMLPHead(c * 49, fc).eval(), FastRCNNPredictor(fc, k)
  head = roi_heads.BoxHead(num_classes=k, fc_dim=fc)
  x = np.random.default_rng(0).normal(size=(r, 7, 7, c)).astype(np.float32)
  sd = {n: p.detach().numpy() for n, p in tv_head.state_dict().items()}
  sd.update({n: p.detach().numpy() for n, p in tv_pred.state_dict().items()})
  # torch flattens (C, 7, 7); we flatten (7, 7, C).
  w6 = sd["fc6.weight"].reshape(fc, c, 7, 7).transpose(2, 3, 1, 0)
  params = {
      "fc1": {"kernel": w6.reshape(49 * c, fc), "bias": sd["fc6.bias"]},
      "fc2": {"kernel": sd["fc7.weight"].T, "bias": sd["fc7.bias"]},
      "cls": {"kernel": sd["cls_score.weight"].T, "bias": sd["cls_score.bias"]},
      "reg": {"kernel": sd["bbox_pred.weight"].T, "bias": sd["bbox_pred.bias"]},
  }
  logits, deltas = head.apply({"params": params}, jnp.asarray(x))
  with torch.no_grad():
    tl, td = tv_pred(tv_head(_t(x).permute(0, 3, 1, 2)))
  np.testing.assert_allclose(logits, tl.numpy(), atol=1e-5)
  np.testing.assert_allclose(deltas, td.numpy().reshape(r, k, 4), atol=1e-5)


def torch_mask_head_params(tv_heads, tv_pred):
  """Flax parameters of `MaskHead` from torchvision's mask head + predictor."""
  sd = {n: p.detach().numpy() for n, p in tv_heads.state_dict().items()}
  params = {}
  for i in range(4):
    params[f"conv{i + 1}"] = {
        "kernel": sd[f"{i}.0.weight"].transpose(2, 3, 1, 0),
        "bias": sd[f"{i}.0.bias"]}
  sd = {n: p.detach().numpy() for n, p in tv_pred.state_dict().items()}
  # torch ConvTranspose2d weight (in, out, kh, kw) -> (kh, kw, in, out).
  params["deconv"] = {
      "kernel": sd["conv5_mask.weight"].transpose(2, 3, 0, 1),
      "bias": sd["conv5_mask.bias"]}
  params["logits"] = {
      "kernel": sd["mask_fcn_logits.weight"].transpose(2, 3, 1, 0),
      "bias": sd["mask_fcn_logits.bias"]}
  return params


def test_mask_head_matches_torchvision_with_copied_weights():
  c, d, k, r = 8, 16, 4, 3
  tv_heads = MaskRCNNHeads(c, (d,) * 4, 1).eval()
  tv_pred = MaskRCNNPredictor(d, d, k).eval()
  head = roi_heads.MaskHead(num_classes=k, conv_dim=d)
  x = np.random.default_rng(1).normal(size=(r, 14, 14, c)).astype(np.float32)
  out = head.apply({"params": torch_mask_head_params(tv_heads, tv_pred)},
                   jnp.asarray(x))
  with torch.no_grad():
    ref = tv_pred(tv_heads(_t(x).permute(0, 3, 1, 2))).permute(0, 2, 3, 1)
  assert out.shape == (r, 28, 28, k)
  np.testing.assert_allclose(out, ref.numpy(), atol=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_outputs():
  head = roi_heads.BoxHead(num_classes=3, fc_dim=16, dtype=jnp.bfloat16)
  x = jnp.ones((2, 7, 7, 4))
  params = head.init(jax.random.PRNGKey(0), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  logits, deltas = head.apply(params, x)
  assert logits.dtype == deltas.dtype == jnp.float32
  ref_logits, _ = roi_heads.BoxHead(num_classes=3, fc_dim=16).apply(params, x)
  np.testing.assert_allclose(logits, ref_logits, rtol=0.05, atol=0.05)


# ---------------------------------------------------------- assignment


def numpy_max_iou_assign(iou, pos_iou, neg_iou, min_pos_iou):
  """mmdetection v1 MaxIoUAssigner, written with loops over boxes."""
  n, g = iou.shape
  assigned = np.full(n, -1)
  if g == 0:
    return np.zeros(n, int)
  best = iou.max(1)
  arg = iou.argmax(1)
  assigned[(best >= 0) & (best < neg_iou)] = 0
  assigned[best >= pos_iou] = arg[best >= pos_iou] + 1
  for i in range(g):
    gmax = iou[:, i].max()
    if gmax >= min_pos_iou:
      assigned[iou[:, i] == gmax] = i + 1
  return assigned


@pytest.mark.parametrize("seed", range(4))
def test_max_iou_assign_matches_reference(seed):
  rng = np.random.default_rng(seed)
  gt = _random_boxes(rng, 5, 64, 64, 8)
  # Candidates near the boxes, so every rule fires.
  cand = np.concatenate([gt + rng.normal(0, 3, gt.shape),
                         _random_boxes(rng, 60, 64, 64)]).astype(np.float32)
  iou = np.asarray(torchvision.ops.box_iou(_t(cand), _t(gt)))
  for thresholds in ((0.7, 0.3, 0.3), (0.5, 0.5, 0.5)):
    ref = numpy_max_iou_assign(iou, *thresholds)
    ours = assign.max_iou_assign(jnp.asarray(iou), jnp.ones(len(cand), bool),
                                 jnp.ones(len(gt), bool), *thresholds)
    np.testing.assert_array_equal(ours, ref)
  # Padding boxes are invisible; without boxes everything is background.
  padded = np.concatenate([iou, np.ones((len(cand), 2), np.float32)], 1)
  ours = assign.max_iou_assign(
      jnp.asarray(padded), jnp.ones(len(cand), bool),
      jnp.array([True] * len(gt) + [False] * 2), 0.7, 0.3, 0.3)
  np.testing.assert_array_equal(ours, numpy_max_iou_assign(iou, 0.7, 0.3, 0.3))
  empty = assign.max_iou_assign(jnp.asarray(padded), jnp.ones(len(cand), bool),
                                jnp.zeros(len(gt) + 2, bool), 0.7, 0.3, 0.3)
  assert (np.asarray(empty) == 0).all()


def test_sample_counts_and_randomness():
  assigned = jnp.asarray(np.r_[np.full(300, 1), np.zeros(1000, int),
                               np.full(50, -1)].astype(np.int32))
  s = assign.sample(jax.random.PRNGKey(0), assigned, 512, 0.25)
  idx, valid, pos = map(np.asarray, (s.index, s.valid, s.positive))
  assert int(s.num_positive) == 128 and pos[:128].all() and not pos[128:].any()
  assert valid.all() and len(set(idx.tolist())) == 512
  assert (np.asarray(assigned)[idx[:128]] == 1).all()
  assert (np.asarray(assigned)[idx[128:]] == 0).all()
  s2 = assign.sample(jax.random.PRNGKey(1), assigned, 512, 0.25)
  assert set(np.asarray(s2.index).tolist()) != set(idx.tolist())
  s3 = assign.sample(jax.random.PRNGKey(0), assigned, 512, 0.25)
  np.testing.assert_array_equal(s3.index, idx)
  # Few candidates: all positives, negatives fill up, the rest is padding.
  few = jnp.array([1, 0, 0, -1, 2], jnp.int32)
  s = assign.sample(jax.random.PRNGKey(0), few, 8, 0.25)
  assert int(s.num_positive) == 2
  assert np.asarray(s.valid).sum() == 4
  assert sorted(np.asarray(s.index)[np.asarray(s.valid)].tolist()) == [
      0, 1, 2, 4]


def test_sample_rois_targets():
  rng = np.random.default_rng(0)
  gt = np.zeros((4, 4), np.float32)
  gt[:3] = _random_boxes(rng, 3, 100, 120, 10)
  gt_valid = np.array([True, True, True, False])
  classes = np.array([2, 0, 1, 0], np.int32)
  props = _random_boxes(rng, 200, 100, 120)
  t = roi_heads.sample_rois(jax.random.PRNGKey(0), jnp.asarray(props),
                            jnp.ones(200, bool), jnp.asarray(gt),
                            jnp.asarray(classes), jnp.asarray(gt_valid),
                            num_samples=64, pos_fraction=0.25)
  rois, pos, labels = map(np.asarray, (t.rois, t.positive, t.labels))
  gi = np.asarray(t.gt_index)
  # IoU in the mmdetection convention (+1).
  iou = np.asarray(box_ops.pairwise_iou(jnp.asarray(rois), jnp.asarray(gt[:3])))
  valid = np.asarray(t.valid)
  assert (iou[pos].max(1) >= 0.5).all()
  assert (iou[valid & ~pos].max(1) < 0.5).all()
  np.testing.assert_array_equal(labels[pos], classes[gi[pos]] + 1)
  assert (labels[~pos] == 0).all()
  # Ground-truth boxes are proposals too: all three are sampled positives
  # (there are only a few positives) with zero regression targets.
  for g in range(3):
    hit = pos & (np.abs(rois - gt[g]).sum(1) < 1e-6)
    assert hit.any()
    np.testing.assert_allclose(np.asarray(t.box_targets)[hit], 0, atol=1e-6)


def test_mask_targets_match_torchvision_roi_align():
  rng = np.random.default_rng(0)
  masks = np.zeros((3, 40, 50), np.float32)
  for g in range(3):
    y0, x0 = rng.integers(0, 20, 2)
    masks[g, y0:y0 + rng.integers(5, 20), x0:x0 + rng.integers(5, 30)] = 1
  rois = _random_boxes(rng, 6, 40, 50, 4)
  gi = np.array([0, 1, 2, 0, 1, 2], np.int32)
  ours = roi_heads.mask_targets(jnp.asarray(masks), jnp.asarray(rois),
                                jnp.asarray(gi), size=28, offset=0.0)
  # Each RoI on its own ground-truth mask (batch index i).
  indexed = torch.cat([torch.arange(6)[:, None].float(), _t(rois)], 1)
  ref = torchvision.ops.roi_align(_t(masks[gi])[:, None], indexed, (28, 28),
                                  1.0, 2, aligned=False)[:, 0]
  np.testing.assert_array_equal(ours, (ref.numpy() >= 0.5).astype(np.float32))


# ---------------------------------------------------------------- losses


def test_box_losses_against_torch():
  rng = np.random.default_rng(0)
  s, k = 16, 4
  logits = rng.normal(size=(s, k)).astype(np.float32)
  deltas = rng.normal(size=(s, k, 4)).astype(np.float32)
  labels = rng.integers(0, k, s).astype(np.int32)
  pos = labels > 0
  valid = np.ones(s, bool)
  valid[-3:] = False
  pos &= valid
  labels[~valid] = 0
  targets_box = rng.normal(size=(s, 4)).astype(np.float32)
  t = roi_heads.RcnnTargets(jnp.zeros((s, 4)), jnp.asarray(valid),
                            jnp.asarray(labels), jnp.asarray(targets_box),
                            jnp.asarray(pos), jnp.zeros(s, jnp.int32))
  loss_cls, loss_box = roi_heads.box_losses(jnp.asarray(logits),
                                            jnp.asarray(deltas), t)
  v = _t(valid)
  ref_cls = F.cross_entropy(_t(logits)[v], _t(labels).long()[v])
  p = _t(pos)
  pred = _t(deltas)[p, _t(labels).long()[p]]
  ref_box = F.smooth_l1_loss(pred, _t(targets_box)[p], beta=1.0,
                             reduction="sum") / v.sum()
  np.testing.assert_allclose(loss_cls, ref_cls.item(), rtol=1e-5)
  np.testing.assert_allclose(loss_box, ref_box.item(), rtol=1e-5)


def test_mask_loss_against_torch():
  rng = np.random.default_rng(0)
  p, m, k = 5, 28, 4
  logits = rng.normal(size=(p, m, m, k)).astype(np.float32) * 3
  labels = np.array([1, 3, 2, 0, 1], np.int32)
  pos = np.array([True, True, True, False, False])
  targets = (rng.random((p, m, m)) > 0.5).astype(np.float32)
  ours = roi_heads.mask_loss(jnp.asarray(logits), jnp.asarray(labels),
                             jnp.asarray(targets), jnp.asarray(pos))
  sel = _t(logits)[torch.arange(3), :, :, _t(labels).long()[:3]]
  ref = F.binary_cross_entropy_with_logits(sel, _t(targets)[:3])
  np.testing.assert_allclose(ours, ref.item(), rtol=1e-5)
  none = roi_heads.mask_loss(jnp.asarray(logits), jnp.asarray(labels),
                             jnp.asarray(targets), jnp.zeros(p, bool))
  assert float(none) == 0.0


# -------------------------------------------------------------- inference


def test_detect_matches_torchvision_postprocess():
  rng = np.random.default_rng(0)
  r, k, h, w = 40, 4, 80, 100
  rois = _random_boxes(rng, r, h, w, 6)
  logits = (rng.normal(size=(r, k)) * 2).astype(np.float32)
  deltas = (rng.normal(size=(r, k, 4)) * 0.5).astype(np.float32)
  tv = tv_roi_heads.RoIHeads(
      None, None, None, 0.5, 0.5, 512, 0.25, (10.0, 10.0, 5.0, 5.0),
      score_thresh=0.05, nms_thresh=0.5, detections_per_img=20)
  with torch.no_grad():
    tb, ts, tlab = tv.postprocess_detections(
        _t(logits), _t(deltas.reshape(r, -1)), [_t(rois)], [(h, w)])
  det = jax.jit(lambda *a: roi_heads.detect(
      *a, image_size=(h, w), score_threshold=0.05, nms_iou=0.5,
      max_detections=20, offset=0.0))(jnp.asarray(logits), jnp.asarray(deltas),
                                      jnp.asarray(rois), jnp.ones(r, bool))
  n = int(np.asarray(det.valid).sum())
  assert n == len(ts[0])
  np.testing.assert_allclose(np.asarray(det.scores)[:n], ts[0].numpy(),
                             rtol=1e-5)
  np.testing.assert_allclose(np.asarray(det.boxes)[:n], tb[0].numpy(),
                             atol=1e-3)
  np.testing.assert_array_equal(np.asarray(det.classes)[:n] + 1,
                                tlab[0].numpy())
  assert not np.asarray(det.valid)[n:].any()


def test_detection_masks_pick_the_class_channel_and_paste():
  dets = roi_heads.Detections(
      boxes=jnp.array([[2., 3., 9., 7.], [0., 0., 0., 0.]]),
      scores=jnp.array([0.9, 0.0]), classes=jnp.array([1, 0]),
      valid=jnp.array([True, False]))
  logits = jnp.full((2, 28, 28, 3), -20.0).at[0, :, :, 2].set(20.0)
  masks = np.asarray(roi_heads.detection_masks(logits, dets, (12, 14)))
  expect = np.zeros((12, 14), bool)
  expect[3:8, 2:10] = True
  np.testing.assert_array_equal(masks[0] > 0.5, expect)
  assert (masks[1] == 0).all()
