"""Colourising panoptic maps and writing videos as GIFs.

A segment's colour depends only on (train id, instance id): stuff takes its
class colour from the metadata, an instance a colour derived
deterministically from its class and track id, so an object keeps its
colour over a video (track ids are per-video).
"""
from typing import Iterable, Optional

import numpy as np
from PIL import Image

from data_pipeline import metadata

LABEL_DIVISOR = 1000
VOID_COLOR = (0, 0, 0)


def instance_color(train_id: int, instance_id: int) -> np.ndarray:
  """uint8 [3], a colour for an instance, fixed by (class, id)."""
  rng = np.random.default_rng([int(train_id), int(instance_id)])
  return rng.integers(40, 256, 3).astype(np.uint8)


def colorize(panoptic: np.ndarray, meta: metadata.DatasetMeta,
             image: Optional[np.ndarray] = None,
             alpha: float = 0.6) -> np.ndarray:
  """Colours an int [H, W] panoptic map (train_id * 1000 + instance id,
  -1 void) as uint8 [H, W, 3], optionally blended over an RGB image."""
  panoptic = np.asarray(panoptic)
  out = np.zeros(panoptic.shape + (3,), np.uint8)
  out[:] = VOID_COLOR
  for value in np.unique(panoptic):
    if value < 0:
      continue
    train, inst = divmod(int(value), LABEL_DIVISOR)
    if train >= meta.num_classes:
      raise ValueError(f"Panoptic value {value} has train id {train}, "
                       f"{meta.name} has {meta.num_classes} classes")
    color = (instance_color(train, inst) if inst else
             np.array(meta.categories[train].color, np.uint8))
    out[panoptic == value] = color
  if image is not None:
    blended = alpha * out + (1 - alpha) * np.asarray(image, np.float32)
    out = np.clip(np.round(blended), 0, 255).astype(np.uint8)
  return out


def write_gif(frames: Iterable[np.ndarray], path: str,
              fps: float = 5.0) -> None:
  """Writes uint8 [H, W, 3] frames as a looping GIF."""
  images = [Image.fromarray(np.asarray(f, np.uint8)) for f in frames]
  if not images:
    raise ValueError(f"No frames to write to {path}")
  images[0].save(path, save_all=True, append_images=images[1:],
                 duration=int(round(1000 / fps)), loop=0)
