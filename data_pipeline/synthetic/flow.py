"""The exact ground-truth flow of `vps_synthetic`, as training reads it.

`flow/VVVV.npz` holds `layer` (uint16 [30, H, W], the rigid layer visible at
each pixel) and `offsets` (int32 [L, 30, 2], each layer's (dy, dx) position
per frame). `flow_between(load_flow_fields(path), f0, f1)` gives the flow
between any two frames f0, f1 (1-based frame indices) and the mask of pixels
still visible in f1. Only NumPy: no renderer here.
"""
import os
from typing import Dict

import numpy as np


def load_flow_fields(path: str) -> Dict[str, np.ndarray]:
  """Reads `flow/VVVV.npz`: {'layer': uint16 [T,H,W], 'offsets': int32
  [L,T,2]}."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Ground-truth flow file not found: {path}")
  with np.load(path) as data:
    for key in ("layer", "offsets"):
      if key not in data:
        raise ValueError(f"{path} has no array {key!r}")
    return {"layer": data["layer"], "offsets": data["offsets"]}


def flow_between(fields, frame0: int, frame1: int):
  """Exact optical flow from frame `frame0` to frame `frame1` (1-based).

  Args:
    fields: a `SyntheticVideo` (its `layer` and `offsets` attributes) or the
      dict of `load_flow_fields`.
    frame0: source frame index, 1..T.
    frame1: target frame index, 1..T.

  Returns:
    flow: float32 [H, W, 2], (dx, dy) per pixel of frame0 (OpenCV
      convention): pixel (x, y) of frame0 shows the same scene point as pixel
      (x + dx, y + dy) of frame1.
    visible: bool [H, W], True where that point is inside frame1 and not
      occluded there.
  """
  if hasattr(fields, "layer"):  # A `SyntheticVideo` (not imported here).
    layer, offsets = fields.layer, fields.offsets
  else:
    layer, offsets = fields["layer"], fields["offsets"]
  t_n, h, w = layer.shape
  for f in (frame0, frame1):
    if not 1 <= f <= t_n:
      raise ValueError(f"frame index {f} outside 1..{t_n}")
  t0, t1 = frame0 - 1, frame1 - 1
  src = layer[t0].astype(np.int64)
  delta = (offsets[:, t1] - offsets[:, t0])[src]  # [H, W, 2] (dy, dx)
  yy, xx = np.mgrid[0:h, 0:w]
  ty, tx = yy + delta[..., 0], xx + delta[..., 1]
  inside = (ty >= 0) & (ty < h) & (tx >= 0) & (tx < w)
  visible = inside.copy()
  visible[inside] = layer[t1][ty[inside], tx[inside]] == src[inside]
  flow = np.stack([delta[..., 1], delta[..., 0]], -1).astype(np.float32)
  return flow, visible
