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

Options shared by every recipe:

- ``partial_channels = K`` (PC-DARTS, Xu et al., ICLR 2020; yuhuixu1993/PC-DARTS ``MixedOp``): on
  every edge only the first ``C/K`` channels of the input go through the mixed op (ops built for
  ``C/K`` channels); the other ``C − C/K`` bypass it, through a 2×2 max pool on strided edges, and
  the edge's output is ``channel_shuffle(concat(op_out, bypass), K)``. ``K = 1`` is DARTS.
- ``edge_normalization`` (PC-DARTS): the weights carry one more entry per cell kind,
  ``"<kind>_edges"`` of shape (14,), and node ``i`` sums ``w_edges[e] · ō_e(x)`` over its incoming
  edges (the relaxation normalises ``w_edges`` per node, ``jaxnas.relax.pc_darts``).
- ``op_set`` (``"darts"``, ``"dartopti"``): the candidate operations. ``"dartopti"`` is D-DARTS'
  S_o (§4.4 of Heuillet et al. 2023), 12 ops without ``none``, computed by
  :class:`jaxnas.spaces.dartopti.DartoptiEdgeGroup` with the same grouping.
- ``init_genotype`` (``"resnet18"``, ``"resnet50"``; DARTOpti): the network's shape (cells,
  reductions, nodes per cell) and its initial alphas come from a hand-made network of
  :mod:`jaxnas.spaces.dartopti_ops`; see :class:`DartsSearchNetwork`.
- ``remat`` (``"none"``, ``"cell"``, ``"op"``): rematerialisation. ``"cell"`` wraps each cell in
  :func:`jaxnas.spaces.remat.remat`: only a cell's inputs are kept for the backward pass and its
  inside is recomputed there; ``"op"`` wraps each group of mixed ops the same way. Same numbers,
  less memory, more compute. Not ``flax.linen.remat`` (``jax.checkpoint``): XLA:CPU drops its
  optimisation barriers early and merges the recomputation back into the forward pass, so it
  saved no memory on this unscanned network (see :mod:`jaxnas.spaces.remat`).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxnas.derive import DARTS_NUM_NODES, DARTS_OPS, darts_edge_sources
from jaxnas.spaces import dartopti_ops
from jaxnas.spaces.remat import remat
from jaxnas.errors import JaxnasError
from jaxnas.spaces.layers import (BatchNorm, add_skip_noise, avg_pool_3x3, conv2d,
                                  depthwise_conv2d, max_pool_3x3, torch_uniform)

__all__ = ["DARTS_OPS", "DARTS_EDGES", "DartsSearchNetwork", "reduction_indices", "channel_shuffle",
           "partial_channel_output", "REMAT_MODES", "check_partial_channels"]

REMAT_MODES = ("none", "cell", "op")
OP_SETS = {"darts": DARTS_OPS, "dartopti": dartopti_ops.DARTOPTI_OPS}

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


