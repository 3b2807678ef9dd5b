"""Evaluation networks: a searched genotype built as a discrete network and trained from scratch.

- :class:`NetworkCIFAR` builds a DARTS-space genotype as quark0/darts ``cnn/model.py`` does (Liu et
  al., ICLR 2019): stem conv 3×3 → 3C + BN; L cells, reductions at ``L // 3`` and ``2L // 3`` where
  the channel count doubles; each cell preprocesses its two inputs (FactorizedReduce for the output
  of a reduction cell, ReLU-conv 1×1-BN otherwise) to C channels, computes every intermediate node
  as the sum of its genes' ops, and concatenates the genotype's concat nodes; global average
  pooling, linear classifier. An auxiliary head (``AuxiliaryHeadCIFAR``) reads the output of cell
  ``2L // 3`` in training. Ops carry affine batch norm (``affine=True``) and, unlike the search
  cells, pools have no batch norm after them.
- :class:`NB201Network` builds a NAS-Bench-201 architecture string as the benchmark's
  ``TinyNetwork`` (D-X-Y/AutoDL-Projects ``xautodl/models/cell_infers/tiny_network.py``, Dong &
  Yang, ICLR 2020): stem conv 3×3 → C + BN, three stages of N cells at C, 2C, 4C channels
  separated by ResNet basic blocks of stride 2, BN-ReLU, global average pooling, linear.

Both return ``(logits, aux_logits)`` from ``__call__(x, *, train, drop_prob=None)``;
``aux_logits`` is None unless the network has an auxiliary head and runs in train mode.
Drop-path (:func:`drop_path`) draws its masks from the ``"drop_path"`` RNG stream, so the caller
passes the key explicitly: ``model.apply(..., rngs={"drop_path": key})``.

Parameter counts (:func:`count_params`) come from shapes alone (``jax.eval_shape``) and
multiply-adds (:func:`count_macs`) from the traced program (``jax.make_jaxpr``): nothing compiles.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxnas.ddarts import CellGenotype
from jaxnas.derive import NB201_EDGES, NB201_OPS, Genotype
from jaxnas.errors import JaxnasError
from jaxnas.spaces.darts import reduction_indices
from jaxnas.spaces.layers import (BatchNorm, avg_pool_3x3, conv2d, depthwise_conv2d, max_pool_3x3,
                                  torch_uniform)
from jaxnas.spaces.nb201 import ReLUConvBN, ResNetBasicBlock

__all__ = ["DARTS_EVAL_OPS", "DARTOPTI_EVAL_OPS", "NetworkCIFAR", "CellNetworkCIFAR", "NB201Network", "AuxiliaryHeadCIFAR", "drop_path",
           "build", "count_params", "count_macs", "init_variables"]

Dtype = Any

# The ops a DARTS-space evaluation cell can hold (quark0/darts ``operations.py`` OPS, less the
# NASNet/AmoebaNet-only ``sep_conv_7x7`` and ``conv_7x1_1x7``).
DARTS_EVAL_OPS = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
                  "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")

# The five ops DARTOpti's space S_o adds (D-DARTS §4.4, aheuillet/D-DARTS ``operations.py``), built
# here with affine BN as the authors' evaluation network builds them (``OPS[name](C, stride, True)``).
DARTOPTI_EVAL_OPS = ("conv_3x1_1x3", "conv_7x1_1x7", "simple_conv_1x1", "simple_conv_3x3",
                     "bottleneck_1x3x1")


def drop_path(x, drop_prob, key):
  r"""Drop-path (Larsson et al., FractalNet, 2017) as quark0/darts ``utils.drop_path``.

  .. math:: y_b = x_b \cdot m_b / (1 - p), \qquad m_b \sim \mathrm{Bernoulli}(1 - p)

  one mask per example ``b`` (leading axis), so :math:`\mathbb E[y] = x`. ``drop_prob`` = p may be
  a traced scalar; p = 0 returns ``x`` exactly (a Bernoulli(1) draw is always 1).

  Args:
    x: activations, batch first.
    drop_prob: p in [0, 1).
    key: PRNG key of the masks.
  """
  keep = 1.0 - jnp.asarray(drop_prob, x.dtype)
  mask = jax.random.bernoulli(key, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
  return x * (mask.astype(x.dtype) / keep)


def _avg_pool_valid(x, k: int, stride: int):
  """k×k average pool without padding (``count_include_pad`` is moot there)."""
  total = lax.reduce_window(x, 0.0, lax.add, (1, k, k, 1), (1, stride, stride, 1), "VALID")
  return total / jnp.asarray(k * k, x.dtype)


class SepConv(nn.Module):
  """(ReLU → depthwise k×k → 1×1 → BN) twice, only the first depthwise conv strided (quark0/darts)."""

  channels: int
  kernel: int
  stride: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    k, c, pad = self.kernel, self.channels, self.kernel // 2
    for i, stride in enumerate((self.stride, 1)):
      dw = self.param(f"dw{i + 1}", torch_uniform(k * k), (k, k, c), self.dtype)
      pw = self.param(f"pw{i + 1}", torch_uniform(c), (c, c), self.dtype)
      x = depthwise_conv2d(jax.nn.relu(x), dw, stride=stride, padding=pad) @ pw
      x = BatchNorm(affine=True, dtype=self.dtype, name=f"bn{i + 1}")(x, train=train)
    return x


class DilConv(nn.Module):
  """ReLU → depthwise k×k, dilation 2, padding k − 1 → 1×1 → BN (quark0/darts)."""

  channels: int
  kernel: int
  stride: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    k, c = self.kernel, self.channels
    dw = self.param("dw", torch_uniform(k * k), (k, k, c), self.dtype)
    pw = self.param("pw", torch_uniform(c), (c, c), self.dtype)
    x = depthwise_conv2d(jax.nn.relu(x), dw, stride=self.stride, padding=k - 1, dilation=2) @ pw
    return BatchNorm(affine=True, dtype=self.dtype, name="bn")(x, train=train)


class FactorizedReduce(nn.Module):
  """ReLU; two 1×1 stride-2 convs to C/2 channels, the second on the input shifted by one pixel;
  concatenated; BN. Equal to the reference's on even spatial sizes (the only ones it accepts)."""

  channels: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    cin, half = x.shape[-1], self.channels // 2
    r = jax.nn.relu(x)
    k1 = self.param("conv1", torch_uniform(cin), (cin, half), self.dtype)
    k2 = self.param("conv2", torch_uniform(cin), (cin, half), self.dtype)
    y = jnp.concatenate([r[:, ::2, ::2] @ k1, r[:, 1::2, 1::2] @ k2], axis=-1)
    return BatchNorm(affine=True, dtype=self.dtype, name="bn")(y, train=train)


