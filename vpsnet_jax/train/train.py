"""The training loop: a flat list of functions (Flax `examples/imagenet`).

  state = create_train_state(key, config, task, tx)      # host copy
  step_fn = parallel_train_step(config, task, tx, schedule)
  state, metrics = step_fn(device_state, device_batch, key)
  train_and_evaluate(config, workdir)                    # everything

Data parallelism: ONE per-device step (`train_step`) written with
`axis_name='batch'` collectives, wrapped in one place (`parallelize`) by
`config.parallel`: 'pmap' (default; state replicated and donated, metrics
returned replicated with out_axes=None) or 'shard_map' (jax.jit of
jax.shard_map over a one-axis mesh of all devices). Batches are
[local_devices, per_device_batch, ...] in both.

Checkpoints hold ONE host copy of the state (NumPy), so they restore on any
device count; the step is part of the state and the input pipeline is a
deterministic function of the step (exact resume).
"""

import collections
import functools
import math
import os
import time
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

from absl import logging
from clu import metric_writers
from clu import parameter_overview
from clu import periodic_actions
import flax
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from vpsnet_jax.train import preemption
from vpsnet_jax.train import tasks as tasks_lib

AXIS = "batch"
PARALLEL = ("pmap", "shard_map")
TRACKERS = ("track_head", "cls_sort", "iou_match", "none")


@flax.struct.dataclass
class TrainState:
  """step: int32 scalar; params: trained; batch_stats: frozen BatchNorm
  statistics (never differentiated); opt_state: optax state over params."""
  step: Any
  params: Any
  batch_stats: Any
  opt_state: Any


# ------------------------------------------------------------------ config


def _unknown_fields(config, reference, prefix="") -> list:
  out = []
  for k in config.keys():
    name = prefix + k
    if k not in reference:
      out.append(name)
    elif isinstance(config[k], ml_collections.ConfigDict) and isinstance(
        reference[k], ml_collections.ConfigDict):
      out += _unknown_fields(config[k], reference[k], name + ".")
  return out


def global_batch_size(config, device_count: Optional[int] = None) -> int:
  n = jax.device_count() if device_count is None else device_count
  return config.global_batch_size or config.per_device_batch_size * n


def per_device_batch_size(config, device_count: Optional[int] = None) -> int:
  """Checks the global batch against the device count (ValueError)."""
  n = jax.device_count() if device_count is None else device_count
  if config.global_batch_size:
    if config.global_batch_size % n:
      raise ValueError(f"config.global_batch_size={config.global_batch_size}"
                       f" is not divisible by the {n} devices")
    return config.global_batch_size // n
  if config.per_device_batch_size < 1:
    raise ValueError("config.per_device_batch_size must be >= 1, got "
                     f"{config.per_device_batch_size}")
  return config.per_device_batch_size


def validate_config(config, device_count: Optional[int] = None,
                    check_devices: bool = True,
                    inference: bool = False) -> None:
  """Clear errors before any compile: unknown fields, variant, batch,
  parallel mode, dataset name, flow, tracker (with `inference`: also that
  the tracker fits the variant). check_devices=False skips the batch check
  (it initialises jax's backends; main.py first sets up multi-process)."""
  from configs import default  # pylint: disable=g-import-not-at-top
  unknown = _unknown_fields(config, default.get_config())
  if unknown:
    raise ValueError(f"Unknown config field(s) {unknown}; the fields are "
                     "those of configs/default.py")
  tasks_lib.check_variant(config.variant)
  if config.parallel not in PARALLEL:
    raise ValueError(f"config.parallel must be one of {PARALLEL}, got "
                     f"{config.parallel!r}")
  if config.optimizer not in OPTIMIZERS:
    raise ValueError(f"config.optimizer must be one of {OPTIMIZERS}, got "
                     f"{config.optimizer!r}")
  from vpsnet_jax.train import input as input_lib  # pylint: disable=g-import-not-at-top
  if config.dataset.name not in input_lib.DATASETS:
    raise ValueError(f"Unknown config.dataset.name {config.dataset.name!r};"
                     f" one of {list(input_lib.DATASETS)}")
  flows = ("dis", "ground_truth")
  if config.input.flow not in flows:
    raise ValueError(f"config.input.flow must be one of {flows}, got "
                     f"{config.input.flow!r}")
  if (config.input.flow == "ground_truth" and
      config.dataset.name != "vps_synthetic"):
    raise ValueError("config.input.flow='ground_truth' needs the exact "
                     "motion of vps_synthetic; use 'dis' for "
                     f"{config.dataset.name}")
  if config.tracker not in TRACKERS:
    raise ValueError(f"config.tracker must be one of {TRACKERS}, got "
                     f"{config.tracker!r}")
  if inference and config.tracker == "track_head" and not (
      tasks_lib.VARIANT_SPECS[config.variant].track):
    raise ValueError(f"config.tracker='track_head' needs a variant with the "
                     f"track head ('track', 'fusetrack'), not "
                     f"{config.variant!r}; use tracker 'none', 'cls_sort' or "
                     "'iou_match'")
  if check_devices:
    per_device_batch_size(config, device_count)


