"""Two processes on 127.0.0.1 with two CPU devices each (gloo collectives)
train to the same parameters as one process with four devices."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.train import tiny
from vpsnet_jax.train import train

pytestmark = pytest.mark.slow  # Several processes training.

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.parametrize("parallel", ["pmap", "shard_map"])
def test_two_processes_equal_one_process_with_four_devices(tmp_path,
                                                           parallel):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_NUM_CPU_DEVICES="2", JAX_PLATFORMS="cpu",
             PYTHONPATH=ROOT)
  coordinator = f"127.0.0.1:{_free_port()}"
  out = tmp_path / "params.npz"
  procs = [subprocess.Popen(
      [sys.executable, "-m", "tests.train.multihost_worker", coordinator,
       "2", str(i), str(tmp_path / "multi"), str(out), parallel],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=240)
    assert p.returncode == 0, err[-3000:]

  assert jax.device_count() == 4
  single = train.run(tiny.config(parallel=parallel),
                     str(tmp_path / "single"), tiny.task(use_key=True),
                     tiny.batches(4))
  multi = np.load(out)
  leaves = jax.tree_util.tree_leaves(single["state"])
  for i, x in enumerate(leaves):
    np.testing.assert_allclose(multi[f"arr_{i}"], np.asarray(x), rtol=1e-6,
                               atol=1e-7)
  np.testing.assert_allclose(multi["losses"],
                             [h["loss"] for h in single["history"]],
                             rtol=1e-6)
  # Both processes wrote one checkpoint folder through orbax.
  assert sorted(os.listdir(tmp_path / "multi" / "checkpoints")) == [
      "2", "4", "6"]


def test_sigterm_to_one_process_stops_every_process_at_one_step(tmp_path):
  """JAX's preemption service: process 1 gets SIGTERM when it reads the
  batch of step 20; both processes save the same step (one checkpoint) and
  exit 75."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_NUM_CPU_DEVICES="2", JAX_PLATFORMS="cpu",
             PYTHONPATH=ROOT)
  coordinator = f"127.0.0.1:{_free_port()}"
  procs = [subprocess.Popen(
      [sys.executable, "-m", "tests.train.multihost_worker", coordinator,
       "2", str(i), str(tmp_path / "multi"), str(tmp_path / "unused.npz"),
       "pmap", "20"],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  stopped = []
  for p in procs:
    out, err = p.communicate(timeout=240)
    assert p.returncode == 75, err[-3000:]
    stopped.append(int(out.split("stopped at step ")[1].split()[0]))
  # The loop prefetches two batches ahead: batch 20 is read before step 18
  # runs, the earliest step the preemption service can agree on.
  assert stopped[0] == stopped[1] >= 18, stopped
  assert os.listdir(tmp_path / "multi" / "checkpoints") == [str(stopped[0])]
