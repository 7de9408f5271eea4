"""ResNet forward parity with torchvision through the weight importer."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from vpsnet_jax.checkpoints import torchvision_import
from vpsnet_jax.modeling import backbone

IMAGE = (1, 64, 96, 3)


def _torch_resnet(ctor, seed):
  torch.manual_seed(seed)
  model = ctor().eval()
  g = torch.Generator().manual_seed(seed)
  for name, m in model.named_modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      c = m.num_features
      m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
      m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
      m.bias.data.copy_(torch.rand(c, generator=g) - 0.5)
      # Small last-BN scales keep random-init activations O(1).
      hi = 0.3 if name.endswith(("bn3", "downsample.1")) else 1.5
      m.weight.data.copy_(torch.rand(c, generator=g) * (hi - 0.1) + 0.1)
  return model


def _torch_stages(model, x):
  with torch.no_grad():
    y = torch.tensor(x).permute(0, 3, 1, 2)
    y = model.maxpool(model.relu(model.bn1(model.conv1(y))))
    outs = []
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
      y = layer(y)
      outs.append(y.permute(0, 2, 3, 1).numpy())
  return outs


@pytest.fixture(scope="module")
def resnet18():
  tmodel = _torch_resnet(torchvision.models.resnet18, 0)
  model = backbone.ResNet(depth=18, frozen_stages=1)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(IMAGE))
  variables = torchvision_import.import_resnet(tmodel.state_dict(), shapes)
  return tmodel, model, variables, jax.jit(model.apply)


def test_resnet18_matches_torchvision(resnet18):
  tmodel, _, variables, apply = resnet18
  x = np.random.default_rng(0).normal(size=IMAGE).astype(np.float32)
  outs = apply(variables, x)
  refs = _torch_stages(tmodel, x)
  for stride, o, r in zip((4, 8, 16, 32), outs, refs):
    assert o.shape == r.shape
    assert o.shape[1] == IMAGE[1] // stride
    np.testing.assert_allclose(np.asarray(o), r, atol=1e-4, rtol=0)
  apply(variables, x + 1)
  assert apply._cache_size() == 1


def test_resnet50_matches_torchvision():
  tmodel = _torch_resnet(torchvision.models.resnet50, 1)
  model = backbone.ResNet(depth=50)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(IMAGE))
  variables = torchvision_import.import_resnet(tmodel.state_dict(), shapes)
  x = np.random.default_rng(1).normal(size=IMAGE).astype(np.float32)
  outs = jax.jit(model.apply)(variables, x)
  refs = _torch_stages(tmodel, x)
  assert [o.shape[-1] for o in outs] == list(backbone.out_channels(50))
  for o, r in zip(outs, refs):
    np.testing.assert_allclose(np.asarray(o), r, atol=1e-4, rtol=0)


def test_bfloat16_compute_is_close(resnet18):
  _, _, variables, apply = resnet18
  x = np.random.default_rng(2).normal(size=IMAGE).astype(np.float32)
  ref = apply(variables, x)[-1]
  model16 = backbone.ResNet(depth=18, dtype=jnp.bfloat16)
  out = jax.jit(model16.apply)(variables, x)[-1]
  assert out.dtype == jnp.bfloat16
  rel = float(jnp.abs(out.astype(jnp.float32) - ref).max() /
              jnp.abs(ref).max())
  assert rel < 0.05, rel


def test_frozen_stages_get_no_gradient(resnet18):
  _, model, variables, _ = resnet18
  x = np.random.default_rng(3).normal(size=(1, 32, 32, 3)).astype(np.float32)

  def loss(params):
    outs = model.apply({"params": params,
                        "batch_stats": variables["batch_stats"]}, x)
    return sum(jnp.mean(o ** 2) for o in outs)

  grads = jax.jit(jax.grad(loss))(variables["params"])
  mask = backbone.trainable_mask(grads, frozen_stages=1)
  for (path, g), m in zip(jax.tree_util.tree_leaves_with_path(grads),
                          jax.tree_util.tree_leaves(mask)):
    total = float(jnp.abs(g).sum())
    assert np.isfinite(total)
    if m:
      assert total > 0, path
    else:
      assert total == 0, path
  assert not mask["layer1_0"]["conv1"]["kernel"]
  assert mask["layer2_0"]["conv1"]["kernel"]


def test_trainable_affine_option():
  model = backbone.ResNet(depth=18, train_bn_affine=True)
  variables = jax.eval_shape(model.init, jax.random.key(0),
                             jnp.zeros((1, 32, 32, 3)))
  assert "scale" in variables["params"]["bn1"]
  assert set(variables["batch_stats"]["bn1"]) == {"mean", "var"}