def _conv(x, kernel, stride, padding):
  """NHWC × HWIO convolution with per-axis ``stride`` and ``padding`` pairs."""
  return lax.conv_general_dilated(x, kernel, window_strides=stride,
                                  padding=tuple((p, p) for p in padding),
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


class RectConv(nn.Module):
  """``conv_3x1_1x3`` / ``conv_7x1_1x7`` of S_o: ReLU → conv 1×k (stride (1, s), pad (0, k//2)) →
  conv k×1 (stride (s, 1), pad (k//2, 0)) → BN (affine); 2kC² weights + 2C. The 1×k comes first,
  as in the authors' code (see :mod:`jaxnas.spaces.dartopti`)."""

  channels: int
  kernel: int
  stride: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    k, c, s, p = self.kernel, self.channels, self.stride, self.kernel // 2
    k1 = self.param("conv1", torch_uniform(k * c), (1, k, c, c), self.dtype)
    k2 = self.param("conv2", torch_uniform(k * c), (k, 1, c, c), self.dtype)
    x = _conv(_conv(jax.nn.relu(x), k1, (1, s), (0, p)), k2, (s, 1), (p, 0))
    return BatchNorm(affine=True, dtype=self.dtype, name="bn")(x, train=train)


class SimpleConv(nn.Module):
  """``simple_conv_k×k`` of S_o (``ReLUConvBN``): ReLU → conv k×k (stride s, pad k//2) → BN;
  k²C² + 2C weights."""

  channels: int
  kernel: int
  stride: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    k, c = self.kernel, self.channels
    kern = self.param("conv", torch_uniform(k * k * c), (k, k, c, c), self.dtype)
    x = conv2d(jax.nn.relu(x), kern, stride=self.stride, padding=k // 2)
    return BatchNorm(affine=True, dtype=self.dtype, name="bn")(x, train=train)


class Bottleneck(nn.Module):
  """``bottleneck_1x3x1`` of S_o (the authors' ``ResConv(C, 4C)``): ReLU → 1×1 → BN → 3×3 (stride
  s, pad 1) → BN → 1×1 to 4C → BN → ReLU → 1×1 back to C → BN; 18C² + 2(C + C + 4C + C) weights.
  No residual inside the op, as the code."""

  channels: int
  stride: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    c, dt = self.channels, self.dtype
    bn = lambda i, y: BatchNorm(affine=True, dtype=dt, name=f"bn{i}")(y, train=train)
    x = bn(1, jax.nn.relu(x) @ self.param("conv1", torch_uniform(c), (c, c), dt))
    x = bn(2, conv2d(x, self.param("conv2", torch_uniform(9 * c), (3, 3, c, c), dt),
                     stride=self.stride, padding=1))
    x = jax.nn.relu(bn(3, x @ self.param("conv3", torch_uniform(c), (c, 4 * c), dt)))
    return bn(4, x @ self.param("conv4", torch_uniform(4 * c), (4 * c, c), dt))


def _is_identity(op: str, stride: int) -> bool:
  return op == "skip_connect" and stride == 1


class EvalCell(nn.Module):
  """One cell of a DARTS-space genotype, as quark0/darts ``model.Cell``.

  With ``(op, input)`` pairs, node ``i`` (state ``i + 2``) is ``op_a(s_a) + op_b(s_b)`` of genes
  ``2i`` and ``2i + 1``; in training each non-identity op's output goes through :func:`drop_path`;
  the output concatenates the states in ``concat``. With FairDARTS' ``(op, node, input)`` triples
  the cell follows FairDARTS ``model.DCOCell``: a node sums the ops of all its genes whose input
  exists, drop-path acts on the node's sum (identity included), nodes without genes are left
  out, and the output concatenates every node that has genes (``concat`` is not read).
  """

  genes: tuple
  concat: tuple
  channels: int
  reduction: bool
  reduction_prev: bool
  dtype: Dtype = jnp.float32

  def _op(self, op: str, x, stride: int, name: str, train: bool):
    c, dt = self.channels, self.dtype
    if op == "none":
      return jnp.zeros_like(x[:, ::stride, ::stride])
    if op == "skip_connect":
      return x if stride == 1 else FactorizedReduce(c, dt, name=name)(x, train=train)
    if op == "max_pool_3x3":
      return max_pool_3x3(x, stride=stride)
    if op == "avg_pool_3x3":
      return avg_pool_3x3(x, stride=stride)
    if op in ("conv_3x1_1x3", "conv_7x1_1x7"):
      return RectConv(c, int(op[5]), stride, dt, name=name)(x, train=train)
    if op.startswith("simple_conv"):
      return SimpleConv(c, int(op[-1]), stride, dt, name=name)(x, train=train)
    if op == "bottleneck_1x3x1":
      return Bottleneck(c, stride, dt, name=name)(x, train=train)
    kind, k = op[:3], int(op[-1])
    module = SepConv if kind == "sep" else DilConv
    return module(c, k, stride, dt, name=name)(x, train=train)

  def _drop(self, x, drop_prob, train):
    if not train or drop_prob is None:
      return x
    return drop_path(x, drop_prob, self.make_rng("drop_path"))

  @nn.compact
  def __call__(self, s0, s1, drop_prob=None, *, train: bool):
    c, dt = self.channels, self.dtype
    if self.reduction_prev:
      s0 = FactorizedReduce(c, dt, name="pre0")(s0, train=train)
    else:
      s0 = ReLUConvBN(c, 1, dtype=dt, name="pre0")(s0, train=train)
    states = {0: s0, 1: ReLUConvBN(c, 1, dtype=dt, name="pre1")(s1, train=train)}
    if len(self.genes[0]) == 2:
      for k, (op, src) in enumerate(self.genes):
        stride = 2 if self.reduction and src < 2 else 1
        h = self._op(op, states[src], stride, f"op{k}_{op}", train)
        if not _is_identity(op, stride):
          h = self._drop(h, drop_prob, train)
        node = k // 2 + 2
        states[node] = h if k % 2 == 0 else states[node] + h
      return jnp.concatenate([states[i] for i in self.concat], axis=-1)
    outputs = []
    for node in sorted({to for _, to, _ in self.genes}):
      hs = [self._op(op, states[src], 2 if self.reduction and src < 2 else 1, f"op{k}_{op}", train)
            for k, (op, to, src) in enumerate(self.genes) if to == node and src in states]
      if hs:
        states[node] = self._drop(sum(hs[1:], hs[0]), drop_prob, train)
        outputs.append(states[node])
    return jnp.concatenate(outputs, axis=-1)


def _cell_widths(genes, concat) -> int:
  """How many C-channel states a cell concatenates (its ``multiplier``)."""
  if len(genes[0]) == 2:
    return len(concat)
  present = {0, 1}
  for node in sorted({to for _, to, _ in genes}):
    if any(to == node and src in present for _, to, src in genes):
      present.add(node)
  return len(present) - 2


class AuxiliaryHeadCIFAR(nn.Module):
  """quark0/darts ``AuxiliaryHeadCIFAR``: ReLU → avg pool 5 stride 3 → conv 1×1 128 → BN → ReLU →
  conv 2×2 768 → BN → ReLU → linear.

  Written for an 8×8 input (the output of cell 2L/3 for 32×32 images), where the pool gives 2×2
  and the 2×2 conv 1×1. Larger inputs are flattened into a wider linear layer; inputs smaller than
  8×8 raise (the reference would fail too).
  """

  num_classes: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    h, w, cin = x.shape[1:]
    if h < 8 or w < 8:
      raise JaxnasError(f"the auxiliary head needs a feature map of at least 8×8 at cell 2L//3 but "
                        f"gets {h}×{w} (it is built for 32×32 images); use larger images or "
                        "--auxiliary-weight 0")
    x = _avg_pool_valid(jax.nn.relu(x), 5, 3)
    k1 = self.param("conv1", torch_uniform(cin), (cin, 128), self.dtype)
    x = jax.nn.relu(BatchNorm(affine=True, dtype=self.dtype, name="bn1")(x @ k1, train=train))
    k2 = self.param("conv2", torch_uniform(4 * 128), (2, 2, 128, 768), self.dtype)
    x = jax.nn.relu(BatchNorm(affine=True, dtype=self.dtype, name="bn2")(conv2d(x, k2),
                                                                           train=train))
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.dtype,
                    kernel_init=torch_uniform(x.shape[-1]), bias_init=torch_uniform(x.shape[-1]),
                    name="classifier")(x)


def _check_darts_genotype(genotype: Genotype, num_cells: int) -> None:
  if genotype.space != "darts":
    raise JaxnasError(f"NetworkCIFAR builds darts genotypes, got a {genotype.space!r} one; use "
                      "NB201Network (jaxnas.evalnet.build picks the right one)")
  for field in ("normal", "reduce"):
    for gene in getattr(genotype, field):
      if gene[0] not in DARTS_EVAL_OPS:
        raise JaxnasError(f"genotype {field} uses op {gene[0]!r}, which the DARTS evaluation "
                          f"network does not have; its ops are: {', '.join(DARTS_EVAL_OPS)}")
  if not genotype.reduce and reduction_indices(num_cells):
    raise JaxnasError("the genotype has no reduction cell; a darts network needs one (give "
                      "'reduce' and 'reduce_concat')")
  for field in ("normal", "reduce"):
    genes = getattr(genotype, field)
    if genes and len(genes[0]) == 3 and _cell_widths(genes, ()) == 0:
      raise JaxnasError(f"genotype {field} has no node reachable from the cell's inputs; "
                        "every node's inputs are missing")


class NetworkCIFAR(nn.Module):
  """A DARTS-space genotype as an evaluation network (quark0/darts ``model.NetworkCIFAR``).

  Attributes:
    genotype: a darts :class:`~jaxnas.derive.Genotype` (pairs or FairDARTS triples).
    channels: C, the first cells' width (reference 36).
    num_cells: L (reference 20); reductions at ``L // 3`` and ``2L // 3``.
    num_classes: classifier outputs.
    auxiliary: build the auxiliary head on cell ``2L // 3`` (run in train mode only).
    dtype: parameter and computation dtype.

  ``__call__(x, *, train, drop_prob=None)``: ``x`` is (B, H, W, channels_in) with H and W divisible
  by 4 (each reduction halves them exactly); ``drop_prob`` is the drop-path probability (a scalar,
  traced or not; None turns drop-path off), applied in train mode with the ``"drop_path"`` RNG.
  Returns ``(logits, aux_logits)``.
  """

  genotype: Genotype
  channels: int = 36
  num_cells: int = 20
  num_classes: int = 10
  auxiliary: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool, drop_prob=None):
    g = self.genotype
    _check_darts_genotype(g, self.num_cells)
    reductions = reduction_indices(self.num_cells)
    cells = [(g.reduce, g.reduce_concat) if i in reductions else (g.normal, g.normal_concat)
             for i in range(self.num_cells)]
    return _cifar_body(self, x, cells, reductions, 2 * self.num_cells // 3, "the darts network",
                       train=train, drop_prob=drop_prob)


