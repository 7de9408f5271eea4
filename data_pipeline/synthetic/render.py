"""The renderer of `vps_synthetic`: one 30-frame snippet per call.

Driving-like snippets rendered from a few rigid 2-D layers, so that the
generator knows every pixel's motion exactly:

* stuff: sky, building, vegetation (a skyline), sidewalk and road, with
  parallax between far and near layers under a panning, slightly bobbing
  camera (ego-motion); a static ego-vehicle hood at the bottom is void;
* things: person, car, truck. Every snippet has pairs of instances of the same
  class that look alike (same shape and colour, a small per-instance tint),
  walk/drive towards each other on nearby rows and cross, the nearer one
  occluding the other; other instances enter or leave the frame, and parked
  cars move with the road;
* per-frame nuisances on the RGB frame only (labels unchanged): Gaussian noise,
  brightness flicker, occasional blur, and short (1-2 frame) occluding blobs,
  which a reference frame can compensate.

Everything is deterministic from `(seed, split, video index)`. Panoptic
segment ids are `(category_id + 1) * 1000 + k` with k = 0 for stuff and
k = 1, 2, ... for the thing instances of a video, the same id in every frame
of the video; 0 is void.
"""
import dataclasses
from typing import Dict, List, Tuple

import cv2
import numpy as np

from data_pipeline import metadata

META = metadata.SYNTHETIC
ROAD, SIDEWALK, BUILDING, VEGETATION, SKY, PERSON, CAR, TRUCK = range(8)
THING_CLASSES = (PERSON, CAR, TRUCK)
IGNORE = metadata.IGNORE_LABEL
SPLITS = ("train", "val")
_SPLIT_CODE = {"train": 0, "val": 1}


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """Sizes and rates of the generator (all geometry scales with the size)."""
  height: int = 128
  width: int = 256
  num_frames: int = 30
  annotate_every: int = 5  # Frames 5, 10, ..., 30 are annotated.
  min_crossing_pairs: int = 1
  max_crossing_pairs: int = 2
  min_single_tracks: int = 2
  max_single_tracks: int = 4
  blur_probability: float = 0.2
  occluders_per_video: float = 2.0  # Poisson mean.

  @property
  def annotated_frames(self) -> Tuple[int, ...]:
    return tuple(range(self.annotate_every, self.num_frames + 1,
                       self.annotate_every))


@dataclasses.dataclass
class _Layer:
  """A rigid layer: a canvas pasted at an integer offset in every frame."""
  mask: np.ndarray  # bool [h, w]: where the layer is opaque.
  rgb: np.ndarray  # float32 [h, w, 3] in [0, 255].
  semantic: np.ndarray  # uint8 [h, w]: train id (255 void).
  segment: np.ndarray  # int32 [h, w]: panoptic segment id (0 void).
  offsets: np.ndarray  # int32 [T, 2]: frame (y, x) of canvas pixel (0, 0).


@dataclasses.dataclass
class SyntheticVideo:
  """One rendered snippet; frame t of the arrays is frame index t + 1.

  Attributes:
    frames: uint8 [T, H, W, 3], RGB with nuisances.
    clean_frames: uint8 [T, H, W, 3], RGB without nuisances.
    semantic: uint8 [T, H, W], train ids, 255 = void.
    segments: int32 [T, H, W], panoptic segment ids, 0 = void.
    layer: uint16 [T, H, W], index of the rigid layer seen at each pixel.
    offsets: int32 [L, T, 2], (dy, dx) position of each layer per frame.
    categories: segment id -> category id, for every segment of the video.
  """
  frames: np.ndarray
  clean_frames: np.ndarray
  semantic: np.ndarray
  segments: np.ndarray
  layer: np.ndarray
  offsets: np.ndarray
  categories: Dict[int, int]


def segment_id(category_id: int, instance: int) -> int:
  """Panoptic segment id of a stuff (instance 0) or thing segment."""
  return (category_id + 1) * 1000 + instance


# ----------------------------------------------------------------------------
# Textures and sprites.


