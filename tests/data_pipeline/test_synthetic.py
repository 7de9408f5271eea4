"""Tests of the built-in synthetic VPS dataset (data_pipeline.synthetic)."""
import json
import os

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util
import pytest

from data_pipeline import metadata
from data_pipeline import synthetic
from eval import vpq

# pycocotools 2.0 and NumPy 2: a harmless copy-keyword deprecation.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation:DeprecationWarning")

H, W = 64, 128
CFG = synthetic.SyntheticConfig(height=H, width=W)
THINGS = set(synthetic.THING_CLASSES)


@pytest.fixture(scope="module")
def videos():
  return [synthetic.generate_video(CFG, 0, "val", i) for i in range(6)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("synthetic"))
  synthetic.write_dataset(out, num_videos=1, num_val_videos=2, height=H,
                          width=W, seed=3, progress=False)
  return out


def _load_json(path):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _decode_png_ids(path):
  rgb = np.asarray(Image.open(path), np.int64)
  return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


# --- Determinism ------------------------------------------------------------


def test_same_seed_gives_identical_video(videos):
  again = synthetic.generate_video(CFG, 0, "val", 1)
  for field in ("frames", "clean_frames", "semantic", "segments", "layer",
                "offsets"):
    np.testing.assert_array_equal(getattr(again, field),
                                  getattr(videos[1], field))
  assert again.categories == videos[1].categories


def test_other_seed_split_or_index_gives_other_video(videos):
  for other in (synthetic.generate_video(CFG, 1, "val", 1),
                synthetic.generate_video(CFG, 0, "train", 1)):
    assert not np.array_equal(other.frames, videos[1].frames)
  assert not np.array_equal(videos[0].segments, videos[1].segments)


def test_write_dataset_is_deterministic(dataset, tmp_path):
  synthetic.write_dataset(str(tmp_path), num_videos=1, num_val_videos=2,
                          height=H, width=W, seed=3, progress=False)
  for name in ("panoptic_gt_val_city_vps.json",
               "instances_train_city_vps_rle.json"):
    assert (_load_json(os.path.join(dataset, name)) ==
            _load_json(os.path.join(tmp_path, name)))
  name = synthetic.image_name(3, 17) + "_newImg8bit.png"
  a = np.asarray(Image.open(os.path.join(dataset, "val", "img_all", name)))
  b = np.asarray(Image.open(os.path.join(tmp_path, "val", "img_all", name)))
  np.testing.assert_array_equal(a, b)


# --- Ground-truth flow ------------------------------------------------------


@pytest.mark.parametrize("f0,f1", [(1, 2), (5, 6), (12, 13), (29, 30),
                                   (5, 10), (30, 25), (1, 30)])
def test_flow_warps_labels_and_pixels(videos, f0, f1):
  yy, xx = np.mgrid[0:H, 0:W]
  for v in videos:
    flow, visible = synthetic.flow_between(v, f0, f1)
    assert flow.shape == (H, W, 2) and flow.dtype == np.float32
    ty = (yy + flow[..., 1]).astype(int)
    tx = (xx + flow[..., 0]).astype(int)
    inside = (ty >= 0) & (ty < H) & (tx >= 0) & (tx < W)
    assert not np.any(visible & ~inside)
    ty, tx = np.clip(ty, 0, H - 1), np.clip(tx, 0, W - 1)
    t0, t1 = f0 - 1, f1 - 1
    # Frame f1 warped back with the flow reproduces frame f0 where visible.
    warped_seg = v.segments[t1][ty, tx]
    np.testing.assert_array_equal(warped_seg[visible], v.segments[t0][visible])
    warped_sem = v.semantic[t1][ty, tx]
    np.testing.assert_array_equal(warped_sem[visible], v.semantic[t0][visible])
    warped_rgb = v.clean_frames[t1][ty, tx]
    np.testing.assert_array_equal(warped_rgb[visible],
                                  v.clean_frames[t0][visible])
    if abs(f1 - f0) == 1:
      assert visible.mean() > 0.8


def test_flow_is_not_trivial(videos):
  moving_background = 0
  for v in videos:
    flow, _ = synthetic.flow_between(v, 1, 30)
    road = v.semantic[0] == synthetic.ROAD
    building = v.semantic[0] == synthetic.BUILDING
    # Ego-motion with parallax: the near road moves more than far buildings.
    road_dx = np.median(np.abs(flow[..., 0][road]))
    building_dx = np.median(np.abs(flow[..., 0][building]))
    assert road_dx > building_dx
    moving_background += road_dx >= 5
    # Moving instances do not move with the road.
    flow, _ = synthetic.flow_between(v, 10, 11)
    thing = np.isin(v.semantic[9], list(THINGS))
    assert len(np.unique(flow[thing], axis=0)) >= 2
  assert moving_background == len(videos)


