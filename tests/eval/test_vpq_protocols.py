"""The VIPER and VIPSeg VPQ protocols: against the NumPy reference written
from the official scripts, hand cases for the size threshold and the excluded
class, windows at video ends, the VIPSeg folder layout, the command line and
its errors."""

import dataclasses
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from eval import protocols
from eval import vpq
from eval.common import Frame
from tests.eval import vpq_reference
from tests.eval import vpq_testdata

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
CATS = vpq_testdata.CATEGORIES
BARRIER = {"id": 11, "name": "mobilebarrier", "isthing": 0}


def _stats(result, k):
  return {int(c): (s["iou"], s["tp"], s["fp"], s["fn"])
          for c, s in result["k"][str(k)]["classes"].items()}


def _assert_matches_reference(result, videos, ks, stride, min_gt_area,
                              excluded, categories=CATS):
  tuples = [vpq_testdata.as_tuples(v) for v in videos]
  ref = vpq_reference.reference_stats(tuples, ks, stride, min_gt_area)
  for k in ks:
    ours = _stats(result, k)
    for cat in categories:
      r_iou, r_tp, r_fp, r_fn = ref[k].get(cat["id"], [0.0, 0, 0, 0])
      o_iou, o_tp, o_fp, o_fn = ours[cat["id"]]
      assert (o_tp, o_fp, o_fn) == (r_tp, r_fp, r_fn), (k, cat)
      assert o_iou == pytest.approx(r_iou, abs=1e-9), (k, cat)
  ref_vpq = vpq_reference.reference_vpq(tuples, categories, ks, stride,
                                        min_gt_area, excluded)
  for g in ("all", "things", "stuff"):
    assert result["vpq"][g] == pytest.approx(ref_vpq["vpq"][g], abs=1e-9)
    for k in ks:
      assert result["k"][str(k)][g] == pytest.approx(ref_vpq["k"][k][g],
                                                     abs=1e-9)


def _random_videos(seed, num_videos=4, min_frames=1, max_frames=8):
  rng = np.random.default_rng(seed)
  return [vpq_testdata.random_video(
      rng, num_frames=int(rng.integers(min_frames, max_frames + 1)),
      num_objects=int(rng.integers(0, 9)), rgb=bool(seed % 2),
      name=f"{v:04d}") for v in range(num_videos)]


@pytest.mark.parametrize("seed", range(8))
def test_viper_rules_match_reference_on_random_videos(seed):
  # The VIPER protocol's rules at thresholds that fit 24 x 32 frames (tubes
  # of 4 to 1,000 pixels), with car (4) as the excluded class.
  min_gt_area = (30, 80, 200, 600)[seed % 4]
  protocol = dataclasses.replace(protocols.get("viper"),
                                 min_gt_area=min_gt_area,
                                 excluded_categories=(4,))
  ks = (1, 2, 3, 5)
  videos = _random_videos(seed)
  result = vpq.evaluate(videos, CATS, ks, protocol=protocol)
  assert result["protocol"] == "viper"
  _assert_matches_reference(result, videos, ks, None, min_gt_area, (4,))


def test_random_videos_have_small_and_large_tubes():
  """Each threshold really splits the random tubes over the windows (the
  comparison above would prove nothing if every tube were on one side)."""
  for seed in range(8):
    min_gt_area = (30, 80, 200, 600)[seed % 4]
    small = large = 0
    for video in _random_videos(seed):
      for n in (1, 2, 3, 5):
        for start in range(len(video) - n + 1):
          area = {}
          for f in video[start:start + n]:
            for seg in f.gt_segments:
              area[seg["id"]] = area.get(seg["id"], 0) + seg["area"]
          small += sum(a < min_gt_area for a in area.values())
          large += sum(a >= min_gt_area for a in area.values())
    assert small >= 5 and large >= 5, (seed, small, large)


@pytest.mark.parametrize("seed", range(4))
def test_vipseg_windows_match_reference(seed):
  videos = _random_videos(seed, min_frames=1, max_frames=10)
  result = vpq.evaluate(videos, CATS, protocol="vipseg")
  assert result["protocol"] == "vipseg"
  assert list(result["k"]) == ["1", "2", "4", "6", "8"]
  _assert_matches_reference(result, videos, (1, 2, 4, 6, 8), None, 0, ())


