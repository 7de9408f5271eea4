"""The quick start's journey as a user runs it, on data the tests were not
written with: `python -m data_pipeline.synthetic --seed S` writes a dataset,
`python main.py --config=configs/synthetic.py --config.dataset.data_dir=..`
trains the full VPSNet on it (tiny sizes, a few steps), validates, runs
online inference over the validation video and writes its VPQ. Three seeds;
each run is checked for every output the README promises."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from eval import common
from tests import conftest
from tests import vps_tiny

pytestmark = pytest.mark.slow  # main.py in subprocesses, training.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("seed", [777, 4242, 90125])
def test_quick_start_on_data_of_another_seed(tmp_path, subprocess_env, seed):
  data = tmp_path / "data"
  s = vps_tiny.OVERRIDES
  proc = subprocess.run(
      [sys.executable, "-m", "data_pipeline.synthetic", "--out", str(data),
       "--videos", "1", "--val-videos", "1",
       "--height", str(s["dataset.synthetic.height"]),
       "--width", str(s["dataset.synthetic.width"]), "--seed", str(seed)],
      cwd=ROOT, env=subprocess_env, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  workdir = tmp_path / "work"
  proc = subprocess.run(  # main.py's default mode, as in the quick start.
      conftest.tiny_main_command(
          workdir, f"--config.dataset.data_dir={data}",
          "--config.num_train_steps=3", "--config.log_every_steps=1",
          "--config.eval_every_steps=3", "--config.input.num_eval_batches=1"),
      cwd=ROOT, env=subprocess_env, capture_output=True, text=True,
      timeout=1200)
  assert proc.returncode == 0, proc.stderr[-4000:]
  out = json.loads(proc.stdout[proc.stdout.rindex("\n{") + 1:])
  assert out["step"] == 3 and np.isfinite(out["train"]["loss"])
  assert 0.0 <= out["eval"]["eval_semantic_miou"] <= 100.0
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3"]
  assert not os.path.exists(workdir / "data")  # The given data was used.

  vpq = json.loads((workdir / "vpq.json").read_text())
  assert out["vpq"] == vpq["vpq"]
  assert set(vpq["k"]) == {"0", "5", "10", "15"}
  for group in ("all", "things", "stuff"):
    assert 0.0 <= vpq["vpq"][group] <= 100.0
  gt = json.loads((data / "panoptic_gt_val_city_vps.json").read_text())
  names = sorted(a["image_id"] for a in gt["annotations"])
  pred = json.loads((workdir / "predictions" / "pred.json").read_text())
  assert sorted(a["image_id"] for a in pred["annotations"]) == names
  assert sorted(os.listdir(workdir / "predictions" / "pan_pred")) == [
      n + ".png" for n in names]
  categories = {c["id"] for c in gt["categories"]}
  for a in pred["annotations"]:
    ids = common.rgb_to_ids(np.asarray(Image.open(
        workdir / "predictions" / "pan_pred" / a["file_name"])))
    listed = {seg["id"] for seg in a["segments_info"]}
    assert set(np.unique(ids)) - {0} == listed, a["image_id"]
    assert {seg["category_id"] for seg in a["segments_info"]} <= categories
  assert "VPQ (mean over k = 0, 5, 10, 15)" in proc.stdout
