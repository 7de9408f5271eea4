"""Training that survives what stops real jobs, through `main.py` in
subprocesses at the tiny sizes: SIGTERM saves the current step and exits
75, and the rerun ends with the parameters of an uninterrupted
run; a SIGKILL during an asynchronous save leaves a workdir that resumes
from the last complete checkpoint; a damaged checkpoint names its folder
and how to fall back; a failed evaluation after training keeps the
training and gives the --mode=evaluate command that finishes the job."""

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from data_pipeline import sources
from tests import conftest
from tests import vps_tiny
from vpsnet_jax.checkpoints import manager as ckpt
from vpsnet_jax.inference import run
from vpsnet_jax.train import preemption

pytestmark = pytest.mark.slow  # main.py in subprocesses; tiny_training.

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
STEPS = conftest.TINY_STEPS


def _command(workdir, *extra, mode="train"):
  return conftest.tiny_main_command(
      workdir, f"--config.num_train_steps={STEPS}",
      "--config.log_every_steps=1", "--config.eval_every_steps=0", *extra,
      mode=mode)


def _run(cmd, env, timeout=900):
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)
  return proc


def _flat(tree, prefix=""):
  """{path: NumPy array} of a restored pytree (dicts, lists, tuples)."""
  import jax  # pylint: disable=g-import-not-at-top
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {prefix + jax.tree_util.keystr(p): np.asarray(x) for p, x in leaves}


def _params(workdir, step, opt_state=True):
  """The params (and optimizer state) of WORKDIR/checkpoints/STEP."""
  folder = os.path.join(workdir, "checkpoints", str(step))
  out = _flat(ocp.StandardCheckpointer().restore(
      os.path.join(folder, "model"))["params"])
  if opt_state:
    out.update(_flat(ocp.StandardCheckpointer().restore(
        os.path.join(folder, "train_state"))["opt_state"], "opt"))
  return out


def _assert_same(a, b):
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _steps(workdir):
  return sorted(int(n) for n in os.listdir(os.path.join(workdir,
                                                        "checkpoints"))
                if n.isdigit())


@pytest.fixture(name="reference")
def reference_fixture(tiny_training):
  """An uninterrupted run of STEPS steps with a checkpoint at every step."""
  return tiny_training


def _start_and_signal(cmd, env, after_step, signum):
  """Starts `cmd`, sends `signum` once step `after_step` is logged; returns
  (return code, stderr)."""
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  lines, sent = [], False
  for line in proc.stderr:  # To the end (the stop's messages included).
    lines.append(line)
    if not sent and f"] [{after_step}] " in line:
      proc.send_signal(signum)
      sent = True
  proc.wait(timeout=600)
  assert sent, "".join(lines)[-3000:]
  return proc.returncode, "".join(lines)


