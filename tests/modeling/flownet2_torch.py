"""FlowNet2 in plain PyTorch, NCHW, written from the official definitions
(NVIDIA flownet2-pytorch as the VPSNet release vendors it:
`mmdet/models/flow_modules/{flownet2,FlowNetC,FlowNetS,FlowNetSD,
FlowNetFusion,submodules}.py`), with the three CUDA ops re-expressed in
torch and each checked against a loop over its kernel's definition
(`*_loop`, NumPy). `FlowNet2().state_dict()` has the official keys and
shapes; the test reference of `vpsnet_jax.modeling.flownet2`.
"""

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

# ---------------------------------------------------------------- CUDA ops


def correlation(x1, x2, pad_size=20, kernel_size=1, max_displacement=20,
                stride1=1, stride2=2):
  """correlation_cuda_kernel.cu for kernel_size 1, stride1 1: both inputs
  zero-padded by pad_size, out[n, (j + r) * D + (i + r), y, x] =
  sum_c x1[n, c, y, x] * x2[n, c, y + j*s2, x + i*s2] / C."""
  if kernel_size != 1 or stride1 != 1:
    raise NotImplementedError("kernel_size/stride1 other than 1 (issue 15)")
  _, c, h, w = x1.shape
  r = max_displacement // stride2
  p1 = F.pad(x1, (pad_size,) * 4)
  p2 = F.pad(x2, (pad_size,) * 4)
  out_h = h + 2 * pad_size - 2 * max_displacement
  out_w = w + 2 * pad_size - 2 * max_displacement
  # Output pixel (y, x) sits at (y + d, x + d) of the padded inputs.
  d = max_displacement
  a = p1[:, :, d:d + out_h, d:d + out_w]
  outs = []
  for j in range(-r, r + 1):
    for i in range(-r, r + 1):
      y0, x0 = d + j * stride2, d + i * stride2
      outs.append((a * p2[:, :, y0:y0 + out_h, x0:x0 + out_w]).sum(1) / c)
  return torch.stack(outs, 1)


def correlation_loop(x1, x2, pad_size, max_displacement, stride2):
  """The kernel's loops: output pixel (y, x) at padded position
  (y + max_displacement, x + max_displacement), kernel_size 1."""
  n, c, h, w = x1.shape
  p1 = np.pad(x1, ((0, 0), (0, 0), (pad_size,) * 2, (pad_size,) * 2))
  p2 = np.pad(x2, ((0, 0), (0, 0), (pad_size,) * 2, (pad_size,) * 2))
  out_h = int(np.ceil(h + 2 * pad_size - 2 * max_displacement))
  out_w = int(np.ceil(w + 2 * pad_size - 2 * max_displacement))
  r = max_displacement // stride2
  d = 2 * r + 1
  out = np.zeros((n, d * d, out_h, out_w), np.float64)
  for b in range(n):
    for oy in range(out_h):
      for ox in range(out_w):
        y1, x1_ = oy + max_displacement, ox + max_displacement
        for tj in range(-r, r + 1):
          for ti in range(-r, r + 1):
            y2, x2_ = y1 + tj * stride2, x1_ + ti * stride2
            acc = 0.0
            for ch in range(c):
              acc += float(p1[b, ch, y1, x1_]) * float(p2[b, ch, y2, x2_])
            out[b, (tj + r) * d + (ti + r), oy, ox] = acc / c
  return out


def resample2d(image, flow):
  """resample2d_kernel.cu, bilinear: factors from x + dx, y + dy, the four
  corner indices clamped to the image."""
  n, c, h, w = image.shape
  ys = torch.arange(h, dtype=flow.dtype).view(1, h, 1)
  xs = torch.arange(w, dtype=flow.dtype).view(1, 1, w)
  xf = xs + flow[:, 0]
  yf = ys + flow[:, 1]
  x0, y0 = torch.floor(xf), torch.floor(yf)
  alpha, beta = (xf - x0).unsqueeze(1), (yf - y0).unsqueeze(1)
  x0, y0 = x0.long(), y0.long()
  xl, xr = x0.clamp(0, w - 1), (x0 + 1).clamp(0, w - 1)
  yt, yb = y0.clamp(0, h - 1), (y0 + 1).clamp(0, h - 1)
  flat = image.reshape(n, c, h * w)

  def read(yy, xx):
    index = (yy * w + xx).reshape(n, 1, h * w).expand(n, c, h * w)
    return torch.gather(flat, 2, index).reshape(n, c, h, w)

  return ((1 - alpha) * (1 - beta) * read(yt, xl) +
          alpha * (1 - beta) * read(yt, xr) +
          (1 - alpha) * beta * read(yb, xl) + alpha * beta * read(yb, xr))


