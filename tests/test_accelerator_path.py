"""The accelerator's code path, checked on the CPU.

A GPU or TPU resolves `config.model.conv='auto'` to "xla" (plain
`lax.conv` everywhere); the CPU to "cpu" (im2col on small maps, matmul
weight gradients). For fusetrack, the variant that holds every module of
every variant, at the tiny sizes, through the real pieces (the `tf.data`
pipeline's batches and frames, `train.step.train_step` wrapped by
`parallel.Parallel`, `inference.online.FrameModel`): both paths give the
same losses, gradient norm and optimizer state (the clipped,
weight-decayed gradients: SGD's momentum after one step) after one train
step, and the same per-frame inference outputs over three frames of a
video (the fusion's reference carried on the device), from the same
parameters.

And no host round trip in the compiled functions: no callback primitive in
the train step's or the per-frame function's jaxpr (fusetrack, every
module), and no implicit transfer (`jax.transfer_guard('disallow')`) in
their steady-state calls. Every variant trains (the CPU path).

Every variant's executables are released after its test: a test process
maps memory regions for every live executable (about 4,000 for one tiny
train step) and the kernel allows 65,530 (vm.max_map_count); past that
XLA's compiler crashes.
"""
import functools

import jax
from jax.extend import core as jax_core
import numpy as np
import optax
import pytest

from data_pipeline import metadata
from data_pipeline import pipeline
from data_pipeline import sources
from tests import tiny_models
from tests import vps_tiny
from vpsnet_jax import experiment
from vpsnet_jax.inference import online
from vpsnet_jax.modeling import vpsnet
from vpsnet_jax.ops.resize import quarter_flow
from vpsnet_jax.train import input as input_lib
from vpsnet_jax.train import optim
from vpsnet_jax.train import parallel
from vpsnet_jax.train import step as step_lib
from vpsnet_jax.train import tasks