# --------------------------------------------------------------- optimizer


def create_learning_rate_fn(config, global_batch: int,
                            decay_steps=None) -> optax.Schedule:
  """lr = base * global_batch / learning_rate_batch; linear warm-up from
  warmup_ratio * lr over warmup_steps; x lr_decay_factor at each step of
  `decay_steps` (default config.lr_decay_steps)."""
  lr = config.base_learning_rate * global_batch / config.learning_rate_batch
  decay = config.lr_decay_steps if decay_steps is None else decay_steps
  boundaries = {int(s): config.lr_decay_factor for s in decay}
  if not config.warmup_steps:
    return optax.piecewise_constant_schedule(lr, boundaries)
  w = config.warmup_steps
  warmup = optax.linear_schedule(lr * config.warmup_ratio, lr, w)
  after = optax.piecewise_constant_schedule(
      lr, {s - w: f for s, f in boundaries.items() if s > w})
  return optax.join_schedules([warmup, after], [w])


OPTIMIZERS = ("sgd", "adamw")


def create_optimizer(config, schedule: optax.Schedule,
                     trainable: Any) -> optax.GradientTransformation:
  """On the trainable leaves (`trainable`: pytree of bools), zero updates
  elsewhere: config.optimizer 'sgd' (the paper's): clip_by_global_norm ->
  add_decayed_weights -> sgd(momentum); 'adamw': clip_by_global_norm ->
  adamw (decoupled weight decay)."""
  if config.optimizer == "sgd":
    train = optax.chain(
        optax.clip_by_global_norm(config.grad_clip_norm),
        optax.add_decayed_weights(config.weight_decay),
        optax.sgd(schedule, momentum=config.momentum))
  elif config.optimizer == "adamw":
    train = optax.chain(
        optax.clip_by_global_norm(config.grad_clip_norm),
        optax.adamw(schedule, weight_decay=config.weight_decay))
  else:
    raise ValueError(f"config.optimizer must be one of {OPTIMIZERS}, got "
                     f"{config.optimizer!r}")
  labels = jax.tree_util.tree_map(lambda t: "train" if t else "frozen",
                                  trainable)
  return optax.multi_transform({"train": train,
                                "frozen": optax.set_to_zero()}, labels)


def _merge(target, source, path=""):
  """`target` with every leaf that `source` has at the same path and shape
  replaced by source's; returns (tree, number of leaves copied)."""
  if isinstance(target, dict):
    out, n = {}, 0
    for k, v in target.items():
      if isinstance(source, dict) and k in source:
        out[k], m = _merge(v, source[k], f"{path}/{k}")
        n += m
      else:
        out[k] = v
    return out, n
  if np.shape(source) != np.shape(target):
    raise ValueError(f"init_from: {path} has shape {np.shape(source)}, the "
                     f"model's is {np.shape(target)}")
  return np.asarray(source, np.asarray(target).dtype), 1


