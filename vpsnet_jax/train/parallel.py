"""Data parallelism: one per-device function, wrapped for `config.parallel`.

A per-device function is written with `axis_name=AXIS` collectives and
wrapped in one place (`Parallel.wrap`): 'pmap' (default; state replicated
and donated, metrics returned replicated with out_axes=None) or
'shard_map' (jax.jit of jax.shard_map over a one-axis mesh of all
devices). Batches are [local_devices, per_device_batch, ...] in both; the
device at index i of AXIS holds the examples i * b ... i * b + b - 1 of the
global batch (`example_positions`), whatever the process layout.
"""

import collections
from typing import Callable, Iterator

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import jax.numpy as jnp
import numpy as np

from vpsnet_jax import experiment

AXIS = "batch"
# config.parallel.
PARALLEL = ("pmap", "shard_map")


def example_positions(per_device_batch: int) -> jnp.ndarray:
  """int32 [b]: the positions in the global batch of this device's
  examples (inside a wrapped function)."""
  return (jax.lax.axis_index(AXIS) * per_device_batch +
          jnp.arange(per_device_batch, dtype=jnp.int32))


class Parallel:
  """Puts states/batches on the devices and wraps per-device functions for
  `config.parallel` ('pmap' or 'shard_map'); see the module docstring."""

  def __init__(self, mode: str, devices=None):
    """devices: all of jax.devices() by default (a subset: single process
    only, e.g. to compare device counts in one test process)."""
    experiment.check_choice("parallel", mode, PARALLEL)
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
