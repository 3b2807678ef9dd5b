"""The NAS-Bench-201 cell search space (Dong & Yang, ICLR 2020), as a supernet.

Cell: nodes 0..3, an edge ``i <- j`` for every ``j < i`` (6 edges, sorted keys ``1<-0, 2<-0, 2<-1,
3<-0, 3<-1, 3<-2``), 5 candidate ops ``none, skip_connect, nor_conv_1x1, nor_conv_3x3,
avg_pool_3x3``; the cell's output is node 3 alone. Macro: stem conv 3×3 + BN, three stages of ``N``
cells at C, 2C, 4C channels separated by fixed ResNet basic blocks (stride 2), then BN-ReLU, global
average pooling and a linear classifier (D-X-Y/AutoDL-Projects, ``TinyNetworkDarts``).

As in the reference search cells, ops are affine-free (``affine=False``), so the ``nor_conv`` convs
carry a bias (``bias = not affine``) and each edge holds ``10·C² + 2·C`` weights; the average pool
has no batch norm; the stem and ResNet blocks are affine and bias-free.

How the program is kept small (``../shared/XLA_CPU.md``): the edges that leave one node share their
input, so they are computed together as one group on a tensor of ``E·C`` channels (one conv with
``E·C`` output channels for all ``nor_conv_3x3`` of the group, one for the ``1×1``). The parameter-free
ops (skip, pool) give the same output on every edge of a group and are computed once. The ``N``
identical cells of a stage are one ``nn.scan``, so each distinct cell is traced once.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxnas.derive import NB201_EDGES, NB201_OPS
from jaxnas.errors import JaxnasError
from jaxnas.spaces.layers import BatchNorm, add_skip_noise, avg_pool_3x3, conv2d, torch_uniform

__all__ = ["NB201_OPS", "NB201_EDGES", "NB201SearchNetwork", "ResNetBasicBlock"]

# NB201_OPS and NB201_EDGES ((to, from), sorted key order) are defined once, in jaxnas.derive.
# Edges leaving each source node, as indices into NB201_EDGES (the group computed together).
_EDGES_FROM = {src: tuple(e for e, (_, s) in enumerate(NB201_EDGES) if s == src) for src in range(3)}

Dtype = Any


class NB201EdgeGroup(nn.Module):
  """The mixed ops of the ``E`` edges leaving one node, on their shared input.

  For edge e: ō_e(x) = Σ_k w[e, k] · o_k(x). Returns shape ``x.shape[:-1] + (E, C)``.
  """

  num_edges: int
  channels: int
  dtype: Dtype = jnp.float32
  skip_noise: float = 0.0

  @nn.compact
  def __call__(self, x, weights, train: bool):
    e, c = self.num_edges, self.channels
    b, h, w_, cin = x.shape
    r = jax.nn.relu(x)
    # nor_conv_1x1 of all E edges: ReLU -> conv 1x1 (bias) -> affine-free BN, as one matmul.
    k1 = self.param("conv1x1_kernel", torch_uniform(cin), (e, cin, c), self.dtype)
    b1 = self.param("conv1x1_bias", torch_uniform(cin), (e, c), self.dtype)
    y1 = jnp.einsum("bhwi,eio->bhweo", r, k1) + b1
    y1 = BatchNorm(dtype=self.dtype, name="conv1x1_bn")(y1.reshape(b, h, w_, e * c), train=train)
    # nor_conv_3x3 of all E edges: one conv with E*C output channels.
    k3 = self.param("conv3x3_kernel", torch_uniform(9 * cin), (e, 3, 3, cin, c), self.dtype)
    b3 = self.param("conv3x3_bias", torch_uniform(9 * cin), (e, c), self.dtype)
    k3_hwio = jnp.transpose(k3, (1, 2, 3, 0, 4)).reshape(3, 3, cin, e * c)
    y3 = conv2d(r, k3_hwio, padding=1) + b3.reshape(e * c)
    y3 = BatchNorm(dtype=self.dtype, name="conv3x3_bn")(y3, train=train)
    y1 = y1.reshape(b, h, w_, e, c)
    y3 = y3.reshape(b, h, w_, e, c)
    pooled = avg_pool_3x3(x)
    wt = weights.astype(self.dtype)  # (E, 5); 'none' contributes exactly zero and is skipped
    skip = x[..., None, :]
    if self.skip_noise and train:  # every edge draws its own noise
      skip = add_skip_noise(self, jnp.broadcast_to(skip, y1.shape), self.skip_noise, train)
    out = (wt[:, 1, None] * skip
           + wt[:, 2, None] * y1
           + wt[:, 3, None] * y3
           + wt[:, 4, None] * pooled[..., None, :])
    return out


class NB201Cell(nn.Module):
  """One NAS-Bench-201 search cell; ``(carry, weights) -> (carry, None)`` so it can be scanned."""

  channels: int
  train: bool
  dtype: Dtype = jnp.float32
  skip_noise: float = 0.0
  remat_ops: bool = False

  @nn.compact
  def __call__(self, x, weights):
    nodes = [x]
    inbox = {1: [], 2: [], 3: []}
    # `train` positional so nn.remat holds it static; no CSE guard needed inside the stage's scan.
    group_cls = (nn.remat(NB201EdgeGroup, static_argnums=(3,), prevent_cse=False)
                 if self.remat_ops else NB201EdgeGroup)
    for src in range(3):
      edges = _EDGES_FROM[src]
      out = group_cls(len(edges), self.channels, self.dtype, self.skip_noise,
                      name=f"from_{src}")(nodes[src], weights[jnp.array(edges)], self.train)
      for slot, e in enumerate(edges):
        inbox[NB201_EDGES[e][0]].append(out[..., slot, :])
      nodes.append(sum(inbox[src + 1]))
    return nodes[3], None


class ReLUConvBN(nn.Module):
  """ReLU → conv k×k (no bias) → affine BN, the reference's block for the affine parts."""

  features: int
  kernel: int
  stride: int = 1
  padding: int = 0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    cin = x.shape[-1]
    kernel = self.param("kernel", torch_uniform(self.kernel ** 2 * cin),
                        (self.kernel, self.kernel, cin, self.features), self.dtype)
    y = conv2d(jax.nn.relu(x), kernel, stride=self.stride, padding=self.padding)
    return BatchNorm(affine=True, dtype=self.dtype, name="bn")(y, train=train)


