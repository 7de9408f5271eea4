"""The training loop (Flax `examples/imagenet` style).

  train(config, workdir)                         the experiment's training,
                                                 resuming in workdir
  run(config, workdir, task, train_iter_fn, ...) the loop on any `Task`
  validation_losses(config, workdir, task, ...)  of the latest checkpoint

The pieces: `step` (train state and per-device steps), `parallel` (pmap /
shard_map), `optim` (schedule, optimizer), `input` (batches), `tasks`
(what is trained), `vpsnet_jax.checkpoints.manager` (orbax). The VPQ of the
trained model is inference's job (`vpsnet_jax.inference.run.evaluate`);
`main.py --mode=train_and_evaluate` runs one after the other.

A step's global batch is a function of (seed, step) and every example's
randomness of (seed, step, its position in the global batch), so the
parameters after a step do not depend on how the devices are spread over
processes; the checkpoint holds the step, so a restart resumes exactly.
"""

import functools
import math
import os
import time
from typing import Any, Callable, Dict, Iterator, Optional

from absl import logging
from clu import parameter_overview
from clu import periodic_actions
import jax
import numpy as np

from data_pipeline import sources
from vpsnet_jax import experiment
from vpsnet_jax.checkpoints import manager as ckpt
from vpsnet_jax.errors import ConfigError
from vpsnet_jax.train import input as input_lib
from vpsnet_jax.train import optim
from vpsnet_jax.train import parallel
from vpsnet_jax.train import preemption
from vpsnet_jax.train import step as step_lib
from vpsnet_jax.train import tasks as tasks_lib


def validate(config, fields=None, device_count: Optional[int] = None,
             check_devices: bool = True) -> None:
  """`experiment.validate_config` plus the training fields (ConfigError)."""
  experiment.validate_config(config, fields, device_count, check_devices)
  if experiment.flow_on_device(config) and experiment.reads_flow(config):
    experiment.check_flownet2_checkpoint(config)
  experiment.check_choice("parallel", config.parallel, parallel.PARALLEL)
  experiment.check_choice("optimizer", config.optimizer, optim.OPTIMIZERS)


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


def checkpoint_manager(workdir: str, config, training: bool = False):
  return ckpt.checkpoint_manager(workdir, config.keep_checkpoints,
                                 config.checkpoint_every_steps, training)


def save(manager, state: step_lib.TrainState, global_batch: int) -> None:
  """Saves the host copy `state` as the model and training-state items."""
  step = int(state.step)
  ckpt.save(manager, step, state.variables, {
      "step": state.step, "opt_state": state.opt_state,
      "input_position": np.asarray(step * global_batch, np.int64)})


def restore(manager, abstract: step_lib.TrainState,
            global_batch: int) -> step_lib.TrainState:
  """The latest checkpoint as a host `TrainState` of `abstract`'s
  structure; a checkpoint trained with another global batch cannot resume
  exactly (ConfigError)."""
  model, state = ckpt.restore(
      manager, abstract.variables,
      {"step": abstract.step, "opt_state": abstract.opt_state,
       "input_position": jax.ShapeDtypeStruct((), np.int64)})
  step, seen = int(state["step"]), int(state["input_position"])
  if seen >= 0 and seen != step * global_batch:
    raise ConfigError(
        f"The checkpoint of step {step} in {manager.directory} was trained "
        f"with a global batch of {seen // max(step, 1)} (it has seen {seen} "
        f"examples); this run's is {global_batch}. Resume with the same "
        "global batch (config.global_batch_size or per_device_batch_size "
        "and the device count) or start in a new workdir.")
  return step_lib.TrainState(step=state["step"], params=model["params"],
                             batch_stats=model["batch_stats"],
                             opt_state=state["opt_state"])


def run(config, workdir: str, task: tasks_lib.Task,
        train_iter_fn: Callable[[int, int], Iterator],
        eval_iter_fn: Optional[Callable[[int], Iterator]] = None,
        num_train_steps: Optional[int] = None,
        decay_steps=None, devices=None, writer=None) -> Dict[str, Any]:
  """Trains `task` (and validates when eval_iter_fn is given).

  SIGTERM / SIGINT during the call stop it cleanly (`preemption`): the
  step in progress finishes, its checkpoint is saved and waited for, and
  `preemption.TrainingInterrupted` is raised; the same call on the same
  workdir resumes exactly.

  train_iter_fn(start_step, per_device_batch) yields NumPy batches
  [local_devices, per_device_batch, ...] from start_step on;
  eval_iter_fn(per_device_batch) yields one pass of validation batches.
  devices: a subset of the devices (single process; tests).
  writer: a clu metric writer (default: `experiment.create_writer`).
  Returns {'step', 'train' (last logged metrics), 'eval', 'history'
  (per-step metrics of this run), 'state' (host copy of the final state)}.
  """
  with preemption.StopRequest() as stop:
    result = _run(config, workdir, task, train_iter_fn, eval_iter_fn,
                  num_train_steps, decay_steps, devices, writer, stop)
  if stop.requested and not stop.multi_process:
    # The signal came after the last step's check (during its save): the
    # run is complete and saved, but the caller asked to stop, not to go
    # on (to an evaluation, say).
    raise preemption.TrainingInterrupted(
        result["step"], stop.signal_name,
        os.path.abspath(os.path.join(workdir, "checkpoints")))
  return result


