"""Data for architecture search: data sets by name and stateless NumPy batches.

``load(name)`` returns a :class:`Dataset` whose images are float32 NHWC, standardised per channel,
already split into search-train (the weights' data), search-val (the architecture's data) and a
held-out test part. ``"digits"`` is embedded in the package and needs no network; ``"cifar10"``,
``"cifar100"`` and ``"svhn"`` are read from their standard archives in ``data_dir`` (no TensorFlow;
:mod:`jaxnas.data.archives`) or through tensorflow-datasets (the ``data`` extra). Training-time
augmentation is in :mod:`jaxnas.data.augment`. Batches come from :func:`batch_at` /
:func:`search_batches`, pure functions of a seed and a step, so a resumed run sees the same data.

This package never imports TensorFlow (nor scikit-learn) at import time; only the tfds fallback
of the real data sets imports it, when called.

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

from jaxnas.data import augment
from jaxnas.data.archives import load_cifar10, load_cifar100, load_svhn
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
from jaxnas.errors import unknown_name

__all__ = [
    "DATASETS",
    "Dataset",
    "Loader",
    "augment",
    "batch_at",
    "iterate",
    "load",
    "load_cifar10",
    "load_cifar100",
    "load_digits",
    "load_svhn",
    "search_batches",
    "split_seeds",
    "steps_per_epoch",
    "validate_batch_size",
]

Loader = Callable[..., Dataset]

DATASETS: dict[str, Loader] = {
    "digits": load_digits,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "svhn": load_svhn,
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
