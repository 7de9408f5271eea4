"""The VIPSeg and KITTI-STEP readers, their configs and prediction layouts
on tiny generated folders (`benchmark_folders`)."""
import json
import os
import shutil

import numpy as np
from PIL import Image
import pytest

from configs import kitti_step as kitti_config
from configs import vipseg as vipseg_config
from data_pipeline import kitti_step
from data_pipeline import metadata
from data_pipeline import pipeline
from data_pipeline import sources
from data_pipeline import vipseg
from tests.data_pipeline import benchmark_folders as folders
from vpsnet_jax.errors import ConfigError
from vpsnet_jax.inference import panoptic
from vpsnet_jax.inference import run
from vpsnet_jax.inference import writers

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation:DeprecationWarning")

VIPSEG_CATS = metadata.VIPSEG.coco_categories()


@pytest.fixture(scope="module")
def vipseg_root(tmp_path_factory):
  return folders.write_vipseg(str(tmp_path_factory.mktemp("vipseg")),
                              VIPSEG_CATS)


@pytest.fixture(scope="module")
def kitti_root(tmp_path_factory):
  return folders.write_kitti_step(str(tmp_path_factory.mktemp("kitti")))


def _copy(root, tmp_path):
  dst = str(tmp_path / "copy")
  shutil.copytree(root, dst)
  return dst


# --- VIPSeg -----------------------------------------------------------------


def test_vipseg_frames_in_json_order(vipseg_root):
  r = vipseg.reader(vipseg_root, "val")
  videos = r.videos()
  assert list(videos) == [1, 2]
  first = videos[1]
  assert [f.frame_index for f in first] == list(range(1, 9))
  assert [f.image_id for f in first] == [
      f"12_street/{folders.vipseg_frame_name(i)}" for i in range(1, 9)]
  assert first[0].image_path == os.path.join(vipseg_root, "images",
                                             "12_street", "00000001.jpg")
  assert all(f.annotated and (f.height, f.width) == (folders.H, folders.W)
             for fs in videos.values() for f in fs)
  assert [f.image_id for f in videos[2]] == ["3_room/00000001",
                                             "3_room/00000006"]
  with Image.open(first[0].image_path) as im:
    np.testing.assert_array_equal(r.read_image(first[0]), np.asarray(im))


def test_vipseg_tracks_survive_absence_and_are_per_video(vipseg_root):
  r = vipseg.reader(vipseg_root, "val")
  # First appearance, then segment id: the person (0x0b0c0d) first.
  assert r.track_ids(1) == {folders.PERSON_ID: 1, folders.CAR_ID: 2}
  assert r.track_ids(2) == {folders.CAR_ID: 1}
  for vid, frames in r.videos().items():
    video = frames[0].image_id.split("/")[0]
    for f in frames:
      ids, cats = folders.vipseg_frame(video, f.frame_index)
      tracks = r.track_ids(vid)
      expected = np.full(ids.shape, -1, np.int32)
      for sid, cat in cats.items():
        expected[ids == sid] = cat * 1000 + tracks.get(sid, 0)
      ann = r.annotation(f)
      np.testing.assert_array_equal(ann.panoptic, expected)
      person = [s for s in ann.segments if s["category_id"] == folders.PERSON]
      assert (len(person) == 1) == (video == "12_street" and
                                    f.frame_index not in (4, 5))
      assert all(s["iscrowd"] == 0 for s in ann.segments)


def _edit_json(root, fn):
  path = os.path.join(root, "panoptic_gt_VIPSeg_val.json")
  with open(path) as f:
    data = json.load(f)
  fn(data)
  with open(path, "w") as f:
    json.dump(data, f)
  return path


def _flip_thing(data):
  data["categories"][CAR_INDEX]["isthing"] = 0


CAR_INDEX = [c["id"] for c in VIPSEG_CATS].index(folders.CAR)


