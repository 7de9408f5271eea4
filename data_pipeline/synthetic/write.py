"""Writes `vps_synthetic` to disk in the Cityscapes-VPS layout.

On-disk layout written by `write_dataset(out_dir, ...)` (names
`VVVV_FFFF_synthetic_VVVVVV_FFFFFF`, video id V from 1, frame index F in
1..30, frames 5, 10, ..., 30 annotated):

  OUT/panoptic_gt_{train,val}_city_vps.json   VPQ ground truth (eval.vpq)
  OUT/panoptic_im_{train,val}_city_vps.json   annotated image list
  OUT/instances_{train,val}_city_vps_rle.json COCO instances, RLE + inst_id
  OUT/im_all_info_{train,val}_city_vps.json   all frames (for inference)
  OUT/{train,val}/img/NAME_newImg8bit.png     annotated frames
  OUT/{train,val}/img_all/NAME_newImg8bit.png all 30 frames per video
  OUT/{train,val}/labelmap/NAME_final_mask.png  uint8 train ids, 255 = void
  OUT/{train,val}/panoptic_video/NAME_final_mask.png  RGB segment ids
  OUT/{train,val}/flow/VVVV.npz               exact motion of every pixel

The panoptic PNGs hold the renderer's segment ids (`render.segment_id`) as
id = R + 256 G + 65536 B (`eval.common.ids_to_rgb`). The COCO `inst_id` of an
instance is its segment id. Integer image ids in the COCO files are
`video_id * 10000 + frame_index`. The flow files are described in `flow.py`.

`reader(OUT, split)` reads a written split with the Cityscapes-VPS reader
(`vps_reader`); `tfds_builders.VpsSynthetic` converts it to TFDS shards.
"""
import dataclasses
import json
import os
from typing import List

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util
import tqdm

from data_pipeline import cityscapes_vps
from data_pipeline import vps_reader
from data_pipeline.synthetic import render
from eval import common


def image_name(video_id: int, frame_index: int) -> str:
  """E.g. image_name(1, 5) == '0001_0005_synthetic_000001_000005'."""
  return (f"{video_id:04d}_{frame_index:04d}_synthetic_{video_id:06d}_"
          f"{frame_index:06d}")


def _bbox(mask):
  ys, xs = np.nonzero(mask)
  return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
          int(ys.max() - ys.min() + 1)]


def _save_png(path, array):
  Image.fromarray(array).save(path)


def _write_json(path, obj):
  with open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f)


def write_split(out_dir: str, split: str, cfg: render.SyntheticConfig,
                seed: int, video_ids: List[int], progress: bool = True):
  """Renders and writes the videos of one split (see the module docstring)."""
  root = os.path.join(out_dir, split)
  for sub in ("img", "img_all", "labelmap", "panoptic_video", "flow"):
    os.makedirs(os.path.join(root, sub), exist_ok=True)
  pan_images, pan_annotations = [], []
  coco_images, coco_annotations, all_images = [], [], []
  for index, vid in enumerate(tqdm.tqdm(video_ids, desc=f"{split} videos",
                                        disable=not progress)):
    video = render.generate_video(cfg, seed, split, index)
    np.savez_compressed(os.path.join(root, "flow", f"{vid:04d}.npz"),
                        layer=video.layer, offsets=video.offsets)
    for t in range(cfg.num_frames):
      fid = t + 1
      name = image_name(vid, fid)
      img_file = f"{name}_newImg8bit.png"
      info = {"id": vid * 10000 + fid, "file_name": img_file,
              "width": cfg.width, "height": cfg.height}
      _save_png(os.path.join(root, "img_all", img_file), video.frames[t])
      all_images.append(info)
      if fid not in cfg.annotated_frames:
        continue
      _save_png(os.path.join(root, "img", img_file), video.frames[t])
      mask_file = f"{name}_final_mask.png"
      _save_png(os.path.join(root, "labelmap", mask_file), video.semantic[t])
      _save_png(os.path.join(root, "panoptic_video", mask_file),
                common.ids_to_rgb(video.segments[t]))
      coco_images.append(dict(info))
      pan_images.append({"id": name, "file_name": img_file,
                         "width": cfg.width, "height": cfg.height})
      segs = []
      ids, areas = np.unique(video.segments[t], return_counts=True)
      for sid, area in zip(ids.tolist(), areas.tolist()):
        if sid == 0:
          continue
        m = video.segments[t] == sid
        cat = video.categories[sid]
        segs.append({"id": sid, "category_id": cat, "area": area,
                     "iscrowd": 0, "bbox": _bbox(m)})
        if cat in render.THING_CLASSES:
          rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
          coco_annotations.append({
              "id": len(coco_annotations) + 1,
              "image_id": info["id"], "category_id": cat, "inst_id": sid,
              "iscrowd": 0, "area": float(mask_util.area(rle)),
              "bbox": [float(v) for v in mask_util.toBbox(rle)],
              "segmentation": {"size": [int(v) for v in rle["size"]],
                               "counts": rle["counts"].decode("ascii")}})
      pan_annotations.append({"image_id": name, "file_name": mask_file,
                              "segments_info": segs})
  cats = render.META.coco_categories()
  _write_json(os.path.join(out_dir, f"panoptic_gt_{split}_city_vps.json"),
              {"images": pan_images, "annotations": pan_annotations,
               "categories": cats})
  _write_json(os.path.join(out_dir, f"panoptic_im_{split}_city_vps.json"),
              {"images": coco_images, "annotations": [], "categories": cats})
  _write_json(os.path.join(out_dir, f"instances_{split}_city_vps_rle.json"),
              {"images": coco_images, "annotations": coco_annotations,
               "categories": render.META.coco_categories(things_only=True)})
  _write_json(os.path.join(out_dir, f"im_all_info_{split}_city_vps.json"),
              {"images": all_images, "annotations": [], "categories": cats})


def write_dataset(out_dir: str, num_videos: int = 4, num_val_videos=None,
                  height: int = 128, width: int = 256, seed: int = 0,
                  progress: bool = True) -> render.SyntheticConfig:
  """Writes train (video ids 1..N) and val (N+1..N+M) splits to `out_dir`."""
  if num_videos < 1:
    raise ValueError(f"num_videos must be >= 1, got {num_videos}")
  num_val = num_videos if num_val_videos is None else num_val_videos
  if num_val < 1:
    raise ValueError(f"num_val_videos must be >= 1, got {num_val}")
  cfg = render.SyntheticConfig(height=height, width=width)
  os.makedirs(out_dir, exist_ok=True)
  write_split(out_dir, "train", cfg, seed, list(range(1, num_videos + 1)),
              progress)
  write_split(out_dir, "val", cfg, seed,
              list(range(num_videos + 1, num_videos + num_val + 1)), progress)
  return cfg


def layout(split: str) -> vps_reader.Layout:
  """Reader layout of a written split: all frames, Cityscapes-VPS labels
  (train from instances + label maps, val from the panoptic ground truth)."""
  if split == "train":  # Cityscapes-VPS's, plus all frames (references).
    return dataclasses.replace(
        cityscapes_vps.layout("train"), all_images_dir="train/img_all",
        all_images_json="im_all_info_train_city_vps.json")
  if split == "val":
    return cityscapes_vps.layout("val")
  raise ValueError(f"vps_synthetic split must be one of {render.SPLITS}, "
                   f"got {split!r}")


def reader(root: str, split: str) -> vps_reader.VpsReader:
  """A validated reader of a split written by `write_dataset`."""
  return vps_reader.VpsReader(root, layout(split), render.META)

