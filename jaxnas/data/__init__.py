"""Data for architecture search: data sets by name and stateless NumPy batches.

``load(name)`` returns a :class:`Dataset` whose images are float32 NHWC, standardised per channel,
already split into search-train (the weights' data), search-val (the architecture's data) and a
held-out test part. ``"digits"`` is embedded in the package and needs no network; CIFAR-10/100 and
SVHN are named here and arrive in a later version. Batches come from :func:`batch_at` /
:func:`search_batches`, pure functions of a seed and a step, so a resumed run sees the same data.

This package never imports TensorFlow (nor scikit-learn).

Example:

  >>> from jaxnas import data
  >>> ds = data.load("digits")
  >>> ds.train_x.shape, ds.val_x.shape, ds.test_x.shape
  ((748, 8, 8, 1), (749, 8, 8, 1), (300, 8, 8, 1))
  >>> train, val = data.search_batches(ds, 64, seed=0, step=0)
  >>> train["image"].shape, val["label"].dtype
  ((64, 8, 8, 1), dtype('int32'))
"""

from __future__ import annotations

from typing import Callable

from jaxnas.data.batches import (
    batch_at,
    iterate,
    search_batches,
    split_seeds,
    steps_per_epoch,
    validate_batch_size,
)
from jaxnas.data.dataset import Dataset
from jaxnas.data.digits import load_digits
from jaxnas.errors import JaxnasError, unknown_name

__all__ = [
    "DATASETS",
    "Dataset",
    "Loader",
    "batch_at",
    "iterate",
    "load",
    "load_digits",
    "search_batches",
    "split_seeds",
    "steps_per_epoch",
    "validate_batch_size",
]

Loader = Callable[..., Dataset]


def _later(name: str) -> Loader:
  """A loader for a data set that is named but not yet shipped: it explains, never downloads."""

  def loader(*, data_dir: str | None = None) -> Dataset:
    del data_dir
    raise JaxnasError(f"data set {name!r} arrives in a later version of jaxnas (it will need the "
                      "'data' extra: pip install 'jaxnas[data]'); use --dataset digits for now")

  return loader


DATASETS: dict[str, Loader] = {
    "digits": load_digits,
    "cifar10": _later("cifar10"),
    "cifar100": _later("cifar100"),
    "svhn": _later("svhn"),
}


def load(name: str, *, data_dir: str | None = None) -> Dataset:
  """Loads the data set registered as ``name``.

  Args:
    name: a key of :data:`DATASETS`.
    data_dir: where a downloaded data set lives (unused by the embedded ``"digits"``).

  Returns:
    The :class:`Dataset`.

  Raises:
    JaxnasError: if ``name`` is unknown or its data set is not available.
  """
  if name not in DATASETS:
    raise unknown_name("data set", name, DATASETS)
  return DATASETS[name](data_dir=data_dir)
