"""Segmentation and Tracking Quality (STQ), Weber et al., "STEP: Segmenting
and Tracking Every Pixel" (NeurIPS 2021 datasets track).

STQ = sqrt(AQ * IoU), with the definitions and the accumulation of deeplab2
(`evaluation/numpy/segmentation_and_tracking_quality.py`), whose numbers
this module gives exactly, quirks included:

* IoU is the mean class IoU of the semantic confusion summed over all
  frames of all sequences. Ground-truth void pixels are dropped (their row
  of the confusion is zeroed), but a *predicted* void on labelled pixels is
  kept in the void column: the void "class" then has a union > 0 and an IoU
  of 0, and it enters the mean like a class. Classes with an empty union
  are left out.
* AQ sums, per ground-truth tube g (a thing class with an instance id, over
  all frames of its sequence), sum_p TPA(p, g) * IoU(p, g) / |g| over the
  predicted tubes p (pixels whose predicted class is a thing, whatever
  their predicted instance id, including 0); IoU(p, g) = TPA / (|p| + |g| -
  TPA). Pixels of ground-truth crowd (a thing class with instance id 0) are
  removed from both the ground-truth and the predicted tubes; predicted
  tube pixels on ground-truth stuff or void count in |p|. The overall AQ
  divides the sum over all sequences by the number of ground-truth tubes
  of all sequences: every tube weighs the same, so a sequence with many
  tubes weighs more (the overall AQ is not the mean of the per-sequence
  AQs). A sequence without a ground-truth tube has AQ 0.
* Per sequence, IoU is the same mean over that sequence's confusion (null
  in the JSON when it has no labelled class, where deeplab2 gives NaN) and
  STQ = sqrt(AQ * IoU) of that sequence.

Inputs (`--protocol`, which only picks the folder layout; STQ itself has
no per-benchmark rules):

* `cityscapes_vps`, `viper`: `eval.layout.plan_videos`; `vipseg`:
  `eval.layout.plan_vipseg` (the layouts of `eval.vpq`). A segment maps to
  deeplab2's label as: semantic = the category's position in the JSON's
  `categories`, instance = the segment id for a thing segment that is not
  `iscrowd`, 0 for stuff and crowd (predicted segments are never crowd);
  pixels of no segment (id 0) are void. The sequences are the videos.
* `kitti_step`: `D/<sequence>/<frame>.png` and `P/<sequence>/<frame>.png`,
  RGB PNGs in the KITTI-STEP encoding: R = the semantic train id (19
  Cityscapes classes, 255 void), G * 256 + B = the instance id (0 for stuff
  and crowd); things are person (11) and car (13).

    python -m eval.stq --protocol NAME --gt_dir D [--gt_json F] --pred_dir P
        [--output OUT.json]

Counting: each frame is read once; its pixels are counted on the device in
one `bincount` over (ground-truth segment, predicted segment) pairs
(`eval.confusion`), from which the semantic confusion, the tube areas and
the tube intersections follow on the host (a frame has few segments). A
sequence's tube statistics are reduced to its AQ sum when it ends, so the
memory does not grow with the number of sequences.
"""

import argparse
import collections
import concurrent.futures
import dataclasses
import json
import math
import os
import sys
from typing import Iterator, Mapping, Optional, Sequence

import numpy as np
import tqdm

from eval import confusion as confusion_lib
from eval import layout
from eval import protocols as protocols_lib
from eval import common
from eval.common import VPQInputError, read_rgb_png

PROTOCOLS = ("cityscapes_vps", "viper", "vipseg", "kitti_step")
KITTI_STEP_NUM_CLASSES = 19
KITTI_STEP_THINGS = (11, 13)  # person, car
KITTI_STEP_VOID = 255
_KITTI_INSTANCE_BITS = 16
# Tube keys: semantic * _KEY_BASE + instance id (instance ids < 2^24).
_KEY_BASE = 1 << 24


