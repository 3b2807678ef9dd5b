"""Sampling relaxations: Gumbel (GDAS, SNAS, D2NAS), Dirichlet (DrNAS), binary gates (ProxylessNAS).

Each relaxation has the signature of :mod:`jaxnas.relax` (``relax(alphas, key, **options) ->
mixing weights``) and draws its randomness from ``key``; with ``key=None`` (derivation, evaluation)
it is deterministic and returns ``softmax(alphas)`` (restricted to the operations it may sample),
the weights the references derive their genotypes from.

The hard relaxations (:func:`gumbel_hard`, :func:`d2nas_gumbel`, :func:`binary_gates`) return
weights that are exactly one-hot (or zero) in value with straight-through gradients; the sampled
supernet (:mod:`jaxnas.spaces.sampled`) then computes only the sampled operation(s) of each edge.
:func:`binary_gates` also says which second operation each edge computes, under the extra key
``"inactive"`` of the mixing weights.

Also here: the temperature schedule of the Gumbel family, the op-cost regularisers (SNAS' resource
term, ProxylessNAS' latency term) and DrNAS' Dirichlet KL regulariser, all pure functions of the
alphas; :mod:`jaxnas.relax` and :mod:`jaxnas.regularize` register them by name.
"""

from __future__ import annotations

import functools
import json
import math
import numbers
import pathlib
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxnas.errors import JaxnasError

__all__ = ["gumbel_tau", "gumbel_soft_sample", "straight_through", "gumbel_hard", "gumbel_soft",
           "d2nas_gumbel", "node_of_edges", "dirichlet_concentration", "dirichlet", "binary_gates",
           "load_cost_table", "expected_cost", "expected_latency",
           "expected_flops", "dirichlet_kl", "rescale_pair_logits", "DEFAULT_COST_TABLE",
           "INACTIVE"]

TAU_START, TAU_END = 10.0, 0.1
INACTIVE = "inactive"
DEFAULT_COST_TABLE = pathlib.Path(__file__).parent / "data" / "op_costs.json"


def _is_number(x) -> bool:
  return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _op_mask(op_names, exclude, width: int, who: str):
  """True at the columns that may be sampled (all when ``exclude`` is empty)."""
  exclude = (exclude,) if isinstance(exclude, str) else tuple(exclude or ())
  if not exclude:
    return np.ones(width, bool)
  if op_names is None:
    raise JaxnasError(f"{who} got exclude={list(exclude)} but no op_names; pass op_names (e.g. "
                      "jaxnas.derive.DARTS_OPS) so the excluded columns can be found")
  names = tuple(op_names)
  if len(names) != width:
    raise JaxnasError(f"{who}: alphas have {width} operation columns but op_names lists "
                      f"{len(names)} ({list(names)})")
  exclude = tuple(name for name in exclude if name in names)
  keep = np.asarray([name not in exclude for name in names])
  if not keep.any():
    raise JaxnasError(f"{who} excludes every operation {list(names)}; leave at least one")
  return keep


def _masked_softmax(a, keep):
  return jax.nn.softmax(a, axis=-1, where=jnp.asarray(keep)) * jnp.asarray(keep, a.dtype)


def gumbel_tau(progress, *, tau_start: float = TAU_START, tau_end: float = TAU_END):
  r"""The Gumbel temperature, linear from ``tau_start`` to ``tau_end``: :math:`\tau = \tau_0 - (\tau_0 - \tau_1) p`.

  GDAS (``exps/NAS-Bench-201-algos/GDAS.py`` in D-X-Y/AutoDL-Projects, τ 10 → 0.1) sets
  :math:`\tau = \tau_0 - (\tau_0 - \tau_1)\, e / (E - 1)` at epoch ``e`` of ``E``, reaching 0.1 at
  the last epoch; jaxnas uses ``progress = e / E`` (as every schedule in the search step), so the
  last epoch has :math:`\tau_1 + (\tau_0 - \tau_1)/E` (0.298 for 50 epochs). ``progress=None``
  (outside a search) gives ``tau_end``.
  """
  if not (_is_number(tau_start) and _is_number(tau_end) and tau_start > 0 and tau_end > 0):
    raise JaxnasError(f"Gumbel temperatures must be numbers > 0, got tau_start={tau_start!r}, "
                      f"tau_end={tau_end!r}")
  if progress is None:
    return tau_end
  if _is_number(progress) and not 0.0 <= progress <= 1.0:
    raise JaxnasError(f"gumbel_tau got progress={progress}; progress is epoch/epochs, in [0, 1]")
  return tau_start - (tau_start - tau_end) * progress


