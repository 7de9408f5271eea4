"""STQ (`eval.stq`) against the NumPy reference written from deeplab2's
definition, on generated folders in each layout; hand cases for deeplab2's
quirks (predicted void, crowd, tube weighting); the command line and its
errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from eval import stq
from tests.eval import stq_reference
from tests.eval import test_vpq
from tests.eval import test_vpq_protocols
from tests.eval import vpq_testdata

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
CATS = vpq_testdata.CATEGORIES
C = stq.KITTI_STEP_NUM_CLASSES
VOID = stq.KITTI_STEP_VOID


def _assert_close(result, ref):
  """`result` (percent) equals the reference (fractions) everywhere."""
  for key in ("stq", "aq", "iou"):
    assert result[key] == pytest.approx(100 * ref[key], abs=1e-9), key
  assert list(result["per_sequence"]) == list(ref["per_sequence"])
  for seq, v in ref["per_sequence"].items():
    for key in ("stq", "aq", "iou"):
      want = None if v[key] is None else pytest.approx(100 * v[key], abs=1e-9)
      assert result["per_sequence"][seq][key] == want, (seq, key)


# ------------------------------------------------------------- KITTI-STEP


def _kitti_sequence(rng, num_frames=4, h=20, w=28):
  """Frames of (sem, inst, pred_sem, pred_inst) with stuff bands, moving
  things (11, 13), crowd, void, and a prediction with id switches, class
  errors, instance-less things and predicted void."""
  frames = []
  objs = []
  for n in range(int(rng.integers(2, 6))):
    objs.append({"cls": int(rng.choice(stq.KITTI_STEP_THINGS)),
                 "inst": 0 if rng.random() < 0.2 else n + 1,
                 "x": int(rng.integers(-4, w)), "y": int(rng.integers(0, h)),
                 "vx": int(rng.integers(-3, 4)), "w": int(rng.integers(2, 9)),
                 "h": int(rng.integers(2, 8)),
                 "switch": int(rng.integers(1, num_frames + 3)),
                 "pcls": int(rng.choice((11, 13, 5))) if rng.random() < 0.3
                 else None, "pinst0": rng.random() < 0.2})
  bands = rng.permutation(11)[:3]
  cut = np.sort(rng.integers(2, h - 2, 2))
  for t in range(num_frames):
    sem = np.empty((h, w), np.int64)
    sem[:cut[0]], sem[cut[0]:cut[1]], sem[cut[1]:] = bands
    inst = np.zeros((h, w), np.int64)
    psem, pinst = sem.copy(), inst.copy()
    psem[cut[1] - 1] = bands[1]  # a shifted boundary
    for o in objs:
      x = o["x"] + o["vx"] * t
      sl = (slice(max(o["y"], 0), o["y"] + o["h"]),
            slice(max(x, 0), max(x + o["w"], 0)))
      sem[sl], inst[sl] = o["cls"], o["inst"]
      pcls = o["pcls"] if o["pcls"] is not None else o["cls"]
      psem[sl] = pcls
      pid = 0 if o["pinst0"] else o["inst"] + 1 + 50 * (t >= o["switch"])
      pinst[sl] = pid if pcls in stq.KITTI_STEP_THINGS else 0
    if rng.random() < 0.6:
      y, x = rng.integers(0, h), rng.integers(0, w)
      sem[y:y + 4, x:x + 5], inst[y:y + 4, x:x + 5] = VOID, 0
    if rng.random() < 0.5:
      y, x = rng.integers(0, h), rng.integers(0, w)
      psem[y:y + 3, x:x + 3], pinst[y:y + 3, x:x + 3] = VOID, 0
    frames.append((sem, inst, psem, pinst))
  return frames


def _kitti_png(sem, inst):
  return np.stack([sem, inst // 256, inst % 256], -1).astype(np.uint8)


def write_kitti(root, sequences):
  """Writes {seq: frames} as KITTI-STEP PNGs; returns (gt_dir, pred_dir)."""
  gt_dir, pred_dir = root / "gt", root / "pred"
  for seq, frames in sequences.items():
    os.makedirs(gt_dir / seq, exist_ok=True)
    os.makedirs(pred_dir / seq, exist_ok=True)
    for t, (sem, inst, psem, pinst) in enumerate(frames):
      Image.fromarray(_kitti_png(sem, inst)).save(gt_dir / seq / f"{t:06d}.png")
      Image.fromarray(_kitti_png(psem, pinst)).save(
          pred_dir / seq / f"{t:06d}.png")
  return str(gt_dir), str(pred_dir)


@pytest.fixture(scope="module")
def kitti_folder(tmp_path_factory):
  rng = np.random.default_rng(0)
  sequences = {f"{s:04d}": _kitti_sequence(rng, int(rng.integers(1, 6)))
               for s in range(4)}
  return sequences, write_kitti(tmp_path_factory.mktemp("kitti"), sequences)


def test_kitti_step_matches_reference(kitti_folder):
  sequences, (gt_dir, pred_dir) = kitti_folder
  ref = stq_reference.reference_stq(sequences, C, stq.KITTI_STEP_THINGS, VOID)
  # The data exercise what they should: imperfect, with tubes and void.
  assert 0.2 < ref["aq"] < 0.95 and 0.2 < ref["iou"] < 0.95
  result = stq.evaluate_folder("kitti_step", gt_dir, pred_dir)
  _assert_close(result, ref)
  assert result["num_frames"] == sum(len(f) for f in sequences.values())


def test_kitti_step_cli(kitti_folder, tmp_path):
  sequences, (gt_dir, pred_dir) = kitti_folder
  out = tmp_path / "stq.json"
  proc = subprocess.run(
      [sys.executable, "-m", "eval.stq", "--protocol", "kitti_step",
       "--gt_dir", gt_dir, "--pred_dir", pred_dir, "--output", str(out)],
      cwd=ROOT, capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stderr
  result = json.loads(out.read_text())
  assert {"protocol", "stq", "aq", "iou", "per_sequence"} <= set(result)
  assert result["protocol"] == "kitti_step"
  assert set(result["per_sequence"]["0000"]) == {"stq", "aq", "iou"}
  _assert_close(result, stq_reference.reference_stq(
      sequences, C, stq.KITTI_STEP_THINGS, VOID))


def test_perfect_prediction_scores_100(tmp_path):
  rng = np.random.default_rng(3)
  seqs = {"0001": [(s, i, s, i) for s, i, _, _ in _kitti_sequence(rng, 3)]}
  result = stq.evaluate_folder("kitti_step", *write_kitti(tmp_path, seqs))
  assert result["stq"] == pytest.approx(100.0)
  assert result["aq"] == pytest.approx(100.0)
  assert result["iou"] == pytest.approx(100.0)


def _hand(tmp_path, sequences):
  return stq.evaluate_folder("kitti_step", *write_kitti(tmp_path, sequences))


def test_predicted_void_enters_the_iou_as_a_class(tmp_path):
  # 10 road pixels, 2 predicted void: road IoU 0.8, and the void column
  # (union 2, IoU 0) counts as a class: mean 0.4, not 0.8 (deeplab2's quirk).
  sem = np.zeros((2, 5), np.int64)
  psem = sem.copy()
  psem[0, :2] = VOID
  z = np.zeros_like(sem)
  # A void ground-truth pixel predicted as road changes nothing.
  sem2, psem2 = sem.copy(), psem.copy()
  sem2[1, 4] = VOID
  r = _hand(tmp_path, {"0000": [(sem2, z, psem2, z)]})
  assert r["iou"] == pytest.approx(100 * (7 / 9) / 2)
  r = _hand(tmp_path / "b", {"0000": [(sem, z, psem, z)]})
  assert r["iou"] == pytest.approx(40.0)
  assert r["aq"] == 0.0 and r["stq"] == 0.0  # no tube: AQ 0


def test_crowd_pixels_leave_both_tubes(tmp_path):
  # A car (id 1) of 4 pixels, a car crowd (id 0) of 4 pixels; the prediction
  # covers both with one car tube (id 7): |p| = 4 (the crowd part left out),
  # so AQ = 1, although the predicted segment has 8 pixels.
  sem = np.full((1, 10), 0, np.int64)
  inst = np.zeros_like(sem)
  sem[0, :8] = 13
  inst[0, :4] = 1
  psem = sem.copy()
  pinst = np.where(psem == 13, 7, 0)
  r = _hand(tmp_path, {"0000": [(sem, inst, psem, pinst)]})
  assert r["aq"] == pytest.approx(100.0)
  # Predicted car pixels on road do count in |p|: 4 / (4 + 2) = 2/3.
  psem2, pinst2 = psem.copy(), pinst.copy()
  psem2[0, 8:] = 13
  pinst2[0, 8:] = 7
  r = _hand(tmp_path / "b", {"0000": [(sem, inst, psem2, pinst2)]})
  assert r["aq"] == pytest.approx(100 * 4 / 6)


def test_aq_weights_every_tube_equally_over_sequences(tmp_path):
  # Sequence a: one tube, found (AQ 1); sequence b: three tubes, all missed
  # (AQ 0). Overall AQ = 1 / 4, not the mean of the sequences (1 / 2).
  a_sem = np.array([[13, 13, 0, 0]])
  a_inst = np.array([[1, 1, 0, 0]])
  b_sem = np.array([[11, 11, 13, 13, 11, 11, 0]])
  b_inst = np.array([[1, 1, 2, 2, 3, 3, 0]])
  r = _hand(tmp_path, {
      "a": [(a_sem, a_inst, a_sem, a_inst)],
      "b": [(b_sem, b_inst, np.zeros_like(b_sem), np.zeros_like(b_inst))]})
  assert r["aq"] == pytest.approx(25.0)
  assert r["per_sequence"]["a"]["aq"] == pytest.approx(100.0)
  assert r["per_sequence"]["b"]["aq"] == 0.0


def test_tubes_span_the_frames_of_a_sequence(tmp_path):
  # One car over two frames; the prediction switches its id in frame 2:
  # each predicted tube covers half the gt tube: AQ = 2 * (2 * 2/4) / 4.
  sem = np.array([[13, 13, 0]])
  inst = np.array([[1, 1, 0]])
  frames = [(sem, inst, sem, inst), (sem, inst, sem, inst * 2)]
  r = _hand(tmp_path, {"0000": frames})
  assert r["aq"] == pytest.approx(50.0)


# ----------------------------------------------------------- JSON layouts


def _labels(frame, categories=CATS):
  """A `Frame` as the reference's (sem, inst, pred_sem, pred_inst)."""
  pos = {c["id"]: i for i, c in enumerate(categories)}
  thing = {c["id"]: bool(c["isthing"]) for c in categories}
  out = []
  for ids, segs, pred in ((frame.gt, frame.gt_segments, False),
                          (frame.pred, frame.pred_segments, True)):
    sem = np.full(ids.shape, len(categories), np.int64)
    inst = np.zeros(ids.shape, np.int64)
    for s in segs:
      m = ids == s["id"]
      sem[m] = pos[s["category_id"]]
      if thing[s["category_id"]] and (pred or not s.get("iscrowd", 0)):
        inst[m] = s["id"]
    out += [sem, inst]
  return tuple(out)


