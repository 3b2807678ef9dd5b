"""The DARTS CNN search space (Liu et al., ICLR 2019), as a supernet.

Cell: two input nodes (the outputs of the two previous cells, preprocessed to C channels),
four intermediate nodes each summing a mixed op over every earlier node (14 edges), output the
concatenation of the four intermediate nodes (4C channels). Candidate ops, in the reference order:
``none, max_pool_3x3, avg_pool_3x3, skip_connect, sep_conv_3x3, sep_conv_5x5, dil_conv_3x3,
dil_conv_5x5``. Reduction cells sit at ``L // 3`` and ``2L // 3``; there the edges from the two input
nodes have stride 2 and the channel count doubles. Stem conv 3×3 → 3C + affine BN; global average
pooling; linear classifier. All search ops are affine-free (quark0/darts ``model_search.py``).

Ops (quark0/darts ``operations.py``): SepConv = (ReLU → depthwise k×k (stride s) → 1×1 → BN) twice,
the second with stride 1; DilConv = ReLU → depthwise k×k dilation 2 → 1×1 → BN; pools 3×3 pad 1
(average without the padded cells) followed by an affine-free BN; skip = identity, or
FactorizedReduce at stride 2 (ReLU, two 1×1 stride-2 convs of C/2 channels, the second on the input
shifted by one pixel, concatenated, BN); none = 0.

How the program is kept small (``../shared/XLA_CPU.md``): the edges leaving one node share their
input, so each such group is computed at once on a tensor of ``E·C`` channels (block-diagonal 1×1
convs as one einsum, depthwise convs on the widened tensor, one batch norm over ``E·C`` channels).
A departure from the reference in form, not in function: the pools followed by an affine-free BN,
and the identity, produce the same tensor on every edge of a group (same input, no parameters, the
same running statistics), so they are computed once per group. Outputs, gradients and parameter
counts equal the reference's; only the number of identical running-statistics buffers differs.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxnas.derive import DARTS_NUM_NODES, DARTS_OPS, darts_edge_sources
from jaxnas.spaces.layers import (BatchNorm, add_skip_noise, avg_pool_3x3, conv2d,
                                  depthwise_conv2d, max_pool_3x3, torch_uniform)

__all__ = ["DARTS_OPS", "DARTS_EDGES", "DartsSearchNetwork", "reduction_indices"]

NUM_NODES = DARTS_NUM_NODES
# (to intermediate node, from state) per edge, in the reference's order: node i takes states 0..i+1.
# The op order and edge layout are defined once, in jaxnas.derive, which reads genotypes off them.
DARTS_EDGES = darts_edge_sources(NUM_NODES)
# Edges leaving each state, as indices into DARTS_EDGES (the group computed together).
_EDGES_FROM = {src: tuple(e for e, (_, s) in enumerate(DARTS_EDGES) if s == src)
               for src in range(NUM_NODES + 1)}

Dtype = Any


def reduction_indices(num_cells: int):
  """The cells that reduce: ``L // 3`` and ``2L // 3``, as the reference."""
  return sorted({num_cells // 3, 2 * num_cells // 3})


def _pointwise(x, kernel):
  """Per-edge 1×1 conv on (..., E, Cin) with kernel (E, Cin, Cout)."""
  return jnp.einsum("bhwei,eio->bhweo", x, kernel)


class DartsEdgeGroup(nn.Module):
  """The mixed ops of the ``E`` edges leaving one state, on their shared input.

  For edge e: ō_e(x) = Σ_k w[e, k] · o_k(x). Returns shape ``(B, H', W', E, C)``.
  """

  num_edges: int
  channels: int
  stride: int
  depthwise: str = "lax"
  dtype: Dtype = jnp.float32
  skip_noise: float = 0.0

  def _bn(self, y, name, train):
    b, h, w, e, c = y.shape
    return BatchNorm(dtype=self.dtype, name=name)(y.reshape(b, h, w, e * c), train=train).reshape(
        y.shape)

  def _dw(self, y, kernel, stride, padding, dilation):
    """Depthwise conv of (B, H, W, E, C) with kernel (E, k, k, C)."""
    b, h, w, e, c = y.shape
    k = kernel.shape[1]
    kflat = jnp.transpose(kernel, (1, 2, 0, 3)).reshape(k, k, e * c)
    out = depthwise_conv2d(y.reshape(b, h, w, e * c), kflat, stride=stride, padding=padding,
                           dilation=dilation, impl=self.depthwise)
    return out.reshape(out.shape[:3] + (e, c))

  def _dw_param(self, name, k):
    return self.param(name, torch_uniform(k * k), (self.num_edges, k, k, self.channels), self.dtype)

  def _pw_param(self, name):
    c = self.channels
    return self.param(name, torch_uniform(c), (self.num_edges, c, c), self.dtype)

  def _sep_conv(self, r_wide, k, train):
    pad = k // 2
    y = self._dw(r_wide, self._dw_param(f"sep{k}_dw1", k), self.stride, pad, 1)
    y = self._bn(_pointwise(y, self._pw_param(f"sep{k}_pw1")), f"sep{k}_bn1", train)
    y = self._dw(jax.nn.relu(y), self._dw_param(f"sep{k}_dw2", k), 1, pad, 1)
    return self._bn(_pointwise(y, self._pw_param(f"sep{k}_pw2")), f"sep{k}_bn2", train)

  def _dil_conv(self, r_wide, k, train):
    y = self._dw(r_wide, self._dw_param(f"dil{k}_dw", k), self.stride, k - 1, 2)
    return self._bn(_pointwise(y, self._pw_param(f"dil{k}_pw")), f"dil{k}_bn", train)

  def _factorized_reduce(self, r, train):
    e, c = self.num_edges, self.channels
    cin = r.shape[-1]
    k1 = self.param("fr_conv1", torch_uniform(cin), (e, cin, c // 2), self.dtype)
    k2 = self.param("fr_conv2", torch_uniform(cin), (e, cin, c // 2), self.dtype)
    a = jnp.einsum("bhwi,eio->bhweo", r[:, ::2, ::2], k1)
    b = jnp.einsum("bhwi,eio->bhweo", r[:, 1::2, 1::2], k2)
    return self._bn(jnp.concatenate([a, b], axis=-1), "fr_bn", train)

  @nn.compact
  def __call__(self, x, weights, *, train: bool):
    e, s = self.num_edges, self.stride
    wt = weights.astype(self.dtype)  # (E, 8); 'none' contributes exactly zero and is skipped
    r = jax.nn.relu(x)
    r_wide = jnp.broadcast_to(r[..., None, :], r.shape[:3] + (e, r.shape[-1]))
    shared_bn = lambda y, name: BatchNorm(dtype=self.dtype, name=name)(y, train=train)
    max_p = shared_bn(max_pool_3x3(x, stride=s), "max_pool_bn")
    avg_p = shared_bn(avg_pool_3x3(x, stride=s), "avg_pool_bn")
    out = wt[:, 1, None] * max_p[..., None, :] + wt[:, 2, None] * avg_p[..., None, :]
    skip = x[..., None, :] if s == 1 else self._factorized_reduce(r, train)
    if self.skip_noise and train:  # every edge draws its own noise
      skip = add_skip_noise(self, jnp.broadcast_to(skip, out.shape), self.skip_noise, train)
    out = out + wt[:, 3, None] * skip
    out = out + wt[:, 4, None] * self._sep_conv(r_wide, 3, train)
    out = out + wt[:, 5, None] * self._sep_conv(r_wide, 5, train)
    out = out + wt[:, 6, None] * self._dil_conv(r_wide, 3, train)
    out = out + wt[:, 7, None] * self._dil_conv(r_wide, 5, train)
    return out


class Preprocess(nn.Module):
  """ReLU → 1×1 conv → affine-free BN, or FactorizedReduce when ``reduce`` (previous cell reduced)."""

  channels: int
  reduce: bool
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    cin, c = x.shape[-1], self.channels
    r = jax.nn.relu(x)
    if self.reduce:
      k1 = self.param("conv1", torch_uniform(cin), (cin, c // 2), self.dtype)
      k2 = self.param("conv2", torch_uniform(cin), (cin, c // 2), self.dtype)
      y = jnp.concatenate([r[:, ::2, ::2] @ k1, r[:, 1::2, 1::2] @ k2], axis=-1)
    else:
      y = r @ self.param("conv", torch_uniform(cin), (cin, c), self.dtype)
    return BatchNorm(dtype=self.dtype, name="bn")(y, train=train)


class DartsCell(nn.Module):
  """A DARTS search cell (normal or reduction) with mixing weights of shape (14, 8)."""

  channels: int
  reduction: bool
  reduction_prev: bool
  depthwise: str = "lax"
  dtype: Dtype = jnp.float32
  skip_noise: float = 0.0

  @nn.compact
  def __call__(self, s0, s1, weights, *, train: bool):
    c = self.channels
    states = [Preprocess(c, self.reduction_prev, self.dtype, name="pre0")(s0, train=train),
              Preprocess(c, False, self.dtype, name="pre1")(s1, train=train)]
    inbox = {i: [] for i in range(NUM_NODES)}
    for src in range(NUM_NODES + 1):
      edges = _EDGES_FROM[src]
      stride = 2 if self.reduction and src < 2 else 1
      out = DartsEdgeGroup(len(edges), c, stride, self.depthwise, self.dtype, self.skip_noise,
                           name=f"from_{src}")(states[src], weights[jnp.array(edges)], train=train)
      for slot, e in enumerate(edges):
        inbox[DARTS_EDGES[e][0]].append(out[..., slot, :])
      if src >= 1:  # after the groups from states 0..src, node src-1 has all its inputs
        states.append(sum(inbox[src - 1]))
    return jnp.concatenate(states[2:], axis=-1)


class DartsSearchNetwork(nn.Module):
  """The DARTS supernet (quark0/darts ``model_search.Network``) with mixing weights as an argument.

  Attributes:
    channels: C, the initial channel count (reference 16).
    num_cells: L, cells in the network (reference 8); reductions at L//3 and 2L//3.
    num_classes: classifier outputs.
    depthwise: how depthwise convs are traced, ``"lax"``, ``"taps"`` or ``"vjp"`` (see
      ``layers.depthwise_conv2d`` for the measured trade-off).
    dtype: parameter and computation dtype.
    skip_noise: NoisyDARTS' λ: Gaussian noise of std λ·std(skip output) on every skip_connect
      in train mode when a ``"noise"`` RNG is given (``layers.add_skip_noise``); 0 turns it off.

  ``weights = {"normal": (14, 8), "reduce": (14, 8)}``: one for all normal cells, one for all
  reduction cells, the output of a relaxation.
  """

  channels: int = 16
  num_cells: int = 8
  num_classes: int = 10
  depthwise: str = "lax"
  dtype: Dtype = jnp.float32
  skip_noise: float = 0.0

  op_names: Sequence[str] = DARTS_OPS
  space_name = "darts"
  default_rule = "darts-top2"

  def alpha_shapes(self):
    shape = (len(DARTS_EDGES), len(DARTS_OPS))
    return {"normal": shape, "reduce": shape}

  def init_alphas(self, key):
    """α = 1e-3 · N(0, 1) for the normal and the reduction cell, as the reference."""
    kn, kr = jax.random.split(key)
    shape = (len(DARTS_EDGES), len(DARTS_OPS))
    return {"normal": 1e-3 * jax.random.normal(kn, shape, self.dtype),
            "reduce": 1e-3 * jax.random.normal(kr, shape, self.dtype)}

  @nn.compact
  def __call__(self, x, weights, *, train: bool):
    from jaxnas.spaces import check_weights
    check_weights(weights, self.alpha_shapes(), "darts")
    x = x.astype(self.dtype)
    c = self.channels
    stem_k = self.param("stem_kernel", torch_uniform(9 * x.shape[-1]),
                        (3, 3, x.shape[-1], 3 * c), self.dtype)
    s = BatchNorm(affine=True, dtype=self.dtype, name="stem_bn")(conv2d(x, stem_k, padding=1),
                                                                   train=train)
    s0 = s1 = s
    reductions = reduction_indices(self.num_cells)
    c_curr, reduction_prev = c, False
    for i in range(self.num_cells):
      reduction = i in reductions
      if reduction:
        c_curr *= 2
      w = weights["reduce" if reduction else "normal"].astype(self.dtype)
      cell = DartsCell(c_curr, reduction, reduction_prev, self.depthwise, self.dtype,
                       self.skip_noise, name=f"cell_{i}")
      s0, s1 = s1, cell(s0, s1, w, train=train)
      reduction_prev = reduction
    x = jnp.mean(s1, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.dtype,
                    kernel_init=torch_uniform(x.shape[-1]), bias_init=torch_uniform(x.shape[-1]),
                    name="classifier")(x)