def gumbel_soft_sample(a, key, tau, keep=None):
  r"""One Gumbel-softmax sample per row (Jang et al.; Maddison et al., ICLR 2017).

  .. math:: \tilde A = \mathrm{softmax}\big((\log \mathrm{softmax}(\alpha) + g) / \tau\big),
     \quad g_k = -\log(-\log u_k),\ u_k \sim U(0, 1)

  Columns where ``keep`` is False get weight exactly 0 and are never the argmax. ``jax.random.gumbel``
  draws from a uniform bounded away from 0, so ``g`` is finite and no sample needs redrawing (GDAS'
  code redraws on inf/NaN).
  """
  keep = np.ones(a.shape[-1], bool) if keep is None else keep
  where = jnp.broadcast_to(jnp.asarray(keep), a.shape)
  g = jax.random.gumbel(key, a.shape, a.dtype)
  logp = jax.nn.log_softmax(a, axis=-1, where=where)
  z = jnp.where(where, (logp + g) / jnp.asarray(tau, a.dtype), -jnp.inf)
  return jax.nn.softmax(z, axis=-1, where=where) * where.astype(a.dtype)


def straight_through(soft):
  r"""``one_hot(argmax(soft)) + (soft − stop_gradient(soft))``: one-hot in value, gradient of ``soft``.

  GDAS' ``hardwts = one_h − probs.detach() + probs``; jaxnas adds the zero-valued difference last so
  the value is exactly one-hot in floating point.
  """
  hard = jax.nn.one_hot(jnp.argmax(soft, axis=-1), soft.shape[-1], dtype=soft.dtype)
  return hard + (soft - jax.lax.stop_gradient(soft))


def _split_leaves(alphas, key):
  leaves, treedef = jax.tree.flatten(alphas)
  keys = jax.random.split(key, len(leaves))
  return leaves, treedef, keys


def gumbel_hard(alphas, key=None, *, progress=None, tau_start: float = TAU_START,
                tau_end: float = TAU_END):
  r"""GDAS' hard Gumbel-softmax (Dong & Yang, CVPR 2019, eq. 3–5).

  For every edge, with :math:`\tau` from :func:`gumbel_tau` (10 → 0.1 over the search),

  .. math:: \tilde A = \mathrm{softmax}\big((\log \mathrm{softmax}(\alpha) + g)/\tau\big),\quad
     h = \mathrm{one\_hot}(\arg\max_k \tilde A_k) + \tilde A - \mathrm{sg}(\tilde A)

  so the forward value is the one-hot ``h`` and the gradient is the soft sample's. By the
  Gumbel-max property the sampled index is distributed as :math:`\mathrm{softmax}(\alpha)` whatever
  :math:`\tau`. Each alpha leaf draws one sample (one ``(14, 8)`` sample for all normal cells and
  one for all reduction cells; GDAS shares one sample across all its cells, which are of one type).

  ``key=None`` gives ``softmax(alphas)``: GDAS derives its genotype from the alphas (argmax per
  edge on NAS-Bench-201, top-2 edges by their strongest operation on the DARTS space).

  Args:
    alphas: pytree of logits, operations on the last axis.
    key: PRNG key, or None.
    progress: epoch / epochs (may be traced), or None.
    tau_start, tau_end: the temperature schedule's ends (GDAS: 10, 0.1).

  Returns:
    Straight-through one-hot weights with the structure of ``alphas``, or ``softmax(alphas)``.
  """
  tau = gumbel_tau(progress, tau_start=tau_start, tau_end=tau_end)
  if key is None:
    return jax.tree.map(lambda a: jax.nn.softmax(a, axis=-1), alphas)
  leaves, treedef, keys = _split_leaves(alphas, key)
  out = [straight_through(gumbel_soft_sample(a, k, tau)) for a, k in zip(leaves, keys)]
  return jax.tree.unflatten(treedef, out)


