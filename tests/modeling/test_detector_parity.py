"""The whole Mask R-CNN inference path against torchvision's, same weights.

Our detector follows mmdetection v1; with `offset=0` (torchvision's box
convention) and `anchor_style="torchvision"` the two definitions coincide
from the image to the final boxes, so proposals, boxes, scores and classes
must agree. Masks are pasted differently (mmdetection v1 resizes the 28 x 28
mask to the integer box; torchvision pastes an expanded mask with
`F.interpolate`), so they are compared by IoU. See README "mmdetection v1 vs
torchvision" for the full list of differences.
"""

import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection import roi_heads as tv_roi_heads
from torchvision.models.detection.image_list import ImageList

import jax
import jax.numpy as jnp

from vpsnet_jax.checkpoints import maskrcnn_import
from vpsnet_jax.modeling import detector
from vpsnet_jax.ops import conv as conv_ops

pytestmark = pytest.mark.slow  # Builds and compiles both Mask R-CNNs.

H, W, K = 128, 128, 4


@pytest.fixture(scope="module")
def both_models():
  torch.manual_seed(0)
  backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None,
                                 trainable_layers=5)
  tv = torchvision.models.detection.MaskRCNN(
      backbone, num_classes=K, rpn_pre_nms_top_n_test=300,
      rpn_post_nms_top_n_test=300, box_detections_per_img=30).eval()
  # Spread the scores so that near ties (where float rounding could reorder
  # the two implementations) are rare; keep the regression moderate, where
  # the definitions coincide (torchvision clamps log-sizes only from above
  # and drops boxes under 1e-3 px; mmdetection v1 clamps both ways).
  with torch.no_grad():
    for name, p in tv.named_parameters():
      if "rpn.head" in name or "roi_heads" in name:
        regression = "bbox_pred" in name
        p.normal_(0, (0.002 if regression else 0.01) if p.dim() > 1 else
                  (0.05 if regression else 0.1))
    for m in tv.modules():
      if isinstance(m, torchvision.ops.FrozenBatchNorm2d):
        m.running_mean.uniform_(-0.2, 0.2)
        m.running_var.uniform_(0.5, 1.5)
  cfg = detector.DetectorConfig(
      num_classes=K - 1, depth=18, frozen_stages=-1, offset=0.0,
      anchor_style="torchvision", rpn_test_proposals=300, max_detections=30,
      max_candidates=None, score_threshold=0.05, nms_iou=0.5,
      conv_impl=conv_ops.resolve_conv_impl("auto"))
  model = detector.MaskRCNN(cfg)
  images = np.random.default_rng(0).normal(size=(1, H, W, 3)).astype(
      np.float32)
  init = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.asarray(images))
  variables = maskrcnn_import.import_maskrcnn(tv.state_dict(), init)
  return tv, model, variables, images


def test_detections_match_torchvision(both_models):
  tv, model, variables, images = both_models
  x = torch.from_numpy(images).permute(0, 3, 1, 2)
  with torch.no_grad():
    feats = tv.backbone(x)
    image_list = ImageList(x, [(H, W)])
    props, _ = tv.rpn(image_list, feats)
    dets, _ = tv.roi_heads(feats, props, image_list.image_sizes)
  ours = jax.jit(lambda v, i, s: model.apply(v, i, s, method=model.detect))(
      variables, jnp.asarray(images), jnp.array([[H, W]], jnp.int32))

  # Proposals: same boxes in the same order.
  p_valid = np.asarray(ours["proposal_valid"][0])
  ref_props = props[0].numpy()
  assert p_valid.sum() == len(ref_props)
  np.testing.assert_allclose(np.asarray(ours["proposals"][0])[p_valid],
                             ref_props, atol=2e-3)

  # Final detections.
  valid = np.asarray(ours["valid"][0])
  ref = dets[0]
  assert valid.sum() == len(ref["scores"]) > 5
  np.testing.assert_allclose(np.asarray(ours["scores"][0])[valid],
                             ref["scores"].numpy(), rtol=1e-4)
  np.testing.assert_allclose(np.asarray(ours["boxes"][0])[valid],
                             ref["boxes"].numpy(), atol=2e-3)
  np.testing.assert_array_equal(np.asarray(ours["classes"][0])[valid] + 1,
                                ref["labels"].numpy())

  # Masks: same objects, pasted with different interpolation.
  ours_m = np.asarray(ours["masks"][0])[valid] > 0.5
  pasted = tv_roi_heads.paste_masks_in_image(ref["masks"], ref["boxes"],
                                             (H, W), padding=1)
  ref_m = pasted[:, 0].numpy() > 0.5
  inter = (ours_m & ref_m).sum((1, 2))
  union = (ours_m | ref_m).sum((1, 2))
  big = union > 50
  assert np.median(inter[big] / union[big]) > 0.8
