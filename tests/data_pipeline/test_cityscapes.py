"""The Cityscapes reader (official panoptic layout) on a tiny fake folder.

The folder (`_write_cityscapes`): 64 x 128 frames.
  train: aachen_000000_000019 and bochum_000003_000123, one annotated frame
    each, with their 30-frame snippets in leftImg8bit_sequence/train.
  val: frankfurt_000001_000042, annotated, no sequence folder for val.
Segment ids follow createPanopticImgs: stuff = label id, instances
label id * 1000 + n, crowd regions = label id with iscrowd=1, 0 = void.
"""
import json
import os
import re
import shutil

from absl import flags
from ml_collections import config_flags
import numpy as np
from PIL import Image
import pytest

from configs import cityscapes as cityscapes_config
from data_pipeline import cityscapes
from data_pipeline import metadata
from data_pipeline import sources
from eval import vpq
from vpsnet_jax.train import input as input_lib
from vpsnet_jax.inference import run

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation:DeprecationWarning")

H, W = 64, 128
TRAIN = ("aachen_000000_000019", "bochum_000003_000123")
VAL = ("frankfurt_000001_000042",)


def image(image_id):
  """The RGB content written for a frame: a deterministic uint8 [H, W, 3]."""
  rng = np.random.default_rng(sum(map(ord, image_id)))
  return rng.integers(0, 256, (H, W, 3), dtype=np.uint8)


def segment_ids(image_id):
  """(int [H, W] segment ids, {segment id: (label id, iscrowd)})."""
  ids = np.full((H, W), 7, np.int64)  # Road.
  ids[:16] = 23  # Sky.
  if image_id.startswith("aachen"):
    ids[20:40, 10:30] = 26002  # Car.
    ids[20:40, 40:50] = 24001  # Person.
    ids[45:60, 60:90] = 26001  # Car.
    ids[50:64, 100:128] = 26  # Crowd of cars.
    ids[0:4, 0:8] = 0  # Void.
    return ids, {7: (7, 0), 23: (23, 0), 26002: (26, 0), 24001: (24, 0),
                 26001: (26, 0), 26: (26, 1)}
  ids[16:32, :64] = 11  # Building.
  ids[40:60, 8:24] = 33005  # Bicycle.
  ids[60:, :] = 0
  return ids, {7: (7, 0), 23: (23, 0), 11: (11, 0), 33005: (33, 0)}


def expected_panoptic(image_id):
  """train_id * 1000 + instance id, instances numbered by segment id."""
  if image_id.startswith("aachen"):
    lut = {7: 0, 23: 10000, 24001: 11001, 26001: 13002, 26002: 13003,
           26: 13000, 0: -1}
  else:
    lut = {7: 0, 23: 10000, 11: 2000, 33005: 18001, 0: -1}
  ids, _ = segment_ids(image_id)
  return np.vectorize(lut.get)(ids).astype(np.int32)


def _save(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path)


def _write_split(root, split, image_ids, with_sequence):
  images, annotations = [], []
  for iid in image_ids:
    city = iid.split("_")[0]
    _save(os.path.join(root, "leftImg8bit", split, city,
                       iid + "_leftImg8bit.png"), image(iid))
    if with_sequence:
      for sid in cityscapes.snippet_ids(iid, "test").values():
        _save(os.path.join(root, "leftImg8bit_sequence", split, city,
                           sid + "_leftImg8bit.png"), image(sid))
    ids, table = segment_ids(iid)
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1)
    png = iid + "_gtFine_panoptic.png"
    _save(os.path.join(root, "gtFine", f"cityscapes_panoptic_{split}", png),
          rgb.astype(np.uint8))
    segments = []
    for sid, (label, crowd) in sorted(table.items()):
      ys, xs = np.nonzero(ids == sid)
      segments.append({
          "id": sid, "category_id": label, "iscrowd": crowd,
          "area": int(len(ys)),
          "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs) + 1),
                   int(np.ptp(ys) + 1)]})
    images.append({"id": iid, "file_name": iid + "_leftImg8bit.png",
                   "height": H, "width": W})
    annotations.append({"image_id": iid, "file_name": png,
                        "segments_info": segments})
  data = {"images": images, "annotations": annotations,
          "categories": metadata.CITYSCAPES.coco_categories()}
  with open(os.path.join(root, "gtFine", f"cityscapes_panoptic_{split}.json"),
            "w", encoding="utf-8") as f:
    json.dump(data, f)


