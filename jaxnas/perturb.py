"""Perturbations of the mixing weights that only the weight step sees.

A perturbation is a pure function ``fn(weights, key, *, epsilon, **options) -> weights`` on the
mixing weights (the output of a relaxation, e.g. ``softmax(alphas)``), with the structure and shapes
of its input. :func:`jaxnas.search.make_search_step` wraps the recipe's relaxation for the weight
step only, as ``lambda a, k: perturb(relaxation(a, k), k_perturb, epsilon=eps_t)``; the
architecture step uses the unperturbed relaxation (SDARTS, Chen & Hsieh, ICML 2020). ``eps_t``
follows :func:`epsilon_schedule`. Perturbations are looked up by name in :data:`PERTURBATIONS`.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxnas.errors import unknown_name

__all__ = ["simplex_clip", "uniform_noise", "random_smoothing", "epsilon_schedule", "get",
           "PERTURBATIONS", "EPSILON_START", "EPSILON_END", "Perturbation"]

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


def epsilon_schedule(epsilon_start: float = EPSILON_START, epsilon_end: float = EPSILON_END, *,
                     steps_per_epoch: int, epochs: int):
  r"""ε linear over epochs, constant within an epoch (SDARTS).

  .. math:: \epsilon_e = \epsilon_{start} + (\epsilon_{end} - \epsilon_{start})\, e / E,
     \quad e = \lfloor t / \text{steps\_per\_epoch} \rfloor

  So ε starts at ``epsilon_start`` and reaches ``epsilon_end`` only after the last epoch, as
  ``0.03 + (0.3 − 0.03)·epoch/epochs`` in the reference. Returns ``fn(step) -> ε``.
  """
  def schedule(count):
    epoch = jnp.minimum(count // steps_per_epoch, epochs).astype(jnp.result_type(float))
    return epsilon_start + (epsilon_end - epsilon_start) * epoch / epochs
  return schedule


PERTURBATIONS: dict[str, Perturbation] = {
    "random-smoothing": random_smoothing,
}


def get(name: str) -> Perturbation:
  """The perturbation called ``name``."""
  if name not in PERTURBATIONS:
    raise unknown_name("perturbation", name, PERTURBATIONS)
  return PERTURBATIONS[name]