def test_sigterm_saves_the_step_and_the_rerun_resumes_exactly(
    tmp_path, subprocess_env, reference):
  """(SIGINT goes through the same handler: tests/train/test_preemption.py
  sends it in-process.)"""
  signum = signal.SIGTERM
  workdir = str(tmp_path)
  cmd = _command(workdir, "--config.checkpoint_every_steps=1000")
  # Sent once step 1 is logged: the stop comes at step 1 or a little later
  # (the signal crosses a pipe), at the latest at step 5 on a slow machine.
  code, stderr = _start_and_signal(cmd, subprocess_env, 1, signum)
  assert code == preemption.PREEMPTED_EXIT_CODE == 75, stderr[-3000:]
  (stopped,) = _steps(workdir)  # Only the checkpoint of the stop.
  assert 1 <= stopped < STEPS
  name = signal.Signals(signum).name
  assert (f"Training stopped by {name} at step {stopped}; the checkpoint of "
          f"step {stopped} is saved") in stderr
  # The complete state of that step: what the uninterrupted run had.
  _assert_same(_params(workdir, stopped), _params(reference, stopped))

  proc = _run(cmd, subprocess_env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"Restored checkpoint of step {stopped}" in proc.stderr
  assert f"] [{stopped + 1}] " in proc.stderr
  assert f"] [{stopped}] " not in proc.stderr
  _assert_same(_params(workdir, STEPS), _params(reference, STEPS))


def test_sigkill_during_an_async_save_resumes_from_the_last_complete_one(
    tmp_path, subprocess_env, reference):
  workdir = str(tmp_path)
  cmd = _command(workdir, "--config.checkpoint_every_steps=2")
  proc = subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env,
                          stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  ckpt = os.path.join(workdir, "checkpoints")
  deadline = time.time() + 900
  killed = False
  while time.time() < deadline and proc.poll() is None:
    names = os.listdir(ckpt) if os.path.isdir(ckpt) else []
    if "2" in names and any(n.startswith("4.") for n in names):
      proc.send_signal(signal.SIGKILL)  # Step 4's save is in progress.
      killed = True
      break
    time.sleep(0.005)
  proc.wait(timeout=60)
  assert killed, "the run ended before step 4's save was seen"
  names = sorted(os.listdir(ckpt))
  assert "4" not in names, names  # Killed before the save completed.
  assert any(n.startswith("4.orbax-checkpoint-tmp") for n in names), names
  assert _steps(workdir) == [2]

  proc = _run(cmd, subprocess_env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Restored checkpoint of step 2" in proc.stderr
  assert not [n for n in os.listdir(ckpt) if "tmp" in n]  # Cleaned up.
  _assert_same(_params(workdir, STEPS), _params(reference, STEPS))


def test_a_damaged_checkpoint_names_its_folder_and_the_fallback(
    tmp_path, reference):
  workdir = str(tmp_path)
  shutil.copytree(os.path.join(reference, "checkpoints"),
                  os.path.join(workdir, "checkpoints"))
  folder = os.path.join(workdir, "checkpoints", str(STEPS))
  os.remove(os.path.join(folder, "model", "manifest.ocdbt"))
  config = vps_tiny.config()
  meta = sources.meta(config)
  with pytest.raises(ckpt.CheckpointError) as e:
    run.load_variables(config, workdir, meta)
  message = str(e.value)
  assert f"The checkpoint {folder} (step {STEPS}) cannot be restored" in (
      message)
  assert f"the checkpoint of step {STEPS - 1}" in message
  # The advice works: with the folder moved away, step 5 restores, equal
  # to the reference's.
  mv = message[message.index("(mv ") + 1:message.index(")", message.index(
      "(mv "))]
  subprocess.run(shlex.split(mv), check=True)
  variables, step = run.load_variables(config, workdir, meta)
  assert step == STEPS - 1
  _assert_same(_flat(variables["params"]),
               _params(reference, STEPS - 1, opt_state=False))


def test_a_failed_final_evaluation_keeps_the_training(tmp_path,
                                                      subprocess_env):
  """main.py (train_and_evaluate) whose evaluation raises: exit 1, the
  checkpoint is there, the message gives the --mode=evaluate command, and
  that command (run as given) writes the VPQ."""
  workdir = str(tmp_path)
  cmd = _command(workdir, "--config.checkpoint_every_steps=1000",
                 mode="train_and_evaluate")
  cmd[1:2] = [os.path.join("tests", "train", "failing_evaluation_main.py")]
  proc = _run(cmd, subprocess_env)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert _steps(workdir) == [STEPS]
  line = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
  assert line and (f"checkpoint of step {STEPS} is saved in "
                   f"{workdir}/checkpoints") in line[0], proc.stderr[-3000:]
  assert "OSError: disk full (injected)" in line[0]
  command = proc.stderr.splitlines()[proc.stderr.splitlines().index(
      line[0]) + 1].strip()
  args = shlex.split(command)
  assert args[0] == "python" and args[-1] == "--mode=evaluate"
  assert f"--workdir={workdir}" in args and "--mode=train_and_evaluate" not in (
      args)
  args[0] = sys.executable
  args[1] = "main.py"  # The failing wrapper stood for main.py.
  proc = _run(args, subprocess_env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert os.path.isfile(os.path.join(workdir, "vpq.json"))
  assert os.path.isfile(os.path.join(workdir, "predictions", "pred.json"))
