"""Building blocks shared by the search spaces: convolutions, pools and batch norm, NHWC.

The blocks are written for small traced programs on XLA: a group of ``E`` edges that leave one node
is computed as ordinary operations on a tensor with ``E * C`` channels (block-diagonal 1×1 convs as
one ``einsum``, depthwise convs on the widened tensor, batch norm over ``E * C`` channels), never as
``E`` copies of a module.

Initialisers follow PyTorch's defaults, which the reference implementations use: a conv or linear
weight is U(−1/√fan_in, 1/√fan_in) (``kaiming_uniform_(a=√5)``), a bias likewise.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

__all__ = [
    "torch_uniform",
    "BatchNorm",
    "conv2d",
    "depthwise_conv2d",
    "max_pool_3x3",
    "avg_pool_3x3",
    "DEPTHWISE_IMPLS",
]

Dtype = Any


def torch_uniform(fan_in: int):
  """PyTorch's default conv/linear initialiser: U(−1/√fan_in, 1/√fan_in)."""
  bound = 1.0 / float(fan_in) ** 0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class BatchNorm(nn.Module):
  """Batch norm over all axes but the last, with PyTorch's semantics.

  Train mode normalises by the batch's mean and biased variance and moves the running statistics
  by ``momentum`` (PyTorch's 0.1) towards the batch mean and the *unbiased* batch variance, as
  ``torch.nn.BatchNorm2d`` does. Eval mode uses the running statistics. ``affine=False`` is the
  search-time batch norm of DARTS and NAS-Bench-201: no parameters at all.

  Attributes:
    affine: learn a per-channel scale (init 1) and bias (init 0).
    momentum: PyTorch convention, the weight of the new batch statistic.
    epsilon: added to the variance.
    dtype: dtype of parameters and statistics.
  """

  affine: bool = False
  momentum: float = 0.1
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    c = x.shape[-1]
    mean_v = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), self.dtype))
    var_v = self.variable("batch_stats", "var", lambda: jnp.ones((c,), self.dtype))
    if train:
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(x, axis=axes)
      var = jnp.mean(jnp.square(x - mean), axis=axes)
      if not self.is_initializing():
        n = x.size // c
        unbiased = var * (n / max(n - 1, 1))
        m = self.momentum
        mean_v.value = (1 - m) * mean_v.value + m * lax.stop_gradient(mean)
        var_v.value = (1 - m) * var_v.value + m * lax.stop_gradient(unbiased)
    else:
      mean, var = mean_v.value, var_v.value
    y = (x - mean) * lax.rsqrt(var + self.epsilon)
    if self.affine:
      scale = self.param("scale", nn.initializers.ones, (c,), self.dtype)
      bias = self.param("bias", nn.initializers.zeros, (c,), self.dtype)
      y = y * scale + bias
    return y