def init_from(path: str, variables: Dict[str, Any]) -> Dict[str, Any]:
  """Variables initialised from `path`: a torchvision ResNet state dict
  (`.pth` / `.npz`, ImageNet weights, into the `backbone`) or an orbax
  checkpoint step folder of an earlier stage (every parameter and batch
  statistic with the same path and shape)."""
  variables = flax.core.unfreeze(jax.device_get(variables))
  if not os.path.exists(path):
    raise FileNotFoundError(f"config.init_from={path!r} does not exist")
  if path.endswith((".pth", ".pt", ".npz")):
    from vpsnet_jax.checkpoints import torchvision_import  # pylint: disable=g-import-not-at-top
    sub = {c: variables[c]["backbone"] for c in ("params", "batch_stats")
           if "backbone" in variables.get(c, {})}
    if "params" not in sub:
      raise ValueError("init_from: a ResNet state dict needs a model with a "
                       "'backbone'")
    new = torchvision_import.load_torchvision_resnet(path, sub)
    for c in sub:
      variables[c]["backbone"], _ = _merge(sub[c], dict(new[c]))
    return variables
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, "default")):  # A manager's step folder.
    path = os.path.join(path, "default")
  restored = ocp.StandardCheckpointer().restore(path)
  copied = 0
  for c in ("params", "batch_stats"):
    if c in variables and c in restored:
      variables[c], n = _merge(variables[c], restored[c])
      copied += n
  if not copied:
    raise ValueError(f"init_from: {path} has no parameter of this model")
  logging.info("init_from %s: %d arrays", path, copied)
  return variables


def create_train_state(key, task: tasks_lib.Task,
                       tx: optax.GradientTransformation,
                       init_path: str = "") -> TrainState:
  """Host-side (unreplicated) initial state, step 0 (from `init_path` when
  given, see `init_from`)."""
  variables = jax.jit(task.init)(key)
  if init_path:
    variables = init_from(init_path, variables)
  params = variables["params"]
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     batch_stats=variables.get("batch_stats", {}),
                     opt_state=tx.init(params))
  return jax.device_get(state)


# ------------------------------------------------------------------- steps


def _device_key(key, step):
  """The key of this device at this step: key folded with step and the
  device's global index on the 'batch' axis."""
  return jax.random.fold_in(jax.random.fold_in(key, step),
                            jax.lax.axis_index(AXIS))


