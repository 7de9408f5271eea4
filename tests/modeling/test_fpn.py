"""FPN parity with torchvision's FeaturePyramidNetwork + LastLevelMaxPool."""
from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from vpsnet_jax.checkpoints import torchvision_import
from vpsnet_jax.modeling import fpn

IN_CHANNELS = (8, 16, 32, 64)


def _inputs(rng, sizes):
  return [rng.normal(size=(1, h, w, c)).astype(np.float32)
          for (h, w), c in zip(sizes, IN_CHANNELS)]


@pytest.mark.parametrize("sizes", [
    [(16, 24), (8, 12), (4, 6), (2, 3)],      # padded to a multiple of 32
    [(15, 23), (8, 12), (4, 6), (2, 3)],      # ragged: non-2x upsampling
])
def test_fpn_matches_torchvision(sizes):
  torch.manual_seed(0)
  tv = FeaturePyramidNetwork(list(IN_CHANNELS), 32,
                             extra_blocks=LastLevelMaxPool()).eval()
  with torch.no_grad():
    for p in tv.parameters():
      p.uniform_(-0.3, 0.3)  # non-zero biases too
  variables = torchvision_import.import_fpn(tv.state_dict())
  model = fpn.FPN(features=32)
  rng = np.random.default_rng(0)
  xs = _inputs(rng, sizes)
  outs = jax.jit(model.apply)(variables, xs)
  with torch.no_grad():
    ref = tv(OrderedDict((str(i), torch.tensor(x).permute(0, 3, 1, 2))
                         for i, x in enumerate(xs)))
  assert len(outs) == 5
  for o, r in zip(outs, ref.values()):
    r = r.permute(0, 2, 3, 1).numpy()
    assert o.shape == r.shape
    np.testing.assert_allclose(np.asarray(o), r, atol=1e-4, rtol=0)


def test_fpn_init_shapes_and_p6():
  model = fpn.FPN(features=16)
  rng = np.random.default_rng(1)
  xs = _inputs(rng, [(16, 16), (8, 8), (4, 4), (2, 2)])
  variables = jax.jit(model.init)(jax.random.key(0), xs)
  assert variables["params"]["lateral_0"]["kernel"].shape == (1, 1, 8, 16)
  assert variables["params"]["output_3"]["kernel"].shape == (3, 3, 16, 16)
  outs = jax.jit(model.apply)(variables, xs)
  np.testing.assert_array_equal(np.asarray(outs[4]),
                                np.asarray(outs[3])[:, ::2, ::2])


def test_fpn_bfloat16_compute():
  model = fpn.FPN(features=16)
  rng = np.random.default_rng(2)
  xs = _inputs(rng, [(16, 16), (8, 8), (4, 4), (2, 2)])
  shapes = jax.eval_shape(model.init, jax.random.key(0), xs)
  variables = jax.tree_util.tree_map(
      lambda s: rng.normal(0, 0.1, s.shape).astype(np.float32), shapes)
  ref = jax.jit(model.apply)(variables, xs)
  out = jax.jit(fpn.FPN(features=16, dtype=jnp.bfloat16).apply)(variables, xs)
  for o, r in zip(out, ref):
    assert o.dtype == jnp.bfloat16
    rel = float(jnp.abs(o.astype(jnp.float32) - r).max() / jnp.abs(r).max())
    assert rel < 0.03, rel
