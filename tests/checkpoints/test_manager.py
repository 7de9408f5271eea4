"""`vpsnet_jax.checkpoints.manager`: the two-item layout, the earlier
one-item layout, and the trainer's checks on restore."""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.train import tiny
from vpsnet_jax.checkpoints import manager as ckpt
from vpsnet_jax.errors import ConfigError
from vpsnet_jax.train import optim
from vpsnet_jax.train import step as step_lib
from vpsnet_jax.train import train

KEY = jax.random.PRNGKey(3)


def _state(seed: int):
  """A tiny task's state with nonzero optimizer moments (adamw)."""
  config = tiny.config(optimizer="adamw")
  task = tiny.task()
  tx = optim.create_optimizer(
      config, optim.create_learning_rate_fn(config, 8),
      task.trainable(jax.eval_shape(task.init, KEY)["params"]))
  state = step_lib.create_train_state(KEY, task, tx)
  rng = np.random.default_rng(seed)
  noisy = lambda t: jax.tree_util.tree_map(
      lambda x: (rng.normal(size=np.shape(x)) + 1).astype(np.asarray(x).dtype)
      if np.issubdtype(np.asarray(x).dtype, np.floating) else x, t)
  return state.replace(step=np.asarray(7, np.int32), params=noisy(
      state.params), opt_state=noisy(state.opt_state)), task, tx


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def _assert_equal(a, b):
  la, lb = _leaves(a), _leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(x, y)


def _assert_restores(workdir, state, task, tx, global_batch):
  manager = train.checkpoint_manager(str(workdir), tiny.config())
  restored = train.restore(manager, step_lib.abstract_train_state(
      KEY, task, tx), global_batch=global_batch)
  _assert_equal(restored, state)
  variables, step = ckpt.restore_model(manager,
                                       jax.eval_shape(task.init, KEY))
  manager.close()
  assert step == 7
  _assert_equal(variables, state.variables)


def test_two_items_and_the_model_alone(tmp_path):
  state, task, tx = _state(0)
  manager = train.checkpoint_manager(str(tmp_path), tiny.config(),
                                     training=True)
  train.save(manager, state, global_batch=8)
  manager.wait_until_finished()
  manager.close()
  assert {"model", "train_state"} <= set(
      os.listdir(tmp_path / "checkpoints" / "7"))

  # Training restores both items; inference the model variables alone,
  # without building an optimizer.
  _assert_restores(tmp_path, state, task, tx, global_batch=8)

  # Another global batch cannot resume exactly.
  manager = train.checkpoint_manager(str(tmp_path), tiny.config())
  with pytest.raises(ConfigError, match="global batch of 8 .* this run's "
                     "is 16"):
    train.restore(manager, step_lib.abstract_train_state(KEY, task, tx),
                  global_batch=16)
  manager.close()


def test_a_workdir_of_the_earlier_one_item_layout_restores(tmp_path):
  state, task, tx = _state(1)
  # What the earlier layout wrote: the whole TrainState as orbax's single
  # default item.
  old = ocp.CheckpointManager(os.path.join(tmp_path, "checkpoints"))
  old.save(7, args=ocp.args.StandardSave(state))
  old.wait_until_finished()
  old.close()
  assert os.path.isdir(tmp_path / "checkpoints" / "7" / "default")

  _assert_restores(tmp_path, state, task, tx, global_batch=16)  # No input
  # position in that layout: not checked.
  # init_from takes a step folder of either layout.
  zeros = jax.tree_util.tree_map(np.zeros_like, state.variables)
  _assert_equal(ckpt.init_from(str(tmp_path / "checkpoints" / "7"), zeros),
                state.variables)


def test_no_checkpoint_says_train_first(tmp_path):
  manager = train.checkpoint_manager(str(tmp_path), tiny.config())
  with pytest.raises(ConfigError, match="No checkpoint in .*train first"):
    ckpt.restore_model(manager, {"params": {}})
  manager.close()