@dataclasses.dataclass(frozen=True)
class LabelledFrame:
  """One frame as deeplab2's STQ sees it, through its segments.

  Attributes:
    name: the frame, for error messages.
    gt, pred: (H, W) int32 segment ids or (H, W, 3) uint8 RGB-encoded ids
      (id = R + 256 G + 65536 B); each pixel belongs to exactly one segment,
      id 0 being a segment like any other here.
    gt_semantic, gt_instance: (G,) the semantic class (0..C-1, C = void) and
      instance id of each ground-truth segment id in `gt_ids`.
    gt_ids: (G,) sorted int64 ids of the ground-truth segments.
    pred_ids, pred_semantic, pred_instance: the same for the prediction.
    gt_source, pred_source: files, for error messages.
  """
  name: str
  gt: np.ndarray
  pred: np.ndarray
  gt_ids: np.ndarray
  gt_semantic: np.ndarray
  gt_instance: np.ndarray
  pred_ids: np.ndarray
  pred_semantic: np.ndarray
  pred_instance: np.ndarray
  gt_source: str = ""
  pred_source: str = ""


class _SequenceState:
  """Tube areas and intersections of the sequence being read."""

  def __init__(self, num_classes: int):
    self.confusion = np.zeros((num_classes + 1,) * 2, np.int64)
    self.gt = collections.Counter()
    self.pred = collections.Counter()
    self.inter = collections.Counter()
    self.num_frames = 0

  def aq_sum(self) -> float:
    """sum_g sum_p TPA * IoU(p, g) / |g|, in deeplab2's order of sums."""
    by_gt = collections.defaultdict(list)
    for (g, p), tpa in self.inter.items():
      by_gt[g].append((p, tpa))
    outer = 0.0
    for g, g_size in self.gt.items():
      inner = 0.0
      for p, tpa in by_gt.get(g, ()):
        inner += tpa * (tpa / (self.pred[p] + g_size - tpa))
      outer += 1.0 / g_size * inner
    return outer


def _class_iou(confusion: np.ndarray, num_classes: int) -> Optional[float]:
  """deeplab2's mean IoU: void row zeroed, the void column kept."""
  confusion = confusion.copy()
  confusion[num_classes, :] = 0
  tp = np.diag(confusion)
  union = confusion.sum(0) + confusion.sum(1) - tp
  n = np.count_nonzero(union)
  if n == 0:
    return None
  return float(np.sum(tp / np.maximum(union, 1e-15)) / n)


