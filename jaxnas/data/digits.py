"""The embedded default data set: 1,797 handwritten digits, 8x8 pixels, 10 classes.

Source: the UCI "Optical Recognition of Handwritten Digits" data set (optdigits; E. Alpaydin and
C. Kaynak, 1998; https://archive.ics.uci.edu/ml/datasets/Optical+Recognition+of+Handwritten+Digits),
its 1,797-image test file ``optdigits.tes`` as scikit-learn ships it in
``sklearn.datasets.load_digits``. Each pixel counts the "on" pixels of a 4x4 block of a 32x32
bitmap, an integer in ``0 .. 16``. The UCI data set is licensed under Creative Commons Attribution
4.0 (CC BY 4.0).

``digits.npz`` beside this module was extracted once, with scikit-learn as a development-only tool
(jaxnas never imports it)::

  d = sklearn.datasets.load_digits()
  np.savez_compressed("digits.npz", images=d.images.astype(np.uint8),
                      labels=d.target.astype(np.uint8))

It holds ``images`` (uint8, ``(1797, 8, 8)``, values ``0 .. 16``) and ``labels`` (uint8,
``(1797,)``, values ``0 .. 9``), about 45 kB, so the default data set needs no network.

The split is fixed (it never depends on a run's seed; see :func:`digits_split`): 300 test images,
30 per class, and the other 1,497 split at random into search-train (748) and search-val (749), the
way DARTS halves CIFAR-10's training set.
"""

from __future__ import annotations

from importlib import resources

import numpy as np

from jaxnas.data.dataset import Dataset, make_dataset

__all__ = ["load_digits", "digits_split", "read_digits", "TEST_PER_CLASS", "SPLIT_SEED"]

TEST_PER_CLASS = 30
SPLIT_SEED = 0
_MAX_PIXEL = 16
_NUM_CLASSES = 10


def read_digits() -> tuple[np.ndarray, np.ndarray]:
  """Reads the embedded raw arrays.

  Returns:
    ``(images, labels)``: uint8 ``(1797, 8, 8)`` with values ``0 .. 16`` and uint8 ``(1797,)``.
  """
  ref = resources.files("jaxnas.data").joinpath("digits.npz")
  with resources.as_file(ref) as path, np.load(path) as archive:
    return archive["images"], archive["labels"]


def digits_split(labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The fixed search-train / search-val / test split of the digits.

  With ``rng = np.random.default_rng(SPLIT_SEED)``: for each class ``c = 0 .. 9`` in turn, its
  indices are permuted by ``rng`` and the first :data:`TEST_PER_CLASS` go to the test part (a
  stratified test set); the remaining indices of all classes, concatenated in class order, are
  permuted once more by ``rng`` and cut in two, the first ``n // 2`` for search-train and the rest
  for search-val. Each part's indices are returned sorted.

  Args:
    labels: integer labels ``(N,)``.

  Returns:
    ``(train_idx, val_idx, test_idx)``, disjoint int64 index arrays covering ``0 .. N - 1``.
  """
  labels = np.asarray(labels)
  rng = np.random.default_rng(SPLIT_SEED)
  test, rest = [], []
  for c in range(_NUM_CLASSES):
    members = rng.permutation(np.flatnonzero(labels == c))
    test.append(members[:TEST_PER_CLASS])
    rest.append(members[TEST_PER_CLASS:])
  rest = rng.permutation(np.concatenate(rest))
  half = len(rest) // 2
  return np.sort(rest[:half]), np.sort(rest[half:]), np.sort(np.concatenate(test))


def load_digits(*, data_dir: str | None = None) -> Dataset:
  """Loads the embedded digits as a normalised :class:`~jaxnas.data.Dataset`.

  Images become float32 ``(N, 8, 8, 1)``, scaled to ``[0, 1]`` by dividing by 16 and standardised
  with the mean and standard deviation of search-train and search-val together.

  Args:
    data_dir: ignored: the digits are embedded in the package. Accepted so every loader shares
      one signature.

  Returns:
    The ``"digits"`` :class:`~jaxnas.data.Dataset`: 748 search-train, 749 search-val and 300 test
    images, 10 classes.
  """
  del data_dir
  images, labels = read_digits()
  train_idx, val_idx, test_idx = digits_split(labels)
  return make_dataset(
      "digits", images[..., None], labels,
      train_idx=train_idx, val_idx=val_idx, test_idx=test_idx,
      max_value=_MAX_PIXEL, num_classes=_NUM_CLASSES,
  )
