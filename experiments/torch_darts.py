"""A PyTorch baseline: the DARTS search network and search step (Liu et al., ICLR 2019).

Written for ``experiments/bench_step.py`` from the description in ``../shared/REFERENCE.md`` §1
(quark0/darts ``model_search.py``, ``operations.py``, ``architect.py``), so that jaxnas can be timed
against the framework the reference uses, on the same machine and threads. Same ops, shapes,
parameter count and optimisers as the reference; it needs the ``bench`` extra
(``pip install 'jaxnas[bench]'``, torch), never the core package.

Departures from the reference, on purpose:

- The architecture logits are passed to ``forward`` (``net(x, alphas)``) instead of living in the
  module, and the unrolled step uses ``torch.func.functional_call`` on a dict of weights instead of
  building a second network with ``model.new()`` and copying flattened weights into it. The
  arithmetic is the reference's.
- The unrolled model's BatchNorm running statistics are updated in a scratch copy of the buffers,
  so the second-order step leaves the live statistics as only the weight step moves them; the
  reference's ``new()`` network also owns separate buffers, so the effect is the same.

Step (``search_step``), as ``train_search.py:train`` and ``architect.py``:

1. architecture: first order g = ∇_α L_val(w, α); second order (``unrolled=True``), with
   w' = w − ξ(μ m + ∇_w L_train(w, α) + λ_w w) and v = ∇_{w'} L_val(w', α),
   g = ∇_α L_val(w', α) − ξ [∇_α L_train(w⁺, α) − ∇_α L_train(w⁻, α)] / 2R,
   w± = w ± R v, R = 0.01 / ‖v‖₂; Adam(3e-4, betas (0.5, 0.999), weight decay 1e-3) on α.
2. weights: SGD(ξ, momentum 0.9, weight decay 3e-4) on L_train(w, α) with gradient-norm clip 5.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

PRIMITIVES = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
              "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
NUM_NODES = 4
NUM_EDGES = sum(2 + i for i in range(NUM_NODES))  # 14


def _bn(c: int, affine: bool = False) -> nn.BatchNorm2d:
  return nn.BatchNorm2d(c, affine=affine)


class ReLUConvBN(nn.Sequential):
  """ReLU → conv k×k → BN (affine-free in search)."""

  def __init__(self, c_in, c_out, k, stride, padding):
    super().__init__(nn.ReLU(inplace=False), nn.Conv2d(c_in, c_out, k, stride, padding, bias=False),
                     _bn(c_out))


class DilConv(nn.Sequential):
  """ReLU → depthwise k×k (dilation d) → 1×1 → BN."""

  def __init__(self, c_in, c_out, k, stride, padding, dilation):
    super().__init__(nn.ReLU(inplace=False),
                     nn.Conv2d(c_in, c_in, k, stride, padding, dilation=dilation, groups=c_in,
                               bias=False),
                     nn.Conv2d(c_in, c_out, 1, bias=False), _bn(c_out))


class SepConv(nn.Sequential):
  """(ReLU → depthwise k×k → 1×1 → BN) twice; only the first depthwise conv is strided."""

  def __init__(self, c_in, c_out, k, stride, padding):
    super().__init__(DilConv(c_in, c_in, k, stride, padding, 1),
                     DilConv(c_in, c_out, k, 1, padding, 1))


class Zero(nn.Module):
  def __init__(self, stride):
    super().__init__()
    self.stride = stride

  def forward(self, x):
    return x.mul(0.0) if self.stride == 1 else x[:, :, ::self.stride, ::self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
  """ReLU, two 1×1 stride-2 convs of C/2 channels (the second on x shifted by one pixel), BN."""

  def __init__(self, c_in, c_out):
    super().__init__()
    self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
    self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
    self.bn = _bn(c_out)

  def forward(self, x):
    x = F.relu(x)
    return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


def _op(name: str, c: int, stride: int) -> nn.Module:
  if name == "none":
    return Zero(stride)
  if name == "max_pool_3x3":
    return nn.Sequential(nn.MaxPool2d(3, stride, padding=1), _bn(c))
  if name == "avg_pool_3x3":
    return nn.Sequential(nn.AvgPool2d(3, stride, padding=1, count_include_pad=False), _bn(c))
  if name == "skip_connect":
    return nn.Identity() if stride == 1 else FactorizedReduce(c, c)
  if name.startswith("sep_conv"):
    k = int(name[-1])
    return SepConv(c, c, k, stride, k // 2)
  k = int(name[-1])  # dil_conv
  return DilConv(c, c, k, stride, k - 1, 2)


class MixedOp(nn.Module):
  """ō(x) = Σ_k w_k o_k(x) over the eight candidate ops."""

  def __init__(self, c, stride):
    super().__init__()
    self.ops = nn.ModuleList([_op(name, c, stride) for name in PRIMITIVES])

  def forward(self, x, weights):
    return sum(w * op(x) for w, op in zip(weights, self.ops))


class Cell(nn.Module):
  """Two preprocessed inputs, four nodes summing mixed ops over all earlier states, concat."""

  def __init__(self, c_pp, c_p, c, reduction, reduction_prev):
    super().__init__()
    self.reduction = reduction
    self.pre0 = FactorizedReduce(c_pp, c) if reduction_prev else ReLUConvBN(c_pp, c, 1, 1, 0)
    self.pre1 = ReLUConvBN(c_p, c, 1, 1, 0)
    self.ops = nn.ModuleList()
    for i in range(NUM_NODES):
      for j in range(2 + i):
        self.ops.append(MixedOp(c, 2 if reduction and j < 2 else 1))

  def forward(self, s0, s1, weights):
    states = [self.pre0(s0), self.pre1(s1)]
    offset = 0
    for _ in range(NUM_NODES):
      s = sum(self.ops[offset + j](h, weights[offset + j]) for j, h in enumerate(states))
      offset += len(states)
      states.append(s)
    return torch.cat(states[-NUM_NODES:], dim=1)


class Network(nn.Module):
  """quark0/darts ``model_search.Network``: stem, L cells (reductions at L//3, 2L//3), GAP, linear."""

  def __init__(self, c=16, num_classes=10, layers=8, in_channels=3, stem_multiplier=3):
    super().__init__()
    c_curr = stem_multiplier * c
    self.stem = nn.Sequential(nn.Conv2d(in_channels, c_curr, 3, padding=1, bias=False),
                              nn.BatchNorm2d(c_curr))
    c_pp, c_p, c_curr = c_curr, c_curr, c
    self.cells = nn.ModuleList()
    reduction_prev = False
    for i in range(layers):
      reduction = i in (layers // 3, 2 * layers // 3)
      if reduction:
        c_curr *= 2
      self.cells.append(Cell(c_pp, c_p, c_curr, reduction, reduction_prev))
      reduction_prev = reduction
      c_pp, c_p = c_p, NUM_NODES * c_curr
    self.classifier = nn.Linear(c_p, num_classes)

  def forward(self, x, alphas):
    w_normal = F.softmax(alphas["normal"], dim=-1)
    w_reduce = F.softmax(alphas["reduce"], dim=-1)
    s0 = s1 = self.stem(x)
    for cell in self.cells:
      s0, s1 = s1, cell(s0, s1, w_reduce if cell.reduction else w_normal)
    return self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1))


