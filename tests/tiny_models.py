"""The tiny VPSNet of each variant with its jitted gradient and inference
functions, compiled once and shared by the tests of a module (released
after each module: tests/conftest.py).

Built from `vps_tiny.config(variant)` (conv 'auto': the CPU path here)
with the panoptic detection threshold at 0, so that random weights give
detections to compare.
"""
import gc

import jax
import jax.numpy as jnp

from data_pipeline import metadata
from tests import vps_tiny
from vpsnet_jax import experiment
from vpsnet_jax.modeling import vpsnet
from vpsnet_jax.train import tasks

META = metadata.SYNTHETIC


def example_keys(key, n: int):
  """[n] keys, those `train.step.train_step` gives the examples of one
  device's batch at step 0: fold_in(fold_in(key, 0), position)."""
  base = jax.random.fold_in(key, 0)
  return jax.vmap(lambda p: jax.random.fold_in(base, p))(
      jnp.arange(n, dtype=jnp.int32))


def config(variant: str, **overrides):
  """The config of `compiled(variant)` (plus `overrides`, '__' for '.')."""
  return vps_tiny.config(variant, model__panoptic_score_threshold=0.0,
                         **overrides)


class Compiled:
  """A variant's task, its variables (`task.init(PRNGKey(0))`), jitted
  `grad(params, batch, key)` (value_and_grad of the task's loss, with
  aux; the examples' keys are `example_keys(key, batch size)`) and
  `infer(variables, images, size, ref, flow, has_ref)`, and trace
  counters."""

  def __init__(self, variant):
    self.config = config(variant)
    self.task = tasks.create_task(self.config, META)
    self.model = vpsnet.VPSNet(experiment.model_config(self.config, META))
    self.variables = jax.jit(self.task.init)(jax.random.PRNGKey(0))
    self.traces = {"grad": 0, "infer": 0}

    def loss(params, batch, key):
      self.traces["grad"] += 1
      keys = example_keys(key, jax.tree_util.tree_leaves(batch)[0].shape[0])
      return self.task.loss_fn(params, self.variables["batch_stats"], batch,
                               keys)

    self.grad = jax.jit(jax.value_and_grad(loss, has_aux=True))

    def infer(variables, images, size, ref, flow, has_ref):
      self.traces["infer"] += 1
      return self.model.apply(variables, images, size, ref, flow, has_ref,
                              method=self.model.infer)

    self.infer = jax.jit(infer)


_CACHE = {}


def compiled(variant: str) -> Compiled:
  """The session's `Compiled` of `variant` (built on first use)."""
  if variant not in _CACHE:
    _CACHE[variant] = Compiled(variant)
  return _CACHE[variant]


def release(variant: str) -> None:
  """Drops `variant`'s compiled functions (their executables are freed with
  them): a test module that uses a variant last calls this, so that a
  session does not hold every variant's executables at once."""
  _CACHE.pop(variant, None)
  gc.collect()


def release_all() -> None:
  """Drops every variant's compiled functions (tests/conftest.py, after
  each module)."""
  _CACHE.clear()
