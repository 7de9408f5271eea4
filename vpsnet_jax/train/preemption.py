"""Stopping training cleanly on SIGTERM / SIGINT.

SLURM, Kubernetes and spot / preemptible machines send SIGTERM some seconds
before they stop a job; Ctrl-C sends SIGINT. `StopRequest` turns either
into a flag that the training loop reads after each step: the loop then
saves a checkpoint of that step (the complete state of a periodic save; the
input pipeline is a function of the step, so the input position is in it),
waits for the asynchronous save, and raises `TrainingInterrupted`, which
`main.py` turns into the exit status `PREEMPTED_EXIT_CODE`.

  with StopRequest() as stop:
    for step in ...:
      ...
      if stop.reached(step, manager):
        save; raise TrainingInterrupted(step, stop.signal_name, directory)

Single process: Python handlers for SIGTERM and SIGINT that only set the
flag (a second signal of the same kind gets the previous handler's
behaviour, so a second Ctrl-C still stops at once).

Several processes (jax.distributed): every process must save the same step,
so SIGTERM stays with JAX's preemption service (its own handler notifies
every process, and `CheckpointManager.reached_preemption(step)` is true on
all of them at the same step); SIGINT is forwarded to that service as a
SIGTERM to this process.
"""

import os
import signal
import threading
from typing import Optional

from absl import logging
import jax

# EX_TEMPFAIL of sysexits.h ("temporary failure; the user is invited to
# retry"): the run stopped on request with its checkpoint saved, and the
# same command resumes it. A wrapper or a scheduler rule requeues on it
# (SLURM: `scontrol requeue $SLURM_JOB_ID` when the status is 75;
# Kubernetes: a podFailurePolicy rule `onExitCodes: {operator: In,
# values: [75]}`), while a crash exits 1 and a hard kill 137 / 143.
PREEMPTED_EXIT_CODE = 75


class TrainingInterrupted(Exception):
  """Training stopped on a signal after saving the checkpoint of `step`."""

  def __init__(self, step: int, signal_name: str, checkpoint_dir: str):
    self.step, self.signal_name = step, signal_name
    self.checkpoint_dir = checkpoint_dir
    super().__init__(
        f"Training stopped by {signal_name} at step {step}; the checkpoint "
        f"of step {step} is saved in {checkpoint_dir}. Run the same command "
        "again to resume from it.")


class StopRequest:
  """Context manager: a flag set by SIGTERM / SIGINT while it is active.

  Attributes:
    requested: True once a signal arrived.
    signal_name: "SIGTERM" or "SIGINT" (the first one received).
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self, multi_process: Optional[bool] = None):
    self.multi_process = (jax.process_count() > 1 if multi_process is None
                          else multi_process)
    self.requested = False
    self.signal_name = ""
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if self.requested:
      # A second signal: behave as the previous handler would have.
      previous = self._previous.get(signum, signal.SIG_DFL)
      signal.signal(signum, previous)
      logging.warning("Second %s: stopping without waiting for the "
                      "checkpoint", name)
      os.kill(os.getpid(), signum)
      return
    self.requested, self.signal_name = True, name
    logging.warning("%s received: training stops after this step and saves "
                    "its checkpoint", name)
    if self.multi_process:
      os.kill(os.getpid(), signal.SIGTERM)  # To JAX's preemption service.

  def reached(self, step: int, manager) -> bool:
    """Whether to save and stop after `step`: a signal of this process
    (single process), or JAX's preemption sync point (any process count;
    `manager` is the orbax CheckpointManager, asked at every step)."""
    if manager.reached_preemption(step):
      self.signal_name = self.signal_name or "SIGTERM"
      return True
    return self.requested and not self.multi_process

  def __enter__(self) -> "StopRequest":
    if threading.current_thread() is not threading.main_thread():
      logging.warning("Training outside the main thread: SIGTERM / SIGINT "
                      "are not caught")
      return self
    signals = (signal.SIGINT,) if self.multi_process else self.SIGNALS
    for s in signals:
      self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for s, previous in self._previous.items():
      signal.signal(s, previous)
    self._previous = {}