def _reference_of(videos, seq_ids):
  return stq_reference.reference_stq(
      {s: [_labels(f) for f in v] for s, v in zip(seq_ids, videos)},
      len(CATS), [i for i, c in enumerate(CATS) if c["isthing"]],
      len(CATS))


@pytest.mark.parametrize("protocol", ["cityscapes_vps", "viper"])
def test_cityscapes_layout_matches_reference(tmp_path, protocol):
  rng = np.random.default_rng(5)
  videos = [vpq_testdata.random_video(rng, num_frames=int(rng.integers(2, 5)),
                                      name=f"{v:04d}") for v in range(3)]
  gt_json, gt_dir, pred_dir = test_vpq.write_layout(tmp_path, videos)
  result = stq.evaluate_folder(protocol, gt_dir, pred_dir, gt_json)
  ref = _reference_of(videos, [f"{v:04d}" for v in range(3)])
  assert 0.1 < ref["aq"] < 0.95
  _assert_close(result, ref)


def test_vipseg_layout_matches_reference(tmp_path):
  rng = np.random.default_rng(6)
  videos = [vpq_testdata.random_video(rng, num_frames=3) for _ in range(2)]
  paths = test_vpq_protocols.write_vipseg(tmp_path, videos, shuffle_pred=True)
  result = stq.evaluate_folder("vipseg", paths[1], paths[2], paths[0])
  _assert_close(result, _reference_of(videos, ["01_video", "02_video"]))


