"""The VPQ evaluator against a plain NumPy reference, hand-computed cases, the
folder layout, the command line and every promised error."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from eval import confusion
from eval import vpq
from eval.common import Frame
from tests.eval import vpq_reference
from tests.eval import vpq_testdata

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
KS = (0, 5, 10, 15)
CATS = vpq_testdata.CATEGORIES


def _stats_from_result(result, k):
  return {int(c): (s["iou"], s["tp"], s["fp"], s["fn"])
          for c, s in result["k"][str(k)]["classes"].items()}


@pytest.mark.parametrize("seed", range(12))
def test_matches_numpy_reference_on_random_videos(seed):
  rng = np.random.default_rng(seed)
  videos = [vpq_testdata.random_video(
      rng, num_frames=int(rng.integers(1, 8)),
      num_objects=int(rng.integers(0, 9)), rgb=bool(seed % 2),
      name=f"{v:04d}") for v in range(5)]
  ref = vpq_reference.reference_stats(
      [vpq_testdata.as_tuples(v) for v in videos], KS, 5)
  result = vpq.evaluate(videos, CATS, KS, 5)
  for k in KS:
    ours = _stats_from_result(result, k)
    for cat in CATS:
      r_iou, r_tp, r_fp, r_fn = ref[k].get(cat["id"], [0.0, 0, 0, 0])
      o_iou, o_tp, o_fp, o_fn = ours[cat["id"]]
      assert (o_tp, o_fp, o_fn) == (r_tp, r_fp, r_fn), (k, cat)
      assert o_iou == pytest.approx(r_iou, abs=1e-9), (k, cat)
  ref_vpq = vpq_reference.reference_vpq(
      [vpq_testdata.as_tuples(v) for v in videos], CATS, KS, 5)
  for g in ("all", "things", "stuff"):
    assert result["vpq"][g] == pytest.approx(ref_vpq["vpq"][g], abs=1e-9)
    for k in KS:
      assert result["k"][str(k)][g] == pytest.approx(ref_vpq["k"][k][g],
                                                     abs=1e-9)


def test_random_videos_exercise_every_rule():
  """The random data really contains what the reference comparison needs."""
  rng = np.random.default_rng(0)
  seen = {"crowd": 0, "void": 0, "fp": 0, "fn": 0, "tp": 0,
          "cat_change": 0}
  for _ in range(20):
    video = vpq_testdata.random_video(rng, num_frames=6)
    for f in video:
      seen["crowd"] += sum(s["iscrowd"] for s in f.gt_segments)
      seen["void"] += int((f.gt == 0).any())
    cats = {}
    for f in video:
      for s in f.pred_segments:
        if cats.setdefault(s["id"], s["category_id"]) != s["category_id"]:
          seen["cat_change"] += 1
    result = vpq.evaluate([video], CATS, (5,), 5)
    for s in result["k"]["5"]["classes"].values():
      for key in ("tp", "fp", "fn"):
        seen[key] += s[key]
  assert all(n > 0 for n in seen.values()), seen


def _frame(name, gt, gt_segs, pred, pred_segs):
  return Frame(name, np.asarray(gt), gt_segs, np.asarray(pred), pred_segs)


def _car_video(switch_at):
  """3 frames: road (category 0) and one car whose predicted id switches."""
  frames = []
  for t in range(3):
    gt = np.full((4, 6), 7)
    gt[1:3, 1:3] = 9  # car, 4 px per frame
    pred = np.full((4, 6), 70)
    car = 90 if t < switch_at else 91
    pred[1:3, 1:3] = car
    frames.append(_frame(
        f"0001_{t}", gt,
        [{"id": 7, "category_id": 0}, {"id": 9, "category_id": 4}], pred,
        [{"id": 70, "category_id": 0}, {"id": car, "category_id": 4}]))
  return frames


def test_identity_switch_hand_computed():
  result = vpq.evaluate([_car_video(switch_at=2)], CATS, (0, 5, 10), 5)
  # k = 0: every frame is perfect.
  assert result["k"]["0"]["all"] == pytest.approx(100)
  # k = 5: windows [0, 1] perfect; [1, 2]: car tube IoU 4/8 = 0.5 is not a
  # match: one FN, two FPs. Car PQ = 1 / (1 + 1 + 0.5) = 0.4.
  car = result["k"]["5"]["classes"]["4"]
  assert (car["tp"], car["fp"], car["fn"]) == (1, 2, 1)
  assert car["pq"] == pytest.approx(40)
  assert result["k"]["5"]["all"] == pytest.approx(70)
  assert result["k"]["5"]["stuff"] == pytest.approx(100)
  # k = 10: one window; id 90 covers 8 of the car's 12 px: IoU 2/3, matched;
  # id 91 is a FP. Car PQ = (2/3) / 1.5.
  assert result["k"]["10"]["things"] == pytest.approx(100 * 4 / 9)
  assert result["vpq"]["all"] == pytest.approx(
      (100 + 70 + (100 + 400 / 9) / 2) / 3)
  # Category 0 (road) is a real class: it is counted, never void.
  assert result["k"]["0"]["classes"]["0"]["tp"] == 3


def test_void_and_crowd_do_not_count_as_false_positives():
  gt = np.zeros((4, 8), int)
  gt[:, 4:] = 5  # crowd of cars
  gt[:2, :4] = 0  # void
  gt[2:, :4] = 7  # road
  pred = np.zeros((4, 8), int)
  pred[:2, :] = 40  # car: 4 px on void + 4 on crowd, 0 on anything else
  pred[2:, :4] = 70
  pred[2:, 4:] = 41  # car entirely on the crowd
  frame = _frame("0001_0", gt, [
      {"id": 5, "category_id": 4, "iscrowd": 1},
      {"id": 7, "category_id": 0}], pred, [
          {"id": 40, "category_id": 4}, {"id": 70, "category_id": 0},
          {"id": 41, "category_id": 4}])
  result = vpq.evaluate([[frame]], CATS, (0,), 5)
  car = result["k"]["0"]["classes"]["4"]
  assert (car["tp"], car["fp"], car["fn"]) == (0, 0, 0)
  road = result["k"]["0"]["classes"]["0"]
  assert (road["tp"], road["fp"], road["fn"]) == (1, 0, 0)
  # A person on the car crowd is not covered by it: a false positive.
  pred2 = pred.copy()
  frame2 = _frame("0001_0", gt, frame.gt_segments, pred2, [
      {"id": 40, "category_id": 4}, {"id": 70, "category_id": 0},
      {"id": 41, "category_id": 3}])
  result = vpq.evaluate([[frame2]], CATS, (0,), 5)
  assert result["k"]["0"]["classes"]["3"]["fp"] == 1


def test_windows_never_cross_videos_and_short_videos_have_none():
  one = _car_video(switch_at=3)[:1]
  result = vpq.evaluate([one, one], CATS, (0, 5), 5)
  assert result["k"]["0"]["classes"]["4"]["tp"] == 2
  assert all(s["tp"] + s["fp"] + s["fn"] == 0
             for s in result["k"]["5"]["classes"].values())
  assert result["k"]["5"]["all"] == 0.0


def test_one_compile_per_shape_and_bucket():
  confusion.frame_confusion.clear_cache()
  rng = np.random.default_rng(3)
  videos = [vpq_testdata.random_video(rng, num_frames=3, num_objects=n)
            for n in (0, 2, 4, 6)]
  vpq.evaluate(videos, CATS, (0, 5), 5)
  # < 16 segments per video: one bucket, one frame shape, one compile.
  assert confusion.frame_confusion._cache_size() == 1
  vpq.evaluate(videos, CATS, (0, 5), 5)
  assert confusion.frame_confusion._cache_size() == 1


def test_bucket_sizes():
  assert confusion.bucket_size(0) == 16
  assert confusion.bucket_size(15) == 16
  assert confusion.bucket_size(16) == 32
  assert confusion.bucket_size(100) == 128


def test_window_frames():
  assert vpq.window_frames(0, 5) == 1
  assert vpq.window_frames(15, 5) == 4
  with pytest.raises(ValueError, match="multiple"):
    vpq.window_frames(7, 5)


# ---------------------------------------------------------------- errors


def _good_frame():
  return _car_video(switch_at=3)[0]


def _replace(frame, **kw):
  fields = dict(frame.__dict__)
  fields.update(kw)
  return Frame(**fields)


@pytest.mark.parametrize("change, message", [
    (lambda f: _replace(f, pred_segments=f.pred_segments[:1]),
     "prediction segment id 90 is in the PNG but not in the segment table"),
    (lambda f: _replace(f, gt_segments=f.gt_segments[:1]),
     "ground truth segment id 9 is in the PNG but not in the segment table"),
    (lambda f: _replace(f, pred_segments=list(f.pred_segments) + [
        {"id": 5, "category_id": 3}]),
     "prediction segment id 5 is in the segment table .* but not in the PNG"),
    (lambda f: _replace(f, gt_segments=list(f.gt_segments) + [
        {"id": 5, "category_id": 3}]),
     "ground truth segment id 5 is in the segment table .* but not in the PNG"),
    (lambda f: _replace(f, pred_segments=[{"id": 70, "category_id": 0},
                                          {"id": 90, "category_id": 99}]),
     "segment 90 of image 0001_0 has unknown category_id 99"),
    (lambda f: _replace(f, pred=f.pred[:, :5]), r"is \(4, 5\) but"),
    (lambda f: _replace(f, pred_segments=[{"id": 70, "category_id": 0},
                                          {"id": 70, "category_id": 0}]),
     r"ids \[70\] appear twice"),
    (lambda f: _replace(f, pred=f.pred.astype(float)), "must be integers"),
    (lambda f: _replace(f, pred_segments=[{"id": 0, "category_id": 0}]),
     "0 is void"),
])
def test_array_errors(change, message):
  # Two frames so that an id unknown to one frame is known to the video.
  good = _good_frame()
  other = _replace(good, name="0001_1")
  with pytest.raises(vpq.VPQInputError, match=message):
    vpq.evaluate([[change(good), other]], CATS, (0,), 5)


def test_id_known_to_video_but_not_to_frame_is_an_error():
  frames = _car_video(switch_at=1)  # id 91 exists in frames 1 and 2 only.
  bad = _replace(frames[0], pred=np.where(frames[0].pred == 90, 91,
                                          frames[0].pred))
  bad = _replace(bad, pred_segments=[{"id": 70, "category_id": 0},
                                     {"id": 90, "category_id": 4}])
  with pytest.raises(vpq.VPQInputError, match="segment id 91 is in the PNG"):
    vpq.evaluate([[bad] + frames[1:]], CATS, (0,), 5)


# ---------------------------------------------------------- folder layout


def write_layout(root, videos, categories=CATS):
  """Writes videos of `Frame`s in the Cityscapes-VPS evaluation layout."""
  gt_dir, pred_dir = root / "gt", root / "pred"
  os.makedirs(gt_dir, exist_ok=True)
  os.makedirs(pred_dir / "pan_pred", exist_ok=True)
  gt_anns, pred_anns, images = [], [], []
  for video in videos:
    for f in video:
      gt = f.gt if f.gt.ndim == 3 else vpq_testdata.to_rgb(f.gt)
      pred = f.pred if f.pred.ndim == 3 else vpq_testdata.to_rgb(f.pred)
      Image.fromarray(gt).save(gt_dir / f"{f.name}_gt.png")
      Image.fromarray(pred).save(pred_dir / "pan_pred" / f"{f.name}.png")
      images.append({"id": f.name, "file_name": f"{f.name}.png",
                     "height": gt.shape[0], "width": gt.shape[1]})
      gt_anns.append({"image_id": f.name, "file_name": f"{f.name}_gt.png",
                      "segments_info": list(f.gt_segments)})
      pred_anns.append({"image_id": f.name,
                        "segments_info": list(f.pred_segments)})
  gt_json = root / "gt.json"
  gt_json.write_text(json.dumps({"images": images, "annotations": gt_anns,
                                 "categories": categories}))
  (pred_dir / "pred.json").write_text(json.dumps({"annotations": pred_anns}))
  return str(gt_json), str(gt_dir), str(pred_dir)


@pytest.fixture(scope="module")
def random_folder(tmp_path_factory):
  rng = np.random.default_rng(42)
  videos = [vpq_testdata.random_video(rng, num_frames=6, num_objects=5,
                                      name=f"{v:04d}") for v in range(3)]
  root = tmp_path_factory.mktemp("vpq")
  return videos, write_layout(root, videos)


def test_folder_matches_arrays(random_folder):
  videos, (gt_json, gt_dir, pred_dir) = random_folder
  from_folder = vpq.evaluate_folder(gt_json, gt_dir, pred_dir)
  from_arrays = vpq.evaluate(videos, CATS)
  assert from_folder == from_arrays


def test_frames_grouped_by_video_and_ordered_by_image_id(tmp_path):
  # Two videos whose frames are listed out of order and interleaved.
  rng = np.random.default_rng(5)
  a = vpq_testdata.random_video(rng, num_frames=4, name="0002")
  b = vpq_testdata.random_video(rng, num_frames=4, name="0010")
  paths = write_layout(tmp_path, [[b[2], a[1], b[0], a[3], a[0], b[3], b[1],
                                   a[2]]])
  assert vpq.evaluate_folder(*paths) == vpq.evaluate([a, b], CATS)


def test_cli_writes_json_and_prints_table(random_folder, tmp_path):
  videos, (gt_json, gt_dir, pred_dir) = random_folder
  out = tmp_path / "out.json"
  proc = subprocess.run(
      [sys.executable, "-m", "eval.vpq", "--gt_json", gt_json, "--gt_dir",
       gt_dir, "--pred_dir", pred_dir, "--k", "0", "5", "--stride", "5",
       "--output", str(out)], capture_output=True, text=True, check=True,
      cwd=ROOT)
  result = json.loads(out.read_text())
  assert set(result) == {"vpq", "k", "protocol"}
  assert result["protocol"] == "cityscapes_vps"
  assert set(result["vpq"]) == {"all", "things", "stuff"}
  assert set(result["k"]) == {"0", "5"}
  assert set(result["k"]["5"]) == {"all", "things", "stuff", "classes"}
  assert set(result["k"]["0"]["classes"]) == {str(c["id"]) for c in CATS}
  assert set(result["k"]["0"]["classes"]["4"]) == {
      "pq", "sq", "rq", "iou", "tp", "fp", "fn"}
  assert result == json.loads(json.dumps(vpq.evaluate(videos, CATS, (0, 5))))
  assert "k = 5" in proc.stdout and "Things" in proc.stdout
  assert f"All {result['vpq']['all']:.2f}" in proc.stdout


def test_cli_reports_bad_input_without_traceback(random_folder, tmp_path):
  _, (gt_json, gt_dir, _) = random_folder
  proc = subprocess.run(
      [sys.executable, "-m", "eval.vpq", "--gt_json", gt_json, "--gt_dir",
       gt_dir, "--pred_dir", str(tmp_path)], capture_output=True, text=True,
      cwd=ROOT)
  assert proc.returncode == 2
  assert "prediction PNG folder not found" in proc.stderr
  assert "Traceback" not in proc.stderr


def _copy_layout(tmp_path, videos):
  return write_layout(tmp_path, videos)


def test_folder_errors(tmp_path):
  video = _car_video(switch_at=3)
  gt_json, gt_dir, pred_dir = write_layout(tmp_path, [video])

  # A ground-truth frame without a prediction in pred.json.
  pred = json.loads(open(os.path.join(pred_dir, "pred.json")).read())
  pred["annotations"] = pred["annotations"][1:]
  alt = tmp_path / "alt.json"
  alt.write_text(json.dumps(pred))
  with pytest.raises(vpq.VPQInputError, match="no prediction for .* 0001_0"):
    vpq.evaluate_folder(gt_json, gt_dir, pred_dir, pred_json=str(alt))

  # Predictions of frames not in the ground truth are ignored.
  pred = json.loads(open(os.path.join(pred_dir, "pred.json")).read())
  pred["annotations"].append({"image_id": "0009_0", "segments_info": []})
  alt.write_text(json.dumps(pred))
  assert (vpq.evaluate_folder(gt_json, gt_dir, pred_dir, pred_json=str(alt))
          == vpq.evaluate_folder(gt_json, gt_dir, pred_dir))

  # A missing predicted PNG.
  os.rename(os.path.join(pred_dir, "pan_pred", "0001_1.png"),
            tmp_path / "moved.png")
  with pytest.raises(FileNotFoundError, match="predicted PNG of image 0001_1"):
    vpq.evaluate_folder(gt_json, gt_dir, pred_dir)

  # An unreadable PNG.
  with open(os.path.join(pred_dir, "pan_pred", "0001_1.png"), "wb") as f:
    f.write(b"not a png")
  with pytest.raises(vpq.VPQInputError, match="0001_1.png: unreadable PNG"):
    vpq.evaluate_folder(gt_json, gt_dir, pred_dir)

  # A PNG that is not RGB.
  Image.fromarray(np.zeros((4, 6), np.uint8)).save(
      os.path.join(pred_dir, "pan_pred", "0001_1.png"))
  with pytest.raises(vpq.VPQInputError, match="expected an RGB PNG"):
    vpq.evaluate_folder(gt_json, gt_dir, pred_dir)

  # A size mismatch, named with both files.
  Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(
      os.path.join(pred_dir, "pan_pred", "0001_1.png"))
  with pytest.raises(vpq.VPQInputError, match="0001_1.png is .*but ground"):
    vpq.evaluate_folder(gt_json, gt_dir, pred_dir)

  # A missing ground-truth PNG, and a missing JSON.
  os.remove(os.path.join(gt_dir, "0001_2_gt.png"))
  with pytest.raises(FileNotFoundError, match="ground-truth PNG of image"):
    vpq.evaluate_folder(gt_json, gt_dir, pred_dir)
  with pytest.raises(FileNotFoundError, match="ground-truth JSON not found"):
    vpq.evaluate_folder(str(tmp_path / "nope.json"), gt_dir, pred_dir)


def test_folder_error_names_png_file(tmp_path):
  video = _car_video(switch_at=3)
  video[1] = _replace(video[1], pred_segments=video[1].pred_segments[:1])
  paths = write_layout(tmp_path, [video])
  with pytest.raises(vpq.VPQInputError,
                     match=r"pan_pred/0001_1.png: prediction segment id 90"):
    vpq.evaluate_folder(*paths)


def test_rgb_id_encoding_round_trip():
  from eval import common  # pylint: disable=g-import-not-at-top
  ids = np.array([[0, 1, 255], [256, 65536, (1 << 24) - 1]])
  rgb = common.ids_to_rgb(ids)
  assert rgb.dtype == np.uint8
  np.testing.assert_array_equal(rgb[1, 0], [0, 1, 0])
  np.testing.assert_array_equal(common.rgb_to_ids(rgb), ids)