def gumbel_soft(alphas, key=None, *, progress=None, tau_start: float = TAU_START,
                tau_end: float = TAU_END):
  r"""SNAS' soft Gumbel-softmax relaxation (Xie, Zheng, Liu, Lin, ICLR 2019, eq. 3).

  .. math:: Z = \mathrm{softmax}\big((\log \mathrm{softmax}(\alpha) + g)/\tau\big)

  on every edge, one sample per alpha leaf, all operations computed with the soft weights ``Z``
  (SNAS trains the whole supernet with relaxed one-hot samples; its gradient in α is the
  pathwise gradient of that sample). Where jaxnas follows the paper and where not:

  - follows: the concrete (Gumbel-softmax) relaxation of the one-hot architecture variable, the
    search loss ``E_Z[L(Z)]`` estimated with one sample per step, weights and alphas trained on
    the same objective by gradient descent;
  - departs: the temperature follows the Gumbel family's linear schedule of DESIGN §4
    (:func:`gumbel_tau`, 10 → 0.1) — SNAS' own annealing schedule was not verified
    (REFERENCE lists SNAS as not researched); SNAS updates α and w on the same training batch,
    jaxnas' step uses its val batch for α as every recipe; the resource term is the closed-form
    expectation :func:`expected_flops` rather than SNAS' score-function estimate (see there).

  ``key=None`` gives ``softmax(alphas)`` (derivation: SNAS keeps the most likely operation).
  """
  tau = gumbel_tau(progress, tau_start=tau_start, tau_end=tau_end)
  if key is None:
    return jax.tree.map(lambda a: jax.nn.softmax(a, axis=-1), alphas)
  leaves, treedef, keys = _split_leaves(alphas, key)
  out = [gumbel_soft_sample(a, k, tau) for a, k in zip(leaves, keys)]
  return jax.tree.unflatten(treedef, out)


# --- D2NAS: one operation per edge, exactly two input edges per node ----------------------------

def node_of_edges(num_edges: int):
  """Which node each edge enters: the DARTS cell (14 edges) or the NAS-Bench-201 cell (6)."""
  from jaxnas.derive import NB201_EDGES, darts_edge_sources  # noqa: PLC0415  (no import cycle)
  if num_edges == len(darts_edge_sources()):
    return np.asarray([to for to, _ in darts_edge_sources()])
  if num_edges == len(NB201_EDGES):
    return np.asarray([to for to, _ in NB201_EDGES])
  raise JaxnasError(f"d2nas samples input edges of DARTS (14 edges) or NAS-Bench-201 (6 edges) "
                    f"cells; these alphas have {num_edges} edges")


def _edge_gates(beta, key, tau, nodes, k: int):
  r"""Straight-through gates: exactly ``min(k, inputs)`` edges open per node, drawn without replacement.

  Gumbel-top-k: the ``k`` largest of :math:`\beta_e + g_e` among a node's inputs are a sample without
  replacement from :math:`\mathrm{softmax}(\beta)` over them (Kool et al., ICML 2019). Gradient:
  that of :math:`\min(k, n)\cdot\mathrm{softmax}((\beta + g)/\tau)` over the node's inputs.
  """
  g = jax.random.gumbel(key, beta.shape, beta.dtype)
  z = beta + g
  gates = []
  for node in np.unique(nodes):
    cols = np.flatnonzero(nodes == node)
    kk = min(k, len(cols))
    zn = z[cols]
    hard = jnp.sum(jax.nn.one_hot(jax.lax.top_k(zn, kk)[1], len(cols), dtype=beta.dtype), axis=0)
    soft = kk * jax.nn.softmax(zn / jnp.asarray(tau, beta.dtype))
    gates.append(hard + (soft - jax.lax.stop_gradient(soft)))
  return jnp.concatenate(gates)


