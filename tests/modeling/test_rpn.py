"""RPN head, anchor targets, proposals and losses against torch / NumPy."""
import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.rpn import RPNHead as TorchRPNHead

from vpsnet_jax import losses
from vpsnet_jax.modeling import rpn
from vpsnet_jax.ops import anchors as anchor_ops
from vpsnet_jax.ops import boxes as box_ops


def _np_max_iou_assign(iou, pos=0.7, neg=0.3, min_pos=0.3):
  """mmdet v1 MaxIoUAssigner.assign_wrt_overlaps, transcribed (G, K)."""
  g, k = iou.shape
  assigned = -np.ones(k, np.int64)
  max_ov, arg = iou.max(0), iou.argmax(0)
  gt_max = iou.max(1)
  assigned[(max_ov >= 0) & (max_ov < neg)] = 0
  assigned[max_ov >= pos] = arg[max_ov >= pos] + 1
  for i in range(g):
    if gt_max[i] >= min_pos:
      assigned[iou[i] == gt_max[i]] = i + 1
  return assigned


def _scene(seed):
  rng = np.random.default_rng(seed)
  image = (64, 96)
  sizes = anchor_ops.featmap_sizes_for(image, (4, 8, 16, 32, 64))
  anchors = np.concatenate(anchor_ops.multilevel_anchors(sizes))
  xy = rng.uniform(0, 60, (6, 2))
  wh = rng.uniform(8, 60, (6, 2))
  gt = np.concatenate([xy, xy + wh], 1).astype(np.float32)
  gt_valid = np.array([True] * 4 + [False] * 2)
  return image, anchors, gt, gt_valid


def test_assignment_matches_mmdet_transcription():
  image, anchors, gt, gt_valid = _scene(0)
  inside = np.asarray(rpn.inside_flags(jnp.asarray(anchors),
                                       jnp.ones(len(anchors), bool), image))
  labels, matched = jax.jit(rpn.assign_anchors)(
      anchors, inside, gt, gt_valid)
  # Reference: only inside anchors and real ground truths, as mmdet does.

  iou = np.asarray(box_ops.pairwise_iou(gt[gt_valid], anchors[inside]))
  ref = _np_max_iou_assign(iou)
  ours = np.where(np.asarray(labels) == 1, np.asarray(matched) + 1,
                  np.asarray(labels))
  np.testing.assert_array_equal(ours[inside], ref)
  assert np.all(np.asarray(labels)[~inside] == -1)
  assert (ref > 0).sum() >= 4  # every ground truth got an anchor
  # No ground truth at all: every inside anchor is a negative.
  labels, _ = jax.jit(rpn.assign_anchors)(anchors, inside, gt,
                                          np.zeros_like(gt_valid))
  np.testing.assert_array_equal(np.asarray(labels),
                                np.where(inside, 0, -1))


def test_sampling_counts_and_randomness():
  labels = np.full(5000, -1, np.int32)
  labels[:40] = 1
  labels[100:3000] = 0
  fn = jax.jit(rpn.sample_anchors)
  pos, neg = fn(jax.random.key(0), labels)
  pos, neg = np.asarray(pos), np.asarray(neg)
  assert pos.sum() == 40 and neg.sum() == 216
  assert np.all(labels[pos] == 1) and np.all(labels[neg] == 0)
  labels[:1000] = 1
  pos2, neg2 = map(np.asarray, fn(jax.random.key(0), labels))
  assert pos2.sum() == 128 and neg2.sum() == 128
  assert np.all(labels[pos2] == 1) and np.all(labels[neg2] == 0)
  pos3, _ = map(np.asarray, fn(jax.random.key(1), labels))
  assert not np.array_equal(pos2, pos3)
  pos4, _ = map(np.asarray, fn(jax.random.key(0), labels))
  np.testing.assert_array_equal(pos2, pos4)
  assert fn._cache_size() == 1


