"""Straightforward NumPy forwards of the discrete networks a one-hot choice selects, for the tests.

Written from the reference definitions (quark0/darts ``operations.py``/``model_search.py``,
D-X-Y/AutoDL-Projects ``cell_operations.py``/``search_cells.py``/``TinyNetworkDarts``), not from
jaxnas: every convolution and pool is the textbook sum over an explicit window of input pixels
(im2col by index arithmetic), every batch norm is train mode (batch mean, biased variance, eps 1e-5).
Only the chosen op of each edge is evaluated. Parameters are read from a jaxnas parameter tree by
name and edge slot; nothing else of jaxnas is used. NHWC layout, float64 throughout.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-5

DARTS_OPS = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
             "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")


# ----------------------------------------------------------------------------- primitives


def relu(x):
  return np.maximum(x, 0.0)


def out_size(n, k, stride, pad, dilation):
  """PyTorch's output length of a conv/pool window."""
  return (n + 2 * pad - dilation * (k - 1) - 1) // stride + 1


def patches(x, k, stride, pad, dilation=1, fill=0.0):
  """``P[b, oh, ow, i, j, c] = x_padded[b, oh*stride + i*dilation, ow*stride + j*dilation, c]``."""
  _, h, w, _ = x.shape
  ho, wo = out_size(h, k, stride, pad, dilation), out_size(w, k, stride, pad, dilation)
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=fill)
  rows = (np.arange(ho) * stride)[:, None] + np.arange(k)[None, :] * dilation  # (Ho, k)
  cols = (np.arange(wo) * stride)[:, None] + np.arange(k)[None, :] * dilation  # (Wo, k)
  return xp[:, rows[:, None, :, None], cols[None, :, None, :], :]


def conv(x, kernel, stride=1, pad=0, dilation=1):
  """Dense conv, HWIO kernel, no bias."""
  k = kernel.shape[0]
  return np.einsum("bhwijc,ijco->bhwo", patches(x, k, stride, pad, dilation), kernel)


def depthwise(x, kernel, stride=1, pad=0, dilation=1):
  """Depthwise conv, kernel (k, k, C): channel c of x with kernel[:, :, c]."""
  k = kernel.shape[0]
  return np.einsum("bhwijc,ijc->bhwc", patches(x, k, stride, pad, dilation), kernel)


def max_pool(x, stride):
  """nn.MaxPool2d(3, stride, padding=1): padded cells never win."""
  return patches(x, 3, stride, 1, fill=-np.inf).max(axis=(3, 4))


def avg_pool(x, stride):
  """nn.AvgPool2d(3, stride, padding=1, count_include_pad=False)."""
  total = patches(x, 3, stride, 1).sum(axis=(3, 4))
  count = patches(np.ones_like(x[..., :1]), 3, stride, 1).sum(axis=(3, 4))
  return total / count


def bn(x, scale=None, bias=None):
  """Train-mode batch norm over (B, H, W): batch mean and biased variance."""
  mean = x.mean(axis=(0, 1, 2))
  var = ((x - mean) ** 2).mean(axis=(0, 1, 2))
  y = (x - mean) / np.sqrt(var + EPS)
  if scale is not None:
    y = y * scale + bias
  return y


def factorized_reduce(x, k1, k2):
  """ReLU; conv 1×1 stride 2 on x, conv 1×1 stride 2 on x[:, 1:, 1:]; concat channels; BN."""
  r = relu(x)
  a = conv(r, k1[None, None], stride=2)
  b = conv(r[:, 1:, 1:], k2[None, None], stride=2)
  return bn(np.concatenate([a, b], axis=-1))


# ----------------------------------------------------------------------------- DARTS


def darts_edges():
  """(to node, from state) per edge in quark0/darts order: node i sums over states 0..i+1."""
  return [(i, j) for i in range(4) for j in range(i + 2)]


def edge_slot(edges, e):
  """The position of edge e among the edges that leave the same source (by increasing index)."""
  src = edges[e][1]
  return sum(1 for f in range(e) if edges[f][1] == src)


def darts_op(op, x, p, slot, stride):
  """One DARTS MixedOp candidate on edge ``slot`` of the group parameters ``p`` (affine-free)."""
  g = lambda name: np.asarray(p[name])[slot]
  name = DARTS_OPS[op]
  if name == "none":
    return 0.0 * x[:, ::stride, ::stride, :]
  if name == "max_pool_3x3":
    return bn(max_pool(x, stride))
  if name == "avg_pool_3x3":
    return bn(avg_pool(x, stride))
  if name == "skip_connect":
    return x if stride == 1 else factorized_reduce(x, g("fr_conv1"), g("fr_conv2"))
  if name.startswith("sep_conv"):
    k = 3 if name == "sep_conv_3x3" else 5
    pad = 1 if k == 3 else 2
    y = depthwise(relu(x), g(f"sep{k}_dw1"), stride=stride, pad=pad)
    y = bn(conv(y, g(f"sep{k}_pw1")[None, None]))
    y = depthwise(relu(y), g(f"sep{k}_dw2"), stride=1, pad=pad)
    return bn(conv(y, g(f"sep{k}_pw2")[None, None]))
  if name.startswith("dil_conv"):
    k = 3 if name == "dil_conv_3x3" else 5
    pad = 2 if k == 3 else 4
    y = depthwise(relu(x), g(f"dil{k}_dw"), stride=stride, pad=pad, dilation=2)
    return bn(conv(y, g(f"dil{k}_pw")[None, None]))
  raise ValueError(name)