def _initial_state(config, task, tx, manager, init_key, global_batch):
  """The latest checkpoint's state, else step 0 (from config.init_from)."""
  if manager.latest_step() is not None:
    return restore(manager, step_lib.abstract_train_state(init_key, task, tx),
                   global_batch)
  variables = jax.jit(task.init)(init_key)
  if config.init_from:
    variables = ckpt.init_from(config.init_from, variables)
  if task.prepare is not None:
    variables = task.prepare(jax.device_get(variables))
  return step_lib.create_train_state(init_key, task, tx, variables)


def _run(config, workdir, task, train_iter_fn, eval_iter_fn, num_train_steps,
         decay_steps, devices, writer, stop: preemption.StopRequest):
  """`run` with the stop request it listens to."""
  num_devices = jax.device_count() if devices is None else len(devices)
  validate(config, device_count=num_devices)
  num_steps = config.num_train_steps if num_train_steps is None else (
      num_train_steps)
  per_device = experiment.per_device_batch_size(config, num_devices)
  global_batch = per_device * num_devices
  par = parallel.Parallel(config.parallel, devices)
  schedule = optim.create_learning_rate_fn(config, global_batch, decay_steps)
  key = jax.random.PRNGKey(config.seed)
  init_key, step_key, eval_key = jax.random.split(key, 3)

  # Abstract shapes first: the optimizer needs the trainable mask.
  shapes = jax.eval_shape(task.init, init_key)
  tx = optim.create_optimizer(config, schedule,
                              task.trainable(shapes["params"]))
  manager = checkpoint_manager(workdir, config, training=True)
  host_state = _initial_state(config, task, tx, manager, init_key,
                              global_batch)
  start = int(host_state.step)

  if writer is None:
    writer = experiment.create_writer(workdir)
  if start == 0:
    parameter_overview.log_parameter_overview(host_state.params)
    writer.write_hparams({k: v for k, v in config.to_dict().items()
                          if isinstance(v, (int, float, str, bool))})
  hooks = []
  if jax.process_index() == 0:
    # Progress lines with the time left (steps/s and images/s are written
    # by the loop below, every log_every_steps).
    hooks.append(periodic_actions.ReportProgress(num_train_steps=num_steps,
                                                 every_secs=60))
    if config.profile_steps:
      hooks.append(periodic_actions.Profile(
          num_profile_steps=config.profile_steps, logdir=workdir))

  p_train = par.wrap(functools.partial(
      step_lib.train_step, loss_fn=task.loss_fn, tx=tx, schedule=schedule),
                     True)
  p_eval = par.wrap(functools.partial(step_lib.eval_step, task=task), False)

  def log_validation(state, step):
    out = step_lib.validation_metrics(
        p_eval, state,
        parallel.prefetch(eval_iter_fn(per_device), par.put_batch),
        eval_key, task)
    if not out:
      logging.warning("The validation split gave no full batch")
      return {}
    writer.write_scalars(step, out)
    return out

  state = par.put_state(host_state)
  history, window, last_train, last_eval = [], [], {}, {}
  batches = parallel.prefetch(train_iter_fn(start, per_device),
                              par.put_batch)
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
        last_eval = log_validation(state, step)
      stopping = stop.reached(step, manager)
      if (step % config.checkpoint_every_steps == 0 or step == num_steps or
          stopping):
        save(manager, par.host_state(state), global_batch)
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


def train(config, workdir: str, validation: bool = True,
          writer=None) -> Dict[str, Any]:
  """Trains config.variant on config.dataset in workdir (resuming from the
  latest checkpoint there); with `validation`, validation losses and
  semantic mIoU every eval_every_steps. Returns `run`'s dict."""
  validate(config)
  source, index = sources.open_split(config, workdir, "train")
  val = sources.open_split(config, workdir, "val") if validation else None
  task = tasks_lib.create_task(config, sources.meta(config))
  num_steps, decay = config.num_train_steps, None
  if config.num_epochs:
    per_epoch = math.ceil(input_lib.num_train_pairs(index, config) *
                          config.epoch_repeats /
                          experiment.global_batch_size(config))
    num_steps = config.num_epochs * per_epoch
    decay = [e * per_epoch for e in config.lr_decay_epochs]
    logging.info("%d steps per epoch: %d steps, lr decays at %s", per_epoch,
                 num_steps, decay)
  return run(
      config, workdir, task,
      lambda start, b: input_lib.train_batches(source, index, config, b,
                                               start),
      (lambda b: input_lib.eval_batches(*val, config, b)) if val else None,
      num_train_steps=num_steps, decay_steps=decay, writer=writer)


def validation_losses(config, workdir: str, task: tasks_lib.Task,
                      eval_iter_fn: Callable[[int], Iterator],
                      devices=None) -> Dict[str, float]:
  """Validation losses ('eval_*', averaged over batches) of the latest
  checkpoint in WORKDIR/checkpoints, on any device count."""
  num_devices = jax.device_count() if devices is None else len(devices)
  validate(config, device_count=num_devices)
  init_key, _, eval_key = jax.random.split(jax.random.PRNGKey(config.seed), 3)
  manager = checkpoint_manager(workdir, config)
  try:
    variables, step = ckpt.restore_model(
        manager, jax.eval_shape(task.init, init_key))
  finally:
    manager.close()
  par = parallel.Parallel(config.parallel, devices)
  state = par.put_state(step_lib.TrainState(
      step=np.asarray(step, np.int32), params=variables["params"],
      batch_stats=variables["batch_stats"], opt_state={}))
  p_eval = par.wrap(functools.partial(step_lib.eval_step, task=task), False)
  out = step_lib.validation_metrics(
      p_eval, state, parallel.prefetch(
          eval_iter_fn(experiment.per_device_batch_size(config, num_devices)),
          par.put_batch), eval_key, task)
  if not out:
    raise ConfigError("The validation split gave no full batch")
  return out
