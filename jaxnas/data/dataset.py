r"""The :class:`Dataset` record every loader returns, and the normalisation they share.

A loader turns a data set's images into float32 NHWC arrays scaled to ``[0, 1]`` and then
standardised per channel with the mean and standard deviation of the data set's *training split*
(search-train and search-val together, the images DARTS draws both halves from), never the test
split:

.. math:: x' = (x / x_{max} - \mu_c) / \sigma_c

``mean`` and ``std`` are kept in the record (in the ``[0, 1]`` pixel scale) so that a plot or a
later evaluation can undo or repeat the transform.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jaxnas.errors import JaxnasError

__all__ = ["Dataset", "make_dataset"]


class Dataset(NamedTuple):
  """A data set split for architecture search.

  Attributes:
    name: the registry name, e.g. ``"digits"``.
    train_x: search-train images, float32 ``(n_train, H, W, C)``, normalised; the weights' data.
    train_y: search-train labels, int32 ``(n_train,)``.
    val_x: search-val images, float32 ``(n_val, H, W, C)``; the architecture's data.
    val_y: search-val labels, int32 ``(n_val,)``.
    test_x: held-out test images, float32 ``(n_test, H, W, C)``; never seen by the search.
    test_y: test labels, int32 ``(n_test,)``.
    num_classes: labels lie in ``0 .. num_classes - 1``.
    image_shape: ``(H, W, C)``.
    mean: float32 ``(C,)``, per-channel mean of the training split in the ``[0, 1]`` pixel scale.
    std: float32 ``(C,)``, the matching standard deviation.
  """

  name: str
  train_x: np.ndarray
  train_y: np.ndarray
  val_x: np.ndarray
  val_y: np.ndarray
  test_x: np.ndarray
  test_y: np.ndarray
  num_classes: int
  image_shape: tuple[int, int, int]
  mean: np.ndarray
  std: np.ndarray


def make_dataset(name: str, images, labels, *, train_idx, val_idx, test_idx, max_value: float,
                 num_classes: int) -> Dataset:
  """Builds a normalised :class:`Dataset` from raw images and a split.

  Args:
    name: the registry name.
    images: raw images ``(N, H, W, C)`` (any real dtype), pixel values in ``[0, max_value]``.
    labels: integer labels ``(N,)``.
    train_idx: indices of the search-train part.
    val_idx: indices of the search-val part.
    test_idx: indices of the test part.
    max_value: the largest possible pixel value (16 for digits, 255 for 8-bit images).
    num_classes: the number of classes.

  Returns:
    The :class:`Dataset`, standardised with the per-channel statistics of ``train_idx`` and
    ``val_idx`` together.

  Raises:
    JaxnasError: if the images are not 4-D or a channel is constant over the training split.
  """
  images = np.asarray(images)
  if images.ndim != 4:
    raise JaxnasError(f"images of {name} have shape {images.shape}; expected (N, H, W, C)")
  scaled = images.astype(np.float64) / max_value
  fit = scaled[np.concatenate([train_idx, val_idx])]
  mean = fit.mean(axis=(0, 1, 2))
  std = fit.std(axis=(0, 1, 2))
  if np.any(std == 0):
    raise JaxnasError(f"a channel of {name} is constant over its training split; cannot normalise")
  normalised = ((scaled - mean) / std).astype(np.float32)
  labels = np.asarray(labels).astype(np.int32)

  def part(idx):
    return normalised[idx], labels[idx]

  train_x, train_y = part(train_idx)
  val_x, val_y = part(val_idx)
  test_x, test_y = part(test_idx)
  return Dataset(
      name=name,
      train_x=train_x, train_y=train_y,
      val_x=val_x, val_y=val_y,
      test_x=test_x, test_y=test_y,
      num_classes=int(num_classes),
      image_shape=tuple(int(d) for d in images.shape[1:]),
      mean=mean.astype(np.float32),
      std=std.astype(np.float32),
  )
