"""Mechanics of the training loop on a tiny task (4 simulated devices):
pmap vs shard_map, gradient averaging, exact resume, restore on another
device count, frozen parameters, NaN stop, checkpoints kept."""

import os

import jax
import numpy as np
import pytest

from tests.train import tiny
from vpsnet_jax.checkpoints import manager as ckpt
from vpsnet_jax.errors import ConfigError
from vpsnet_jax.train import train


def _run(tmp_path, name, config, task=None, devices=None, iter_fn=None,
         **kw):
  n = len(devices) if devices else jax.device_count()
  return train.run(config, str(tmp_path / name), task or tiny.task(),
                   iter_fn or tiny.batches(n), devices=devices, **kw)


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def _assert_close(a, b, **kw):
  for x, y in zip(_leaves(a), _leaves(b)):
    np.testing.assert_allclose(x, y, **kw)


def test_pmap_and_shard_map_give_the_same_parameters(tmp_path):
  task = tiny.task(use_key=True)
  a = _run(tmp_path, "pmap", tiny.config(parallel="pmap"), task)
  b = _run(tmp_path, "shard", tiny.config(parallel="shard_map"), task)
  assert a["step"] == b["step"] == 6
  _assert_close(a["state"].params, b["state"].params, rtol=1e-6, atol=1e-7)
  assert [h["loss_noise"] for h in a["history"]] == pytest.approx(
      [h["loss_noise"] for h in b["history"]], rel=1e-5)
  # The frozen stem and the batch statistics do not move.
  init = jax.device_get(jax.jit(task.init)(jax.random.split(
      jax.random.PRNGKey(0), 3)[0]))
  _assert_close(a["state"].params["stem"], init["params"]["stem"], rtol=0)
  assert not np.allclose(a["state"].params["head"]["w"],
                         init["params"]["head"]["w"])


def test_four_devices_batch_b_equal_one_device_batch_4b(tmp_path):
  four = _run(tmp_path, "four", tiny.config(per_device_batch_size=2))
  one = _run(tmp_path, "one", tiny.config(per_device_batch_size=8),
             devices=jax.devices()[:1])
  _assert_close(four["state"].params, one["state"].params, rtol=1e-5,
                atol=1e-6)
  np.testing.assert_allclose([h["loss"] for h in four["history"]],
                             [h["loss"] for h in one["history"]], rtol=1e-5)
  # lr 0.05 per 8 images: 8 images -> 0.05/3 at step 0 (warm-up from 1/3),
  # x0.1 from step 4.
  lrs = [h["learning_rate"] for h in four["history"]]
  np.testing.assert_allclose(lrs, [0.05 / 3, 0.05 * 2 / 3, 0.05, 0.05,
                                   0.005, 0.005], rtol=1e-6)


def test_killed_and_restarted_equals_uninterrupted(tmp_path):
  task = tiny.task(use_key=True)
  config = tiny.config(num_train_steps=6, checkpoint_every_steps=2)
  whole = _run(tmp_path, "whole", config, task)
  # Killed while fetching the 8th batch: the loop prefetches two batches
  # ahead, so after step 5 (checkpoints of steps 2 and 4 on disk).
  with pytest.raises(KeyboardInterrupt):
    _run(tmp_path, "resumed", config, task,
         iter_fn=tiny.batches(4, stop_after=7))
  ckpt = tmp_path / "resumed" / "checkpoints"
  assert sorted(os.listdir(ckpt)) == ["2", "4"]
  again = _run(tmp_path, "resumed", config, task)
  assert [h["loss"] for h in again["history"]] == [
      h["loss"] for h in whole["history"][4:]]
  for x, y in zip(_leaves(whole["state"]), _leaves(again["state"])):
    np.testing.assert_array_equal(x, y)  # Bit-identical on CPU.


def test_restore_on_another_device_count(tmp_path):
  config = tiny.config(global_batch_size=8, num_train_steps=6,
                       checkpoint_every_steps=3, keep_checkpoints=1)
  whole = _run(tmp_path, "whole", config)
  _run(tmp_path, "switch", config, num_train_steps=3)
  assert os.listdir(tmp_path / "switch" / "checkpoints") == ["3"]
  # Four devices wrote it; one device restores it and trains on.
  one = _run(tmp_path, "switch", config, devices=jax.devices()[:1])
  assert len(one["history"]) == 3
  _assert_close(whole["state"], one["state"], rtol=1e-5, atol=1e-6)
  assert int(one["state"].step) == 6