class STQEvaluator:
  """Accumulates STQ over frames given sequence by sequence.

  Usage: `add_frame(sequence_id, frame)` for every frame, the frames of a
  sequence consecutive; then `result()`.
  """

  def __init__(self, num_classes: int, things: Sequence[int]):
    self.num_classes = int(num_classes)
    self.is_thing = np.zeros(self.num_classes + 1, bool)
    self.is_thing[list(things)] = True
    self.confusion = confusion_lib.FrameConfusion()
    self.total_confusion = np.zeros((self.num_classes + 1,) * 2, np.int64)
    self.per_sequence = {}
    self._aq_sums = []
    self._num_tubes = []
    self._seq = None
    self._state = None

  def _finish_sequence(self):
    if self._seq is None:
      return
    s = self._state
    aq_sum = s.aq_sum()
    self._aq_sums.append(aq_sum)
    self._num_tubes.append(len(s.gt))
    aq = aq_sum / max(len(s.gt), 1e-15)
    iou = _class_iou(s.confusion, self.num_classes)
    self.per_sequence[self._seq] = {
        "stq": None if iou is None else math.sqrt(aq * iou),
        "aq": aq, "iou": iou, "num_frames": s.num_frames,
        "num_tubes": len(s.gt)}
    self.total_confusion += s.confusion
    self._seq = self._state = None

  def add_frame(self, sequence_id: str, frame: LabelledFrame):
    """Counts one frame of `sequence_id`."""
    if sequence_id != self._seq:
      self._finish_sequence()
      if sequence_id in self.per_sequence:
        raise VPQInputError(f"sequence {sequence_id}: its frames must be "
                            "given consecutively")
      self._seq, self._state = sequence_id, _SequenceState(self.num_classes)
    if frame.gt.shape != frame.pred.shape:
      raise VPQInputError(
          f"frame {frame.name}: prediction {frame.pred_source} is "
          f"{frame.pred.shape} but ground truth {frame.gt_source} is "
          f"{frame.gt.shape} (H, W)")
    for sem, src in ((frame.gt_semantic, frame.gt_source),
                     (frame.pred_semantic, frame.pred_source)):
      if sem.size and (sem.min() < 0 or sem.max() > self.num_classes):
        raise VPQInputError(f"{src or frame.name}: semantic class "
                            f"{int(sem.max())} outside [0, "
                            f"{self.num_classes}) and not void")
    counts = self._pair_counts(frame)
    self._accumulate(frame, counts)

  def _pair_counts(self, frame: LabelledFrame) -> np.ndarray:
    """(G, P) pixels of each (ground-truth, predicted) segment pair."""
    # Dense index 0 of the look-up table is id 0; the other ids go in the
    # table, so that every id present has its own index.
    gt_rest = frame.gt_ids[frame.gt_ids != 0].astype(np.int32)
    pred_rest = frame.pred_ids[frame.pred_ids != 0].astype(np.int32)
    self.confusion.set_video(gt_rest, pred_rest)
    counts, unk_gt, unk_pred = self.confusion(frame.gt, frame.pred)
    if int(unk_gt) or int(unk_pred):
      gt = int(unk_gt) > 0
      pixels, ids = (frame.gt, frame.gt_ids) if gt else (frame.pred,
                                                         frame.pred_ids)
      if pixels.ndim == 3:
        pixels = common.rgb_to_ids(pixels)
      extra = np.setdiff1d(np.unique(pixels), np.append(ids, 0))
      what = "ground truth" if gt else "prediction"
      src = (frame.gt_source if gt else frame.pred_source) or frame.name
      raise VPQInputError(
          f"{src}: {what} segment id {int(extra[0])} is in the PNG but not "
          f"in the segment table of frame {frame.name}")
    counts = np.asarray(counts)[:len(gt_rest) + 1, :len(pred_rest) + 1]
    # Reorder to the frames' id lists (id 0, if listed, is index 0).
    rows = np.searchsorted(np.append(0, gt_rest), frame.gt_ids)
    cols = np.searchsorted(np.append(0, pred_rest), frame.pred_ids)
    out = counts[rows][:, cols]
    # Pixels of id 0 where id 0 is not a segment of the frame.
    for is_gt, ids, area in ((True, frame.gt_ids, counts[0].sum()),
                             (False, frame.pred_ids, counts[:, 0].sum())):
      if area and 0 not in ids:
        src = (frame.gt_source if is_gt else frame.pred_source) or frame.name
        raise VPQInputError(f"{src}: segment id 0 is in the PNG but not in "
                            f"the segment table of frame {frame.name}")
    return out.astype(np.int64)

  def _accumulate(self, f: LabelledFrame, counts: np.ndarray):
    s = self._state
    s.num_frames += 1
    c = self.num_classes
    key = f.gt_semantic[:, None] * (c + 1) + f.pred_semantic[None, :]
    s.confusion += np.bincount(key.ravel(), weights=counts.ravel(),
                               minlength=(c + 1) ** 2).astype(
                                   np.int64).reshape(c + 1, c + 1)
    gt_thing = self.is_thing[f.gt_semantic]
    crowd = gt_thing & (f.gt_instance == 0)
    gt_tube = gt_thing & ~crowd
    pred_tube = self.is_thing[f.pred_semantic]
    gt_keys = f.gt_semantic.astype(np.int64) * _KEY_BASE + f.gt_instance
    pred_keys = f.pred_semantic.astype(np.int64) * _KEY_BASE + f.pred_instance
    # Segments of one frame may share a key (e.g. several stuff segments);
    # Counter addition sums them as deeplab2's pixel counts do.
    for i in np.flatnonzero(gt_tube):
      area = int(counts[i].sum())
      if area:
        s.gt[int(gt_keys[i])] += area
    pred_area = counts[~crowd].sum(axis=0)
    for j in np.flatnonzero(pred_tube & (pred_area > 0)):
      s.pred[int(pred_keys[j])] += int(pred_area[j])
    sub = counts[np.ix_(gt_tube, pred_tube)]
    gi, pj = np.nonzero(sub)
    g_keys = gt_keys[gt_tube][gi]
    p_keys = pred_keys[pred_tube][pj]
    for g, p, n in zip(g_keys.tolist(), p_keys.tolist(), sub[gi, pj].tolist()):
      s.inter[(g, p)] += n

  def result(self) -> dict:
    """{"stq", "aq", "iou", "per_sequence": {seq: {"stq", "aq", "iou"}}}
    in percent, and "num_sequences", "num_frames"."""
    self._finish_sequence()
    aq = float(np.sum(self._aq_sums) / max(np.sum(self._num_tubes), 1e-15))
    iou = _class_iou(self.total_confusion, self.num_classes)
    pct = lambda x: None if x is None else 100.0 * x  # noqa: E731
    return {
        "stq": pct(None if iou is None else math.sqrt(aq * iou)),
        "aq": pct(aq), "iou": pct(iou),
        "per_sequence": {
            seq: {"stq": pct(v["stq"]), "aq": pct(v["aq"]),
                  "iou": pct(v["iou"])}
            for seq, v in self.per_sequence.items()},
        "num_sequences": len(self.per_sequence),
        "num_frames": int(sum(v["num_frames"]
                              for v in self.per_sequence.values())),
    }