def _cifar_body(net, x, cells, reductions, aux_at, what: str, *, train: bool, drop_prob):
  """The body both CIFAR evaluation networks share (called inside ``net``'s compact ``__call__``).

  Stem conv 3×3 → 3C + affine BN; cell ``i`` built from ``cells[i] = (genes, concat)``, doubling
  the channels at ``reductions``; the auxiliary head after cell ``aux_at`` (training only); global
  average pooling; linear classifier. ``what`` names the network in the image-size error.
  """
  factor = 2 ** len(reductions)
  if x.shape[1] % factor or x.shape[2] % factor:
    raise JaxnasError(f"images of {x.shape[1]}×{x.shape[2]} cannot be halved {len(reductions)} "
                      f"times exactly; {what} needs sides divisible by {factor}")
  x = x.astype(net.dtype)
  c = net.channels
  stem_k = net.param("stem_kernel", torch_uniform(9 * x.shape[-1]),
                     (3, 3, x.shape[-1], 3 * c), net.dtype)
  s0 = s1 = BatchNorm(affine=True, dtype=net.dtype, name="stem_bn")(
      conv2d(x, stem_k, padding=1), train=train)
  aux_logits, c_curr, reduction_prev = None, c, False
  for i, (genes, concat) in enumerate(cells):
    reduction = i in reductions
    c_curr = 2 * c_curr if reduction else c_curr
    cell = EvalCell(genes, concat, c_curr, reduction, reduction_prev, net.dtype, name=f"cell_{i}")
    s0, s1 = s1, cell(s0, s1, drop_prob, train=train)
    reduction_prev = reduction
    if i == aux_at and net.auxiliary and (train or net.is_initializing()):
      aux_logits = AuxiliaryHeadCIFAR(net.num_classes, net.dtype, name="auxiliary_head")(
          s1, train=train)
  x = jnp.mean(s1, axis=(1, 2))
  logits = nn.Dense(net.num_classes, dtype=net.dtype, param_dtype=net.dtype,
                    kernel_init=torch_uniform(x.shape[-1]), bias_init=torch_uniform(x.shape[-1]),
                    name="classifier")(x)
  return logits, (aux_logits if train else None)


