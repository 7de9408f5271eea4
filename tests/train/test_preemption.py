"""`train.run` on the tiny task (in-process) with real signals sent to this
process: the step in progress finishes and is saved, TrainingInterrupted
names it, the handlers are restored; a signal after the last step's check
still stops the caller; a second signal gets the previous handler."""

import os
import signal

import jax
import pytest

from tests.train import tiny
from vpsnet_jax.train import preemption
from vpsnet_jax.train import train


def _signalling(train_iter_fn, at_step, times=1, signum=signal.SIGTERM):
  """train_iter_fn that sends `signum` to this process `times` times when
  it hands out the batch of step `at_step`."""

  def fn(start, b):
    for step, batch in enumerate(train_iter_fn(start, b), start + 1):
      if step == at_step:
        for _ in range(times):
          os.kill(os.getpid(), signum)
      yield batch

  return fn


def _checkpoints(workdir):
  return sorted(int(n) for n in os.listdir(workdir / "checkpoints")
                if n.isdigit())


def test_sigterm_stops_after_the_step_and_saves_it(tmp_path):
  config = tiny.config(num_train_steps=20, checkpoint_every_steps=100)
  devices = jax.devices()[:1]
  previous = signal.getsignal(signal.SIGTERM)
  with pytest.raises(preemption.TrainingInterrupted) as e:
    train.run(config, str(tmp_path), tiny.task(),
              _signalling(tiny.batches(1), 4), devices=devices)
  # The loop prefetches two batches ahead: batch 4 is read before step 2
  # runs, which then finishes, is saved, and training stops.
  step = e.value.step
  assert step == 2 and e.value.signal_name == "SIGTERM"
  assert _checkpoints(tmp_path) == [step]
  assert signal.getsignal(signal.SIGTERM) is previous
  # The same call resumes from there to the end.
  result = train.run(config, str(tmp_path), tiny.task(), tiny.batches(1),
                     devices=devices)
  assert result["step"] == 20 and len(result["history"]) == 20 - step


class _FlushSignals:
  """A metric writer whose final flush receives a signal (after the loop's
  last check)."""

  def __init__(self):
    self.flushes = 0

  def write_scalars(self, step, scalars):
    del step, scalars

  def write_hparams(self, hparams):
    del hparams

  def flush(self):
    self.flushes += 1
    os.kill(os.getpid(), signal.SIGINT)


def test_a_signal_after_the_last_check_still_stops_the_caller(tmp_path):
  config = tiny.config(num_train_steps=3, checkpoint_every_steps=100)
  with pytest.raises(preemption.TrainingInterrupted) as e:
    train.run(config, str(tmp_path), tiny.task(), tiny.batches(1),
              devices=jax.devices()[:1], writer=_FlushSignals())
  assert e.value.step == 3 and e.value.signal_name == "SIGINT"
  assert _checkpoints(tmp_path) == [3]


def test_a_second_signal_goes_to_the_previous_handler(tmp_path):
  calls = []
  previous = signal.signal(signal.SIGTERM, lambda s, f: calls.append(s))
  try:
    config = tiny.config(num_train_steps=20, checkpoint_every_steps=100)
    with pytest.raises(preemption.TrainingInterrupted):
      train.run(config, str(tmp_path), tiny.task(),
                _signalling(tiny.batches(1), 4, times=2),
                devices=jax.devices()[:1])
  finally:
    signal.signal(signal.SIGTERM, previous)
  assert calls == [signal.SIGTERM]