# ----------------------------------------------------------------- folders


def _segment_labels(segments, category_pos, is_thing, pred, where, image):
  """Sorted ids, semantic positions and instance ids of a panoptic segment
  table, with id 0 (void) added as the semantic class C."""
  ids, sem, crowd = common.segment_table(segments, category_pos, pred=pred,
                                         where=where, image=image)
  inst = np.where(np.asarray(is_thing, bool)[sem] & ~crowd, ids, 0)
  ids = np.append(0, ids)
  sem = np.append(len(category_pos), sem)
  inst = np.append(0, inst)
  order = np.argsort(ids)
  return ids[order], sem[order], inst[order].astype(np.int64)


def _panoptic_frames(protocol: str, gt_json: str, gt_dir: str, pred_dir: str,
                     num_threads: Optional[int]):
  """(num_classes, things, sequences of frame loaders) of a JSON layout."""
  plan_fn = {"cityscapes_vps": layout.plan_videos,
             "vipseg": layout.plan_vipseg}[protocols_lib.get(protocol).layout]
  plan = plan_fn(gt_json, gt_dir, pred_dir, None)
  cats = list(plan.categories)
  category_pos = {c["id"]: i for i, c in enumerate(cats)}
  if len(category_pos) != len(cats):
    raise VPQInputError(f"{gt_json}: a category id is listed twice")
  is_thing = [bool(c["isthing"]) for c in cats]
  things = [i for i, t in enumerate(is_thing) if t]

  def load(spec):
    frame = layout.load_frame(spec)
    gt_ids, gt_sem, gt_inst = _segment_labels(
        spec.gt_segments, category_pos, is_thing, False, spec.gt_path,
        spec.name)
    pred_ids, pred_sem, pred_inst = _segment_labels(
        spec.pred_segments, category_pos, is_thing, True, spec.pred_path,
        spec.name)
    # The RGB-encoded PNGs go to the jitted counting as they are.
    return LabelledFrame(
        spec.name, frame.gt, frame.pred, gt_ids, gt_sem, gt_inst,
        pred_ids, pred_sem, pred_inst, spec.gt_path, spec.pred_path)

  sequences = []
  for video in plan.videos:
    seq = (layout.video_id(video[0].name) if protocol != "vipseg"
           else video[0].name.split("/")[0])
    sequences.append((seq, [(load, s) for s in video]))
  return len(cats), things, sequences


