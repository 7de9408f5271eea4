"""Readers of the Cityscapes-VPS and VIPER layouts on tiny hand-made folders."""
import json
import os
import shutil

import numpy as np
from PIL import Image
import pytest

from data_pipeline import cityscapes_vps
from data_pipeline import viper
from data_pipeline import vps_reader
from tests.data_pipeline import tiny_folders as tiny

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def city_root(tmp_path_factory):
  return tiny.write_cityscapes_vps(str(tmp_path_factory.mktemp("city")))


@pytest.fixture(scope="module")
def viper_root(tmp_path_factory):
  return tiny.write_viper(str(tmp_path_factory.mktemp("viper")))


@pytest.fixture
def city_copy(city_root, tmp_path):
  dst = str(tmp_path / "city")
  shutil.copytree(city_root, dst)
  return dst


def _expected_train_panoptic(frame, ids, tracks):
  """train_id * 1000 + track id from the hand-written truth; -1 void."""
  t = tiny.train_truth(**ids)[frame]
  pan = np.where(t["semantic"] == 255, -1,
                 t["semantic"].astype(np.int32) * 1000)
  for o in t["objects"]:
    track = 0 if o["iscrowd"] else tracks[o["inst_id"]]
    pan[o["mask"]] = o["category_id"] * 1000 + track
  return pan


# --- Cityscapes-VPS ---------------------------------------------------------


def test_train_split_frames_and_instances(city_root):
  r = cityscapes_vps.reader(city_root, "train")
  videos = r.videos()
  assert list(videos) == [1]
  frames = videos[1]
  assert [(f.frame_index, f.annotated) for f in frames] == [(5, True),
                                                             (10, True)]
  f5 = frames[0]
  assert f5.image_id == "0001_0005_tinytown_000000_000005"
  assert f5.image_path == os.path.join(
      city_root, "train/img", f5.image_id + "_newImg8bit.png")
  assert (f5.height, f5.width, f5.video_id) == (tiny.H, tiny.W, 1)
  np.testing.assert_array_equal(r.read_image(f5), tiny.image(1, 5))
  # Tracks numbered by first appearance: car 13001 -> 1, person 11002 -> 2.
  assert r.track_ids(1) == {13001: 1, 11002: 2}
  ids = dict(road=0, sky=10, car=13, person=11)
  for f in frames:
    ann = r.annotation(f)
    expected = _expected_train_panoptic(f.frame_index, ids, r.track_ids(1))
    np.testing.assert_array_equal(ann.panoptic, expected)
    assert ann.panoptic.dtype == np.int32
  ann5 = r.annotation(f5)
  assert ann5.semantic[0, 0] == 255 and ann5.instance[0, 0] == 0
  rows = {s["id"]: s for s in ann5.segments}
  assert sorted(rows) == [0, 10000, 13000, 13001]
  assert rows[13001] == {"id": 13001, "category_id": 13, "train_id": 13,
                         "instance_id": 1, "iscrowd": 0, "area": 6,
                         "bbox": [1.0, 2.0, 4.0, 4.0]}
  assert rows[13000]["iscrowd"] == 1 and rows[13000]["area"] == 4
  assert rows[10000]["area"] == 15  # 16 sky pixels, one ignored.
  ann10 = r.annotation(frames[1])
  rows = {s["id"]: s for s in ann10.segments}
  assert rows[11002]["bbox"] == [6.0, 1.0, 7.0, 4.0]
  assert rows[13001]["bbox"] == [3.0, 2.0, 6.0, 4.0]  # Same id, moved.
  assert np.all(ann10.semantic[5] == 255)


