"""A tiny task for testing the loop's mechanics (not the detector).

Model: y_hat = relu((x * scale) @ stem) @ head.w + head.b with x (b, 8);
`stem` is frozen (trainable False), `scale` is a frozen batch statistic.
Batches are a deterministic function of the step: every array
[num_devices, per_device_batch, ...], the same global batch for any layout.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from configs import default
from vpsnet_jax.train import tasks


def config(**overrides):
  c = default.get_config()
  c.num_train_steps = 6
  c.per_device_batch_size = 2
  c.base_learning_rate = 0.05
  c.learning_rate_batch = 8
  c.warmup_steps = 2
  c.lr_decay_steps = (4,)
  c.checkpoint_every_steps = 2
  c.log_every_steps = 2
  c.eval_every_steps = 0
  for k, v in overrides.items():
    c[k] = v
  return c


def task(use_key: bool = False) -> tasks.Task:
  """use_key adds a random term (so results depend on the examples' keys)."""

  def init(key):
    k1, k2 = jax.random.split(key)
    return {"params": {"stem": {"w": jax.random.normal(k1, (8, 16)) * 0.3},
                       "head": {"w": jax.random.normal(k2, (16, 1)) * 0.3,
                                "b": jnp.zeros((1,))}},
            "batch_stats": {"scale": jnp.full((8,), 0.5)}}

  def loss_fn(params, batch_stats, batch, key):
    h = jax.nn.relu((batch["x"] * batch_stats["scale"]) @ params["stem"]["w"])
    pred = (h @ params["head"]["w"])[:, 0] + params["head"]["b"][0]
    mse = jnp.mean((pred - batch["y"]) ** 2)
    parts = {"loss_mse": mse}
    if use_key:
      # `key`: one key per example of the device's batch.
      noise = jax.vmap(lambda k: jax.random.normal(k, ()))(key)
      parts["loss_noise"] = 0.1 * jnp.mean(noise) * jnp.sum(
          params["head"]["w"])
    return sum(parts.values()), parts

  def trainable(params):
    return {"stem": jax.tree_util.tree_map(lambda _: False, params["stem"]),
            "head": jax.tree_util.tree_map(lambda _: True, params["head"])}

  return tasks.Task(init=init, loss_fn=loss_fn, trainable=trainable)


def global_batch(step: int, size: int, nan: bool = False):
  rng = np.random.default_rng([7, step])
  x = rng.normal(size=(size, 8)).astype(np.float32)
  y = (np.sin(x[:, 0]) + 0.5 * x[:, 1]).astype(np.float32)
  if nan:
    y[:] = np.nan
  return {"x": x, "y": y}


def batches(num_devices: int, process_index: int = 0,
            process_count: int = 1, nan_at_step: int = -1,
            stop_after: int = -1):
  """train_iter_fn(start, b) for `run`: this process's rows of step s's
  global batch (num_devices * b rows), [local_devices, b, ...].
  stop_after: raise KeyboardInterrupt after that many batches (a kill)."""

  def fn(start, b):
    local = num_devices // process_count
    for n, step in enumerate(itertools.count(start + 1)):
      if n == stop_after:
        raise KeyboardInterrupt("killed")
      g = global_batch(step, num_devices * b, nan=step == nan_at_step)
      rows = slice(process_index * local * b, (process_index + 1) * local * b)
      yield {k: v[rows].reshape((local, b) + v.shape[1:])
             for k, v in g.items()}

  return fn