def darts_cell(s0, s1, p, choice, reduction, reduction_prev):
  """A DARTS cell applying only ``choice[e]`` on edge e."""
  edges = darts_edges()
  pre0 = p["pre0"]
  if reduction_prev:
    t0 = factorized_reduce(s0, np.asarray(pre0["conv1"]), np.asarray(pre0["conv2"]))
  else:
    t0 = bn(conv(relu(s0), np.asarray(pre0["conv"])[None, None]))
  t1 = bn(conv(relu(s1), np.asarray(p["pre1"]["conv"])[None, None]))
  states = [t0, t1]
  for node in range(4):
    total = 0.0
    for e, (to, src) in enumerate(edges):
      if to != node:
        continue
      stride = 2 if reduction and src < 2 else 1
      total = total + darts_op(int(choice[e]), states[src], p[f"from_{src}"], edge_slot(edges, e),
                               stride)
    states.append(total)
  return np.concatenate(states[2:], axis=-1)


def darts_forward(params, x, choice, num_cells):
  """The discrete DARTS network of ``choice = {"normal": (14,), "reduce": (14,)}`` op indices."""
  x = np.asarray(x, np.float64)
  s = bn(conv(x, np.asarray(params["stem_kernel"]), pad=1),
         np.asarray(params["stem_bn"]["scale"]), np.asarray(params["stem_bn"]["bias"]))
  s0 = s1 = s
  reductions = {num_cells // 3, 2 * num_cells // 3}
  reduction_prev = False
  for i in range(num_cells):
    reduction = i in reductions
    ch = choice["reduce" if reduction else "normal"]
    s0, s1 = s1, darts_cell(s0, s1, params[f"cell_{i}"], ch, reduction, reduction_prev)
    reduction_prev = reduction
  pooled = s1.mean(axis=(1, 2))
  return pooled @ np.asarray(params["classifier"]["kernel"]) + np.asarray(params["classifier"]["bias"])


# ----------------------------------------------------------------------------- NAS-Bench-201


def nb201_edges():
  """(to, from) for the sorted keys "1<-0", "2<-0", "2<-1", "3<-0", "3<-1", "3<-2"."""
  keys = sorted(f"{i}<-{j}" for i in range(1, 4) for j in range(i))
  return [tuple(int(t) for t in key.split("<-")) for key in keys]


def nb201_op(op, x, p, slot):
  """One NAS-Bench-201 candidate (affine-free search op; convs carry a bias)."""
  name = NB201_OPS[op]
  if name == "none":
    return 0.0 * x
  if name == "skip_connect":
    return x
  if name == "nor_conv_1x1":
    y = conv(relu(x), np.asarray(p["conv1x1_kernel"])[slot][None, None])
    return bn(y + np.asarray(p["conv1x1_bias"])[slot])
  if name == "nor_conv_3x3":
    y = conv(relu(x), np.asarray(p["conv3x3_kernel"])[slot], pad=1)
    return bn(y + np.asarray(p["conv3x3_bias"])[slot])
  if name == "avg_pool_3x3":
    return avg_pool(x, 1)
  raise ValueError(name)


def nb201_cell(x, p, choice):
  edges = nb201_edges()
  nodes = [x]
  for i in range(1, 4):
    total = 0.0
    for e, (to, src) in enumerate(edges):
      if to == i:
        total = total + nb201_op(int(choice[e]), nodes[src], p[f"from_{src}"], edge_slot(edges, e))
    nodes.append(total)
  return nodes[3]


def relu_conv_bn(x, p, stride):
  """ReLU → conv 3×3 (no bias) → affine BN, as ResNetBasicblock's conv_a / conv_b."""
  y = conv(relu(x), np.asarray(p["kernel"]), stride=stride, pad=1)
  return bn(y, np.asarray(p["bn"]["scale"]), np.asarray(p["bn"]["bias"]))


def resnet_block(x, p):
  """ResNetBasicblock(stride 2): conv_b(conv_a(x)) + conv1×1(AvgPool2d(2, 2)(x))."""
  y = relu_conv_bn(relu_conv_bn(x, p["conv_a"], 2), p["conv_b"], 1)
  pooled = patches(x, 2, 2, 0).mean(axis=(3, 4))
  return y + conv(pooled, np.asarray(p["downsample_kernel"])[None, None])


def nb201_forward(params, x, choice, cells_per_stage):
  """The discrete NAS-Bench-201 network of ``choice`` (6,) op indices, shared by every cell.

  The stage parameters are stacked with the cell index first (one slice per cell of the stage).
  """
  take = lambda tree, i: {k: (take(v, i) if isinstance(v, dict) else np.asarray(v)[i])
                          for k, v in tree.items()}
  x = np.asarray(x, np.float64)
  x = bn(conv(x, np.asarray(params["stem_kernel"]), pad=1),
         np.asarray(params["stem_bn"]["scale"]), np.asarray(params["stem_bn"]["bias"]))
  for stage in range(3):
    if stage > 0:
      x = resnet_block(x, params[f"reduce_{stage}"])
    for i in range(cells_per_stage):
      x = nb201_cell(x, take(params[f"stage_{stage}"], i), choice)
  x = relu(bn(x, np.asarray(params["lastact_bn"]["scale"]), np.asarray(params["lastact_bn"]["bias"])))
  pooled = x.mean(axis=(1, 2))
  return pooled @ np.asarray(params["classifier"]["kernel"]) + np.asarray(params["classifier"]["bias"])
