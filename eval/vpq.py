"""Video panoptic quality (VPQ), the metric of Kim et al., CVPR 2020 (Eq. 1).

Two interfaces:

* `evaluate(videos, categories, ks, stride, protocol=...)` on arrays: each
  video is a sequence of `Frame`s (ground-truth and predicted segment-id maps
  plus their segment tables), its annotated frames in order;
* `evaluate_folder(gt_json, gt_dir, pred_dir, ...)` on a benchmark's
  evaluation layout, and the command line

    python -m eval.vpq --gt_json F --gt_dir D --pred_dir D [--pred_json F]
        [--protocol {cityscapes_vps,viper,vipseg}] [--k ...] [--stride 5]
        [--output OUT.json]

The protocol (`eval.protocols`, default `cityscapes_vps`) sets the window
sizes, the folder layout and what the benchmark's official script does
beyond tube matching; `--k` and `--stride` override its windows. Under
`cityscapes_vps` a window of k raw frames covers k / stride + 1 consecutive
annotated frames (k = 0 is image PQ); under `viper` and `vipseg` a window of
k covers k annotated frames. A window starts at every annotated frame where
it fits in its video. Tube statistics are summed per class over all windows
of all videos; VPQ^k is the mean PQ over classes with TP + FP + FN > 0, and
the final VPQ is the mean over the ks. All scores are in percent. See
`eval.matching` for the matching rules and `eval.confusion` for how pixels
are counted once.
"""

import argparse
import json
import sys
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import tqdm

from eval import confusion as confusion_lib
from eval import layout
from eval import common
from eval import matching
from eval import protocols as protocols_lib
from eval.common import Frame, VPQInputError  # pylint: disable=unused-import

DEFAULT_KS = (0, 5, 10, 15)
DEFAULT_STRIDE = 5
ID_LIMIT = confusion_lib.ID_LIMIT


def window_frames(k: int, stride: int) -> int:
  """Annotated frames in a window of k raw frames (k a multiple of stride)."""
  return protocols_lib.get("cityscapes_vps").with_overrides(
      ks=(k,), stride=stride).window_frames(k)


def _normalize_categories(categories) -> list[Mapping[str, Any]]:
  cats = list(categories.values() if isinstance(categories, Mapping)
              else categories)
  seen = set()
  for c in cats:
    if "id" not in c or "isthing" not in c:
      raise VPQInputError(f"category {c} needs 'id' and 'isthing'")
    if c["id"] in seen:
      raise VPQInputError(f"category id {c['id']} is listed twice")
    seen.add(c["id"])
  return cats