def d2nas_gumbel(alphas, key=None, *, op_names=None, progress=None, edges_per_node: int = 2,
                 exclude=("none",), tau_start: float = TAU_START, tau_end: float = TAU_END):
  r"""D2NAS' sampling: a hard Gumbel-softmax operation per edge and exactly two input edges per node.

  Per edge, the operation is sampled as :func:`gumbel_hard` (one-hot value, soft-sample gradient).
  Per node, ``edges_per_node`` (2) of its input edges are kept, sampled without replacement from
  :math:`\mathrm{softmax}(\beta)` over the node's inputs by Gumbel-top-k, with straight-through gates
  (value 1 or 0). The mixing weight of operation k on edge e is
  :math:`\mathrm{gate}_e \cdot h_{e,k}`, so an edge that is not kept is an all-zero row (the sampled
  supernet computes nothing there) and every node sums exactly two sampled operations, the shape of
  the final DARTS cell. Nodes with fewer inputs (NAS-Bench-201's node 1) keep all of them.

  Choices where the paper is silent (jaxnas'):

  - the edge logit is :math:`\beta_e = \log \sum_{k \notin \text{exclude}} e^{\alpha_{e,k}}`, the
    total unnormalised weight of the edge's operations, so no extra parameters are needed and the
    derivation rule's edge ranking (strongest operation) and the sampler agree in spirit;
  - ``none`` is excluded from the operations by default: a sampled ``none`` would break the
    two-inputs-per-node guarantee;
  - one temperature :func:`gumbel_tau` (10 → 0.1) for both samplers; one sample per alpha leaf.

  The paper's branch cells (whose architecture alone is updated) are a space option,
  ``branch_cells`` (:mod:`jaxnas.spaces.branch`, recipe ``d2nas-branch``); this sampler is the
  same with and without them.

  ``key=None`` gives ``softmax(alphas)`` over the non-excluded operations (derivation by top-2).
  """
  if isinstance(edges_per_node, bool) or not isinstance(edges_per_node, int) or edges_per_node < 1:
    raise JaxnasError(f"d2nas edges_per_node is {edges_per_node!r}; it must be a whole number ≥ 1")
  tau = gumbel_tau(progress, tau_start=tau_start, tau_end=tau_end)
  leaves, treedef = jax.tree.flatten(alphas)
  keeps = [_op_mask(op_names, exclude, a.shape[-1], "d2nas") for a in leaves]
  if key is None:
    return jax.tree.unflatten(treedef, [_masked_softmax(a, m) for a, m in zip(leaves, keeps)])
  keys = jax.random.split(key, len(leaves))
  out = []
  for a, keep, k in zip(leaves, keeps, keys):
    k_op, k_edge = jax.random.split(k)
    ops = straight_through(gumbel_soft_sample(a, k_op, tau, keep))
    beta = jax.nn.logsumexp(a, axis=-1, where=jnp.broadcast_to(jnp.asarray(keep), a.shape))
    gates = _edge_gates(beta, k_edge, tau, node_of_edges(a.shape[0]), edges_per_node)
    out.append(gates[:, None] * ops)
  return jax.tree.unflatten(treedef, out)


# --- DrNAS: Dirichlet mixing weights --------------------------------------------------------------

def dirichlet_concentration(alphas):
  r"""DrNAS' concentration :math:`\beta = \mathrm{ELU}(\alpha) + 1` (Chen et al., ICLR 2021), leaf by leaf."""
  return jax.tree.map(lambda a: jax.nn.elu(a) + jnp.ones((), a.dtype), alphas)


def _prune_mask(a, keep, k, progress, prune_at):
  """``keep`` and, once ``progress ≥ prune_at``, only the ``k`` largest alphas of each row."""
  keep_b = jnp.broadcast_to(jnp.asarray(keep), a.shape)
  if k is None or progress is None:
    return keep_b
  most = int(np.min(np.sum(keep, axis=-1)))
  if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= most:
    raise JaxnasError(f"dirichlet prune_to is {k!r}; it must be a whole number from 1 to the "
                      f"{most} operations sampled")
  top = jax.lax.top_k(jnp.where(keep_b, a, -jnp.inf), k)[1]
  top_mask = jnp.sum(jax.nn.one_hot(top, a.shape[-1], dtype=a.dtype), axis=-2) > 0
  return jnp.where(jnp.asarray(progress) >= prune_at, top_mask & keep_b, keep_b)


