"""The VPQ protocols of the benchmarks: windows, size threshold, exclusions.

A protocol fixes what the official evaluation of a benchmark does beyond the
tube matching of `eval.matching`, which all of them share:

* `cityscapes_vps`: the paper's Cityscapes-VPS evaluation (`mcahny/vps`,
  `tools/eval_vpq.py`). Every 5th frame is annotated; a window of k raw
  frames (k = 0, 5, 10, 15) covers k / 5 + 1 annotated frames.
* `viper`: the release's VIPER evaluation (`tools/dataset/viper.py`,
  `_pq_compute_single_core`, `_vpq_compute_single_core`, `pq_average`).
  Every frame is annotated; windows of 1, 5, 10 and 15 frames. A
  ground-truth tube whose area over the window is below 32 * 32 pixels is
  skipped before any other check: it is never matched and never a false
  negative, but a prediction on it is not excused (it is a false positive
  unless more than half of it is on void and crowd, as everywhere). A small
  crowd tube still excuses predictions of its class (the release checks
  the crowd flag before the size when counting false negatives). Category
  11 ("mobilebarrier") is counted but left out of every average.
* `vipseg`: the VIPSeg benchmark (`VIPSeg-Dataset/VIPSeg-Dataset`,
  `ClipPanoFCN/eval_vpq_vspw.py`). Windows of 1, 2, 4, 6 and 8 annotated
  frames; its own folder layout (`eval.layout.plan_vipseg`).

The final VPQ is the mean over the protocol's windows in each case.
"""

import dataclasses
from typing import Optional, Sequence


@dataclasses.dataclass(frozen=True)
class Protocol:
  """One benchmark's VPQ evaluation.

  Attributes:
    name: the `--protocol` name.
    ks: the window sizes, the keys of the output's "k".
    stride: for `cityscapes_vps`, the annotation stride: a window k covers
      k / stride + 1 annotated frames. None: k counts annotated frames.
    min_gt_area: ground-truth tubes with fewer pixels over the window are
      skipped (see the module docstring); 0 skips none.
    excluded_categories: category ids left out of the averages.
    layout: "cityscapes_vps" (`eval.layout.plan_videos`) or "vipseg"
      (`eval.layout.plan_vipseg`).
  """
  name: str
  ks: tuple
  stride: Optional[int]
  min_gt_area: int = 0
  excluded_categories: tuple = ()
  layout: str = "cityscapes_vps"

  def window_frames(self, k: int) -> int:
    """The number of annotated frames in a window of size k."""
    if self.stride is None:
      if k < 1:
        raise ValueError(f"protocol {self.name} counts windows in annotated "
                         f"frames: k must be at least 1, got {k}")
      return k
    if k < 0 or k % self.stride:
      raise ValueError(f"k={k} must be a non-negative multiple of the "
                       f"annotation stride {self.stride}")
    return k // self.stride + 1

  def with_overrides(self, ks: Optional[Sequence[int]] = None,
                     stride: Optional[int] = None) -> "Protocol":
    """The protocol with other window sizes or annotation stride.

    Raises:
      ValueError: a stride for a protocol whose windows count annotated
        frames, a non-positive stride, or no window size.
    """
    out = self
    if stride is not None:
      if self.stride is None:
        raise ValueError(
            f"--stride does not apply to protocol {self.name}: its windows "
            "count annotated frames (every frame is annotated)")
      if stride <= 0:
        raise ValueError(f"stride must be positive, got {stride}")
      out = dataclasses.replace(out, stride=int(stride))
    if ks is not None:
      ks = tuple(int(k) for k in ks)
      if not ks:
        raise ValueError("need at least one window size k")
      out = dataclasses.replace(out, ks=ks)
    for k in out.ks:
      out.window_frames(k)
    return out


PROTOCOLS = {
    "cityscapes_vps": Protocol("cityscapes_vps", (0, 5, 10, 15), stride=5),
    "viper": Protocol("viper", (1, 5, 10, 15), stride=None,
                      min_gt_area=32 * 32, excluded_categories=(11,)),
    "vipseg": Protocol("vipseg", (1, 2, 4, 6, 8), stride=None,
                       layout="vipseg"),
}
DEFAULT = "cityscapes_vps"


def get(name: str) -> Protocol:
  """The protocol called `name` (one of `PROTOCOLS`)."""
  if name not in PROTOCOLS:
    raise ValueError(f"unknown VPQ protocol {name!r}; expected one of "
                     f"{sorted(PROTOCOLS)}")
  return PROTOCOLS[name]
