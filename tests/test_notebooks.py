"""The Colab demos execute top to bottom (tiny sizes: VPSNET_NOTEBOOK_SMOKE);
a failing cell fails the test."""
import os

import nbclient
import nbformat
import pytest

pytestmark = pytest.mark.slow  # Executes the notebooks (training included).

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name", ["quickstart.ipynb", "evaluate.ipynb"])
def test_notebook_runs(tmp_path, monkeypatch, name):
  monkeypatch.setenv("VPSNET_NOTEBOOK_SMOKE", "1")
  monkeypatch.setenv("VPSNET_NOTEBOOK_WORKDIR", str(tmp_path / "work"))
  # One CPU device in the kernel, as for a user.
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  nb = nbformat.read(os.path.join(ROOT, "notebooks", name), as_version=4)
  client = nbclient.NotebookClient(
      nb, timeout=900, kernel_name="python3",
      resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}})
  client.execute()  # Raises CellExecutionError at the first failing cell.
  if name == "quickstart.ipynb":
    assert os.path.exists(tmp_path / "work" / "vpq.json")
    assert os.path.exists(tmp_path / "work" / "panoptic_video.gif")