def _stage_masks(alphas, keep_mask, keeps):
  """``keeps`` (per leaf) and'ed with a fixed per-edge mask ``keep_mask`` (``(name, rows)`` pairs)."""
  if keep_mask is None:
    return keeps
  masks = dict(keep_mask)
  if not isinstance(alphas, dict) or set(masks) != set(alphas):
    raise JaxnasError(f"dirichlet keep_mask has entries {sorted(masks)} but the alphas "
                      f"{sorted(alphas) if isinstance(alphas, dict) else type(alphas).__name__}")
  leaves = jax.tree.leaves({k: np.asarray(masks[k], bool) for k in alphas})
  out = []
  for keep, m, a in zip(keeps, leaves, jax.tree.leaves(alphas)):
    if m.shape != a.shape:
      raise JaxnasError(f"dirichlet keep_mask has shape {m.shape} for alphas of shape {a.shape}")
    out.append(np.broadcast_to(keep, m.shape) & m)
  return out


def dirichlet(alphas, key=None, *, op_names=None, progress=None, exclude=("none",),
              prune_to: Optional[int] = None, prune_at: float = 0.5, keep_mask=None):
  r"""DrNAS' Dirichlet relaxation (Chen, Wang, Cheng, Tang, Hsieh, ICLR 2021, §3).

  .. math:: \theta_e \sim \mathrm{Dir}(\beta_e),\quad \beta_e = \mathrm{ELU}(\alpha_e) + 1

  one reparameterised sample per edge and per alpha leaf (shared by all cells of a type, as
  ``utils.py:process_step_vector`` in xiangning-chen/DrNAS). ``jax.random.dirichlet`` draws
  normalised gamma variates whose gradient in the concentration is the implicit
  reparameterisation gradient (``jax.random.gamma``'s JVP), as ``torch.distributions.Dirichlet
  .rsample``; :mod:`tests.test_drnas` checks it against finite differences of the closed-form
  expectation. Excluded operations (``none`` by default, as the reference's DARTS-space operation
  set) get weight 0 and the others are renormalised, which by the Dirichlet's aggregation property
  is exactly a sample of :math:`\mathrm{Dir}(\beta)` over the kept operations.

  The progressive schedule of the reference (2 stages × 25 epochs: partial channels K 6 → 4,
  operations per edge 7 → 4, arch steps from stage-local epoch 10) is the recipe
  ``drnas-progressive``: a staged search (:mod:`jaxnas.progressive`) whose second stage is a
  rebuilt supernet; at the boundary the mask of the 4 largest alphas per edge is fixed once, as
  the reference, and passed here as ``keep_mask`` (``(cell type, rows of booleans)`` pairs):
  operations outside it get weight 0 and the others are renormalised (``utils.py:
  process_step_vector``), which by the aggregation property is a sample of the Dirichlet over the
  kept operations. The one-stage approximation stays available: ``prune_to=k`` keeps, once
  ``progress ≥ prune_at``, only the ``k`` largest alphas of each edge, recomputed from the current
  alphas at every step (recipe ``drnas``, which also runs on NAS-Bench-201).

  ``key=None`` gives ``softmax(alphas)`` over the kept operations: the reference derives its
  genotype from softmax(α), not from the Dirichlet mean.
  """
  leaves, treedef = jax.tree.flatten(alphas)
  keeps = [_op_mask(op_names, exclude, a.shape[-1], "dirichlet") for a in leaves]
  keeps = _stage_masks(alphas, keep_mask, keeps)
  masks = [_prune_mask(a, m, prune_to, progress, prune_at) for a, m in zip(leaves, keeps)]
  if key is None:
    return jax.tree.unflatten(treedef, [
        jax.nn.softmax(a, axis=-1, where=m) * m.astype(a.dtype) for a, m in zip(leaves, masks)])
  keys = jax.random.split(key, len(leaves))
  out = []
  for a, m, k in zip(leaves, masks, keys):
    # The sample restricted to the kept operations does not depend on the others' concentrations:
    # stop their gradient, so that it is exactly 0 rather than rounding noise that Adam amplifies.
    a = jnp.where(m, a, jax.lax.stop_gradient(a))
    conc = jax.nn.elu(a) + jnp.ones((), a.dtype)
    theta = jax.random.dirichlet(k, conc, dtype=a.dtype) * m.astype(a.dtype)
    out.append(theta / jnp.sum(theta, axis=-1, keepdims=True))
  return jax.tree.unflatten(treedef, out)


