"""Tiny generated folders in the VIPSeg 720P and KITTI-STEP layouts.

Each writer returns the folder and the truth it wrote, so tests compare
what the readers give back with what was written. Frames are 16 x 24.

VIPSeg (`write_vipseg`): videos "12_street" (8 frames) and "3_room" (2),
listed in that order in the JSON (so their video ids are 1 and 2); stuff
wall (0) and floor (13); a car (48) moving right in every frame of video 1;
a person (60) in frames 1-3 and 6-8 of video 1 (absent in 4-5: the same
track reappears); void pixels. Video 2 reuses the car's colour for its own
car (tracks are per video).

KITTI-STEP (`write_kitti_step`): sequences 0000 (3 frames) and 0003 (2)
of each split; sky (10), road (0), a car (13) with instance id 5, a person
(11) with instance id 2 absent from frame 1, a crowd of cars (13, instance
0), a rider region (12: stuff in KITTI-STEP), void (255).
"""
import json
import os
import zlib

import numpy as np
from PIL import Image

H, W = 16, 24
CAR, PERSON, WALL, FLOOR = 48, 60, 0, 13
VIPSEG_VIDEOS = {"12_street": 8, "3_room": 2}
CAR_ID, PERSON_ID, WALL_ID, FLOOR_ID = 0x305070, 0x0b0c0d, 0x787878, 0x467878


def image(key: str) -> np.ndarray:
  """The RGB content of a frame: a deterministic uint8 [H, W, 3]."""
  rng = np.random.default_rng(zlib.crc32(key.encode()))
  return rng.integers(0, 256, (H, W, 3), dtype=np.uint8)


def _save(path, array, **kwargs):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path, **kwargs)


def _encode(ids):
  ids = np.asarray(ids, np.int64)
  return np.stack([ids % 256, (ids // 256) % 256, ids // 65536],
                  -1).astype(np.uint8)


def vipseg_frame(video: str, f: int):
  """(segment ids [H, W], {segment id: category}) of frame f (1-based)."""
  ids = np.full((H, W), WALL_ID, np.int64)
  ids[8:] = FLOOR_ID
  cats = {WALL_ID: WALL, FLOOR_ID: FLOOR}
  ids[6:12, f:f + 5] = CAR_ID
  cats[CAR_ID] = CAR
  if video == "12_street" and f not in (4, 5):
    ids[2:10, 16:20] = PERSON_ID
    cats[PERSON_ID] = PERSON
  ids[0, 0:2] = 0  # void
  return ids, cats


def vipseg_frame_name(f: int) -> str:
  return f"{5 * f - 4:08d}"


def write_vipseg(root: str, categories) -> str:
  """The VIPSeg 720P layout with the val split (and train: the same
  videos). `categories`: the JSON's category list."""
  videos, annotations = [], []
  for video, n in VIPSEG_VIDEOS.items():
    images, anns = [], []
    for f in range(1, n + 1):
      stem = vipseg_frame_name(f)
      ids, cats = vipseg_frame(video, f)
      _save(os.path.join(root, "images", video, stem + ".jpg"),
            image(f"{video}/{stem}"), quality=95)
      _save(os.path.join(root, "panomasksRGB", video, stem + ".png"),
            _encode(ids))
      images.append({"id": stem, "file_name": stem + ".png", "height": H,
                     "width": W})
      anns.append({"image_id": stem, "file_name": stem + ".png",
                   "segments_info": [
                       {"id": int(s), "category_id": int(c), "iscrowd": 0,
                        "area": int(np.sum(ids == s))}
                       for s, c in sorted(cats.items())]})
    videos.append({"video_id": video, "images": images})
    annotations.append({"video_id": video, "annotations": anns})
  for split in ("train", "val"):
    with open(os.path.join(root, f"panoptic_gt_VIPSeg_{split}.json"),
              "w") as f:
      json.dump({"videos": videos, "annotations": annotations,
                 "categories": categories}, f)
  return root


KITTI_SEQUENCES = {"0000": 3, "0003": 2}


def kitti_frame(f: int):
  """(semantic, instance) int [H, W] of frame f (0-based)."""
  sem = np.zeros((H, W), np.int64)
  inst = np.zeros((H, W), np.int64)
  sem[:5] = 10
  sem[6:11, 2 + f:8 + f] = 13
  inst[6:11, 2 + f:8 + f] = 5
  if f != 1:
    sem[3:12, 14:17] = 11
    inst[3:12, 14:17] = 2
  sem[12:16, 18:24] = 13  # a crowd of cars: no instance
  sem[12:16, 0:3] = 12  # rider: stuff in KITTI-STEP
  sem[0, 20:24] = 255
  return sem, inst


def kitti_png(sem, inst) -> np.ndarray:
  return np.stack([sem, inst // 256, inst % 256], -1).astype(np.uint8)


def write_kitti_step(root: str) -> str:
  for split in ("train", "val"):
    for seq, n in KITTI_SEQUENCES.items():
      for f in range(n):
        name = f"{f:06d}.png"
        _save(os.path.join(root, "images", split, seq, name),
              image(f"{split}/{seq}/{f}"))
        _save(os.path.join(root, "panoptic_maps", split, seq, name),
              kitti_png(*kitti_frame(f)))
  return root
