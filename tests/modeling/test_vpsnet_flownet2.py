"""`config.input.flow='flownet2'`: the model computes FlowNet2's flow in its
own compiled step (training: the real pipeline's batches carry no flow;
inference: the previous frame's image kept on the device) and feeds the
fusion the same flow as calling the network directly: the release's
padding to multiples of 64, crop, 1/4 bilinear downscale. One compile per
shape. A config without weights fails before any compile."""

import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipeline import metadata
from data_pipeline import pipeline
from data_pipeline import sources
from data_pipeline import transforms
from tests import conftest
from tests import vps_tiny
from vpsnet_jax import experiment
from vpsnet_jax.checkpoints import flownet2_import as fi
from vpsnet_jax.inference import online
from vpsnet_jax.modeling import flownet2 as flownet2_lib
from vpsnet_jax.modeling import vpsnet
from vpsnet_jax.ops.resize import quarter_flow
from vpsnet_jax.train import input as input_lib
from vpsnet_jax.train import tasks

META = metadata.SYNTHETIC
# `align`: the smallest variant that reads the flow (the fusion's warp).
VARIANT = "align"


def _state_dict(seed=0):
  """Random FlowNet2 weights with the official keys, small enough that the
  random network gives flows of a few pixels (not saturated)."""
  rng = np.random.default_rng(seed)
  out = {}
  for key, (_, shape) in fi.flownet2_table().items():
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    if len(shape) == 4 and (".upsampled_flow" in key or ".deconv" in key):
      fan_in = shape[0] * shape[2] * shape[3] // 4
    out[key] = (rng.standard_normal(shape) /
                np.sqrt(max(fan_in, 1))).astype(np.float32)
    if key.endswith(".bias"):
      out[key] *= 0.1
  return out


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("flownet2") / "flownet2_state.npz")
  np.savez(path, **_state_dict())
  return path, fi.load(path)["params"]


def _config(weights_path, flow="flownet2", **overrides):
  return vps_tiny.config(VARIANT, input__flow=flow,
                         input__flownet2_checkpoint=weights_path,
                         input__ref_offsets=(-1, 0, 1), **overrides)


def _rgb(normalised):
  return normalised * transforms.STD + transforms.MEAN


def _direct_flow(params, images, refs, has_reference):
  """FlowNet2 called directly on RGB at full resolution (N, H, W, 2)."""
  flow = jax.jit(flownet2_lib.flow_between)(params, _rgb(images), _rgb(refs))
  return np.where(np.asarray(has_reference)[:, None, None, None],
                  np.asarray(flow), 0.0).astype(np.float32)


def test_training_step_computes_the_flow_of_the_network(weights, tmp_path):
  path, params = weights
  config = _config(path)
  assert experiment.model_config(config, META).flownet2
  task = tasks.create_task(config, META)
  variables = task.prepare(jax.device_get(jax.jit(task.init)(
      jax.random.PRNGKey(0))))
  np.testing.assert_array_equal(
      variables["batch_stats"]["flownet2"]["flownetc"]["conv1"]["kernel"],
      params["flownetc"]["conv1"]["kernel"])
  # The reference model: the same weights, the flow given in the batch.
  plain = tasks.create_task(_config(path, flow="dis"), META)
  plain_stats = {k: v for k, v in variables["batch_stats"].items()
                 if k != "flownet2"}

  source, index = sources.open_split(config, str(tmp_path), "train")
  batches = input_lib.train_batches(source, index, config, 2)
  traces = []

  def loss(v, batch, keys):
    traces.append(1)
    return task.loss_fn(v["params"], v["batch_stats"], batch, keys)

  loss = jax.jit(loss)
  plain_loss = jax.jit(lambda v, batch, keys: plain.loss_fn(
      v["params"], v["batch_stats"], batch, keys))
  keys = jax.random.split(jax.random.PRNGKey(1), 2)
  for _ in range(2):
    batch = {k: v[0] for k, v in next(batches).items()}
    assert "flow" not in batch  # The host computes no flow.
    has_ref = batch["frame_index"] != batch["ref_frame_index"]
    total, parts = loss(variables, batch, keys)
    given = dict(batch, flow=_direct_flow(params, batch["image"],
                                          batch["ref_image"], has_ref))
    expected, expected_parts = plain_loss(
        {"params": variables["params"], "batch_stats": plain_stats}, given,
        keys)
    for k in expected_parts:
      np.testing.assert_allclose(parts[k], expected_parts[k], rtol=2e-4,
                                 atol=1e-5, err_msg=k)
    np.testing.assert_allclose(total, expected, rtol=2e-4)
  assert len(traces) == 1  # One compile for the shape.
  # No gradient reaches FlowNet2 (its weights are not parameters).
  assert "flownet2" not in variables["params"]