def test_flow_from_disk_matches_video(dataset):
  fields = synthetic.load_flow_fields(os.path.join(dataset, "val", "flow",
                                                   "0002.npz"))
  video = synthetic.generate_video(CFG, 3, "val", 0)  # val video id 2.
  for f0, f1 in ((3, 4), (20, 5)):
    flow_a, vis_a = synthetic.flow_between(fields, f0, f1)
    flow_b, vis_b = synthetic.flow_between(video, f0, f1)
    np.testing.assert_array_equal(flow_a, flow_b)
    np.testing.assert_array_equal(vis_a, vis_b)
  with pytest.raises(ValueError, match="outside 1..30"):
    synthetic.flow_between(fields, 0, 3)
  with pytest.raises(FileNotFoundError, match="9999.npz"):
    synthetic.load_flow_fields(os.path.join(dataset, "val", "flow", "9999.npz"))


# --- Statistics -------------------------------------------------------------


def _tracks(v):
  """{segment id: {frame: (category, centroid x, bbox x0, x1)}} of things."""
  out = {}
  for t in range(CFG.num_frames):
    for sid in np.unique(v.segments[t]):
      cat = v.categories.get(int(sid))
      if cat not in THINGS:
        continue
      ys, xs = np.nonzero(v.segments[t] == sid)
      out.setdefault(int(sid), {})[t] = (cat, xs.mean(), xs.min(), xs.max())
  return out


def test_instances_crossings_entries_and_exits(videos):
  per_frame, crossings, entries, exits = [], 0, 0, 0
  for v in videos:
    tracks = _tracks(v)
    for t in range(CFG.num_frames):
      per_frame.append(sum(t in tr for tr in tracks.values()))
    for tr in tracks.values():
      first, last = min(tr), max(tr)
      # An entry: not visible in frame 1, first seen touching a border.
      if first > 0 and (tr[first][2] == 0 or tr[first][3] == W - 1):
        entries += 1
      if last < CFG.num_frames - 1 and (tr[last][2] == 0 or
                                         tr[last][3] == W - 1):
        exits += 1
    ids = sorted(tracks)
    for i, a in enumerate(ids):
      for b in ids[i + 1:]:
        both = sorted(set(tracks[a]) & set(tracks[b]))
        if not both or tracks[a][both[0]][0] != tracks[b][both[0]][0]:
          continue
        signs = {np.sign(tracks[a][t][1] - tracks[b][t][1]) for t in both}
        crossings += {-1.0, 1.0} <= signs
  per_frame = np.array(per_frame)
  assert per_frame.min() >= 1
  assert per_frame.mean() >= 3
  assert crossings >= len(videos)  # At least one look-alike pair per video.
  assert entries >= 2 and exits >= 2


def test_crossing_pairs_look_alike_and_occlude(videos):
  occluded = 0
  for v in videos:
    tracks = _tracks(v)
    # Some instance's visible area dips while fully inside the frame.
    for sid, tr in tracks.items():
      inside = [np.sum(v.segments[t] == sid) for t in sorted(tr)
                if tr[t][2] > 0 and tr[t][3] < W - 1]
      if inside and min(inside) < 0.8 * max(inside):
        occluded += 1
  assert occluded >= len(videos) // 2


def test_nuisances_change_pixels_not_labels(videos):
  v = videos[0]
  diff = np.abs(v.frames.astype(int) - v.clean_frames.astype(int))
  assert np.all(diff.reshape(30, -1).mean(1) > 0.5)  # Noise in every frame.
  assert diff.max() > 60  # Occluders / flicker somewhere.


# --- On-disk layout ---------------------------------------------------------


def test_layout_and_panoptic_ground_truth(dataset):
  gt = _load_json(os.path.join(dataset, "panoptic_gt_val_city_vps.json"))
  assert [c["id"] for c in gt["categories"]] == list(range(8))
  assert gt["categories"][0] == {"id": 0, "name": "road", "isthing": 0,
                                 "color": [128, 64, 128]}
  names = [im["id"] for im in gt["images"]]
  expected = [synthetic.image_name(v, f) for v in (2, 3)
              for f in (5, 10, 15, 20, 25, 30)]
  assert names == expected
  assert names[0] == "0002_0005_synthetic_000002_000005"
  video = synthetic.generate_video(CFG, 3, "val", 0)
  cats_of_video = {}
  for im, ann in zip(gt["images"], gt["annotations"]):
    assert ann["image_id"] == im["id"]
    assert im["file_name"] == im["id"] + "_newImg8bit.png"
    assert ann["file_name"] == im["id"] + "_final_mask.png"
    assert (im["width"], im["height"]) == (W, H)
    ids = _decode_png_ids(os.path.join(dataset, "val", "panoptic_video",
                                       ann["file_name"]))
    present, counts = np.unique(ids[ids != 0], return_counts=True)
    segs = {s["id"]: s for s in ann["segments_info"]}
    assert sorted(segs) == present.tolist()
    for sid, count in zip(present.tolist(), counts.tolist()):
      s = segs[sid]
      assert s["area"] == count and s["iscrowd"] == 0
      ys, xs = np.nonzero(ids == sid)
      assert s["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1,
                           ys.max() - ys.min() + 1]
      assert s["category_id"] == sid // 1000 - 1
      # The same segment id keeps its category through the video.
      key = (im["id"][:4], sid)
      assert cats_of_video.setdefault(key, s["category_id"]) == \
          s["category_id"]
    if im["id"][:4] == "0002":
      frame = int(im["id"][5:9])
      np.testing.assert_array_equal(ids, video.segments[frame - 1])
      labels = np.asarray(Image.open(os.path.join(
          dataset, "val", "labelmap", ann["file_name"])))
      np.testing.assert_array_equal(labels, video.semantic[frame - 1])
      assert labels.dtype == np.uint8 and 255 in labels
      img = np.asarray(Image.open(os.path.join(dataset, "val", "img",
                                               im["file_name"])))
      np.testing.assert_array_equal(img, video.frames[frame - 1])
  all_imgs = sorted(os.listdir(os.path.join(dataset, "val", "img_all")))
  assert len(all_imgs) == 60
  assert all_imgs[0] == "0002_0001_synthetic_000002_000001_newImg8bit.png"
  assert len(os.listdir(os.path.join(dataset, "val", "img"))) == 12
  info = _load_json(os.path.join(dataset, "im_all_info_val_city_vps.json"))
  assert [im["id"] for im in info["images"]][:3] == [20001, 20002, 20003]


