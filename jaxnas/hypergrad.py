"""Hypergradient estimators for the bilevel problem of differentiable architecture search.

Every estimator has one signature::

    estimate(train_loss, val_loss, w, alphas, train_batch, val_batch, *, key, **options)
        -> (g_alpha, info)

where ``train_loss`` and ``val_loss`` are ``loss(w, alphas, batch, key) -> (scalar, aux)``,
``g_alpha`` has the structure of ``alphas`` and ``info`` is a dict of scalars (at least
``hvp_passes``, the number of Hessian-vector-product-equivalent passes). This module imports no Flax:
it works on any loss pair of that signature, plain quadratics included.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxnas.errors import unknown_name

__all__ = ["first_order", "get", "ESTIMATORS", "Estimator"]

Estimator = Callable[..., Any]


def first_order(train_loss, val_loss, w, alphas, train_batch, val_batch, *, key):
  r"""DARTS' first-order approximation (Liu et al., 2019, §2.3 with :math:`\xi = 0`).

  .. math:: g = \nabla_\alpha \mathcal L_{val}(w, \alpha)

  The weights are treated as constant in :math:`\alpha`; ``train_loss`` and ``train_batch`` are
  unused. ``info`` carries ``hvp_passes = 0`` and the val loss's aux under ``val_aux``.
  """
  del train_loss, train_batch
  (_, aux), g = jax.value_and_grad(val_loss, argnums=1, has_aux=True)(w, alphas, val_batch, key)
  return g, {"hvp_passes": jnp.asarray(0, jnp.int32), "val_aux": aux}


ESTIMATORS: dict[str, Estimator] = {
    "first_order": first_order,
}


def get(name: str, **options) -> Estimator:
  """Returns the estimator called ``name`` with ``options`` bound (a ``functools.partial``)."""
  if name not in ESTIMATORS:
    raise unknown_name("estimator", name, ESTIMATORS)
  fn = ESTIMATORS[name]
  return functools.partial(fn, **options) if options else fn