# ------------------------------------------------------------------ errors


def test_bad_inputs_name_the_file(kitti_folder, tmp_path):
  sequences, _ = kitti_folder
  gt_dir, pred_dir = write_kitti(tmp_path, {"0000": sequences["0000"]})
  os.remove(os.path.join(pred_dir, "0000", "000000.png"))
  with pytest.raises(FileNotFoundError, match="0000/000000.png"):
    stq.evaluate_folder("kitti_step", gt_dir, pred_dir)

  sem = np.full((2, 2), 30, np.int64)  # not a train id, not void
  gt_dir, pred_dir = write_kitti(tmp_path / "b", {
      "0000": [(sem, sem * 0, sem * 0, sem * 0)]})
  with pytest.raises(stq.VPQInputError, match=r"gt/0000/000000.png: "
                     r"semantic id 30"):
    stq.evaluate_folder("kitti_step", gt_dir, pred_dir)

  rng = np.random.default_rng(1)
  video = vpq_testdata.random_video(rng, num_frames=2)
  gt_json, gt_dir, pred_dir = test_vpq.write_layout(tmp_path / "c", [video])
  pred = json.loads(open(os.path.join(pred_dir, "pred.json")).read())
  pred["annotations"][1]["segments_info"].pop()
  with open(os.path.join(pred_dir, "pred.json"), "w") as f:
    json.dump(pred, f)
  with pytest.raises(stq.VPQInputError,
                     match=r"pan_pred/0001_0001.png: prediction segment id"):
    stq.evaluate_folder("cityscapes_vps", gt_dir, pred_dir, gt_json)


@pytest.mark.parametrize("args,message", [
    (["--protocol", "kitti_step", "--gt_json", "x.json"], "--gt_json"),
    (["--protocol", "viper"], "--gt_json"),
    (["--protocol", "step"], "invalid choice"),
])
def test_cli_usage_errors(args, message, tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "eval.stq", "--gt_dir", str(tmp_path),
       "--pred_dir", str(tmp_path)] + args,
      cwd=ROOT, capture_output=True, text=True, check=False)
  assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_cli_reports_missing_folder(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "eval.stq", "--protocol", "kitti_step",
       "--gt_dir", str(tmp_path / "none"), "--pred_dir", str(tmp_path)],
      cwd=ROOT, capture_output=True, text=True, check=False)
  assert proc.returncode == 2
  assert "ground-truth folder not found" in proc.stderr
