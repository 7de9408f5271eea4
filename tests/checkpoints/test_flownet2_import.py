"""`flownet2_import`: the official key set, every key named on a mismatch,
transposed convolutions, and the file round trips (.npz, orbax folder
written by the command line)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests import conftest
from vpsnet_jax.checkpoints import flownet2_import as fi
from vpsnet_jax.checkpoints import release_import as ri

KEYS_JSON = os.path.join(os.path.dirname(__file__), "release_keys.json")
PARAMETERS = 162_518_834  # flownet2.py's "Parameter count".


def official_shapes():
  """The `flownet2.*` rows of the release's state dict, prefix removed."""
  with open(KEYS_JSON) as f:
    rows = json.load(f)
  return {k[len(ri.FLOWNET2_PREFIX):]: tuple(shape) for k, shape, _ in rows
          if k.startswith(ri.FLOWNET2_PREFIX)}


def random_state_dict(seed=0, scale=0.01):
  rng = np.random.default_rng(seed)
  return {k: (scale * rng.standard_normal(s)).astype(np.float32)
          for k, s in official_shapes().items()}


@pytest.fixture(scope="module")
def state_dict():
  return random_state_dict()


def test_the_table_is_the_official_key_set():
  table = fi.flownet2_table()
  official = official_shapes()
  assert len(official) == 220
  assert {k: s for k, (_, s) in table.items()} == official
  assert sum(int(np.prod(s)) for s in official.values()) == PARAMETERS
  # FlowNetS's upsampling deconvolutions have no bias, FlowNetC's have one.
  assert "flownets_1.upsampled_flow6_to_5.bias" not in table
  assert "flownetc.upsampled_flow6_to_5.bias" in table


def test_kernels_are_transposed_by_kind(state_dict):
  params = fi.import_flownet2(state_dict)["params"]
  conv = state_dict["flownetc.conv3_1.0.weight"]  # (out, in, kh, kw)
  np.testing.assert_array_equal(params["flownetc"]["conv3_1"]["kernel"],
                                conv.transpose(2, 3, 1, 0))
  deconv = state_dict["flownets_d.deconv4.0.weight"]  # (in, out, kh, kw)
  np.testing.assert_array_equal(params["flownets_d"]["deconv4"]["kernel"],
                                deconv.transpose(2, 3, 0, 1))
  up = state_dict["flownetfusion.upsampled_flow1_to_0.weight"]
  np.testing.assert_array_equal(
      params["flownetfusion"]["upsampled_flow1_to_0"]["kernel"],
      up.transpose(2, 3, 0, 1))
  np.testing.assert_array_equal(
      params["flownetfusion"]["predict_flow0"]["bias"],
      state_dict["flownetfusion.predict_flow0.bias"])


def test_a_release_checkpoint_gives_its_flownet2_keys(state_dict):
  whole = {ri.FLOWNET2_PREFIX + k: v for k, v in state_dict.items()}
  whole["backbone.conv1.weight"] = np.zeros((64, 3, 7, 7), np.float32)
  params = fi.import_flownet2(whole)["params"]
  np.testing.assert_array_equal(params["flownetc"]["conv1"]["bias"],
                                state_dict["flownetc.conv1.0.bias"])


def test_mismatches_name_the_keys(state_dict):
  bad = dict(state_dict)
  del bad["flownets_2.conv4_1.0.bias"]
  bad["flownets_2.conv9.0.weight"] = np.zeros((1,), np.float32)
  bad["flownetc.predict_flow2.weight"] = np.zeros((2, 190, 3, 3), np.float32)
  with pytest.raises(fi.Flownet2ImportError) as e:
    fi.import_flownet2(bad)
  message = str(e.value)
  for name in ("flownets_2.conv4_1.0.bias", "flownets_2.conv9.0.weight",
               "flownetc.predict_flow2.weight is (2, 190, 3, 3)",
               "(2, 194, 3, 3)"):
    assert name in message


def test_npz_and_the_command_line_folder_round_trip(state_dict, tmp_path,
                                                    subprocess_env):
  npz = str(tmp_path / "flownet2_state.npz")
  np.savez(npz, **state_dict)
  from_npz = fi.load(npz)
  out = str(tmp_path / "flownet2")
  proc = subprocess.run(
      [sys.executable, "-m", "vpsnet_jax.checkpoints.flownet2_import",
       f"--checkpoint={npz}", f"--out={out}"], cwd=conftest.ROOT,
      env=subprocess_env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"--config.input.flownet2_checkpoint={out}" in proc.stdout
  from_folder = fi.load(out)
  for net, layers in from_npz["params"].items():
    for layer, leaves in layers.items():
      for leaf, value in leaves.items():
        np.testing.assert_array_equal(
            from_folder["params"][net][layer][leaf], value)
  # A second write to the same folder is refused, with exit status 2.
  again = subprocess.run(
      [sys.executable, "-m", "vpsnet_jax.checkpoints.flownet2_import",
       f"--checkpoint={npz}", f"--out={out}"], cwd=conftest.ROOT,
      env=subprocess_env, capture_output=True, text=True, timeout=600)
  assert again.returncode == 2 and "exists" in again.stderr


def test_missing_weights_say_where_to_get_them(tmp_path):
  with pytest.raises(fi.Flownet2ImportError, match="flownet2-pytorch"):
    fi.load(str(tmp_path / "FlowNet2_checkpoint.pth.tar"))
  with pytest.raises(fi.Flownet2ImportError, match="not a FlowNet2 folder"):
    fi.load(str(tmp_path))