def _smooth_noise(rng, h, w, cell):
  """float32 [h, w] low-frequency noise with unit-ish amplitude."""
  cell = max(1, int(cell))
  small = rng.standard_normal((h // cell + 3, w // cell + 3)).astype(np.float32)
  big = cv2.resize(small, ((w // cell + 3) * cell, (h // cell + 3) * cell),
                   interpolation=cv2.INTER_CUBIC)
  return big[:h, :w]


def _jitter(rng, color, amount):
  c = np.asarray(color, np.float32) + rng.uniform(-amount, amount, 3)
  return np.clip(c, 0, 255).astype(np.float32)


def _unit_grid(h, w):
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  return (yy + 0.5) / h, (xx + 0.5) / w


def _sprite_person(h, w, shirt, dark):
  """Returns (mask bool [h, w], rgb float32 [h, w, 3])."""
  y, x = _unit_grid(h, w)
  head = ((y - 0.1) / 0.1) ** 2 + ((x - 0.5) / 0.3) ** 2 <= 1.0
  torso = (y >= 0.18) & (y < 0.6) & (np.abs(x - 0.5) < 0.4)
  legs = (y >= 0.6) & (np.abs(np.abs(x - 0.5) - 0.2) < 0.14)
  rgb = np.zeros((h, w, 3), np.float32)
  rgb[head] = (224, 180, 150)
  rgb[torso] = shirt
  rgb[legs] = dark
  return head | torso | legs, rgb


def _sprite_car(h, w, body, dark):
  y, x = _unit_grid(h, w)
  lower = (y >= 0.4) & (y < 0.85)
  cabin = (y >= 0.05) & (y < 0.45) & (np.abs(x - 0.5) < 0.3 - 0.25 * (0.45 - y))
  window = cabin & (y >= 0.12) & (np.abs(x - 0.5) < 0.24 - 0.25 * (0.45 - y))
  wheels = np.zeros_like(lower)
  for cx in (0.22, 0.78):
    wheels |= ((y - 0.82) / 0.18) ** 2 + ((x - cx) / (0.18 * h / w)) ** 2 <= 1
  rgb = np.zeros((h, w, 3), np.float32)
  rgb[lower | cabin] = body
  rgb[window] = (150, 180, 200)
  rgb[wheels] = dark
  return lower | cabin | wheels, rgb


def _sprite_truck(h, w, body, dark):
  y, x = _unit_grid(h, w)
  box = (y < 0.82) & (x < 0.7)
  cab = (y >= 0.3) & (y < 0.82) & (x >= 0.72)
  window = cab & (y < 0.5) & (x >= 0.78) & (x < 0.95)
  wheels = np.zeros_like(box)
  for cx in (0.15, 0.55, 0.85):
    wheels |= ((y - 0.84) / 0.16) ** 2 + ((x - cx) / (0.16 * h / w)) ** 2 <= 1
  rgb = np.zeros((h, w, 3), np.float32)
  rgb[box] = body
  rgb[cab] = body * 0.8
  rgb[window] = (150, 180, 200)
  rgb[wheels] = dark
  return box | cab | wheels, rgb


# Sprite height as a fraction of the distance below the horizon, and aspect.
_SPRITES = {
    PERSON: (0.75, 0.38, _sprite_person),
    CAR: (0.45, 2.1, _sprite_car),
    TRUCK: (0.8, 1.9, _sprite_truck),
}


# ----------------------------------------------------------------------------
# Scene construction.


def _background_offsets(cfg, ego, speed, bob):
  """int32 [T, 2] offsets of a background layer and its canvas (h, w)."""
  t = np.arange(cfg.num_frames, dtype=np.float64)
  ox = -np.round(ego * speed * t).astype(np.int64)
  ox -= ox.max()
  margin = int(np.abs(bob).max())
  oy = bob - margin
  canvas = (cfg.height + 2 * margin, cfg.width - int(ox.min()))
  return np.stack([oy, ox], -1).astype(np.int32), canvas


def _sky_layer(rng, cfg, ego, bob):
  offsets, (h, w) = _background_offsets(cfg, ego, 0.1, bob)
  y = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
  top = _jitter(rng, (90, 140, 200), 15)
  bottom = _jitter(rng, (180, 205, 230), 15)
  rgb = top * (1 - y) + bottom * y + np.zeros((h, w, 3), np.float32)
  clouds = np.clip(_smooth_noise(rng, h, w, cfg.width / 8), 0, None)
  rgb += 40 * clouds[..., None]
  return _Layer(np.ones((h, w), bool), rgb,
                np.full((h, w), SKY, np.uint8),
                np.full((h, w), segment_id(SKY, 0), np.int32), offsets)


def _far_layer(rng, cfg, ego, bob, horizon):
  """Skyline of buildings and trees above the horizon row (canvas rows)."""
  offsets, (h, w) = _background_offsets(cfg, ego, 0.5, bob)
  margin = int(np.abs(bob).max())
  hz = horizon + margin  # Horizon row in canvas coordinates.
  semantic = np.full((h, w), IGNORE, np.uint8)
  rgb = np.zeros((h, w, 3), np.float32)
  yy, xx = np.mgrid[0:h, 0:w]
  x = 0
  wall = _jitter(rng, (120, 110, 105), 25)
  while x < w:
    bw = int(rng.uniform(0.08, 0.2) * cfg.width) + 2
    if rng.uniform() < 0.3:  # A tree: round crown on a short trunk.
      top = hz - int(rng.uniform(0.12, 0.3) * cfg.height)
      cx, r = x + bw / 2, bw / 2
      crown = ((yy - (top + r)) / r) ** 2 + ((xx - cx) / r) ** 2 <= 1
      trunk = (np.abs(xx - cx) < max(1, bw / 10)) & (yy >= top + r) & (yy < hz)
      region = crown | trunk
      semantic[region & (semantic == IGNORE)] = VEGETATION
    else:  # A building with a grid of windows.
      top = hz - int(rng.uniform(0.15, 0.4) * cfg.height)
      region = (yy >= top) & (yy < hz) & (xx >= x) & (xx < x + bw)
      semantic[region] = BUILDING
      rgb[region] = _jitter(rng, wall, 20)
    x += bw
  veg = semantic == VEGETATION
  rgb[veg] = _jitter(rng, (70, 120, 40), 15)
  rgb += 18 * _smooth_noise(rng, h, w, cfg.width / 32)[..., None]
  step = max(3, cfg.width // 40)
  windows = ((yy % step) < step // 2) & ((xx % step) < step // 2)
  rgb[(semantic == BUILDING) & windows] *= 0.6
  mask = semantic != IGNORE
  segment = np.where(mask, (semantic.astype(np.int32) + 1) * 1000, 0)
  return _Layer(mask, np.clip(rgb, 0, 255), semantic, segment.astype(np.int32),
                offsets)


def _ground_layer(rng, cfg, ego, bob, horizon):
  """Sidewalk band below the horizon, road below it, lane markings."""
  offsets, (h, w) = _background_offsets(cfg, ego, 1.0, bob)
  margin = int(np.abs(bob).max())
  hz = horizon + margin
  walk = hz + max(2, int(0.08 * cfg.height))
  yy, xx = np.mgrid[0:h, 0:w]
  semantic = np.full((h, w), IGNORE, np.uint8)
  semantic[(yy >= hz) & (yy < walk)] = SIDEWALK
  semantic[yy >= walk] = ROAD
  rgb = np.zeros((h, w, 3), np.float32)
  rgb[semantic == SIDEWALK] = _jitter(rng, (175, 165, 160), 15)
  rgb[semantic == ROAD] = _jitter(rng, (85, 85, 90), 10)
  rgb += 14 * _smooth_noise(rng, h, w, cfg.width / 48)[..., None]
  lane_y = walk + (h - margin - walk) * 0.45
  dash = max(4, cfg.width // 12)
  lane = ((np.abs(yy - lane_y) < max(1, cfg.height / 80)) &
          ((xx % (2 * dash)) < dash))
  rgb[lane] = (230, 230, 220)
  tiles = max(3, cfg.width // 30)
  rgb[(semantic == SIDEWALK) & ((xx % tiles) == 0)] *= 0.8
  mask = semantic != IGNORE
  segment = np.where(mask, (semantic.astype(np.int32) + 1) * 1000, 0)
  return _Layer(mask, np.clip(rgb, 0, 255), semantic, segment.astype(np.int32),
                offsets)


def _hood_layer(rng, cfg):
  """The static ego-vehicle hood: void, never moves."""
  h, w = cfg.height, cfg.width
  y, x = _unit_grid(h, w)
  mask = y > 0.94 + 0.04 * ((x - 0.5) * 2) ** 2
  rgb = np.zeros((h, w, 3), np.float32)
  rgb[mask] = _jitter(rng, (40, 40, 45), 10)
  return _Layer(mask, rgb, np.full((h, w), IGNORE, np.uint8),
                np.zeros((h, w), np.int32),
                np.zeros((cfg.num_frames, 2), np.int32))


def _sprite_size(category, y_bottom, horizon):
  """(height, width) in pixels of a thing standing on row `y_bottom`."""
  rel_h, aspect, _ = _SPRITES[category]
  sh = max(4, int(round(rel_h * (y_bottom - horizon))))
  return sh, max(3, int(round(sh * aspect)))


@dataclasses.dataclass
class _Track:
  category: int
  y_bottom: float
  x_center: np.ndarray  # float64 [T]
  tint: np.ndarray  # float32 [3]


def _plan_tracks(rng, cfg, horizon, ground_dx) -> List[_Track]:
  """Crossing pairs, entering/leaving instances and parked cars."""
  t = np.arange(cfg.num_frames, dtype=np.float64)
  w, h = cfg.width, cfg.height
  y_lo, y_hi = horizon + 0.15 * h, 0.93 * h
  tracks = []

  def tint():
    return rng.uniform(-22, 22, 3).astype(np.float32)

  for _ in range(rng.integers(cfg.min_crossing_pairs,
                              cfg.max_crossing_pairs + 1)):
    cat = THING_CLASSES[rng.integers(len(THING_CLASSES))]
    y_b = rng.uniform(y_lo, y_hi - 0.05 * h)
    t_meet = rng.uniform(0.3, 0.7) * cfg.num_frames
    x_meet = rng.uniform(0.3, 0.7) * w
    for sign, dy in ((1.0, 0.0), (-1.0, rng.uniform(0.015, 0.04) * h + 1)):
      speed = rng.uniform(0.02, 0.045) * w
      tracks.append(_Track(cat, y_b + dy, x_meet + sign * speed * (t - t_meet),
                           tint()))
  for _ in range(rng.integers(cfg.min_single_tracks,
                              cfg.max_single_tracks + 1)):
    kind = rng.integers(3)
    cat = CAR if kind == 2 else THING_CLASSES[rng.integers(len(THING_CLASSES))]
    y_b = rng.uniform(y_lo, y_hi)
    sign = 1.0 if rng.uniform() < 0.5 else -1.0
    speed = rng.uniform(0.03, 0.06) * w
    half = _sprite_size(cat, y_b, horizon)[1] / 2 + 1
    if kind == 0:  # Enters the frame during the snippet (outside before).
      t_in = rng.uniform(0.1, 0.6) * cfg.num_frames
      x_in = -half if sign > 0 else w + half
      x = x_in + sign * speed * (t - t_in)
    elif kind == 1:  # Leaves the frame during the snippet (outside after).
      t_out = rng.uniform(0.4, 0.9) * cfg.num_frames
      x_out = w + half if sign > 0 else -half
      x = x_out + sign * speed * (t - t_out)
    else:  # A parked car: moves with the road.
      x = rng.uniform(0.1, 0.9) * w + ground_dx
    tracks.append(_Track(cat, y_b, x, tint()))
  return tracks


def _instance_layers(rng, cfg, tracks, horizon, bob):
  """One rigid layer per track, ordered back to front, and their ids."""
  base = {c: _jitter(rng, col, 10) for c, col in (
      (PERSON, rng.choice([(200, 40, 40), (40, 90, 200), (230, 200, 40)])),
      (CAR, rng.choice([(200, 30, 30), (30, 60, 180), (220, 220, 220)])),
      (TRUCK, rng.choice([(240, 140, 20), (60, 140, 60)])))}
  dark = (30, 30, 35)
  layers, categories = [], {}
  order = np.argsort([tr.y_bottom for tr in tracks], kind="stable")
  for k, i in enumerate(order, start=1):
    tr = tracks[i]
    draw = _SPRITES[tr.category][2]
    sh, sw = _sprite_size(tr.category, tr.y_bottom, horizon)
    mask, rgb = draw(sh, sw, np.clip(base[tr.category] + tr.tint, 0, 255), dark)
    moving_left = tr.x_center[-1] < tr.x_center[0]
    if moving_left:
      mask, rgb = mask[:, ::-1], rgb[:, ::-1]
    shade = np.linspace(1.08, 0.85, sh, dtype=np.float32)[:, None, None]
    rgb = np.clip(rgb * shade, 0, 255)
    sid = segment_id(tr.category, k)
    categories[sid] = tr.category
    oy = np.round(tr.y_bottom - sh + bob).astype(np.int64)
    ox = np.round(tr.x_center - sw / 2).astype(np.int64)
    layers.append(_Layer(
        mask.copy(), rgb.copy(),
        np.where(mask, tr.category, IGNORE).astype(np.uint8),
        np.where(mask, sid, 0).astype(np.int32),
        np.stack([np.broadcast_to(oy, ox.shape), ox], -1).astype(np.int32)))
  return layers, categories


def _composite(cfg, layers):
  """Paints the layers back to front; returns rgb, semantic, segments, layer."""
  t_n, h, w = cfg.num_frames, cfg.height, cfg.width
  rgb = np.zeros((t_n, h, w, 3), np.float32)
  semantic = np.full((t_n, h, w), IGNORE, np.uint8)
  segments = np.zeros((t_n, h, w), np.int32)
  index = np.zeros((t_n, h, w), np.uint16)
  for li, layer in enumerate(layers):
    lh, lw = layer.mask.shape
    for t in range(t_n):
      oy, ox = (int(v) for v in layer.offsets[t])
      y0, y1 = max(0, oy), min(h, oy + lh)
      x0, x1 = max(0, ox), min(w, ox + lw)
      if y0 >= y1 or x0 >= x1:
        continue
      src = (slice(y0 - oy, y1 - oy), slice(x0 - ox, x1 - ox))
      dst = (t, slice(y0, y1), slice(x0, x1))
      m = layer.mask[src]
      np.copyto(rgb[dst], layer.rgb[src], where=m[..., None])
      np.copyto(semantic[dst], layer.semantic[src], where=m)
      np.copyto(segments[dst], layer.segment[src], where=m)
      np.copyto(index[dst], np.uint16(li), where=m)
  return rgb, semantic, segments, index


def _apply_nuisances(rng, cfg, rgb):
  """Per-frame noise, flicker, blur and short occluders; float32 -> uint8."""
  t_n, h, w = cfg.num_frames, cfg.height, cfg.width
  out = rgb.copy()
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  for _ in range(rng.poisson(cfg.occluders_per_video)):
    start = int(rng.integers(t_n))
    duration = int(rng.integers(1, 3))
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    ry, rx = rng.uniform(0.06, 0.15) * h, rng.uniform(0.04, 0.1) * w
    blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    color = _jitter(rng, (90, 70, 50), 30)
    for t in range(start, min(t_n, start + duration)):
      out[t][blob] = 0.15 * out[t][blob] + 0.85 * color
  sigma_blur = max(1.0, w / 256)
  for t in range(t_n):
    out[t] *= rng.uniform(0.85, 1.15)
    if rng.uniform() < cfg.blur_probability:
      out[t] = cv2.GaussianBlur(out[t], (0, 0), sigma_blur * rng.uniform(1, 2))
    out[t] += rng.uniform(2, 8) * rng.standard_normal((h, w, 3), np.float32)
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def generate_video(cfg: SyntheticConfig, seed: int, split: str,
                   video_index: int) -> SyntheticVideo:
  """Renders one snippet, deterministic from (seed, split, video_index).

  `video_index` is the position in the split: `write_dataset` gives it video
  id `video_index + 1` in train and `num_videos + video_index + 1` in val.
  """
  if split not in _SPLIT_CODE:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  if cfg.height < 32 or cfg.width < 32:
    raise ValueError(f"height and width must be >= 32, got {cfg.height}x"
                     f"{cfg.width}")
  rng = np.random.default_rng([seed, _SPLIT_CODE[split], video_index])
  t = np.arange(cfg.num_frames)
  ego = rng.uniform(0.004, 0.012) * cfg.width * rng.choice([-1.0, 1.0])
  amp = max(1.0, cfg.height / 100) * rng.uniform(0.5, 1.0)
  bob = np.round(amp * np.sin(2 * np.pi * t / rng.uniform(8, 14)
                              + rng.uniform(0, 2 * np.pi))).astype(np.int64)
  horizon = int(rng.uniform(0.4, 0.5) * cfg.height)
  sky = _sky_layer(rng, cfg, ego, bob)
  far = _far_layer(rng, cfg, ego, bob, horizon)
  ground = _ground_layer(rng, cfg, ego, bob, horizon)
  ground_dx = ground.offsets[:, 1] - ground.offsets[0, 1]
  tracks = _plan_tracks(rng, cfg, horizon, ground_dx.astype(np.float64))
  things, categories = _instance_layers(rng, cfg, tracks, horizon, bob)
  hood = _hood_layer(rng, cfg)
  layers = [sky, far, ground] + things + [hood]
  rgb, semantic, segments, index = _composite(cfg, layers)
  for c in (ROAD, SIDEWALK, BUILDING, VEGETATION, SKY):
    categories[segment_id(c, 0)] = c
  frames = _apply_nuisances(rng, cfg, rgb)
  offsets = np.stack([l.offsets for l in layers]).astype(np.int32)
  return SyntheticVideo(frames, np.clip(np.round(rgb), 0, 255).astype(np.uint8),
                        semantic, segments, index, offsets, categories)