CELL_EVAL_OPS = tuple(op for op in DARTS_EVAL_OPS if op != "none") + DARTOPTI_EVAL_OPS


def _check_cell_genotype(genotype) -> None:
  if not isinstance(genotype, CellGenotype):
    raise JaxnasError("CellNetworkCIFAR builds per-cell genotypes (jaxnas.ddarts.CellGenotype); "
                      "use NetworkCIFAR for one normal and one reduction cell")
  for i, genes in enumerate(genotype.cells):
    for gene in genes:
      if gene[0] not in CELL_EVAL_OPS:
        raise JaxnasError(f"per-cell genotype cells[{i}] uses op {gene[0]!r}, which the per-cell "
                          f"evaluation network does not have; its ops are: "
                          f"{', '.join(CELL_EVAL_OPS)}")
    if _cell_widths(genes, ()) == 0:
      raise JaxnasError(f"per-cell genotype cells[{i}] has no node reachable from the cell's "
                        "inputs; every node's inputs are missing")


class CellNetworkCIFAR(nn.Module):
  """A per-cell genotype as an evaluation network (D-DARTS ``model.NetworkCIFAR`` with a
  ``Genotype_nested``; Heuillet et al., 2023).

  As :class:`NetworkCIFAR` (stem 3×3 → 3C + BN, cells, global average pooling, linear), except:
  the network has ``L = len(genotype.cells)`` cells and cell ``i`` is built from
  ``genotype.cells[i]`` (FairDARTS triples, :class:`EvalCell`'s ``DCOCell`` form: drop-path on
  each node's sum, every node with genes concatenated); the channel count doubles at the
  genotype's ``reductions`` (``L // 3`` and ``2L // 3`` for D-DARTS, e.g. 1, 2, 3 for DARTOpti's
  ResNet-18) rather than at fixed positions; ops may also be DARTOpti's five (S_o, affine BN).
  The auxiliary head reads the output of the last reduction cell, as the authors' code
  (``i == reduction_indexes[-1]``); for D-DARTS' reductions that is cell ``2L // 3``, the cell
  quark0/darts uses. The authors' ``parse_method='threshold'`` cycles searched genes when the
  network is deeper than the genotype; jaxnas does that beforehand (``jaxnas derive --cells N``,
  :func:`jaxnas.ddarts.deepen`), so here the genotype has one entry per cell.

  Attributes:
    genotype: a :class:`jaxnas.ddarts.CellGenotype`.
    channels: C, the first cells' width.
    num_classes: classifier outputs.
    auxiliary: build the auxiliary head (train mode only); needs a reduction cell.
    dtype: parameter and computation dtype.

  ``__call__(x, *, train, drop_prob=None)`` as :class:`NetworkCIFAR`; H and W must be divisible by
  ``2 ** len(reductions)``. Returns ``(logits, aux_logits)``.
  """

  genotype: CellGenotype
  channels: int = 36
  num_classes: int = 10
  auxiliary: bool = False
  dtype: Dtype = jnp.float32

  @property
  def num_cells(self) -> int:
    return len(self.genotype.cells)

  @nn.compact
  def __call__(self, x, *, train: bool, drop_prob=None):
    g = self.genotype
    _check_cell_genotype(g)
    reductions = tuple(g.reductions)
    if self.auxiliary and not reductions:
      raise JaxnasError("the auxiliary head reads the last reduction cell, and this per-cell "
                        "genotype has none; use --auxiliary-weight 0")
    return _cifar_body(self, x, [(genes, g.concat) for genes in g.cells], reductions,
                       reductions[-1] if reductions else None, "this per-cell network",
                       train=train, drop_prob=drop_prob)


