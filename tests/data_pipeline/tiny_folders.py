"""Tiny hand-made dataset folders in the Cityscapes-VPS and VIPER layouts.

Each builder writes a folder from a `truth` description and returns it, so
tests can compare what the readers and builders give back with what was
written. Images are 6 x 8 pixels.

Cityscapes-VPS (`write_cityscapes_vps`):
  train: video 1, annotated frames 5 and 10 (instances JSON with RLE +
    label maps): car inst_id 13001 in both frames, person 11002 only in
    frame 10, a crowd car region (iscrowd=1) in frame 5, ignore pixels.
  val: video 2, frames 1..10 in img_all, 5 and 10 annotated by RGB-encoded
    panoptic PNGs with arbitrary segment ids: car 0x0a0b0c in both, bicycle
    0x010203 in frame 10, a crowd person segment in frame 5, void pixels.
  test: video 3, frames 1..3, no labels.
"""
import json
import os

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util

H, W = 6, 8


def image(video, frame):
  """The RGB content written for a frame: a deterministic uint8 [H, W, 3]."""
  rng = np.random.default_rng(video * 100 + frame)
  return rng.integers(0, 256, (H, W, 3), dtype=np.uint8)


def name(video, frame, city="tinytown"):
  return f"{video:04d}_{frame:04d}_{city}_000000_{frame:06d}"


def _rect(y0, y1, x0, x1):
  m = np.zeros((H, W), bool)
  m[y0:y1, x0:x1] = True
  return m


def _rle(mask):
  rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
  return {"size": [int(v) for v in rle["size"]],
          "counts": rle["counts"].decode("ascii")}


def _save(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path)


def _dump(path, obj):
  with open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f)


def _cats(things, stuff):
  return ([{"id": c, "name": f"c{c}", "isthing": 0} for c in stuff] +
          [{"id": c, "name": f"c{c}", "isthing": 1} for c in things])


def train_truth(road=0, sky=10, car=13, person=11):
  """Per frame: semantic train ids (255 ignore) and object masks."""
  frames = {}
  # Frame 5: sky on top, road below, car at (2:4, 1:4), crowd car (4:6, 6:8).
  sem = np.full((H, W), road, np.uint8)
  sem[:2] = sky
  sem[0, 0] = 255
  car5 = _rect(2, 4, 1, 4)
  crowd5 = _rect(4, 6, 6, 8)
  sem[car5 | crowd5] = car
  frames[5] = {"semantic": sem, "objects": [
      {"inst_id": car * 1000 + 1, "category_id": car, "mask": car5,
       "iscrowd": 0},
      {"inst_id": car * 1000 + 9, "category_id": car, "mask": crowd5,
       "iscrowd": 1}]}
  # Frame 10: the car moved right by 2, a person appeared; ignore row 5.
  sem = np.full((H, W), road, np.uint8)
  sem[:2] = sky
  sem[5] = 255
  car10 = _rect(2, 4, 3, 6)
  person10 = _rect(1, 4, 6, 7)
  sem[car10] = car
  sem[person10] = person
  frames[10] = {"semantic": sem, "objects": [
      {"inst_id": person * 1000 + 2, "category_id": person, "mask": person10,
       "iscrowd": 0},
      {"inst_id": car * 1000 + 1, "category_id": car, "mask": car10,
       "iscrowd": 0}]}
  return frames


def val_truth(road=0, sky=10, car=13, bicycle=18, person=11):
  """Per frame: segment id map (0 void) and segments_info."""
  frames = {}
  ids = np.full((H, W), 0x000100, np.int64)  # road
  ids[:2] = 0x000200  # sky
  ids[2:4, 0:3] = 0x0a0b0c  # car
  ids[4:6, 5:8] = 0x000300  # crowd person
  ids[5, 0] = 0  # void
  frames[5] = (ids, [
      {"id": 0x000100, "category_id": road, "iscrowd": 0},
      {"id": 0x000200, "category_id": sky, "iscrowd": 0},
      {"id": 0x0a0b0c, "category_id": car, "iscrowd": 0},
      {"id": 0x000300, "category_id": person, "iscrowd": 1}])
  ids = np.full((H, W), 0x000100, np.int64)
  ids[:2] = 0x000200
  ids[2:4, 2:5] = 0x0a0b0c
  ids[3:6, 6:8] = 0x010203  # bicycle
  ids[0, 7] = 0
  frames[10] = (ids, [
      {"id": 0x000100, "category_id": road, "iscrowd": 0},
      {"id": 0x000200, "category_id": sky, "iscrowd": 0},
      {"id": 0x010203, "category_id": bicycle, "iscrowd": 0},
      {"id": 0x0a0b0c, "category_id": car, "iscrowd": 0}])
  return frames


