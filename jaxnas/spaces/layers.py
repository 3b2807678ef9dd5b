"""Building blocks shared by the search spaces: convolutions, pools and batch norm, NHWC.

The blocks are written for small traced programs on XLA: a group of ``E`` edges that leave one node
is computed as ordinary operations on a tensor with ``E * C`` channels (block-diagonal 1×1 convs as
one ``einsum``, depthwise convs on the widened tensor, batch norm over ``E * C`` channels), never as
``E`` copies of a module.

Initialisers follow PyTorch's defaults, which the reference implementations use: a conv or linear
weight is U(−1/√fan_in, 1/√fan_in) (``kaiming_uniform_(a=√5)``), a bias likewise.
"""

from __future__ import annotations

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


DEPTHWISE_IMPLS = {"lax": _depthwise_lax, "taps": _depthwise_taps}


def depthwise_conv2d(x, kernel, *, stride: int = 1, padding: int = 0, dilation: int = 1,
                     impl: str = "lax"):
  """Depthwise conv: channel c of ``x`` (NHWC) with ``kernel[:, :, c]`` (k, k, C); no bias.

  ``impl`` chooses how XLA sees it: ``"lax"`` is one grouped convolution (fast to compile, slow to
  run on XLA:CPU), ``"taps"`` a sum of k² shifted slices (fast to run, slower to compile). Both
  compute the same function; ``experiments/bench_compile.py`` measures the trade-off.
  """
  return DEPTHWISE_IMPLS[impl](x, kernel, stride, padding, dilation)


def max_pool_3x3(x, *, stride: int = 1):
  """3×3 max pool, padding 1 (padded cells never win), as ``nn.MaxPool2d(3, stride, 1)``."""
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, stride, stride, 1),
                           ((0, 0), (1, 1), (1, 1), (0, 0)))


def avg_pool_3x3(x, *, stride: int = 1):
  """3×3 average pool, padding 1, ``count_include_pad=False`` as the reference."""
  pad = ((0, 0), (1, 1), (1, 1), (0, 0))
  total = lax.reduce_window(x, 0.0, lax.add, (1, 3, 3, 1), (1, stride, stride, 1), pad)
  ones = jnp.ones((1, x.shape[1], x.shape[2], 1), x.dtype)
  count = lax.reduce_window(ones, 0.0, lax.add, (1, 3, 3, 1), (1, stride, stride, 1), pad)
  return total / count