class ResNetBasicBlock(nn.Module):
  """NAS-Bench-201's fixed reduction block: a ResNet basic block with stride 2.

  ``out = conv_b(conv_a(x)) + downsample(x)``; conv_a = ReLU-conv3×3(stride 2)-BN, conv_b =
  ReLU-conv3×3-BN (both affine, bias-free), downsample = AvgPool(2, 2) → conv 1×1 (no bias, no BN).
  """

  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    cin = x.shape[-1]
    y = ReLUConvBN(self.features, 3, 2, 1, self.dtype, name="conv_a")(x, train=train)
    y = ReLUConvBN(self.features, 3, 1, 1, self.dtype, name="conv_b")(y, train=train)
    b, h, w, _ = x.shape
    pooled = x[:, : h // 2 * 2, : w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, cin).mean((2, 4))
    kernel = self.param("downsample_kernel", torch_uniform(cin), (cin, self.features), self.dtype)
    return y + pooled @ kernel


class NB201SearchNetwork(nn.Module):
  """The NAS-Bench-201 supernet (``TinyNetworkDarts``) with mixing weights as an argument.

  Attributes:
    channels: C, the first stage's width (reference 16).
    cells_per_stage: N, identical cells per stage (reference 5).
    num_classes: classifier outputs.
    dtype: parameter and computation dtype.
    skip_noise: NoisyDARTS' λ (see ``layers.add_skip_noise``); 0 turns it off.
    remat: ``"none"``, ``"cell"`` (``flax.linen.remat``, i.e. ``jax.checkpoint``, on every cell:
      only its input is kept for the backward pass, its inside is recomputed) or ``"op"`` (on every
      group of mixed ops). The same function, less memory, more compute.

  ``__call__(x, weights, *, train)`` takes ``x`` of shape (B, H, W, in_channels) and ``weights =
  {"cell": (6, 5)}``, the output of a relaxation, shared by every cell.
  """

  channels: int = 16
  cells_per_stage: int = 5
  num_classes: int = 10
  dtype: Dtype = jnp.float32
  skip_noise: float = 0.0
  remat: str = "none"

  op_names: Sequence[str] = NB201_OPS
  space_name = "nb201"
  default_rule = "nb201-argmax"

  def alpha_shapes(self):
    return {"cell": (len(NB201_EDGES), len(NB201_OPS))}

  def init_alphas(self, key):
    """α = 1e-3 · N(0, 1), as the reference."""
    return {"cell": 1e-3 * jax.random.normal(key, self.alpha_shapes()["cell"], self.dtype)}

  @nn.compact
  def __call__(self, x, weights, *, train: bool):
    from jaxnas.spaces import check_weights
    check_weights(weights, self.alpha_shapes(), "nb201")
    if self.remat not in ("none", "cell", "op"):
      raise JaxnasError(f"remat is {self.remat!r}; choose one of none, cell, op")
    # Inside the stage's scan, remat needs no CSE guard (flax.linen.remat's docstring).
    cell_cls = nn.remat(NB201Cell, prevent_cse=False) if self.remat == "cell" else NB201Cell
    x = x.astype(self.dtype)
    w = weights["cell"].astype(self.dtype)
    c = self.channels
    stem_k = self.param("stem_kernel", torch_uniform(9 * x.shape[-1]), (3, 3, x.shape[-1], c),
                        self.dtype)
    x = BatchNorm(affine=True, dtype=self.dtype, name="stem_bn")(conv2d(x, stem_k, padding=1),
                                                                   train=train)
    for stage, width in enumerate((c, 2 * c, 4 * c)):
      if stage > 0:
        x = ResNetBasicBlock(width, self.dtype, name=f"reduce_{stage}")(x, train=train)
      stage_cells = nn.scan(
          cell_cls,
          variable_axes={"params": 0, "batch_stats": 0},
          split_rngs={"params": True, "noise": True},
          in_axes=nn.broadcast,
          length=self.cells_per_stage)
      x, _ = stage_cells(width, train, self.dtype, self.skip_noise, self.remat == "op",
                         name=f"stage_{stage}")(x, w)
    x = jax.nn.relu(BatchNorm(affine=True, dtype=self.dtype, name="lastact_bn")(x, train=train))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.dtype,
                    kernel_init=torch_uniform(x.shape[-1]), bias_init=torch_uniform(x.shape[-1]),
                    name="classifier")(x)