def train_step(state: TrainState, batch: Dict[str, jnp.ndarray], key,
               *, loss_fn: Callable, tx: optax.GradientTransformation,
               schedule: optax.Schedule
               ) -> Tuple[TrainState, Dict[str, jnp.ndarray]]:
  """One device's step: loss and gradients on its batch ([b, ...]), pmean
  over 'batch' of gradients and metrics, one optax update.

  metrics: every loss term, 'loss', 'grad_norm' (before clipping),
  'learning_rate', 'finite' (1.0 when the loss and gradients are finite; the
  state is then left unchanged otherwise).
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (loss, parts), grads = grad_fn(state.params, state.batch_stats, batch,
                                 _device_key(key, state.step))
  grads = jax.lax.pmean(grads, AXIS)
  metrics = dict(parts, loss=loss)
  metrics = jax.lax.pmean(metrics, AXIS)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  keep = lambda new, old: jax.tree_util.tree_map(
      lambda a, b: jnp.where(finite, a, b), new, old)
  new_state = state.replace(step=state.step + 1,
                            params=keep(params, state.params),
                            opt_state=keep(opt_state, state.opt_state))
  metrics.update(grad_norm=grad_norm, learning_rate=schedule(state.step),
                 finite=finite.astype(jnp.float32))
  return new_state, metrics


def eval_step(state: TrainState, batch, key, *, task: tasks_lib.Task):
  """One device's validation metrics (averaged over 'batch') and counts
  (summed over 'batch'; empty without `task.eval_fn`)."""
  key = jax.random.fold_in(key, jax.lax.axis_index(AXIS))
  if task.eval_fn is None:
    loss, parts = task.loss_fn(state.params, state.batch_stats, batch, key)
    return jax.lax.pmean(dict(parts, loss=loss), AXIS), {}
  metrics, counts = task.eval_fn(state.params, state.batch_stats, batch, key)
  return jax.lax.pmean(metrics, AXIS), jax.lax.psum(counts, AXIS)


def run_evaluation(p_eval: Callable, state, batches: Iterator, key,
                   task: tasks_lib.Task) -> Dict[str, float]:
  """Validation over `batches` (already on the devices): 'eval_<metric>'
  averaged over batches, plus `task.summarize` of the summed counts."""
  sums, totals, n = collections.defaultdict(float), {}, 0
  for batch in batches:
    metrics, counts = jax.device_get(p_eval(state, batch, key))
    for k, v in metrics.items():
      sums[k] += float(v)
    for k, v in counts.items():
      totals[k] = totals[k] + np.asarray(v) if k in totals else np.asarray(v)
    n += 1
  if not n:
    return {}
  out = {f"eval_{k}": v / n for k, v in sums.items()}
  if task.summarize is not None and totals:
    out.update({f"eval_{k}": float(v)
                for k, v in task.summarize(totals).items()})
  return out


# -------------------------------------------------------------- parallelism


class Parallel:
  """Puts states/batches on the devices and wraps per-device functions for
  `config.parallel` ('pmap' or 'shard_map'); see the module docstring."""

  def __init__(self, mode: str, devices=None):
    """devices: all of jax.devices() by default (a subset: single process
    only, e.g. to compare device counts in one test process)."""
    if mode not in PARALLEL:
      raise ValueError(f"config.parallel must be one of {PARALLEL}, got "
                       f"{mode!r}")
    self.mode = mode
    self.devices = list(jax.devices() if devices is None else devices)
    self.local_devices = [d for d in self.devices
                          if d.process_index == jax.process_index()]
    # pmap: arrays [local devices, ...] split over the local devices.
    self._local = NamedSharding(Mesh(np.array(self.local_devices), (AXIS,)),
                                P(AXIS))
    if mode == "shard_map":
      self.mesh = Mesh(np.array(self.devices), (AXIS,))
      self._replicated = NamedSharding(self.mesh, P())
      self._sharded = NamedSharding(self.mesh, P(AXIS))

  def wrap(self, fn: Callable, updates_state: bool) -> Callable:
    """fn(state, batch [b, ...], key) -> (state, metrics) if updates_state
    else metrics; returns f(device state, device batch, key) with the state
    donated and the metrics replicated (one host-readable value each)."""
    if self.mode == "pmap":
      return jax.pmap(fn, axis_name=AXIS, in_axes=(0, 0, None),
                      devices=self.devices if len(self.devices) != len(
                          jax.devices()) else None,
                      out_axes=(0, None) if updates_state else None,
                      donate_argnums=(0,) if updates_state else ())

    def per_device(state, batch, key):
      batch = jax.tree_util.tree_map(lambda x: x[0], batch)
      return fn(state, batch, key)

    mapped = jax.shard_map(
        per_device, mesh=self.mesh, in_specs=(P(), P(AXIS), P()),
        out_specs=(P(), P()) if updates_state else P(),
        # As under pmap: per-device gradients, averaged by the explicit
        # pmean (with check_vma, gradients of replicated inputs would
        # already be summed over the axis).
        check_vma=False)
    return jax.jit(mapped, donate_argnums=(0,) if updates_state else ())

  def put_state(self, host_state):
    """Host state -> replicated on the devices."""
    if self.mode == "pmap":
      n = len(self.local_devices)
      return jax.tree_util.tree_map(
          lambda x: jax.device_put(
              np.broadcast_to(x, (n,) + np.shape(x)), self._local),
          host_state)
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_process_local_data(
            self._replicated, np.asarray(x)), host_state)

  def put_batch(self, batch):
    """NumPy [local_devices, b, ...] -> device arrays."""
    if self.mode == "pmap":
      return jax.device_put(batch, self._local)
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_process_local_data(self._sharded, x),
        batch)

  def host_state(self, state):
    """One NumPy copy of the replicated device state."""
    def one(x):
      data = np.asarray(x.addressable_shards[0].data)
      return data.reshape(x.shape[1:]) if self.mode == "pmap" else data
    return jax.tree_util.tree_map(one, state)


def prefetch(batches: Iterator, put: Callable, size: int = 2) -> Iterator:
  """Keeps `size` batches on the devices ahead of the consumer."""
  queue = collections.deque()
  for batch in batches:
    queue.append(put(batch))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


# ------------------------------------------------------------- checkpoints


def checkpoint_manager(workdir: str, config,
                       training: bool = False) -> ocp.CheckpointManager:
  """Async, keeps the last config.keep_checkpoints, in WORKDIR/checkpoints.

  Saves are atomic: orbax writes `<step>.orbax-checkpoint-tmp*` and renames
  it to `<step>` when complete, so a process killed during a save leaves
  only a temporary folder, which is never restored; `training` (the one
  writer of the folder) removes such leftovers when it opens the folder.
  """
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.keep_checkpoints,
      save_interval_steps=max(1, config.checkpoint_every_steps),
      enable_async_checkpointing=True,
      cleanup_tmp_directories=training)
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, "checkpoints")), options=options)


class CheckpointError(ValueError):
  """A checkpoint folder that cannot be restored."""


def restore_latest(manager: ocp.CheckpointManager,
                   host_state: TrainState) -> TrainState:
  """The latest checkpoint's state as NumPy (or host_state if none).

  A damaged latest checkpoint raises `CheckpointError` naming its folder
  and saying how to fall back to the step before it (no silent fallback:
  the run would otherwise repeat steps without saying so)."""
  step = manager.latest_step()
  if step is None:
    return host_state
  target = jax.tree_util.tree_map(np.asarray, host_state)
  try:
    restored = manager.restore(step, args=ocp.args.StandardRestore(target))
  except Exception as e:  # orbax / tensorstore raise many types.
    folder = os.path.join(os.fspath(manager.directory), str(step))
    earlier = [s for s in manager.all_steps() if s < step]
    if earlier:
      fallback = (f"to resume from the checkpoint of step {max(earlier)}, "
                  f"move it out of the checkpoint folder (mv {folder} "
                  f"{folder}.damaged) and run again")
    else:
      fallback = (f"it is the only checkpoint: move it out of the folder "
                  f"(mv {folder} {folder}.damaged) to start from step 0")
    raise CheckpointError(
        f"The checkpoint {folder} (step {step}) cannot be restored: "
        f"{type(e).__name__}: {e}. It may be damaged or written by another "
        f"model or config; {fallback}.") from e
  logging.info("Restored checkpoint of step %d", step)
  return jax.tree_util.tree_map(np.asarray, restored)


def save(manager: ocp.CheckpointManager, step: int, host_state) -> None:
  manager.save(step, args=ocp.args.StandardSave(host_state), force=True)


# -------------------------------------------------------------------- loop


def create_writer(workdir: str):
  """clu's default writer (TensorBoard events + console) in `workdir`;
  processes other than 0 only log."""
  return metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() != 0, asynchronous=False)


class NonFiniteLossError(FloatingPointError):
  pass


def _non_finite_message(step: int, metrics: Dict[str, float]) -> str:
  """Names the non-finite loss terms (else the total or the gradients)."""
  bad = [f"{k}={metrics[k]}" for k in sorted(metrics)
         if k.startswith("loss_") and not math.isfinite(metrics[k])]
  if not bad:
    bad = [f"{k}={metrics[k]}" for k in ("loss", "grad_norm")
           if k in metrics and not math.isfinite(metrics[k])]
  return (f"Non-finite loss at step {step}: {', '.join(bad)} (total loss="
          f"{metrics.get('loss')}); training stopped, the last good "
          "checkpoint is kept")


def run(config, workdir: str, task: tasks_lib.Task,
        train_iter_fn: Callable[[int, int], Iterator],
        eval_iter_fn: Optional[Callable[[int], Iterator]] = None,
        num_train_steps: Optional[int] = None,
        decay_steps=None, devices=None, writer=None) -> Dict[str, Any]:
  """Trains `task` (and evaluates when eval_iter_fn is given).

  SIGTERM / SIGINT during the call stop it cleanly (`preemption`): the
  step in progress finishes, its checkpoint is saved and waited for, and
  `preemption.TrainingInterrupted` is raised; the same call on the same
  workdir resumes exactly.

  train_iter_fn(start_step, per_device_batch) yields NumPy batches
  [local_devices, per_device_batch, ...] from start_step on;
  eval_iter_fn(per_device_batch) yields one pass of validation batches.
  devices: a subset of the devices (single process; tests).
  writer: a clu metric writer (default: `create_writer(workdir)`, process 0
    writes).
  Returns {'step', 'train' (last logged metrics), 'eval', 'history'
  (per-step metrics of this run), 'state' (host copy of the final state)}.
  """
  with preemption.StopRequest() as stop:
    result = _run(config, workdir, task, train_iter_fn, eval_iter_fn,
                  num_train_steps, decay_steps, devices, writer, stop)
  if stop.requested and not stop.multi_process:
    # The signal came after the last step's check (during its save): the
    # run is complete and saved, but the caller asked to stop, not to go
    # on (to the evaluation of train_and_evaluate, say).
    raise preemption.TrainingInterrupted(
        result["step"], stop.signal_name,
        os.path.abspath(os.path.join(workdir, "checkpoints")))
  return result


def _run(config, workdir, task, train_iter_fn, eval_iter_fn, num_train_steps,
         decay_steps, devices, writer, stop: preemption.StopRequest):
  """`run` with the stop request it listens to."""
  num_devices = jax.device_count() if devices is None else len(devices)
  validate_config(config, num_devices)
  num_steps = config.num_train_steps if num_train_steps is None else (
      num_train_steps)
  per_device = per_device_batch_size(config, num_devices)
  global_batch = per_device * num_devices
  par = Parallel(config.parallel, devices)
  schedule = create_learning_rate_fn(config, global_batch, decay_steps)
  key = jax.random.PRNGKey(config.seed)
  init_key, step_key, eval_key = jax.random.split(key, 3)

  # Abstract shapes first: the optimizer needs the trainable mask.
  shapes = jax.eval_shape(task.init, init_key)
  tx = create_optimizer(config, schedule, task.trainable(shapes["params"]))
  manager = checkpoint_manager(workdir, config, training=True)
  host_state = create_train_state(
      init_key, task, tx,
      config.init_from if manager.latest_step() is None else "")
  host_state = restore_latest(manager, host_state)
  start = int(host_state.step)

  is_chief = jax.process_index() == 0
  if writer is None:
    writer = create_writer(workdir)
  if start == 0:
    parameter_overview.log_parameter_overview(host_state.params)
    writer.write_hparams({k: v for k, v in config.to_dict().items()
                          if isinstance(v, (int, float, str, bool))})
  hooks = []
  if is_chief:
    # Progress lines with the time left (steps/s and images/s are written
    # by the loop below, every log_every_steps).
    hooks.append(periodic_actions.ReportProgress(num_train_steps=num_steps,
                                                 every_secs=60))
    if config.profile_steps:
      hooks.append(periodic_actions.Profile(
          num_profile_steps=config.profile_steps, logdir=workdir))

  p_train = par.wrap(functools.partial(
      train_step, loss_fn=task.loss_fn, tx=tx, schedule=schedule), True)
  p_eval = par.wrap(functools.partial(eval_step, task=task), False)

  def evaluate(state, step):
    out = run_evaluation(
        p_eval, state, prefetch(eval_iter_fn(per_device), par.put_batch),
        eval_key, task)
    if not out:
      logging.warning("The validation split gave no full batch")
      return {}
    writer.write_scalars(step, out)
    return out

  state = par.put_state(host_state)
  history, window, last_train, last_eval = [], [], {}, {}
  batches = prefetch(train_iter_fn(start, per_device), par.put_batch)
  t0 = time.time()
  step = start
  try:
    for step in range(start + 1, num_steps + 1):
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        state, metrics = p_train(state, next(batches), step_key)
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      if not metrics.pop("finite"):
        manager.wait_until_finished()
        raise NonFiniteLossError(_non_finite_message(step, metrics))
      history.append(metrics)
      window.append(metrics)
      for hook in hooks:
        hook(step)
      if step % config.log_every_steps == 0 or step == num_steps:
        dt = time.time() - t0
        last_train = {k: float(np.mean([m[k] for m in window]))
                      for k in window[0]}
        writer.write_scalars(step, dict(
            last_train, steps_per_sec=len(window) / dt,
            images_per_sec=len(window) * global_batch / dt))
        window, t0 = [], time.time()
      if eval_iter_fn is not None and config.eval_every_steps and (
          step % config.eval_every_steps == 0 or step == num_steps):
        last_eval = evaluate(state, step)
      stopping = stop.reached(step, manager)
      if (step % config.checkpoint_every_steps == 0 or step == num_steps or
          stopping):
        save(manager, step, par.host_state(state))
      if stopping:
        manager.wait_until_finished()
        interrupted = preemption.TrainingInterrupted(
            step, stop.signal_name, os.fspath(manager.directory))
        logging.warning("%s", interrupted)
        raise interrupted
  finally:
    manager.wait_until_finished()
    manager.close()
    writer.flush()
  return {"step": step, "train": last_train, "eval": last_eval,
          "history": history, "state": par.host_state(state)}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       evaluate: bool = True) -> Dict[str, Any]:
  """Trains config.variant on config.dataset in workdir (resuming from the
  latest checkpoint there). With `evaluate`: validation losses and semantic
  mIoU every eval_every_steps, and at the end online inference on the
  validation split with its VPQ (`vpsnet_jax.inference.run.evaluate`:
  WORKDIR/predictions, WORKDIR/vpq.json; on process 0 of a multi-process
  run). Returns `run`'s dict plus "vpq" (the VPQ result, or None)."""
  from vpsnet_jax.train import input as input_lib  # pylint: disable=g-import-not-at-top
  validate_config(config, inference=evaluate)
  source, index = input_lib.open_split(config, workdir, "train")
  val = input_lib.open_split(config, workdir, "val") if evaluate else None
  task = tasks_lib.create_task(config, input_lib.meta(config))
  num_steps, decay = config.num_train_steps, None
  if config.num_epochs:
    per_epoch = math.ceil(input_lib.num_train_pairs(index, config) *
                          config.epoch_repeats / global_batch_size(config))
    num_steps = config.num_epochs * per_epoch
    decay = [e * per_epoch for e in config.lr_decay_epochs]
    logging.info("%d steps per epoch: %d steps, lr decays at %s", per_epoch,
                 num_steps, decay)
  writer = create_writer(workdir)
  result = run(
      config, workdir, task,
      lambda start, b: input_lib.train_batches(source, index, config, b,
                                               start),
      (lambda b: input_lib.eval_batches(*val, config, b)) if val else None,
      num_train_steps=num_steps, decay_steps=decay, writer=writer)
  result["vpq"] = None
  if evaluate and jax.process_index() == 0:
    from vpsnet_jax.inference import run as inference  # pylint: disable=g-import-not-at-top
    state = result["state"]
    try:
      result["vpq"] = inference.evaluate(
          config, workdir, {"params": state.params,
                            "batch_stats": state.batch_stats},
          step=int(state.step), writer=writer)
    except (Exception, KeyboardInterrupt) as e:
      raise EvaluationAfterTrainingError(
          int(state.step), os.path.join(workdir, "checkpoints"), e) from e
  return result


