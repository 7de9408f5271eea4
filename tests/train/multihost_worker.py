"""One process of the two-process training test (see test_multihost.py).

  python -m tests.train.multihost_worker COORDINATOR NUM_PROCESSES PROCESS_ID
      WORKDIR OUT_NPZ PARALLEL
"""

import sys

import jax
import numpy as np


def main(argv):
  coordinator, n, pid, workdir, out, parallel = argv[1:]
  jax.distributed.initialize(coordinator, int(n), int(pid))
  # pylint: disable=g-import-not-at-top
  from tests.train import tiny
  from vpsnet_jax.train import train
  config = tiny.config(parallel=parallel)
  result = train.run(config, workdir, tiny.task(use_key=True),
                     tiny.batches(jax.device_count(), jax.process_index(),
                                  jax.process_count()))
  if jax.process_index() == 0:
    leaves = jax.tree_util.tree_leaves(result["state"])
    np.savez(out, *[np.asarray(x) for x in leaves],
             losses=np.array([h["loss"] for h in result["history"]]))
  jax.distributed.shutdown()


if __name__ == "__main__":
  main(sys.argv)