def dirichlet_kl(alphas, *, op_names=None, exclude=("none",), prior: float = 1.0):
  r"""DrNAS' optional KL regulariser :math:`\sum_e \mathrm{KL}(\mathrm{Dir}(\beta_e)\,\|\,\mathrm{Dir}(\beta_0))`.

  .. math:: \mathrm{KL} = \log\Gamma(\textstyle\sum_k\beta_k) - \sum_k \log\Gamma(\beta_k)
     - \log\Gamma(K\beta_0) + K\log\Gamma(\beta_0)
     + \sum_k (\beta_k - \beta_0)\big(\psi(\beta_k) - \psi(\textstyle\sum_j\beta_j)\big)

  over the kept operations (``none`` excluded by default), :math:`\beta = \mathrm{ELU}(\alpha) + 1`,
  prior concentration :math:`\beta_0` = ``prior`` (1, uniform), summed over the edges of every leaf
  (``_get_kl_reg`` of the reference's DARTS-space ``model_search.py``, ``reg_type='kl'``). The
  reference then sets the arch optimiser's weight decay to 0; a recipe that adds this term should
  do the same (``--add-regularizer dirichlet-kl:W`` keeps the recipe's optimiser).
  """
  from jax.scipy.special import digamma, gammaln  # noqa: PLC0415
  total = []
  for a in jax.tree.leaves(alphas):
    keep = jnp.asarray(_op_mask(op_names, exclude, a.shape[-1], "dirichlet_kl"))
    beta = jax.nn.elu(a) + jnp.ones((), a.dtype)
    b0 = jnp.asarray(prior, a.dtype)
    kf = jnp.sum(keep).astype(a.dtype)
    s = jnp.sum(jnp.where(keep, beta, 0), axis=-1)
    kl = (gammaln(s) - jnp.sum(jnp.where(keep, gammaln(beta), 0), axis=-1)
          - gammaln(kf * b0) + kf * gammaln(b0)
          + jnp.sum(jnp.where(keep, (beta - b0) * (digamma(beta) - digamma(s)[..., None]), 0),
                    axis=-1))
    total.append(jnp.sum(kl))
  return sum(total)


# --- ProxylessNAS: binary gates over two sampled paths ------------------------------------------

def _two_path_row(a, key):
  """Pair (without replacement, ∝ softmax(α)), active member (∝ softmax over the pair), gates."""
  k_pair, k_active = jax.random.split(key)
  g = jax.random.gumbel(k_pair, a.shape, a.dtype)
  pair = jax.lax.top_k(a + g, 2)[1]  # (..., 2): Gumbel-top-2 = multinomial without replacement
  in_pair = jnp.sum(jax.nn.one_hot(pair, a.shape[-1], dtype=a.dtype), axis=-2) > 0
  p_pair = jax.nn.softmax(a, axis=-1, where=in_pair) * in_pair.astype(a.dtype)
  first = jnp.take_along_axis(p_pair, pair[..., :1], axis=-1)[..., 0]
  pick_first = jax.random.uniform(k_active, first.shape, a.dtype) < jax.lax.stop_gradient(first)
  active = jnp.where(pick_first, pair[..., 0], pair[..., 1])
  inactive = jnp.where(pick_first, pair[..., 1], pair[..., 0])
  hard = jax.nn.one_hot(active, a.shape[-1], dtype=a.dtype)
  gates = hard + (p_pair - jax.lax.stop_gradient(p_pair))
  return gates, jax.nn.one_hot(inactive, a.shape[-1], dtype=a.dtype)


