"""benchmarks/accelerator_check.sh as CI runs it (--cpu, tiny sizes): it
runs every stage (tests, train step, online inference, VPQ evaluator),
writes its JSON and ends with the `gpu_train_images_per_s=` line."""
import json
import math
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow  # About 3 minutes: a train step and inference compile.
def test_cpu_run_writes_every_stage(tmp_path, subprocess_env):
  out = tmp_path / "check.json"
  proc = subprocess.run(
      ["bash", "benchmarks/accelerator_check.sh", "--cpu", "--out",
       str(out)], cwd=ROOT, env=subprocess_env, capture_output=True,
      text=True, timeout=800, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  last = proc.stdout.strip().splitlines()[-1]
  assert last == "gpu_train_images_per_s=nan", last  # No GPU here.
  report = json.loads(out.read_text())
  assert report["mode"] == "cpu-tiny"
  assert report["devices"]["backend"] == "cpu"
  assert report["tests"]["returncode"] == 0
  assert report["tests"]["passed"] == 3 and not report["tests"]["failures"]
  (train,) = report["train"]
  assert "error" not in train, train
  assert (train["variant"], train["dtype"], train["batch"]) == (
      "fusetrack", "bfloat16", 1)
  assert train["images_per_s"] > 0 and math.isfinite(train["loss"])
  assert "error" not in report["inference"], report["inference"]
  assert report["inference"]["fps"] > 0
  assert report["inference"]["frames"] == 4
  assert report["vpq"]["returncode"] == 0
  assert report["vpq"]["seconds_end_to_end"] > 0
  assert report["skipped"] == []
  assert "fusetrack" in proc.stdout and "VPQ evaluator" in proc.stdout
