"""Shared pytest setup: CPU only, several simulated devices for pmap tests."""
import os

# Must be set before jax is imported anywhere in the test session.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "--xla_force_host_platform_device_count" not in os.environ.get(
    "XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = " ".join(
      [os.environ.get("XLA_FLAGS", ""),
       "--xla_force_host_platform_device_count=4"]).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# A persistent compilation cache for this session's own compiles (removed
# at exit): a test module's executables are released after it (see
# `_release_executables`), and a later module that compiles the same
# program (the tiny models of tests/tiny_models.py in tests/modeling and
# tests/test_accelerator_path.py) loads it instead of compiling again.
# Compiles under a second are not stored.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import atexit  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  _CACHE_DIR = tempfile.mkdtemp(prefix="vpsnet_jax_test_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE_DIR
  atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)

# With these wheels, importing torchvision after tensorflow crashes the
# interpreter (torchvision's custom ops), while the other order works. Test
# modules import both (tensorflow through data_pipeline, torchvision as the
# parity reference), so torchvision goes first, before any test module.
try:
  import torchvision  # noqa: F401  # pylint: disable=unused-import,g-import-not-at-top
except ImportError:  # The parity tests then fail on their own import.
  pass


import pytest  # pylint: disable=g-import-not-at-top,g-bad-import-order


def pytest_collection_modifyitems(items):
  """Every test that needs `tiny_training` (a main.py training run) is slow,
  marked or not."""
  for item in items:
    if "tiny_training" in getattr(item, "fixturenames", ()):
      item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="module", autouse=True)
def _release_executables():
  """After each test module: its compiled executables released (the shared
  tiny models and every jit cache). A process maps memory regions for each
  live executable, about 4,000 for one tiny VPSNet train step, and the
  kernel allows 65,530 (vm.max_map_count): a session that kept every
  module's executables crashed inside XLA's compiler."""
  yield
  import gc  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from tests import tiny_models  # pylint: disable=g-import-not-at-top
  tiny_models.release_all()
  jax.clear_caches()
  gc.collect()


@pytest.fixture(scope="session")
def subprocess_env(tmp_path_factory):
  """Environment for tests that run `main.py` (or another entry point) in a
  subprocess: CPU, ONE device, and a persistent compilation cache shared by
  every subprocess of the session (the tiny model's train step compiles
  once, later runs load it; a loaded executable computes exactly what the
  compiled one does)."""
  return dict(
      os.environ, JAX_PLATFORMS="cpu",
      XLA_FLAGS="--xla_force_host_platform_device_count=1",
      JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
      TF_CPP_MIN_LOG_LEVEL="2")


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_STEPS = 6


def tiny_main_command(workdir, *overrides, mode=None):
  """`python main.py --config=configs/synthetic.py --workdir=WORKDIR
  [--mode=MODE]` with the tiny sizes' flags (`tests/vps_tiny.py`), then
  `overrides`; run it with cwd=ROOT. Without `mode`, main.py's default mode
  (the quick start's), as a user types it."""
  import sys  # pylint: disable=g-import-not-at-top
  from tests import vps_tiny  # pylint: disable=g-import-not-at-top
  return [sys.executable, "main.py", "--config=configs/synthetic.py",
          f"--workdir={workdir}", *([f"--mode={mode}"] if mode else []),
          *vps_tiny.flags(), *overrides]


@pytest.fixture(scope="session")
def tiny_training(tmp_path_factory, subprocess_env):
  """The workdir of one uninterrupted `main.py --mode=train` of the full
  VPSNet at the tiny sizes (`tests/vps_tiny.py`) for TINY_STEPS steps, with
  a checkpoint at every step: the reference of the interruption tests and
  the checkpoint of the prediction journey. Tests read it, never write;
  tests that use it are marked slow."""
  import subprocess  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp("tiny_training"))
  proc = subprocess.run(
      tiny_main_command(
          workdir, f"--config.num_train_steps={TINY_STEPS}",
          "--config.log_every_steps=1", "--config.eval_every_steps=0",
          "--config.checkpoint_every_steps=1",
          f"--config.keep_checkpoints={TINY_STEPS}", mode="train"),
      cwd=ROOT, env=subprocess_env, capture_output=True, text=True,
      timeout=1800)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == [
      str(s) for s in range(1, TINY_STEPS + 1)]
  return workdir
