"""Round trips of tiny folders through the tensorflow-datasets builders."""
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_pipeline import cityscapes_vps
from data_pipeline import kitti_step
from data_pipeline import metadata
from data_pipeline import synthetic
from data_pipeline import tfds_builders
from data_pipeline import viper
from data_pipeline import vipseg
from tests.data_pipeline import benchmark_folders
from tests.data_pipeline import tiny_folders as tiny

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation:DeprecationWarning")


def _prepare(builder_cls, data_dir, manual_dir=None, **kwargs):
  builder = builder_cls(data_dir=data_dir, **kwargs)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def _examples(builder, split):
  out = {}
  for ex in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)):
    out[ex["image_id"].decode()] = ex
  return out


@pytest.fixture(scope="module")
def city(tmp_path_factory):
  base = tmp_path_factory.mktemp("city_tfds")
  root = tiny.write_cityscapes_vps(str(base / "raw"))
  return root, _prepare(tfds_builders.CityscapesVps, str(base / "tfds"), root,
                        config="full")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
  base = tmp_path_factory.mktemp("synth_tfds")
  return _prepare(tfds_builders.VpsSynthetic, str(base / "tfds"),
                  config="tiny", file_format="array_record")


def _check_against_reader(examples, reader):
  frames = [f for fs in reader.videos().values() for f in fs]
  assert sorted(examples) == sorted(f.image_id for f in frames)
  for f in frames:
    ex = examples[f.image_id]
    assert ex["video_id"] == f.video_id and ex["frame_index"] == f.frame_index
    assert ex["annotated"] == f.annotated
    assert ex["image"].dtype == np.uint8
    np.testing.assert_array_equal(ex["image"], reader.read_image(f))
    assert ex["panoptic"].dtype == np.int32
    assert ex["panoptic"].shape == (f.height, f.width)
    segs = ex["segments"]
    if not f.annotated:
      assert np.all(ex["panoptic"] == -1)
      assert len(segs["id"]) == 0 and segs["bbox"].shape == (0, 4)
      continue
    ann = reader.annotation(f)
    np.testing.assert_array_equal(ex["panoptic"], ann.panoptic)
    assert len(segs["id"]) == len(ann.segments)
    for i, s in enumerate(ann.segments):
      for key in ("id", "category_id", "train_id", "instance_id", "area"):
        assert segs[key][i] == s[key], key
      assert segs["iscrowd"][i] == bool(s["iscrowd"])
      np.testing.assert_array_equal(segs["bbox"][i], s["bbox"])


def test_cityscapes_vps_round_trip(city):
  root, builder = city
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
      "train": 2, "val": 10, "test": 3}
  for split in ("train", "val", "test"):
    _check_against_reader(_examples(builder, split),
                          cityscapes_vps.reader(root, split))


def test_cityscapes_vps_values(city):
  _, builder = city
  train = _examples(builder, "train")
  ex5 = train[tiny.name(1, 5)]
  ex10 = train[tiny.name(1, 10)]
  np.testing.assert_array_equal(ex5["image"], tiny.image(1, 5))
  # The car keeps track id 1 in both frames; the person is track 2.
  assert np.sum(ex5["panoptic"] == 13001) == 6
  assert np.sum(ex10["panoptic"] == 13001) == 6
  assert np.sum(ex10["panoptic"] == 11002) == 3
  assert ex5["panoptic"][0, 0] == -1  # Ignore pixel.
  assert np.all(ex10["panoptic"][5] == -1)
  crowd = list(ex5["segments"]["id"]).index(13000)
  assert ex5["segments"]["iscrowd"][crowd]
  np.testing.assert_array_equal(ex5["segments"]["bbox"][crowd],
                                [6.0, 4.0, 8.0, 6.0])
  val = _examples(builder, "val")
  assert sum(ex["annotated"] for ex in val.values()) == 2
  assert not val[tiny.name(2, 4)]["annotated"]
  np.testing.assert_array_equal(val[tiny.name(2, 4)]["image"],
                                tiny.image(2, 4))
  assert np.sum(val[tiny.name(2, 10)]["panoptic"] == 18002) == 6


def test_viper_round_trip(tmp_path):
  root = tiny.write_viper(str(tmp_path / "raw"))
  builder = _prepare(tfds_builders.Viper, str(tmp_path / "tfds"), root)
  for split in viper.SPLITS:
    _check_against_reader(_examples(builder, split), viper.reader(root, split))


@pytest.mark.parametrize("name", ["vipseg", "kitti_step"])
def test_vipseg_and_kitti_step_round_trip(tmp_path, name):
  raw = str(tmp_path / "raw")
  if name == "vipseg":
    root = benchmark_folders.write_vipseg(
        raw, metadata.VIPSEG.coco_categories())
    builder_cls, module = tfds_builders.Vipseg, vipseg
  else:
    root = benchmark_folders.write_kitti_step(raw)
    builder_cls, module = tfds_builders.KittiStep, kitti_step
  builder = _prepare(builder_cls, str(tmp_path / "tfds"), root)
  for split in module.SPLITS:
    _check_against_reader(_examples(builder, split), module.reader(root, split))


def test_malformed_folder_fails_with_the_readers_error(tmp_path):
  root = tiny.write_cityscapes_vps(str(tmp_path / "raw"))
  os.remove(os.path.join(root, "panoptic_gt_val_city_vps.json"))
  with pytest.raises(FileNotFoundError, match="panoptic_gt_val_city_vps.json"):
    _prepare(tfds_builders.CityscapesVps, str(tmp_path / "tfds"), root,
             config="trainval")


def test_synthetic_round_trip_with_flow(synth):
  cfg = synth.builder_config
  assert {k: v.num_examples for k, v in synth.info.splits.items()} == {
      "train": 60, "val": 30}
  source = synth.as_data_source(split="val")
  examples = {}
  for i in range(len(source)):
    ex = source[i]
    examples[int(ex["frame_index"])] = ex
  assert sorted(examples) == list(range(1, 31))
  video = synthetic.generate_video(
      synthetic.SyntheticConfig(height=cfg.height, width=cfg.width),
      cfg.seed, "val", 0)
  for f, ex in examples.items():
    assert ex["video_id"] == cfg.num_videos + 1
    assert ex["annotated"] == (f % 5 == 0)
    np.testing.assert_array_equal(ex["image"], video.frames[f - 1])
    np.testing.assert_array_equal(ex["flow_layer"], video.layer[f - 1])
    if ex["annotated"]:
      semantic = video.semantic[f - 1].astype(np.int32)
      np.testing.assert_array_equal(ex["panoptic"] // 1000,
                                    np.where(semantic == 255, -1, semantic))
      things = (ex["panoptic"] >= 0) & (ex["panoptic"] % 1000 > 0)
      np.testing.assert_array_equal(
          things, np.isin(video.semantic[f - 1], synthetic.THING_CLASSES))
  for a, b in ((3, 4), (10, 5), (1, 30)):
    flow = tfds_builders.flow_from_offsets(
        examples[a]["flow_layer"], examples[a]["flow_offsets"],
        examples[b]["flow_offsets"])
    expected, _ = synthetic.flow_between(video, a, b)
    np.testing.assert_array_equal(flow, expected)
