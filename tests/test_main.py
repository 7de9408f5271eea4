"""The README's first quick-start command, on a tiny synthetic dataset."""

import json
import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # main.py in subprocesses.

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
  # STQ beside VPQ, as `python -m eval.stq` scores the same folder.
  from eval import stq  # pylint: disable=g-import-not-at-top
  written = json.loads((tmp_path / "stq.json").read_text())
  direct = stq.evaluate_folder(
      "cityscapes_vps", str(tmp_path / "data" / "val" / "panoptic_video"),
      str(tmp_path / "predictions"),
      str(tmp_path / "data" / "panoptic_gt_val_city_vps.json"))
  assert written == json.loads(json.dumps(direct))
  assert list(written["per_sequence"]) and 0 < written["aq"] < 100


def test_main_rejects_unknown_config_field(tmp_path):
  proc = subprocess.run(
      [sys.executable, "main.py", "--config=configs/synthetic.py",
       f"--workdir={tmp_path}", "--config.no_such_field=1"],
      cwd=ROOT, capture_output=True, text=True)
  assert proc.returncode == 2, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: Unknown config field(s) 'no_such_field'")
  assert "Traceback" not in proc.stderr


def test_main_names_the_nearest_fields_of_a_misspelt_one(tmp_path):
  proc = subprocess.run(
      [sys.executable, "main.py", "--config=configs/synthetic.py",
       f"--workdir={tmp_path}", "--config.model.dept=18"],
      cwd=ROOT, capture_output=True, text=True)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines()[-1].startswith(
      "error: Unknown config field(s) 'model.dept' (did you mean "
      "model.depth")
  assert "Traceback" not in proc.stderr


def test_main_config_errors_are_one_line_unless_verbose(tmp_path):
  command = [sys.executable, "main.py", "--config=configs/synthetic.py",
             f"--workdir={tmp_path}", "--config.variant=fusion"]
  proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
  assert proc.returncode == 2
  # Ours is one line; TensorFlow's C++ start-up log (absl's "WARNING: All
  # log messages before absl::InitializeLog() ..." and glog-style lines
  # such as its oneDNN notice, which TF 2.21 prints even at
  # TF_CPP_MIN_LOG_LEVEL=2) is not ours and is left out.
  native_log = re.compile(r"^(WARNING: All log messages before absl::|"
                          r"[IWE]\d{4} \d\d:\d\d:\d\d)")
  ours = [line for line in proc.stderr.strip().splitlines()
          if not native_log.match(line)]
  assert ours == [
      "error: Unknown config.variant 'fusion'; config.variant must be one "
      "of ['align', 'attend', 'base', 'disjoined', 'fuse', 'fusetrack', "
      "'track']"]
  proc = subprocess.run(command + ["--verbosity=1"], cwd=ROOT,
                        capture_output=True, text=True)
  assert proc.returncode == 2
  assert "Traceback" in proc.stderr and "ConfigError" in proc.stderr


def test_installed_packages_resolve_to_this_checkout(tmp_path):
  """From another folder: eval and data_pipeline are this project's, and
  configs/ is not installed (entry points read it by path)."""
  proc = subprocess.run(
      [sys.executable, "-c",
       "import importlib.util as u, eval, data_pipeline; "
       "print(eval.__file__); print(data_pipeline.__file__); "
       "print(u.find_spec('configs'))"],
      cwd=tmp_path, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr
  eval_file, data_file, configs = proc.stdout.split()
  assert eval_file == os.path.join(ROOT, "eval", "__init__.py")
  assert data_file == os.path.join(ROOT, "data_pipeline", "__init__.py")
  assert configs == "None"


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
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert message in proc.stderr.strip().splitlines()[-1], proc.stderr[-2000:]


@pytest.mark.parametrize("config, protocol", [("vipseg", "cityscapes_vps"),
                                              ("kitti_step", "vipseg")])
def test_a_protocol_that_cannot_read_the_dataset_stops_before_training(
    tmp_path, config, protocol):
  proc = subprocess.run(
      [sys.executable, "main.py", f"--config=configs/{config}.py",
       f"--workdir={tmp_path}", f"--config.eval.protocol={protocol}",
       f"--config.dataset.data_dir={tmp_path / 'none'}"],
      cwd=ROOT, capture_output=True, text=True)
  assert proc.returncode == 2
  assert (f"config.eval.protocol='{protocol}' does not evaluate {config}"
          in proc.stderr)
  assert not os.path.exists(tmp_path / "checkpoints")
