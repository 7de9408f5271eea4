"""`python main.py --config=configs/synthetic.py` end to end with the full
VPSNet (`fusetrack`) at tiny sizes via --config overrides: it trains (the
losses fall), validates (losses and semantic mIoU), writes checkpoints and
TensorBoard events, runs online inference on the validation videos and
writes the predictions and their VPQ; and the errors before any compile."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import synthetic as synthetic_config
from tests import conftest
from tests import vps_tiny
import main
from vpsnet_jax.modeling import vpsnet
from vpsnet_jax.train import parallel

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def _scalars(workdir, tag):
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  acc = event_accumulator.EventAccumulator(
      glob.glob(os.path.join(workdir, "events.out.tfevents.*"))[0],
      size_guidance={"tensors": 0})
  acc.Reload()
  return {e.step: float(tf.make_ndarray(e.tensor_proto))
          for e in acc.Tensors(tag)}


@pytest.mark.slow  # main.py in a subprocess, training.
def test_main_trains_evaluates_and_writes_vpq(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      conftest.tiny_main_command(
          tmp_path, "--config.num_train_steps=14",
          "--config.log_every_steps=1", "--config.checkpoint_every_steps=7",
          "--config.warmup_steps=5", "--config.eval_every_steps=14",
          "--config.input.num_eval_batches=2"),
      cwd=ROOT, env=env, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-4000:]
  out = json.loads(proc.stdout[proc.stdout.rindex("\n{") + 1:])
  assert out["step"] == 14
  assert set(out["train"]) == {
      "loss", "loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox",
      "loss_mask", "loss_semantic", "loss_panoptic", "loss_track",
      "track_accuracy", "grad_norm", "learning_rate"}
  assert 0.0 <= out["eval"]["eval_semantic_miou"] <= 100.0
  assert np.isfinite(out["eval"]["eval_loss_track"])
  loss = _scalars(str(tmp_path), "loss")
  assert sorted(loss) == list(range(1, 15))
  first = np.mean([loss[s] for s in (1, 2, 3)])
  last = np.mean([loss[s] for s in (12, 13, 14)])
  assert last < 0.8 * first, loss
  for tag in ("loss_mask", "loss_track", "learning_rate", "grad_norm",
              "images_per_sec", "steps_per_sec", "eval_semantic_miou",
              "vpq/all", "vpq/k0/things", "stq/stq", "stq/iou"):
    assert _scalars(str(tmp_path), tag), tag
  # The config's lr per 8 images, global batch 2 (2 devices x 1), warm-up
  # from 1/3.
  base = synthetic_config.get_config().base_learning_rate
  lr = _scalars(str(tmp_path), "learning_rate")
  assert lr[1] == pytest.approx(base * 2 / 8 / 3, rel=1e-5)
  assert lr[14] == pytest.approx(base * 2 / 8, rel=1e-5)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["14", "7"]
  # Command-line overrides reached the model (the parameter overview lists
  # the FPN's 1x1 lateral conv on ResNet-18's 64-channel stage at width 32
  # and the mask head's 3x3 convs at width 16).
  assert "(1, 1, 64, 32)" in proc.stderr
  assert "(3, 3, 16, 16)" in proc.stderr
  # Online inference on the validation video: the 6 annotated frames in
  # the evaluation layout, and their VPQ in eval.vpq's schema.
  vpq = json.loads((tmp_path / "vpq.json").read_text())
  assert out["vpq"] == vpq["vpq"]
  assert set(vpq["k"]) == {"0", "5", "10", "15"}
  gt = json.loads((tmp_path / "data" /
                   "panoptic_gt_val_city_vps.json").read_text())
  names = sorted(a["image_id"] for a in gt["annotations"])
  assert len(names) == 6
  assert sorted(os.listdir(tmp_path / "predictions" / "pan_pred")) == [
      n + ".png" for n in names]
  pred = json.loads((tmp_path / "predictions" / "pred.json").read_text())
  assert len(pred["annotations"]) == 6
  assert "VPQ (mean over k = 0, 5, 10, 15)" in proc.stdout
  stq = json.loads((tmp_path / "stq.json").read_text())
  assert {"protocol", "stq", "aq", "iou", "per_sequence"} <= set(stq)
  assert stq["protocol"] == "cityscapes_vps"
  assert out["stq"]["stq"] == stq["stq"]


def _config(**kw):
  return vps_tiny.override(synthetic_config.get_config(), kw)


@pytest.mark.parametrize("overrides,error,message", [
    ({"variant": "nope"}, ValueError, "Unknown config.variant 'nope'"),
    ({"global_batch_size": 6}, ValueError,
     "global_batch_size=6 is not divisible by the 4 devices"),
    ({"parallel": "vmap"}, ValueError, "config.parallel must be one of"),
    ({"dataset.name": "kitti"}, ValueError, "Unknown config.dataset.name"),
    ({"input.flow": "none"}, ValueError, "config.input.flow must be one of"),
    ({"dataset.name": "viper"}, ValueError,
     "flow='ground_truth' needs the exact motion of vps_synthetic"),
    ({"tracker": "sort"}, ValueError, "config.tracker must be one of"),
    ({"dataset.subset": "paper"}, ValueError,
     "only viper has evaluation subsets"),
    ({"variant": "fuse"}, ValueError,
     "tracker='track_head' needs a variant with the track head"),
])
def test_bad_configs_fail_before_compiling(tmp_path, overrides, error,
                                           message):
  with pytest.raises(error, match=message):
    main.train_and_evaluate(_config(**overrides), str(tmp_path))
  assert not os.path.exists(tmp_path / "checkpoints")


def test_unknown_config_field(tmp_path):
  c = _config()
  with c.unlocked():
    c.model.no_such_field = 1
  with pytest.raises(ValueError, match=r"model\.no_such_field"):
    main.train_and_evaluate(c, str(tmp_path))


@pytest.mark.parametrize("name,words", [
    ("cityscapes_vps", "prepare_city_vps"),
    ("viper", "playing-for-benchmarks"),
])
def test_missing_dataset_folder_explains_the_download(tmp_path, name, words):
  c = _config(**{"dataset.name": name, "input.flow": "dis",
                 "dataset.data_dir": str(tmp_path / "missing")})
  with pytest.raises(ValueError, match=words) as e:
    main.train_and_evaluate(c, str(tmp_path))
  assert "not a " + name in str(e.value)
  (tmp_path / "wrong").mkdir()
  (tmp_path / "wrong" / "README").write_text("not a dataset")
  c.dataset.data_dir = str(tmp_path / "wrong")
  with pytest.raises(ValueError, match=words):
    main.train_and_evaluate(c, str(tmp_path))


@pytest.mark.slow  # main.py in a subprocess.
def test_main_rejects_a_bad_variant(tmp_path):
  proc = subprocess.run(
      [sys.executable, "main.py", "--config=configs/synthetic.py",
       f"--workdir={tmp_path}", "--mode=train", "--config.variant=fusion"],
      cwd=ROOT, capture_output=True, text=True)
  assert proc.returncode != 0
  assert "Unknown config.variant 'fusion'" in proc.stderr


def test_every_experiment_config_has_only_default_fields():
  import importlib  # pylint: disable=g-import-not-at-top
  for name in ("synthetic", "cityscapes", "cityscapes_vps", "viper"):
    c = importlib.import_module(f"configs.{name}").get_config()
    main.validate(c, "train_and_evaluate")
    assert c.variant in vpsnet.VARIANTS and c.parallel in parallel.PARALLEL
    assert c.momentum == 0.9 and c.weight_decay == 1e-4
    assert c.grad_clip_norm == 35.0 and c.warmup_steps in (100, 500)
    assert c.optimizer == ("adamw" if name == "synthetic" else "sgd")
