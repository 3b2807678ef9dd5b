"""Stateless, resumable mini-batches as NumPy arrays.

A batch is a pure function of ``(seed, step)``: nothing is carried between calls, so a search
resumed at step ``k`` sees exactly the batches it would have seen had it never stopped. With ``n``
examples and batch size ``b``:

- ``steps_per_epoch = n // b`` (the last ``n % b`` examples of each shuffled epoch are dropped);
- step ``s`` lies in epoch ``e = s // steps_per_epoch`` at position ``i = s % steps_per_epoch``;
- epoch ``e`` visits the examples in the order ``np.random.default_rng([seed, e]).permutation(n)``,
  and step ``s`` takes that permutation's slice ``[i * b, (i + 1) * b)``.

Architecture search draws two streams, search-train (for the weights) and search-val (for the
architecture), from one run seed; :func:`split_seeds` says how their seeds are derived.
"""

from __future__ import annotations

import functools
import itertools
import operator
from typing import Iterator

import numpy as np

from jaxnas.data.dataset import Dataset
from jaxnas.errors import JaxnasError

__all__ = [
    "validate_batch_size",
    "steps_per_epoch",
    "batch_at",
    "iterate",
    "split_seeds",
    "search_batches",
]

_VAL_STREAM = 1


def _as_int(value, not_whole: str) -> int:
  """``value`` as a Python int (NumPy integers welcome), or a JaxnasError saying ``not_whole``."""
  if isinstance(value, bool):
    raise JaxnasError(not_whole)
  try:
    return operator.index(value)
  except TypeError:
    raise JaxnasError(not_whole) from None


def _whole_number(value, what: str) -> int:
  """``value`` as a non-negative Python int, or a JaxnasError naming ``what``."""
  number = _as_int(value, f"{what} {value!r} is not a whole number; choose an integer {what}")
  if number < 0:
    raise JaxnasError(f"{what} {number} is negative; choose a {what} ≥ 0")
  return number


def _check_lengths(x, y) -> int:
  """The number of examples, after checking that ``x`` and ``y`` agree on it."""
  if len(x) != len(y):
    raise JaxnasError(f"x has {len(x)} examples but y has {len(y)}; pass inputs and targets of "
                      "equal length")
  return len(x)


def validate_batch_size(n: int, batch_size: int, part_name: str = "examples") -> int:
  """Checks that ``batch_size`` batches can be drawn from ``n`` examples.

  Args:
    n: the number of examples in the part.
    batch_size: the requested batch size.
    part_name: what the examples are, for the message, e.g. ``"search-train images of digits"``.

  Returns:
    ``batch_size`` as an int.

  Raises:
    JaxnasError: if ``batch_size`` is not a positive whole number no larger than ``n``.
  """
  batch_size = _as_int(batch_size, f"batch size {batch_size!r} is not a whole number; choose an "
                      "integer --batch-size")
  if batch_size <= 0:
    raise JaxnasError(f"batch size {batch_size} is not positive; choose --batch-size ≥ 1")
  if n <= 0:
    raise JaxnasError(f"there are no {part_name} to draw batches from")
  if batch_size > n:
    raise JaxnasError(f"batch size {batch_size} is larger than the {n} {part_name}; "
                      f"choose --batch-size ≤ {n}")
  return batch_size


def steps_per_epoch(n: int, batch_size: int) -> int:
  """The number of full batches of ``batch_size`` in ``n`` examples: ``n // batch_size``.

  Raises:
    JaxnasError: if ``batch_size`` is not in ``1 .. n``.
  """
  return n // validate_batch_size(n, batch_size)


@functools.lru_cache(maxsize=8)
def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """Epoch ``epoch``'s visiting order, read-only (cached: consecutive steps share it)."""
  order = np.random.default_rng([seed, epoch]).permutation(n)
  order.setflags(write=False)
  return order