def resample2d_loop(image, flow):
  n, c, h, w = image.shape
  out = np.zeros(image.shape, np.float64)
  for b in range(n):
    for y in range(h):
      for x in range(w):
        xf = x + float(flow[b, 0, y, x])
        yf = y + float(flow[b, 1, y, x])
        alpha, beta = xf - np.floor(xf), yf - np.floor(yf)
        xl = min(max(int(np.floor(xf)), 0), w - 1)
        xr = min(max(int(np.floor(xf)) + 1, 0), w - 1)
        yt = min(max(int(np.floor(yf)), 0), h - 1)
        yb = min(max(int(np.floor(yf)) + 1, 0), h - 1)
        for ch in range(c):
          out[b, ch, y, x] = (
              (1 - alpha) * (1 - beta) * image[b, ch, yt, xl] +
              alpha * (1 - beta) * image[b, ch, yt, xr] +
              (1 - alpha) * beta * image[b, ch, yb, xl] +
              alpha * beta * image[b, ch, yb, xr])
  return out


def channelnorm(x):
  """channelnorm_kernel.cu, norm_deg 2: (N, C, H, W) -> (N, 1, H, W)."""
  return torch.sqrt((x * x).sum(1, keepdim=True))


def channelnorm_loop(x):
  n, c, h, w = x.shape
  out = np.zeros((n, 1, h, w), np.float64)
  for b in range(n):
    for y in range(h):
      for xx in range(w):
        out[b, 0, y, xx] = np.sqrt(sum(float(x[b, ch, y, xx]) ** 2
                                       for ch in range(c)))
  return out


# ------------------------------------------------------------ the networks


def conv(cin, cout, kernel=3, stride=1):
  """submodules.conv, batchNorm=False."""
  return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride,
                                 (kernel - 1) // 2, bias=True),
                       nn.LeakyReLU(0.1))


def i_conv(cin, cout):
  return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=True))


def predict_flow(cin):
  return nn.Conv2d(cin, 2, 3, 1, 1, bias=True)


def deconv(cin, cout):
  return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=True),
                       nn.LeakyReLU(0.1))


class _Decoder(nn.Module):
  """The refinement of FlowNetC / FlowNetS (no inter_conv) and FlowNetSD
  (inter_conv before each predict_flow), levels 6 -> 2."""

  def __init__(self, up_bias, inter):
    super().__init__()
    self.inter = inter
    self.deconv5 = deconv(1024, 512)
    self.deconv4 = deconv(1026, 256)
    self.deconv3 = deconv(770, 128)
    self.deconv2 = deconv(386, 64)
    if inter:
      self.inter_conv5 = i_conv(1026, 512)
      self.inter_conv4 = i_conv(770, 256)
      self.inter_conv3 = i_conv(386, 128)
      self.inter_conv2 = i_conv(194, 64)
      heads = (1024, 512, 256, 128, 64)
    else:
      heads = (1024, 1026, 770, 386, 194)
    for level, cin in zip((6, 5, 4, 3, 2), heads):
      setattr(self, f"predict_flow{level}", predict_flow(cin))
    for a in (6, 5, 4, 3):
      setattr(self, f"upsampled_flow{a}_to_{a - 1}",
              nn.ConvTranspose2d(2, 2, 4, 2, 1, bias=up_bias))

  def add_deep_levels(self):
    """conv4 .. conv6_1 of FlowNetC, FlowNetS and FlowNetSD."""
    self.conv4 = conv(256, 512, stride=2)
    self.conv4_1 = conv(512, 512)
    self.conv5 = conv(512, 512, stride=2)
    self.conv5_1 = conv(512, 512)
    self.conv6 = conv(512, 1024, stride=2)
    self.conv6_1 = conv(1024, 1024)

  def deep_levels(self, c3):
    c4 = self.conv4_1(self.conv4(c3))
    c5 = self.conv5_1(self.conv5(c4))
    return c4, c5, self.conv6_1(self.conv6(c5))

  def decode(self, conv6, skips):
    flow = self.predict_flow6(conv6)
    features = conv6
    for level, skip in zip((5, 4, 3, 2), skips):
      up = getattr(self, f"upsampled_flow{level + 1}_to_{level}")(flow)
      out = getattr(self, f"deconv{level}")(features)
      features = torch.cat((skip, out, up), 1)
      head = (getattr(self, f"inter_conv{level}")(features) if self.inter
              else features)
      flow = getattr(self, f"predict_flow{level}")(head)
    return flow