def conv2d(x, kernel, *, stride: int = 1, padding: int = 0, dilation: int = 1):
  """Dense 2-D convolution, NHWC input, HWIO kernel, symmetric zero padding."""
  return lax.conv_general_dilated(
      x, kernel,
      window_strides=(stride, stride),
      padding=((padding, padding), (padding, padding)),
      rhs_dilation=(dilation, dilation),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _depthwise_lax(x, kernel, stride, padding, dilation):
  c = x.shape[-1]
  return lax.conv_general_dilated(
      x, kernel[:, :, None, :],
      window_strides=(stride, stride),
      padding=((padding, padding), (padding, padding)),
      rhs_dilation=(dilation, dilation),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=c)


def _depthwise_taps(x, kernel, stride, padding, dilation):
  """Depthwise conv as a sum of k² shifted, strided slices times per-channel taps."""
  k = kernel.shape[0]
  h, w = x.shape[1], x.shape[2]
  ho = (h + 2 * padding - dilation * (k - 1) - 1) // stride + 1
  wo = (w + 2 * padding - dilation * (k - 1) - 1) // stride + 1
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  out = None
  for i in range(k):
    for j in range(k):
      r0, c0 = i * dilation, j * dilation
      patch = lax.slice(
          xp, (0, r0, c0, 0),
          (xp.shape[0], r0 + stride * (ho - 1) + 1, c0 + stride * (wo - 1) + 1, xp.shape[3]),
          (1, stride, stride, 1))
      term = patch * kernel[i, j]
      out = term if out is None else out + term
  return out


def _out_size(n, k, stride, padding, dilation):
  return (n + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def _tap(xp, i, j, dilation, stride, ho, wo):
  r0, c0 = i * dilation, j * dilation
  return lax.slice(
      xp, (0, r0, c0) + (0,) * (xp.ndim - 3),
      (xp.shape[0], r0 + stride * (ho - 1) + 1, c0 + stride * (wo - 1) + 1) + xp.shape[3:],
      (1, stride, stride) + (1,) * (xp.ndim - 3))


def _taps_sum(xp, kernel, stride, dilation, ho, wo):
  """Σ_ij slice_ij(xp) · kernel[i, j], trailing dims broadcast."""
  k = kernel.shape[0]
  out = None
  for i in range(k):
    for j in range(k):
      term = _tap(xp, i, j, dilation, stride, ho, wo) * kernel[i, j]
      out = term if out is None else out + term
  return out


def _materialized_pad(x, lo_h, hi_h, lo_w, hi_w, interior=0, value=0.0):
  """Padding as its own buffer: a pad fused into the slices that read it is slow on XLA:CPU."""
  fill = jnp.asarray(value, x.dtype)
  cfg = ((0, 0, 0), (lo_h, hi_h, interior), (lo_w, hi_w, interior)) + ((0, 0, 0),) * (x.ndim - 3)
  return lax.optimization_barrier(lax.pad(x, fill, cfg))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _depthwise_vjp(x, kernel, stride, padding, dilation):
  """Taps forward and a hand-written taps backward (see ``depthwise_conv2d``)."""
  k = kernel.shape[0]
  ho = _out_size(x.shape[1], k, stride, padding, dilation)
  wo = _out_size(x.shape[2], k, stride, padding, dilation)
  xp = _materialized_pad(x, padding, padding, padding, padding)
  return _taps_sum(xp, kernel, stride, dilation, ho, wo)


def _depthwise_vjp_fwd(x, kernel, stride, padding, dilation):
  return _depthwise_vjp(x, kernel, stride, padding, dilation), (x, kernel)


def _batch_split(b: int, most: int = 16) -> int:
  """The largest divisor of ``b`` that is at most ``most``."""
  return max(d for d in range(1, min(b, most) + 1) if b % d == 0)


def _depthwise_vjp_bwd(stride, padding, dilation, res, g):
  x, kernel = res
  k = kernel.shape[0]
  h, w = x.shape[1], x.shape[2]
  ho, wo = g.shape[1], g.shape[2]
  span = dilation * (k - 1)
  lo = span - padding
  # dx: the transposed conv = a stride-1 taps conv of g (dilated by the stride) with the flipped kernel
  gp = _materialized_pad(g, lo, h + span - (ho - 1) * stride - 1 - lo,
                         lo, w + span - (wo - 1) * stride - 1 - lo, stride - 1)
  dx = _taps_sum(gp, kernel[::-1, ::-1], 1, dilation, h, w)
  # dk[i, j] = Σ_{b,h,w} tap_ij(x) · g. XLA:CPU's reductions over slices are slow (a strided copy,
  # then a reduce, per tap), so the batch is first folded by an explicit sum of `nb` batch blocks
  # inside one elementwise fusion, and only the (k², B/nb·H'·W', C) partial sums are reduced.
  xp = _materialized_pad(x, padding, padding, padding, padding)
  b = x.shape[0]
  nb = _batch_split(b)
  sb = b // nb
  parts = []
  for i in range(k):
    for j in range(k):
      t = _tap(xp, i, j, dilation, stride, ho, wo)
      q = None
      for m in range(nb):
        term = t[m * sb:(m + 1) * sb] * g[m * sb:(m + 1) * sb]
        q = term if q is None else q + term
      parts.append(q)
  q = jnp.stack(parts).reshape((k * k, -1) + kernel.shape[2:])
  dk = jnp.sum(q, axis=1).reshape(kernel.shape)
  return dx, dk.astype(kernel.dtype)


_depthwise_vjp.defvjp(_depthwise_vjp_fwd, _depthwise_vjp_bwd)


DEPTHWISE_IMPLS = {"lax": _depthwise_lax, "taps": _depthwise_taps, "vjp": _depthwise_vjp}


def depthwise_conv2d(x, kernel, *, stride: int = 1, padding: int = 0, dilation: int = 1,
                     impl: str = "lax"):
  """Depthwise conv: channel c of ``x`` (NHWC) with ``kernel[:, :, c]`` (k, k, C); no bias.

  ``impl`` chooses how XLA sees it; all compute the same function (equal to float64 rounding):

  - ``"lax"``: one grouped ``conv_general_dilated``. Fast to compile, slow to run on XLA:CPU.
  - ``"taps"``: a sum of k² shifted slices, differentiated by JAX (each tap's kernel gradient is a
    strided copy plus a reduction: the slow part).
  - ``"vjp"``: the same taps forward on an explicitly materialised pad (a pad fused into the slices is
    several times slower), with a hand-written backward: dx is a taps conv of the (stride-dilated)
    cotangent with the flipped kernel, dk folds the batch in 16 blocks inside one elementwise
    fusion before reducing.

  Measured (2 shared cores, ``experiments/bench_depthwise.py``): one conv fwd+bwd at
  (64, 32, 32, 16), 3×3 / 5×5: taps 22 / 87 ms, vjp 6 / 16 ms (lax at (64, 32, 32, 64): 280 ms for
  3×3). One DARTS normal cell (C=16, batch 64, 32×32) fwd+bwd: compile lax 7.5–23 s, taps 116 s,
  vjp 95 s; run lax 10.8 s, taps 10.7 s, vjp 4.7 s (min of 3). ``"lax"`` stays the default
  because the whole search step's compile time is the binding constraint; ``"vjp"`` is the one
  to use where a long compile is paid once (persistent cache) for a 2× faster step.
  """
  return DEPTHWISE_IMPLS[impl](x, kernel, stride, padding, dilation)


def _max_pool_reduce_window(x, stride):
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, stride, stride, 1),
                           ((0, 0), (1, 1), (1, 1), (0, 0)))