def _encode(ids):
  return np.stack([ids % 256, (ids // 256) % 256, ids // 65536],
                  -1).astype(np.uint8)


def _areas_and_boxes(ids, segments):
  out = []
  for s in segments:
    m = ids == s["id"]
    ys, xs = np.nonzero(m)
    out.append(dict(s, area=int(m.sum()), bbox=[
        int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
        int(ys.max() - ys.min() + 1)]))
  return out


def write_train(root, rel_json, img_dir, label_dir, things, stuff, truth,
                video=1):
  images, anns = [], []
  for frame, t in sorted(truth.items()):
    n = name(video, frame)
    iid = video * 10000 + frame
    images.append({"id": iid, "file_name": n + "_newImg8bit.png",
                   "width": W, "height": H})
    _save(os.path.join(root, img_dir, n + "_newImg8bit.png"),
          image(video, frame))
    _save(os.path.join(root, label_dir, n + "_final_mask.png"), t["semantic"])
    for o in t["objects"]:
      ys, xs = np.nonzero(o["mask"])
      anns.append({"id": len(anns) + 1, "image_id": iid,
                   "category_id": o["category_id"], "inst_id": o["inst_id"],
                   "iscrowd": o["iscrowd"], "area": int(o["mask"].sum()),
                   "bbox": [int(xs.min()), int(ys.min()),
                            int(xs.max() - xs.min() + 1),
                            int(ys.max() - ys.min() + 1)],
                   "segmentation": _rle(o["mask"])})
  _dump(os.path.join(root, rel_json), {
      "images": images, "annotations": anns,
      "categories": [c for c in _cats(things, stuff) if c["isthing"]]})


def write_val(root, gt_json, img_dir, all_dir, all_json, pan_dir, things,
              stuff, truth, video=2, num_frames=10):
  images, anns = [], []
  for frame, (ids, segs) in sorted(truth.items()):
    n = name(video, frame)
    images.append({"id": n, "file_name": n + "_newImg8bit.png",
                   "width": W, "height": H})
    anns.append({"image_id": n, "file_name": n + "_final_mask.png",
                 "segments_info": _areas_and_boxes(ids, segs)})
    _save(os.path.join(root, pan_dir, n + "_final_mask.png"), _encode(ids))
    if img_dir:
      _save(os.path.join(root, img_dir, n + "_newImg8bit.png"),
            image(video, frame))
  _dump(os.path.join(root, gt_json), {"images": images, "annotations": anns,
                                      "categories": _cats(things, stuff)})
  if all_json:
    all_images = []
    for frame in range(1, num_frames + 1):
      n = name(video, frame)
      all_images.append({"id": video * 10000 + frame,
                         "file_name": n + "_newImg8bit.png",
                         "width": W, "height": H})
      _save(os.path.join(root, all_dir, n + "_newImg8bit.png"),
            image(video, frame))
    _dump(os.path.join(root, all_json), {"images": all_images,
                                         "categories": _cats(things, stuff)})


def write_cityscapes_vps(root):
  things, stuff = list(range(11, 19)), list(range(11))
  write_train(root, "instances_train_city_vps_rle.json", "train/img",
              "train/labelmap", things, stuff, train_truth())
  write_val(root, "panoptic_gt_val_city_vps.json", "val/img", "val/img_all",
            "im_all_info_val_city_vps.json", "val/panoptic_video", things,
            stuff, val_truth())
  test_images = []
  for frame in (1, 2, 3):
    n = name(3, frame)
    test_images.append({"id": 30000 + frame, "file_name": n +
                        "_newImg8bit.png", "width": W, "height": H})
    _save(os.path.join(root, "test/img_all", n + "_newImg8bit.png"),
          image(3, frame))
  _dump(os.path.join(root, "im_all_info_test_city_vps.json"),
        {"images": test_images})
  return root


# VIPER ids: road 1, sky 0, car 19, person 17, bicycle -> motorcycle 18.
VIPER_IDS = dict(road=1, sky=0, car=19, person=17)


def write_viper(root):
  things, stuff = list(range(13, 23)), list(range(13))
  write_train(root, "instances_train_05_viper_coco.json", "train/img",
              "train/labelmap", things, stuff, train_truth(**VIPER_IDS))
  write_val(root, "viper_panoptic_val_day_video.json", "val_day/img", None,
            None, "val_day/panoptic_video", things, stuff,
            val_truth(bicycle=18, **VIPER_IDS))
  return root