def test_nan_loss_stops_naming_step_and_term_and_keeps_checkpoint(tmp_path):
  config = tiny.config(num_train_steps=6, checkpoint_every_steps=2)
  with pytest.raises(train.NonFiniteLossError,
                     match=r"at step 3: loss_mse=nan \(total loss=nan\)"):
    _run(tmp_path, "nan", config, iter_fn=tiny.batches(4, nan_at_step=3))
  assert os.listdir(tmp_path / "nan" / "checkpoints") == ["2"]


def test_validation_losses_every_eval_steps(tmp_path):
  config = tiny.config(num_train_steps=4, eval_every_steps=2)

  def eval_batches(b):
    for step in (100, 101):
      g = tiny.global_batch(step, 4 * b)
      yield {k: v.reshape((4, b) + v.shape[1:]) for k, v in g.items()}

  result = _run(tmp_path, "eval", config, eval_iter_fn=eval_batches)
  task = tiny.task()
  params, stats = result["state"].params, result["state"].batch_stats
  expected = np.mean([float(task.loss_fn(params, stats, tiny.global_batch(
      s, 8), None)[0]) for s in (100, 101)])
  assert result["eval"]["eval_loss"] == pytest.approx(expected, rel=1e-5)
  assert set(result["eval"]) == {"eval_loss", "eval_loss_mse"}
  # --mode=evaluate: the latest checkpoint (step 4), here on one device.
  again = train.validation_losses(
      config, str(tmp_path / "eval"), task,
      lambda b: ({k: v.reshape((1, 4 * b) + v.shape[1:])
                  for k, v in tiny.global_batch(s, 4 * b).items()}
                 for s in (100, 101)),
      devices=jax.devices()[:1])
  assert again["eval_loss"] == pytest.approx(expected, rel=1e-5)


def test_init_from_an_earlier_stage_checkpoint(tmp_path):
  first = _run(tmp_path, "stage1", tiny.config(num_train_steps=2))
  config = tiny.config(num_train_steps=0,
                       init_from=str(tmp_path / "stage1" / "checkpoints" /
                                     "2"))
  second = _run(tmp_path, "stage2", config)
  assert int(second["state"].step) == 0
  for x, y in zip(_leaves(first["state"].params),
                  _leaves(second["state"].params)):
    np.testing.assert_array_equal(x, y)
  with pytest.raises(ConfigError, match="does not exist"):
    _run(tmp_path, "stage3", tiny.config(init_from=str(tmp_path / "nope")))


def _torchvision_names(shapes):
  """A random torchvision-named ResNet state dict for the backbone shapes."""
  rng = np.random.default_rng(0)
  bn = {"scale": "weight", "bias": "bias", "mean": "running_mean",
        "var": "running_var"}
  out = {}
  for c in ("params", "batch_stats"):
    flat = jax.tree_util.tree_flatten_with_path(shapes[c]["backbone"])[0]
    for path, leaf in flat:
      keys = [k.key for k in path]
      module = keys[0].replace("_", ".", 1) if keys[0].startswith(
          "layer") else keys[0]
      sub = ".".join(keys[1:-1]).replace("downsample_conv", "downsample.0"
                                         ).replace("downsample_bn",
                                                   "downsample.1")
      name = ".".join(x for x in (module, sub) if x)
      if keys[-1] == "kernel":
        kh, kw, cin, cout = leaf.shape
        out[name + ".weight"] = rng.normal(size=(cout, cin, kh, kw))
      else:
        out[f"{name}.{bn[keys[-1]]}"] = rng.normal(size=leaf.shape)
  return {k: v.astype(np.float32) for k, v in out.items()}


def test_init_from_torchvision_resnet_fills_the_backbone(tmp_path):
  from configs import synthetic  # pylint: disable=g-import-not-at-top
  from data_pipeline import synthetic as synthetic_data  # pylint: disable=g-import-not-at-top
  from vpsnet_jax.train import tasks  # pylint: disable=g-import-not-at-top
  config = synthetic.get_config()
  config.input.crop_size = (64, 128)
  task = tasks.create_task(config, synthetic_data.META)
  shapes = jax.eval_shape(task.init, jax.random.PRNGKey(0))
  state = _torchvision_names(shapes)
  assert "layer2.0.downsample.0.weight" in state
  path = tmp_path / "r18.npz"
  np.savez(path, **state)
  zeros = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype),
                                 shapes)
  out = ckpt.init_from(str(path), zeros)
  np.testing.assert_array_equal(
      out["params"]["backbone"]["conv1"]["kernel"],
      state["conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(
      out["batch_stats"]["backbone"]["layer4_1"]["bn2"]["var"],
      state["layer4.1.bn2.running_var"])
  assert not np.asarray(out["params"]["fpn"]["lateral_0"]["kernel"]).any()