def _pool_taps(xp, stride, ho, wo):
  return [_tap(xp, i, j, 1, stride, ho, wo) for i in range(3) for j in range(3)]


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _max_pool_slices(x, stride):
  ho, wo = (x.shape[1] - 1) // stride + 1, (x.shape[2] - 1) // stride + 1
  xp = _materialized_pad(x, 1, 1, 1, 1, value=-jnp.inf)
  taps = _pool_taps(xp, stride, ho, wo)
  m = taps[0]
  for t in taps[1:]:
    m = jnp.maximum(m, t)
  return m


@_max_pool_slices.defjvp
def _max_pool_slices_jvp(stride, primals, tangents):
  """The tangent of each window's first maximum (row-major), as ``select_and_scatter`` picks.

  A ``custom_jvp`` rather than a ``custom_vjp``: the rule is linear in the tangent (zero-padded
  slices selected by masks computed from the primal), so JAX transposes it for reverse mode, and
  forward-over-reverse (Hessian-vector and mixed products of the second-order estimators, the
  Hessian eigenvalue) works through it, which a ``custom_vjp`` forbids.
  """
  (x,), (tx,) = primals, tangents
  m = _max_pool_slices(x, stride)
  ho, wo = m.shape[1], m.shape[2]
  xp = _materialized_pad(x, 1, 1, 1, 1, value=-jnp.inf)
  tp = lax.pad(tx, jnp.zeros((), tx.dtype), ((0, 0, 0), (1, 1, 0), (1, 1, 0), (0, 0, 0)))
  zero = jnp.zeros((), tx.dtype)
  taken, out = None, None
  for t, tt in zip(_pool_taps(xp, stride, ho, wo), _pool_taps(tp, stride, ho, wo)):
    hit = t == m
    if taken is not None:
      hit = hit & ~taken
    taken = hit if taken is None else taken | hit
    term = jnp.where(hit, tt, zero)
    out = term if out is None else out + term
  return m, out


def max_pool_3x3(x, *, stride: int = 1):
  """3×3 max pool, padding 1 (padded cells never win), as ``nn.MaxPool2d(3, stride, 1)``.

  Computed as the maximum of 9 shifted slices with a hand-written derivative (the first maximum
  of each window takes it, as ``reduce_window``'s ``select_and_scatter`` gradient does), given as
  a linear JVP rule so that both reverse mode and forward-over-reverse work. On XLA:CPU,
  fwd+bwd at (64, 32, 32, 16), 2 cores: 17 ms against 205 ms for ``reduce_window`` at stride 1,
  8 against 34 ms at stride 2 (``experiments/bench_depthwise.py``).
  """
  return _max_pool_slices(x, stride)


def avg_pool_3x3(x, *, stride: int = 1):
  """3×3 average pool, padding 1, ``count_include_pad=False`` as the reference."""
  pad = ((0, 0), (1, 1), (1, 1), (0, 0))
  total = lax.reduce_window(x, 0.0, lax.add, (1, 3, 3, 1), (1, stride, stride, 1), pad)
  ones = jnp.ones((1, x.shape[1], x.shape[2], 1), x.dtype)
  count = lax.reduce_window(ones, 0.0, lax.add, (1, 3, 3, 1), (1, stride, stride, 1), pad)
  return total / count


def add_skip_noise(module, y, scale: float, train: bool):
  r"""NoisyDARTS' noise on the skip connection's output (Chu et al., ECCV 2020 workshop; arXiv:2005.03566).

  .. math:: \tilde y = y + n, \qquad n \sim \mathcal N\big(0, (\lambda\, \mathrm{std}(y))^2\big)

  with :math:`\lambda` = ``scale`` and the standard deviation over the whole tensor, no gradient
  through the sample or the std, as ``NoiseOp`` in xiaomi-automl/NoisyDARTS. ``y`` has the edges on
  axis -2 (``(B, H, W, E, C)``) and every edge draws its own noise; the std is taken per edge, over
  that edge's (B, H, W, C) tensor, as each reference MixedOp sees only its own input. Applied only in
  train mode, only when ``scale > 0`` and only when the caller gave a ``"noise"`` RNG stream
  (``model.apply(..., rngs={"noise": key})``); otherwise ``y`` is returned unchanged.
  """
  if not scale or not train or not module.has_rng("noise"):
    return y
  std = jax.lax.stop_gradient(jnp.std(y, axis=(0, 1, 2, 4), keepdims=True))
  noise = jax.random.normal(module.make_rng("noise"), y.shape, y.dtype)
  return y + jnp.asarray(scale, y.dtype) * std * noise