def init_alphas(generator=None):
  """α = 1e-3·N(0, 1), one (14, 8) tensor for normal cells and one for reduction cells."""
  return {k: (1e-3 * torch.randn(NUM_EDGES, len(PRIMITIVES), generator=generator)
              ).requires_grad_(True) for k in ("normal", "reduce")}


def count_params(net: nn.Module) -> int:
  """Number of network weights (alphas are not module parameters)."""
  return sum(p.numel() for p in net.parameters())


class Searcher:
  """Weights, alphas and both optimisers; ``search_step`` is one DARTS step."""

  def __init__(self, net: Network, alphas, *, lr=0.025, momentum=0.9, weight_decay=3e-4,
               arch_lr=3e-4, arch_weight_decay=1e-3, clip=5.0, unrolled=False):
    self.net, self.alphas, self.unrolled, self.clip = net, alphas, unrolled, clip
    self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
    self.w_opt = torch.optim.SGD(net.parameters(), lr, momentum=momentum,
                                 weight_decay=weight_decay)
    self.a_opt = torch.optim.Adam(list(alphas.values()), lr=arch_lr, betas=(0.5, 0.999),
                                  weight_decay=arch_weight_decay)

  def _loss(self, params, buffers, batch, alphas):
    x, y = batch
    logits = functional_call(self.net, (params, buffers), (x, alphas))
    return F.cross_entropy(logits, y)

  def _second_order_grad(self, train, val):
    """g = ∇_α L_val(w') − ξ·[∇_α L_tr(w⁺) − ∇_α L_tr(w⁻)]/2R (quark0/darts architect)."""
    names = [n for n, _ in self.net.named_parameters()]
    w = [p.detach() for p in self.net.parameters()]
    buffers = {n: b.clone() for n, b in self.net.named_buffers()}  # scratch statistics
    params = dict(zip(names, (p.detach().requires_grad_(True) for p in w)))
    alphas = {k: a.detach() for k, a in self.alphas.items()}
    g_train = torch.autograd.grad(self._loss(params, buffers, train, alphas), list(params.values()))
    unrolled = []
    for p, g, param in zip(w, g_train, self.net.parameters()):
      m = self.w_opt.state.get(param, {}).get("momentum_buffer")
      m = torch.zeros_like(p) if m is None else m
      unrolled.append(p - self.lr * (self.momentum * m + g + self.weight_decay * p))
    w_prime = dict(zip(names, (u.requires_grad_(True) for u in unrolled)))
    alphas_v = {k: a.clone().requires_grad_(True) for k, a in alphas.items()}
    grads = torch.autograd.grad(self._loss(w_prime, buffers, val, alphas_v),
                                list(alphas_v.values()) + list(w_prime.values()))
    g_alpha, v = grads[:len(alphas_v)], grads[len(alphas_v):]
    r = 0.01 / torch.sqrt(sum((vi * vi).sum() for vi in v))

    def train_alpha_grad(sign):
      shifted = dict(zip(names, (p + sign * r * vi for p, vi in zip(w, v))))
      a = {k: x.clone().requires_grad_(True) for k, x in alphas.items()}
      return torch.autograd.grad(self._loss(shifted, buffers, train, a), list(a.values()))

    g_plus, g_minus = train_alpha_grad(1.0), train_alpha_grad(-1.0)
    return [ga - self.lr * (gp - gm) / (2 * r) for ga, gp, gm in zip(g_alpha, g_plus, g_minus)]

  def search_step(self, train, val):
    """One architecture step, then one weight step on the same train batch; returns the losses."""
    self.a_opt.zero_grad()
    if self.unrolled:
      for a, g in zip(self.alphas.values(), self._second_order_grad(train, val)):
        a.grad = g
      val_loss = None
    else:
      val_loss = F.cross_entropy(self.net(val[0], self.alphas), val[1])
      val_loss.backward()
    self.a_opt.step()
    self.w_opt.zero_grad()
    alphas = {k: a.detach() for k, a in self.alphas.items()}
    loss = F.cross_entropy(self.net(train[0], alphas), train[1])
    loss.backward()
    nn.utils.clip_grad_norm_(self.net.parameters(), self.clip)
    self.w_opt.step()
    return loss.detach(), val_loss