@pytest.mark.parametrize("change, error, message", [
    (lambda root: _edit_json(root, _flip_thing), ValueError,
     "category 48 has isthing=0"),
    (lambda root: _edit_json(root, lambda d: d["annotations"][0][
        "annotations"].pop(2)), ValueError,
     "image 00000011 of video 12_street has no annotation"),
    (lambda root: _edit_json(root, lambda d: d["annotations"][0][
        "annotations"][0]["segments_info"][0].update(category_id=124)),
     ValueError, "unknown category_id 124"),
    (lambda root: os.remove(os.path.join(root, "images", "3_room",
                                         "00000006.jpg")),
     FileNotFoundError, "images/3_room/00000006.jpg"),
    (lambda root: os.remove(os.path.join(root, "panomasksRGB", "12_street",
                                         "00000001.png")),
     FileNotFoundError, "panomasksRGB/12_street/00000001.png"),
    (lambda root: _edit_json(root, lambda d: d.pop("videos")), ValueError,
     "missing list 'videos'"),
])
def test_vipseg_bad_folders_name_the_file(vipseg_root, tmp_path, change,
                                          error, message):
  root = _copy(vipseg_root, tmp_path)
  change(root)
  with pytest.raises(error, match=message):
    vipseg.reader(root, "val")


# --- KITTI-STEP -------------------------------------------------------------


def test_kitti_step_frames_and_labels(kitti_root):
  r = kitti_step.reader(kitti_root, "val")
  videos = r.videos()
  assert list(videos) == [0, 3]
  assert [f.image_id for f in videos[0]] == ["0000/000000", "0000/000001",
                                             "0000/000002"]
  assert [f.frame_index for f in videos[3]] == [1, 2]
  for frames in videos.values():
    for f in frames:
      sem, inst = folders.kitti_frame(f.frame_index - 1)
      expected = np.where(sem == 255, -1, sem * 1000 + inst)
      ann = r.annotation(f)
      np.testing.assert_array_equal(ann.panoptic, expected)
      by_id = {s["id"]: s for s in ann.segments}
      assert by_id[13005]["instance_id"] == 5 and not by_id[13005]["iscrowd"]
      assert by_id[13000]["iscrowd"] == 1  # thing pixels, no instance
      assert by_id[12000]["iscrowd"] == 0  # rider is stuff here
      assert (11002 in by_id) == (f.frame_index != 2)
  np.testing.assert_array_equal(
      r.read_image(videos[0][0]), folders.image("val/0000/0"))


def _write_label(root, seq, frame, sem, inst):
  Image.fromarray(folders.kitti_png(sem, inst)).save(
      os.path.join(root, "panoptic_maps", "val", seq, frame))


def _label_with(change):
  def fn(root):
    sem, inst = folders.kitti_frame(0)
    change(sem, inst)
    _write_label(root, "0003", "000001.png", sem, inst)
  return fn


def _set(a, value, rows=slice(0, 1), cols=slice(0, 1)):
  a[rows, cols] = value


@pytest.mark.parametrize("change, at_read, error, message", [
    (lambda root: os.remove(os.path.join(root, "images", "val", "0003",
                                         "000001.png")), False,
     FileNotFoundError, "images/val/0003/000001.png"),
    (lambda root: os.remove(os.path.join(root, "panoptic_maps", "val", "0000",
                                         "000002.png")), False,
     FileNotFoundError, "panoptic_maps/val/0000/000002.png"),
    (lambda root: os.rename(os.path.join(root, "images", "val", "0003"),
                            os.path.join(root, "images", "val", "3")), False,
     ValueError, "4 digits"),
    (lambda root: shutil.copy(
        os.path.join(root, "images", "val", "0000", "000000.png"),
        os.path.join(root, "images", "val", "0000", "frame.png")), False,
     ValueError, "0000/frame.png: frames are 6-digit"),
    (_label_with(lambda s, i: _set(s, 19)), True, ValueError,
     "0003/000001.png: semantic id 19"),
    (_label_with(lambda s, i: _set(i, 3)), True, ValueError,
     "0003/000001.png: class 10 has instance id 3"),
    (_label_with(lambda s, i: _set(i, 1000, slice(6, 7), slice(2, 3))), True,
     ValueError, "instance id 1000 is not below 1000"),
])
def test_kitti_step_bad_folders_name_the_file(kitti_root, tmp_path, change,
                                              at_read, error, message):
  root = _copy(kitti_root, tmp_path)
  change(root)
  with pytest.raises(error, match=message):
    r = kitti_step.reader(root, "val")
    if at_read:
      for frames in r.videos().values():
        for f in frames:
          r.annotation(f)