def _scene(num_frames, size=60, car=10, barrier=True, crowd_car=False,
           name="0001"):
  """Perfectly predicted road and a `car` x `car` car; optionally a
  1,200-pixel "mobilebarrier" (category 11) predicted as half of itself."""
  frames = []
  for t in range(num_frames):
    gt = np.full((size, size), 7)
    pred = np.full((size, size), 70)
    gt_segs = [{"id": 7, "category_id": 0}]
    pred_segs = [{"id": 70, "category_id": 0}]
    if barrier:
      gt[:20] = 5
      pred[:20] = 0
      pred[:10] = 50
      gt_segs.append({"id": 5, "category_id": 11})
      pred_segs.append({"id": 50, "category_id": 11})
    o = size - car - 5
    gt[o:o + car, o:o + car] = 9
    pred[o:o + car, o:o + car] = 90
    gt_segs.append({"id": 9, "category_id": 4, "iscrowd": int(crowd_car)})
    pred_segs.append({"id": 90, "category_id": 4})
    frames.append(Frame(f"{name}_{t:04d}", gt, gt_segs, pred, pred_segs))
  return frames


def test_viper_size_threshold_and_excluded_class_hand_computed():
  result = vpq.evaluate([_scene(15)], CATS + [BARRIER], protocol="viper")
  assert list(result["k"]) == ["1", "5", "10", "15"]
  # The car has 100 px a frame: under 32 * 32 over windows of 1, 5 and 10
  # frames it is skipped (no TP, no FN) and its perfect prediction is a
  # false positive; over 15 frames (1,500 px) it is matched.
  for k, windows in (("1", 15), ("5", 11), ("10", 6)):
    car = result["k"][k]["classes"]["4"]
    assert (car["tp"], car["fp"], car["fn"]) == (0, windows, 0), k
    # Road perfect; the car class counted with PQ 0; the barrier left out.
    assert result["k"][k]["classes"]["0"]["tp"] == windows
    assert result["k"][k]["all"] == pytest.approx(50), k
    assert result["k"][k]["things"] == pytest.approx(0), k
    assert result["k"][k]["stuff"] == pytest.approx(100), k
  car = result["k"]["15"]["classes"]["4"]
  assert (car["tp"], car["fp"], car["fn"]) == (1, 0, 0)
  assert result["k"]["15"]["all"] == pytest.approx(100)
  assert result["vpq"]["all"] == pytest.approx((50 + 50 + 50 + 100) / 4)
  # The barrier's own figures are reported: IoU 600 / 1200 = 0.5 is no
  # match, so one FN and one FP a window.
  barrier = result["k"]["1"]["classes"]["11"]
  assert (barrier["tp"], barrier["fp"], barrier["fn"]) == (0, 15, 15)
  # The same numbers from the reference written from the release's code.
  _assert_matches_reference(result, [_scene(15)], (1, 5, 10, 15), None,
                            32 * 32, (11,), CATS + [BARRIER])
  # Under the Cityscapes-VPS rules (no threshold, nothing excluded) the car
  # is matched in every window and the barrier counts.
  plain = vpq.evaluate([_scene(15)], CATS + [BARRIER], (0,), 5)
  assert plain["k"]["0"]["classes"]["4"]["tp"] == 15
  assert plain["k"]["0"]["stuff"] == pytest.approx(50)


def test_small_crowd_still_excuses_predictions():
  # A 100-px crowd of cars under a car prediction: the release checks the
  # crowd flag before the size, so the crowd excuses the prediction ...
  crowd = vpq.evaluate([_scene(1, barrier=False, crowd_car=True)], CATS,
                       protocol="viper")
  car = crowd["k"]["1"]["classes"]["4"]
  assert (car["tp"], car["fp"], car["fn"]) == (0, 0, 0)
  # ... while a small car that is not a crowd does not.
  single = vpq.evaluate([_scene(1, barrier=False)], CATS, protocol="viper")
  car = single["k"]["1"]["classes"]["4"]
  assert (car["tp"], car["fp"], car["fn"]) == (0, 1, 0)


def test_viper_windows_stay_inside_videos():
  # Videos of 3 and 6 frames: k = 5 has windows [0, 5) and [1, 6) of the
  # second video only; k = 1 has every frame.
  videos = [_scene(3, car=40, barrier=False, name="0001"),
            _scene(6, car=40, barrier=False, name="0002")]
  result = vpq.evaluate(videos, CATS, protocol="viper")
  assert result["k"]["1"]["classes"]["4"]["tp"] == 9
  assert result["k"]["5"]["classes"]["4"]["tp"] == 2
  assert result["k"]["10"]["classes"]["4"]["tp"] == 0
  assert result["k"]["10"]["all"] == 0.0