def test_anchor_targets_and_losses():
  image, anchors, gt, gt_valid = _scene(1)
  valid = np.ones(len(anchors), bool)
  t = jax.jit(lambda k, a, v, g, gv: rpn.anchor_targets(k, a, v, g, gv, image)
              )(jax.random.key(0), anchors, valid, gt, gt_valid)
  pos = np.asarray(t["bbox_weights"]) > 0
  sampled = np.asarray(t["label_weights"]) > 0
  inside = np.asarray(rpn.inside_flags(jnp.asarray(anchors),
                                       jnp.asarray(valid), image))
  labels, _ = rpn.assign_anchors(anchors, inside, gt, gt_valid)
  num_neg = int((np.asarray(labels) == 0).sum())
  assert 0 < pos.sum() <= 128 and np.all(np.asarray(labels)[pos] == 1)
  assert int(t["num_samples"]) == sampled.sum() == pos.sum() + min(
      256 - pos.sum(), num_neg)
  # Targets decode back to the matched ground truth.

  dec = np.asarray(box_ops.decode(anchors[pos], t["bbox_targets"][pos]))
  iou = np.asarray(box_ops.pairwise_iou(dec, gt[gt_valid])).max(1)
  np.testing.assert_allclose(iou, 1.0, atol=1e-4)
  n_s = float(t["num_samples"])
  assert int(t["num_pos"]) == pos.sum() and int(t["num_pos"]) > 0
  assert int(t["num_pos"]) + int(t["num_neg"]) == n_s
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(1, len(anchors))).astype(np.float32)
  deltas = rng.normal(0, 0.2, (1, len(anchors), 4)).astype(np.float32)
  stacked = jax.tree_util.tree_map(lambda x: x[None], t)
  out = rpn.rpn_losses(logits, deltas, stacked)
  w = np.asarray(t["label_weights"])
  ref_cls = (F.binary_cross_entropy_with_logits(
      torch.tensor(logits[0]), torch.tensor(np.asarray(t["labels"])),
      reduction="none").numpy() * w).sum() / n_s
  ref_reg = F.smooth_l1_loss(torch.tensor(deltas[0][pos]), torch.tensor(
      np.asarray(t["bbox_targets"])[pos]), beta=1 / 9,
                             reduction="sum").item() / n_s
  np.testing.assert_allclose(float(out["loss_rpn_cls"]), ref_cls, rtol=1e-5)
  np.testing.assert_allclose(float(out["loss_rpn_bbox"]), ref_reg, rtol=1e-5)


def test_losses_match_torch():
  rng = np.random.default_rng(2)
  x = rng.normal(0, 3, (50,)).astype(np.float32)
  z = (rng.uniform(size=50) > 0.5).astype(np.float32)
  w = (rng.uniform(size=50) > 0.3).astype(np.float32)
  ref = (F.binary_cross_entropy_with_logits(
      torch.tensor(x), torch.tensor(z), reduction="none").numpy() * w).sum()
  np.testing.assert_allclose(
      float(losses.sigmoid_cross_entropy(x, z, w, 7.0)), ref / 7, rtol=1e-5)
  logits = rng.normal(size=(20, 5)).astype(np.float32)
  lab = rng.integers(0, 5, 20)
  ref = F.cross_entropy(torch.tensor(logits), torch.tensor(lab)).item()
  np.testing.assert_allclose(
      float(losses.softmax_cross_entropy(logits, lab, avg_factor=20)), ref,
      rtol=1e-5)
  p, t = rng.normal(size=(2, 30, 4)).astype(np.float32) * 0.3
  for beta in (1.0, 1.0 / 9.0):
    ref = F.smooth_l1_loss(torch.tensor(p), torch.tensor(t), beta=beta,
                           reduction="sum").item()
    np.testing.assert_allclose(float(losses.smooth_l1(p, t, beta)), ref,
                               rtol=1e-5)


def test_head_matches_torchvision_rpn_head():
  torch.manual_seed(0)
  tv = TorchRPNHead(16, 3).eval()
  model = rpn.RPNHead(features=16, num_anchors=3)
  sd = {k: v.numpy() for k, v in tv.state_dict().items()}
  conv = lambda p: {"kernel": sd[p + ".weight"].transpose(2, 3, 1, 0),
                    "bias": sd[p + ".bias"]}
  params = {"rpn_conv": conv("conv.0.0"), "rpn_cls": conv("cls_logits"),
            "rpn_reg": conv("bbox_pred")}
  rng = np.random.default_rng(3)
  feats = [rng.normal(size=(2, s, s + 2, 16)).astype(np.float32)
           for s in (8, 4)]
  logits, deltas = jax.jit(model.apply)({"params": params}, feats)
  with torch.no_grad():
    tl, td = tv([torch.tensor(f).permute(0, 3, 1, 2) for f in feats])
  for lg, dl, r_l, r_d in zip(logits, deltas, tl, td):
    n, a, h, w = r_l.shape
    r_l = r_l.permute(0, 2, 3, 1).reshape(n, -1).numpy()
    r_d = r_d.view(n, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(
        n, -1, 4).numpy()
    np.testing.assert_allclose(np.asarray(lg), r_l, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dl), r_d, atol=1e-5)


