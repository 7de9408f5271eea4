"""Online inference with a (random) tiny VPSNet: two videos in lockstep
streams under pmap give the same predictions as one device; one compile
for every frame of a size; prediction on a folder of frames writes the
panoptic PNGs, pred.json with track ids and a GIF/MP4; evaluation writes
the predictions and their VPQ."""
import json
import os

import cv2
import jax
import numpy as np
from PIL import Image
import pytest

from data_pipeline import metadata
from data_pipeline import sources
from data_pipeline import synthetic
from eval import common
from tests import vps_tiny
from vpsnet_jax import experiment
from vpsnet_jax.inference import online
from vpsnet_jax.inference import run
from vpsnet_jax.modeling import vpsnet
from vpsnet_jax.train import tasks

META = metadata.SYNTHETIC


def _config():
  # A low detection threshold so that the random model detects things and
  # the tracker and fusion have work to do.
  return vps_tiny.config(dataset__synthetic__num_val_videos=2,
                         model__panoptic_score_threshold=0.2)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("online")
  config = _config()
  task = tasks.create_task(config, META)
  variables = jax.device_get(jax.jit(task.init)(jax.random.PRNGKey(0)))
  source, index = sources.open_split(config, str(root), "val")
  return root, config, variables, source, index


def _predict(setup, devices, name):
  root, config, variables, source, index = setup
  model = online.FrameModel(
      vpsnet.VPSNet(experiment.model_config(config, META)), variables,
      devices=devices)
  out = str(root / name)
  stats = online.predict_videos(config, model, source, index,
                                source.image_ids, out, META, progress=False)
  return model, out, stats


@pytest.mark.slow  # Compiles and runs inference on 60 frames twice.
def test_pmap_streams_match_one_device_and_compile_once(setup):
  devices = jax.local_devices()
  one, out1, stats1 = _predict(setup, devices[:1], "one")
  two, out2, stats2 = _predict(setup, devices[:2], "two")
  assert one.compiles == 1 and two.compiles == 1
  assert stats1["frames"] == stats2["frames"] == 60
  assert stats1["written"] == stats2["written"] == 12
  assert {"model", "tracker", "fusion", "write", "input"} <= set(stats1)
  pred1 = json.load(open(os.path.join(out1, "pred.json")))
  pred2 = json.load(open(os.path.join(out2, "pred.json")))
  by_id = lambda p: {a["image_id"]: a for a in p["annotations"]}
  assert by_id(pred1) == by_id(pred2)
  things = 0
  for name, ann in by_id(pred1).items():
    a = np.asarray(Image.open(os.path.join(out1, "pan_pred", name + ".png")))
    b = np.asarray(Image.open(os.path.join(out2, "pan_pred", name + ".png")))
    np.testing.assert_array_equal(a, b)
    ids = common.rgb_to_ids(a)
    table = {s["id"] for s in ann["segments_info"]}
    assert set(np.unique(ids[ids > 0]).tolist()) == table
    things += sum(s["isthing"] for s in ann["segments_info"])
  assert things > 0  # The tracker and the fusion really had instances.


@pytest.mark.slow  # Compiles the tiny VPSNet's inference.
def test_predict_on_a_folder_of_frames(setup, tmp_path):
  _, config, variables, _, _ = setup
  frames_dir = tmp_path / "frames"
  frames_dir.mkdir()
  video = synthetic.generate_video(
      synthetic.SyntheticConfig(height=64, width=128), 3, "val", 0)
  for i in range(5):
    Image.fromarray(video.frames[i]).save(frames_dir / f"clip_{i:03d}.png")
  config = _config()
  config.predict.frames_dir = str(frames_dir)
  config.input.flow = "dis"
  result = run.predict(config, str(tmp_path / "work"), variables=variables,
                       progress=False)
  out = result["out_dir"]
  assert out == str(tmp_path / "work" / "predict")
  names = sorted(os.listdir(os.path.join(out, "pan_pred")))
  assert names == [f"clip_{i:03d}.png" for i in range(5)]
  pred = json.load(open(os.path.join(out, "pred.json")))
  assert [a["image_id"] for a in pred["annotations"]] == [
      f"clip_{i:03d}" for i in range(5)]
  for seg in pred["annotations"][2]["segments_info"]:
    assert {"id", "category_id", "isthing", "track_id", "area"} <= set(seg)
  gif, mp4 = result["videos"]
  with Image.open(gif) as g:
    assert g.n_frames == 5 and g.size == (128, 64)
  cap = cv2.VideoCapture(mp4)
  count = 0
  while cap.read()[0]:
    count += 1
  assert count == 5


def test_predict_errors(tmp_path):
  variables = {}  # Every error comes before the model is built.
  config = _config()
  with pytest.raises(ValueError, match="needs --config.predict.frames_dir"):
    run.predict(config, str(tmp_path), variables=variables)
  config.predict.frames_dir = str(tmp_path / "missing")
  config.input.flow = "dis"
  with pytest.raises(ValueError, match="is not a folder"):
    run.predict(config, str(tmp_path), variables=variables)
  (tmp_path / "empty").mkdir()
  config.predict.frames_dir = str(tmp_path / "empty")
  with pytest.raises(ValueError, match="has no frames"):
    run.predict(config, str(tmp_path), variables=variables)
  config.input.flow = "ground_truth"
  with pytest.raises(ValueError, match="use --config.input.flow=dis"):
    run.predict(config, str(tmp_path), variables=variables)
