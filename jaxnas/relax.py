"""Relaxations: pure functions from architecture logits to mixing weights.

A relaxation has the signature ``relax(alphas, key, **options) -> weights``: ``alphas`` is any
pytree of arrays whose last axis indexes the candidate operations, and ``weights`` is a pytree of the
same structure and shapes. Search spaces only ever see ``weights``; they never hard-code softmax.

Relaxations are looked up by name with :func:`get`; later relaxations (sigmoid, Gumbel, Dirichlet,
partial channels, ...) register here under new names without touching the search loop.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxnas.errors import unknown_name

__all__ = ["softmax", "get", "RELAXATIONS", "Relaxation"]

Relaxation = Callable[..., Any]


def softmax(alphas, key=None, *, temperature: float = 1.0):
  r"""DARTS' continuous relaxation (Liu et al., 2019, eq. 2).

  .. math:: \bar o^{(i,j)}(x) = \sum_k \frac{\exp(\alpha^{(i,j)}_k / T)}{\sum_{k'} \exp(\alpha^{(i,j)}_{k'} / T)}\, o_k(x)

  Args:
    alphas: pytree of logits, operations on the last axis.
    key: unused (softmax is deterministic); accepted so every relaxation shares one signature.
    temperature: ``T`` above; 1 is DARTS.

  Returns:
    Mixing weights with the structure of ``alphas``, each row summing to one.
  """
  del key
  return jax.tree.map(lambda a: jax.nn.softmax(a / temperature, axis=-1), alphas)


RELAXATIONS: dict[str, Relaxation] = {
    "softmax": softmax,
}


def get(name: str, **options) -> Relaxation:
  """Returns the relaxation called ``name`` with ``options`` bound."""
  if name not in RELAXATIONS:
    raise unknown_name("relaxation", name, RELAXATIONS)
  fn = RELAXATIONS[name]
  return functools.partial(fn, **options) if options else fn
