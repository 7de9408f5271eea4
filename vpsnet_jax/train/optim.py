"""The learning-rate schedule and the optimizer (optax).

  schedule = create_learning_rate_fn(config, global_batch)
  tx = create_optimizer(config, schedule, trainable)
"""

from typing import Any

import jax
import optax

from vpsnet_jax import experiment

# config.optimizer: the paper's SGD, or AdamW.
OPTIMIZERS = ("sgd", "adamw")


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


def create_optimizer(config, schedule: optax.Schedule,
                     trainable: Any) -> optax.GradientTransformation:
  """On the trainable leaves (`trainable`: pytree of bools), zero updates
  elsewhere: config.optimizer 'sgd' (the paper's): clip_by_global_norm ->
  add_decayed_weights -> sgd(momentum); 'adamw': clip_by_global_norm ->
  adamw (decoupled weight decay)."""
  experiment.check_choice("optimizer", config.optimizer, OPTIMIZERS)
  if config.optimizer == "sgd":
    train = optax.chain(
        optax.clip_by_global_norm(config.grad_clip_norm),
        optax.add_decayed_weights(config.weight_decay),
        optax.sgd(schedule, momentum=config.momentum))
  else:
    train = optax.chain(
        optax.clip_by_global_norm(config.grad_clip_norm),
        optax.adamw(schedule, weight_decay=config.weight_decay))
  labels = jax.tree_util.tree_map(lambda t: "train" if t else "frozen",
                                  trainable)
  return optax.multi_transform({"train": train,
                                "frozen": optax.set_to_zero()}, labels)
