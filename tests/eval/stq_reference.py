"""A plain NumPy STQ written from deeplab2's definition
(`evaluation/numpy/segmentation_and_tracking_quality.py`), pixel by pixel
with dictionaries, for checking `eval.stq`.

Input: sequences of frames (semantic, instance, pred_semantic,
pred_instance), each an (H, W) integer map; semantic `void` marks void.
"""

import collections

import numpy as np


def reference_stq(sequences, num_classes, things, void):
  """{"stq", "aq", "iou", "per_sequence": {seq: {...}}} as fractions.

  Args:
    sequences: {sequence id: [(sem, inst, pred_sem, pred_inst), ...]}.
    num_classes: C; semantic labels are 0..C-1 or `void`.
    things: the thing classes.
    void: the void label (mapped to the confusion's last row / column).
  """
  aq_sums, tubes, per_seq = [], [], {}
  total = np.zeros((num_classes + 1, num_classes + 1), np.int64)
  for seq, frames in sequences.items():
    conf = np.zeros_like(total)
    gt_area, pred_area, inter = (collections.Counter(), collections.Counter(),
                                 collections.Counter())
    for sem, inst, psem, pinst in frames:
      s = np.where(sem == void, num_classes, sem).ravel()
      p = np.where(psem == void, num_classes, psem).ravel()
      np.add.at(conf, (s, p), 1)
      gt_thing = np.isin(s, things)
      crowd = gt_thing & (inst.ravel() == 0)
      label_mask = gt_thing & ~crowd
      pred_mask = np.isin(p, things) & ~crowd
      g_key = list(zip(s.tolist(), inst.ravel().tolist()))
      p_key = list(zip(p.tolist(), pinst.ravel().tolist()))
      for i in range(s.size):
        if label_mask[i]:
          gt_area[g_key[i]] += 1
        if pred_mask[i]:
          pred_area[p_key[i]] += 1
        if label_mask[i] and pred_mask[i]:
          inter[(g_key[i], p_key[i])] += 1
    outer = 0.0
    for g, g_size in gt_area.items():
      inner = 0.0
      for p, p_size in pred_area.items():
        tpa = inter.get((g, p), 0)
        if tpa:
          inner += tpa * tpa / (tpa + (p_size - tpa) + (g_size - tpa))
      outer += inner / g_size
    aq_sums.append(outer)
    tubes.append(len(gt_area))
    conf[num_classes, :] = 0  # Ground-truth void pixels dropped.
    total += conf
    iou = _mean_iou(conf)
    aq = outer / max(len(gt_area), 1e-15)
    per_seq[seq] = {"aq": aq, "iou": iou,
                    "stq": None if iou is None else np.sqrt(aq * iou)}
  aq = sum(aq_sums) / max(sum(tubes), 1e-15)
  iou = _mean_iou(total)
  return {"stq": np.sqrt(aq * iou), "aq": aq, "iou": iou,
          "per_sequence": per_seq}


def _mean_iou(conf):
  tp = np.diag(conf).astype(float)
  union = conf.sum(0) + conf.sum(1) - tp
  if not np.count_nonzero(union):
    return None
  return float(np.sum(tp / np.maximum(union, 1e-15)) /
               np.count_nonzero(union))