class FlowNetC(_Decoder):

  def __init__(self):
    super().__init__(up_bias=True, inter=False)
    self.conv1 = conv(3, 64, 7, 2)
    self.conv2 = conv(64, 128, 5, 2)
    self.conv3 = conv(128, 256, 5, 2)
    self.conv_redir = conv(256, 32, 1, 1)
    self.conv3_1 = conv(473, 256)
    self.add_deep_levels()

  def forward(self, x):
    c2a = self.conv2(self.conv1(x[:, :3]))
    c3a = self.conv3(c2a)
    c3b = self.conv3(self.conv2(self.conv1(x[:, 3:])))
    corr = F.leaky_relu(correlation(c3a, c3b), 0.1)
    c3 = self.conv3_1(torch.cat((self.conv_redir(c3a), corr), 1))
    c4, c5, c6 = self.deep_levels(c3)
    return self.decode(c6, (c5, c4, c3, c2a))


class FlowNetS(_Decoder):

  def __init__(self, input_channels=12):
    super().__init__(up_bias=False, inter=False)
    self.conv1 = conv(input_channels, 64, 7, 2)
    self.conv2 = conv(64, 128, 5, 2)
    self.conv3 = conv(128, 256, 5, 2)
    self.conv3_1 = conv(256, 256)
    self.add_deep_levels()

  def forward(self, x):
    c2 = self.conv2(self.conv1(x))
    c3 = self.conv3_1(self.conv3(c2))
    c4, c5, c6 = self.deep_levels(c3)
    return self.decode(c6, (c5, c4, c3, c2))


class FlowNetSD(_Decoder):

  def __init__(self):
    super().__init__(up_bias=True, inter=True)
    self.conv0 = conv(6, 64)
    self.conv1 = conv(64, 64, stride=2)
    self.conv1_1 = conv(64, 128)
    self.conv2 = conv(128, 128, stride=2)
    self.conv2_1 = conv(128, 128)
    self.conv3 = conv(128, 256, stride=2)
    self.conv3_1 = conv(256, 256)
    self.add_deep_levels()

  def forward(self, x):
    c1 = self.conv1_1(self.conv1(self.conv0(x)))
    c2 = self.conv2_1(self.conv2(c1))
    c3 = self.conv3_1(self.conv3(c2))
    c4, c5, c6 = self.deep_levels(c3)
    return self.decode(c6, (c5, c4, c3, c2))