class EvaluationAfterTrainingError(RuntimeError):
  """The evaluation at the end of `train_and_evaluate` failed; the
  training's checkpoint of `step` is saved (`--mode=evaluate` resumes)."""

  def __init__(self, step: int, checkpoint_dir: str, cause: BaseException):
    self.step, self.checkpoint_dir = step, checkpoint_dir
    super().__init__(
        f"Training finished and its checkpoint of step {step} is saved in "
        f"{checkpoint_dir}, but the final evaluation failed: "
        f"{type(cause).__name__}: {cause}. Evaluate that checkpoint with the "
        "same command and --mode=evaluate.")


def evaluate_checkpoint(config, workdir: str, task: tasks_lib.Task,
                        eval_iter_fn: Callable[[int], Iterator],
                        devices=None) -> Dict[str, float]:
  """Validation losses ('eval_*', averaged over batches) of the latest
  checkpoint in WORKDIR/checkpoints, on any device count."""
  num_devices = jax.device_count() if devices is None else len(devices)
  validate_config(config, num_devices)
  manager = checkpoint_manager(workdir, config)
  if manager.latest_step() is None:
    raise FileNotFoundError(f"No checkpoint in {workdir}/checkpoints")
  key = jax.random.PRNGKey(config.seed)
  init_key, _, eval_key = jax.random.split(key, 3)
  shapes = jax.eval_shape(task.init, init_key)
  tx = create_optimizer(config, create_learning_rate_fn(config, 1),
                        task.trainable(shapes["params"]))
  host_state = restore_latest(manager, create_train_state(init_key, task,
                                                          tx))
  manager.close()
  par = Parallel(config.parallel, devices)
  state = par.put_state(host_state)
  p_eval = par.wrap(functools.partial(eval_step, task=task), False)
  out = run_evaluation(
      p_eval, state,
      prefetch(eval_iter_fn(per_device_batch_size(config, num_devices)),
               par.put_batch), eval_key, task)
  if not out:
    raise ValueError("The validation split gave no full batch")
  return out