class NB201EvalCell(nn.Module):
  """A NAS-Bench-201 cell (AutoDL ``InferCell``): node i = Σ over its genes (op, j) of op(node j).

  Ops (affine, bias-free): ``nor_conv_k×k`` = ReLU → conv k×k → BN; ``avg_pool_3x3`` (no BN, no
  padded cells counted); ``skip_connect`` = identity; ``none`` = 0. Output = node 3.
  """

  genes: tuple
  channels: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    nodes = [x]
    for to in (1, 2, 3):
      total = None
      for e, ((op, src), (dst, _)) in enumerate(zip(self.genes, NB201_EDGES)):
        if dst != to:
          continue
        h = nodes[src]
        if op == "none":
          h = jnp.zeros_like(h)
        elif op == "avg_pool_3x3":
          h = avg_pool_3x3(h)
        elif op in ("nor_conv_1x1", "nor_conv_3x3"):
          k = int(op[-1])
          h = ReLUConvBN(self.channels, k, 1, k // 2, self.dtype, name=f"edge{e}_{op}")(
              h, train=train)
        total = h if total is None else total + h
      nodes.append(total)
    return nodes[3]


class NB201Network(nn.Module):
  """A NAS-Bench-201 architecture as the benchmark trains it (AutoDL ``TinyNetwork``).

  Attributes:
    genotype: an nb201 :class:`~jaxnas.derive.Genotype`.
    channels: C (benchmark 16).
    cells_per_stage: N (benchmark 5).
    num_classes: classifier outputs.
    dtype: parameter and computation dtype.

  ``__call__(x, *, train, drop_prob=None)`` returns ``(logits, None)``; the benchmark's network
  has neither drop-path nor an auxiliary head, so ``drop_prob`` is not read.
  """

  genotype: Genotype
  channels: int = 16
  cells_per_stage: int = 5
  num_classes: int = 10
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool, drop_prob=None):
    del drop_prob
    g = self.genotype
    if g.space != "nb201":
      raise JaxnasError(f"NB201Network builds nb201 genotypes, got a {g.space!r} one; use "
                        "NetworkCIFAR (jaxnas.evalnet.build picks the right one)")
    bad = sorted({op for op, _ in g.normal} - set(NB201_OPS))
    if bad:
      raise JaxnasError(f"genotype uses ops {bad}, which NAS-Bench-201 does not have; its ops are: "
                        f"{', '.join(NB201_OPS)}")
    x = x.astype(self.dtype)
    c = self.channels
    stem_k = self.param("stem_kernel", torch_uniform(9 * x.shape[-1]), (3, 3, x.shape[-1], c),
                        self.dtype)
    x = BatchNorm(affine=True, dtype=self.dtype, name="stem_bn")(conv2d(x, stem_k, padding=1),
                                                                   train=train)
    for stage, width in enumerate((c, 2 * c, 4 * c)):
      if stage > 0:
        x = ResNetBasicBlock(width, self.dtype, name=f"reduce_{stage}")(x, train=train)
      for i in range(self.cells_per_stage):
        x = NB201EvalCell(g.normal, width, self.dtype, name=f"stage{stage}_cell{i}")(x, train=train)
    x = jax.nn.relu(BatchNorm(affine=True, dtype=self.dtype, name="lastact_bn")(x, train=train))
    x = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.dtype,
                      kernel_init=torch_uniform(x.shape[-1]), bias_init=torch_uniform(x.shape[-1]),
                      name="classifier")(x)
    return logits, None