# --- Configs, the pipeline, the prediction layouts --------------------------


def _config(module, root):
  config = module.get_config()
  config.dataset.data_dir = root
  return config


@pytest.mark.parametrize("name", ["vipseg", "kitti_step"])
def test_configs_feed_the_training_pipeline(name, vipseg_root, kitti_root,
                                            tmp_path):
  module, root = {"vipseg": (vipseg_config, vipseg_root),
                  "kitti_step": (kitti_config, kitti_root)}[name]
  config = _config(module, root)
  source, index = sources.open_split(config, str(tmp_path), "train")
  reader = source.reader
  assert reader.meta is sources.meta(config)
  frames = [f for fs in reader.videos().values() for f in fs]
  assert source.image_ids == [f.image_id for f in frames]
  cfg = pipeline.TrainConfig(
      crop_size=(folders.H, folders.W), max_instances=4,
      ref_offsets=tuple(config.input.ref_offsets), per_device_batch=1,
      scale_range=(1.0, 1.0), flip_probability=0.0, seed=0)
  ds = pipeline.train_dataset(source, index, cfg, process_index=0,
                              process_count=1, local_devices=1, num_epochs=1)
  batches = list(ds.as_numpy_iterator())
  assert len(batches) == len(frames)  # Every frame has a neighbour.
  lookup = {(f.video_id, f.frame_index): f for f in frames}
  for b in batches:
    frame = lookup[(int(b["video_id"][0, 0]), int(b["frame_index"][0, 0]))]
    assert abs(int(b["frame_index"][0, 0]) -
               int(b["ref_frame_index"][0, 0])) == 1
    semantic = reader.annotation(frame).semantic.astype(np.int32)
    np.testing.assert_array_equal(
        b["semantic"][0, 0][:folders.H, :folders.W], semantic)


def test_protocol_must_read_the_datasets_layout(vipseg_root):
  config = _config(vipseg_config, vipseg_root)
  config.eval.protocol = "cityscapes_vps"
  with pytest.raises(ConfigError, match="does not evaluate vipseg.*'vipseg'"):
    sources.check_protocol(config)
  config = _config(kitti_config, vipseg_root)
  config.eval.protocol = "vipseg"
  with pytest.raises(ConfigError, match="does not evaluate kitti_step"):
    sources.check_protocol(config)
  config.eval.protocol = "stq"
  with pytest.raises(ConfigError, match="must be one of"):
    sources.check_protocol(config)


def _write_perfect(reader, out_dir, layout):
  """The ground truth written as a prediction through `PredictionWriter`,
  segments as `inference.panoptic.segments` makes them."""
  writer = writers.PredictionWriter(out_dir, layout=layout,
                                    flush_seconds=None)
  for frames in reader.videos().values():
    for f in frames:
      ann = reader.annotation(f)
      ids = np.zeros(ann.panoptic.shape, np.int64)
      table = []
      for s in ann.segments:
        sid = panoptic.segment_id(s["category_id"], s["instance_id"])
        ids[ann.panoptic == s["id"]] = sid
        table.append({"id": sid, "category_id": s["category_id"],
                      "isthing": bool(reader.meta.by_id[
                          s["category_id"]].isthing),
                      "track_id": s["instance_id"], "area": s["area"]})
      writer.write(f.image_id, ids, table)
  writer.close()


