"""Stopping rules on hand-made histories: DARTS-ES' eigenvalue rule and DARTS+'s ranking rule.

Every expected epoch below is worked out by hand in the comment next to it, from the rule as
REFERENCE §10 states it (local averages of 5 eigenvalues, compared 4 averages back, factor 1.3, the
earlier epoch ≥ the reference's 0-based epoch 10) and from DARTS+'s criterion 2.
"""

import functools
import math

import numpy as np
import pytest

from jaxnas import stopping
from jaxnas.derive import darts_top2, genotype_from_nb201_string
from jaxnas.errors import JaxnasError
from jaxnas.stopping import EpochRecord

NO_SKIP = genotype_from_nb201_string(
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|none~1|+|avg_pool_3x3~0|nor_conv_1x1~1|nor_conv_3x3~2|")
TWO_SKIPS = genotype_from_nb201_string(
    "|skip_connect~0|+|nor_conv_3x3~0|none~1|+|avg_pool_3x3~0|nor_conv_1x1~1|skip_connect~2|")
_MIXING = {"cell": np.full((6, 5), 0.2)}


def _eigen_history(values):
  """One record per epoch (1-based); ``values[e - 1]`` is epoch e's eigenvalue, or a marker.

  ``None`` leaves the key out of the metrics; anything else (NaN, inf included) is logged as is.
  """
  out = []
  for epoch, v in enumerate(values, start=1):
    metrics = {"train_loss": 1.0} if v is None else {"train_loss": 1.0, "hessian_eigenvalue": v}
    out.append(EpochRecord(epoch=epoch, genotype=NO_SKIP, mixing=_MIXING, metrics=metrics))
  return tuple(out)


def _answers(values, **options):
  """The rule's answer at each epoch's end: {epoch: answer} for the epochs where it is not False."""
  history = _eigen_history(values)
  answers = {}
  for end in range(1, len(history) + 1):
    answer = stopping.rdarts_es(NO_SKIP, history[:end], **options)
    assert answer is False or (type(answer) is int), answer
    if answer is not False:
      answers[end] = answer
  return answers


# --- rdarts_es -----------------------------------------------------------------------------------


def test_rdarts_es_every_epoch_stops_on_a_jump_and_returns_the_earlier_epoch():
  # Eigenvalue 1 up to epoch 20, 10 from epoch 21. At epoch 21 the newest window (epochs 17..21)
  # averages (4·1 + 10)/5 = 2.8 and the one 4 back (epochs 13..17) averages 1: 2.8 > 1.3, stop.
  # The earlier window is centred on epoch 21 − 2 − 4 = 15, which the rule returns.
  values = [1.0] * 20 + [10.0] * 5
  assert _answers(values) == {21: 15, 22: 16, 23: 17, 24: 18, 25: 19}


def test_rdarts_es_every_other_epoch_as_the_reference_scripts():
  # The reference computes the eigenvalue every 2 epochs (its 0-based 0, 2, 4, ... = jaxnas'
  # 1, 3, 5, ...). The epochs between have no value: here missing, NaN or inf, all skipped.
  # Eigenvalue 1 at epochs 1..29, 10 from epoch 31: at epoch 31 the newest window covers epochs
  # 23..31, average 2.8; 4 eigenvalues back (epochs 15..23) it is 1. The earlier window's centre is
  # epoch 19 = (31 − 2·2) − 2·4, the reference's stop_epoch = la_epoch − 8.
  markers = [None, math.nan, math.inf, -math.inf]
  values = []
  for epoch in range(1, 36):
    values.append((10.0 if epoch >= 31 else 1.0) if epoch % 2 else markers[(epoch // 2) % 4])
  answers = _answers(values)
  assert answers == {31: 19, 33: 21, 35: 23}  # never at an epoch without its own eigenvalue


def test_rdarts_es_never_returns_an_epoch_before_the_start():
  # Eigenvalues 2^epoch grow by 16× over any 4 epochs, so every check that may run fires. The first
  # may run when the earlier window's centre, epoch e = epoch_now − 6, has e − 1 ≥ 10 (the
  # reference's es_start_epoch, 0-based): epoch_now = 17, returning 11.
  values = [2.0 ** e for e in range(1, 21)]
  answers = _answers(values)
  assert min(answers) == 17 and answers[17] == 11
  assert answers == {e: e - 6 for e in range(17, 21)}
  # With es_start_epoch=0 the first check is as soon as the earlier centre exists: at epoch 7 its
  # truncated window is epochs 1..3, mean(2, 4, 8) = 14/3, against mean(8..128) = 49.6.
  assert _answers(values, es_start_epoch=0) == {e: e - 6 for e in range(7, 21)}
  assert _answers(values, es_start_epoch=4)[11] == 5


def test_rdarts_es_threshold_is_strict():
  # 2.5 at epoch 21: newest average (4 + 2.5)/5 = 1.3, not above 1.3. At epoch 22: (3 + 5)/5 = 1.6.
  values = [1.0] * 20 + [2.5, 2.5]
  assert _answers(values) == {22: 16}


def test_rdarts_es_options():
  # window 3, delta 2, factor 2: the newest average is over 3 eigenvalues, the earlier one 2 back,
  # centred on index j − 1 − 2. Eigenvalue 1 to epoch 14, 7 from epoch 15: at 15,
  # (1 + 1 + 7)/3 = 3 against 1 → stop, returning epoch 15 − 3 = 12 (≥ 11, the start).
  values = [1.0] * 14 + [7.0] * 2
  assert _answers(values, window=3, delta=2, factor=2.0) == {15: 12, 16: 13}
  # factor 4: 3 is not above 4; at 16, (1 + 7 + 7)/3 = 5 is.
  assert _answers(values, window=3, delta=2, factor=4.0) == {16: 13}


def test_rdarts_es_skips_records_without_an_eigenvalue_and_counts_eigenvalues():
  # Ten epochs without a value in the middle (epochs 11..20, keys missing) are skipped: the windows
  # slide over the 25 eigenvalues that exist. The jump at epoch 31 is the 21st eigenvalue (index
  # 20): the earlier window's centre is index 20 − 6 = 14, which is epoch 25.
  values = [1.0] * 10 + [None] * 10 + [1.0] * 10 + [10.0] * 3
  assert _answers(values) == {31: 25, 32: 26, 33: 27}


def test_rdarts_es_does_not_stop_on_non_positive_averages_or_flat_histories():
  assert _answers([1.0] * 40) == {}
  # The average goes from −1 to −10: the reference's ratio is 2.8 (it would stop); jaxnas not.
  assert _answers([-1.0] * 20 + [-10.0] * 5) == {}
  # A zero earlier average: no ratio. (At epoch 25 the earlier window, epochs 17..21, would hold the
  # first 10 and average 2 > 0.)
  assert _answers([0.0] * 20 + [10.0] * 4) == {}
  assert stopping.rdarts_es(NO_SKIP, ()) is False
  # A shrinking eigenvalue never stops.
  assert _answers([10.0] * 20 + [1.0] * 5) == {}


@pytest.mark.parametrize("options, message", [
    (dict(window=0), "window must be a whole number ≥ 1, got 0"),
    (dict(delta=0), "delta must be a whole number ≥ 1, got 0"),
    (dict(window=2.5), "window must be a whole number ≥ 1, got 2.5"),
    (dict(factor=0.0), "factor must be a positive number"),
    (dict(factor="1.3"), "factor must be a positive number"),
    (dict(es_start_epoch=-1), "es_start_epoch must be a whole number ≥ 0, got -1"),
])
def test_rdarts_es_bad_options(options, message):
  with pytest.raises(JaxnasError, match=message):
    stopping.rdarts_es(NO_SKIP, _eigen_history([1.0] * 3), **options)


def test_required_metrics_and_registry():
  assert stopping.get("rdarts-es") is stopping.rdarts_es
  assert stopping.get("darts-plus-ranking") is stopping.darts_plus_ranking
  assert stopping.get("darts-plus") is stopping.darts_plus
  assert stopping.required_metrics("rdarts-es") == ("hessian_eigenvalue",)
  assert stopping.required_metrics(stopping.rdarts_es) == (stopping.HESSIAN_EIGENVALUE,)
  assert stopping.required_metrics(functools.partial(stopping.rdarts_es, factor=2.0)) == (
      "hessian_eigenvalue",)
  for name in ("darts-plus-skips", "darts-plus-ranking", "darts-plus"):
    assert stopping.required_metrics(name) == ()
  with pytest.raises(JaxnasError, match="unknown stopping rule 'nope'"):
    stopping.required_metrics("nope")


def test_stop_epoch_reads_bools_and_epochs():
  history = _eigen_history([1.0] * 5)
  assert stopping.stop_epoch(False, history) is None
  assert stopping.stop_epoch(True, history) == 5
  assert stopping.stop_epoch(np.bool_(True), history) == 5
  assert stopping.stop_epoch(3, history) == 3
  assert type(stopping.stop_epoch(np.int64(3), history)) is int
  with pytest.raises(JaxnasError, match="answered epoch 6, which is not a finished epoch"):
    stopping.stop_epoch(6, history)
  with pytest.raises(JaxnasError, match="returns a bool or a 1-based epoch number, got 'x'"):
    stopping.stop_epoch("x", history)


# --- DARTS+ --------------------------------------------------------------------------------------

# NAS-Bench-201 columns: none, skip_connect, nor_conv_1x1 (2), nor_conv_3x3 (3), avg_pool_3x3.


def _nb201_mixing(epoch, flip_at):
  """Edge 0 prefers conv 1x1 over conv 3x3 before ``flip_at``, conv 3x3 from then on; the other
  edges keep conv 3x3 > conv 1x1. Parameter-free ops and magnitudes move every epoch."""
  rng = np.random.default_rng(epoch)
  w = np.empty((6, 5))
  w[:, [0, 1, 4]] = rng.uniform(0.0, 1.0, (6, 3))  # free to reorder among themselves and the convs
  w[:, 3] = rng.uniform(0.5, 0.6, 6)
  w[:, 2] = w[:, 3] - rng.uniform(0.01, 0.1, 6)
  if epoch < flip_at:
    w[0, 2] = w[0, 3] + 0.05
  return {"cell": w / w.sum(axis=1, keepdims=True)}


def _ranking_answers(mixings, genotype=NO_SKIP, rule=stopping.darts_plus_ranking, **options):
  history = tuple(EpochRecord(epoch=e, genotype=genotype, mixing=m, metrics={})
                  for e, m in enumerate(mixings, start=1))
  return [end for end in range(1, len(history) + 1)
          if rule(genotype, history[:end], **options)]


def test_ranking_orders_learnable_ops_per_edge_ties_to_the_earlier():
  w = np.array([[0.1, 0.2, 0.3, 0.3, 0.1],    # tie: conv 1x1 (col 2) first
                [0.5, 0.4, 0.01, 0.09, 0.0],  # conv 3x3 above conv 1x1; the rest does not count
                [0.0, 0.0, 0.6, 0.4, 0.0]] * 2)
  assert stopping.ranking({"cell": w}, stopping._SPACE_OPS["nb201"]) == (
      ((2, 3), (3, 2), (2, 3)) * 2,)
  # DARTS: four learnable ops (cols 4..7) per edge, both cells, keys sorted.
  d = np.tile(np.array([0.3, 0.2, 0.1, 0.05, 0.1, 0.4, 0.2, 0.3]), (14, 1))
  r = stopping.ranking({"reduce": d[::-1], "normal": d}, stopping._SPACE_OPS["darts"])
  assert r == (((5, 7, 6, 4),) * 14,) * 2
  with pytest.raises(JaxnasError, match=r"shape \(6, 4\) but op_names lists 5 operations"):
    stopping.ranking({"cell": np.ones((6, 4))}, stopping._SPACE_OPS["nb201"])
  with pytest.raises(JaxnasError, match="no learnable operation"):
    stopping.ranking({"cell": np.ones((6, 2))}, ("none", "skip_connect"))


def test_darts_plus_ranking_stops_after_ten_unchanged_epochs():
  # The ranking changes between epochs 3 and 4 (edge 0 flips) and never again. Unchanged for 10
  # epochs means the records of epochs 4..14 agree: the first stop is after epoch 14.
  mixings = [_nb201_mixing(e, flip_at=4) for e in range(1, 18)]
  assert _ranking_answers(mixings) == list(range(14, 18))
  # From the first epoch on (no flip): epochs 1..11.
  assert _ranking_answers([_nb201_mixing(e, flip_at=0) for e in range(1, 13)]) == [11, 12]
  # A patience of 2: epochs 1..3 agree before the flip, then epochs 4..6 after it.
  assert _ranking_answers(mixings, epochs=2) == [3] + list(range(6, 18))
  # Flipping back and forth every epoch never stops.
  flapping = [_nb201_mixing(e, flip_at=4 if e % 2 else 100) for e in range(1, 30)]
  assert _ranking_answers(flapping) == []


def test_darts_plus_ranking_counts_both_darts_cells():
  base = np.tile(np.array([0.3, 0.2, 0.1, 0.05, 0.1, 0.4, 0.2, 0.3]), (14, 1))
  moved = base.copy()
  moved[13, [4, 5]] = [0.4, 0.1]  # the last reduce edge now ranks sep_conv_3x3 first
  mixings = [{"normal": base, "reduce": moved if e >= 3 else base} for e in range(1, 8)]
  genotype = darts_top2(mixings[0])
  # Reduce changes after epoch 2: records 3..5 agree at epoch 5 with epochs=2.
  assert _ranking_answers(mixings, genotype=genotype, epochs=2) == [5, 6, 7]


def test_darts_plus_fires_on_either_criterion():
  assert stopping.darts_plus(TWO_SKIPS, ())  # criterion 1 alone
  mixings = [_nb201_mixing(e, flip_at=0) for e in range(1, 13)]
  assert _ranking_answers(mixings, rule=stopping.darts_plus) == [11, 12]  # criterion 2 alone
  assert _ranking_answers(mixings[:3], genotype=TWO_SKIPS, rule=stopping.darts_plus) == [1, 2, 3]
  with pytest.raises(JaxnasError, match="epochs must be a whole number ≥ 1, got 0"):
    stopping.darts_plus_ranking(NO_SKIP, (), epochs=0)
