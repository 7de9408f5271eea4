"""The release importer (`checkpoints.release_import`) on random state dicts
with the release's key names and shapes (`release_keys.json`: the
Cityscapes-VPS FuseTrack model's state dict, flownet2 included), and parity
of the imported parts with PyTorch written from the release's definitions
(mmcv / mmdetection v1 modules of GitHub mcahny/vps), at tiny sizes."""

import json
import os
import subprocess
import sys

import torch  # Before tensorflow (tests/conftest.py).
import torch.nn.functional as F
import torchvision

import dataclasses
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cityscapes_vps
from data_pipeline import sources
from tests import vps_tiny
from tests.conftest import ROOT
from vpsnet_jax import experiment
from vpsnet_jax.checkpoints import manager as ckpt
from vpsnet_jax.checkpoints import release_import as ri
from vpsnet_jax.inference import run as inference_run
from vpsnet_jax.modeling import fuse
from vpsnet_jax.modeling import roi_heads
from vpsnet_jax.modeling import rpn
from vpsnet_jax.modeling import semantic_head
from vpsnet_jax.modeling import track_head

KEYS_JSON = os.path.join(os.path.dirname(__file__), "release_keys.json")
TOL = dict(rtol=1e-4, atol=1e-4)


def random_state(shapes, seed=0, cheap_prefix=ri.FLOWNET2_PREFIX):
  """{key: array} of `shapes` ({key: (shape, dtype)}): weights ~ N(0, 1 /
  fan_in), biases ~ N(0, 0.1), BN/GN weights ~ 1 + N(0, 0.1), running_var in
  [0.5, 1.5); `cheap_prefix` keys are one broadcast value (no memory)."""
  rng = np.random.default_rng(seed)
  out = {}
  for key, (shape, dtype) in shapes.items():
    shape = tuple(shape)
    if dtype == "int64":
      out[key] = np.zeros(shape, np.int64)
    elif key.startswith(cheap_prefix):
      out[key] = np.broadcast_to(np.float32(0.5), shape)
    elif key.endswith("running_var"):
      out[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    elif len(shape) >= 2:
      fan_in = int(np.prod(shape[1:]))
      out[key] = rng.standard_normal(shape, np.float32) * np.float32(
          1 / np.sqrt(fan_in))
    elif key.endswith(".weight"):  # BN / GN.
      out[key] = 1 + 0.1 * rng.standard_normal(shape, np.float32)
    else:
      out[key] = 0.1 * rng.standard_normal(shape, np.float32)
  assert all(v.dtype == np.float32 for k, v in out.items()
             if not k.endswith("num_batches_tracked"))
  return out


@pytest.fixture(scope="module")
def release_rows():
  with open(KEYS_JSON) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def city_config():
  c = cityscapes_vps.get_config()
  c.model.semantic_features = (256, 128, 128)  # The release's UPSNetFPN.
  mc = experiment.model_config(c, sources.meta(c))
  assert mc.variant == "fusetrack" and mc.depth == 50
  assert (mc.num_classes, mc.num_semantic) == (8, 19)
  return mc


@pytest.fixture(scope="module")
def state(release_rows):
  return random_state({k: (s, d) for k, s, d in release_rows})


@pytest.fixture(scope="module")
def imported(state, city_config):
  return ri.import_release(state, city_config)


def _t(x):
  return torch.from_numpy(np.ascontiguousarray(x))


def _nchw(x):
  return _t(np.asarray(x).transpose(0, 3, 1, 2))


def _nhwc(x):
  return x.detach().numpy().transpose(0, 2, 3, 1)


# ------------------------------------------------------------ key tables


def test_release_shapes_are_the_release_table(release_rows, city_config):
  """The mapping's inverse gives exactly the release's keys and shapes."""
  ours = ri.release_shapes(city_config, buffers=True)
  theirs = {k: tuple(s) for k, s, _ in release_rows
            if not k.startswith(ri.FLOWNET2_PREFIX)}
  assert set(ours) == set(theirs)
  assert {k: v for k, v in ours.items() if v != theirs[k]} == {}
  assert len(release_rows) - len(theirs) == 220  # flownet2.*


def test_every_leaf_comes_from_one_file_array(state, imported, city_config):
  """Each leaf's values are a permutation of one release array's (the
  layout conversions) and every array fills one leaf: nothing is left at
  its initialisation, nothing read twice."""
  model = {k: v for k, v in state.items()
           if not k.startswith(ri.FLOWNET2_PREFIX)
           and not k.endswith("num_batches_tracked")}

  def fingerprint(x):
    x = np.asarray(x, np.float64).ravel()
    return x.size, x.sum(), (x * x).sum()

  prints = {k: fingerprint(v) for k, v in model.items()}
  flat = ri._flat(imported)  # pylint: disable=protected-access
  shapes = ri._flat(ri.model_shapes(city_config))  # pylint: disable=protected-access
  assert set(flat) == set(shapes)
  used = []
  for path, leaf in flat.items():
    assert leaf.shape == shapes[path].shape and leaf.dtype == np.float32
    size, s, ss = fingerprint(leaf)
    match = [k for k, (n, a, b) in prints.items()
             if n == size and np.isclose(a, s, rtol=1e-9, atol=1e-6)
             and np.isclose(b, ss, rtol=1e-9)]
    assert len(match) == 1, (path, match)
    used.append(match[0])
  assert sorted(used) == sorted(model)


def test_specific_layouts(state, imported):
  p, b = imported["params"], imported["batch_stats"]
  np.testing.assert_array_equal(
      p["backbone"]["layer3_0"]["downsample_conv"]["kernel"],
      state["backbone.layer3.0.downsample.0.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(
      b["backbone"]["layer1_0"]["bn2"]["var"],
      state["backbone.layer1.0.bn2.running_var"])
  np.testing.assert_array_equal(
      p["fuse"]["attend"]["t_att_center"]["kernel"],
      state["extra_neck.tcea_fusion.tAtt_2.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(
      p["refine"]["conv"]["bias"], state["extra_neck.refine.conv.bias"])
  np.testing.assert_array_equal(
      p["mask_head"]["deconv"]["kernel"],
      state["mask_head.upsample.weight"].transpose(2, 3, 0, 1))
  np.testing.assert_array_equal(
      p["semantic_head"]["stack"]["gn1"]["scale"],
      state["panopticFPN.deform_convs.0.4.weight"])


def test_flownet2_split(state):
  model, flownet2 = ri.split_flownet2(state)
  assert len(flownet2) == 220 and len(model) == 409
  assert "flownetc.conv1.0.weight" in flownet2
  assert not any(k.startswith(ri.FLOWNET2_PREFIX) for k in model)


def test_flownet2_goes_to_batch_stats_when_the_model_computes_it(
    state, city_config):
  """input.flow='flownet2': the `flownet2.*` keys fill batch_stats/
  flownet2 (the FlowNet2 importer's layout), nothing else changes."""
  import dataclasses  # pylint: disable=import-outside-toplevel
  with_flow = dataclasses.replace(city_config, flownet2=True)
  varied = dict(state)
  rng = np.random.default_rng(5)
  for k in ("flownet2.flownetc.conv1.0.weight",
            "flownet2.flownetfusion.deconv0.0.weight"):
    varied[k] = rng.standard_normal(state[k].shape).astype(np.float32)
  imported = ri.import_release(varied, with_flow)
  flow = imported["batch_stats"]["flownet2"]
  np.testing.assert_array_equal(
      flow["flownetc"]["conv1"]["kernel"],
      varied["flownet2.flownetc.conv1.0.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(
      flow["flownetfusion"]["deconv0"]["kernel"],
      varied["flownet2.flownetfusion.deconv0.0.weight"].transpose(2, 3, 0, 1))
  assert len(ri._flat(flow)) == 220  # pylint: disable=protected-access
  model, _ = ri.split_flownet2(state)
  with pytest.raises(ri.ReleaseImportError, match="no flownet2"):
    ri.import_release(model, with_flow)


def _expected(city_config):
  return ri.release_shapes(city_config)


def test_bad_keys_are_named(state, city_config):
  expected = _expected(city_config)
  model, _ = ri.split_flownet2(state)
  extra = dict(model, **{"track_head.fcs.2.weight": np.zeros((2, 2))})
  with pytest.raises(ri.ReleaseImportError, match=r"track_head\.fcs\.2"):
    ri.check_keys(extra, expected, "fusetrack")
  missing = {k: v for k, v in model.items() if k != "mask_head.upsample.bias"}
  with pytest.raises(ri.ReleaseImportError,
                     match=r"missing.*mask_head\.upsample\.bias \(256,\)"):
    ri.check_keys(missing, expected, "fusetrack")
  wrong = dict(model, **{"bbox_head.fc_cls.weight": np.zeros((8, 1024))})
  with pytest.raises(ri.ReleaseImportError,
                     match=r"bbox_head\.fc_cls\.weight is \(8, 1024\), the "
                           r"model needs \(9, 1024\)"):
    ri.check_keys(wrong, expected, "fusetrack")
  assert issubclass(ri.ReleaseImportError, ValueError)


def test_variant_without_track_head_rejects_track_keys(state, city_config):
  no_track = dataclasses.replace(city_config, variant="fuse")
  with pytest.raises(ri.ReleaseImportError, match=r"4 keys map to nothing.*"
                     r"track_head\.fcs\.0\.bias"):
    ri.import_release(state, no_track)


# ---------------------------------------------------------------- parity


def _torch_conv(sd, key, x, padding=None):
  w = _t(sd[key + ".weight"])
  pad = (w.shape[-1] - 1) // 2 if padding is None else padding
  return F.conv2d(x, w, _t(sd[key + ".bias"]), padding=pad)


def _tcea(sd, x, center=0):
  """The release's TCEA_Fusion.forward; x: (B, N, C, H, W)."""
  lrelu = lambda y: F.leaky_relu(y, 0.1)
  conv = lambda name, y: _torch_conv(sd, "extra_neck.tcea_fusion." + name, y)
  b, n, c, h, w = x.shape
  emb_ref = conv("tAtt_2", x[:, center])
  emb = conv("tAtt_1", x.reshape(-1, c, h, w)).reshape(b, n, -1, h, w)
  cor = torch.stack([torch.sum(emb[:, i] * emb_ref, 1) for i in range(n)], 1)
  prob = torch.sigmoid(cor).unsqueeze(2).repeat(1, 1, c, 1, 1)
  x = x.reshape(b, -1, h, w) * prob.reshape(b, -1, h, w)
  fea = lrelu(conv("fea_fusion", x))
  att = lrelu(conv("sAtt_1", x))
  att = torch.cat([F.max_pool2d(att, 3, 2, 1),
                   F.avg_pool2d(att, 3, 2, 1, count_include_pad=True)], 1)
  att = lrelu(conv("sAtt_2", att))
  att = lrelu(conv("sAtt_3", att))
  att = F.interpolate(att, scale_factor=2, mode="bilinear",
                      align_corners=False)
  att = conv("sAtt_4", att)
  att_add = conv("sAtt_add_2", lrelu(conv("sAtt_add_1", att)))
  return fea * torch.sigmoid(att) * 2 + att_add


def test_tcea_parity(state, imported):
  x = np.random.default_rng(1).standard_normal((1, 2, 8, 8, 256), np.float32)
  ours = fuse.Attend(center=0).apply(
      {"params": imported["params"]["fuse"]["attend"]}, jnp.asarray(x))
  with torch.no_grad():
    theirs = _tcea(state, _t(x.transpose(0, 1, 4, 2, 3)))
  np.testing.assert_allclose(np.asarray(ours), _nhwc(theirs), **TOL)


def _upsnet_fpn(sd, levels):
  """The release's UPSNetFPN.forward with torchvision's deform_conv2d."""
  def branch(x):
    for i in range(3):
      key = f"panopticFPN.deform_convs.0.{3 * i}"
      offset = _torch_conv(sd, key + ".conv_offset", x)
      x = torchvision.ops.deform_conv2d(x, offset, _t(sd[key + ".conv.weight"]),
                                        padding=1)
      gn = f"panopticFPN.deform_convs.0.{3 * i + 1}"
      x = F.relu(F.group_norm(x, 32, _t(sd[gn + ".weight"]),
                              _t(sd[gn + ".bias"]), eps=1e-5))
    return x
  outs = [branch(p) for p in levels]
  outs = [outs[0]] + [F.interpolate(o, None, 2 ** i, mode="bilinear",
                                    align_corners=False)
                      for i, o in enumerate(outs[1:], 1)]
  score = _torch_conv(sd, "panopticFPN.conv_pred.conv", torch.cat(outs, 1))
  full = F.interpolate(score, scale_factor=4, mode="bilinear",
                       align_corners=False)
  return full, score


def test_semantic_head_parity(state, imported):
  rng = np.random.default_rng(2)
  levels = [rng.standard_normal((1, s, s, 256), np.float32)
            for s in (16, 8, 4, 2)]
  logits, full = semantic_head.SemanticHead(19, (256, 128, 128), 32).apply(
      {"params": imported["params"]["semantic_head"]},
      [jnp.asarray(p) for p in levels])
  with torch.no_grad():
    t_full, t_score = _upsnet_fpn(state, [_nchw(p) for p in levels])
  np.testing.assert_allclose(np.asarray(logits), _nhwc(t_score), **TOL)
  np.testing.assert_allclose(np.asarray(full), _nhwc(t_full), **TOL)


def _roi_inputs(n=3, size=7, seed=3):
  x = np.random.default_rng(seed).standard_normal((n, size, size, 256),
                                                  np.float32)
  return x, _nchw(x)


def test_track_head_parity(state, imported):
  x, x_t = _roi_inputs()
  ours = track_head.TrackHead(1024).apply(
      {"params": imported["params"]["track_head"]}, jnp.asarray(x))
  fc = lambda i, y: F.linear(y, _t(state[f"track_head.fcs.{i}.weight"]),
                             _t(state[f"track_head.fcs.{i}.bias"]))
  with torch.no_grad():  # TrackHead.forward: ReLU between the FCs only.
    theirs = fc(1, F.relu(fc(0, x_t.reshape(3, -1))))
  np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), **TOL)


def _release_warp(x, flow):
  """The release's WarpingLayer (PyTorch 1.4: align_corners=False)."""
  b, _, h, w = x.shape
  horizontal = torch.linspace(-1.0, 1.0, w).view(1, 1, 1, w).expand(b, 1, h, w)
  vertical = torch.linspace(-1.0, 1.0, h).view(1, 1, h, 1).expand(b, 1, h, w)
  grid = torch.cat([horizontal, vertical], 1)
  scaled = torch.stack([flow[:, 0] / ((w - 1.0) / 2.0),
                        flow[:, 1] / ((h - 1.0) / 2.0)], 1)
  return F.grid_sample(x, (grid + scaled).permute(0, 2, 3, 1),
                       align_corners=False)


def _correlation(x1, x2, d=4):
  """FlowNet2's Correlation (kernel 1, stride 1, pad d): channel
  (dy + d) * (2d + 1) + (dx + d) = mean_c x1 * x2 displaced, zero padded."""
  _, _, h, w = x1.shape
  x2 = F.pad(x2, (d, d, d, d))
  return torch.stack([(x1 * x2[:, :, d + dy:d + dy + h, d + dx:d + dx + w]
                       ).mean(1)
                      for dy in range(-d, d + 1) for dx in range(-d, d + 1)],
                     1)


def test_flow_estimator_and_warp_parity(state, imported):
  """BFPTcea.forward's alignment: warp by the initial flow, LiteFlowNetCorr
  on [target, correlation, flow], warp the warped feature by the fine flow
  (ops.warp grid 'release')."""
  rng = np.random.default_rng(4)
  target, reference = (rng.standard_normal((1, 8, 8, 256), np.float32)
                       for _ in range(2))
  flow = rng.uniform(-2, 2, (1, 8, 8, 2)).astype(np.float32)
  aligned, fine = fuse.Align(4, grid="release").apply(
      {"params": imported["params"]["fuse"]["align"]}, jnp.asarray(target),
      jnp.asarray(reference), jnp.asarray(flow))
  prefix = "extra_neck.liteflownet.flow_estimator.convs."
  with torch.no_grad():
    t_target, t_flow = _nchw(target), _nchw(flow)
    warped = _release_warp(_nchw(reference), t_flow)
    x = torch.cat([t_target, _correlation(t_target, warped), t_flow], 1)
    assert x.shape[1] == 339
    for i in range(3):
      x = F.leaky_relu(_torch_conv(state, prefix + f"{i}.0", x), 0.1)
    t_fine = _torch_conv(state, prefix + "3", x)
    t_aligned = _release_warp(warped, t_fine)
  np.testing.assert_allclose(np.asarray(fine), _nhwc(t_fine), **TOL)
  np.testing.assert_allclose(np.asarray(aligned), _nhwc(t_aligned), **TOL)


def test_box_and_mask_head_parity(state, imported):
  x, x_t = _roi_inputs()
  logits, deltas = roi_heads.BoxHead(9, 1024).apply(
      {"params": imported["params"]["box_head"]}, jnp.asarray(x))
  fc = lambda name, y: F.linear(y, _t(state[f"bbox_head.{name}.weight"]),
                                _t(state[f"bbox_head.{name}.bias"]))
  with torch.no_grad():
    h = F.relu(fc("shared_fcs.1", F.relu(fc("shared_fcs.0",
                                            x_t.reshape(3, -1)))))
    t_cls, t_reg = fc("fc_cls", h), fc("fc_reg", h)
  np.testing.assert_allclose(np.asarray(logits), t_cls.numpy(), **TOL)
  # mmdet v1 delta2bbox reads deltas[:, 4k:4k+4] as class k's.
  np.testing.assert_allclose(np.asarray(deltas),
                             t_reg.numpy().reshape(3, 9, 4), **TOL)

  m, m_t = _roi_inputs(2, 14, seed=5)
  ours = roi_heads.MaskHead(9, 256).apply(
      {"params": imported["params"]["mask_head"]}, jnp.asarray(m))
  with torch.no_grad():
    y = m_t
    for i in range(4):
      y = F.relu(_torch_conv(state, f"mask_head.convs.{i}.conv", y))
    y = F.relu(F.conv_transpose2d(y, _t(state["mask_head.upsample.weight"]),
                                  _t(state["mask_head.upsample.bias"]),
                                  stride=2))
    y = _torch_conv(state, "mask_head.conv_logits", y)
  np.testing.assert_allclose(np.asarray(ours), _nhwc(y), **TOL)


def test_rpn_head_parity(state, imported):
  """Anchor-major channels: objectness a, deltas 4a..4a+3 (mmdet v1's
  permute(0, 2, 3, 1).reshape)."""
  x = np.random.default_rng(6).standard_normal((1, 8, 8, 256), np.float32)
  (logits,), (deltas,) = rpn.RPNHead(256, 3).apply(
      {"params": imported["params"]["rpn_head"]}, [jnp.asarray(x)])
  with torch.no_grad():
    y = F.relu(_torch_conv(state, "rpn_head.rpn_conv", _nchw(x)))
    cls = _torch_conv(state, "rpn_head.rpn_cls", y)
    reg = _torch_conv(state, "rpn_head.rpn_reg", y)
  np.testing.assert_allclose(
      np.asarray(logits), cls.permute(0, 2, 3, 1).reshape(1, -1).numpy(), **TOL)
  np.testing.assert_allclose(
      np.asarray(deltas), reg.permute(0, 2, 3, 1).reshape(1, -1, 4).numpy(),
      **TOL)


# --------------------------------------------------------- command line


@pytest.fixture(scope="module")
def tiny():
  config = vps_tiny.config("fusetrack")
  meta = sources.meta(config)
  return config, meta, experiment.model_config(config, meta)


def _tiny_npz(path, model_config, extra=None):
  shapes = ri.release_shapes(model_config, buffers=True)
  state = random_state({k: (s, "int64" if k.endswith("num_batches_tracked")
                            else "float32") for k, s in shapes.items()},
                       seed=7)
  state["flownet2.flownetc.conv1.0.weight"] = np.ones((2, 3, 7, 7),
                                                      np.float32)
  state.update(extra or {})
  np.savez(path, **state)
  return state


def _cli(checkpoint, workdir, env):
  return subprocess.run(
      [sys.executable, "-m", "vpsnet_jax.checkpoints.release_import",
       f"--checkpoint={checkpoint}", "--config=configs/synthetic.py",
       f"--workdir={workdir}", *vps_tiny.flags()],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_cli_writes_a_checkpoint_evaluate_and_init_from_read(
    tmp_path, tiny, subprocess_env, caplog):
  config, meta, model_config = tiny
  npz = str(tmp_path / "release.npz")
  state = _tiny_npz(npz, model_config)
  workdir = str(tmp_path / "imported")
  proc = _cli(npz, workdir, subprocess_env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "checkpoints/0" in proc.stdout and ri.FLOWNET2_FILE in proc.stdout

  caplog.set_level("INFO")
  expected = ri.import_release(state, model_config)
  assert "1 flownet2 keys set aside" in caplog.text
  # What --mode=evaluate / predict load (inference.run.build_model).
  restored, step = inference_run.load_variables(config, workdir, meta)
  assert step == 0
  flat_e, flat_r = ri._flat(expected), ri._flat(restored)  # pylint: disable=protected-access
  assert set(flat_e) == set(flat_r)
  for k in flat_e:
    np.testing.assert_array_equal(flat_r[k], flat_e[k], err_msg=str(k))
  # config.init_from of another workdir.
  zeros = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype),
                                 ri.model_shapes(model_config))
  started = ri._flat(ckpt.init_from(os.path.join(workdir, "checkpoints", "0"),  # pylint: disable=protected-access
                                    zeros))
  for k in flat_e:
    np.testing.assert_array_equal(started[k], flat_e[k], err_msg=str(k))
  with np.load(os.path.join(workdir, ri.FLOWNET2_FILE)) as f:
    assert f.files == ["flownetc.conv1.0.weight"]


def test_cli_errors_are_one_line(tmp_path, tiny, subprocess_env):
  _, _, model_config = tiny
  npz = str(tmp_path / "bad.npz")
  _tiny_npz(npz, model_config, {"bbox_head.fc_extra.weight": np.ones(3)})
  proc = _cli(npz, str(tmp_path / "out"), subprocess_env)
  assert proc.returncode == 2, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "bbox_head.fc_extra.weight" in last
  assert not os.path.exists(tmp_path / "out" / "checkpoints" / "0")


def test_read_state_dict_of_an_mmcv_checkpoint(tmp_path, monkeypatch):
  """mmcv's save_checkpoint: {"meta", "state_dict", "optimizer"}."""
  path = str(tmp_path / "latest.pth")
  torch.save({"meta": {"mmdet_version": "1.0", "config": "model = ..."},
              "state_dict": {"rpn_head.rpn_cls.bias": torch.arange(3.0),
                             "backbone.bn1.num_batches_tracked":
                                 torch.tensor(5)},
              "optimizer": {"state": {}, "param_groups": [{"lr": 0.01}]}},
             path)
  state = ri.read_state_dict(path)
  assert sorted(state) == ["backbone.bn1.num_batches_tracked",
                           "rpn_head.rpn_cls.bias"]
  np.testing.assert_array_equal(state["rpn_head.rpn_cls.bias"], [0, 1, 2])
  with pytest.raises(ri.ReleaseImportError, match="is not a file"):
    ri.read_state_dict(str(tmp_path / "missing.pth"))
  monkeypatch.setitem(sys.modules, "torch", None)  # import torch fails.
  with pytest.raises(ri.ReleaseImportError,
                     match=r"pip install -e '\.\[test\]'"):
    ri.read_state_dict(path)
