"""Stopping rules: host-side decisions, at each epoch end, to end a search early.

A stopping rule is a pure function ``rule(genotype, history) -> bool``: ``genotype`` is the
architecture derived (with the recipe's derivation rule) from the current deterministic mixing
weights, and ``history`` the :class:`EpochRecord` of every epoch finished so far, the current one
last. :func:`jaxnas.run.run_search` evaluates the recipe's rule after every epoch but the last and
stops after the first epoch where it returns True. Rules are looked up by name in
:data:`STOPPING_RULES`; later ones (DARTS-ES' eigenvalue rule, DARTS+'s ranking rule) register here
and read what they need from ``history``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from jaxnas.derive import Genotype
from jaxnas.errors import unknown_name

__all__ = ["EpochRecord", "count_ops", "darts_plus_skips", "get", "STOPPING_RULES", "StoppingRule"]


class EpochRecord(NamedTuple):
  """What a stopping rule may read about one finished epoch."""

  epoch: int  # 1-based, as ``epoch`` in metrics.jsonl
  genotype: Genotype  # derived from the deterministic mixing weights at the epoch's end
  mixing: dict  # those mixing weights, NumPy arrays by alphas key
  metrics: dict  # the metrics of the epoch's last step, Python scalars


StoppingRule = Callable[[Genotype, tuple], bool]


def count_ops(genes, op: str) -> int:
  """How many ``(op, input)`` genes in ``genes`` use operation ``op``."""
  return sum(1 for name, _ in genes if name == op)


def darts_plus_skips(genotype: Genotype, history: tuple[Any, ...] = (), *,
                     max_skips: int = 2) -> bool:
  """DARTS+'s first early-stopping criterion (Liang et al., DARTS+, arXiv:1909.06035, 2019).

  Stop when the normal cell of the derived genotype holds ``max_skips`` (2) or more
  ``skip_connect`` operations. For a NAS-Bench-201 genotype the one cell (``genotype.normal``)
  counts: its ``skip_connect`` edges. ``history`` is unused.
  """
  del history
  return count_ops(genotype.normal, "skip_connect") >= max_skips


STOPPING_RULES: dict[str, StoppingRule] = {
    "darts-plus-skips": darts_plus_skips,
}


def get(name: str) -> StoppingRule:
  """The stopping rule called ``name``."""
  if name not in STOPPING_RULES:
    raise unknown_name("stopping rule", name, STOPPING_RULES)
  return STOPPING_RULES[name]