def load_variables(config, workdir: str, task: tasks_lib.Task
                   ) -> Tuple[Dict[str, Any], int]:
  """({"params", "batch_stats"}, step) of the latest checkpoint in
  WORKDIR/checkpoints (NumPy; no compile)."""
  manager = checkpoint_manager(workdir, config)
  try:
    if manager.latest_step() is None:
      raise FileNotFoundError(
          f"No checkpoint in {os.path.join(workdir, 'checkpoints')}; train "
          "first (--mode=train or train_and_evaluate)")
    init_key = jax.random.split(jax.random.PRNGKey(config.seed), 3)[0]
    shapes = jax.eval_shape(task.init, init_key)
    tx = create_optimizer(config, create_learning_rate_fn(config, 1),
                          task.trainable(shapes["params"]))
    zeros = lambda t: jax.tree_util.tree_map(
        lambda x: np.zeros(x.shape, x.dtype), t)
    target = TrainState(
        step=np.zeros((), np.int32), params=zeros(shapes["params"]),
        batch_stats=zeros(shapes.get("batch_stats", {})),
        opt_state=zeros(jax.eval_shape(tx.init, shapes["params"])))
    state = restore_latest(manager, target)
  finally:
    manager.close()
  return ({"params": state.params, "batch_stats": state.batch_stats},
          int(state.step))


def evaluate_only(config: ml_collections.ConfigDict, workdir: str
                  ) -> Dict[str, float]:
  """Validation losses and semantic mIoU of the latest checkpoint in
  workdir (config.dataset's validation split); `vpsnet_jax.inference.run.
  evaluate` gives its VPQ."""
  from vpsnet_jax.train import input as input_lib  # pylint: disable=g-import-not-at-top
  validate_config(config)
  val = input_lib.open_split(config, workdir, "val")
  task = tasks_lib.create_task(config, input_lib.meta(config))
  return evaluate_checkpoint(
      config, workdir, task,
      lambda b: input_lib.eval_batches(*val, config, b))
