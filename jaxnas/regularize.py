"""Regularisers: scalar terms added to the architecture objective.

Two kinds, each a pure function returning a scalar:

- on the logits, ``fn(alphas, *, op_names=None) -> scalar``, in :data:`REGULARIZERS`. The search
  step passes the space's ``op_names`` (column order) when the signature names it; the PR-DARTS
  terms also take ``progress`` (epoch / epochs) the same way;
- on the losses, ``fn(train_loss, val_loss, w, alphas, train_batch, val_batch, key) -> scalar``, in
  :data:`LOSS_REGULARIZERS`, with the estimators' loss signature
  ``loss(w, alphas, batch, key) -> (scalar, aux)`` (UNAS' generalisation gap).

A recipe lists :class:`jaxnas.methods.Regularizer` records ``(name, weight, schedule)``; the search
step adds ``∇_α Σ_i λ_i(t) R_i`` to the estimator's hypergradient before the architecture optimiser
(:func:`jaxnas.search.make_search_step`) and logs each ``R_i`` and ``λ_i(t)``. :func:`get` finds a
name in either registry; :func:`is_loss_regularizer` says which.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxnas import ddarts, relax, sampling
from jaxnas.derive import NB201_EDGES, darts_edge_sources
from jaxnas.errors import JaxnasError, unknown_name

__all__ = ["beta_decay", "zero_one", "cdarts_l1", "pr_skip", "pr_nonskip", "pr_path",
           "generalization_gap", "scheduled_weight", "get", "is_loss_regularizer", "REGULARIZERS",
           "LOSS_REGULARIZERS", "RegularizerFn", "PARAMETER_FREE_OPS", "POOL_OPS", "SKIP_OP"]

RegularizerFn = Callable[..., jax.Array]

SKIP_OP = "skip_connect"
POOL_OPS = ("max_pool_3x3", "avg_pool_3x3")
# Operations without weights in the DARTS and NAS-Bench-201 spaces.
PARAMETER_FREE_OPS = ("none",) + POOL_OPS + (SKIP_OP,)


def _leaves(alphas, who: str):
  leaves = jax.tree.leaves(alphas)
  if not leaves:
    raise JaxnasError(f"{who} needs at least one alphas array, got an empty pytree")
  return leaves


def _columns(op_names, wanted, who: str, *, width: int):
  """Boolean mask over the ``width`` columns: True at the operations ``wanted``."""
  if op_names is None:
    raise JaxnasError(f"{who} needs op_names to find its operations' columns; pass "
                      "op_names=jaxnas.derive.DARTS_OPS (or the space's)")
  names = tuple(op_names)
  if len(names) != width:
    raise JaxnasError(f"{who}: alphas have {width} operation columns but op_names lists "
                      f"{len(names)} ({list(names)})")
  return np.asarray([name in wanted for name in names])


def beta_decay(alphas) -> jax.Array:
  r"""β-DARTS' Beta-Decay regulariser (Ye et al., β-DARTS, CVPR 2022).

  .. math:: \mathcal L_\beta = \frac{1}{|\mathcal E|} \sum_{e \in \mathcal E}
     \log \sum_k \exp(\alpha_{e,k}),
     \qquad \frac{\partial \mathcal L_\beta}{\partial \alpha_{e,k}}
     = \frac{\mathrm{softmax}(\alpha_e)_k}{|\mathcal E|}

  on the raw logits, as ``Architect.mlc_loss`` in Sunshine-Ye/Beta-DARTS. Its gradient pushes every
  logit down in proportion to its softmax weight, which keeps the logits' scale (β) small and the
  mixing weights from saturating.

  The mean is over all edges of all alpha leaves concatenated (for the DARTS space the 14 normal and
  14 reduce edges together, 28 in all). The reference is verified only for NAS-Bench-201's single
  (6, 5) tensor; its reduction over the DARTS space's two tensors is unverified (REFERENCE §7), so
  this choice is ours. Leaves may have different numbers of operations.

  Args:
    alphas: pytree of logits, operations on the last axis.

  Returns:
    The scalar :math:`\mathcal L_\beta`.

  Raises:
    JaxnasError: if ``alphas`` has no leaves.
  """
  leaves = _leaves(alphas, "beta_decay")
  per_edge = [jax.nn.logsumexp(a, axis=-1).reshape(-1) for a in leaves]
  return jnp.mean(jnp.concatenate(per_edge))


def zero_one(alphas, *, op_names=None, exclude=None) -> jax.Array:
  r"""FairDARTS' zero-one loss (Chu et al., Fair DARTS, ECCV 2020, eq. 5).

  .. math:: \mathcal L_{01} = -\frac{1}{N} \sum_{e,k} \big(\sigma(\alpha_{e,k}) - \tfrac12\big)^2,
     \qquad \frac{\partial \mathcal L_{01}}{\partial \alpha_{e,k}}
     = -\frac{2}{N} \big(\sigma(\alpha_{e,k}) - \tfrac12\big)\, \sigma(\alpha_{e,k})
       \big(1 - \sigma(\alpha_{e,k})\big)

  the mean over the :math:`N` entries of all alpha leaves concatenated (normal and reduce together,
  as ``ConvSeparateLoss`` in xiaomi-automl/FairDARTS). Minimising it pushes each sigmoid weight
  away from 1/2, towards 0 or 1, so that thresholding the weights (``fairdarts-sparse``) loses
  little. The recipe weight is w01 = 10 (``--aux_loss_weight``), on from the first epoch.

  FairDARTS has no ``none`` operation; jaxnas' alphas keep its column, and it is left out of the
  mean (its weight is 0 under :func:`jaxnas.relax.sigmoid`), so :math:`N` counts 7 of every 8
  columns, as the reference's seven-column tensors.

  Args:
    alphas: pytree of logits, operations on the last axis.
    op_names: the operation names in column order; without it every column counts.
    exclude: operations left out of the mean; None means ``("none",)`` where the space has it.

  Returns:
    The scalar :math:`\mathcal L_{01}` (between −1/4 and 0).

  Raises:
    JaxnasError: for empty ``alphas`` or a bad ``exclude``.
  """
  leaves = _leaves(alphas, "zero_one")
  terms = []
  for a in leaves:
    mask = relax.excluded_mask(op_names, exclude, default=("none",), who="zero_one")
    if op_names is not None and len(tuple(op_names)) != a.shape[-1]:
      raise JaxnasError(f"zero_one: alphas have {a.shape[-1]} operation columns but op_names "
                        f"lists {len(tuple(op_names))} ({list(op_names)})")
    sq = jnp.square(jax.nn.sigmoid(a) - 0.5)
    if mask is not None:
      sq = sq[..., ~mask]
    terms.append(sq.reshape(-1))
  return -jnp.mean(jnp.concatenate(terms))


CDARTS_OPS = POOL_OPS + (SKIP_OP,)


def _abs(x):
  """|x| with derivative sign(x), 0 at 0, as PyTorch's ``abs`` (JAX's ``abs`` gives 1 there)."""
  return jnp.sign(x) * x


def cdarts_l1(alphas, *, op_names=None, ops: Sequence[str] = CDARTS_OPS) -> jax.Array:
  r"""CDARTS' L1 penalty on the parameter-free operations' logits (Yu et al., Cyclic DARTS).

  .. math:: \mathcal R = \sum_{\text{cells}} \sum_{e} \sum_{o \in \mathcal O_{free}}
     |\alpha_{e,o}|, \qquad \mathcal O_{free} = \{\texttt{max\_pool\_3x3},
     \texttt{avg\_pool\_3x3}, \texttt{skip\_connect}\}

  on the **raw logits** (not the softmax weights), summed over the edges of the normal and the
  reduction cell, as ``add_alpha_regularization(method='L1')`` called from
  ``lib/core/search_function.py`` in microsoft/Cream (CDARTS): ``op_opt`` there is exactly these
  three operations; ``none`` is not penalised. Its gradient is :math:`\mathrm{sign}(\alpha)` on
  those columns and zero elsewhere, pulling their logits towards 0 (0 at 0, as PyTorch's ``abs``).

  Departures: the reference's weight decays linearly from ``--regular_coeff`` 5 to 0 over the first
  ``--regular_ratio`` (half) of the search, a schedule jaxnas' ``Regularizer`` records do not have
  yet. Its NAS-Bench-201 code (``benchmark201``, ``l1_loss``) instead penalises the mean of
  :math:`|\alpha_{none}|` alone; jaxnas applies the DARTS-space rule in every space (in
  NAS-Bench-201 the operations present: skip_connect and avg_pool_3x3).

  Args:
    alphas: pytree of logits, operations on the last axis.
    op_names: the operation names in column order (required).
    ops: the penalised operations; those absent from ``op_names`` are skipped.

  Returns:
    The scalar :math:`\mathcal R`.

  Raises:
    JaxnasError: without ``op_names``, or if none of ``ops`` is in them.
  """
  leaves = _leaves(alphas, "cdarts_l1")
  if op_names is not None and not any(name in tuple(op_names) for name in ops):
    raise JaxnasError(f"cdarts_l1 penalises {list(ops)}, none of which is in op_names "
                      f"{list(op_names)}")
  total = []
  for a in leaves:
    cols = _columns(op_names, tuple(ops), "cdarts_l1", width=a.shape[-1])
    total.append(jnp.sum(_abs(a[..., cols])))
  return sum(total[1:], total[0])


# --- PR-DARTS -----------------------------------------------------------------------------------

PR_MARGIN = 0.2


def _hinge(x, margin):
  return jnp.maximum(x - margin, 0.0)


def _pr_probability(a, progress, tau_start, tau_end, limit_a, limit_b):
  tau = relax.pr_tau(progress, tau_start=tau_start, tau_end=tau_end)
  return relax.gate_open_probability(a, tau, a=limit_a, b=limit_b)


def _group_mean(probs, cols):
  return jnp.mean(probs[..., cols])


def _pr_groups(who, op_names, width):
  """Column masks (skip, pooling, the rest, convolutions) for PR-DARTS' groups."""
  skip = _columns(op_names, (SKIP_OP,), who, width=width)
  pool = _columns(op_names, POOL_OPS, who, width=width)
  rest = ~(skip | pool)
  conv = ~_columns(op_names, PARAMETER_FREE_OPS, who, width=width)
  return skip, pool, rest, conv


def pr_skip(alphas, *, op_names=None, progress=None, margin: float = PR_MARGIN,
            tau_start: float = relax.PR_TAU_START, tau_end: float = relax.PR_TAU_END,
            a: float = relax.PR_LIMIT_A, b: float = relax.PR_LIMIT_B) -> jax.Array:
  r"""PR-DARTS' skip-group sparsity term (Zhou et al., NeurIPS 2020, §4.1).

  .. math:: \mathcal R_{skip} = \max\Big(0,\ \frac{1}{C} \sum_{c} \frac{1}{|\mathcal E_c|}
     \sum_{e} P_{e,\texttt{skip}} - m\Big), \qquad
     P_{e,o} = \sigma\big(\alpha_{e,o} - \tau \log(-a/b)\big)

  the mean probability that a skip connection's gate is open
  (:func:`jaxnas.relax.gate_open_probability`), averaged over the cells (normal and reduce, 1/2
  each), less the margin ``m`` (0.2, ``--threshold``) and clipped at 0; weight λ1 (the authors'
  script: 0.01). It penalises skip connections apart from the other operations, so they do not
  win the competition that DARTS' shared softmax gives them.

  Follows ``NASNetworkPRDARTS.get_regularization`` in the authors' code except that the reference
  averages only over the edges where the current gate sample switched skip on (its ``hardwts_idx``
  mask); jaxnas averages over all edges, so the term is a deterministic function of α. τ follows
  :func:`jaxnas.relax.pr_tau` when the search passes ``progress``.

  Args:
    alphas: pytree of logits, operations on the last axis (each leaf one cell).
    op_names: the operation names in column order (required).
    progress: epoch / epochs for τ, or None (τ = ``tau_end``).
    margin: ``m``.
    tau_start, tau_end, a, b: as :func:`jaxnas.relax.pr_gates`.

  Returns:
    The scalar :math:`\mathcal R_{skip}`.
  """
  terms = []
  for x in _leaves(alphas, "pr_skip"):
    skip, _, _, _ = _pr_groups("pr_skip", op_names, x.shape[-1])
    terms.append(_group_mean(_pr_probability(x, progress, tau_start, tau_end, a, b), skip))
  return _hinge(sum(terms[1:], terms[0]) / len(terms), margin)


def pr_nonskip(alphas, *, op_names=None, progress=None, margin: float = PR_MARGIN,
               tau_start: float = relax.PR_TAU_START, tau_end: float = relax.PR_TAU_END,
               a: float = relax.PR_LIMIT_A, b: float = relax.PR_LIMIT_B) -> jax.Array:
  r"""PR-DARTS' non-skip group sparsity terms (Zhou et al., NeurIPS 2020, §4.1).

  .. math:: \mathcal R_{non\text{-}skip} = \max\big(0,\ \bar P_{rest} - m\big)
     + \max\big(0,\ \bar P_{pool} - m\big)

  where :math:`\bar P_{G}` is the mean gate-open probability :math:`P_{e,o}` (see :func:`pr_skip`)
  over the edges and operations of group :math:`G`, averaged over the cells; ``pool`` is
  ``max_pool_3x3`` and ``avg_pool_3x3``, ``rest`` every operation but skip_connect and the pools
  (the convolutions and ``none``); weight λ2 (the authors' script: 0.005). As the authors' code,
  which splits the paper's non-skip group into a pooling group and the rest, both at λ2, with the
  sampled-gate mask dropped as in :func:`pr_skip`.

  Args:
    alphas: pytree of logits, operations on the last axis (each leaf one cell).
    op_names: the operation names in column order (required).
    progress, margin, tau_start, tau_end, a, b: as :func:`pr_skip`.

  Returns:
    The scalar :math:`\mathcal R_{non\text{-}skip}`.
  """
  rest_terms, pool_terms = [], []
  for x in _leaves(alphas, "pr_nonskip"):
    _, pool, rest, _ = _pr_groups("pr_nonskip", op_names, x.shape[-1])
    probs = _pr_probability(x, progress, tau_start, tau_end, a, b)
    rest_terms.append(_group_mean(probs, rest))
    if pool.any():
      pool_terms.append(_group_mean(probs, pool))
  out = _hinge(sum(rest_terms[1:], rest_terms[0]) / len(rest_terms), margin)
  if pool_terms:
    out = out + _hinge(sum(pool_terms[1:], pool_terms[0]) / len(pool_terms), margin)
  return out


def chain_edges(num_edges: int) -> tuple[int, ...]:
  """Rows of the deepest path through a cell: node ``i`` reading the node just before it.

  DARTS (14 edges): node ``i`` from state ``i + 1``, i.e. edges 1, 4, 8, 13 (the authors'
  ``0<-1, 1<-2, 2<-3, 3<-4``); NAS-Bench-201 (6 edges): ``1<-0, 2<-1, 3<-2``, edges 0, 2, 5.
  """
  darts = darts_edge_sources()
  if num_edges == len(darts):
    return tuple(e for e, (node, src) in enumerate(darts) if src == node + 1)
  if num_edges == len(NB201_EDGES):
    return tuple(e for e, (to, src) in enumerate(NB201_EDGES) if src == to - 1)
  raise JaxnasError(f"pr_path knows the DARTS (14 edges) and NAS-Bench-201 (6 edges) cells; an "
                    f"alphas leaf has {num_edges} rows")


def pr_path(alphas, *, op_names=None, progress=None, tau_start: float = relax.PR_TAU_START,
            tau_end: float = relax.PR_TAU_END, a: float = relax.PR_LIMIT_A,
            b: float = relax.PR_LIMIT_B) -> jax.Array:
  r"""PR-DARTS' path-depth regulariser (Zhou et al., NeurIPS 2020, §4.2).

  .. math:: \mathcal R_{path} = -\frac{1}{C} \sum_{c} \prod_{e \in \text{chain}}
     \frac{1}{|\mathcal O_{conv}|} \sum_{o \in \mathcal O_{conv}} P_{e,o}

  minus the probability-like weight of the deepest path through each cell, the chain in which
  every intermediate node reads the one before it (:func:`chain_edges`), through a parametric
  operation (the convolutions: not none, skip or a pool); averaged over the cells. Adding
  :math:`\lambda_3 \mathcal R_{path}` (the authors' script: λ3 = 0.005) rewards deep cells, which
  the paper shows converge more slowly and so lose to shallow ones in DARTS.

  As the authors' ``get_regularization`` (no margin on this term), with the sampled-gate mask
  dropped: there the per-edge mean runs over the convolutions the current sample switched on and
  the product over the chain edges with at least one.

  Args:
    alphas: pytree of logits, operations on the last axis (each leaf one cell, laid out as the
      DARTS or NAS-Bench-201 space).
    op_names: the operation names in column order (required).
    progress, tau_start, tau_end, a, b: as :func:`pr_skip`.

  Returns:
    The scalar :math:`\mathcal R_{path}` (between −1 and 0).
  """
  terms = []
  for x in _leaves(alphas, "pr_path"):
    _, _, _, conv = _pr_groups("pr_path", op_names, x.shape[-1])
    if not conv.any():
      raise JaxnasError(f"pr_path needs a parametric operation; op_names {list(op_names)} has "
                        "only parameter-free ones")
    probs = _pr_probability(x, progress, tau_start, tau_end, a, b)
    rows = np.asarray(chain_edges(x.shape[0]))
    per_edge = jnp.mean(probs[rows][:, conv], axis=-1)
    terms.append(jnp.prod(per_edge))
  return -(sum(terms[1:], terms[0]) / len(terms))


# --- loss-based -----------------------------------------------------------------------------------


def generalization_gap(train_loss, val_loss, w, alphas, train_batch, val_batch, key, *,
                       absolute: bool = False) -> jax.Array:
  r"""UNAS' generalisation gap (Vahdat et al., UNAS, CVPR 2020, §3.3).

  .. math:: \mathcal R = \mathcal L_{val}(w, \alpha) - \mathcal L_{train}(w, \alpha),
     \qquad \nabla_\alpha \mathcal R = \nabla_\alpha \mathcal L_{val} - \nabla_\alpha
     \mathcal L_{train}

  at the current weights, both losses with the same ``key`` (so a sampling relaxation draws the same
  architecture for both, as the reference evaluates one sampled architecture on a train and a val
  batch). ``absolute=True`` gives :math:`|\mathcal L_{val} - \mathcal L_{train}|`, which is what
  NVlabs/unas' ``training_obj`` penalises (``--gen_error_alpha``, λ = 0.5).

  The reference's architecture objective is then :math:`\mathcal L_{train} + \lambda\,|\mathcal
  L_{val} - \mathcal L_{train}|`; in jaxnas the regulariser is added to the estimator's gradient
  (:math:`\nabla_\alpha \mathcal L_{val}` for first order), so the UNAS objective itself needs an
  estimator on the train loss.

  Args:
    train_loss, val_loss: ``loss(w, alphas, batch, key) -> (scalar, aux)``.
    w: network weights.
    alphas: architecture logits (differentiate the result with respect to these).
    train_batch, val_batch: the step's batches.
    key: PRNG key passed to both losses (may be None).
    absolute: take the absolute value.

  Returns:
    The scalar gap.
  """
  val, _ = val_loss(w, alphas, val_batch, key)
  train, _ = train_loss(w, alphas, train_batch, key)
  gap = val - train
  return _abs(gap) if absolute else gap


def _unas_abs_gap(train_loss, val_loss, w, alphas, train_batch, val_batch, key):
  """:func:`generalization_gap` with ``absolute=True`` (NVlabs/unas' ``|L_val − L_train|``)."""
  return generalization_gap(train_loss, val_loss, w, alphas, train_batch, val_batch, key,
                            absolute=True)


def scheduled_weight(regularizer, epoch, epochs: int):
  r"""The weight :math:`\lambda_t` of ``regularizer`` at ``epoch`` (0-based, may be traced).

  ``"constant"``: :math:`\lambda_t = \lambda`. ``"linear"``: :math:`\lambda_t = \lambda\, e / E`,
  from 0 at the first epoch, as β-DARTS' ``λ = λ_max·epoch/E`` (REFERENCE §7). ``"decay-half"``:
  :math:`\lambda_t = \lambda \max(0, 1 - 2e/E)`, from λ down to 0 at half the search and 0 after,
  as CDARTS' L1 weight (microsoft/Cream, CDARTS search).
  """
  if regularizer.schedule == "linear":
    return regularizer.weight * epoch / epochs
  if regularizer.schedule == "decay-half":
    return regularizer.weight * jnp.maximum(0.0, 1.0 - 2.0 * epoch / epochs)
  return regularizer.weight


REGULARIZERS: dict[str, RegularizerFn] = {
    "beta-decay": beta_decay,
    "zero-one": zero_one,
    "cdarts-l1": cdarts_l1,
    "pr-skip": pr_skip,
    "pr-nonskip": pr_nonskip,
    "pr-path": pr_path,
    "zero-one-cells": ddarts.zero_one_per_cell,  # D-DARTS: FairDARTS' L01 per cell, summed
    # Op-cost terms (ProxylessNAS' latency, SNAS' resource) and DrNAS' KL, from jaxnas.sampling.
    "expected-latency": sampling.expected_latency,
    "expected-flops": sampling.expected_flops,
    "dirichlet-kl": sampling.dirichlet_kl,
}

LOSS_REGULARIZERS: dict[str, RegularizerFn] = {
    "unas-gap": generalization_gap,
    "unas-abs-gap": _unas_abs_gap,
    # D-DARTS' ablation loss: constant (the authors') or differentiable ("-grad"), the cell
    # deactivated by random weights (default), zeros ("-zero") or a bypass ("-identity").
    **ddarts.ABLATION_REGULARIZERS,
}


def is_loss_regularizer(name: str) -> bool:
  """Whether ``name`` is a loss-based regulariser (in :data:`LOSS_REGULARIZERS`)."""
  if name not in REGULARIZERS and name not in LOSS_REGULARIZERS:
    raise unknown_name("regularizer", name, {**REGULARIZERS, **LOSS_REGULARIZERS})
  return name in LOSS_REGULARIZERS


def get(name: str) -> RegularizerFn:
  """The regulariser called ``name``, from either registry."""
  if name in REGULARIZERS:
    return REGULARIZERS[name]
  if name in LOSS_REGULARIZERS:
    return LOSS_REGULARIZERS[name]
  raise unknown_name("regularizer", name, {**REGULARIZERS, **LOSS_REGULARIZERS})
