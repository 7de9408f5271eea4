"""The torchvision ResNet importer's file formats and errors (its forward
parity is tests/modeling/test_backbone.py's)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from vpsnet_jax.checkpoints import torchvision_import
from vpsnet_jax.modeling import backbone


@pytest.fixture(scope="module")
def resnet18():
  """A torchvision ResNet-18 state dict with every tensor random (a mapping
  that swapped two fields would show) and its imported variables."""
  gen = torch.Generator().manual_seed(0)
  state = {k: (torch.rand(v.shape, generator=gen) + 0.5
               if v.is_floating_point() else v)
           for k, v in torchvision.models.resnet18().state_dict().items()}
  model = backbone.ResNet(depth=18, frozen_stages=1)
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.zeros((1, 64, 96, 3)))
  return state, torchvision_import.import_resnet(state, shapes)


def test_importer_from_file_and_errors(tmp_path, resnet18):
  state, variables = resnet18
  prefixed = {"backbone.body." + k: v for k, v in state.items()}
  path = str(tmp_path / "r18.pth")
  torch.save(prefixed, path)
  loaded = torchvision_import.load_torchvision_resnet(path, variables)
  for a, b in zip(jax.tree_util.tree_leaves(loaded),
                  jax.tree_util.tree_leaves(variables)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  npz = str(tmp_path / "r18.npz")
  np.savez(npz, **{k: v.numpy() for k, v in state.items()})
  torchvision_import.load_torchvision_resnet(npz, variables)
  partial = dict(state)
  partial.pop("layer3.1.bn2.running_var")
  with pytest.raises(KeyError, match="not in the state dict"):
    torchvision_import.import_resnet(partial, variables)
  r50 = torchvision.models.resnet50().state_dict()
  with pytest.raises((KeyError, ValueError)):
    torchvision_import.import_resnet(r50, variables)
