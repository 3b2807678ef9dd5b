"""Regularisers: pure scalar terms on the architecture logits, added to the architecture objective.

A regulariser is a pure function ``fn(alphas) -> scalar`` of any alphas pytree. A recipe lists
:class:`jaxnas.methods.Regularizer` records ``(name, weight, schedule)``; the search step adds
``∇_α Σ_i λ_i(t) R_i(α)`` to the estimator's hypergradient before the architecture optimiser
(:func:`jaxnas.search.make_search_step`) and logs each ``R_i(α)`` and ``λ_i(t)``. Regularisers are
looked up by name in :data:`REGULARIZERS`; later ones (FairDARTS' zero-one loss, CDARTS' L1, DrNAS'
KL) register here under new names without touching the search loop.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxnas.errors import JaxnasError, unknown_name

__all__ = ["beta_decay", "scheduled_weight", "get", "REGULARIZERS", "RegularizerFn"]

RegularizerFn = Callable[[Any], jax.Array]


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
  leaves = jax.tree.leaves(alphas)
  if not leaves:
    raise JaxnasError("beta_decay needs at least one alphas array, got an empty pytree")
  per_edge = [jax.nn.logsumexp(a, axis=-1).reshape(-1) for a in leaves]
  return jnp.mean(jnp.concatenate(per_edge))


def scheduled_weight(regularizer, epoch, epochs: int):
  r"""The weight :math:`\lambda_t` of ``regularizer`` at ``epoch`` (0-based, may be traced).

  ``"constant"``: :math:`\lambda_t = \lambda`. ``"linear"``: :math:`\lambda_t = \lambda\, e / E`,
  from 0 at the first epoch, as β-DARTS' ``λ = λ_max·epoch/E`` (REFERENCE §7).
  """
  if regularizer.schedule == "linear":
    return regularizer.weight * epoch / epochs
  return regularizer.weight


REGULARIZERS: dict[str, RegularizerFn] = {
    "beta-decay": beta_decay,
}


def get(name: str) -> RegularizerFn:
  """The regulariser called ``name``."""
  if name not in REGULARIZERS:
    raise unknown_name("regularizer", name, REGULARIZERS)
  return REGULARIZERS[name]