def read_kitti_step_png(path: str) -> np.ndarray:
  """A KITTI-STEP panoptic PNG as (H, W) int32 R * 2^16 + G * 256 + B."""
  x = read_rgb_png(path, "R = semantic id, G * 256 + B = instance id")
  x = x.astype(np.int32)
  return (x[..., 0] << _KITTI_INSTANCE_BITS) + x[..., 1] * 256 + x[..., 2]


def _kitti_labels(ids: np.ndarray, path: str):
  """Sorted ids present, their semantic class (19 = void), instance ids.

  One `bincount` over (semantic, instance) packed densely instead of a sort
  (`np.unique` is most of a frame's host time at KITTI-STEP's size).
  """
  sem = ids >> _KITTI_INSTANCE_BITS
  bad = (sem >= KITTI_STEP_NUM_CLASSES) & (sem != KITTI_STEP_VOID)
  if bad.any():
    raise VPQInputError(
        f"{path}: semantic id {int(sem[bad][0])} (R channel) is neither a "
        f"train id below {KITTI_STEP_NUM_CLASSES} nor {KITTI_STEP_VOID} "
        "(void)")
  inst = ids & ((1 << _KITTI_INSTANCE_BITS) - 1)
  span = int(inst.max()) + 1 if inst.size else 1
  # Semantic 0..18, void (255) -> 19: a dense key < 20 * span.
  sem = np.minimum(sem, KITTI_STEP_NUM_CLASSES)
  counts = np.bincount((sem * span + inst).ravel(),
                       minlength=(KITTI_STEP_NUM_CLASSES + 1) * span)
  key = np.flatnonzero(counts)
  sem, inst = key // span, key % span
  raw_sem = np.where(sem == KITTI_STEP_NUM_CLASSES, KITTI_STEP_VOID, sem)
  present = (raw_sem << _KITTI_INSTANCE_BITS) + inst
  return present.astype(np.int64), sem.astype(np.int64), inst.astype(np.int64)


def _kitti_frames(gt_dir: str, pred_dir: str):
  """The KITTI-STEP sequences of `gt_dir`, each frame paired with its
  prediction; errors for missing files before any pixel is read."""
  for d, what in ((gt_dir, "ground-truth"), (pred_dir, "prediction")):
    if not os.path.isdir(d):
      raise FileNotFoundError(f"{what} folder not found: {d}")
  seqs = sorted(s for s in os.listdir(gt_dir)
                if os.path.isdir(os.path.join(gt_dir, s)))
  if not seqs:
    raise VPQInputError(f"{gt_dir}: no sequence folders "
                        "(expected <sequence>/<frame>.png)")

  def load(names):
    name, gt_path, pred_path = names
    gt = read_kitti_step_png(gt_path)
    pred = read_kitti_step_png(pred_path)
    g = _kitti_labels(gt, gt_path)
    p = _kitti_labels(pred, pred_path)
    return LabelledFrame(name, gt, pred, *g, *p, gt_path, pred_path)

  sequences = []
  for seq in seqs:
    files = sorted(f for f in os.listdir(os.path.join(gt_dir, seq))
                   if f.endswith(".png"))
    if not files:
      raise VPQInputError(f"{os.path.join(gt_dir, seq)}: no PNG frames")
    frames = []
    for f in files:
      pred_path = os.path.join(pred_dir, seq, f)
      if not os.path.isfile(pred_path):
        raise FileNotFoundError(
            f"predicted PNG of frame {seq}/{f} not found: {pred_path}")
      frames.append((load, (f"{seq}/{f[:-4]}", os.path.join(gt_dir, seq, f),
                            pred_path)))
    sequences.append((seq, frames))
  return KITTI_STEP_NUM_CLASSES, list(KITTI_STEP_THINGS), sequences