def binary_gates(alphas, key=None):
  r"""ProxylessNAS' binary gates with two sampled paths (Cai, Zhu, Han, ICLR 2019, §3.2.1).

  Per edge: two distinct operations are drawn from the multinomial over
  :math:`p = \mathrm{softmax}(\alpha)` without replacement (Gumbel-top-2, equivalent to
  ``torch.multinomial(p, 2, replacement=False)`` of the reference's ``MixedEdge``); of the pair
  :math:`\{a, b\}` one is active with probability :math:`\tilde p_j = e^{\alpha_j}/(e^{\alpha_a}
  + e^{\alpha_b})`. The gates are one-hot at the active operation in value, with the gradient of
  :math:`\tilde p` (zero outside the pair), so that

  .. math:: \frac{\partial L}{\partial \alpha_i} = \sum_{j \in \{a,b\}} \frac{\partial L}{\partial g_j}
     \tilde p_j (\delta_{ij} - \tilde p_i),\quad i \in \{a, b\};\qquad 0 \text{ otherwise}

  the paper's re-normalised two-path gradient (``set_arch_param_grad``). The sampled supernet
  computes exactly the two operations (``∂L/∂g_j = ⟨∂L/∂x, o_j(x)⟩`` needs both); the inactive one
  is named, one-hot, under the mixing weights' extra key ``"inactive"``. After each arch step the
  recipe shifts the pair's two logits back (:func:`rescale_pair_logits`, the reference's
  ``rescale_updated_arch_param``), so the unsampled operations' probabilities do not move.

  ``key=None`` gives ``softmax(alphas)`` (the reference keeps the most likely path).
  """
  if key is None:
    return jax.tree.map(lambda a: jax.nn.softmax(a, axis=-1), alphas)
  if not isinstance(alphas, dict) or INACTIVE in alphas:
    raise JaxnasError("binary_gates needs alphas as a dict of arrays keyed by cell type (e.g. "
                      f"'normal', 'reduce'; not {INACTIVE!r})")
  leaves, treedef, keys = _split_leaves(alphas, key)
  rows = [_two_path_row(a, k) for a, k in zip(leaves, keys)]
  gates = jax.tree.unflatten(treedef, [g for g, _ in rows])
  inactive = jax.tree.unflatten(treedef, [i for _, i in rows])
  return {**gates, INACTIVE: inactive}


def rescale_pair_logits(old_alphas, new_alphas, mixing):
  r"""ProxylessNAS' rescaling of the two updated logits after an arch step (Cai et al., ICLR 2019).

  For each edge with sampled pair :math:`\{a, b\}` (the active operation, where the gates are 1,
  and ``mixing["inactive"]``'s),

  .. math:: \delta = \log\frac{e^{\alpha'_a} + e^{\alpha'_b}}{e^{\alpha_a} + e^{\alpha_b}},
     \qquad \alpha''_j = \alpha'_j - \delta\ (j \in \{a, b\}),\quad
     \alpha''_k = \alpha'_k\ \text{otherwise}

  with :math:`\alpha` before and :math:`\alpha'` after the optimiser's update: the pair's total
  :math:`e^{\alpha_a} + e^{\alpha_b}` is restored, so where the update moved only the pair, every
  other operation keeps its probability :math:`\mathrm{softmax}(\alpha)_k` and the pair only
  shares its mass anew (``MixedEdge.rescale_updated_arch_param`` in mit-han-lab/proxylessnas,
  called after each arch step). Logits outside the pair are left as the update set them (the
  latency term moves them too; the reference does the same).

  Args:
    old_alphas, new_alphas: dicts of ``(..., K)`` logits keyed by cell type.
    mixing: :func:`binary_gates`' sample for this step (gates and ``"inactive"``).

  Returns:
    ``new_alphas`` with each edge's pair shifted.
  """
  out = {}
  for kind, new in new_alphas.items():
    old = old_alphas[kind]
    pair = (jnp.round(mixing[kind]) + mixing[INACTIVE][kind]) > 0
    delta = (jax.nn.logsumexp(new, axis=-1, where=pair, keepdims=True)
             - jax.nn.logsumexp(old, axis=-1, where=pair, keepdims=True))
    out[kind] = jnp.where(pair, new - delta, new)
  return out