class FlowNetFusion(nn.Module):

  def __init__(self):
    super().__init__()
    self.conv0 = conv(11, 64)
    self.conv1 = conv(64, 64, stride=2)
    self.conv1_1 = conv(64, 128)
    self.conv2 = conv(128, 128, stride=2)
    self.conv2_1 = conv(128, 128)
    self.deconv1 = deconv(128, 32)
    self.deconv0 = deconv(162, 16)
    self.inter_conv1 = i_conv(162, 32)
    self.inter_conv0 = i_conv(82, 16)
    self.predict_flow2 = predict_flow(128)
    self.predict_flow1 = predict_flow(32)
    self.predict_flow0 = predict_flow(16)
    self.upsampled_flow2_to_1 = nn.ConvTranspose2d(2, 2, 4, 2, 1)
    self.upsampled_flow1_to_0 = nn.ConvTranspose2d(2, 2, 4, 2, 1)

  def forward(self, x):
    c0 = self.conv0(x)
    c1 = self.conv1_1(self.conv1(c0))
    c2 = self.conv2_1(self.conv2(c1))
    flow2 = self.predict_flow2(c2)
    cat1 = torch.cat((c1, self.deconv1(c2), self.upsampled_flow2_to_1(flow2)),
                     1)
    flow1 = self.predict_flow1(self.inter_conv1(cat1))
    cat0 = torch.cat((c0, self.deconv0(cat1),
                      self.upsampled_flow1_to_0(flow1)), 1)
    return self.predict_flow0(self.inter_conv0(cat0))


class FlowNet2(nn.Module):
  """FlowNet2(args, batchNorm=False, div_flow=20), rgb_max 255, eval."""

  def __init__(self, div_flow=20.0, rgb_max=255.0):
    super().__init__()
    self.div_flow, self.rgb_max = div_flow, rgb_max
    self.flownetc = FlowNetC()
    self.flownets_1 = FlowNetS()
    self.flownets_2 = FlowNetS()
    self.flownets_d = FlowNetSD()
    self.flownetfusion = FlowNetFusion()

  def _up_bilinear(self, flow):
    return F.interpolate(flow, scale_factor=4, mode="bilinear",
                         align_corners=False)

  def forward_all(self, inputs):
    """inputs (B, 3, 2, H, W) RGB in [0, 255] -> dict of full-resolution
    flows (pixels): flownetc, flownets_1, flownets_2, flownets_d,
    flownetfusion (the result)."""
    b = inputs.shape[0]
    mean = inputs.reshape(b, 3, -1).mean(-1).reshape(b, 3, 1, 1, 1)
    x = (inputs - mean) / self.rgb_max
    x1, x2 = x[:, :, 0], x[:, :, 1]
    x = torch.cat((x1, x2), 1)
    out = {}

    def stage_input(flow):
      warped = resample2d(x2, flow)
      return torch.cat((x, warped, flow / self.div_flow,
                        channelnorm(x1 - warped)), 1)

    out["flownetc"] = self._up_bilinear(self.flownetc(x) * self.div_flow)
    out["flownets_1"] = self._up_bilinear(
        self.flownets_1(stage_input(out["flownetc"])) * self.div_flow)
    out["flownets_2"] = F.interpolate(
        self.flownets_2(stage_input(out["flownets_1"])) * self.div_flow,
        scale_factor=4, mode="nearest")
    out["flownets_d"] = F.interpolate(self.flownets_d(x) / self.div_flow,
                                      scale_factor=4, mode="nearest")
    s2, sd = out["flownets_2"], out["flownets_d"]
    fusion_in = torch.cat(
        (x1, sd, s2, channelnorm(sd), channelnorm(s2),
         channelnorm(x1 - resample2d(x2, sd)),
         channelnorm(x1 - resample2d(x2, s2))), 1)
    out["flownetfusion"] = self.flownetfusion(fusion_in)
    return out

  def forward(self, inputs):
    return self.forward_all(inputs)["flownetfusion"]


def init_random(model, seed=0):
  """Deterministic weights N(0, 1/fan_in) (transposed convs: the fan-in of
  one output pixel, in*k*k/4), biases N(0, 0.01): at 64x128 random images
  give flows of a few pixels through the whole stack (the official xavier
  + uniform[0, 1) biases saturate)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("bias"):
        p.copy_(0.1 * torch.randn(p.shape, generator=g))
        continue
      module = model.get_submodule(name.rsplit(".", 1)[0])
      if isinstance(module, nn.ConvTranspose2d):
        fan_in = p.shape[0] * p.shape[2] * p.shape[3] / 4
      else:
        fan_in = p.shape[1] * p.shape[2] * p.shape[3]
      p.copy_(torch.randn(p.shape, generator=g) / np.sqrt(fan_in))
  return model
