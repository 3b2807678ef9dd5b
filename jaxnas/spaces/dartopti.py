"""DARTOpti's 12-operation edge group (search space S_o of D-DARTS §4.4) for the DARTS supernet.

Heuillet, Tabia, Arioui, Youcef-Toumi. D-DARTS: Distributed Differentiable Architecture Search.
Pattern Recognition Letters 2023 (arXiv:2108.09306), §4.4; the operations are those of the
authors' ``operations.py:OPS`` (aheuillet/D-DARTS), in the order of their ``PRIMITIVES``
(:data:`jaxnas.spaces.dartopti_ops.DARTOPTI_OPS`). The seven DARTS operations other than ``none``
are the DARTS space's (:class:`jaxnas.spaces.darts.DartsEdgeGroup`); the five S_o adds, on an
edge of ``C`` channels and stride ``s``, all affine-free at search time (``affine=False``):

- ``conv_3x1_1x3`` (``RectConv``): ReLU → conv 1×3 (stride (1, s), pad (0, 1)) → conv 3×1 (stride
  (s, 1), pad (1, 0)) → BN; ``6C²`` weights. Despite the name the 1×3 comes first, as the code.
- ``conv_7x1_1x7``: ReLU → conv 1×7 (stride (1, s), pad (0, 3)) → conv 7×1 (stride (s, 1), pad
  (3, 0)) → BN; ``14C²`` weights.
- ``simple_conv_1x1`` / ``simple_conv_3x3`` (``ReLUConvBN``): ReLU → conv k×k (stride s, pad
  k//2) → BN; ``C²`` / ``9C²`` weights.
- ``bottleneck_1x3x1`` (``ResConv(C, 4C)``): ReLU → 1×1 → BN → 3×3 (stride s, pad 1) → BN → 1×1 to
  4C → BN → ReLU → 1×1 back to C → BN; ``C² + 9C² + 4C² + 4C² = 18C²`` weights. No ReLU between
  the first BN and the 3×3 conv, and no residual inside the op, as the authors' ``ResConv``.

Grouped as the DARTS space (``../shared/XLA_CPU.md``): the ``E`` edges leaving one state share
their input, so each new operation's first conv is one conv with ``E·C`` output channels, and its
later convs are one grouped conv (``feature_group_count = E``) on the ``E·C``-channel tensor, with
one batch norm over ``E·C`` channels. Edge ``e``'s kernels are the slice ``[e]`` of parameters of
shape ``(E, kh, kw, C_in, C_out)``; the function is that of ``E`` separate edges.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxnas.spaces.dartopti_ops import DARTOPTI_OPS
from jaxnas.spaces.darts import DartsEdgeGroup
from jaxnas.spaces.layers import (BatchNorm, add_skip_noise, avg_pool_3x3, max_pool_3x3,
                                  torch_uniform)

__all__ = ["DartoptiEdgeGroup", "grouped_conv", "new_op_param_count"]

_COL = {name: i for i, name in enumerate(DARTOPTI_OPS)}


def grouped_conv(x, kernel, *, stride=(1, 1), padding=((0, 0), (0, 0))):
  """Per-edge 2-D convolution of ``x`` (B, H, W, E, Cin) with ``kernel`` (E, kh, kw, Cin, Cout).

  ``y[..., e, :] = conv(x[..., e, :], kernel[e])``: one ``lax.conv_general_dilated`` with
  ``feature_group_count = E`` on the ``E·Cin``-channel tensor (groups are edge-major). Returns
  (B, H', W', E, Cout).
  """
  b, h, w, e, cin = x.shape
  _, kh, kw, _, cout = kernel.shape
  k = jnp.transpose(kernel, (1, 2, 3, 0, 4)).reshape(kh, kw, cin, e * cout)
  y = lax.conv_general_dilated(x.reshape(b, h, w, e * cin), k, window_strides=stride,
                               padding=padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                               feature_group_count=e)
  return y.reshape(y.shape[:3] + (e, cout))


def _shared_conv(x, kernel, *, stride=(1, 1), padding=((0, 0), (0, 0))):
  """Every edge's conv of the one shared input ``x`` (B, H, W, Cin); kernel (E, kh, kw, Cin, Cout).

  One conv with ``E·Cout`` output channels; equal to :func:`grouped_conv` on ``x`` broadcast to
  every edge, without the ``E``-fold copy. Returns (B, H', W', E, Cout).
  """
  e, kh, kw, cin, cout = kernel.shape
  k = jnp.transpose(kernel, (1, 2, 3, 0, 4)).reshape(kh, kw, cin, e * cout)
  y = lax.conv_general_dilated(x, k, window_strides=stride, padding=padding,
                               dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return y.reshape(y.shape[:3] + (e, cout))


def new_op_param_count(op: str, c: int) -> int:
  """Weights of one of S_o's five new operations on ``C`` channels (no BN parameters at search).

  ``conv_3x1_1x3``: 2·3·C²; ``conv_7x1_1x7``: 2·7·C²; ``simple_conv_k×k``: k²·C²;
  ``bottleneck_1x3x1``: C² + 9C² + 4C² + 4C² = 18C².
  """
  per = {"conv_3x1_1x3": 6, "conv_7x1_1x7": 14, "simple_conv_1x1": 1, "simple_conv_3x3": 9,
         "bottleneck_1x3x1": 18}
  return per[op] * c * c


class DartoptiEdgeGroup(DartsEdgeGroup):
  """The mixed ops of the ``E`` edges leaving one state over S_o's 12 operations.

  ō_e(x) = Σ_k w[e, k] · o_k(x), k over :data:`DARTOPTI_OPS` (no ``none``); ``weights`` is
  ``(E, 12)``. Returns ``(B, H', W', E, C)``. Unlike the DARTS group, the pools, skip and sep/dil
  convs are looked up by name, since S_o orders them differently.
  """

  def _kernel(self, name, kh, kw, cin, cout):
    return self.param(name, torch_uniform(kh * kw * cin), (self.num_edges, kh, kw, cin, cout),
                      self.dtype)

  def _rect(self, r, k, train):
    """``RectConv`` / ``conv_7x1_1x7``: 1×k (stride (1, s)) then k×1 (stride (s, 1)), BN."""
    c, s, p = self.channels, self.stride, k // 2
    y = _shared_conv(r, self._kernel(f"rect{k}_1xk", 1, k, r.shape[-1], c), stride=(1, s),
                     padding=((0, 0), (p, p)))
    y = grouped_conv(y, self._kernel(f"rect{k}_kx1", k, 1, c, c), stride=(s, 1),
                     padding=((p, p), (0, 0)))
    return self._bn(y, f"rect{k}_bn", train)

  def _simple(self, r, k, train):
    """``ReLUConvBN``: k×k conv (stride s, pad k//2), BN."""
    s, p = self.stride, k // 2
    y = _shared_conv(r, self._kernel(f"simple{k}", k, k, r.shape[-1], self.channels),
                     stride=(s, s), padding=((p, p), (p, p)))
    return self._bn(y, f"simple{k}_bn", train)

  def _bottleneck(self, r, train):
    """``ResConv(C, 4C, s, 3)``: 1×1, BN, 3×3 (stride s), BN, 1×1 to 4C, BN, ReLU, 1×1 to C, BN."""
    c, s = self.channels, self.stride
    y = self._bn(_shared_conv(r, self._kernel("bneck_in", 1, 1, r.shape[-1], c)), "bneck_bn1",
                 train)
    y = grouped_conv(y, self._kernel("bneck_3x3", 3, 3, c, c), stride=(s, s),
                     padding=((1, 1), (1, 1)))
    y = self._bn(y, "bneck_bn2", train)
    y = self._bn(grouped_conv(y, self._kernel("bneck_expand", 1, 1, c, 4 * c)), "bneck_bn3", train)
    y = grouped_conv(jax.nn.relu(y), self._kernel("bneck_project", 1, 1, 4 * c, c))
    return self._bn(y, "bneck_bn4", train)

  @nn.compact
  def __call__(self, x, weights, train: bool):
    e, s = self.num_edges, self.stride
    wt = weights.astype(self.dtype)  # (E, 12)
    w = lambda name: wt[:, _COL[name], None]
    r = jax.nn.relu(x)
    r_wide = jnp.broadcast_to(r[..., None, :], r.shape[:3] + (e, r.shape[-1]))
    shared_bn = lambda y, name: BatchNorm(dtype=self.dtype, name=name)(y, train=train)
    max_p = shared_bn(max_pool_3x3(x, stride=s), "max_pool_bn")
    avg_p = shared_bn(avg_pool_3x3(x, stride=s), "avg_pool_bn")
    out = w("max_pool_3x3") * max_p[..., None, :] + w("avg_pool_3x3") * avg_p[..., None, :]
    skip = x[..., None, :] if s == 1 else self._factorized_reduce(r, train)
    if self.skip_noise and train:
      skip = add_skip_noise(self, jnp.broadcast_to(skip, out.shape), self.skip_noise, train)
    out = out + w("skip_connect") * skip
    out = out + w("conv_3x1_1x3") * self._rect(r, 3, train)
    out = out + w("conv_7x1_1x7") * self._rect(r, 7, train)
    out = out + w("simple_conv_1x1") * self._simple(r, 1, train)
    out = out + w("simple_conv_3x3") * self._simple(r, 3, train)
    out = out + w("sep_conv_3x3") * self._sep_conv(r_wide, 3, train)
    out = out + w("sep_conv_5x5") * self._sep_conv(r_wide, 5, train)
    out = out + w("dil_conv_3x3") * self._dil_conv(r_wide, 3, train)
    out = out + w("dil_conv_5x5") * self._dil_conv(r_wide, 5, train)
    out = out + w("bottleneck_1x3x1") * self._bottleneck(r, train)
    return out