# --- Op-cost terms: ProxylessNAS' expected latency, SNAS' resource constraint -------------------

@functools.lru_cache(maxsize=8)
def _read_table(path: str):
  try:
    return json.loads(pathlib.Path(path).read_text())
  except (OSError, ValueError) as e:
    raise JaxnasError(f"cannot read the op-cost table {path}: {e}; write one with "
                      "experiments/latency_table.py") from None


def load_cost_table(path=None) -> dict:
  """The op-cost table (``experiments/latency_table.py`` writes one); the packaged default if None."""
  return _read_table(str(DEFAULT_COST_TABLE if path is None else path))


def _space_of(op_names):
  from jaxnas.derive import DARTS_OPS, NB201_OPS  # noqa: PLC0415
  names = tuple(op_names or ())
  if names == tuple(DARTS_OPS):
    return "darts"
  if names == tuple(NB201_OPS):
    return "nb201"
  raise JaxnasError(f"the op-cost table covers the darts and nb201 operation sets, not "
                    f"{list(names)}")


def expected_cost(alphas, *, op_names=None, metric: str = "latency_ms", table=None):
  r"""Expected op cost under :math:`p = \mathrm{softmax}(\alpha)`, normalised per cell type.

  .. math:: R(\alpha) = \frac{1}{|\mathcal E|}\sum_{e} \sum_k p_{e,k}\, \frac{c_{t(e),k}}{\max_j c_{t(e),j}}

  with :math:`c_{t,k}` the cost of operation k on an edge of cell type t (``normal``/``reduce``
  for DARTS, ``cell`` for NAS-Bench-201) from the table's ``metric`` (``latency_ms`` measured, or
  ``flops`` from XLA's cost analysis; :func:`load_cost_table`). Dividing by the most expensive
  operation makes the term dimensionless, so its weight does not depend on the machine that
  measured the table; the mean is over all edges of all leaves.

  - ProxylessNAS (Cai et al., ICLR 2019, eq. 4): :math:`\mathbb E[\mathrm{LAT}] = \sum_k p_k F(o_k)`
    per edge, added as :math:`\lambda_2 \mathbb E[\mathrm{LAT}]`, with latencies from a measured
    lookup table, as here.
  - SNAS (Xie et al., ICLR 2019, §2.4): the resource term :math:`\mathbb E_Z[C(Z)]` with
    :math:`C(Z) = \sum_{e,k} Z_{e,k} c_k` linear in the one-hot Z; SNAS estimates its gradient by
    the score function, jaxnas differentiates the closed-form expectation above (the same
    expectation, no variance).
  """
  if metric not in ("latency_ms", "flops"):
    raise JaxnasError(f"expected_cost metric is {metric!r}; choose latency_ms or flops")
  table = load_cost_table() if table is None else table
  space = _space_of(op_names)
  if space not in table or metric not in table[space]:
    raise JaxnasError(f"the op-cost table has no {metric} for the {space} space; write one with "
                      "experiments/latency_table.py --space " + space)
  costs = table[space][metric]
  if not isinstance(alphas, dict):
    raise JaxnasError("expected_cost needs alphas as a dict keyed by cell type")
  terms, edges = [], 0
  for cell, a in alphas.items():
    if cell not in costs:
      raise JaxnasError(f"the op-cost table has no {metric} for cell type {cell!r} of the {space} "
                        f"space (it has {sorted(costs)})")
    c = np.asarray([float(costs[cell][name]) for name in op_names])
    c = jnp.asarray(c / c.max(), a.dtype)
    terms.append(jnp.sum(jax.nn.softmax(a, axis=-1) * c))
    edges += math.prod(a.shape[:-1])
  return sum(terms) / jnp.asarray(edges, terms[0].dtype)


def expected_latency(alphas, *, op_names=None):
  """:func:`expected_cost` with measured latencies (ProxylessNAS)."""
  return expected_cost(alphas, op_names=op_names, metric="latency_ms")


def expected_flops(alphas, *, op_names=None):
  """:func:`expected_cost` with FLOPs (SNAS' resource constraint)."""
  return expected_cost(alphas, op_names=op_names, metric="flops")

