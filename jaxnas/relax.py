"""Relaxations: pure functions from architecture logits to mixing weights.

A relaxation has the signature ``relax(alphas, key, **options) -> weights``: ``alphas`` is any
pytree of arrays whose last axis indexes the candidate operations, and ``weights`` is a pytree of the
same structure and shapes. Search spaces only ever see ``weights``; they never hard-code softmax.

Two keyword arguments are supplied by the search step when a relaxation's signature names them:

- ``op_names``: the space's operation names in column order (e.g. :data:`jaxnas.derive.DARTS_OPS`),
  for relaxations that treat some operations specially (``none``, ``skip_connect``);
- ``progress``: how far the search is, ``epoch / epochs`` in ``[0, 1)`` (constant within an epoch,
  possibly traced); ``None`` outside a search (derivation, evaluation).

``key`` may be ``None``: deterministic evaluation. Relaxations are looked up by name with
:func:`get`.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxnas import sampling as _sampling
from jaxnas.errors import JaxnasError, unknown_name

__all__ = ["softmax", "sigmoid", "darts_minus", "aux_skip_beta", "pr_gates", "pr_tau",
           "gate_open_probability", "excluded_mask", "pc_darts", "node_input_counts", "get",
           "RELAXATIONS", "Relaxation", "BETA_DECAYS"]

Relaxation = Callable[..., Any]

SKIP = "skip_connect"
BETA_DECAYS = ("linear", "cosine", "slow_cosine")


def excluded_mask(op_names: Optional[Sequence[str]], exclude, *, default=None, who: str):
  """A boolean vector over ``op_names``, True where the operation is excluded, or None.

  ``exclude=None`` means ``default``: with ``default=("none",)`` that is ``"none"`` if the space has
  it (FairDARTS' seven operations have none, so nothing is excluded there) and nothing otherwise.
  An explicit ``exclude`` must name operations of ``op_names``.

  Raises:
    JaxnasError: if ``exclude`` is given without ``op_names``, names an unknown operation, or
      excludes every operation.
  """
  if exclude is None:
    if op_names is None or default is None:
      return None
    exclude = tuple(name for name in default if name in tuple(op_names))
  elif isinstance(exclude, str):
    exclude = (exclude,)
  exclude = tuple(exclude)
  if not exclude:
    return None
  if op_names is None:
    raise JaxnasError(f"{who} got exclude={list(exclude)} but no op_names; pass op_names (e.g. "
                      "jaxnas.derive.DARTS_OPS) so the excluded columns can be found")
  names = tuple(op_names)
  unknown = [name for name in exclude if name not in names]
  if unknown:
    raise JaxnasError(f"{who} cannot exclude {unknown}: not among the space's operations "
                      f"{list(names)}")
  if all(name in exclude for name in names):
    raise JaxnasError(f"{who} excludes every operation {list(names)}; leave at least one")
  return np.asarray([name in exclude for name in names])


def _check_width(a, op_names, who: str):
  if op_names is not None and a.shape[-1] != len(tuple(op_names)):
    raise JaxnasError(f"{who}: alphas have {a.shape[-1]} operation columns but op_names lists "
                      f"{len(tuple(op_names))} ({list(op_names)})")


def softmax(alphas, key=None, *, temperature: float = 1.0, op_names=None, exclude=None):
  r"""DARTS' continuous relaxation (Liu et al., 2019, eq. 2).

  .. math:: \bar o^{(i,j)}(x) = \sum_k \frac{\exp(\alpha^{(i,j)}_k / T)}{\sum_{k'} \exp(\alpha^{(i,j)}_{k'} / T)}\, o_k(x)

  With ``exclude``, the sums run over the operations not excluded and the excluded ones get weight
  exactly 0 (and their logits no gradient).

  Args:
    alphas: pytree of logits, operations on the last axis.
    key: unused (softmax is deterministic); accepted so every relaxation shares one signature.
    temperature: ``T`` above; 1 is DARTS.
    op_names: the operation names in column order; needed only with ``exclude``.
    exclude: operation names left out of the softmax; None (the default) excludes nothing, as DARTS
      (whose softmax includes ``none``).

  Returns:
    Mixing weights with the structure of ``alphas``, each row summing to one.

  Raises:
    JaxnasError: for an ``exclude`` without ``op_names`` or naming an unknown operation.
  """
  del key
  mask = excluded_mask(op_names, exclude, who="softmax")

  def one(a):
    _check_width(a, op_names, "softmax")
    if mask is None:
      return jax.nn.softmax(a / temperature, axis=-1)
    return jax.nn.softmax(a / temperature, axis=-1, where=~mask)

  return jax.tree.map(one, alphas)


def sigmoid(alphas, key=None, *, op_names=None, exclude=None):
  r"""FairDARTS' relaxation: every operation gated independently (Chu et al., ECCV 2020, eq. 3).

  .. math:: \bar o^{(i,j)}(x) = \sum_k \sigma(\alpha^{(i,j)}_k)\, o_k(x)

  not normalised over the operations, so operations do not compete for a shared unit of weight
  (``Network.forward`` in xiaomi-automl/FairDARTS).

  FairDARTS' (and NoisyDARTS') operation set has no ``none``. jaxnas keeps the space's columns
  (8 for DARTS, 5 for NAS-Bench-201) and gives the excluded operations weight exactly 0, which by
  default is ``none`` when ``op_names`` has it; the spaces skip the ``none`` term, which contributes
  exactly zero anyway, so the supernet is the reference's seven-operation supernet, and the
  ``none`` logit gets no gradient (apart from any weight decay on alphas).

  Args:
    alphas: pytree of logits, operations on the last axis.
    key: unused (deterministic); accepted so every relaxation shares one signature.
    op_names: the operation names in column order; without it no column is excluded.
    exclude: operation names given weight 0; None means ``("none",)`` where the space has ``none``.

  Returns:
    Mixing weights in :math:`(0, 1)` (0 at excluded operations) with the structure of ``alphas``.

  Raises:
    JaxnasError: for an ``exclude`` without ``op_names`` or naming an unknown operation.
  """
  del key
  mask = excluded_mask(op_names, exclude, default=("none",), who="sigmoid")

  def one(a):
    _check_width(a, op_names, "sigmoid")
    w = jax.nn.sigmoid(a)
    return w if mask is None else jnp.where(mask, jnp.zeros_like(w), w)

  return jax.tree.map(one, alphas)


def _is_number(x) -> bool:
  return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _check_progress(progress, who: str):
  if _is_number(progress) and not 0.0 <= progress <= 1.0:
    raise JaxnasError(f"{who} got progress={progress}; progress is epoch/epochs, between 0 and 1")


def aux_skip_beta(progress, *, beta: float = 1.0, decay: str = "linear",
                  beta_eval: float = 0.0):
  r"""DARTS−'s auxiliary-skip coefficient :math:`\beta_{aux}` at ``progress`` = epoch / epochs.

  ``src/utils.py:DecayScheduler`` of Meituan-AutoML/DARTS-, stepped once per epoch ``e`` of ``E``
  (``T_start = 0``, ``T_max = E``), with :math:`p = e / E`:

  - ``"linear"`` (the paper's setting): :math:`\beta_0 (1 - p)`, 1 at epoch 0 and
    :math:`\beta_0 / E` (0.02 for 50 epochs) at the last epoch: it never reaches 0 in the search;
  - ``"cosine"``: :math:`\beta_0 (1 + \cos \pi p) / 2`;
  - ``"slow_cosine"``: :math:`\beta_0 \cos(\pi p / 2)`.

  The reference's ``T_max`` is its own flag (default 50 = the epochs); jaxnas ties it to the
  search's epochs. ``progress=None`` (outside a search) gives ``beta_eval``.
  """
  if decay not in BETA_DECAYS:
    raise unknown_name("auxiliary-skip decay", decay, BETA_DECAYS)
  if progress is None:
    return beta_eval
  _check_progress(progress, "darts_minus")
  if decay == "linear":
    return beta * (1.0 - progress)
  if decay == "cosine":
    return beta * (1.0 + jnp.cos(jnp.pi * progress)) / 2.0
  return beta * jnp.cos(jnp.pi / 2.0 * progress)


def darts_minus(alphas, key=None, *, op_names=None, progress=None, beta: float = 1.0,
                decay: str = "linear", beta_eval: float = 0.0):
  r"""DARTS−: softmax plus an auxiliary skip connection outside it (Chu et al., ICLR 2021, eq. 3).

  .. math:: \bar o^{(i,j)}(x) = \beta_{aux}\, \mathrm{skip}(x)
     + \sum_k \mathrm{softmax}(\alpha^{(i,j)})_k\, o_k(x)

  on every edge, reduction edges included (``MixedOp.forward`` in Meituan-AutoML/DARTS-). jaxnas
  adds :math:`\beta_{aux}` to the ``skip_connect`` column of the mixing weights, so a space whose
  edges are linear in the weights computes exactly the sum above; each row then sums to
  :math:`1 + \beta_{aux}`. :math:`\beta_{aux}` follows :func:`aux_skip_beta` (linear 1 → 0,
  0.02 at the last of 50 epochs, as the reference).

  Departures from the reference:

  - At stride 2 (reduction edges reading the cell inputs) the reference's auxiliary path is a
    separate ``FactorizedReduce(affine=False)`` with its own weights; jaxnas reuses the skip
    operation's ``FactorizedReduce`` (same architecture, shared weights), so the auxiliary path
    costs no extra parameters. At stride 1 both are the identity, so nothing differs there.
  - Outside a search (``progress=None``: derivation, evaluation of the supernet) the coefficient
    is ``beta_eval``, 0 by default: the weights are then exactly ``softmax(alphas)``, which is what
    the reference derives its genotype from (``model.genotype()`` reads softmax(α) only) and what
    the final network keeps once the auxiliary path is gone. The reference evaluates its supernet
    between epochs with the current :math:`\beta`; pass ``beta_eval`` to do that.

  Args:
    alphas: pytree of logits, operations on the last axis.
    key: unused (deterministic).
    op_names: the operation names in column order (must include ``skip_connect``); the search step
      passes the space's.
    progress: epoch / epochs (may be traced), or None outside a search.
    beta: :math:`\beta_0` (``--skip_beta``, 1).
    decay: ``"linear"`` (the paper's), ``"cosine"`` or ``"slow_cosine"``.
    beta_eval: :math:`\beta_{aux}` when ``progress`` is None.

  Returns:
    Mixing weights with the structure of ``alphas``.

  Raises:
    JaxnasError: without ``op_names`` or ``skip_connect`` in them, for a negative ``beta`` or
      ``beta_eval``, an unknown ``decay``, or a number ``progress`` outside [0, 1].
  """
  del key
  if op_names is None:
    raise JaxnasError("darts_minus needs op_names to find the skip_connect column; pass "
                      "op_names=jaxnas.derive.DARTS_OPS (or the space's)")
  names = tuple(op_names)
  if SKIP not in names:
    raise JaxnasError(f"darts_minus adds its auxiliary skip to 'skip_connect', which op_names "
                      f"{list(names)} lacks")
  for label, value in (("beta", beta), ("beta_eval", beta_eval)):
    if not _is_number(value) or value < 0:
      raise JaxnasError(f"darts_minus {label} is {value!r}; it must be a number ≥ 0")
  b = aux_skip_beta(progress, beta=beta, decay=decay, beta_eval=beta_eval)
  skip = np.asarray([name == SKIP for name in names])

  def one(a):
    _check_width(a, names, "darts_minus")
    w = jax.nn.softmax(a, axis=-1)
    return w + jnp.where(skip, jnp.asarray(b, w.dtype), jnp.zeros((), w.dtype))

  return jax.tree.map(one, alphas)


# --- PR-DARTS' stochastic gates ------------------------------------------------------------------

PR_TAU_START, PR_TAU_END = 1.0, 0.1
PR_LIMIT_A, PR_LIMIT_B = -0.1, 1.1


def pr_tau(progress, *, tau_start: float = PR_TAU_START, tau_end: float = PR_TAU_END):
  r"""PR-DARTS' gate temperature: :math:`\tau = \tau_{start} - (\tau_{start} - \tau_{end})\,p`.

  The reference (``set_tau`` in its search script, ``--tau_max 1 --tau_min 0.1``) anneals over
  ``epoch / (E − 1)``, reaching 0.1 at the last epoch; jaxnas uses ``progress = epoch / E``, so at
  the last epoch τ is :math:`\tau_{end} + (\tau_{start} - \tau_{end}) / E` (0.118 for 50 epochs).
  ``progress=None`` (outside a search) gives :math:`\tau_{end}`.
  """
  if progress is None:
    return tau_end
  _check_progress(progress, "pr_tau")
  return tau_start - (tau_start - tau_end) * progress


def _check_limits(a, b, who: str):
  if not (_is_number(a) and _is_number(b) and a < 0 and b > 1):
    raise JaxnasError(f"{who} needs stretch limits a < 0 and b > 1 (the reference's -0.1, 1.1), "
                      f"got a={a!r}, b={b!r}")


def gate_open_probability(alphas, tau, *, a: float = PR_LIMIT_A, b: float = PR_LIMIT_B):
  r"""The probability that a hard-concrete gate is open (Louizos et al., ICLR 2018, eq. 12).

  .. math:: P(g \neq 0) = \sigma\big(\alpha - \tau \log(-a / b)\big)

  for each entry of each leaf; PR-DARTS' ``get_regularization`` ("expectation activation
  probability"). ``tau`` may be traced.
  """
  _check_limits(a, b, "gate_open_probability")
  shift = tau * math.log(-a / b)
  return jax.tree.map(lambda x: jax.nn.sigmoid(x - jnp.asarray(shift, x.dtype)), alphas)


def _gate_row_sample(alpha, key, tau, a, b, k, dropout):
  """Hard top-k mask and straight-through weights for one leaf (see :func:`pr_gates`)."""
  k_noise, k_drop, k_perm = jax.random.split(key, 3)
  tau = jnp.asarray(tau, alpha.dtype)
  noise = jax.random.logistic(k_noise, alpha.shape, alpha.dtype)  # log u − log(1 − u)
  s = jax.nn.sigmoid((alpha + noise) / tau)
  g = jnp.clip(s * (b - a) + a, 0.0, 1.0)
  score = g
  if dropout > 0:
    score = score - jax.random.bernoulli(k_drop, dropout, alpha.shape).astype(alpha.dtype)
  num_ops = alpha.shape[-1]
  perm = jax.random.permutation(k_perm, num_ops)  # random tie-breaking, one order per leaf
  _, top = jax.lax.top_k(score[..., perm], k)
  chosen = perm[top]
  mask = jnp.sum(jax.nn.one_hot(chosen, num_ops, dtype=alpha.dtype), axis=-2)
  return mask * (1.0 + (g - jax.lax.stop_gradient(g)))


def pr_gates(alphas, key=None, *, progress=None, k: int = 2, dropout: float = 0.4,
             tau_start: float = PR_TAU_START, tau_end: float = PR_TAU_END,
             a: float = PR_LIMIT_A, b: float = PR_LIMIT_B):
  r"""PR-DARTS' stochastic binary gates (Zhou et al., NeurIPS 2020, §4.1).

  Each operation has a hard-concrete gate (Louizos et al., ICLR 2018):

  .. math:: s = \sigma\big((\alpha + \log u - \log(1-u)) / \tau\big),\quad
     g = \min(1, \max(0, s (b - a) + a)),\quad u \sim U(0, 1)

  with :math:`\tau` from :func:`pr_tau` (1 → 0.1 over the search) and :math:`a = -0.1`,
  :math:`b = 1.1`. On each edge the ``k`` (2) operations with the largest :math:`g - d`,
  :math:`d \sim \mathrm{Bernoulli}(\text{dropout})` (0.4), are switched on, ties broken by a random
  order of the operations; the mixing weight is 1 for those and 0 for the others, with a
  straight-through gradient :math:`\partial g / \partial \alpha` for the chosen ones
  (``get_gumbel_prob`` and ``MixedOp.forward_prdarts`` in the authors' code: the value is the hard
  mask, the gradient is that of the gate, and operations not chosen are not run, so their
  logits get no gradient from the loss). Here ``weight = m · (1 + g − stop_gradient(g))``, whose
  value is the mask ``m`` exactly.

  Simplified from the reference: (i) it redraws the gates while all are closed (only when
  ``dropout`` is 0) and takes the random tie-break order only when ``k`` gates are fully open;
  jaxnas always breaks ties in a random order and never redraws; (ii) ``none`` is a candidate like
  any other operation, as in the reference (choosing it contributes zero).

  With ``key=None`` (derivation, evaluation) the weights are ``softmax(alphas)``: the reference
  derives its genotype from softmax(α) (``NASNetworkPRDARTS.genotype``, jaxnas' ``pr-darts-top2``
  rule); a supernet evaluated on them is not the gated network it was trained as.

  Args:
    alphas: pytree of logits, operations on the last axis.
    key: PRNG key (each leaf draws from its own split), or None.
    progress: epoch / epochs (may be traced); None gives τ = ``tau_end``.
    k: operations switched on per edge (2).
    dropout: probability of demoting each gate before the top-k (0.4, ``--dropout_pro``).
    tau_start, tau_end: the temperature schedule's ends.
    a, b: the hard-concrete stretch limits.

  Returns:
    Mixing weights with the structure of ``alphas``: ``k`` ones per edge (values), or softmax(α).

  Raises:
    JaxnasError: for ``k`` outside 1..number of operations, ``dropout`` outside [0, 1), or bad
      limits.
  """
  _check_limits(a, b, "pr_gates")
  if not _is_number(dropout) or not 0.0 <= dropout < 1.0:
    raise JaxnasError(f"pr_gates dropout is {dropout!r}; it must be in [0, 1)")
  if key is None:
    return jax.tree.map(lambda x: jax.nn.softmax(x, axis=-1), alphas)
  tau = pr_tau(progress, tau_start=tau_start, tau_end=tau_end)
  leaves, treedef = jax.tree.flatten(alphas)
  for x in leaves:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= x.shape[-1]:
      raise JaxnasError(f"pr_gates k is {k!r}; it must be a whole number from 1 to the "
                        f"{x.shape[-1]} operations of an edge")
  keys = jax.random.split(key, len(leaves))
  out = [_gate_row_sample(x, kk, tau, a, b, k, dropout) for x, kk in zip(leaves, keys)]
  return jax.tree.unflatten(treedef, out)


# --- PC-DARTS' edge normalisation ----------------------------------------------------------------


def node_input_counts(num_edges: int) -> tuple[int, ...]:
  """How many incoming edges each node has, for a cell of ``num_edges`` edges numbered node by node.

  Two layouts exist in jaxnas' spaces: DARTS (node ``i`` reads the two cell inputs and the ``i``
  earlier nodes, ``i + 2`` edges: 2, 3, 4, 5 for 14 edges) and NAS-Bench-201 (node ``i`` reads
  ``i + 1`` earlier nodes: 1, 2, 3 for 6 edges). Their totals ``n(n + 3)/2`` and ``n(n + 1)/2`` never
  coincide for ``n ≥ 1`` (equality needs ``(n − m + 1)(n + m + 2) = 2``), so the count decides.
  """
  for first in (2, 1):
    counts, total = [], 0
    while total < num_edges:
      counts.append(first + len(counts))
      total += counts[-1]
    if total == num_edges:
      return tuple(counts)
  raise JaxnasError(f"{num_edges} edge logits fit neither the DARTS cell (2, 3, 4, … inputs per "
                    "node) nor the NAS-Bench-201 cell (1, 2, 3, …); pass node_inputs")


def pc_darts(alphas, key=None, *, node_inputs: Optional[Sequence[int]] = None):
  r"""PC-DARTS: operation softmax and edge normalisation (Xu et al., ICLR 2020, eqs. 2 and 4).

  .. math:: w_{e,k} = rac{\exp lpha_{e,k}}{\sum_{k'} \exp lpha_{e,k'}}, \qquad
     b_e = rac{\exp eta_e}{\sum_{e' 	o i} \exp eta_{e'}}
     \quad	ext{for edge } e 	ext{ into node } i

  and node :math:`i` computes :math:`x_i = \sum_{e 	o i} b_e\, ar o_e(x)`. Leaves with two or more
  axes are operation logits (softmax over the last axis, as :func:`softmax`); one-axis leaves are
  edge logits :math:`eta`, normalised over each node's incoming edges, which are consecutive
  (``Network.forward`` in yuhuixu1993/PC-DARTS: slices [0:2], [2:5], [5:9], [9:14]). Both come back
  in one pytree of the input's structure; the spaces built with ``edge_normalization`` read the
  edge weights from it, :func:`jaxnas.derive.pc_darts_top2` derives from the products
  :math:`w_{e,k} b_e`.

  Args:
    alphas: pytree of logits: ``(edges, ops)`` leaves (α) and ``(edges,)`` leaves (β).
    key: unused (deterministic).
    node_inputs: incoming edges per node; None infers them from the edge count
      (:func:`node_input_counts`).

  Returns:
    Mixing weights with the structure of ``alphas``; each α row sums to 1, each node's β block
    sums to 1.

  Raises:
    JaxnasError: if ``node_inputs`` does not add up to a β leaf's length.
  """
  del key

  def one(a):
    if a.ndim >= 2:
      return jax.nn.softmax(a, axis=-1)
    counts = tuple(node_inputs) if node_inputs is not None else node_input_counts(a.shape[0])
    if sum(counts) != a.shape[0]:
      raise JaxnasError(f"node_inputs {list(counts)} add up to {sum(counts)} edges but the edge "
                        f"logits have {a.shape[0]}")
    starts = np.cumsum((0,) + counts[:-1])
    return jnp.concatenate([jax.nn.softmax(a[s:s + n]) for s, n in zip(starts, counts)])

  return jax.tree.map(one, alphas)


RELAXATIONS: dict[str, Relaxation] = {
    "pc-darts": pc_darts,
    "softmax": softmax,
    "sigmoid": sigmoid,
    "darts-minus": darts_minus,
    "pr-gates": pr_gates,
    # The sampling relaxations (GDAS, SNAS, D2NAS, DrNAS, ProxylessNAS), from jaxnas.sampling.
    "gumbel-hard": _sampling.gumbel_hard,
    "gumbel-soft": _sampling.gumbel_soft,
    "d2nas": _sampling.d2nas_gumbel,
    "dirichlet": _sampling.dirichlet,
    "binary-gates": _sampling.binary_gates,
}


def get(name: str, **options) -> Relaxation:
  """Returns the relaxation called ``name`` with ``options`` bound."""
  if name not in RELAXATIONS:
    raise unknown_name("relaxation", name, RELAXATIONS)
  fn = RELAXATIONS[name]
  return functools.partial(fn, **options) if options else fn
