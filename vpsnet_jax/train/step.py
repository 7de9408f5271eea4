"""The train state and the per-device steps (wrapped by `parallel.Parallel`).

  state = create_train_state(key, task, tx)          # host copy, step 0
  state, metrics = train_step(state, batch, key, loss_fn=..., tx=...,
                              schedule=...)          # one device's step
  metrics, counts = eval_step(state, batch, key, task=task)

Randomness does not depend on the device layout: every example gets the key
`fold_in(fold_in(key, step), position)`, `position` being its place in the
global batch (`parallel.example_positions`), so 1 process x 4 devices,
2 x 2 and 4 x 1 draw the same samples for the same example.
"""

import collections
from typing import Any, Callable, Dict, Iterator, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vpsnet_jax.train import parallel
from vpsnet_jax.train import tasks as tasks_lib


@flax.struct.dataclass
class TrainState:
  """step: int32 scalar; params: trained; batch_stats: frozen BatchNorm
  statistics (never differentiated); opt_state: optax state over params."""
  step: Any
  params: Any
  batch_stats: Any
  opt_state: Any

  @property
  def variables(self) -> Dict[str, Any]:
    """What the model applies: {"params", "batch_stats"}."""
    return {"params": self.params, "batch_stats": self.batch_stats}


def _initial_state(variables, tx: optax.GradientTransformation
                   ) -> TrainState:
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(params))


def create_train_state(key, task: tasks_lib.Task,
                       tx: optax.GradientTransformation,
                       variables=None) -> TrainState:
  """Host-side (unreplicated) state at step 0 of `variables` (default:
  `task.init(key)`)."""
  if variables is None:
    variables = jax.jit(task.init)(key)
  return jax.device_get(_initial_state(variables, tx))


def abstract_train_state(key, task: tasks_lib.Task,
                         tx: optax.GradientTransformation) -> TrainState:
  """The state's shapes and dtypes (no compile, no allocation)."""
  return jax.eval_shape(lambda k: _initial_state(task.init(k), tx), key)


def example_keys(key, step, per_device_batch: int) -> jnp.ndarray:
  """[b] keys of this device's examples at `step` (module docstring)."""
  base = jax.random.fold_in(key, step)
  return jax.vmap(lambda p: jax.random.fold_in(base, p))(
      parallel.example_positions(per_device_batch))


def _batch_size(batch) -> int:
  return jax.tree_util.tree_leaves(batch)[0].shape[0]


def train_step(state: TrainState, batch: Dict[str, jnp.ndarray], key,
               *, loss_fn: Callable, tx: optax.GradientTransformation,
               schedule: optax.Schedule
               ) -> Tuple[TrainState, Dict[str, jnp.ndarray]]:
  """One device's step: loss and gradients on its batch ([b, ...]), pmean
  over the devices of gradients and metrics, one optax update.

  metrics: every loss term, 'loss', 'grad_norm' (before clipping),
  'learning_rate', 'finite' (1.0 when the loss and gradients are finite; the
  state is then left unchanged otherwise).
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  keys = example_keys(key, state.step, _batch_size(batch))
  (loss, parts), grads = grad_fn(state.params, state.batch_stats, batch, keys)
  grads = jax.lax.pmean(grads, parallel.AXIS)
  metrics = dict(parts, loss=loss)
  metrics = jax.lax.pmean(metrics, parallel.AXIS)
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
  """One device's validation metrics (averaged over the devices) and
  counts (summed; empty without `task.eval_fn`)."""
  keys = example_keys(key, 0, _batch_size(batch))
  if task.eval_fn is None:
    loss, parts = task.loss_fn(state.params, state.batch_stats, batch, keys)
    return jax.lax.pmean(dict(parts, loss=loss), parallel.AXIS), {}
  metrics, counts = task.eval_fn(state.params, state.batch_stats, batch,
                                 keys)
  return (jax.lax.pmean(metrics, parallel.AXIS),
          jax.lax.psum(counts, parallel.AXIS))


def validation_metrics(p_eval: Callable, state, batches: Iterator, key,
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