class _VideoEvaluator:
  """Turns a video's frames into per-class statistics for every k."""

  def __init__(self, categories, protocol: protocols_lib.Protocol):
    self.categories = _normalize_categories(categories)
    self.category_pos = {c["id"]: i for i, c in enumerate(self.categories)}
    self.protocol = protocol
    self.window = {k: protocol.window_frames(k) for k in protocol.ks}
    self.stats = {k: matching.ClassStats.zeros(len(self.categories))
                  for k in protocol.ks}
    self.confusion = confusion_lib.FrameConfusion()
    self.num_videos = self.num_frames = 0

  def _table(self, frame: Frame, pred: bool):
    """Validated ids (S,), category positions (S,), crowd flags (S,)."""
    return common.segment_table(
        frame.pred_segments if pred else frame.gt_segments,
        self.category_pos, pred=pred,
        where=(frame.pred_source if pred else frame.gt_source) or frame.name,
        image=frame.name)

  @staticmethod
  def _check_pixels(frame: Frame):
    for arr, src in ((frame.gt, frame.gt_source),
                     (frame.pred, frame.pred_source)):
      if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise VPQInputError(f"{src or frame.name}: expected (H, W) ids or an "
                            f"(H, W, 3) RGB image, got shape {arr.shape}")
      if arr.ndim == 3 and arr.dtype != np.uint8:
        raise VPQInputError(f"{src or frame.name}: RGB-encoded ids must be "
                            f"uint8, got {arr.dtype}")
      if arr.ndim == 2 and not np.issubdtype(arr.dtype, np.integer):
        raise VPQInputError(f"{src or frame.name}: segment ids must be "
                            f"integers, got {arr.dtype}")
      if arr.ndim == 2 and arr.dtype.itemsize > 4 and arr.size and (
          arr.max() >= ID_LIMIT):
        raise VPQInputError(f"{src or frame.name}: segment id {arr.max()} "
                            f"is not below {ID_LIMIT}")
    if frame.gt.shape[:2] != frame.pred.shape[:2]:
      raise VPQInputError(
          f"image {frame.name}: prediction {frame.pred_source} is "
          f"{frame.pred.shape[:2]} but ground truth {frame.gt_source} is "
          f"{frame.gt.shape[:2]} (H, W)")

  def _check_frame(self, frame, counts, unknown, gt_ids, pred_ids,
                   gt_present, pred_present):
    """Segments in the PNG but not in the frame's table, or the reverse."""
    for pred, (ids, present, area, n_unknown) in enumerate((
        (gt_ids, gt_present, counts.sum(axis=1)[1:], unknown[0]),
        (pred_ids, pred_present, counts.sum(axis=0)[1:], unknown[1]))):
      src = (frame.pred_source if pred else frame.gt_source) or frame.name
      what = "prediction" if pred else "ground truth"
      extra = ids[(area > 0) & ~present]
      if n_unknown:
        pixels = frame.pred if pred else frame.gt
        pixels = common.rgb_to_ids(pixels) if pixels.ndim == 3 else pixels
        extra = np.setdiff1d(np.unique(pixels), np.append(ids, 0))
      if len(extra):
        raise VPQInputError(
            f"{src}: {what} segment id {int(extra[0])} is in the PNG but not "
            f"in the segment table of image {frame.name}")
      missing = ids[(area == 0) & present]
      if len(missing):
        raise VPQInputError(
            f"{src}: {what} segment id {int(missing[0])} is in the segment "
            f"table of image {frame.name} but not in the PNG")

  def add_video(self, frames: Sequence[Frame]):
    """Accumulates the statistics of one video (annotated frames in order)."""
    if not frames:
      return
    tables = []
    for frame in frames:
      self._check_pixels(frame)
      tables.append((self._table(frame, False), self._table(frame, True)))
    gt_ids = np.unique(np.concatenate([t[0][0] for t in tables]))
    pred_ids = np.unique(np.concatenate([t[1][0] for t in tables]))
    num_f, num_g, num_p = len(frames), len(gt_ids), len(pred_ids)
    attrs = matching.FrameAttributes(
        gt_category=np.full((num_f, num_g), -1, np.int64),
        gt_crowd=np.zeros((num_f, num_g), bool),
        gt_order=np.zeros((num_f, num_g), np.int64),
        pred_category=np.full((num_f, num_p), -1, np.int64))
    for f, ((g_id, g_cat, g_crowd), (p_id, p_cat, _)) in enumerate(tables):
      g_pos = np.searchsorted(gt_ids, g_id)
      attrs.gt_category[f, g_pos] = g_cat
      attrs.gt_crowd[f, g_pos] = g_crowd
      attrs.gt_order[f, g_pos] = np.arange(len(g_id))
      attrs.pred_category[f, np.searchsorted(pred_ids, p_id)] = p_cat

    # One pass over pixels per frame, dispatched asynchronously.
    self.confusion.set_video(gt_ids.astype(np.int32), pred_ids.astype(np.int32))
    pending = [self.confusion(f.gt, f.pred) for f in frames]
    per_frame = np.zeros((num_f, num_g + 1, num_p + 1), np.int64)
    for f, (frame, (counts, unk_gt, unk_pred)) in enumerate(
        zip(frames, pending)):
      per_frame[f] = np.asarray(counts)[:num_g + 1, :num_p + 1]
      self._check_frame(frame, per_frame[f], (int(unk_gt), int(unk_pred)),
                        gt_ids, pred_ids, attrs.gt_category[f] >= 0,
                        attrs.pred_category[f] >= 0)

    cumulative = np.concatenate(
        [np.zeros_like(per_frame[:1]), np.cumsum(per_frame, axis=0)])
    for k, n in self.window.items():
      for start in range(num_f - n + 1):
        self.stats[k] += matching.match_window(
            cumulative[start + n] - cumulative[start], attrs, start,
            start + n, len(self.categories), self.protocol.min_gt_area)
    self.num_videos += 1
    self.num_frames += num_f

  def result(self) -> tuple[dict, dict]:
    """The output JSON and the per-k summaries of `matching.summarize`."""
    ids = [c["id"] for c in self.categories]
    isthing = [bool(c["isthing"]) for c in self.categories]
    excluded = self.protocol.excluded_categories
    per_k = {k: matching.summarize(s, ids, isthing, excluded)
             for k, s in self.stats.items()}
    out = {"vpq": {}, "k": {}, "protocol": self.protocol.name}
    for k, summary in per_k.items():
      out["k"][str(k)] = {g: summary[g]["pq"] for g in ("all", "things",
                                                        "stuff")}
      out["k"][str(k)]["classes"] = summary["classes"]
    for g in ("all", "things", "stuff"):
      out["vpq"][g] = float(np.mean([per_k[k][g]["pq"] for k in per_k]))
    return out, per_k


