"""The sampled-operation path of the DARTS supernet: each edge runs only its sampled operation(s).

GDAS (Dong & Yang, CVPR 2019), D2NAS and ProxylessNAS (Cai et al., ICLR 2019) train one sampled
sub-network per step. Their relaxations (:mod:`jaxnas.sampling`) give one-hot (or all-zero) mixing
weights with straight-through gradients; this module computes, on every edge, only the operation
those weights select, so the time and activation memory of a step fall with the number of
operations. It holds **the same parameters and batch statistics, under the same names and shapes,
as** :class:`jaxnas.spaces.darts.DartsSearchNetwork` (the edge groups' stacked ``(E, ...)`` weights;
each edge reads its slice), so weights, checkpoints and genotypes carry over between the two.

Per edge ``e`` with mixing row ``w_e``:

- one path (GDAS, D2NAS): ``i = argmax_k w_{e,k}``; the edge computes ``o_i(x)`` alone, by
  ``lax.switch`` on ``i``, and returns :math:`(1 + w_{e,i} - \\mathrm{sg}(w_{e,i}))\\, o_i(x)`:
  the value of ``o_i(x)`` and the gradient :math:`\\partial L/\\partial w_{e,i} = \\langle
  \\partial L/\\partial y, o_i(x)\\rangle`, which reaches every logit of the edge through the
  straight-through sample. For one-hot weights this is exactly the full mixed op
  :math:`\\sum_k w_{e,k} o_k(x)` in value and in its gradients with respect to the network
  weights and to :math:`w_{e,i}`. An all-zero row (an edge D2NAS did not sample) selects ``none``
  and contributes exactly zero. With dense weights (``softmax(alphas)``, what a relaxation returns
  without a key, e.g. for evaluation) each edge runs its strongest operation at unit weight: the
  single-path network the alphas currently prefer.
- two paths (ProxylessNAS): the mixing weights carry a second one-hot row per edge under the key
  ``"inactive"``; the edge computes both operations and returns
  :math:`w_{e,a} o_a(x) + w_{e,b} o_b(x)`, so both gates get their gradient.

Departure from GDAS' code (``search_cells.py:forward_gdas``): the reference adds
:math:`\\sum_{k \\ne i} h_k` (zero in value) to each edge, which adds :math:`\\sum \\partial L/
\\partial y` to the gradient of every unsampled gate, equivalently (the soft sample sums to one) a
baseline :math:`-\\sum \\partial L/\\partial y` on the sampled gate's gradient. jaxnas leaves it out:
the gradient is then the straight-through gradient of the mixed op restricted to the computed
operation, and unsampled D2NAS edges get none.

Memory (the default, ``edge_remat=True``): each edge's switch, gate product included, is one
:func:`jaxnas.spaces.remat.late_switch`: the forward pass keeps only the edge's inputs (the state
``x``, which the node sums keep anyway, the edge's slices of the parameters and statistics, its
mixing row, the sampled index) and the backward pass, once the edge's output cotangent exists, runs
one switch whose branch recomputes the sampled operation and applies its VJP (the late-checkpoint
rule of :mod:`jaxnas.spaces.remat`). Without it an edge keeps the residuals of its ``lax.switch``,
and JAX sizes those for *every* branch (the union of the branches' residuals, merged by shape), so
each edge holds what its most residual-hungry operation (``sep_conv_5x5``) would need whatever was
sampled, and an edge D2NAS did not sample holds as much as one it did: at D2NAS Table 4's
configuration a GDAS step needed 3.53 GB of XLA:CPU temporaries that way, above the paper's 3.1 GB
(experiments/RESULTS.md gives the figures with and without, and the flops the recomputation costs:
one more forward of the sampled operations). This departs from GDAS' code, which keeps the sampled
op's activations (PyTorch allocates them dynamically, so it never pays for the unsampled ones);
XLA's buffers are static, so jaxnas recomputes instead. ``remat="op"`` is this same rule (the
sampled op is the edge's only op), ``remat="cell"`` rematerialises each cell on top of it
(:func:`jaxnas.spaces.remat.remat`); ``edge_remat=False`` (Python only, for measurements) gives the
program without it. Numbers do not change (tests/test_gumbel.py, tests/test_remat.py).

Batch statistics: only the computed operations' running statistics move; the pools' batch norms
are shared by the edges of a group (as in the full supernet, where their outputs are identical), so
a pool sampled on two edges of one group moves its statistics twice in a step.

Options of :class:`DartsSearchNetwork` that this path does not implement (``skip_noise``, and any
other option set away from its default) raise a one-line error.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxnas.errors import JaxnasError
from jaxnas.sampling import INACTIVE
from jaxnas.spaces.darts import (_EDGES_FROM, DARTS_EDGES, DARTS_OPS, NUM_NODES, REMAT_MODES,
                                 DartsSearchNetwork, Preprocess, reduction_indices)
from jaxnas.spaces.nb201 import NB201SearchNetwork
from jaxnas.spaces.layers import (BatchNorm, avg_pool_3x3, conv2d, depthwise_conv2d,
                                  max_pool_3x3, torch_uniform)
from jaxnas.spaces.remat import late_switch, remat

__all__ = ["SampledDartsSearchNetwork", "GatedNB201SearchNetwork", "SampledEdgeGroup", "darts_op",
           "sampled_edge_fn", "SUPPORTED_OPTIONS"]

Dtype = Any
_MOMENTUM, _EPSILON = 0.1, 1e-5  # layers.BatchNorm's (PyTorch's) defaults
SHARED_BN = ("max_pool_bn", "avg_pool_bn")
SUPPORTED_OPTIONS = ("channels", "num_cells", "num_classes", "depthwise", "dtype", "op_names",
                     "remat", "parent", "name")


def batch_norm(y, mean, var, train: bool):
  """Affine-free batch norm with running statistics, exactly as :class:`layers.BatchNorm`.

  Returns ``(normalised y, new mean, new var)``; in train mode the statistics move by 0.1 towards
  the batch mean and unbiased variance, in eval mode they are used and returned unchanged.
  """
  if not train:
    return (y - mean) * jax.lax.rsqrt(var + _EPSILON), mean, var
  axes = tuple(range(y.ndim - 1))
  m = jnp.mean(y, axis=axes)
  v = jnp.mean(jnp.square(y - m), axis=axes)
  n = y.size // y.shape[-1]
  unbiased = v * (n / max(n - 1, 1))
  new_mean = (1 - _MOMENTUM) * mean + _MOMENTUM * jax.lax.stop_gradient(m)
  new_var = (1 - _MOMENTUM) * var + _MOMENTUM * jax.lax.stop_gradient(unbiased)
  return (y - m) * jax.lax.rsqrt(v + _EPSILON), new_mean, new_var


def _edge_bn_names(stride: int):
  names = ["fr_bn"] if stride == 2 else []
  names += [f"sep{k}_bn{i}" for k in (3, 5) for i in (1, 2)]
  return names + ["dil3_bn", "dil5_bn"]


def darts_op(index: int, x, params, stats, *, stride: int, train: bool, depthwise: str = "lax"):
  """DARTS operation ``DARTS_OPS[index]`` on one edge: ``(output, new stats)``.

  ``params`` holds one edge's slices of the edge group's weights (``sep3_dw1`` of shape
  ``(3, 3, C)``, ...), ``stats`` maps each batch norm's name to ``(mean, var)`` (the edge's slice;
  the pools' shared ones whole). Only the running statistics of the operation computed change.
  The operations are quark0/darts ``operations.py``'s, as in :mod:`jaxnas.spaces.darts`.
  """
  name = DARTS_OPS[index]
  s = stride
  r = jax.nn.relu(x)
  stats = dict(stats)

  def bn(y, key):
    out, m, v = batch_norm(y, *stats[key], train)
    stats[key] = (m, v)
    return out

  def dw(y, kernel, st, pad, dil):
    return depthwise_conv2d(y, kernel, stride=st, padding=pad, dilation=dil, impl=depthwise)

  if name == "none":
    h = (x.shape[1] + 2 - 3) // s + 1
    w = (x.shape[2] + 2 - 3) // s + 1
    c = params["sep3_pw2"].shape[-1]
    y = jnp.zeros((x.shape[0], h, w, c), x.dtype)
  elif name == "max_pool_3x3":
    y = bn(max_pool_3x3(x, stride=s), "max_pool_bn")
  elif name == "avg_pool_3x3":
    y = bn(avg_pool_3x3(x, stride=s), "avg_pool_bn")
  elif name == "skip_connect":
    if s == 1:
      y = x
    else:
      a = r[:, ::2, ::2] @ params["fr_conv1"]
      b = r[:, 1::2, 1::2] @ params["fr_conv2"]
      y = bn(jnp.concatenate([a, b], axis=-1), "fr_bn")
  elif name.startswith("sep_conv"):
    k = int(name[-1])
    y = dw(r, params[f"sep{k}_dw1"], s, k // 2, 1) @ params[f"sep{k}_pw1"]
    y = bn(y, f"sep{k}_bn1")
    y = dw(jax.nn.relu(y), params[f"sep{k}_dw2"], 1, k // 2, 1) @ params[f"sep{k}_pw2"]
    y = bn(y, f"sep{k}_bn2")
  else:  # dil_conv_k
    k = int(name[-1])
    y = dw(r, params[f"dil{k}_dw"], s, k - 1, 2) @ params[f"dil{k}_pw"]
    y = bn(y, f"dil{k}_bn")
  return y, stats


class _Stats(nn.Module):
  """The running statistics of one :class:`layers.BatchNorm` (same collection, names, shapes)."""

  size: int
  dtype: Dtype = jnp.float32

  def setup(self):
    self.mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((self.size,), self.dtype))
    self.var = self.variable("batch_stats", "var", lambda: jnp.ones((self.size,), self.dtype))

  def get(self):
    return self.mean.value, self.var.value

  def put(self, mean, var):
    self.mean.value, self.var.value = mean, var


class SampledEdgeGroup(nn.Module):
  """The ``E`` edges leaving one state, each computing only its sampled operation(s).

  Same parameters and statistics as :class:`jaxnas.spaces.darts.DartsEdgeGroup`. ``weights`` is
  ``(E, 8)``; ``inactive`` (two-path mode) a ``(E, 8)`` one-hot of each edge's second operation, or
  None. ``remat_edges``: each edge's switch is a :func:`jaxnas.spaces.remat.late_switch` (see the
  module docstring). Returns shape ``(B, H', W', E, C)``.
  """

  num_edges: int
  channels: int
  stride: int
  depthwise: str = "lax"
  dtype: Dtype = jnp.float32
  remat_edges: bool = True

  def _declare(self, cin):
    e, c, s = self.num_edges, self.channels, self.stride
    shapes = {}
    if s == 2:
      shapes["fr_conv1"] = (torch_uniform(cin), (e, cin, c // 2))
      shapes["fr_conv2"] = (torch_uniform(cin), (e, cin, c // 2))
    for k in (3, 5):
      shapes[f"sep{k}_dw1"] = (torch_uniform(k * k), (e, k, k, c))
      shapes[f"sep{k}_pw1"] = (torch_uniform(c), (e, c, c))
      shapes[f"sep{k}_dw2"] = (torch_uniform(k * k), (e, k, k, c))
      shapes[f"sep{k}_pw2"] = (torch_uniform(c), (e, c, c))
    for k in (3, 5):
      shapes[f"dil{k}_dw"] = (torch_uniform(k * k), (e, k, k, c))
      shapes[f"dil{k}_pw"] = (torch_uniform(c), (e, c, c))
    return {name: self.param(name, init, shape, self.dtype)
            for name, (init, shape) in shapes.items()}

  @nn.compact
  def __call__(self, x, weights, inactive=None, *, train: bool):
    e, c, s = self.num_edges, self.channels, self.stride
    params = self._declare(x.shape[-1])
    edge_names = _edge_bn_names(s)
    shared = [_Stats(x.shape[-1], self.dtype, name=name) for name in SHARED_BN]
    per_edge = [_Stats(e * c, self.dtype, name=name) for name in edge_names]
    # Small stacked blocks: the pools' (2, 2, Cin) and, per edge, (n, 2, C) (mean, var) rows.
    pool_st = jnp.stack([jnp.stack(store.get()) for store in shared])
    edge_st = jnp.stack([jnp.stack(store.get()).reshape(2, e, c) for store in per_edge], axis=2)
    wt = weights.astype(self.dtype)
    edge = sampled_edge_fn(s, train, self.depthwise, edge_names, two_paths=inactive is not None,
                           remat=self.remat_edges)
    outs, new_edge = [], []
    for j in range(e):
      p_j = {name: value[j] for name, value in params.items()}
      rows = (wt[j],) if inactive is None else (wt[j], inactive[j])
      y, pool_st, st_j = edge(x, p_j, pool_st, edge_st[:, j], *rows)
      outs.append(y)
      new_edge.append(st_j)
    if train and not self.is_initializing():
      for k, store in enumerate(shared):
        store.put(pool_st[k, 0], pool_st[k, 1])
      new_edge = jnp.stack(new_edge, axis=1)  # (2, E, n, C)
      for k, store in enumerate(per_edge):
        store.put(new_edge[0, :, k].reshape(e * c), new_edge[1, :, k].reshape(e * c))
    return jnp.stack(outs, axis=-2)


def sampled_edge_fn(stride: int, train: bool, depthwise: str, edge_names, *, two_paths: bool,
                    remat: bool = False):
  r"""One edge's sampled output as a pure function of arrays.

  One path, ``edge(x, p, pool_st, edge_st, w)`` with mixing row ``w`` (8,):
  :math:`i = \arg\max_k w_k` and :math:`y = (1 + w_i - \mathrm{sg}(w_i))\, o_i(x)`, the value
  of :math:`o_i(x)` with :math:`\partial L/\partial w_i = \langle \partial L/\partial y,
  o_i(x)\rangle` (GDAS' straight-through estimator, Dong & Yang, CVPR 2019, restricted to the
  computed op; see the module docstring for the departure from their code). Two paths
  (ProxylessNAS, Cai et al., ICLR 2019), ``edge(x, p, pool_st, edge_st, w, other)`` with the
  second path's one-hot ``other``: :math:`y = w_a o_a(x) + w_b o_b(x)`, ``a``, ``b`` the argmaxes
  of ``w`` and ``other``. Returns ``(y, pool_st', edge_st')`` (statistics as :func:`_op_branches`).

  ``remat``: each switch is a :func:`jaxnas.spaces.remat.late_switch`, whose branch ``k``
  computes the gated :math:`g_k\, o_k(x)` (:math:`g_k = 1 + w_k - \mathrm{sg}(w_k)`, or
  :math:`w_k` for two paths), so nothing of the edge but its inputs is kept for the backward
  pass, not even :math:`o_i(x)` for the gate's gradient. Without it the switch is plain and the
  gate multiplies its output (the program measured before, ``edge_remat=False``).
  """
  ops = _op_branches(stride, train, depthwise, edge_names)
  if remat:
    def gated(k, straight_through):
      def run(x, p, pool_st, edge_st, w):
        y, pool_st, edge_st = ops[k](x, p, pool_st, edge_st)
        g = 1 + (w[k] - jax.lax.stop_gradient(w[k])) if straight_through else w[k]
        return g * y, pool_st, edge_st
      return run

    one = [gated(k, True) for k in range(len(ops))]
    two = [gated(k, False) for k in range(len(ops))]

    def one_path(x, p, pool_st, edge_st, w):
      return late_switch(jnp.argmax(jax.lax.stop_gradient(w)), one, x, p, pool_st, edge_st, w)

    def two_path(x, p, pool_st, edge_st, w, other):
      a, b = jnp.argmax(jax.lax.stop_gradient(w)), jnp.argmax(other)
      y_a, pool_st, edge_st = late_switch(a, two, x, p, pool_st, edge_st, w)
      y_b, pool_st, edge_st = late_switch(b, two, x, p, pool_st, edge_st, w)
      return y_a + y_b, pool_st, edge_st
  else:
    def one_path(x, p, pool_st, edge_st, w):
      i = jnp.argmax(jax.lax.stop_gradient(w))
      y, pool_st, edge_st = jax.lax.switch(i, ops, x, p, pool_st, edge_st)
      return (1 + (w[i] - jax.lax.stop_gradient(w[i]))) * y, pool_st, edge_st

    def two_path(x, p, pool_st, edge_st, w, other):
      a, b = jnp.argmax(jax.lax.stop_gradient(w)), jnp.argmax(other)
      y, pool_st, edge_st = jax.lax.switch(a, ops, x, p, pool_st, edge_st)
      y_b, pool_st, edge_st = jax.lax.switch(b, ops, x, p, pool_st, edge_st)
      return w[a] * y + w[b] * y_b, pool_st, edge_st

  return two_path if two_paths else one_path


def _op_branches(stride: int, train: bool, depthwise: str, edge_names):
  r"""The eight ``op_k(x, p, pool_st, edge_st) -> (o_k(x), pool_st', edge_st')``, DARTS_OPS order.

  The branches of one edge's ``lax.switch``. Only small arrays cross it besides ``x`` and the
  edge's parameters: the pools' statistics ``(2, 2, Cin)`` and the edge's own ``(2, n, C)`` (mean
  and var of its ``n`` batch norms); each branch rewrites only its own rows.

  Differentiated as a plain ``lax.switch``, JAX linearises it by giving every branch the union of
  all branches' residuals, merged by shape and dtype (for each, as many buffers as the branch
  needing most of them; the others are filled with empty values, ``_join_cond_outputs``), so the
  edge keeps at least its largest branch's residuals whatever was sampled. Under
  :func:`jaxnas.spaces.remat.late_switch` (``remat_edges``) none are kept between the passes.
  ``jax.checkpoint`` around the switch saved nothing on XLA:CPU (experiments/RESULTS.md: its
  recomputation is CSE'd back into the forward pass).
  """
  names = list(SHARED_BN) + list(edge_names)

  def branch(index):
    def run(x, p, pool_st, edge_st):
      stats = {name: (pool_st[k, 0], pool_st[k, 1]) for k, name in enumerate(SHARED_BN)}
      stats.update({name: (edge_st[0, k], edge_st[1, k]) for k, name in enumerate(edge_names)})
      y, new = darts_op(index, x, p, stats, stride=stride, train=train, depthwise=depthwise)
      moved = [name for name in names if new[name] is not stats[name]]
      for name in moved:
        m, v = new[name]
        if name in SHARED_BN:
          pool_st = pool_st.at[SHARED_BN.index(name)].set(jnp.stack([m, v]))
        else:
          k = edge_names.index(name)
          edge_st = edge_st.at[:, k].set(jnp.stack([m, v]))
      return y, pool_st, edge_st
    return run

  return [branch(index) for index in range(len(DARTS_OPS))]


class SampledDartsCell(nn.Module):
  """:class:`jaxnas.spaces.darts.DartsCell` with :class:`SampledEdgeGroup` edges.

  ``train`` is positional so that :func:`jaxnas.spaces.remat.remat` can hold it static.
  """

  channels: int
  reduction: bool
  reduction_prev: bool
  depthwise: str = "lax"
  dtype: Dtype = jnp.float32
  remat_edges: bool = True

  @nn.compact
  def __call__(self, s0, s1, weights, inactive, train: bool):
    c = self.channels
    states = [Preprocess(c, self.reduction_prev, self.dtype, name="pre0")(s0, train=train),
              Preprocess(c, False, self.dtype, name="pre1")(s1, train=train)]
    inbox = {i: [] for i in range(NUM_NODES)}
    for src in range(NUM_NODES + 1):
      edges = jnp.array(_EDGES_FROM[src])
      stride = 2 if self.reduction and src < 2 else 1
      out = SampledEdgeGroup(len(_EDGES_FROM[src]), c, stride, self.depthwise, self.dtype,
                             self.remat_edges, name=f"from_{src}")(
          states[src], weights[edges], None if inactive is None else inactive[edges], train=train)
      for slot, e in enumerate(_EDGES_FROM[src]):
        inbox[DARTS_EDGES[e][0]].append(out[..., slot, :])
      if src >= 1:
        states.append(sum(inbox[src - 1]))
    return jnp.concatenate(states[2:], axis=-1)


class SampledDartsSearchNetwork(DartsSearchNetwork):
  """The DARTS supernet computing only the sampled operations (see the module docstring).

  Same attributes, parameters and batch statistics as :class:`DartsSearchNetwork`. ``weights`` is
  ``{"normal": (14, 8), "reduce": (14, 8)}`` and, for two-path relaxations, also
  ``"inactive": {"normal": (14, 8), "reduce": (14, 8)}``.

  ``remat``: ``"none"`` and ``"op"`` both give the default sampled path, whose edges are
  rematerialised (``edge_remat``); ``"cell"`` also wraps every cell in
  :func:`jaxnas.spaces.remat.remat`. ``edge_remat=False`` (not a CLI option; set it with
  ``model.clone(edge_remat=False)``) keeps each edge's switch residuals instead, the program
  measured before edges were rematerialised; with ``remat="op"`` edges are rematerialised anyway.
  """

  edge_remat: bool = True

  def _check_options(self):
    for field in dataclasses.fields(DartsSearchNetwork):
      if field.name in SUPPORTED_OPTIONS or not field.init:
        continue
      value = getattr(self, field.name)
      if field.default is not dataclasses.MISSING and value != field.default:
        raise JaxnasError(f"the sampled DARTS path (GDAS, D2NAS, ProxylessNAS) does not implement "
                          f"{field.name}={value!r}; leave it at {field.default!r}")

  @nn.compact
  def __call__(self, x, weights, *, train: bool):
    from jaxnas.spaces import check_weights
    self._check_options()
    inactive: Optional[dict] = None
    if isinstance(weights, dict) and INACTIVE in weights:
      weights = dict(weights)
      inactive = weights.pop(INACTIVE)
      check_weights(inactive, self.alpha_shapes(), "darts (sampled, inactive paths)")
    check_weights(weights, self.alpha_shapes(), "darts")
    if self.remat not in REMAT_MODES:
      raise JaxnasError(f"remat is {self.remat!r}; choose one of {', '.join(REMAT_MODES)}")
    # `train` is passed positionally so that remat can hold it static (argument 5, the module 0).
    cell_cls = SampledDartsCell
    if self.remat == "cell":
      cell_cls = remat(SampledDartsCell, static_argnums=(5,))
    remat_edges = self.edge_remat or self.remat == "op"
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
      kind = "reduce" if reduction else "normal"
      w = weights[kind].astype(self.dtype)
      other = None if inactive is None else jax.lax.stop_gradient(inactive[kind])
      cell = cell_cls(c_curr, reduction, reduction_prev, self.depthwise, self.dtype, remat_edges,
                      name=f"cell_{i}")
      s0, s1 = s1, cell(s0, s1, w, other, train)
      reduction_prev = reduction
    x = jnp.mean(s1, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.dtype,
                    kernel_init=torch_uniform(x.shape[-1]), bias_init=torch_uniform(x.shape[-1]),
                    name="classifier")(x)


class GatedNB201SearchNetwork(NB201SearchNetwork):
  """NAS-Bench-201 for the sampling recipes: the full supernet, reading the two-path key too.

  There is no sampled-operation path for NAS-Bench-201 yet: every operation is computed with the
  sampled weights. For one-hot weights the values equal the sampled network's; the gradient in the
  weights is the straight-through gradient of the full mixed op (every operation contributes
  :math:`\\langle \\partial L/\\partial y, o_k(x)\\rangle`), and for ProxylessNAS' gates, which have
  no gradient outside the sampled pair, it equals the two-path gradient. Time and memory do not
  fall. The ``"inactive"`` key of two-path weights is dropped.
  """

  def __call__(self, x, weights, *, train: bool):
    if isinstance(weights, dict) and INACTIVE in weights:
      weights = {k: v for k, v in weights.items() if k != INACTIVE}
    return super().__call__(x, weights, train=train)
