"""NumPy transforms of decoded frames into static-shape training targets.

Pure functions of their inputs (randomness comes in as a `np.random.Generator`
or as sampled parameters), used by `data_pipeline.pipeline` inside
`tf.numpy_function`. Frames are the example dicts of `tfds_builders`:
'image' uint8 [H, W, 3], 'panoptic' int32 [H, W] (train_id * 1000 +
track id, -1 void), 'video_id', 'frame_index', 'image_id', optionally
'flow_layer' int [H, W] and 'flow_offsets' int [L, 2] (synthetic data).
"""
import dataclasses
import threading
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from data_pipeline import metadata

MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)
IGNORE = metadata.IGNORE_LABEL
LABEL_DIVISOR = 1000
FLOW_MODES = ("none", "ground_truth", "dis")


def round_up(value: int, divisor: int) -> int:
  return -(-value // divisor) * divisor


def normalize(image: np.ndarray) -> np.ndarray:
  """uint8 [..., 3] RGB -> float32, (x - mean) / std per channel."""
  out = image.astype(np.float32)
  out -= MEAN
  out *= 1.0 / STD
  return out


def decode_panoptic(panoptic: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """int32 [H, W] panoptic -> (semantic int32 [H, W] with 255 void,
  track ids int32 [H, W] with 0 = no instance)."""
  void = panoptic < 0
  semantic = np.where(void, IGNORE, panoptic // LABEL_DIVISOR)
  track = np.where(void, 0, panoptic % LABEL_DIVISOR)
  return semantic.astype(np.int32), track.astype(np.int32)


@dataclasses.dataclass(frozen=True)
class Geometry:
  """A joint scale, flip and crop of an H x W frame.

  scaled: (h, w) after scaling; flip: mirror left-right after scaling;
  crop: (y0, x0, h, w) window in the scaled frame; out: (h, w) output size,
  >= the crop, padded at the bottom/right.
  """
  scaled: Tuple[int, int]
  flip: bool
  crop: Tuple[int, int, int, int]
  out: Tuple[int, int]


def sample_geometry(rng: np.random.Generator, size: Tuple[int, int],
                    scale_range: Tuple[float, float],
                    crop_size: Tuple[int, int], flip_probability: float,
                    size_divisor: int) -> Geometry:
  """Random scale in `scale_range`, flip, and crop of at most `crop_size`."""
  h, w = size
  s = rng.uniform(*scale_range)
  sh, sw = max(1, int(round(h * s))), max(1, int(round(w * s)))
  flip = bool(rng.uniform() < flip_probability)
  ch, cw = min(crop_size[0], sh), min(crop_size[1], sw)
  y0 = int(rng.integers(0, sh - ch + 1))
  x0 = int(rng.integers(0, sw - cw + 1))
  out = (round_up(crop_size[0], size_divisor),
         round_up(crop_size[1], size_divisor))
  return Geometry((sh, sw), flip, (y0, x0, ch, cw), out)


def identity_geometry(size: Tuple[int, int], size_divisor: int) -> Geometry:
  h, w = size
  return Geometry((h, w), False, (0, 0, h, w),
                  (round_up(h, size_divisor), round_up(w, size_divisor)))


def fit_geometry(size: Tuple[int, int], crop_size: Tuple[int, int],
                 flip: bool, size_divisor: int) -> Geometry:
  """The whole H x W frame, scaled down (never up) to fit in `crop_size`
  keeping its aspect ratio, uncropped; output size as `sample_geometry`'s
  (crop_size rounded up to `size_divisor`)."""
  h, w = size
  s = min(1.0, crop_size[0] / h, crop_size[1] / w)
  sh = min(crop_size[0], max(1, int(round(h * s))))
  sw = min(crop_size[1], max(1, int(round(w * s))))
  out = (round_up(crop_size[0], size_divisor),
         round_up(crop_size[1], size_divisor))
  return Geometry((sh, sw), flip, (0, 0, sh, sw), out)


def has_instance(panoptic: np.ndarray) -> bool:
  """Whether an int [H, W] panoptic map has a pixel of a (non-crowd)
  instance: not void and track id > 0 (as `decode_panoptic`)."""
  return bool(np.any((panoptic >= 0) & (panoptic % LABEL_DIVISOR > 0)))


def sample_geometry_with_instances(
    rng: np.random.Generator, panoptics: Sequence[np.ndarray],
    scale_range: Tuple[float, float], crop_size: Tuple[int, int],
    flip_probability: float, size_divisor: int, crop_retries: int
) -> Tuple[Geometry, List[np.ndarray]]:
  """`sample_geometry`, redrawn while the crop loses every instance of a
  frame that has some (the release's RandomCrop rejects such a crop).

  Args:
    rng: the draws' source (deterministic given its state).
    panoptics: int32 [H, W] panoptic maps of the frames the crop must keep
      an instance of (train_example: target and reference), same H x W.
    scale_range, crop_size, flip_probability, size_divisor: as
      `sample_geometry`.
    crop_retries: redraws after the first draw (0: the first draw, as
      `sample_geometry` with the same rng draws).

  A frame constrains the draw only when its full (uncropped) map has an
  instance, so frames without instances (and unannotated references, all
  void) take the first draw. Each redraw is a new scale, flip and crop. When
  `crop_retries` redraws all fail, the result is `fit_geometry`: the whole
  frame scaled down to fit the crop (flip of the last draw), which keeps
  every instance that survives the downscale and the static output shape;
  a plain last draw would train on a crop without instances, which the
  release never does. (At Cityscapes' 1024x2048 and 800x1600 crops it is
  the whole frame at scale 0.78, next to the smallest training scale 0.8.)

  The release differs: its RandomCrop returns None when no box is left
  (target, and reference when annotated) and its dataset then loads
  another random image, without bound (the whole pipeline again: reference
  offset, scale, flip, crop; images without boxes are never trained). Here
  the pair is fixed by the epoch's order, so the same frames are redrawn,
  at most `crop_retries` times.

  Returns:
    (geometry, the `panoptics` warped by it, int32 [H', W'] each with -1 in
    the padding; H', W' = crop_size rounded up to size_divisor).
  """
  size = panoptics[0].shape[:2]

  def draw(geo=None):
    geo = geo or sample_geometry(rng, size, scale_range, crop_size,
                                 flip_probability, size_divisor)
    warped = [warp(p, geo, nearest=True, fill=-1) for p in panoptics]
    return geo, warped, {i for i, p in enumerate(warped)
                         if not has_instance(p)}

  geo, warped, missing = draw()
  if not missing or crop_retries <= 0:
    return geo, warped
  needed = {i for i, p in enumerate(panoptics) if has_instance(p)}
  for _ in range(crop_retries):
    if not missing & needed:
      return geo, warped
    geo, warped, missing = draw()
  if not missing & needed:
    return geo, warped
  geo, warped, _ = draw(fit_geometry(size, crop_size, geo.flip,
                                     size_divisor))
  return geo, warped


def resize(array: np.ndarray, size: Tuple[int, int],
           nearest: bool) -> np.ndarray:
  """Resizes an [H, W] or [H, W, C] array to `size` = (h, w): nearest
  neighbour (any dtype, pixel centres) or bilinear (uint8 / float32)."""
  h, w = array.shape[:2]
  sh, sw = size
  if (h, w) == (sh, sw):
    return array
  if nearest:
    rows = np.minimum(((np.arange(sh) + 0.5) * h / sh).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(sw) + 0.5) * w / sw).astype(np.int64), w - 1)
    return array[rows][:, cols]
  out = cv2.resize(array, (sw, sh), interpolation=cv2.INTER_LINEAR)
  return out.reshape((sh, sw) + array.shape[2:])


def warp(array: np.ndarray, geo: Geometry, nearest: bool,
         fill: float) -> np.ndarray:
  """Applies `geo` to an [H, W] or [H, W, C] array; pads with `fill`.

  Scale, flip and crop are one resampling at the output size: nearest
  neighbour at pixel centres (any dtype, exactly `resize` then flip and
  crop), or bilinear (uint8 / float32, up to 4 channels).
  """
  h, w = array.shape[:2]
  sh, sw = geo.scaled
  y0, x0, ch, cw = geo.crop
  out = np.full(geo.out + array.shape[2:], fill, array.dtype)
  if nearest:
    ys = np.arange(y0, y0 + ch)
    xs = np.arange(x0, x0 + cw)
    if geo.flip:
      xs = sw - 1 - xs
    rows = np.minimum(((ys + 0.5) * h / sh).astype(np.int64), h - 1)
    cols = np.minimum(((xs + 0.5) * w / sw).astype(np.int64), w - 1)
    out[:ch, :cw] = array[rows[:, None], cols[None, :]]
    return out
  ax, ay = w / sw, h / sh
  if geo.flip:
    ax, bx = -ax, (sw - x0 - 0.5) * w / sw - 0.5
  else:
    bx = (x0 + 0.5) * w / sw - 0.5
  by = (y0 + 0.5) * ay - 0.5
  matrix = np.array([[ax, 0.0, bx], [0.0, ay, by]], np.float64)
  crop = cv2.warpAffine(array, matrix, (cw, ch),
                        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                        borderMode=cv2.BORDER_REPLICATE)
  out[:ch, :cw] = crop.reshape((ch, cw) + array.shape[2:])
  return out


def warp_flow(flow: np.ndarray, geo: Geometry, size: Tuple[int, int]):
  """Applies `geo` to a flow field float32 [H, W, 2] (dx, dy) of an H x W
  frame: resamples it (nearest, keeping motion boundaries sharp), scales the
  vectors, and mirrors dx on a flip. Padding is 0."""
  h, w = size
  sh, sw = geo.scaled
  flow = flow * np.array([sw / w, sh / h], np.float32)
  flow = warp(flow.astype(np.float32), geo, nearest=True, fill=0.0)
  if geo.flip:
    flow[..., 0] = -flow[..., 0]
  return flow


def ground_truth_flow(target: Dict, reference: Dict) -> np.ndarray:
  """Exact flow (dx, dy) float32 [H, W, 2] from target to reference pixels,
  from the synthetic data's 'flow_layer' / 'flow_offsets'."""
  for key in ("flow_layer", "flow_offsets"):
    if key not in target or key not in reference:
      raise ValueError(f"Ground-truth flow needs {key!r}, missing from frame "
                       f"{_name(target)} or {_name(reference)} (only "
                       "vps_synthetic has it)")
  layer = np.asarray(target["flow_layer"])
  delta = (np.asarray(reference["flow_offsets"]) -
           np.asarray(target["flow_offsets"]))[layer]
  return np.stack([delta[..., 1], delta[..., 0]], -1).astype(np.float32)


_THREAD_STATE = threading.local()  # One DIS object per thread (not shareable).


def dis_flow(target: np.ndarray, reference: np.ndarray) -> np.ndarray:
  """OpenCV DIS flow (medium preset) from target to reference RGB uint8
  frames: float32 [H, W, 2] (dx, dy), target(x) ~ reference(x + flow(x))."""
  dis = getattr(_THREAD_STATE, "dis", None)
  if dis is None:
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    _THREAD_STATE.dis = dis
  a = cv2.cvtColor(np.ascontiguousarray(target), cv2.COLOR_RGB2GRAY)
  b = cv2.cvtColor(np.ascontiguousarray(reference), cv2.COLOR_RGB2GRAY)
  return dis.calc(a, b, None).astype(np.float32)


def _name(frame):
  name = frame.get("image_id", "?")
  return name.decode() if isinstance(name, bytes) else str(name)


def instances(semantic: np.ndarray, track: np.ndarray, max_instances: int,
              frame_name: str, with_masks: bool):
  """Instances of a (transformed) frame, sorted by track id, padded.

  Returns a dict: 'boxes' float32 [N, 4] (x1, y1, x2, y2, pixel edges),
  'classes' int32 [N] (train ids), 'track_ids' int32 [N], 'valid' bool [N],
  and if `with_masks` 'masks' uint8 [N, H, W]; N = max_instances.
  """
  ids = np.unique(track[track > 0])
  if len(ids) > max_instances:
    raise ValueError(f"Frame {frame_name} has {len(ids)} instances, more "
                     f"than max_instances={max_instances}")
  n = max_instances
  out = {"boxes": np.zeros((n, 4), np.float32),
         "classes": np.zeros((n,), np.int32),
         "track_ids": np.zeros((n,), np.int32),
         "valid": np.zeros((n,), bool)}
  if with_masks:
    out["masks"] = np.zeros((n,) + track.shape, np.uint8)
  for i, tid in enumerate(ids):
    mask = track == tid
    ys, xs = np.nonzero(mask)
    classes = np.unique(semantic[mask])
    if len(classes) != 1:
      raise ValueError(f"Frame {frame_name}: instance {tid} has several "
                       f"classes {classes.tolist()}")
    out["boxes"][i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    out["classes"][i] = classes[0]
    out["track_ids"][i] = tid
    out["valid"][i] = True
    if with_masks:
      out["masks"][i] = mask
  return out


def reference_index(target_ids: np.ndarray, target_valid: np.ndarray,
                    ref_ids: np.ndarray, ref_valid: np.ndarray) -> np.ndarray:
  """int32 [N]: 1 + position of each target instance in the reference
  instances, 0 when not in the reference (or padding)."""
  out = np.zeros(target_ids.shape, np.int32)
  lookup = {int(t): i + 1 for i, (t, v) in enumerate(zip(ref_ids, ref_valid))
            if v}
  for i, (t, v) in enumerate(zip(target_ids, target_valid)):
    if v:
      out[i] = lookup.get(int(t), 0)
  return out


def quarter(semantic: np.ndarray) -> np.ndarray:
  """1/4-scale copy of an [H, W] map (H, W multiples of 4): pixel (4i, 4j),
  as the release's `mmcv.imrescale(..., 0.25, interpolation='nearest')`
  (OpenCV's nearest takes the source pixel floor(4i))."""
  h, w = semantic.shape
  if h % 4 or w % 4:
    raise ValueError(f"quarter needs H, W multiples of 4, got {h}x{w}")
  return np.ascontiguousarray(semantic[::4, ::4]).astype(np.int32)


def train_example(target: Dict, reference: Dict, rng: np.random.Generator,
                  crop_size: Tuple[int, int],
                  scale_range: Tuple[float, float] = (0.8, 1.5),
                  flip_probability: float = 0.5, max_instances: int = 50,
                  flow: str = "none", size_divisor: int = 32,
                  geometry: Optional[Geometry] = None,
                  crop_retries: int = 10) -> Dict[str, np.ndarray]:
  """A training pair with one joint random scale/flip/crop.

  The geometry is `geometry` if given, else drawn from `rng` by
  `sample_geometry_with_instances` on the target's and the reference's
  panoptic maps: redrawn up to `crop_retries` times while the crop keeps
  no instance of a frame that has some, then the whole frame scaled to fit
  (0: one draw, as `sample_geometry`).

  Returns (H, W = crop size rounded up to `size_divisor`, N = max_instances):
    'image', 'ref_image': float32 [H, W, 3], normalised, 0 in the padding;
    'pad_mask': bool [H, W], True on image pixels;
    'gt_boxes' float32 [N, 4], 'gt_classes' int32 [N], 'gt_track_ids'
    int32 [N], 'gt_masks' uint8 [N, H, W], 'gt_valid' bool [N],
    'gt_ref_index' int32 [N] (1-based index into the ref_* arrays, 0 = new);
    'ref_boxes', 'ref_classes', 'ref_track_ids', 'ref_valid' likewise;
    'semantic' int32 [H, W] (255 = ignore, also the padding) and
    'semantic_quarter' int32 [H / 4, W / 4];
    'flow' float32 [H, W, 2] (dx, dy) target -> reference unless flow='none';
    'video_id', 'frame_index', 'ref_frame_index' int32 [].
  """
  if flow not in FLOW_MODES:
    raise ValueError(f"flow must be one of {FLOW_MODES}, got {flow!r}")
  image, ref_image = np.asarray(target["image"]), np.asarray(
      reference["image"])
  size = image.shape[:2]
  if ref_image.shape[:2] != size:
    raise ValueError(f"Frames {_name(target)} and {_name(reference)} differ "
                     f"in size: {size} vs {ref_image.shape[:2]}")
  panoptics = [np.asarray(target["panoptic"]),
               np.asarray(reference["panoptic"])]
  if geometry is None:
    geo, warped = sample_geometry_with_instances(
        rng, panoptics, scale_range, crop_size, flip_probability,
        size_divisor, crop_retries)
  else:
    geo = geometry
    warped = [warp(p, geo, nearest=True, fill=-1) for p in panoptics]
  sem, track = decode_panoptic(warped[0])
  ref_sem, ref_track = decode_panoptic(warped[1])
  img = warp(image, geo, nearest=False, fill=0)
  ref_img = warp(ref_image, geo, nearest=False, fill=0)
  pad_mask = np.zeros(geo.out, bool)
  pad_mask[:geo.crop[2], :geo.crop[3]] = True
  gt = instances(sem, track, max_instances, _name(target), with_masks=True)
  ref = instances(ref_sem, ref_track, max_instances, _name(reference),
                  with_masks=False)
  image_out, ref_out = normalize(img), normalize(ref_img)
  image_out[~pad_mask] = 0.0
  ref_out[~pad_mask] = 0.0
  out = {
      "image": image_out, "ref_image": ref_out,
      "pad_mask": pad_mask,
      "semantic": sem, "semantic_quarter": quarter(sem),
      "gt_ref_index": reference_index(gt["track_ids"], gt["valid"],
                                      ref["track_ids"], ref["valid"]),
      "video_id": np.int32(target["video_id"]),
      "frame_index": np.int32(target["frame_index"]),
      "ref_frame_index": np.int32(reference["frame_index"]),
  }
  for key, value in gt.items():
    out["gt_" + key] = value
  for key, value in ref.items():
    out["ref_" + key] = value
  if flow == "ground_truth":
    out["flow"] = warp_flow(ground_truth_flow(target, reference), geo, size)
  elif flow == "dis":
    field = np.zeros(geo.out + (2,), np.float32)
    ch, cw = geo.crop[2:]
    field[:ch, :cw] = dis_flow(img[:ch, :cw], ref_img[:ch, :cw])
    out["flow"] = field
  return out


def eval_example(frame: Dict, previous: Dict, flow: str = "none",
                 size_divisor: int = 32) -> Dict[str, np.ndarray]:
  """One evaluation frame with the previous frame as reference, no resizing.

  Returns 'image', 'ref_image' float32 [H', W', 3] (padded to multiples of
  `size_divisor`), 'pad_mask' bool [H', W'], 'orig_size' int32 [2],
  'annotated' bool, 'video_id', 'frame_index', 'ref_frame_index' int32, and
  'flow' float32 [H', W', 2] unless flow='none'.
  """
  if flow not in FLOW_MODES:
    raise ValueError(f"flow must be one of {FLOW_MODES}, got {flow!r}")
  image, prev = np.asarray(frame["image"]), np.asarray(previous["image"])
  size = image.shape[:2]
  geo = identity_geometry(size, size_divisor)
  pad_mask = warp(np.ones(size, np.uint8), geo, nearest=True, fill=0) > 0
  out = {
      "image": warp(normalize(image), geo, nearest=False, fill=0.0),
      "ref_image": warp(normalize(prev), geo, nearest=False, fill=0.0),
      "pad_mask": pad_mask,
      "orig_size": np.array(size, np.int32),
      "annotated": np.bool_(frame["annotated"]),
      "video_id": np.int32(frame["video_id"]),
      "frame_index": np.int32(frame["frame_index"]),
      "ref_frame_index": np.int32(previous["frame_index"]),
  }
  if flow == "ground_truth":
    out["flow"] = warp(ground_truth_flow(frame, previous), geo, nearest=True,
                       fill=0.0)
  elif flow == "dis":
    out["flow"] = warp(dis_flow(image, prev), geo, nearest=True, fill=0.0)
  return out
