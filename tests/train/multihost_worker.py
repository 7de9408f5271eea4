"""One process of the two-process training test (see test_multihost.py).

  python -m tests.train.multihost_worker COORDINATOR NUM_PROCESSES PROCESS_ID
      WORKDIR OUT_NPZ PARALLEL [SIGTERM_AT]

SIGTERM_AT: process 1 sends itself SIGTERM when it reads the batch of that
step (a scheduler's notice to one host); every process then stops at the
step JAX's preemption service agrees on, saves it and prints
"stopped at step N", exiting 75.
"""

import os
import signal
import sys

import jax
import numpy as np


def main(argv):
  coordinator, n, pid, workdir, out, parallel = argv[1:7]
  jax.distributed.initialize(coordinator, int(n), int(pid))
  # pylint: disable=g-import-not-at-top
  from tests.train import tiny
  from vpsnet_jax.train import train
  from vpsnet_jax.train import preemption
  config = tiny.config(parallel=parallel)
  train_iter_fn = tiny.batches(jax.device_count(), jax.process_index(),
                               jax.process_count())
  if len(argv) > 7:
    sigterm_at = int(argv[7])
    config.num_train_steps = 100000
    config.checkpoint_every_steps = 100000
    inner = train_iter_fn

    def train_iter_fn(start, b):
      for step, batch in enumerate(inner(start, b), start + 1):
        if step == sigterm_at and jax.process_index() == 1:
          os.kill(os.getpid(), signal.SIGTERM)
        yield batch

    try:
      train.run(config, workdir, tiny.task(use_key=True), train_iter_fn)
    except preemption.TrainingInterrupted as e:
      print(f"stopped at step {e.step}", flush=True)
      jax.distributed.shutdown()
      sys.exit(preemption.PREEMPTED_EXIT_CODE)
    sys.exit(1)  # Never reached the preemption point.
  result = train.run(config, workdir, tiny.task(use_key=True), train_iter_fn)
  if jax.process_index() == 0:
    leaves = jax.tree_util.tree_leaves(result["state"])
    np.savez(out, *[np.asarray(x) for x in leaves],
             losses=np.array([h["loss"] for h in result["history"]]))
  jax.distributed.shutdown()


if __name__ == "__main__":
  main(sys.argv)