def test_val_split_all_frames_and_panoptic(city_root):
  r = cityscapes_vps.reader(city_root, "val")
  frames = r.videos()[2]
  assert [f.frame_index for f in frames] == list(range(1, 11))
  assert [f.frame_index for f in frames if f.annotated] == [5, 10]
  assert frames[0].image_path.endswith(
      "val/img_all/0002_0001_tinytown_000000_000001_newImg8bit.png")
  np.testing.assert_array_equal(r.read_image(frames[2]), tiny.image(2, 3))
  with pytest.raises(ValueError, match="not annotated"):
    r.annotation(frames[0])
  assert r.track_ids(2) == {0x0a0b0c: 1, 0x010203: 2}
  lut = {0x000100: 0, 0x000200: 10000, 0x0a0b0c: 13001, 0x000300: 11000,
         0x010203: 18002, 0: -1}
  for f in (frames[4], frames[9]):
    ids, _ = tiny.val_truth()[f.frame_index]
    expected = np.vectorize(lut.get)(ids)
    ann = r.annotation(f)
    np.testing.assert_array_equal(ann.panoptic, expected)
  rows = {s["id"]: s for s in r.annotation(frames[4]).segments}
  assert rows[11000]["iscrowd"] == 1 and rows[11000]["instance_id"] == 0
  assert rows[13001]["bbox"] == [0.0, 2.0, 3.0, 4.0]
  assert r.annotation(frames[4]).semantic[5, 0] == 255
  rows = {s["id"]: s for s in r.annotation(frames[9]).segments}
  assert rows[18002] == {"id": 18002, "category_id": 18, "train_id": 18,
                         "instance_id": 2, "iscrowd": 0, "area": 6,
                         "bbox": [6.0, 3.0, 8.0, 6.0]}


def test_test_split_has_unannotated_frames(city_root):
  r = cityscapes_vps.reader(city_root, "test")
  frames = r.videos()[3]
  assert [(f.frame_index, f.annotated) for f in frames] == [
      (1, False), (2, False), (3, False)]
  np.testing.assert_array_equal(r.read_image(frames[1]), tiny.image(3, 2))


# --- VIPER ------------------------------------------------------------------


def test_viper_train_and_val(viper_root):
  r = viper.reader(viper_root, "train")
  frames = r.videos()[1]
  ids = tiny.VIPER_IDS
  tracks = r.track_ids(1)
  assert tracks == {19001: 1, 17002: 2}
  for f in frames:
    np.testing.assert_array_equal(
        r.annotation(f).panoptic,
        _expected_train_panoptic(f.frame_index, ids, tracks))
  r = viper.reader(viper_root, "val_day")
  frames = r.videos()[2]
  assert [(f.frame_index, f.annotated) for f in frames] == [(5, True),
                                                             (10, True)]
  assert frames[0].image_path.endswith("val_day/img/"
                                       "0002_0005_tinytown_000000_000005"
                                       "_newImg8bit.png")
  ann = r.annotation(frames[1])
  rows = {s["id"]: s for s in ann.segments}
  assert sorted(rows) == [0, 1000, 18002, 19001]
  assert rows[18002]["category_id"] == 18 and rows[0]["category_id"] == 0


def test_viper_evaluation_subset(viper_root, tmp_path):
  """The paper's subset: the first V videos' first F annotated frames, and
  a ground-truth JSON of exactly those frames for the evaluators."""
  from eval import layout as eval_layout  # pylint: disable=g-import-not-at-top
  assert viper.SUBSETS["paper"] == (10, 60)
  r = vps_reader.VpsReader(viper_root, viper.layout("val_day"), viper.META,
                           subset=(1, 1))
  assert {v: [f.frame_index for f in fs] for v, fs in r.videos().items()} == {
      2: [5]}
  gt_json = r.write_panoptic_json(str(tmp_path / "gt.json"))
  data = json.loads(open(gt_json).read())
  assert [a["image_id"] for a in data["annotations"]] == [
      "0002_0005_tinytown_000000_000005"]
  assert len(data["images"]) == 1 and data["categories"]
  # The evaluators' planner accepts it with a prediction of that frame only.
  pred = tmp_path / "pred"
  os.makedirs(pred / "pan_pred")
  ann = data["annotations"][0]
  shutil.copy(os.path.join(viper_root, "val_day/panoptic_video",
                           ann["file_name"]),
              pred / "pan_pred" / (ann["image_id"] + ".png"))
  (pred / "pred.json").write_text(json.dumps({"annotations": [ann]}))
  plan = eval_layout.plan_videos(
      gt_json, os.path.join(viper_root, "val_day/panoptic_video"), str(pred))
  assert [[f.name for f in v] for v in plan.videos] == [[ann["image_id"]]]
  with pytest.raises(ValueError, match="first 2 videos, but split "
                     "'val_day' has 1"):
    vps_reader.VpsReader(viper_root, viper.layout("val_day"), viper.META,
                         subset=(2, 1))
  with pytest.raises(ValueError, match="first 3 annotated frames of each "
                     "video, but video 0002 has 2"):
    vps_reader.VpsReader(viper_root, viper.layout("val_day"), viper.META,
                         subset=(1, 3))
  # The paper's subset needs 10 videos: named, not silently smaller.
  with pytest.raises(ValueError, match="first 10 videos"):
    viper.reader(viper_root, "val_day", subset="paper")
  with pytest.raises(ValueError, match="unknown VIPER subset"):
    viper.reader(viper_root, "val_day", subset="all")
  with pytest.raises(ValueError, match="of val_day, not 'train'"):
    viper.reader(viper_root, "train", subset="paper")