def test_protocol_settings_and_overrides():
  assert protocols.get("cityscapes_vps").ks == (0, 5, 10, 15)
  viper = protocols.get("viper")
  assert (viper.ks, viper.min_gt_area, viper.excluded_categories) == (
      (1, 5, 10, 15), 1024, (11,))
  assert protocols.get("vipseg").ks == (1, 2, 4, 6, 8)
  assert vpq.resolve_protocol("viper", ks=(2, 3)).window_frames(3) == 3
  assert vpq.resolve_protocol("cityscapes_vps", ks=(0, 6),
                              stride=3).window_frames(6) == 3
  with pytest.raises(ValueError, match="k=5 must be a non-negative multiple"):
    vpq.resolve_protocol("cityscapes_vps", stride=3)
  with pytest.raises(ValueError, match="--stride does not apply"):
    vpq.resolve_protocol("viper", stride=5)
  with pytest.raises(ValueError, match="at least 1"):
    vpq.resolve_protocol("vipseg", ks=(0,))
  with pytest.raises(ValueError, match="unknown VPQ protocol"):
    vpq.resolve_protocol("kitti")


# ------------------------------------------------------- the VIPSeg layout


def write_vipseg(root, videos, categories=CATS, shuffle_pred=False):
  """Writes videos of `Frame`s in VIPSeg's layout and JSON schema."""
  gt_dir, pred_dir = root / "panomasksRGB", root / "pred"
  gt = {"videos": [], "annotations": [], "categories": categories}
  pred = {"annotations": []}
  for v, video in enumerate(videos):
    vid = f"{v + 1:02d}_video"
    os.makedirs(gt_dir / vid, exist_ok=True)
    os.makedirs(pred_dir / "pan_pred" / vid, exist_ok=True)
    images, gt_anns, pred_anns = [], [], []
    for t, f in enumerate(video):
      image_id, file_name = f"{t:08d}", f"{t:08d}.png"
      gt_rgb = f.gt if f.gt.ndim == 3 else vpq_testdata.to_rgb(f.gt)
      pred_rgb = f.pred if f.pred.ndim == 3 else vpq_testdata.to_rgb(f.pred)
      Image.fromarray(gt_rgb).save(gt_dir / vid / file_name)
      Image.fromarray(pred_rgb).save(pred_dir / "pan_pred" / vid / file_name)
      images.append({"id": image_id, "file_name": file_name,
                     "height": gt_rgb.shape[0], "width": gt_rgb.shape[1]})
      gt_anns.append({"image_id": image_id, "file_name": file_name,
                      "segments_info": list(f.gt_segments)})
      pred_anns.append({"image_id": image_id, "file_name": file_name,
                        "segments_info": list(f.pred_segments)})
    if shuffle_pred:
      random.Random(v).shuffle(pred_anns)
    gt["videos"].append({"video_id": vid, "images": images})
    gt["annotations"].append({"video_id": vid, "annotations": gt_anns})
    pred["annotations"].append({"video_id": vid, "annotations": pred_anns})
  os.makedirs(pred_dir, exist_ok=True)
  gt_json = root / "panoptic_gt_VIPSeg_val.json"
  gt_json.write_text(json.dumps(gt))
  (pred_dir / "pred.json").write_text(json.dumps(pred))
  return str(gt_json), str(gt_dir), str(pred_dir)


@pytest.fixture(scope="module")
def vipseg_folder(tmp_path_factory):
  videos = _random_videos(11, num_videos=3, min_frames=3, max_frames=9)
  root = tmp_path_factory.mktemp("vipseg")
  return videos, write_vipseg(root, videos, shuffle_pred=True)


def test_vipseg_folder_matches_arrays(vipseg_folder):
  videos, paths = vipseg_folder
  # The predictions are listed out of order: paired by image id.
  from_folder = vpq.evaluate_folder(*paths, protocol="vipseg")
  assert from_folder == vpq.evaluate(videos, CATS, protocol="vipseg")
  _assert_matches_reference(from_folder, videos, (1, 2, 4, 6, 8), None, 0,
                            ())


def test_vipseg_cli(vipseg_folder, tmp_path):
  videos, (gt_json, gt_dir, pred_dir) = vipseg_folder
  out = tmp_path / "out.json"
  proc = subprocess.run(
      [sys.executable, "-m", "eval.vpq", "--protocol", "vipseg", "--gt_json",
       gt_json, "--gt_dir", gt_dir, "--pred_dir", pred_dir, "--output",
       str(out)], capture_output=True, text=True, check=True, cwd=ROOT)
  result = json.loads(out.read_text())
  assert set(result) == {"vpq", "k", "protocol"}
  assert result["protocol"] == "vipseg"
  assert list(result["k"]) == ["1", "2", "4", "6", "8"]
  assert result == json.loads(json.dumps(
      vpq.evaluate(videos, CATS, protocol="vipseg")))
  assert "k = 8" in proc.stdout


def _edit_json(path, fn):
  obj = json.loads(open(path).read())
  fn(obj)
  with open(path, "w") as f:
    json.dump(obj, f)