def _prefetched(sequences, num_threads: Optional[int],
                depth: int) -> Iterator[tuple]:
  """Yields (sequence, LabelledFrame) in order, decoding `depth` ahead."""
  jobs = ((seq, fn, arg) for seq, frames in sequences for fn, arg in frames)
  with concurrent.futures.ThreadPoolExecutor(
      num_threads or os.cpu_count() or 1) as pool:
    queue = collections.deque()
    for seq, fn, arg in jobs:
      queue.append((seq, pool.submit(fn, arg)))
      if len(queue) > depth:
        s, fut = queue.popleft()
        yield s, fut.result()
    while queue:
      s, fut = queue.popleft()
      yield s, fut.result()


def evaluate_folder(protocol: str, gt_dir: str, pred_dir: str,
                    gt_json: Optional[str] = None, progress: bool = False,
                    num_threads: Optional[int] = None) -> dict:
  """STQ of a prediction folder in a benchmark's layout (module docstring).

  Args:
    protocol: one of `PROTOCOLS`; it picks the layout.
    gt_dir: ground-truth PNG folder.
    pred_dir: predictions (`pred.json` + `pan_pred/` for the JSON layouts;
      `<sequence>/<frame>.png` for `kitti_step`).
    gt_json: the ground-truth JSON of the JSON layouts.
    progress: a progress bar over frames.
    num_threads: PNG decoding threads (default: one per core).

  Returns:
    `STQEvaluator.result()` with "protocol" added.

  Raises:
    VPQInputError, FileNotFoundError: bad input, naming the file.
  """
  if protocol not in PROTOCOLS:
    raise ValueError(f"unknown STQ protocol {protocol!r}; expected one of "
                     f"{list(PROTOCOLS)}")
  if protocol == "kitti_step":
    if gt_json is not None:
      raise ValueError("--gt_json does not apply to kitti_step (the PNGs "
                       "carry the labels)")
    num_classes, things, sequences = _kitti_frames(gt_dir, pred_dir)
  else:
    if gt_json is None:
      raise ValueError(f"protocol {protocol} needs --gt_json")
    num_classes, things, sequences = _panoptic_frames(
        protocol, gt_json, gt_dir, pred_dir, num_threads)
  ev = STQEvaluator(num_classes, things)
  total = sum(len(f) for _, f in sequences)
  for seq, frame in tqdm.tqdm(
      _prefetched(sequences, num_threads, depth=2 * (os.cpu_count() or 1)),
      total=total, desc="STQ", unit="frame", disable=not progress,
      file=sys.stderr):
    ev.add_frame(seq, frame)
  out = {"protocol": protocol}
  out.update(ev.result())
  return out


def format_table(result: Mapping) -> str:
  fmt = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
  lines = [f"STQ over {result['num_sequences']} sequences, "
           f"{result['num_frames']} frames ({result['protocol']})",
           f"{'sequence':>12} {'STQ':>7} {'AQ':>7} {'IoU':>7}"]
  for seq, v in result["per_sequence"].items():
    lines.append(f"{seq:>12} {fmt(v['stq']):>7} {fmt(v['aq']):>7} "
                 f"{fmt(v['iou']):>7}")
  lines.append(f"{'all':>12} {fmt(result['stq']):>7} {fmt(result['aq']):>7} "
               f"{fmt(result['iou']):>7}")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m eval.stq", description=__doc__.split("\n\n")[0])
  parser.add_argument("--protocol", choices=PROTOCOLS, required=True)
  parser.add_argument("--gt_dir", required=True)
  parser.add_argument("--gt_json", default=None,
                      help="ground-truth JSON (not for kitti_step)")
  parser.add_argument("--pred_dir", required=True)
  parser.add_argument("--output", default=None, help="write the JSON here")
  args = parser.parse_args(argv)
  if (args.protocol == "kitti_step") != (args.gt_json is None):
    parser.error("--gt_json is required for the JSON layouts and does not "
                 "apply to kitti_step")
  try:
    result = evaluate_folder(args.protocol, args.gt_dir, args.pred_dir,
                             args.gt_json, progress=True)
  except (VPQInputError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(format_table(result))
  if args.output:
    with open(args.output, "w") as f:
      json.dump(result, f, indent=2)
    print(f"wrote {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