def resolve_protocol(protocol=protocols_lib.DEFAULT,
                     ks: Optional[Sequence[int]] = None,
                     stride: Optional[int] = None) -> protocols_lib.Protocol:
  """The protocol (a name or an `eval.protocols.Protocol`) with `ks` /
  `stride` overriding its windows.

  Raises:
    ValueError: an unknown protocol or windows it cannot have.
  """
  if not isinstance(protocol, protocols_lib.Protocol):
    protocol = protocols_lib.get(protocol)
  return protocol.with_overrides(ks, stride)


def evaluate(videos: Iterable[Sequence[Frame]], categories,
             ks: Optional[Sequence[int]] = None,
             stride: Optional[int] = None,
             progress: bool = False, total: Optional[int] = None,
             details: Optional[dict] = None,
             protocol=protocols_lib.DEFAULT) -> dict:
  """VPQ of predicted against ground-truth videos given as arrays.

  Args:
    videos: iterable of videos; a video is a sequence of `Frame`s, its
      annotated frames in temporal order. Videos are consumed one at a time,
      so a generator keeps memory bounded by one video.
    categories: sequence (or mapping by id) of {"id", "isthing", "name"}.
    ks: window sizes (default: the protocol's); under `cityscapes_vps` in
      raw frames, multiples of `stride`, otherwise in annotated frames.
    stride: annotation stride lambda (raw frames between annotated frames)
      of `cityscapes_vps` (default 5); an error for the other protocols.
    progress: show a progress bar over videos.
    total: number of videos, for the progress bar.
    details: if given, filled with SQ / RQ / class counts per group and k
      (`{k: {"all": {"pq", "sq", "rq", "n"}, ...}}`) and the numbers of videos
      and frames.
    protocol: a name of `eval.protocols.PROTOCOLS`, or a `Protocol`.

  Returns:
    {"vpq": {"all", "things", "stuff"}, "k": {"<k>": {"all", "things",
    "stuff", "classes": {"<category_id>": {"pq", "sq", "rq", "iou", "tp",
    "fp", "fn"}}}}, "protocol": name}, scores in percent.
  """
  ev = _VideoEvaluator(categories, resolve_protocol(protocol, ks, stride))
  for video in tqdm.tqdm(videos, total=total, desc="VPQ", unit="video",
                         disable=not progress, file=sys.stderr):
    ev.add_video(video)
  out, per_k = ev.result()
  if details is not None:
    details.update({"num_videos": ev.num_videos, "num_frames": ev.num_frames,
                    "groups": {k: {g: s[g] for g in ("all", "things", "stuff")}
                               for k, s in per_k.items()}})
  return out


