"""Perturbations of the mixing weights that only the weight step sees.

A perturbation is a pure function ``fn(weights, key, *, epsilon, **options) -> weights`` on the
mixing weights (the output of a relaxation, e.g. ``softmax(alphas)``), with the structure and shapes
of its input. :func:`jaxnas.search.make_search_step` wraps the recipe's relaxation for the weight
step only, as ``lambda a, k: perturb(relaxation(a, k), k_perturb, epsilon=eps_t)``; the
architecture step uses the unperturbed relaxation (SDARTS, Chen & Hsieh, ICML 2020). ``eps_t``
follows :func:`epsilon_schedule`. A perturbation that takes a ``loss_fn`` keyword (an attack, such as
:func:`pgd_attack`) receives ``loss_fn(mixing_weights) -> scalar``, the weight step's training loss
at the current weights and train batch as a function of the mixing weights. Perturbations are
looked up by name in :data:`PERTURBATIONS`.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxnas.errors import JaxnasError, unknown_name

__all__ = ["simplex_clip", "uniform_noise", "random_smoothing", "pgd_attack", "epsilon_schedule",
           "get", "PERTURBATIONS", "EPSILON_START", "EPSILON_END", "Perturbation"]

Perturbation = Callable[..., Any]

# SDARTS' ε schedule (xiangning-chen/SmoothDARTS, train_search.py): 0.03 → 0.3, linear per epoch.
EPSILON_START = 0.03
EPSILON_END = 0.3


def simplex_clip(w: jax.Array) -> jax.Array:
  r"""SDARTS' projection of each row (last axis) back onto the probability simplex.

  As ``Network.clip`` in xiangning-chen/SmoothDARTS: clamp to :math:`[0, 1]`; if a row is then all
  zero, set the entry at the argmax of the row *before* clamping to 1 (ties to the lowest index);
  divide by the row sum. This is not the Euclidean projection onto the simplex; it is the
  reference's.

  Args:
    w: array, rows on the last axis.

  Returns:
    An array of the same shape and dtype whose rows are non-negative and sum to one.
  """
  best = jax.nn.one_hot(jnp.argmax(w, axis=-1), w.shape[-1], dtype=w.dtype)
  clamped = jnp.clip(w, 0, 1)
  clamped = jnp.where(jnp.sum(clamped, axis=-1, keepdims=True) == 0, best, clamped)
  return clamped / jnp.sum(clamped, axis=-1, keepdims=True)


def uniform_noise(weights, key, *, epsilon):
  r"""Independent :math:`u \sim U(-\epsilon, \epsilon)` for every entry of every leaf.

  Leaf ``i`` (in ``jax.tree.leaves`` order) draws from ``jax.random.split(key, n)[i]``.
  ``epsilon`` may be traced.
  """
  leaves, treedef = jax.tree.flatten(weights)
  keys = jax.random.split(key, len(leaves))
  noise = []
  for w, k in zip(leaves, keys):
    eps = jnp.asarray(epsilon, w.dtype)
    noise.append(jax.random.uniform(k, w.shape, w.dtype, minval=-eps, maxval=eps))
  return jax.tree.unflatten(treedef, noise)


def random_smoothing(weights, key, *, epsilon):
  r"""SDARTS-RS' random smoothing (Chen & Hsieh, ICML 2020).

  .. math:: \tilde A = \mathrm{clip}(A + u), \qquad u_{e,k} \sim U(-\epsilon, \epsilon)

  with :math:`A` the mixing weights and clip :func:`simplex_clip` per edge, as
  ``Random_alpha`` followed by ``clip`` in xiangning-chen/SmoothDARTS.

  Args:
    weights: pytree of mixing weights, operations on the last axis.
    key: PRNG key; the noise is a deterministic function of it (:func:`uniform_noise`).
    epsilon: the half-width ε (may be traced).

  Returns:
    Perturbed mixing weights, each row on the simplex.
  """
  noise = uniform_noise(weights, key, epsilon=epsilon)
  return jax.tree.map(lambda w, u: simplex_clip(w + u), weights, noise)


def _project(candidate, center, epsilon):
  """Clamp ``candidate`` to the L∞ ball of radius ε around ``center``, then :func:`simplex_clip`."""
  eps = jnp.asarray(epsilon, center.dtype)
  return simplex_clip(center + jnp.clip(candidate - center, -eps, eps))


def pgd_attack(weights, key, *, epsilon, loss_fn, steps: int = 7, step_size=None,
               random_start: bool = True):
  r"""SDARTS-ADV's L∞ PGD attack on the mixing weights (Chen & Hsieh, ICML 2020, eq. 6).

  With :math:`A` the mixing weights and :math:`\mathcal L(\cdot)` = ``loss_fn`` (the train-batch
  loss at the current network weights), as ``Linf_PGD_alpha`` in xiangning-chen/SmoothDARTS:

  .. math::
     	ilde A_0 = \mathrm{clip}(A + u),\ u \sim U(-\epsilon, \epsilon); \qquad
     	ilde A_{t+1} = \mathrm{clip}ig(A + \Pi_{[-\epsilon, \epsilon]}(	ilde A_t
       + \eta\, \mathrm{sign}\, 
abla \mathcal L(	ilde A_t) - A)ig)

  for ``steps`` (7) steps of size :math:`\eta = 2\epsilon/7`, where clip is :func:`simplex_clip`
  per edge. If :math:`\mathcal L(	ilde A_T) < \mathcal L(A)` the attack failed and :math:`A` itself
  is returned (the reference's revert). The attack point is constant to the caller: no gradient flows
  back through it (``stop_gradient``), as the reference's in-place ``.data`` updates.

  Departure from the reference: the reference switches the network to eval mode for the attack, so
  its batch norms use running statistics; jaxnas attacks the loss that the weight step then
  minimises (``loss_fn``, batch statistics as in every search step), which keeps the attack a pure
  function of the step's inputs.

  Args:
    weights: pytree of mixing weights :math:`A`, operations on the last axis.
    key: PRNG key of the random start (:func:`uniform_noise`).
    epsilon: ε (may be traced).
    loss_fn: ``loss_fn(weights) -> scalar`` to be raised.
    steps: PGD steps, a static Python int ≥ 1.
    step_size: η; ``None`` means 2ε/steps.
    random_start: start from ``clip(A + u)`` (the reference) or from ``A``.

  Returns:
    The attacked mixing weights, rows on the simplex and within ε of ``weights`` (before the
    simplex clip moves them).
  """
  if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
    raise JaxnasError(f"pgd_attack: steps must be a whole number ≥ 1, got {steps!r}")
  center = jax.tree.map(jax.lax.stop_gradient, weights)
  eta = 2.0 * epsilon / steps if step_size is None else step_size
  if random_start:
    noise = uniform_noise(center, key, epsilon=epsilon)
    start = jax.tree.map(lambda a, u: simplex_clip(a + u), center, noise)
  else:
    start = center
  grad = jax.grad(loss_fn)

  def body(_, attacked):
    g = grad(attacked)
    moved = jax.tree.map(lambda a, gi: a + jnp.asarray(eta, a.dtype) * jnp.sign(gi), attacked, g)
    return jax.tree.map(lambda m, c: _project(m, c, epsilon), moved, center)

  attacked = jax.lax.fori_loop(0, steps, body, start)
  keep = loss_fn(attacked) >= loss_fn(center)
  out = jax.tree.map(lambda a, c: jnp.where(keep, a, c), attacked, center)
  return jax.tree.map(jax.lax.stop_gradient, out)


def epsilon_schedule(epsilon_start: float = EPSILON_START, epsilon_end: float = EPSILON_END, *,
                     steps_per_epoch: int, epochs: int):
  r"""ε linear over epochs, constant within an epoch (SDARTS).

  .. math:: \epsilon_e = \epsilon_{start} + (\epsilon_{end} - \epsilon_{start})\, e / E,
     \quad e = \lfloor t / \text{steps\_per\_epoch} \rfloor

  So ε starts at ``epsilon_start`` and reaches ``epsilon_end`` only after the last epoch, as
  ``0.03 + (0.3 − 0.03)·epoch/epochs`` in the reference. Returns ``fn(step) -> ε``.
  """
  for name, value in (("epsilon_start", epsilon_start), ("epsilon_end", epsilon_end)):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
      raise JaxnasError(f"perturbation option {name} = {value!r} is out of range; it must be a "
                        "number in [0, 1) (mixing weights live on the simplex; SDARTS uses 0.03 "
                        "→ 0.3)")

  def schedule(count):
    epoch = jnp.minimum(count // steps_per_epoch, epochs).astype(jnp.result_type(float))
    return epsilon_start + (epsilon_end - epsilon_start) * epoch / epochs
  return schedule


PERTURBATIONS: dict[str, Perturbation] = {
    "random-smoothing": random_smoothing,
    "pgd": pgd_attack,
}


def get(name: str) -> Perturbation:
  """The perturbation called ``name``."""
  if name not in PERTURBATIONS:
    raise unknown_name("perturbation", name, PERTURBATIONS)
  return PERTURBATIONS[name]