def test_instances_json_rle_and_inst_ids(dataset):
  inst = _load_json(os.path.join(dataset, "instances_train_city_vps_rle.json"))
  assert [c["id"] for c in inst["categories"]] == [5, 6, 7]
  images = {im["id"]: im for im in inst["images"]}
  assert sorted(images) == [10005, 10010, 10015, 10020, 10025, 10030]
  by_image = {}
  for a in inst["annotations"]:
    by_image.setdefault(a["image_id"], []).append(a)
  assert set(by_image) <= set(images)
  seen_ids = set()
  for iid, anns in by_image.items():
    name = images[iid]["file_name"].replace("_newImg8bit", "_final_mask")
    ids = _decode_png_ids(os.path.join(dataset, "train", "panoptic_video",
                                       name))
    labels = np.asarray(Image.open(os.path.join(dataset, "train", "labelmap",
                                                name)))
    thing_ids = {int(s) for s in np.unique(ids) if s // 1000 - 1 in THINGS}
    assert {a["inst_id"] for a in anns} == thing_ids
    for a in anns:
      m = mask_util.decode(a["segmentation"])
      np.testing.assert_array_equal(m.astype(bool), ids == a["inst_id"])
      assert a["area"] == m.sum() and a["iscrowd"] == 0
      assert np.all(labels[m.astype(bool)] == a["category_id"])
      seen_ids.add(a["inst_id"])
  assert len(seen_ids) >= 3
  # Instance ids persist: some id appears in several annotated frames.
  counts = [sum(a["inst_id"] == i for a in inst["annotations"])
            for i in seen_ids]
  assert max(counts) >= 3


def test_vpq_of_ground_truth_against_itself_is_100(dataset, tmp_path):
  gt_json = os.path.join(dataset, "panoptic_gt_val_city_vps.json")
  gt_dir = os.path.join(dataset, "val", "panoptic_video")
  gt = _load_json(gt_json)
  os.makedirs(tmp_path / "pan_pred")
  annotations = []
  for ann in gt["annotations"]:
    rgb = Image.open(os.path.join(gt_dir, ann["file_name"]))
    rgb.save(tmp_path / "pan_pred" / (ann["image_id"] + ".png"))
    annotations.append({
        "image_id": ann["image_id"],
        "segments_info": [{"id": s["id"], "category_id": s["category_id"]}
                          for s in ann["segments_info"]]})
  with open(tmp_path / "pred.json", "w", encoding="utf-8") as f:
    json.dump({"annotations": annotations}, f)
  result = vpq.evaluate_folder(gt_json=gt_json, gt_dir=gt_dir,
                               pred_dir=str(tmp_path), pred_json=None,
                               ks=(0, 5, 10, 15), stride=5)
  for group in ("all", "things", "stuff"):
    assert result["vpq"][group] == pytest.approx(100.0)


def test_cli_writes_dataset(tmp_path):
  synthetic.main(["--out", str(tmp_path), "--videos", "1", "--val-videos",
                  "1", "--height", "32", "--width", "64", "--seed", "5"])
  gt = _load_json(tmp_path / "panoptic_gt_val_city_vps.json")
  assert gt["images"][0]["id"] == "0002_0005_synthetic_000002_000005"
  assert (gt["images"][0]["width"], gt["images"][0]["height"]) == (64, 32)


def test_metadata_tables():
  assert metadata.CITYSCAPES_VPS.num_classes == 19
  assert metadata.CITYSCAPES_VPS.thing_ids == tuple(range(11, 19))
  assert metadata.VIPER.num_classes == 23
  assert metadata.VIPER.thing_ids == tuple(range(13, 23))
  assert metadata.SYNTHETIC.by_id[0].name == "road"
  assert metadata.SYNTHETIC.thing_ids == synthetic.THING_CLASSES
  with pytest.raises(ValueError, match="Unknown dataset"):
    metadata.get("kitti")
