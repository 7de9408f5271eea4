"""The README's first quick-start command, on a tiny synthetic dataset."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_main_example_mode_writes_predictions_and_vpq(tmp_path):
  proc = subprocess.run(
      [sys.executable, "main.py", "--config=configs/synthetic.py",
       f"--workdir={tmp_path}", "--mode=example",
       "--config.dataset.synthetic.height=64",
       "--config.dataset.synthetic.width=128",
       "--config.dataset.synthetic.num_train_videos=1",
       "--config.dataset.synthetic.num_val_videos=1"],
      cwd=ROOT, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads((tmp_path / "vpq.json").read_text())
  assert set(result["k"]) == {"0", "5", "10", "15"}
  # Stuff is copied from the ground truth; things are corrupted, and more so
  # over longer windows (identity switches).
  assert result["k"]["0"]["stuff"] == 100.0
  assert result["k"]["0"]["things"] < 100.0
  assert result["k"]["15"]["things"] <= result["k"]["0"]["things"]
  assert (tmp_path / "data" / "panoptic_gt_val_city_vps.json").exists()
  assert len(os.listdir(tmp_path / "predictions" / "pan_pred")) == 6
  assert "VPQ (mean over k = 0, 5, 10, 15)" in proc.stdout


def test_main_rejects_unknown_config_field(tmp_path):
  proc = subprocess.run(
      [sys.executable, "main.py", "--config=configs/synthetic.py",
       f"--workdir={tmp_path}", "--config.no_such_field=1"],
      cwd=ROOT, capture_output=True, text=True)
  assert proc.returncode != 0
  assert "no_such_field" in proc.stderr


@pytest.mark.parametrize("mode,message", [
    ("predict", "needs --config.predict.frames_dir"),
    ("evaluate", "No checkpoint in"),
])
def test_inference_modes_explain_what_is_missing(tmp_path, mode, message):
  proc = subprocess.run(
      [sys.executable, "main.py", "--config=configs/synthetic.py",
       f"--workdir={tmp_path}", f"--mode={mode}",
       "--config.dataset.synthetic.height=64",
       "--config.dataset.synthetic.width=128",
       "--config.dataset.synthetic.num_train_videos=1",
       "--config.dataset.synthetic.num_val_videos=1"],
      cwd=ROOT, capture_output=True, text=True)
  assert proc.returncode != 0
  assert message in proc.stderr, proc.stderr[-2000:]
