"""Shared pytest setup: CPU only, several simulated devices for pmap tests."""
import os

# Must be set before jax is imported anywhere in the test session.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# With these wheels, importing torchvision after tensorflow crashes the
# interpreter (torchvision's custom ops), while the other order works. Test
# modules import both (tensorflow through data_pipeline, torchvision as the
# parity reference), so torchvision goes first, before any test module.
try:
  import torchvision  # pylint: disable=unused-import,g-import-not-at-top
except ImportError:  # The parity tests then fail on their own import.
  pass