def channel_shuffle(x, groups: int):
  """PC-DARTS' ``channel_shuffle`` on the last axis (ShuffleNet's, Zhang et al., CVPR 2018).

  The ``C`` channels are ``groups`` blocks of ``C/groups``; output channel ``j·groups + g`` is input
  channel ``g·(C/groups) + j`` (reshape to (groups, C/groups), transpose, flatten). Its inverse is
  ``channel_shuffle(·, C // groups)``.
  """
  c = x.shape[-1]
  y = x.reshape(x.shape[:-1] + (groups, c // groups))
  return jnp.swapaxes(y, -1, -2).reshape(x.shape)


def _max_pool_2x2(x):
  """``nn.MaxPool2d(2, 2)`` on NHWC (odd trailing rows and columns dropped, as PyTorch)."""
  b, h, w, c = x.shape
  x = x[:, : h // 2 * 2, : w // 2 * 2]
  return jnp.max(x.reshape(b, h // 2, 2, w // 2, 2, c), axis=(2, 4))


def partial_channel_output(op_out, bypass, stride: int, k: int):
  """One PC-DARTS edge output per edge: ``channel_shuffle(concat(op_out, bypass'), k)``.

  ``op_out`` (B, H', W', E, C/K) is the mixed op on the first ``C/K`` channels, ``bypass``
  (B, H, W, C − C/K) the other channels of the shared input; ``bypass' = MaxPool2d(2, 2)(bypass)``
  on strided edges, else ``bypass`` (yuhuixu1993/PC-DARTS ``MixedOp.forward``). The bypass is the
  same for all ``E`` edges of a group and is broadcast to them. Returns (B, H', W', E, C).
  """
  if stride == 2:
    bypass = _max_pool_2x2(bypass)
  bypass = jnp.broadcast_to(bypass[..., None, :], op_out.shape[:-1] + bypass.shape[-1:])
  return channel_shuffle(jnp.concatenate([op_out, bypass], axis=-1), k)


def check_partial_channels(channels: int, num_cells: int, k) -> None:
  """Raises a one-line JaxnasError unless every cell's ``C`` splits into ``K`` parts.

  Each cell's channel count must be a multiple of ``K``, and in reduction cells ``C/K`` must be even
  (the strided skip op, a FactorizedReduce on ``C/K`` channels, has two halves).
  """
  if isinstance(k, bool) or not isinstance(k, int) or k < 1:
    raise JaxnasError(f"partial_channels must be a whole number ≥ 1 (1 = DARTS, 4 = PC-DARTS), "
                      f"got {k!r}")
  c, reductions = channels, reduction_indices(num_cells)
  for i in range(num_cells):
    if i in reductions:
      c *= 2
    if c % k or (i in reductions and (c // k) % 2):
      raise JaxnasError(f"partial_channels={k} needs every cell's channel count to be a multiple "
                        f"of {k} (and of {2 * k} in reduction cells); cell {i} has {c}: choose "
                        f"--channels a multiple of {k}")


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
  def __call__(self, x, weights, train: bool):
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
  """A DARTS search cell (normal or reduction) with mixing weights of shape (14, 8).

  ``edge_weights`` (14,), if given, scale each edge's output in its node's sum (PC-DARTS' edge
  normalisation); ``partial_channels`` and ``remat_ops`` as in :class:`DartsSearchNetwork`.
  """

  channels: int
  reduction: bool
  reduction_prev: bool
  depthwise: str = "lax"
  dtype: Dtype = jnp.float32
  skip_noise: float = 0.0
  partial_channels: int = 1
  remat_ops: bool = False
  op_set: str = "darts"
  steps: int = NUM_NODES

  @nn.compact
  def __call__(self, s0, s1, weights, train: bool, edge_weights=None):
    c, k = self.channels, self.partial_channels
    states = [Preprocess(c, self.reduction_prev, self.dtype, name="pre0")(s0, train=train),
              Preprocess(c, False, self.dtype, name="pre1")(s1, train=train)]
    if self.op_set == "dartopti":
      from jaxnas.spaces.dartopti import DartoptiEdgeGroup as base  # noqa: PLC0415
    else:
      base = DartsEdgeGroup
    # `train` is positional so that nn.remat can hold it static (keywords are traced).
    group_cls = remat(base, static_argnums=(3,)) if self.remat_ops else base
    cell_edges = darts_edge_sources(self.steps)
    inbox = {i: [] for i in range(self.steps)}
    for src in range(self.steps + 1):
      edges = tuple(e for e, (_, s) in enumerate(cell_edges) if s == src)
      stride = 2 if self.reduction and src < 2 else 1
      group = group_cls(len(edges), c // k, stride, self.depthwise, self.dtype, self.skip_noise,
                        name=f"from_{src}")
      x = states[src]
      if k == 1:
        out = group(x, weights[jnp.array(edges)], train)
      else:
        out = group(x[..., : c // k], weights[jnp.array(edges)], train)
        out = partial_channel_output(out, x[..., c // k:], stride, k)
      for slot, e in enumerate(edges):
        y = out[..., slot, :]
        inbox[cell_edges[e][0]].append(y if edge_weights is None else edge_weights[e] * y)
      if src >= 1:  # after the groups from states 0..src, node src-1 has all its inputs
        states.append(sum(inbox[src - 1]))
    # The last four states (the reference's multiplier 4): all of them for DARTS' four nodes.
    return jnp.concatenate(states[-4:], axis=-1)


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
    partial_channels: PC-DARTS' K (1 = DARTS): the mixed ops see ``C/K`` channels of each edge's
      input, the rest bypass (see the module docstring).
    edge_normalization: PC-DARTS' β: weights also hold ``"normal_edges"`` and ``"reduce_edges"``
      (14,), each edge's weight in its node's sum.
    remat: ``"none"``, ``"cell"`` (:func:`jaxnas.spaces.remat.remat` on every cell) or ``"op"``
      (on every group of mixed ops): the same function with activations recomputed in the backward pass.
    cell_sharing: ``"type"`` (default, DARTS): one set of alphas for all normal cells and one for
      all reduction cells, ``weights = {"normal": (14, 8), "reduce": (14, 8)}``. ``"none"``
      (D-DARTS, Heuillet et al. 2022): every cell has its own alphas, ``weights = {"cells":
      (L, 14, 8)}``, row ``i`` for cell ``i``; see :mod:`jaxnas.ddarts`.
    op_set: ``"darts"`` (the 8 DARTS ops) or ``"dartopti"`` (D-DARTS' S_o, 12 ops, no ``none``;
      ``op_names`` follows it).
    init_genotype: ``""`` or the name of a hand-made network (``"resnet18"``, ``"resnet50"``,
      :data:`jaxnas.spaces.dartopti_ops.HANDMADE`); DARTOpti (D-DARTS §4.4). It needs
      ``op_set="dartopti"`` and ``cell_sharing="none"``, and fixes the network's shape: its
      ``len(seq)`` cells (``num_cells`` must match), its reduction cells, ``steps`` nodes per cell
      (4 for ResNet-18, 6 for ResNet-50; a cell outputs its last four states, as the reference's
      multiplier 4). ``weights = {"cells": (G, E, 12)}`` with one row per *distinct* cell of the
      genotype (G = 1 for ResNet-18, 3 for ResNet-50): position ``i`` of the network mixes with
      row ``seq[i]``, so identical cells share their alphas (the authors' ``cell_dict``: a
      repeated cell reads the alphas of its first occurrence). They do not share weights: each
      position has its own, as in the authors' code, because positions of one distinct cell sit
      in different stages with different channel counts (ResNet-18's one cell runs at C, 2C, 4C
      and 8C), so the paper's "identical cells share weights" cannot hold for the convolutions.
      ``init_alphas`` gives 10 on the genotype's (edge, op) entries and 0 elsewhere
      (:func:`jaxnas.spaces.dartopti_ops.genotype_alphas`). ``"gates"`` then has one entry per
      distinct cell, applied at each of its positions (the authors deactivate only a distinct
      cell's first position when they measure its marginal contribution: ``"first_gates"`` and
      ``"first_cells"`` below do that).

  ``weights`` is the output of a relaxation. It may also carry ``"gates"``, shape ``(L,)``, values
  in [0, 1] (used by D-DARTS' ablations, :func:`jaxnas.ddarts.deactivated_mixing`): cell ``i``'s
  output becomes ``g_i · cell_i(s0, s1) + (1 − g_i) · s1`` where its input ``s1`` has the output's
  shape, and ``g_i · cell_i(s0, s1)`` elsewhere (the first cell, reduction cells), i.e. gate 0
  bypasses a cell where it can and zeroes it otherwise. ``"first_gates"`` (rows,) are gates
  applied only at the first position of each alpha row, and ``"first_cells"`` (the shape of
  ``"cells"``) are the mixing weights that position reads instead of ``"cells"``: D-DARTS'
  ablation in the authors' reading (:func:`jaxnas.ddarts.deactivated_mixing`,
  ``positions="first"``). Without ``init_genotype`` every position is its row's first.

  Why one stacked ``(L, 14, 8)`` array for ``cell_sharing="none"`` rather than a tuple of L
  arrays: relaxations, regularisers and optax act on the last axis / elementwise, so they need no
  change; D-DARTS' per-cell ablations vmap over a stack of mixing weights built by indexing the
  cell axis; and one leaf keeps the jitted program as small as the shared-alphas one.
  """

  channels: int = 16
  num_cells: int = 8
  num_classes: int = 10
  depthwise: str = "lax"
  dtype: Dtype = jnp.float32
  skip_noise: float = 0.0
  cell_sharing: str = "type"
  partial_channels: int = 1
  edge_normalization: bool = False
  remat: str = "none"
  op_set: str = "darts"
  init_genotype: str = ""

  op_names: Sequence[str] = DARTS_OPS
  space_name = "darts"
  default_rule = "darts-top2"

  def __post_init__(self):
    if self.op_set in OP_SETS and tuple(self.op_names) == DARTS_OPS:
      object.__setattr__(self, "op_names", OP_SETS[self.op_set])
    super().__post_init__()

  def _structure(self):
    """``(steps, reductions, seq, rows)``: nodes per cell, reduction cells, each position's alpha
    row, and the number of alpha rows (per-cell alphas), from ``init_genotype`` or DARTS'."""
    if self.op_set not in OP_SETS:
      raise JaxnasError(f"op_set is {self.op_set!r}; choose one of {', '.join(OP_SETS)}")
    if not self.init_genotype:
      return (NUM_NODES, tuple(reduction_indices(self.num_cells)), tuple(range(self.num_cells)),
              self.num_cells)
    net = dartopti_ops.handmade(self.init_genotype)
    if self.op_set != "dartopti" or self.cell_sharing != "none":
      raise JaxnasError(f"init_genotype {self.init_genotype!r} needs the 12-op set and per-cell "
                        "alphas (op_set='dartopti', cell_sharing='none'): use --method dartopti")
    if self.num_cells != len(net.seq):
      raise JaxnasError(f"{self.init_genotype} has {len(net.seq)} cells but the network was asked "
                        f"for {self.num_cells}; leave --cells out or pass --cells {len(net.seq)}")
    return net.steps, tuple(net.reductions), tuple(net.seq), len(net.genes)

  def _edge_op_shape(self):
    return (len(darts_edge_sources(self._structure()[0])), len(self.op_names))

  def alpha_shapes(self):
    shape = self._edge_op_shape()
    if self.cell_sharing == "none":
      return {"cells": (self._structure()[3],) + shape}
    if self.edge_normalization:
      edges = (len(DARTS_EDGES),)
      return {"normal": shape, "reduce": shape, "normal_edges": edges, "reduce_edges": edges}
    return {"normal": shape, "reduce": shape}

  def init_alphas(self, key):
    """α = 1e-3 · N(0, 1) for the normal and the reduction cell, as the reference.

    With ``cell_sharing="none"``, α = 0 for every cell, as D-DARTS (``Cell.__init__`` in
    aheuillet/D-DARTS): all sigmoid weights start at 1/2.
    """
    if self.init_genotype:
      self._structure()  # one-line errors first
      return {"cells": jnp.asarray(dartopti_ops.genotype_alphas(
          dartopti_ops.handmade(self.init_genotype), op_names=self.op_names), self.dtype)}
    if self.cell_sharing == "none":
      return {"cells": jnp.zeros(self.alpha_shapes()["cells"], self.dtype)}
    kn, kr = jax.random.split(key)
    shape = self._edge_op_shape()
    if self.edge_normalization:  # PC-DARTS' β = 1e-3 · N(0, 1); α as without it
      kbn, kbr = jax.random.split(jax.random.fold_in(key, 1))
      return {"normal": 1e-3 * jax.random.normal(kn, shape, self.dtype),
              "reduce": 1e-3 * jax.random.normal(kr, shape, self.dtype),
              "normal_edges": 1e-3 * jax.random.normal(kbn, shape[:1], self.dtype),
              "reduce_edges": 1e-3 * jax.random.normal(kbr, shape[:1], self.dtype)}
    return {"normal": 1e-3 * jax.random.normal(kn, shape, self.dtype),
            "reduce": 1e-3 * jax.random.normal(kr, shape, self.dtype)}

  @nn.compact
  def __call__(self, x, weights, *, train: bool):
    from jaxnas.spaces import check_weights
    if self.cell_sharing not in ("type", "none"):
      raise JaxnasError(f"cell_sharing is {self.cell_sharing!r}; choose 'type' (one alphas per "
                        "cell type, DARTS) or 'none' (one per cell, D-DARTS)")
    steps, reductions, seq, rows = self._structure()
    gates = weights.get("gates") if isinstance(weights, dict) else None
    # D-DARTS' ablation in the authors' reading: a row's first position only (jaxnas.ddarts).
    first_gates = weights.get("first_gates") if isinstance(weights, dict) else None
    first_cells = weights.get("first_cells") if isinstance(weights, dict) else None
    for name, g in (("gates", gates), ("first_gates", first_gates)):
      if g is not None and tuple(jnp.shape(g)) != (rows,):  # one gate per alpha row
        raise JaxnasError(f"weights['{name}'] has shape {tuple(jnp.shape(g))} but the network "
                          f"has {rows} cells; pass one gate per cell")
    if isinstance(weights, dict):
      weights = {k: v for k, v in weights.items()
                 if k not in ("gates", "first_gates", "first_cells")}
    check_weights(weights, self.alpha_shapes(), "darts")
    if first_cells is not None and jnp.shape(first_cells) != jnp.shape(weights.get("cells")):
      raise JaxnasError(f"weights['first_cells'] has shape {tuple(jnp.shape(first_cells))}; it "
                        "must have the shape of weights['cells']")
    check_partial_channels(self.channels, self.num_cells, self.partial_channels)
    if self.remat not in REMAT_MODES:
      raise JaxnasError(f"remat is {self.remat!r}; choose one of {', '.join(REMAT_MODES)}")
    if self.edge_normalization and self.cell_sharing != "type":
      raise JaxnasError("edge_normalization needs cell_sharing='type' (one β per cell type, as "
                        "PC-DARTS)")
    # `train` is passed positionally so that nn.remat can hold it static (keywords are traced).
    cell_cls = remat(DartsCell, static_argnums=(4,)) if self.remat == "cell" else DartsCell
    x = x.astype(self.dtype)
    c = self.channels
    stem_k = self.param("stem_kernel", torch_uniform(9 * x.shape[-1]),
                        (3, 3, x.shape[-1], 3 * c), self.dtype)
    s = BatchNorm(affine=True, dtype=self.dtype, name="stem_bn")(conv2d(x, stem_k, padding=1),
                                                                   train=train)
    s0 = s1 = s
    c_curr, reduction_prev = c, False
    for i in range(self.num_cells):
      reduction = i in reductions
      if reduction:
        c_curr *= 2
      first = seq.index(seq[i]) == i  # the first position of its alpha row
      if self.cell_sharing == "none":
        w = (first_cells if first and first_cells is not None else weights["cells"])[seq[i]]
        w = w.astype(self.dtype)
      else:
        w = weights["reduce" if reduction else "normal"].astype(self.dtype)
      cell = cell_cls(c_curr, reduction, reduction_prev, self.depthwise, self.dtype,
                      self.skip_noise, self.partial_channels, self.remat == "op",
                      self.op_set, steps, name=f"cell_{i}")
      edge_w = None
      if self.edge_normalization:
        edge_w = weights["reduce_edges" if reduction else "normal_edges"].astype(self.dtype)
      out = cell(s0, s1, w, train, edge_w)
      for g in (gates, first_gates if first else None):
        if g is not None:
          g = g[seq[i]].astype(self.dtype)
          out = g * out + (1 - g) * s1 if out.shape == s1.shape else g * out
      s0, s1 = s1, out
      reduction_prev = reduction
    x = jnp.mean(s1, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.dtype,
                    kernel_init=torch_uniform(x.shape[-1]), bias_init=torch_uniform(x.shape[-1]),
                    name="classifier")(x)
