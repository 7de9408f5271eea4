"""`modeling.flownet2` against PyTorch written from the official definitions
(`flownet2_torch`, its CUDA ops checked against loops over the kernels'
definitions here), with the same random weights through the importer:
every sub-network's flow and the final one, both convolution paths."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests.modeling import flownet2_torch as ref
from vpsnet_jax.checkpoints import flownet2_import as fi
from vpsnet_jax.modeling import flownet2

# ---------------------------------------------- the reference's CUDA ops


@pytest.mark.parametrize("pad,d,s,shape", [(4, 4, 2, (2, 3, 9, 9)),
                                           (3, 3, 1, (1, 2, 7, 8)),
                                           (20, 20, 2, (1, 2, 24, 24))])
def test_reference_correlation_is_the_kernel(pad, d, s, shape):
  rng = np.random.default_rng(d)
  x1 = rng.standard_normal(shape).astype(np.float32)
  x2 = rng.standard_normal(shape).astype(np.float32)
  out = ref.correlation(torch.from_numpy(x1), torch.from_numpy(x2), pad, 1,
                        d, 1, s).numpy()
  r = d // s
  assert out.shape == (shape[0], (2 * r + 1) ** 2) + shape[2:]
  np.testing.assert_allclose(out, ref.correlation_loop(x1, x2, pad, d, s),
                             atol=1e-5, rtol=1e-5)


def test_reference_resample2d_and_channelnorm_are_the_kernels():
  rng = np.random.default_rng(1)
  image = rng.standard_normal((2, 3, 6, 7)).astype(np.float32)
  flow = rng.uniform(-5, 5, (2, 2, 6, 7)).astype(np.float32)
  flow[0, :, :2] = np.round(flow[0, :, :2])  # Integer positions too.
  out = ref.resample2d(torch.from_numpy(image), torch.from_numpy(flow))
  np.testing.assert_allclose(out.numpy(), ref.resample2d_loop(image, flow),
                             atol=1e-5)
  np.testing.assert_allclose(
      ref.channelnorm(torch.from_numpy(image)).numpy(),
      ref.channelnorm_loop(image), atol=1e-5)
  np.testing.assert_allclose(
      np.asarray(flownet2.channelnorm(jnp.asarray(image.transpose(0, 2, 3, 1)))
                 ).transpose(0, 3, 1, 2), ref.channelnorm_loop(image),
      rtol=1e-6)


def test_reference_state_dict_is_the_official_one():
  shapes = {k: tuple(v.shape) for k, v in ref.FlowNet2().state_dict().items()}
  assert shapes == {k: s for k, (_, s) in fi.flownet2_table().items()}


def test_conv_transpose_is_torchs():
  rng = np.random.default_rng(2)
  x = rng.standard_normal((2, 5, 6, 3)).astype(np.float32)
  layer = torch.nn.ConvTranspose2d(3, 4, 4, 2, 1)
  with torch.no_grad():
    expected = layer(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  params = {"kernel": layer.weight.detach().numpy().transpose(2, 3, 0, 1),
            "bias": layer.bias.detach().numpy()}
  out = flownet2.ConvTranspose(4).apply({"params": params}, x)
  assert out.shape == (2, 10, 12, 4)
  np.testing.assert_allclose(np.asarray(out).transpose(0, 3, 1, 2), expected,
                             atol=1e-5)


# ------------------------------------------------------ the network


@pytest.fixture(scope="module")
def pair():
  """Torch FlowNet2 with random weights, its imported variables, and two
  pairs of 64x128 frames (a textured image and its shift by (3, -2))."""
  model = ref.init_random(ref.FlowNet2(), seed=0).eval()
  params = fi.import_flownet2(model.state_dict())["params"]
  rng = np.random.default_rng(0)
  base = rng.uniform(0, 255, (2, 72, 136, 3)).astype(np.float32)
  image1 = base[:, 4:68, 4:132]
  image2 = base[:, 6:70, 1:129]
  return model, params, image1, image2


def _torch_inputs(image1, image2):
  x = np.stack([image1, image2], axis=1)  # (B, 2, H, W, 3)
  return torch.from_numpy(x.transpose(0, 4, 1, 2, 3).copy())


@pytest.fixture(scope="module")
def torch_flows(pair):
  model, _, image1, image2 = pair
  with torch.no_grad():
    out = model.forward_all(_torch_inputs(image1, image2))
  return {k: v.numpy().transpose(0, 2, 3, 1) for k, v in out.items()}


@pytest.mark.parametrize("impl", ["cpu", "xla"])
def test_every_stage_matches_pytorch(pair, torch_flows, impl):
  _, params, image1, image2 = pair
  net = flownet2.FlowNet2(conv_impl=impl)
  flows = jax.jit(lambda p, a, b: net.apply({"params": p}, a, b,
                                            all_flows=True))(
                                                params, image1, image2)
  assert set(flows) == set(torch_flows)
  for name, expected in torch_flows.items():
    scale = float(np.abs(expected).max())
    assert scale > (1e-3 if name == "flownets_d" else 0.5), name
    np.testing.assert_allclose(np.asarray(flows[name]), expected,
                               atol=1e-4 * scale + 1e-6, rtol=1e-3,
                               err_msg=name)


def test_each_subnetwork_alone_matches_pytorch(pair):
  model, params, _, _ = pair
  rng = np.random.default_rng(4)
  cases = [("flownetc", flownet2.FlowNetC(), model.flownetc, 6),
           ("flownets_1", flownet2.FlowNetS(), model.flownets_1, 12),
           ("flownets_d", flownet2.FlowNetSD(), model.flownets_d, 6),
           ("flownetfusion", flownet2.FlowNetFusion(), model.flownetfusion,
            11)]
  for name, ours, theirs, channels in cases:
    x = rng.standard_normal((1, 64, 64, channels)).astype(np.float32) * 0.3
    with torch.no_grad():
      expected = theirs(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    out = np.asarray(ours.apply({"params": params[name]}, x))
    np.testing.assert_allclose(out.transpose(0, 3, 1, 2), expected,
                               atol=1e-4 * float(np.abs(expected).max()),
                               rtol=1e-3, err_msg=name)


def test_flow_between_pads_to_64_and_crops(pair):
  """The release's compute_flow: zero padding at the bottom and right to
  multiples of 64, then the crop; equal to the network on the padded pair."""
  model, params, image1, image2 = pair
  a, b = image1[:, :56, :120], image2[:, :56, :120]
  out = jax.jit(flownet2.flow_between)(params, a, b)
  assert out.shape == (2, 56, 120, 2)
  pad = ((0, 0), (0, 8), (0, 8), (0, 0))
  with torch.no_grad():
    expected = model(_torch_inputs(np.pad(a, pad), np.pad(b, pad))).numpy()
  expected = expected.transpose(0, 2, 3, 1)[:, :56, :120]
  np.testing.assert_allclose(np.asarray(out), expected,
                             atol=1e-4 * float(np.abs(expected).max()),
                             rtol=1e-3)


def test_bad_sizes_are_errors(pair):
  _, params, image1, image2 = pair
  with pytest.raises(ValueError, match="multiples of 64"):
    flownet2.FlowNet2().apply({"params": params}, image1[:, :60],
                              image2[:, :60])
