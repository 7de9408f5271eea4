"""Import a torchvision Mask R-CNN (ResNet-FPN) state dict into `MaskRCNN`.

Besides the parity tests, this lets users start from torchvision's
COCO-trained `maskrcnn_resnet50_fpn` weights (the paper starts from a
COCO-pretrained model). Names map as follows:

  backbone.body.*                    -> backbone (see torchvision_import)
  backbone.fpn.*                     -> fpn (see torchvision_import)
  rpn.head.conv.0.0 / cls_logits / bbox_pred -> rpn_head/rpn_conv|cls|reg
  roi_heads.box_head.fc6 / fc7       -> box_head/fc1, fc2 (fc6's input is
                                        reordered from (C, 7, 7) to (7, 7, C))
  roi_heads.box_predictor.cls_score / bbox_pred -> box_head/cls, reg
  roi_heads.mask_head.{0..3}.0       -> mask_head/conv1..conv4
  roi_heads.mask_predictor.conv5_mask -> mask_head/deconv
  roi_heads.mask_predictor.mask_fcn_logits -> mask_head/logits
"""

from typing import Any, Dict, Mapping

import numpy as np

from vpsnet_jax.checkpoints import torchvision_import


def _np(x) -> np.ndarray:
  return torchvision_import.to_numpy(x)


# Converters of one torch module (`key` is its prefix, without ".weight").


def conv_params(sd, key) -> Dict[str, np.ndarray]:
  """Conv2d: weight (out, in, kh, kw) -> kernel (kh, kw, in, out), bias."""
  return {"kernel": _np(sd[key + ".weight"]).transpose(2, 3, 1, 0),
          "bias": _np(sd[key + ".bias"])}


def dense_params(sd, key) -> Dict[str, np.ndarray]:
  """Linear: weight (out, in) -> kernel (in, out), bias."""
  return {"kernel": _np(sd[key + ".weight"]).T, "bias": _np(sd[key + ".bias"])}


def roi_fc_params(sd, key, roi_size: int = 7) -> Dict[str, np.ndarray]:
  """The first Linear after RoI features: its input is torch's (C, S, S)
  flattening, ours (S, S, C); weight (out, C*S*S) -> kernel (S*S*C, out)."""
  weight = _np(sd[key + ".weight"])
  fc_dim, flat = weight.shape
  channels = flat // (roi_size * roi_size)
  weight = weight.reshape(fc_dim, channels, roi_size, roi_size)
  return {"kernel": weight.transpose(2, 3, 1, 0).reshape(flat, fc_dim),
          "bias": _np(sd[key + ".bias"])}


def deconv_params(sd, key) -> Dict[str, np.ndarray]:
  """ConvTranspose2d (in, out, kh, kw) -> `Upsample2x` (kh, kw, in, out)."""
  return {"kernel": _np(sd[key + ".weight"]).transpose(2, 3, 0, 1),
          "bias": _np(sd[key + ".bias"])}


def import_maskrcnn(state_dict: Mapping[str, Any],
                    variables: Mapping[str, Any]) -> Dict[str, Any]:
  """Flax variables of `detector.MaskRCNN` from a torchvision state dict.

  Args:
    state_dict: torchvision `MaskRCNN.state_dict()` (tensors or arrays).
    variables: initialised variables of a `MaskRCNN` of the same shape
      (for the backbone's structure and shape checks).

  Returns:
    {"params": ..., "batch_stats": ...} with every weight replaced.
  """
  backbone = torchvision_import.import_resnet(
      state_dict, {"params": variables["params"]["backbone"],
                   "batch_stats": variables["batch_stats"]["backbone"]},
      "backbone.body.")
  params = {"backbone": backbone.get("params", {})}
  num_levels = len([k for k in variables["params"]["fpn"]
                    if k.startswith("lateral_")])
  params["fpn"] = torchvision_import.import_fpn(
      state_dict, num_levels, "backbone.fpn.")["params"]
  params["rpn_head"] = {
      "rpn_conv": conv_params(state_dict, "rpn.head.conv.0.0"),
      "rpn_cls": conv_params(state_dict, "rpn.head.cls_logits"),
      "rpn_reg": conv_params(state_dict, "rpn.head.bbox_pred")}
  params["box_head"] = {
      "fc1": roi_fc_params(state_dict, "roi_heads.box_head.fc6"),
      "fc2": dense_params(state_dict, "roi_heads.box_head.fc7"),
      "cls": dense_params(state_dict, "roi_heads.box_predictor.cls_score"),
      "reg": dense_params(state_dict, "roi_heads.box_predictor.bbox_pred")}
  mask = {f"conv{i + 1}": conv_params(state_dict,
                                      f"roi_heads.mask_head.{i}.0")
          for i in range(4)}
  mask["deconv"] = deconv_params(state_dict,
                                 "roi_heads.mask_predictor.conv5_mask")
  mask["logits"] = conv_params(state_dict,
                               "roi_heads.mask_predictor.mask_fcn_logits")
  params["mask_head"] = mask

  # Shape check against the model.
  def check(ours, ref, path=""):
    for k, v in ref.items():
      if k not in ours:
        raise KeyError(f"no torchvision weight for {path}/{k}")
      if isinstance(v, Mapping):
        check(ours[k], v, f"{path}/{k}")
      elif tuple(np.shape(ours[k])) != tuple(np.shape(v)):
        raise ValueError(f"{path}/{k}: torchvision shape "
                         f"{np.shape(ours[k])} but the model has "
                         f"{np.shape(v)}")
  check(params, variables["params"])
  return {"params": params,
          "batch_stats": {"backbone": backbone.get("batch_stats", {})}}