def build(genotype: Genotype, *, channels: int, cells: int, num_classes: int,
          auxiliary: bool = False, dtype: Dtype = jnp.float32) -> nn.Module:
  """The evaluation network of ``genotype``'s space.

  ``cells`` is L (all cells) for darts genotypes and N (cells per stage) for nb201 ones; a
  per-cell genotype (:class:`jaxnas.ddarts.CellGenotype`) fixes L itself, so ``cells`` must be
  its cell count (or None).

  Raises:
    JaxnasError: for an nb201 genotype with ``auxiliary`` (the benchmark's network has no head), or
      a per-cell genotype whose cell count is not ``cells``.
  """
  if isinstance(genotype, CellGenotype):
    if cells is not None and cells != len(genotype.cells):
      raise JaxnasError(f"the per-cell genotype has {len(genotype.cells)} cells, not --cells "
                        f"{cells}; leave --cells out, or write a {cells}-cell genotype with "
                        f"'jaxnas derive RUN_DIR --cells {cells}'")
    return CellNetworkCIFAR(genotype, channels, num_classes, auxiliary, dtype)
  if genotype.space == "nb201":
    if auxiliary:
      raise JaxnasError("the NAS-Bench-201 network has no auxiliary head; use --auxiliary-weight 0")
    return NB201Network(genotype, channels, cells, num_classes, dtype)
  return NetworkCIFAR(genotype, channels, cells, num_classes, auxiliary, dtype)