def batch_at(x, y, batch_size: int, *, seed: int, step: int) -> tuple[np.ndarray, np.ndarray]:
  """The batch a stream seeded ``seed`` yields at step ``step`` (see the module docstring).

  Args:
    x: inputs, first axis indexing the ``n`` examples.
    y: targets, first axis of length ``n``.
    batch_size: examples per batch, ``1 .. n``.
    seed: the stream's seed, a whole number ≥ 0.
    step: the global step, ≥ 0; it runs on across epochs.

  Returns:
    ``(xb, yb)``: NumPy arrays with ``batch_size`` rows, fresh copies of rows of ``x`` and ``y``.

  Raises:
    JaxnasError: on a bad batch size, seed or step, or if ``x`` and ``y`` differ in length.
  """
  n = _check_lengths(x, y)
  per_epoch = steps_per_epoch(n, batch_size)
  seed = _whole_number(seed, "seed")
  step = _whole_number(step, "step")
  epoch, position = divmod(step, per_epoch)
  rows = _permutation(seed, epoch, n)[position * batch_size:(position + 1) * batch_size]
  return np.asarray(x)[rows], np.asarray(y)[rows]


def iterate(x, y, batch_size: int, *, seed: int,
            start_step: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """An endless stream of batches, ``batch_at(..., step=s)`` for ``s = start_step, ...``.

  Args:
    x: inputs, first axis indexing the examples.
    y: targets.
    batch_size: examples per batch.
    seed: the stream's seed.
    start_step: the first step to yield; pass the step a run stopped at to resume it.

  Yields:
    ``(xb, yb)`` NumPy arrays, as :func:`batch_at` returns them.

  Raises:
    JaxnasError: at creation, on bad arguments (checked eagerly, before the first batch).
  """
  n = _check_lengths(x, y)
  validate_batch_size(n, batch_size)
  seed = _whole_number(seed, "seed")
  start_step = _whole_number(start_step, "start step")
  return (batch_at(x, y, batch_size, seed=seed, step=s) for s in itertools.count(start_step))


def split_seeds(seed: int) -> tuple[int, int]:
  """The seeds of the search-train and search-val streams of a run seeded ``seed``.

  The train stream uses ``seed`` itself; the val stream uses the first 32-bit word of
  ``np.random.SeedSequence(seed, spawn_key=(1,))``, NumPy's independent child stream. Unlike
  ``seed + 1`` this never makes one run's val stream another run's train stream.

  Args:
    seed: the run seed, a whole number ≥ 0.

  Returns:
    ``(train_seed, val_seed)``.
  """
  seed = _whole_number(seed, "seed")
  val_seed = np.random.SeedSequence(seed, spawn_key=(_VAL_STREAM,)).generate_state(1)[0]
  return seed, int(val_seed)


def search_batches(dataset: Dataset, batch_size: int, *, seed: int,
                   step: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """The search-train and search-val batches of step ``step`` of a run seeded ``seed``.

  Both streams use :func:`batch_at` with the seeds of :func:`split_seeds`; each runs through its
  own part in its own epochs. (quark0/darts draws the val batch with a fresh iterator each step; a
  seeded stream is the deliberate, resumable departure.)

  Args:
    dataset: the :class:`~jaxnas.data.Dataset` to draw from.
    batch_size: examples per batch, at most the size of the smaller of the two parts.
    seed: the run seed.
    step: the search step.

  Returns:
    ``(train_batch, val_batch)``, each ``{"image": float32 (B, H, W, C), "label": int32 (B,)}``.

  Raises:
    JaxnasError: if ``batch_size`` does not fit either part, or on a bad seed or step.
  """
  for n, part in ((len(dataset.train_x), "search-train"), (len(dataset.val_x), "search-val")):
    validate_batch_size(n, batch_size, f"{part} images of {dataset.name}")
  train_seed, val_seed = split_seeds(seed)
  train_x, train_y = batch_at(dataset.train_x, dataset.train_y, batch_size, seed=train_seed,
                              step=step)
  val_x, val_y = batch_at(dataset.val_x, dataset.val_y, batch_size, seed=val_seed, step=step)
  return {"image": train_x, "label": train_y}, {"image": val_x, "label": val_y}
