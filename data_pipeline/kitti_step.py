"""KITTI-STEP in the folder layout of its release (and deeplab2's docs).

  ROOT/images/{train,val}/<sequence>/<frame>.png         the frames
  ROOT/panoptic_maps/{train,val}/<sequence>/<frame>.png  the labels

Sequences are 4-digit folders (0000, 0001, ...), frames 6-digit PNGs
(000000.png, ...). A panoptic map is an RGB PNG: R is the semantic train id
(the 19 Cityscapes evaluation classes, 255 void), G * 256 + B the instance
id, which names the same object in every frame of its sequence; 0 is stuff,
or a crowd of person or car pixels without an instance. Only person (11)
and car (13) carry instances (`metadata.KITTI_STEP`); an instance id on
another class is an error, as is one of 1000 or more (the reader's panoptic
encoding keeps 999 per class).

Every frame of train and val is annotated: video_id is the sequence number,
frame_index the frame number + 1, and a frame's `image_id` is
`<sequence>/<frame>`, which the KITTI-STEP prediction writer turns back into
`<sequence>/<frame>.png` in the benchmark's encoding.
"""
import os
import re
from typing import Dict, List

import numpy as np
from PIL import Image

from data_pipeline import metadata
from data_pipeline import vps_reader

META = metadata.KITTI_STEP
SPLITS = ("train", "val")
_SEQUENCE = re.compile(r"^\d{4}$")
_FRAME = re.compile(r"^(\d{6})\.png$")


def layout(split: str) -> vps_reader.Layout:
  """The KITTI-STEP folders of `split` ('train' or 'val')."""
  if split not in SPLITS:
    raise ValueError(f"KITTI-STEP split must be one of {SPLITS}, got "
                     f"{split!r}")
  return vps_reader.Layout(split=split, images_dir=f"images/{split}",
                           panoptic_dir=f"panoptic_maps/{split}")


def decode(rgb: np.ndarray):
  """(semantic, instance) int32 [H, W] of a KITTI-STEP panoptic PNG."""
  rgb = rgb.astype(np.int32)
  return rgb[..., 0], rgb[..., 1] * 256 + rgb[..., 2]


def _listing(folder: str, what: str) -> Dict[str, List[str]]:
  """{sequence: sorted frame file names} of `folder`, names checked."""
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"Missing {what} folder: {folder}")
  out = {}
  for seq in sorted(os.listdir(folder)):
    path = os.path.join(folder, seq)
    if not os.path.isdir(path):
      continue
    if not _SEQUENCE.match(seq):
      raise ValueError(f"{path}: sequence folders are named by 4 digits "
                       "(0000, 0001, ...)")
    names = sorted(os.listdir(path))
    bad = [n for n in names if not _FRAME.match(n)]
    if bad:
      raise ValueError(f"{os.path.join(path, bad[0])}: frames are 6-digit "
                       "PNGs (000000.png, ...)")
    out[seq] = names
  if not out:
    raise ValueError(f"{folder}: no sequence folders (expected "
                     "<sequence>/<frame>.png)")
  return out


class KittiStepReader(vps_reader.VpsReader):
  """Lists a KITTI-STEP split and reads its panoptic maps (the
  `VpsReader` interface: `videos`, `read_image`, `annotation`)."""

  def __init__(self, root: str, split: str):
    if not os.path.isdir(root):
      raise FileNotFoundError(f"Dataset root is not a directory: {root}")
    self.root, self.layout, self.meta = root, layout(split), META
    self.subset = None
    self._train_id = META.id_to_train_id
    self._frames = {}
    images = _listing(self._path(self.layout.images_dir), "image")
    labels = _listing(self._path(self.layout.panoptic_dir), "panoptic map")
    for seq in sorted(set(images) | set(labels)):
      have, want = set(images.get(seq, ())), set(labels.get(seq, ()))
      for names, folder, what in ((want - have, self.layout.images_dir,
                                   "image"),
                                  (have - want, self.layout.panoptic_dir,
                                   "panoptic map")):
        if names:
          raise FileNotFoundError(
              f"Missing {what}: "
              f"{os.path.join(self._path(folder), seq, min(names))} (the "
              f"{'panoptic map' if what == 'image' else 'image'} exists)")
      for name in images[seq]:
        path = os.path.join(self._path(self.layout.images_dir), seq, name)
        try:
          with Image.open(path) as im:
            width, height = im.size
        except Exception as e:  # PIL raises many types for bad files.
          raise ValueError(f"{path}: unreadable image: {e}") from e
        iid = f"{seq}/{name[:-4]}"
        self._frames[iid] = vps_reader.Frame(
            iid, int(seq), int(name[:-4]) + 1, path, True, height, width)

  def label_path(self, frame: vps_reader.Frame) -> str:
    return os.path.join(self._path(self.layout.panoptic_dir),
                        frame.image_id + ".png")

  def track_ids(self, video_id: int) -> Dict[int, int]:
    """KITTI-STEP's instance ids are the track ids (identity)."""
    raise ValueError("KITTI-STEP's instance ids are the track ids; there is "
                     "no mapping to list")

  def annotation(self, frame: vps_reader.Frame) -> vps_reader.Annotation:
    path = self.label_path(frame)
    rgb = vps_reader.read_png(path, frame, (3,),
                              "an RGB KITTI-STEP panoptic map")
    semantic, instance = decode(rgb)
    void = semantic == metadata.IGNORE_LABEL
    bad = ~void & (semantic >= META.num_classes)
    if bad.any():
      raise ValueError(f"{path}: semantic id {int(semantic[bad][0])} (R) is "
                       f"neither a train id below {META.num_classes} nor "
                       "255 (void)")
    is_thing = np.isin(semantic, META.thing_ids)
    wrong = ~void & ~is_thing & (instance > 0)
    if wrong.any():
      raise ValueError(f"{path}: class {int(semantic[wrong][0])} has instance "
                       f"id {int(instance[wrong][0])}; only person (11) and "
                       "car (13) carry instances")
    big = ~void & (instance >= vps_reader.LABEL_DIVISOR)
    if big.any():
      raise ValueError(f"{path}: instance id {int(instance[big][0])} is not "
                       f"below {vps_reader.LABEL_DIVISOR}")
    panoptic = np.where(void, vps_reader.VOID,
                        semantic * vps_reader.LABEL_DIVISOR + instance)
    panoptic = panoptic.astype(np.int32)
    return vps_reader.Annotation(panoptic, self._segment_table(panoptic))

  def evaluation_ground_truth(self, workdir: str):
    """(None, the panoptic-map folder): STQ reads the PNGs alone."""
    del workdir
    return None, self._path(self.layout.panoptic_dir)

  def write_panoptic_json(self, path: str) -> str:
    raise ValueError("KITTI-STEP has no panoptic JSON")


def reader(root: str, split: str) -> KittiStepReader:
  """A validated reader of `split` under the dataset folder `root`."""
  return KittiStepReader(root, split)