def _abstract_variables(model, image_shape):
  x = jax.ShapeDtypeStruct((1,) + tuple(image_shape), model.dtype)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


def count_params(model, image_shape) -> tuple[int, int]:
  """``(without, with)`` the auxiliary head: trainable weights, from shapes alone (no compile).

  As quark0/darts ``utils.count_parameters_in_MB``, which leaves out parameters named
  ``auxiliary``. Batch-norm running statistics are not parameters.
  """
  params = _abstract_variables(model, image_shape)["params"]
  size = lambda tree: int(sum(math.prod(p.shape) for p in jax.tree.leaves(tree)))
  total = size(params)
  return total - size(params.get("auxiliary_head", {})), total


def _jaxpr_macs(jaxpr) -> int:
  """Multiply-adds of the convolutions and matrix products in ``jaxpr`` (sub-jaxprs included)."""
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      rhs = eqn.invars[1].aval.shape
      out_feature = eqn.params["dimension_numbers"].rhs_spec[0]
      total += math.prod(eqn.outvars[0].aval.shape) * math.prod(rhs) // rhs[out_feature]
    elif name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)
    for value in eqn.params.values():
      subs = value if isinstance(value, (tuple, list)) else (value,)
      inner = [getattr(s, "jaxpr", s) for s in subs]
      inner = [j for j in inner if hasattr(j, "eqns")]
      if inner:
        times = eqn.params.get("length", 1) if name == "scan" else 1
        total += times * max(_jaxpr_macs(j) for j in inner)
  return total