def test_proposals_match_torch_pipeline():
  """offset=0 against torchvision's coder, clip and nms, mmdet v1 order."""
  image = (64, 96)
  sizes = anchor_ops.featmap_sizes_for(image, (4, 8, 16, 32, 64))
  levels = anchor_ops.multilevel_anchors(sizes)
  rng = np.random.default_rng(4)
  logits = [rng.normal(size=len(a)).astype(np.float32) for a in levels]
  deltas = [rng.normal(0, 0.3, (len(a), 4)).astype(np.float32)
            for a in levels]
  valid_shape = (60, 90)
  fn = jax.jit(lambda l, d: rpn.proposals(l, d, levels, valid_shape,
                                          nms_pre=200, nms_post=100,
                                          max_num=150, offset=0.0))
  boxes, scores, valid = map(np.asarray, fn(logits, deltas))
  coder = det_utils.BoxCoder((1.0, 1.0, 1.0, 1.0))
  ref_b, ref_s = [], []
  for lg, dl, an in zip(logits, deltas, levels):
    s = torch.sigmoid(torch.tensor(lg))
    s, i = s.topk(min(200, len(s)))
    b = coder.decode_single(torch.tensor(dl)[i], torch.tensor(an)[i])
    b = torchvision.ops.clip_boxes_to_image(b, valid_shape)
    k = torchvision.ops.nms(b, s, 0.7)[:100]
    ref_b.append(b[k])
    ref_s.append(s[k])
  ref_b, ref_s = torch.cat(ref_b), torch.cat(ref_s)
  ref_s, i = ref_s.topk(min(150, len(ref_s)))
  ref_b = ref_b[i].numpy()
  n = len(ref_s)
  assert valid.sum() == n
  np.testing.assert_allclose(scores[:n], ref_s.numpy(), rtol=1e-6)
  np.testing.assert_allclose(boxes[:n], ref_b, atol=1e-3)
  assert fn._cache_size() == 1
  # Batched with vmap: the same result for each image.
  batched = jax.jit(jax.vmap(lambda l, d: rpn.proposals(
      l, d, levels, valid_shape, nms_pre=200, nms_post=100, max_num=150,
      offset=0.0)))
  stack = lambda xs: [np.stack([x, x]) for x in xs]
  b2, s2, v2 = map(np.asarray, batched(stack(logits), stack(deltas)))
  for i in range(2):
    np.testing.assert_array_equal(v2[i], valid)
    np.testing.assert_allclose(s2[i], scores, rtol=1e-6)
    np.testing.assert_allclose(b2[i], boxes, atol=1e-4)


def test_fpn_rpn_gradients_and_overfit():
  """FPN + RPN on fixed C2-C5 features of two tiny images: finite non-zero
  gradients for every parameter, one trace, and a few Adam steps reduce the
  RPN losses. (Backbone gradients: tests/modeling/test_backbone.py.)"""
  import optax
  from vpsnet_jax.modeling import fpn as fpn_lib

  image = (32, 32)
  strides = (4, 8, 16, 32, 64)
  rng = np.random.default_rng(5)
  feats = [jnp.asarray(rng.normal(size=(2, image[0] // s, image[1] // s, c))
                       .astype(np.float32))
           for s, c in zip(strides[:4], (8, 16, 32, 64))]
  neck = fpn_lib.FPN(features=16)
  head = rpn.RPNHead(features=16)

  def init(key):
    k1, k2 = jax.random.split(key)
    pyramid, nv = neck.init_with_output(k1, feats)
    return {"fpn": nv["params"], "rpn": head.init(k2, pyramid)["params"]}

  # Host-side random values (compiling the initialisers is slow on CPU).
  shapes = jax.eval_shape(init, jax.random.key(0))
  params = jax.tree_util.tree_map(
      lambda x: jnp.asarray(rng.normal(0, 0.05, x.shape).astype(np.float32)),
      shapes)
  sizes = anchor_ops.featmap_sizes_for(image, strides)
  anchors = jnp.asarray(np.concatenate(
      anchor_ops.multilevel_anchors(sizes, strides)))
  valid = jnp.ones(anchors.shape[:1], bool)
  gt = jnp.asarray([[[4, 4, 20, 15], [15, 10, 30, 30]],
                    [[2, 5, 15, 25], [0, 0, 0, 0]]], jnp.float32)
  gt_valid = jnp.asarray([[True, True], [True, False]])
  keys = jax.random.split(jax.random.key(1), 2)
  # allowed_border=-1 keeps border-crossing anchors, so every level (even
  # P6 on this tiny image) gets samples and gradients.
  targets = jax.jit(jax.vmap(lambda k, g, gv: rpn.anchor_targets(
      k, anchors, valid, g, gv, image, {"allowed_border": -1.0})))(
          keys, gt, gt_valid)

  def loss_fn(p):
    logits, deltas = head.apply({"params": p["rpn"]},
                                neck.apply({"params": p["fpn"]}, feats))
    out = rpn.rpn_losses(jnp.concatenate(logits, 1),
                         jnp.concatenate(deltas, 1), targets)
    return out["loss_rpn_cls"] + out["loss_rpn_bbox"]

  opt = optax.adam(3e-3)
  state = opt.init(params)
  traces = []

  @jax.jit
  def step(p, s):
    traces.append(1)
    loss, g = jax.value_and_grad(loss_fn)(p)
    updates, s = opt.update(g, s, p)
    return optax.apply_updates(p, updates), s, loss, g

  params, state, loss0, grads = step(params, state)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    g = np.asarray(g)
    assert np.all(np.isfinite(g)) and np.abs(g).sum() > 0, path
  for _ in range(20):
    params, state, loss, _ = step(params, state)
  assert len(traces) == 1
  assert float(loss) < 0.5 * float(loss0), (float(loss0), float(loss))