def evaluate_folder(gt_json: str, gt_dir: str, pred_dir: str,
                    pred_json: Optional[str] = None,
                    ks: Optional[Sequence[int]] = None,
                    stride: Optional[int] = None, progress: bool = False,
                    num_threads: Optional[int] = None,
                    details: Optional[dict] = None,
                    protocol=protocols_lib.DEFAULT) -> dict:
  """VPQ of a prediction folder against a benchmark's evaluation layout.

  Args:
    gt_json: ground-truth JSON (Cityscapes-VPS: `images`, `annotations`,
      `categories`; VIPSeg: `videos`, `annotations`, `categories`).
    gt_dir: folder of the ground-truth PNGs (`eval.layout`).
    pred_dir: folder with `pred.json` and `pan_pred/`.
    pred_json: prediction JSON; defaults to `pred_dir/pred.json`.
    ks, stride, progress, details, protocol: as `evaluate`; the protocol
      also picks the layout (`vipseg`: `eval.layout.plan_vipseg`, the others
      `eval.layout.plan_videos`).
    num_threads: PNG decoding threads (default: one per core).

  Returns:
    As `evaluate`.
  """
  resolved = resolve_protocol(protocol, ks, stride)
  plan_fn = {"cityscapes_vps": layout.plan_videos,
             "vipseg": layout.plan_vipseg}[resolved.layout]
  plan = plan_fn(gt_json, gt_dir, pred_dir, pred_json)
  with layout.FrameLoader(num_threads) as loader:
    return evaluate(loader.videos(plan.videos), plan.categories, ks, stride,
                    progress=progress, total=len(plan.videos),
                    details=details, protocol=protocol)


def format_table(result: Mapping, details: Mapping) -> str:
  """Human-readable PQ / SQ / RQ per k and group, and the final VPQ."""
  lines = [f"VPQ over {details['num_videos']} videos, "
           f"{details['num_frames']} annotated frames"]
  header = f"{'':>8} {'PQ':>7} {'SQ':>7} {'RQ':>7} {'#cls':>5}"
  for k, groups in details["groups"].items():
    lines += ["", f"k = {k}", header]
    for g in ("all", "things", "stuff"):
      s = groups[g]
      if s["n"]:
        lines.append(f"{g.capitalize():>8} {s['pq']:7.2f} {s['sq']:7.2f} "
                     f"{s['rq']:7.2f} {s['n']:5d}")
      else:
        lines.append(f"{g.capitalize():>8} {'-':>7} {'-':>7} {'-':>7} "
                     f"{0:5d}")
  v = result["vpq"]
  lines += ["", f"VPQ (mean over k = {', '.join(map(str, details['groups']))})"
            f": All {v['all']:.2f}  Things {v['things']:.2f}  "
            f"Stuff {v['stuff']:.2f}"]
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m eval.vpq", description=__doc__.split("\n\n")[0])
  parser.add_argument("--gt_json", required=True)
  parser.add_argument("--gt_dir", required=True)
  parser.add_argument("--pred_dir", required=True)
  parser.add_argument("--pred_json", default=None,
                      help="default: PRED_DIR/pred.json")
  parser.add_argument("--protocol", choices=sorted(protocols_lib.PROTOCOLS),
                      default=protocols_lib.DEFAULT,
                      help="the benchmark's evaluation (eval/protocols.py)")
  parser.add_argument("--k", type=int, nargs="+", default=None,
                      help="window sizes (default: the protocol's)")
  parser.add_argument("--stride", type=int, default=None,
                      help="annotation stride of cityscapes_vps (default 5)")
  parser.add_argument("--output", default=None, help="write the JSON here")
  args = parser.parse_args(argv)
  try:
    resolve_protocol(args.protocol, args.k, args.stride)
  except ValueError as e:
    parser.error(str(e))
  details = {}
  try:
    result = evaluate_folder(args.gt_json, args.gt_dir, args.pred_dir,
                             args.pred_json, args.k, args.stride,
                             progress=True, details=details,
                             protocol=args.protocol)
  except (VPQInputError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(format_table(result, details))
  if args.output:
    with open(args.output, "w") as f:
      json.dump(result, f, indent=2)
    print(f"wrote {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