def _write_cityscapes(root):
  _write_split(root, "train", TRAIN, with_sequence=True)
  _write_split(root, "val", VAL, with_sequence=False)
  return root


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  return _write_cityscapes(str(tmp_path_factory.mktemp("cityscapes")))


@pytest.fixture
def copy(root, tmp_path):
  dst = str(tmp_path / "cityscapes")
  shutil.copytree(root, dst)
  return dst


def _json(root, split="train"):
  return os.path.join(root, "gtFine", f"cityscapes_panoptic_{split}.json")


def _edit_json(path, fn):
  with open(path, encoding="utf-8") as f:
    data = json.load(f)
  fn(data)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(data, f)


# --- Metadata and layout ----------------------------------------------------


def test_metadata_uses_label_ids_in_train_id_order():
  meta = metadata.get("cityscapes")
  assert meta is metadata.CITYSCAPES
  assert [c.id for c in meta.categories] == [
      7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
  assert meta.thing_ids == (24, 25, 26, 27, 28, 31, 32, 33)
  vps = metadata.CITYSCAPES_VPS.categories
  assert [(c.name, c.isthing, c.color) for c in meta.categories] == [
      (c.name, c.isthing, c.color) for c in vps]
  assert meta.id_to_train_id[26] == 13 and meta.id_to_train_id[7] == 0


def test_layout_paths(root):
  r = cityscapes.reader(root, "val")
  assert r.root == root and r.meta is metadata.CITYSCAPES
  assert r.layout.panoptic_json == "gtFine/cityscapes_panoptic_val.json"
  assert r.layout.panoptic_dir == "gtFine/cityscapes_panoptic_val"
  assert r.layout.images_dir == "leftImg8bit/val"
  assert r.layout.all_images_dir == "leftImg8bit_sequence/val"
  assert os.path.isfile(os.path.join(root, r.layout.panoptic_json))
  with pytest.raises(ValueError, match="split must be one of"):
    cityscapes.reader(root, "test")


# --- Frames and annotations -------------------------------------------------


def test_panoptic_encoding(root):
  r = cityscapes.reader(root, "train")
  videos = r.videos()
  for vid, iid in ((1, TRAIN[0]), (2, TRAIN[1])):
    frame = videos[vid][19]
    assert (frame.image_id, frame.annotated) == (iid, True)
    ann = r.annotation(frame)
    assert ann.panoptic.dtype == np.int32
    np.testing.assert_array_equal(ann.panoptic, expected_panoptic(iid))
  ann = r.annotation(videos[1][19])
  assert r.track_ids(1) == {24001: 1, 26001: 2, 26002: 3}
  assert ann.semantic[0, 0] == 255 and ann.instance[0, 0] == 0
  assert ann.semantic[21, 11] == 13 and ann.instance[21, 11] == 3
  rows = {s["id"]: s for s in ann.segments}
  assert sorted(rows) == [0, 10000, 11001, 13000, 13002, 13003]
  assert rows[13003] == {"id": 13003, "category_id": 26, "train_id": 13,
                         "instance_id": 3, "iscrowd": 0, "area": 400,
                         "bbox": [10.0, 20.0, 30.0, 40.0]}
  assert rows[13000] == {"id": 13000, "category_id": 26, "train_id": 13,
                         "instance_id": 0, "iscrowd": 1, "area": 14 * 28,
                         "bbox": [100.0, 50.0, 128.0, 64.0]}
  assert rows[10000]["category_id"] == 23 and rows[10000]["area"] == (
      16 * W - 32)
  # Instance ids restart at 1 in every image.
  assert r.track_ids(2) == {33005: 1}


def test_videos_with_the_sequence_folder(root):
  r = cityscapes.reader(root, "train")
  videos = r.videos()
  assert list(videos) == [1, 2]
  frames = videos[1]
  assert [f.frame_index for f in frames] == list(range(1, 31))
  assert [f.frame_index for f in frames if f.annotated] == [20]
  assert {f.video_id for f in frames} == {1}
  assert frames[0].image_id == "aachen_000000_000000"
  assert frames[29].image_id == "aachen_000000_000029"
  assert frames[19].image_path == os.path.join(
      root, "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png")
  assert frames[18].image_path == os.path.join(
      root, "leftImg8bit_sequence/train/aachen/"
      "aachen_000000_000018_leftImg8bit.png")
  assert [f.image_id for f in videos[2][::10]] == [
      "bochum_000003_000104", "bochum_000003_000114", "bochum_000003_000124"]
  assert (frames[3].height, frames[3].width) == (H, W)
  np.testing.assert_array_equal(r.read_image(frames[19]), image(TRAIN[0]))
  np.testing.assert_array_equal(r.read_image(videos[2][0]),
                                image("bochum_000003_000104"))
  with pytest.raises(ValueError, match="not annotated"):
    r.annotation(frames[0])


def test_videos_without_the_sequence_folder(root, copy):
  r = cityscapes.reader(root, "val")
  frames = r.videos()[1]
  assert [(f.image_id, f.frame_index, f.annotated) for f in frames] == [
      (VAL[0], 20, True)]
  np.testing.assert_array_equal(r.annotation(frames[0]).panoptic,
                                expected_panoptic(VAL[0]))
  shutil.rmtree(os.path.join(copy, "leftImg8bit_sequence"))
  videos = cityscapes.reader(copy, "train").videos()
  assert {v: [(f.image_id, f.frame_index) for f in fs]
          for v, fs in videos.items()} == {1: [(TRAIN[0], 20)],
                                           2: [(TRAIN[1], 20)]}


def test_ground_truth_against_itself_is_pq_100(root, tmp_path):
  """The layout's paths and image ids are what eval.vpq reads."""
  r = cityscapes.reader(root, "train")
  gt_json = os.path.join(r.root, r.layout.panoptic_json)
  gt_dir = os.path.join(r.root, r.layout.panoptic_dir)
  with open(gt_json, encoding="utf-8") as f:
    gt = json.load(f)
  annotated = [f.image_id for fs in r.videos().values() for f in fs
               if f.annotated]
  assert annotated == [a["image_id"] for a in gt["annotations"]]
  os.makedirs(tmp_path / "pan_pred")
  for ann in gt["annotations"]:
    shutil.copy(os.path.join(gt_dir, ann["file_name"]),
                tmp_path / "pan_pred" / (ann["image_id"] + ".png"))
  with open(tmp_path / "pred.json", "w", encoding="utf-8") as f:
    json.dump({"annotations": gt["annotations"]}, f)
  result = vpq.evaluate_folder(gt_json=gt_json, gt_dir=gt_dir,
                               pred_dir=str(tmp_path), ks=(0,), stride=5)
  assert result["vpq"]["all"] == pytest.approx(100.0)


# --- Malformed folders ------------------------------------------------------


def test_missing_root_json_image_and_png(tmp_path, copy):
  with pytest.raises(FileNotFoundError, match="nowhere"):
    cityscapes.reader(str(tmp_path / "nowhere"), "train")
  seq = os.path.join(copy, "leftImg8bit_sequence/train/aachen",
                     "aachen_000000_000025_leftImg8bit.png")
  os.remove(seq)
  with pytest.raises(FileNotFoundError, match=re.escape(
      f"Missing image: {seq} (listed in the snippet of {TRAIN[0]})")):
    cityscapes.reader(copy, "train")
  png = os.path.join(copy, "gtFine/cityscapes_panoptic_train",
                     TRAIN[1] + "_gtFine_panoptic.png")
  os.remove(png)
  with pytest.raises(FileNotFoundError,
                     match=re.escape(f"Missing panoptic PNG: {png}")):
    cityscapes.reader(copy, "train")
  cityscapes.reader(copy, "val")  # The val split is complete.
  img = os.path.join(copy, "leftImg8bit/val/frankfurt",
                     VAL[0] + "_leftImg8bit.png")
  os.remove(img)
  with pytest.raises(FileNotFoundError,
                     match=re.escape(f"Missing image: {img}")):
    cityscapes.reader(copy, "val")
  os.remove(_json(copy, "val"))
  with pytest.raises(FileNotFoundError, match=re.escape(
      "Missing annotation file: " + _json(copy, "val"))):
    cityscapes.reader(copy, "val")


def test_unknown_category_ids(copy):
  path = _json(copy, "val")
  _edit_json(path, lambda d: d["annotations"][0]["segments_info"][0].update(
      category_id=34))
  with pytest.raises(ValueError, match="cityscapes_panoptic_val.json: "
                     "segment 7 of frankfurt_000001_000042 has category_id "
                     "34, not a cityscapes category"):
    cityscapes.reader(copy, "val")
  _edit_json(path, lambda d: d["categories"].append(
      {"id": 4, "name": "static", "isthing": 0}))
  with pytest.raises(ValueError, match="cityscapes_panoptic_val.json: "
                     "category id 4 is not a cityscapes category"):
    cityscapes.reader(copy, "val")


def test_png_segment_missing_from_json(copy):
  _edit_json(_json(copy), lambda d: d["annotations"][0].update(
      segments_info=[s for s in d["annotations"][0]["segments_info"]
                     if s["id"] != 24001]))
  r = cityscapes.reader(copy, "train")
  with pytest.raises(ValueError, match="aachen_000000_000019_gtFine_panoptic"
                     r".png: segment ids in the PNG \[7, 23, 26, 24001"):
    r.annotation(r.videos()[1][19])
  np.testing.assert_array_equal(r.annotation(r.videos()[2][19]).panoptic,
                                expected_panoptic(TRAIN[1]))


def test_size_mismatch(copy):
  png = os.path.join(copy, "gtFine/cityscapes_panoptic_val",
                     VAL[0] + "_gtFine_panoptic.png")
  Image.fromarray(np.zeros((H // 2, W, 3), np.uint8)).save(png)
  r = cityscapes.reader(copy, "val")
  frame = r.videos()[1][0]
  with pytest.raises(ValueError, match=re.escape(
      f"{png}: size (32, 128) differs from the image size (64, 128)")):
    r.annotation(frame)
  _edit_json(_json(copy, "val"), lambda d: d["images"][0].update(width=100))
  r = cityscapes.reader(copy, "val")
  with pytest.raises(ValueError, match=r"frankfurt_000001_000042_leftImg8bit"
                     r".png: size \(64, 128\) differs from the JSON"):
    r.read_image(r.videos()[1][0])


def test_bad_image_ids(copy):
  _edit_json(_json(copy, "val"), lambda d: d["images"][0].update(
      id="frankfurt_42"))
  with pytest.raises(ValueError, match="image id 'frankfurt_42' is not"):
    cityscapes.reader(copy, "val")

  def unknown_annotation(data):
    data["images"][0]["id"] = VAL[0]
    data["annotations"][0]["image_id"] = "frankfurt_x"

  _edit_json(_json(copy, "val"), unknown_annotation)
  with pytest.raises(ValueError, match="unknown image_id 'frankfurt_x'"):
    cityscapes.reader(copy, "val")
  _edit_json(_json(copy, "val"), lambda d: d["annotations"].clear())
  with pytest.raises(ValueError, match="images without annotation"):
    cityscapes.reader(copy, "val")
  with pytest.raises(ValueError, match="cannot be frame 20"):
    cityscapes.snippet_ids("aachen_000000_000018", "x.json")


# --- Training input ---------------------------------------------------------


def _config(root):
  config = cityscapes_config.get_config()
  config.dataset.data_dir = root
  config.input.crop_size = (64, 128)
  config.input.max_instances = 8
  config.input.flow = "dis"
  return config


def _load_config(choice):
  """configs/cityscapes.py[:choice] as main.py's --config flag loads it."""
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, flag_values=flag_values)
  path = cityscapes_config.__file__ + (f":{choice}" if choice else "")
  flag_values(["main.py", f"--config={path}"])
  return flag_values.config


@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")
@pytest.mark.parametrize("choice", [None, "release", "paper"])
def test_config_choices(choice):
  config = _load_config(choice)
  run.validate(config, check_devices=False)
  assert (config.dataset.name, config.variant, config.tracker,
          tuple(config.eval.ks), config.input.flow) == (
              "cityscapes", "fuse", "none", (0,), "dis")
  assert (tuple(config.input.crop_size), tuple(config.input.scale_range),
          config.input.flip_probability, config.input.size_divisor,
          config.input.crop_retries) == ((800, 1600), (0.8, 1.5), 0.5, 32, 10)
  assert (config.per_device_batch_size, config.base_learning_rate,
          config.learning_rate_batch, config.warmup_steps,
          config.warmup_ratio, config.grad_clip_norm, config.momentum,
          config.weight_decay) == (1, 0.005, 8, 500, 1 / 3, 35.0, 0.9, 1e-4)
  schedule = (tuple(config.input.ref_offsets), config.num_epochs,
              tuple(config.lr_decay_epochs), config.epoch_repeats)
  if choice == "paper":
    assert schedule == ((-5, -4, -3, -2, -1, 1, 2, 3, 4, 5), 144, (96, 128),
                        1)
  else:  # The release's configs/cityscapes/fuse.py.
    assert schedule == ((-1, 1), 24, (16, 22), 8)
  assert input_lib.train_config(config, 1).crop_retries == 10


def test_config_unknown_choice_raises():
  with pytest.raises(ValueError, match=r"'papper'.*\('release', 'paper'\)"):
    cityscapes_config.get_config("papper")


def test_training_pairs_through_train_input(root, tmp_path):
  config = _config(root)
  source, index = sources.open_split(config, str(tmp_path), "train")
  assert len(source) == 60 and int(index.annotated.sum()) == 2
  assert sources.meta(config) is metadata.CITYSCAPES
  assert input_lib.num_train_pairs(index, config) == 2
  batch = next(input_lib.train_batches(source, index, config, 1))
  annotated = {(int(v), int(f)): bool(a) for v, f, a in zip(
      index.video_ids, index.frame_indices, index.annotated)}
  videos = batch["video_id"].reshape(-1)
  targets = batch["frame_index"].reshape(-1)
  refs = batch["ref_frame_index"].reshape(-1)
  assert set(videos.tolist()) <= {1, 2}
  for v, t, r in zip(videos.tolist(), targets.tolist(), refs.tolist()):
    assert t == 20 and annotated[(v, t)]
    assert abs(r - t) == 1 and not annotated[(v, r)]  # The release's.
  assert batch["image"].shape[-3:] == (64, 128, 3)
  assert batch["flow"].shape[-3:] == (64, 128, 2)
  assert batch["gt_valid"].any()
  # The val split of the same folder (no sequence frames) opens too.
  val, val_index = sources.open_split(config, str(tmp_path), "val")
  assert val.image_ids == [VAL[0]] and val_index.frame_indices.tolist() == [20]


def test_missing_folder_gives_the_download_instructions(tmp_path):
  config = _config(str(tmp_path / "missing"))
  with pytest.raises(ValueError) as e:
    sources.open_split(config, str(tmp_path), "train")
  message = str(e.value)
  assert "is not a cityscapes folder" in message
  assert "leftImg8bit_trainvaltest.zip" in message
  assert "CITYSCAPES_DATASET=ROOT csCreatePanopticImgs" in message


def test_training_without_the_sequence_folder_says_so(copy, tmp_path):
  shutil.rmtree(os.path.join(copy, "leftImg8bit_sequence"))
  config = _config(copy)
  with pytest.raises(ValueError, match="has no leftImg8bit_sequence/train"):
    sources.open_split(config, str(tmp_path), "train")
  config.input.ref_offsets = (0,)  # The target as its own reference.
  source, index = sources.open_split(config, str(tmp_path), "train")
  assert len(source) == 2 and index.annotated.all()


def test_evaluation_split_keeps_only_the_reference_frame(copy):
  _write_split(copy, "val", VAL, with_sequence=True)
  frames = cityscapes.reader(copy, "val").videos()[1]
  city, seq, frame = cityscapes.parse_image_id(VAL[0], "test")
  assert [(f.image_id, f.frame_index, f.annotated) for f in frames] == [
      (f"{city}_{seq}_{frame - 1:06d}", 19, False), (VAL[0], 20, True)]