META = metadata.SYNTHETIC
DETECTOR_LOSSES = {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox",
                   "loss_mask", "loss_semantic", "loss_panoptic"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """(train source, index), (val source, index) of the tiny synthetic set
  (written once for the module)."""
  root = str(tmp_path_factory.mktemp("vps"))
  c = vps_tiny.config()
  return (sources.open_split(c, root, "train"),
          sources.open_split(c, root, "val"))


def _step_fn(config):
  """(task, tx, the Parallel-wrapped train step on one device, Parallel)."""
  task = tasks.create_task(config, META)
  schedule = optim.create_learning_rate_fn(config, 1)
  shapes = jax.eval_shape(task.init, jax.random.PRNGKey(0))
  tx = optim.create_optimizer(config, schedule,
                              task.trainable(shapes["params"]))
  par = parallel.Parallel("pmap", devices=jax.devices()[:1])
  fn = par.wrap(functools.partial(step_lib.train_step, loss_fn=task.loss_fn,
                                  tx=tx, schedule=schedule), True)
  return task, tx, fn, par


def assert_gradients_close(ref, other, context=""):
  """Per leaf, to float32 rounding of two convolution implementations.

  Measured on the CPU: within 5e-6 of the leaf's largest value, except
  where a unit sits within rounding of its ReLU kink at some pixel and
  flips between the two implementations: that changes the gradient of that
  one output channel's weights (measured: rpn_conv channel 5, bias and
  kernel, by up to 5e-3 of the leaf's scale). So: differences beyond 1e-4
  in at most one output channel (last axis) per leaf, and nowhere beyond
  2e-2 of the leaf's scale. Returns the number of non-zero leaves.
  """
  leaves_r = jax.tree_util.tree_leaves_with_path(ref)
  leaves_o = jax.tree_util.tree_leaves(other)
  assert len(leaves_r) == len(leaves_o), context
  nonzero = 0
  for (path, a), b in zip(leaves_r, leaves_o):
    a, b = np.asarray(a), np.asarray(b)
    name = context + jax.tree_util.keystr(path)
    if not np.issubdtype(a.dtype, np.floating):
      np.testing.assert_array_equal(b, a, err_msg=name)
      continue
    scale = float(np.abs(a).max()) if a.size else 0.0
    nonzero += scale > 0
    far = ~np.isclose(b, a, rtol=1e-4, atol=1e-4 * scale + 1e-9)
    channels = (np.unique(np.nonzero(far.reshape(-1, far.shape[-1]))[1])
                if far.ndim else np.nonzero(far.reshape(-1))[0])
    assert len(channels) <= 1, (name, channels)
    np.testing.assert_allclose(b, a, rtol=0, atol=2e-2 * scale + 1e-9,
                               err_msg=name)
  return nonzero


def _callbacks(jaxpr) -> list:
  """Names of the host-calling primitives (callbacks, debug printing)
  anywhere in a (closed) jaxpr, sub-jaxprs included."""
  found = []

  def visit(j):
    for eqn in j.eqns:
      name = eqn.primitive.name
      if "callback" in name or name.startswith("debug_"):
        found.append(name)
      for sub in jax_core.jaxprs_in_params(eqn.params):
        visit(sub)

  visit(jaxpr.jaxpr if hasattr(jaxpr, "jaxpr") else jaxpr)
  return found


@pytest.fixture(scope="module")
def pairs(data):
  """Two training pairs of the tiny set, [1 device, 2, ...] (the batches of
  tests/modeling/test_vpsnet.py's `pairs`, with the device axis)."""
  (source, index), _ = data
  batch = next(input_lib.train_batches(source, index, vps_tiny.config(), 2))
  return jax.tree_util.tree_map(lambda x: x[:1], batch)


@pytest.mark.slow  # Compiles the variant's tiny gradient.
@pytest.mark.parametrize("variant", list(vpsnet.VARIANTS))
def test_variant_trains(pairs, variant):
  """The variant's modules are the release's and it trains: finite loss
  terms that sum to the loss, gradients reaching every trainable parameter
  it has (the CPU path; `test_conv_paths_agree` compares the xla path)."""
  try:
    c = tiny_models.compiled(variant)
    (loss, metrics), grads = jax.device_get(c.grad(
        c.variables["params"], jax.tree_util.tree_map(lambda x: x[0], pairs),
        jax.random.PRNGKey(3)))
    _check_trains(c, variant, loss, metrics, grads)
  finally:
    if variant != "fusetrack":  # The later tests of this module use it.
      tiny_models.release(variant)


@pytest.mark.slow  # A train step and two per-frame functions (xla, CPU).
def test_conv_paths_agree(data, pairs):
  """The xla convolution path agrees with the CPU path (`_check_paths_agree`)
  on fusetrack, the variant that holds every module of every variant (each
  module selects its convolutions from `config.model.conv`, checked for
  every convolution by tests/modeling/test_vpsnet.py's
  test_conv_impl_reaches_every_convolution). Measured: this check costs
  about 4 minutes a variant on 2 cores (two train-step and two inference
  compiles), 28 for all seven, more than CI can spend."""
  _check_paths_agree(data, pairs, "fusetrack")


def _check_paths_agree(data, pairs, variant):
  """One train step and three frames of online inference with conv 'xla'
  (the GPU/TPU path) against the CPU path (`tiny_models.compiled`, conv
  'auto' = 'cpu' here), same parameters and inputs: the same losses and
  gradient norm, the same optimizer state (SGD's momentum after one step:
  the clipped, weight-decayed gradients), the same detections, embeddings,
  gathered features and (to 0.1 % of the pixels) panoptic and semantic
  maps."""
  cpu = tiny_models.compiled(variant)
  assert experiment.conv_impl(cpu.config) == "cpu"
  config = tiny_models.config(variant, model__conv="xla")
  key = jax.random.PRNGKey(3)
  task, tx, fn, par = _step_fn(config)
  host_state = step_lib.create_train_state(key, task, tx, cpu.variables)
  device_batch = par.put_batch(pairs)
  state, metrics_x = fn(par.put_state(host_state), device_batch, key)
  metrics_x, opt_x = jax.device_get((metrics_x,
                                     par.host_state(state).opt_state))
  # The steady state moves nothing implicitly between host and device.
  device_key = jax.device_put(key, jax.devices()[0])
  with jax.transfer_guard("disallow"):
    state, second = fn(state, device_batch, device_key)
  assert float(jax.device_get(second["finite"])) == 1.0
  # The CPU path: its loss and gradients, then the same optimizer update.
  (loss_c, metrics_c), grads_c = jax.device_get(cpu.grad(
      host_state.params, jax.tree_util.tree_map(lambda x: x[0], pairs), key))
  _, opt_c = jax.jit(tx.update)(grads_c, host_state.opt_state,
                                host_state.params)
  assert float(metrics_x["finite"]) == 1.0 and float(metrics_x["loss"]) > 0
  assert float(loss_c) == pytest.approx(float(metrics_x["loss"]), rel=1e-5)
  losses = [k for k in metrics_x if k.startswith("loss_")]
  assert set(losses) == {k for k in metrics_c if k.startswith("loss_")}
  for k in losses:
    assert float(metrics_c[k]) == pytest.approx(
        float(metrics_x[k]), rel=1e-4, abs=1e-6), k
  assert float(optax.tree.norm(grads_c)) == pytest.approx(
      float(metrics_x["grad_norm"]), rel=1e-4)
  nonzero = assert_gradients_close(opt_x, jax.device_get(opt_c), "opt_state")
  assert nonzero > len(jax.tree_util.tree_leaves(opt_x)) // 4

  # Online inference: three frames of the first validation video, through
  # FrameModel (xla) and the CPU path's jitted `infer`.
  _, (val_source, val_index) = data
  frames = list(_frames(config, val_source, val_index, 3))
  model = online.FrameModel(vpsnet.VPSNet(experiment.model_config(
      config, META)), cpu.variables, devices=jax.devices()[:1])
  ref = None
  detections = 0
  for t, args in enumerate(frames):
    if t == 0:  # Compiles; sets the carried reference.
      out = model.dispatch(*args)
    else:  # Inputs put explicitly, then no implicit transfer.
      with jax.transfer_guard("disallow"):
        out = model.dispatch(*args)
    x = jax.device_get({k: out[k] for k in online.HOST_KEYS + ("gathered",)})
    images, size, flow, has_ref = args
    if ref is None:
      ref = np.zeros_like(x["gathered"])
    c = jax.device_get(cpu.infer(cpu.variables, images, size, ref, flow,
                                 has_ref))
    ref = c["gathered"]
    where = f"{variant} frame {t} "
    np.testing.assert_array_equal(c["valid"], x["valid"], err_msg=where)
    np.testing.assert_array_equal(c["classes"], x["classes"], err_msg=where)
    valid = x["valid"]
    detections += int(valid.sum())
    np.testing.assert_allclose(c["boxes"][valid], x["boxes"][valid],
                               atol=1e-2, err_msg=where + "boxes")
    np.testing.assert_allclose(c["scores"], x["scores"], atol=1e-5,
                               err_msg=where + "scores")
    scale = max(float(np.abs(x["embeddings"]).max(initial=0)), 1e-6)
    np.testing.assert_allclose(c["embeddings"], x["embeddings"],
                               atol=1e-4 * scale, err_msg=where + "emb")
    scale = float(np.abs(x["gathered"]).max())
    np.testing.assert_allclose(c["gathered"], x["gathered"],
                               atol=1e-4 * scale, err_msg=where + "gathered")
    np.testing.assert_array_equal(c["keep"], x["keep"], err_msg=where)
    # Discrete maps: a pixel whose two best logits are within rounding may
    # flip; at most 0.1 % of the pixels.
    for k in ("panoptic", "semantic"):
      assert np.mean(c[k] != x[k]) <= 1e-3, (where, k)
  assert model.compiles == 1
  assert detections > 0, variant


def _check_trains(c, variant, loss, metrics, grads):
  """The variant's modules, finite loss terms that sum to the loss, finite
  gradients, non-zero on every trainable parameter."""
  spec = vpsnet.VARIANTS[variant]
  params = c.variables["params"]
  assert ("fuse" in params) == spec.fuse
  # The extra neck (refine) only where the release has it: the fusing models.
  assert ("refine" in params) == spec.fuse
  assert ("track_head" in params) == spec.track
  if spec.fuse:
    assert ("align" in params["fuse"]) == spec.align
    assert ("attend" in params["fuse"]) == spec.attend
  expected = DETECTOR_LOSSES | ({"loss_track"} if spec.track else set())
  assert {k for k in metrics if k.startswith("loss_")} == expected
  assert np.isfinite(float(loss))
  assert float(loss) == pytest.approx(
      sum(float(metrics[k]) for k in expected), rel=1e-5)
  trainable = c.task.trainable(params)
  for (path, g), t in zip(jax.tree_util.tree_leaves_with_path(grads),
                          jax.tree_util.tree_leaves(trainable)):
    g = np.asarray(g)
    assert np.all(np.isfinite(g)), jax.tree_util.keystr(path)
    if t:
      assert np.any(g != 0), f"no gradient reaches {jax.tree_util.keystr(path)}"


def _frames(config, source, index, count):
  """The first `count` steps of the online pipeline (as `predict_videos`
  feeds the model): (images, image_size, flow, has_reference) [1, ...]."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  dataset = pipeline.eval_dataset(
      source, index, flow=config.input.flow if experiment.reads_flow(
          config) else "none", size_divisor=config.input.size_divisor,
      num_streams=1, process_index=0, process_count=1)
  for batch in tfds.as_numpy(dataset.take(count)):
    flow = (quarter_flow(batch["flow"]) if "flow" in batch else np.zeros(
        batch["image"].shape[:3] + (2,), np.float32)[:, ::4, ::4])
    has_ref = batch["frame_index"] != batch["ref_frame_index"]
    yield batch["image"], batch["orig_size"], flow, has_ref


@pytest.mark.slow  # Traces the tiny fusetrack train step and inference.
def test_no_callback_in_compiled_steps(data, pairs):
  """Neither the train step nor the per-frame inference function holds a
  host callback (their steady-state calls run under transfer_guard
  'disallow' in test_conv_paths_agree)."""
  config = tiny_models.config("fusetrack", model__conv="xla")
  cpu = tiny_models.compiled("fusetrack")
  task, tx, fn, par = _step_fn(config)
  state = par.put_state(step_lib.create_train_state(None, task, tx,
                                                    cpu.variables))
  key = jax.random.PRNGKey(3)
  assert _callbacks(jax.make_jaxpr(fn)(state, pairs, key)) == []
  _, (val_source, val_index) = data
  frame = next(_frames(config, val_source, val_index, 1))
  model = online.FrameModel(vpsnet.VPSNet(experiment.model_config(
      config, META)), cpu.variables, devices=jax.devices()[:1])
  images, size, flow, has_ref = frame
  gathered = jax.eval_shape(
      lambda v, i, s: model.model.apply(v, i, s, method=model.model.infer),
      cpu.variables, images, size)["gathered"]
  jaxpr = jax.make_jaxpr(model._fn)(  # pylint: disable=protected-access
      model.variables, images, size, gathered, flow, has_ref, images)
  assert _callbacks(jaxpr) == []


def test_callback_detection_can_fail():
  """The jaxpr check sees a callback nested in jit, scan and cond, and the
  transfer guard refuses an implicit host -> device transfer."""
  def f(x):
    def body(c, _):
      c = jax.lax.cond(c.sum() > 0, lambda y: y + 1, lambda y: y, c)
      jax.debug.print("{}", c)
      return c, None
    return jax.lax.scan(body, x, None, length=2)[0]

  assert _callbacks(jax.make_jaxpr(jax.jit(f))(np.ones(2, np.float32))) == [
      "debug_print"]
  h = jax.jit(lambda x: jax.debug.callback(print, x) or x)
  assert _callbacks(jax.make_jaxpr(h)(np.ones(2, np.float32))) == [
      "debug_callback"]
  g = jax.jit(lambda x: jax.pure_callback(
      lambda v: v, jax.ShapeDtypeStruct((2,), np.float32), x))
  assert _callbacks(jax.make_jaxpr(g)(np.ones(2, np.float32))) == [
      "pure_callback"]
  add = jax.jit(lambda x: x + 1)
  add(np.ones(2, np.float32))
  with jax.transfer_guard("disallow"):
    with pytest.raises(Exception, match="Disallowed host-to-device"):
      add(np.ones(2, np.float32))


def _remat_count(jaxpr) -> int:
  """Rematerialised regions (checkpoint primitives) in a jaxpr, nested ones
  included."""
  count = 0

  def visit(j):
    nonlocal count
    for eqn in j.eqns:
      count += eqn.primitive.name in ("checkpoint", "remat", "remat2")
      for sub in jax_core.jaxprs_in_params(eqn.params):
        visit(sub)

  visit(jaxpr.jaxpr)
  return count


@pytest.mark.slow  # Compiles the tiny fusetrack gradient with remat.
def test_remat_keeps_parameters_losses_and_gradients(pairs):
  """config.model.remat: 'backbone' rematerialises each ResNet block,
  'heads' every module after it, 'all' both; parameters unchanged, and
  with 'all' the same losses and gradients as without."""
  ref = tiny_models.compiled("fusetrack")
  batch = jax.tree_util.tree_map(lambda x: x[0], pairs)
  key = jax.random.PRNGKey(3)
  counts = {}
  tasks_ = {}
  for mode in ("none", "backbone", "heads", "all"):
    config = tiny_models.config("fusetrack", model__remat=mode)
    tasks_[mode] = task = tasks.create_task(config, META)
    shapes = jax.eval_shape(task.init, jax.random.PRNGKey(0))
    assert jax.tree_util.tree_map(lambda s: (s.shape, s.dtype), shapes) == (
        jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), ref.variables))
    counts[mode] = _remat_count(jax.make_jaxpr(
        lambda p, b, k, task=task: task.loss_fn(
            p, ref.variables["batch_stats"], b, jax.random.split(k, 2)))(
                ref.variables["params"], batch, key))
  # ResNet-18: 8 blocks (target and reference in one batched call);
  # heads: FPN, RPN, box, mask twice (sampled RoIs; the panoptic head's
  # ground-truth boxes), refine, fuse, semantic, track twice (target and
  # reference RoIs).
  assert counts == {"none": 0, "backbone": 8, "heads": 10, "all": 18}
  grad = jax.jit(jax.value_and_grad(
      lambda p, b, k: tasks_["all"].loss_fn(
          p, ref.variables["batch_stats"], b, k), has_aux=True))
  (loss, metrics), grads = jax.device_get(grad(
      ref.variables["params"], batch, tiny_models.example_keys(key, 2)))
  (loss_r, metrics_r), grads_r = jax.device_get(ref.grad(
      ref.variables["params"], batch, key))
  assert float(loss) == pytest.approx(float(loss_r), rel=1e-5)
  for k in metrics_r:
    assert float(metrics[k]) == pytest.approx(float(metrics_r[k]),
                                              rel=1e-4, abs=1e-6), k
  assert_gradients_close(grads_r, grads, "remat")