def count_macs(model, image_shape, variables=None) -> int:
  r"""Multiply-adds of one inference forward pass of one image of ``image_shape`` (H, W, C).

  Counted from the traced program (nothing compiles): a convolution producing ``n`` outputs from a
  kernel of ``k_h × k_w × C_in/groups`` inputs per output costs ``n · k_h k_w C_in/groups``; a matrix
  product ``n · K``. Batch norm, activations, pools and additions are not counted, as in the
  DARTS papers' "multiply-add" figures (e.g. DARTS V2, C = 36, L = 20, 32×32: 528,359,040 here).
  """
  if variables is None:
    variables = _abstract_variables(model, image_shape)
  x = jax.ShapeDtypeStruct((1,) + tuple(image_shape), model.dtype)
  closed = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, x)
  return _jaxpr_macs(closed.jaxpr)


def init_variables(model, key, image_shape):
  """Initial ``params`` and ``batch_stats`` of an evaluation network.

  As :func:`jaxnas.search.init_variables` explains for the supernets: initialised on one image on
  the host CPU, compiled at XLA's lowest optimisation level with an ``unsafe_rbg`` key derived from
  ``key`` (Flax's threefry splitting for every parameter otherwise costs more to compile than the
  train step), then placed on the default device. Deterministic in ``key``, equal on CPU and GPU.
  """
  cpu = jax.devices("cpu")[0]
  seed = int(jax.random.randint(key, (), 0, jnp.iinfo(jnp.int32).max))
  with jax.default_device(cpu):
    x = jnp.zeros((1,) + tuple(image_shape), model.dtype)
    init_key = jax.random.key(seed, impl="unsafe_rbg")
    init = jax.jit(lambda k, x: model.init(k, x, train=False))
    compiled = init.lower(init_key, x).compile({"xla_backend_optimization_level": 0})
    variables = compiled(init_key, x)
  variables = jax.device_put(variables, jax.devices()[0])
  return variables["params"], variables.get("batch_stats", {})