def test_vipseg_layout_errors(tmp_path):
  videos = _random_videos(3, num_videos=2, min_frames=2, max_frames=3)

  def fresh(name):
    root = tmp_path / name
    os.makedirs(root)
    return write_vipseg(root, videos)

  # A frame's prediction without an image id.
  gt_json, gt_dir, pred_dir = fresh("no_image_id")
  _edit_json(os.path.join(pred_dir, "pred.json"),
             lambda p: p["annotations"][0]["annotations"][1].pop("image_id"))
  with pytest.raises(vpq.VPQInputError, match=r"missing key\(s\) \['image_id"):
    vpq.evaluate_folder(gt_json, gt_dir, pred_dir, protocol="vipseg")

  # A ground-truth frame without a prediction, and a video without any.
  gt_json, gt_dir, pred_dir = fresh("missing_frame")
  _edit_json(os.path.join(pred_dir, "pred.json"),
             lambda p: p["annotations"][1]["annotations"].pop(0))
  with pytest.raises(vpq.VPQInputError,
                     match="no prediction for image 00000000 of video 02"):
    vpq.evaluate_folder(gt_json, gt_dir, pred_dir, protocol="vipseg")
  _edit_json(os.path.join(pred_dir, "pred.json"),
             lambda p: p["annotations"].pop(1))
  with pytest.raises(vpq.VPQInputError, match="no prediction for video 02"):
    vpq.evaluate_folder(gt_json, gt_dir, pred_dir, protocol="vipseg")

  # A JSON area that is not the PNG's pixel count.
  gt_json, gt_dir, pred_dir = fresh("area")
  _edit_json(gt_json, lambda g: g["annotations"][0]["annotations"][1][
      "segments_info"][0].update(area=1))
  with pytest.raises(vpq.VPQInputError, match="00000001.png: segment .* has "
                     "area 1 in the JSON"):
    vpq.evaluate_folder(gt_json, gt_dir, pred_dir, protocol="vipseg")

  # A missing predicted PNG, named with its video folder.
  gt_json, gt_dir, pred_dir = fresh("png")
  os.remove(os.path.join(pred_dir, "pan_pred", "01_video", "00000001.png"))
  with pytest.raises(FileNotFoundError,
                     match="pan_pred/01_video/00000001.png"):
    vpq.evaluate_folder(gt_json, gt_dir, pred_dir, protocol="vipseg")

  # The Cityscapes-VPS JSON given to the VIPSeg protocol.
  _edit_json(gt_json, lambda g: g.pop("videos"))
  with pytest.raises(vpq.VPQInputError, match=r"missing key\(s\) \['videos"):
    vpq.evaluate_folder(gt_json, gt_dir, pred_dir, protocol="vipseg")


@pytest.mark.parametrize("args, message", [
    (["--protocol", "viper", "--stride", "5"], "--stride does not apply"),
    (["--protocol", "vipseg", "--k", "0"], "at least 1"),
    (["--protocol", "kitti"], "invalid choice"),
    (["--k", "7"], "multiple of the annotation stride"),
])
def test_cli_usage_errors(vipseg_folder, args, message):
  _, (gt_json, gt_dir, pred_dir) = vipseg_folder
  proc = subprocess.run(
      [sys.executable, "-m", "eval.vpq", "--gt_json", gt_json, "--gt_dir",
       gt_dir, "--pred_dir", pred_dir] + args, capture_output=True,
      text=True, cwd=ROOT)
  assert proc.returncode == 2
  assert message in proc.stderr
  assert "Traceback" not in proc.stderr


CONFIGS = sorted(n[:-3] for n in os.listdir(os.path.join(ROOT, "configs"))
                 if n.endswith(".py") and n != "__init__.py")
EXPECTED_PROTOCOL = {"viper": "viper", "vipseg": "vipseg",
                     "kitti_step": "kitti_step"}


def test_every_config_is_checked():
  assert set(EXPECTED_PROTOCOL) < set(CONFIGS) and "default" in CONFIGS


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_evaluates_with_a_valid_protocol(name):
  import importlib  # pylint: disable=g-import-not-at-top
  from data_pipeline import sources  # pylint: disable=g-import-not-at-top
  config = importlib.import_module(f"configs.{name}").get_config()
  expected = EXPECTED_PROTOCOL.get(name, "cityscapes_vps")
  assert config.eval.protocol == expected
  sources.check_protocol(config)  # The dataset's layout is the protocol's.
  if expected == "kitti_step":
    return  # STQ alone: no VPQ windows.
  protocol = vpq.resolve_protocol(config.eval.protocol, config.eval.ks,
                                  config.eval.stride)
  assert protocol.name == expected
  if name == "viper":
    assert protocol.ks == (1, 5, 10, 15) and protocol.min_gt_area == 1024
  if name == "vipseg":
    assert protocol.ks == (1, 2, 4, 6, 8) and protocol.stride is None
