"""Stopping rules: host-side decisions, at each epoch end, to end a search early.

A stopping rule is a pure function ``rule(genotype, history) -> bool | int``: ``genotype`` is the
architecture derived (with the recipe's derivation rule) from the current deterministic mixing
weights, and ``history`` the :class:`EpochRecord` of every epoch finished so far, the current one
last. :func:`jaxnas.run.run_search` evaluates the recipe's rule after every epoch but the last.
The answer means (:func:`stop_epoch` turns it into one number):

- ``False``: go on;
- ``True``: stop now and return the current genotype and alphas;
- an ``int`` (not a bool): stop now and return the genotype and alphas of that earlier epoch,
  1-based as ``EpochRecord.epoch``, which must be in ``history``. DARTS-ES (:func:`rdarts_es`)
  answers this way: its evidence that the search went wrong arrives epochs after the architecture
  was last good.

Rules are looked up by name in :data:`STOPPING_RULES`. A rule that reads metrics beyond what every
search step logs names them in a ``needs_metrics`` attribute (a tuple of keys of
``EpochRecord.metrics``); :func:`required_metrics` reads it, so a search can turn that logging on,
or refuse the rule where the configuration cannot feed it. :func:`rdarts_es` needs
``"hessian_eigenvalue"`` (:data:`HESSIAN_EIGENVALUE`), the dominant eigenvalue of
:math:`\\nabla^2_\\alpha \\mathcal{L}_{val}` (:mod:`jaxnas.eigen`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any, Callable, NamedTuple, Optional, Union

import numpy as np

from jaxnas.derive import DARTS_OPS, NB201_OPS, Genotype
from jaxnas.errors import JaxnasError, unknown_name

__all__ = ["EpochRecord", "count_ops", "darts_plus_skips", "darts_plus_ranking", "darts_plus",
           "rdarts_es", "ranking", "required_metrics", "stop_epoch", "get", "STOPPING_RULES",
           "StoppingRule", "HESSIAN_EIGENVALUE", "PARAMETRIC_OPS"]

HESSIAN_EIGENVALUE = "hessian_eigenvalue"

# The operations with weights, per space ("learnable operations" in DARTS+).
PARAMETRIC_OPS = ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5",
                  "nor_conv_1x1", "nor_conv_3x3")

_SPACE_OPS = {"darts": DARTS_OPS, "nb201": NB201_OPS}


class EpochRecord(NamedTuple):
  """What a stopping rule may read about one finished epoch."""

  epoch: int  # 1-based, as ``epoch`` in metrics.jsonl
  genotype: Genotype  # derived from the deterministic mixing weights at the epoch's end
  mixing: dict  # those mixing weights, NumPy arrays by alphas key
  metrics: dict  # the metrics of the epoch's last step, Python scalars
  alphas: Optional[dict] = None  # the alphas at the epoch's end (NumPy), for an int answer


StoppingRule = Callable[[Genotype, tuple], Union[bool, int]]


def count_ops(genes, op: str) -> int:
  """How many genes in ``genes`` use operation ``op`` (``(op, input)`` pairs or FairDARTS'
  ``(op, node, input)`` triples)."""
  return sum(1 for gene in genes if gene[0] == op)


def stop_epoch(result, history) -> Optional[int]:
  """What a search does with a rule's answer: ``None`` to go on, else the epoch to return.

  Args:
    result: the rule's answer: a bool, or an int epoch (see the module docstring).
    history: the history the rule was given (the current epoch last).

  Returns:
    ``None`` for ``False``; ``history[-1].epoch`` for ``True``; the int itself otherwise.

  Raises:
    JaxnasError: for an answer that is neither, or an epoch not in ``history``.
  """
  if isinstance(result, (bool, np.bool_)):
    return history[-1].epoch if result else None
  if isinstance(result, numbers.Integral):
    epochs = [r.epoch for r in history]
    if int(result) not in epochs:
      raise JaxnasError(f"the stopping rule answered epoch {int(result)}, which is not a finished "
                        f"epoch {epochs}; a rule returns a bool or the 1-based epoch of a record "
                        "in history")
    return int(result)
  raise JaxnasError(f"a stopping rule returns a bool or a 1-based epoch number, got {result!r}")


def darts_plus_skips(genotype: Genotype, history: tuple[Any, ...] = (), *,
                     max_skips: int = 2) -> bool:
  """DARTS+'s first early-stopping criterion (Liang et al., DARTS+, arXiv:1909.06035, 2019).

  Stop when the normal cell of the derived genotype holds ``max_skips`` (2) or more
  ``skip_connect`` operations. For a NAS-Bench-201 genotype the one cell (``genotype.normal``)
  counts: its ``skip_connect`` edges. ``history`` is unused.
  """
  del history
  return count_ops(genotype.normal, "skip_connect") >= max_skips


def _positive_int(value, name: str) -> int:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
    raise JaxnasError(f"{name} must be a whole number ≥ 1, got {value!r}")
  return int(value)


def ranking(mixing: Mapping, op_names, *, learnable=PARAMETRIC_OPS) -> tuple:
  """The per-edge ranking of the learnable operations' weights, as one hashable value.

  For every alphas key (sorted) and every edge (row), the columns of the operations in
  ``learnable`` ordered by decreasing weight, ties to the earlier column. Any relaxation that is
  increasing in each logit within an edge (softmax, sigmoid) gives the ranking of the alphas
  themselves.

  Args:
    mixing: mixing weights by alphas key, operations on the last axis.
    op_names: the operation of each column.
    learnable: the operations that count.

  Returns:
    A tuple of tuples, equal for two epochs exactly when every edge ranks the learnable operations
    the same way.

  Raises:
    JaxnasError: if a weight array's last axis does not match ``op_names`` or no operation in
      ``op_names`` is learnable.
  """
  cols = [k for k, name in enumerate(op_names) if name in learnable]
  if not cols:
    raise JaxnasError(f"no learnable operation among {tuple(op_names)}; the ranking rule needs "
                      f"one of {tuple(learnable)}")
  out = []
  for key in sorted(mixing):
    w = np.asarray(mixing[key])
    if w.ndim < 1 or w.shape[-1] != len(op_names):
      raise JaxnasError(f"mixing weights {key!r} have shape {w.shape} but op_names lists "
                        f"{len(op_names)} operations; pass the space's op_names")
    sub = w.reshape(-1, w.shape[-1])[:, cols]
    order = np.argsort(-sub, axis=-1, kind="stable")
    out.append(tuple(tuple(int(cols[k]) for k in row) for row in order))
  return tuple(out)


def darts_plus_ranking(genotype: Genotype, history: tuple[Any, ...] = (), *, epochs: int = 10,
                       op_names=None) -> bool:
  """DARTS+'s second early-stopping criterion (Liang et al., DARTS+, arXiv:1909.06035, 2019).

  The paper: stop "when the ranking of architecture parameters α for learnable operations becomes
  stable for a determined number of epochs (e.g., 10 epochs)". The paper gives no code; jaxnas reads
  "ranking" as the order of the learnable (parametric: convolution) operations by weight *within
  each edge*, on every edge of every cell (:func:`ranking`), since that order is what decides which
  learnable operation each edge would keep. "Stable for ``epochs`` epochs" is: the ranking after
  the current epoch equals the ranking after each of the ``epochs`` epochs before it, i.e. the last
  ``epochs + 1`` records agree (with 10, a search can stop after epoch 11 at the earliest). The
  current genotype is returned (True), as the architecture has not changed over those epochs.

  Args:
    genotype: the current genotype (gives the space, hence the default ``op_names``).
    history: the epoch records; their ``mixing`` weights are ranked.
    epochs: how many epochs the ranking must stay unchanged (the paper's example: 10).
    op_names: the operation of each column of the mixing weights; ``None`` for the space's
      (``genotype.space``).

  Returns:
    Whether to stop.

  Raises:
    JaxnasError: for a bad ``epochs``, an unknown space with no ``op_names``, or weights that do
      not fit ``op_names``.
  """
  epochs = _positive_int(epochs, "epochs")
  if op_names is None:
    if genotype.space not in _SPACE_OPS:
      raise JaxnasError(f"no default op_names for space {genotype.space!r}; pass op_names")
    op_names = _SPACE_OPS[genotype.space]
  if len(history) < epochs + 1:
    return False
  ranks = [ranking(r.mixing, op_names) for r in history[-(epochs + 1):]]
  return all(r == ranks[-1] for r in ranks)


def darts_plus(genotype: Genotype, history: tuple[Any, ...] = (), *, max_skips: int = 2,
               epochs: int = 10, op_names=None) -> bool:
  """DARTS+ with both criteria: stop when either fires.

  :func:`darts_plus_skips` (``max_skips`` or more ``skip_connect`` in the normal cell) or
  :func:`darts_plus_ranking` (the learnable operations' ranking unchanged for ``epochs`` epochs).
  The paper (Liang et al., arXiv:1909.06035) proposes the two as alternatives; stopping on the
  first to fire is the conservative combination.
  """
  return (darts_plus_skips(genotype, history, max_skips=max_skips)
          or darts_plus_ranking(genotype, history, epochs=epochs, op_names=op_names))


def _eigenvalues(history) -> list[tuple[int, float]]:
  """``(epoch, eigenvalue)`` of the records whose metrics hold a finite ``hessian_eigenvalue``."""
  out = []
  for r in history:
    value = r.metrics.get(HESSIAN_EIGENVALUE) if isinstance(r.metrics, Mapping) else None
    try:
      value = float(value)
    except (TypeError, ValueError):
      continue
    if math.isfinite(value):
      out.append((r.epoch, value))
  return out


def rdarts_es(genotype: Genotype, history: tuple[Any, ...] = (), *, window: int = 5,
              factor: float = 1.3, es_start_epoch: int = 10, delta: int = 4) -> Union[bool, int]:
  r"""DARTS-ES: stop when the local average of the Hessian's dominant eigenvalue grows too fast.

  R-DARTS (Zela et al., *Understanding and Robustifying Differentiable Architecture Search*, ICLR
  2020, §4.2), as ``EVLocalAvg`` in automl/RobustDARTS (``src/utils.py``). The eigenvalues are
  :math:`\lambda_0, \dots, \lambda_j` (the newest last), one per record whose metrics hold a
  finite ``"hessian_eigenvalue"``. With window :math:`w` and :math:`h = \lfloor w/2 \rfloor`, the
  local average ending at eigenvalue :math:`i` is
  :math:`\mathrm{LA}_i = \mathrm{mean}(\lambda_{\max(0, i-w+1)} \dots \lambda_i)`, centred on
  eigenvalue :math:`i - h` (truncated at the start, as the reference's first averages are). The
  rule compares the newest average with the one :math:`\delta` averages earlier:

  .. math:: \text{stop if } \mathrm{LA}_j / \mathrm{LA}_{j-\delta} > \text{factor}

  and answers the epoch of eigenvalue :math:`p = j - h - \delta`, the centre of the earlier
  window: the search returns the genotype and alphas from before the growth (the reference's
  ``stop_epoch = la_epoch − ev_freq·delta``). The check runs only when :math:`p \ge 0` and the
  epoch of eigenvalue :math:`p`, counted from 0 as the reference counts, is at least
  ``es_start_epoch``: with the default 10 the earliest epoch returned is epoch 11 in jaxnas' 1-based
  count (the reference's epoch 10).

  Windows count eigenvalues, not epochs, as the reference's list does: with an eigenvalue every 2
  epochs (the reference's scripts) the average spans 9 epochs and :math:`\delta = 4` looks back 8
  epochs, exactly as there; with one every epoch both halve.

  Records without a finite eigenvalue (no ``"hessian_eigenvalue"`` key, ``None``, NaN or
  infinite) are skipped: the window slides over the eigenvalues that exist. The rule decides only
  at an epoch whose own record holds one (``False`` otherwise), as the reference checks only at the
  epochs where it computed one.

  Departure: the reference divides whatever the sign; jaxnas never stops when
  :math:`\mathrm{LA}_{j-\delta} \le 0`, where the ratio says nothing about growth.

  Args:
    genotype: the current genotype (unused: the answer is an epoch).
    history: the epoch records, the current one last.
    window: eigenvalues per local average :math:`w` (reference: 5).
    factor: the growth ratio that stops the search (reference: 1.3).
    es_start_epoch: the reference's ``es_start_epoch`` (10), in its 0-based epochs.
    delta: how many eigenvalues back the compared average lies (reference: 4).

  Returns:
    ``False``, or the 1-based epoch whose genotype and alphas the search should return.

  Raises:
    JaxnasError: for a ``window`` or ``delta`` below 1, a ``factor`` that is not a positive
      number or a negative ``es_start_epoch``.
  """
  del genotype
  window, delta = _positive_int(window, "window"), _positive_int(delta, "delta")
  if isinstance(factor, bool) or not isinstance(factor, numbers.Real) or not factor > 0:
    raise JaxnasError(f"factor must be a positive number (reference: 1.3), got {factor!r}")
  if isinstance(es_start_epoch, bool) or not isinstance(es_start_epoch, numbers.Integral) or (
      es_start_epoch < 0):
    raise JaxnasError(f"es_start_epoch must be a whole number ≥ 0, got {es_start_epoch!r}")
  if not history:
    return False
  points = _eigenvalues(history)
  if not points or points[-1][0] != history[-1].epoch:
    return False
  epochs = [e for e, _ in points]
  values = np.asarray([v for _, v in points])
  half = window // 2
  j = len(values) - 1
  p = j - half - delta
  if p < 0 or epochs[p] - 1 < es_start_epoch:
    return False

  def local_average(end):
    return float(np.mean(values[max(0, end - window):end]))

  current, previous = local_average(j + 1), local_average(j + 1 - delta)
  if previous > 0 and current / previous > factor:
    return int(epochs[p])
  return False


rdarts_es.needs_metrics = (HESSIAN_EIGENVALUE,)


def required_metrics(rule) -> tuple[str, ...]:
  """The ``EpochRecord.metrics`` keys a stopping rule needs beyond the step's own.

  Args:
    rule: a rule, a ``functools.partial`` of one, or a name in :data:`STOPPING_RULES`.

  Returns:
    The rule's ``needs_metrics`` attribute, ``()`` if it has none.

  Raises:
    JaxnasError: for an unknown name.
  """
  if isinstance(rule, str):
    rule = get(rule)
  while not hasattr(rule, "needs_metrics") and hasattr(rule, "func"):
    rule = rule.func
  return tuple(getattr(rule, "needs_metrics", ()))


STOPPING_RULES: dict[str, StoppingRule] = {
    "darts-plus-skips": darts_plus_skips,
    "darts-plus-ranking": darts_plus_ranking,
    "darts-plus": darts_plus,
    "rdarts-es": rdarts_es,
}


def get(name: str) -> StoppingRule:
  """The stopping rule called ``name``."""
  if name not in STOPPING_RULES:
    raise unknown_name("stopping rule", name, STOPPING_RULES)
  return STOPPING_RULES[name]