def test_vipseg_prediction_layout_scores_100(vipseg_root, tmp_path, capsys):
  config = _config(vipseg_config, vipseg_root)
  reader = vipseg.reader(vipseg_root, "val")
  pred_dir = str(tmp_path / "predictions")
  _write_perfect(reader, pred_dir, "vipseg")
  with open(os.path.join(pred_dir, "pred.json")) as f:
    pred = json.load(f)
  assert [v["video_id"] for v in pred["annotations"]] == ["12_street",
                                                          "3_room"]
  assert pred["annotations"][1]["annotations"][0]["image_id"] == "00000001"
  assert os.path.isfile(os.path.join(pred_dir, "pan_pred", "3_room",
                                     "00000006.png"))
  gt_json, gt_dir = reader.evaluation_ground_truth(str(tmp_path))
  assert gt_dir == os.path.join(vipseg_root, "panomasksRGB")
  result = run.score_predictions(config, str(tmp_path), gt_json, gt_dir,
                                 pred_dir, progress=False)
  assert result["protocol"] == "vipseg"
  assert list(result["k"]) == ["1", "2", "4", "6", "8"]
  assert result["vpq"]["all"] == pytest.approx(100.0)
  assert result["stq"]["stq"] == pytest.approx(100.0)
  assert os.path.isfile(tmp_path / "vpq.json")
  assert "VPQ written to" in capsys.readouterr().out


def test_kitti_step_prediction_layout_scores_100(kitti_root, tmp_path,
                                                 capsys):
  config = _config(kitti_config, kitti_root)
  reader = kitti_step.reader(kitti_root, "val")
  pred_dir = str(tmp_path / "predictions")
  _write_perfect(reader, pred_dir, "kitti_step")
  # The written PNGs are the ground truth's pixels, in its encoding.
  for seq, n in folders.KITTI_SEQUENCES.items():
    for f in range(n):
      name = os.path.join(seq, f"{f:06d}.png")
      with Image.open(os.path.join(pred_dir, "pan_pred", name)) as im:
        np.testing.assert_array_equal(
            np.asarray(im), folders.kitti_png(*folders.kitti_frame(f)))
  gt_json, gt_dir = reader.evaluation_ground_truth(str(tmp_path))
  assert gt_json is None
  result = run.score_predictions(config, str(tmp_path), gt_json, gt_dir,
                                 pred_dir, progress=False)
  assert result["vpq"] is None and result["k"] == {}
  assert result["stq"]["protocol"] == "kitti_step"
  assert result["stq"]["stq"] == pytest.approx(100.0)
  assert sorted(result["stq"]["per_sequence"]) == ["0000", "0003"]
  assert not os.path.exists(tmp_path / "vpq.json")
  assert os.path.isfile(tmp_path / "stq.json")
  assert "no VPQ (KITTI-STEP is scored by STQ)" in capsys.readouterr().out


def test_kitti_step_encoding_of_segments():
  ids = np.array([[0, panoptic.segment_id(13, 300)],
                  [panoptic.segment_id(0, 0), panoptic.segment_id(12, 4)]])
  table = [
      {"id": int(ids[0, 1]), "category_id": 13, "isthing": True,
       "track_id": 300},
      {"id": int(ids[1, 0]), "category_id": 0, "isthing": False,
       "track_id": 0},
      # A stuff segment's track id never reaches the instance channels.
      {"id": int(ids[1, 1]), "category_id": 12, "isthing": False,
       "track_id": 4}]
  rgb = writers.kitti_step_png(ids, table)
  np.testing.assert_array_equal(rgb, [[[255, 0, 0], [13, 1, 44]],
                                      [[0, 0, 0], [12, 0, 0]]])
  with pytest.raises(ValueError, match="track id 70000"):
    writers.kitti_step_png(ids, [dict(table[0], track_id=70000)])