def test_viper_config_subset_reaches_the_validation_reader(viper_root,
                                                           tmp_path):
  import importlib  # pylint: disable=g-import-not-at-top
  from data_pipeline import sources  # pylint: disable=g-import-not-at-top
  config = importlib.import_module("configs.viper").get_config()
  assert config.dataset.subset == "paper"
  config.dataset.data_dir = viper_root
  # The training split is whole; the validation split is the paper's
  # subset, which the tiny folder cannot hold.
  source, _ = sources.open_split(config, str(tmp_path), "train")
  assert source.reader.subset is None
  with pytest.raises(ValueError, match="first 10 videos"):
    sources.open_split(config, str(tmp_path), "val")
  config.dataset.subset = ""
  source, _ = sources.open_split(config, str(tmp_path), "val")
  assert len(source) == 2


# --- Malformed folders ------------------------------------------------------


def _edit_json(path, fn):
  with open(path, encoding="utf-8") as f:
    data = json.load(f)
  fn(data)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(data, f)


def test_missing_root_and_json(tmp_path, city_copy):
  with pytest.raises(FileNotFoundError, match="nowhere"):
    cityscapes_vps.reader(str(tmp_path / "nowhere"), "train")
  os.remove(os.path.join(city_copy, "instances_train_city_vps_rle.json"))
  with pytest.raises(FileNotFoundError,
                     match="instances_train_city_vps_rle.json"):
    cityscapes_vps.reader(city_copy, "train")
  with pytest.raises(ValueError, match="split must be one of"):
    cityscapes_vps.reader(city_copy, "training")


def test_invalid_json_and_missing_keys(city_copy):
  path = os.path.join(city_copy, "panoptic_gt_val_city_vps.json")
  with open(path, "w", encoding="utf-8") as f:
    f.write('{"images": [')
  with pytest.raises(ValueError, match="panoptic_gt_val_city_vps.json is not "
                     "valid JSON"):
    cityscapes_vps.reader(city_copy, "val")
  with open(path, "w", encoding="utf-8") as f:
    json.dump({"images": [], "categories": []}, f)
  with pytest.raises(ValueError, match="missing list 'annotations'"):
    cityscapes_vps.reader(city_copy, "val")


def test_polygon_segmentation_is_rejected(city_copy):
  path = os.path.join(city_copy, "instances_train_city_vps_rle.json")
  _edit_json(path, lambda d: d["annotations"][0].update(
      segmentation=[[0, 0, 4, 0, 4, 4]]))
  with pytest.raises(ValueError, match="segmentation is not RLE"):
    cityscapes_vps.reader(city_copy, "train")


def test_missing_inst_id_is_rejected(city_copy):
  path = os.path.join(city_copy, "instances_train_city_vps_rle.json")
  _edit_json(path, lambda d: d["annotations"][1].pop("inst_id"))
  with pytest.raises(ValueError, match=r"lacks \['inst_id'\]"):
    cityscapes_vps.reader(city_copy, "train")


