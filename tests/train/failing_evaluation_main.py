"""`main.py` whose evaluation after training fails (an injected OSError),
for tests/train/test_interruption.py: run it exactly as main.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position

import main  # pylint: disable=g-import-not-at-top,wrong-import-position
from vpsnet_jax.inference import run  # pylint: disable=g-import-not-at-top,wrong-import-position


def _failing_evaluate(*args, **kwargs):
  del args, kwargs
  raise OSError("disk full (injected)")


if __name__ == "__main__":
  run.evaluate = _failing_evaluate
  app.run(main.main)