def test_layouts_need_video_and_frame_in_the_image_id(tmp_path):
  writer = writers.PredictionWriter(str(tmp_path), layout="vipseg")
  with pytest.raises(ValueError, match="names frames <video>/<frame>"):
    writer.write("0001_0001_x", np.zeros((2, 2), np.int64), [])
  writer.close()
  writer = writers.PredictionWriter(str(tmp_path))
  with pytest.raises(ValueError, match="without '/'"):
    writer.write("a/b", np.zeros((2, 2), np.int64), [])
  writer.close()
  with pytest.raises(ValueError, match="prediction layout must be one of"):
    writers.PredictionWriter(str(tmp_path), layout="coco")


def test_a_new_writer_removes_an_earlier_runs_nested_pngs(tmp_path):
  writer = writers.PredictionWriter(str(tmp_path), layout="vipseg")
  writer.write("v/0001", np.zeros((2, 2), np.int64), [])
  writer.close()
  assert os.path.isfile(tmp_path / "pan_pred" / "v" / "0001.png")
  keep = tmp_path / "pan_pred" / "v" / "notes.txt"
  keep.write_text("mine")
  writers.PredictionWriter(str(tmp_path), layout="vipseg").close()
  assert not os.path.exists(tmp_path / "pan_pred" / "v" / "0001.png")
  assert keep.read_text() == "mine"


# --- `--mode=evaluate`'s path with a (random) tiny model --------------------


@pytest.mark.slow  # Compiles a tiny model per dataset (about 20 s each).
@pytest.mark.parametrize("name", ["kitti_step", "vipseg"])
def test_evaluate_writes_the_benchmark_layout_and_scores_it(
    name, vipseg_root, kitti_root, tmp_path):
  import jax  # pylint: disable=g-import-not-at-top
  from eval import stq  # pylint: disable=g-import-not-at-top
  from tests import vps_tiny  # pylint: disable=g-import-not-at-top
  from vpsnet_jax.train import tasks  # pylint: disable=g-import-not-at-top
  module, root = {"vipseg": (vipseg_config, vipseg_root),
                  "kitti_step": (kitti_config, kitti_root)}[name]
  config = _config(module, root)
  config.variant, config.tracker = "track", "track_head"
  vps_tiny.override(config, {
      k: v for k, v in vps_tiny.OVERRIDES.items()
      if k.startswith(("model.", "inference."))})
  config.input.crop_size = (32, 32)
  config.model.panoptic_score_threshold = 0.0
  meta = sources.meta(config)
  variables = jax.device_get(jax.jit(tasks.create_task(config, meta).init)(
      jax.random.PRNGKey(0)))
  workdir = str(tmp_path / "work")
  result = run.evaluate(config, workdir, variables=variables, step=0,
                        progress=False)
  reader = sources.open_split(config, workdir, "val")[0].reader
  frames = [f for fs in reader.videos().values() for f in fs]
  pred_dir = os.path.join(workdir, "predictions")
  for f in frames:
    assert os.path.isfile(os.path.join(pred_dir, "pan_pred",
                                       f.image_id + ".png"))
  assert result["inference"]["written"] == len(frames)
  # The scores are those of the evaluators run on the written folder.
  gt_json, gt_dir = reader.evaluation_ground_truth(workdir)
  stq_pred = (os.path.join(pred_dir, "pan_pred") if name == "kitti_step"
              else pred_dir)
  again = stq.evaluate_folder(name, gt_dir, stq_pred, gt_json)
  assert result["stq"] == again
  with open(os.path.join(workdir, "stq.json")) as f:
    assert json.load(f) == again
  if name == "kitti_step":
    assert result["vpq"] is None
  else:
    from eval import vpq  # pylint: disable=g-import-not-at-top
    assert vpq.evaluate_folder(gt_json, gt_dir, pred_dir,
                               protocol="vipseg")["vpq"] == result["vpq"]
