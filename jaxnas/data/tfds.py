"""CIFAR-10, CIFAR-100 and SVHN through tensorflow-datasets (the ``data`` extra).

Importing this module imports nothing from TensorFlow: :func:`read_tfds` imports
``tensorflow_datasets`` when it is called, so jaxnas' core never needs TensorFlow. Install it with
``pip install -e '.[data]'``. The loaders of :mod:`jaxnas.data.archives` call it when the standard
archives are not in ``--data-dir``.

tfds names: ``cifar10``, ``cifar100`` (its ``label`` is the fine label) and ``svhn_cropped``
(labels already 0 .. 9). Both splits are read as NumPy in batches of 4,096
(``as_supervised=True``) and concatenated; tfds downloads and prepares a data set into ``data_dir`` (default
``~/tensorflow_datasets``) the first time.
"""

from __future__ import annotations

import os

import numpy as np

from jaxnas.errors import JaxnasError

__all__ = ["TFDS_NAMES", "read_tfds"]

TFDS_NAMES = {"cifar10": "cifar10", "cifar100": "cifar100", "svhn": "svhn_cropped"}
# Splits are read in batches and concatenated: ``batch_size=-1`` (the whole split as one batch)
# aborted the process (std::length_error in vector::reserve) with TensorFlow 2.21 and
# tensorflow-datasets 4.9.10 under tfds.testing.mock_data.
_BATCH = 4096


def read_tfds(name: str, *, data_dir: str | None = None, download: bool = True):
  """Reads the train and test splits of data set ``name`` with tensorflow-datasets.

  Args:
    name: ``"cifar10"``, ``"cifar100"`` or ``"svhn"`` (a key of :data:`TFDS_NAMES`).
    data_dir: tfds' data folder (None: tfds' default).
    download: let tfds download and prepare the data set if it is not in ``data_dir``.

  Returns:
    :class:`jaxnas.data.archives.RawSplits`: uint8 ``(n, 32, 32, 3)`` images, int64 labels.

  Raises:
    JaxnasError: one line if tensorflow-datasets is missing or fails to load the data set.
  """
  from jaxnas.data.archives import RawSplits
  if name not in TFDS_NAMES:
    raise JaxnasError(f"no tensorflow-datasets name for {name!r}; choose one of "
                      + ", ".join(sorted(TFDS_NAMES)))
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
  try:
    import tensorflow_datasets as tfds
  except ImportError:
    raise JaxnasError(f"data set {name!r} through tensorflow-datasets needs the 'data' extra: "
                      "pip install -e '.[data]'") from None
  tfds_name = TFDS_NAMES[name]
  try:
    splits = tfds.load(tfds_name, split=["train", "test"], data_dir=data_dir,
                       batch_size=_BATCH, as_supervised=True, download=download)
    (train_x, train_y), (test_x, test_y) = (_concatenate(tfds.as_numpy(s)) for s in splits)
  except Exception as e:  # tfds raises many kinds (network, missing files, TF errors): one line.
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise JaxnasError(f"tensorflow-datasets could not load {tfds_name!r} ({reason[:200]}); "
                      "check the network, or put the standard archive files in --data-dir") \
        from None
  return RawSplits(train_x.astype(np.uint8), train_y.astype(np.int64),
                   test_x.astype(np.uint8), test_y.astype(np.int64))


def _concatenate(batches) -> tuple[np.ndarray, np.ndarray]:
  """One ``(images, labels)`` pair from an iterator of batches."""
  images, labels = zip(*batches)
  return np.concatenate(images), np.concatenate(labels)