def test_missing_image_labelmap_and_png(city_copy):
  img = os.path.join(city_copy, "val/img_all",
                     tiny.name(2, 7) + "_newImg8bit.png")
  os.remove(img)
  with pytest.raises(FileNotFoundError, match=tiny.name(2, 7)):
    cityscapes_vps.reader(city_copy, "val")
  label = os.path.join(city_copy, "train/labelmap",
                       tiny.name(1, 10) + "_final_mask.png")
  os.remove(label)
  with pytest.raises(FileNotFoundError, match="Missing label map: .*"
                     + tiny.name(1, 10)):
    cityscapes_vps.reader(city_copy, "train")


def test_missing_panoptic_png(city_copy):
  os.remove(os.path.join(city_copy, "val/panoptic_video",
                         tiny.name(2, 10) + "_final_mask.png"))
  with pytest.raises(FileNotFoundError, match="Missing panoptic PNG"):
    cityscapes_vps.reader(city_copy, "val")


def test_bad_image_name(city_copy):
  path = os.path.join(city_copy, "im_all_info_test_city_vps.json")
  _edit_json(path, lambda d: d["images"][0].update(file_name="frame1.png"))
  with pytest.raises(ValueError, match="'frame1.png' does not start with a "
                     "4-digit video id"):
    cityscapes_vps.reader(city_copy, "test")


def test_png_segment_not_in_json(city_copy):
  path = os.path.join(city_copy, "panoptic_gt_val_city_vps.json")
  _edit_json(path, lambda d: d["annotations"][1]["segments_info"].pop(2))
  r = cityscapes_vps.reader(city_copy, "val")
  frame = r.videos()[2][9]
  with pytest.raises(ValueError, match=tiny.name(2, 10) + "_final_mask.png: "
                     "segment ids in the PNG"):
    r.annotation(frame)


def test_unknown_category(city_copy):
  path = os.path.join(city_copy, "panoptic_gt_val_city_vps.json")
  _edit_json(path, lambda d: d["annotations"][0]["segments_info"][0].update(
      category_id=42))
  with pytest.raises(ValueError, match="unknown category_id 42"):
    cityscapes_vps.reader(city_copy, "val")


def test_bad_labelmap_values_and_sizes(city_copy):
  label = os.path.join(city_copy, "train/labelmap",
                       tiny.name(1, 5) + "_final_mask.png")
  bad = np.full((tiny.H, tiny.W), 77, np.uint8)
  Image.fromarray(bad).save(label)
  r = cityscapes_vps.reader(city_copy, "train")
  with pytest.raises(ValueError, match=r"values \[77\] are neither train ids"):
    r.annotation(r.videos()[1][0])
  Image.fromarray(np.zeros((3, 3), np.uint8)).save(label)
  with pytest.raises(ValueError, match="size"):
    r.annotation(r.videos()[1][0])


def test_rle_size_mismatch(city_copy):
  path = os.path.join(city_copy, "instances_train_city_vps_rle.json")
  _edit_json(path, lambda d: d["annotations"][0]["segmentation"].update(
      size=[3, 3]))
  r = cityscapes_vps.reader(city_copy, "train")
  with pytest.raises(ValueError, match="RLE of annotation 1"):
    r.annotation(r.videos()[1][0])


def test_annotated_frame_missing_from_all_frames(city_copy):
  path = os.path.join(city_copy, "im_all_info_val_city_vps.json")
  _edit_json(path, lambda d: d["images"].pop(4))
  with pytest.raises(ValueError, match="annotated images missing from the "
                     "all-frames list"):
    cityscapes_vps.reader(city_copy, "val")


def test_layout_with_two_sources_is_rejected(city_root):
  lay = vps_reader.Layout(split="x", images_dir="train/img",
                          instances_json="a.json", panoptic_json="b.json")
  with pytest.raises(ValueError, match="one annotation source"):
    vps_reader.VpsReader(city_root, lay, cityscapes_vps.META)