def test_inference_carries_the_previous_image_and_feeds_the_same_flow(
    weights, tmp_path):
  path, params = weights
  config = _config(path, model__panoptic_score_threshold=0.2)
  task = tasks.create_task(config, META)
  variables = task.prepare(jax.device_get(jax.jit(task.init)(
      jax.random.PRNGKey(0))))
  device = jax.local_devices()[:1]
  model = online.FrameModel(
      vpsnet.VPSNet(experiment.model_config(config, META)), variables,
      devices=device)
  plain_cfg = experiment.model_config(
      _config(path, flow="dis", model__panoptic_score_threshold=0.2), META)
  plain = online.FrameModel(
      vpsnet.VPSNet(plain_cfg),
      {"params": variables["params"],
       "batch_stats": {k: v for k, v in variables["batch_stats"].items()
                       if k != "flownet2"}}, devices=device)
  source, index = sources.open_split(config, str(tmp_path), "val")
  frames = pipeline.eval_dataset(source, index, num_streams=1)
  previous = None
  for step, batch in enumerate(frames.take(3).as_numpy_iterator()):
    has_ref = batch["frame_index"] != batch["ref_frame_index"]
    assert has_ref[0] == (step > 0)
    zero = np.zeros(batch["image"].shape[:3] + (2,), np.float32)[:, ::4, ::4]
    out = model.fetch(model.dispatch(batch["image"], batch["orig_size"],
                                     zero, has_ref), flow=True)
    refs = batch["image"] if previous is None else previous
    flow = _direct_flow(params, batch["image"], refs, has_ref)
    np.testing.assert_allclose(out["flow"], flow, atol=1e-3, rtol=1e-4)
    if step:
      assert np.abs(flow).mean() > 0.05  # A real flow, not zeros.
    expected = plain.step(batch["image"], batch["orig_size"],
                          quarter_flow(flow), has_ref)
    for k in ("scores", "boxes"):
      np.testing.assert_allclose(out[k], expected[k], atol=2e-3, rtol=1e-3,
                                 err_msg=k)
    assert np.mean(out["semantic"] == expected["semantic"]) > 0.999
    previous = batch["image"]
  assert model.compiles == 1


def test_flownet2_without_weights_fails_before_any_compile(tmp_path,
                                                           subprocess_env):
  command = [sys.executable, "main.py", "--config=configs/synthetic.py",
             f"--workdir={tmp_path}", "--mode=train",
             "--config.input.flow=flownet2", *vps_tiny.flags()]
  proc = subprocess.run(command, cwd=conftest.ROOT, env=subprocess_env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "config.input.flownet2_checkpoint" in proc.stderr
  assert "flownet2-pytorch" in proc.stderr
  missing = str(tmp_path / "FlowNet2_checkpoint.pth.tar")
  proc = subprocess.run(
      command + [f"--config.input.flownet2_checkpoint={missing}"],
      cwd=conftest.ROOT, env=subprocess_env, capture_output=True, text=True,
      timeout=300)
  assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_variables_hold_flownet2_in_batch_stats_only_when_asked():
  shapes = jax.eval_shape(
      lambda k: vpsnet.VPSNet(experiment.model_config(
          _config("x.npz"), META)).init(k, jnp.zeros((1, 64, 128, 3))),
      jax.random.PRNGKey(0))
  flat = flax.traverse_util.flatten_dict(shapes["batch_stats"]["flownet2"])
  assert len(flat) == 220
  plain = jax.eval_shape(
      lambda k: vpsnet.VPSNet(experiment.model_config(
          _config("x.npz", flow="dis"), META)).init(
              k, jnp.zeros((1, 64, 128, 3))), jax.random.PRNGKey(0))
  assert "flownet2" not in plain["batch_stats"]


def test_inference_takes_the_weights_from_the_checkpoint_or_the_file(
    weights, tmp_path):
  from vpsnet_jax.checkpoints import release_import  # pylint: disable=import-outside-toplevel
  from vpsnet_jax.errors import ConfigError  # pylint: disable=import-outside-toplevel
  from vpsnet_jax.inference import run  # pylint: disable=import-outside-toplevel
  path, params = weights
  # A checkpoint of a model trained with DIS flow: no FlowNet2 inside.
  plain = tasks.create_task(_config(path, flow="dis"), META)
  variables = jax.device_get(jax.jit(plain.init)(jax.random.PRNGKey(0)))
  workdir = str(tmp_path / "dis")
  release_import.save_model(workdir, variables)
  loaded, step = run.load_variables(_config(path), workdir, META)
  assert step == 0
  np.testing.assert_array_equal(
      loaded["batch_stats"]["flownet2"]["flownets_d"]["conv0"]["kernel"],
      params["flownets_d"]["conv0"]["kernel"])
  with pytest.raises(ConfigError, match="holds no FlowNet2 weights"):
    run.load_variables(_config(""), workdir, META)
  # A checkpoint with them: they are read from it (the file is not needed).
  workdir = str(tmp_path / "flownet2")
  release_import.save_model(workdir, loaded)
  again, _ = run.load_variables(_config(""), workdir, META)
  np.testing.assert_array_equal(
      again["batch_stats"]["flownet2"]["flownetc"]["deconv2"]["bias"],
      params["flownetc"]["deconv2"]["bias"])
