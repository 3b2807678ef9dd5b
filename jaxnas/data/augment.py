r"""Training-time augmentation of image batches, in NumPy, deterministic from an explicit generator.

The DARTS evaluation training (quark0/darts ``cnn/utils.py::_data_transforms_cifar10``) applies to
each image: a random 32x32 crop of the image padded by 4 black pixels, a horizontal flip with
probability 1/2, normalisation with the data set's mean and standard deviation, and cutout of a
16x16 square (``Cutout(16)``, zeros written *after* normalisation). The search uses none of it.

API (two functions over a batch ``(N, H, W, C)``; nothing is stateful, all randomness comes from the
``np.random.Generator`` passed in):

- :func:`augment_batch` ``(images, *, rng, crop_padding=4, flip=True, cutout=16, fill=0.0)``
  returns a new float array of the same shape: crop, then flip, then cutout, per image.
- :func:`normalize` ``(images, mean, std)`` returns ``(images - mean) / std`` per channel.

A :class:`~jaxnas.data.Dataset` already holds normalised images, so a trainer calls, per step::

  rng = np.random.default_rng([seed, step])          # or one Generator carried along
  xb = augment.augment_batch(xb, rng=rng, fill=-ds.mean / ds.std)

``fill=-mean/std`` pads with what black becomes after normalisation, so this equals the reference's
pipeline exactly (crop and flip commute with a per-channel affine map; cutout writes 0 after
normalisation in both). With the default ``fill=0`` the padding is the mean colour instead, the
usual choice of JAX/TF pipelines that augment normalised images.

Draw order (fixed, so a seed gives the same batch on every machine): for a batch of ``N`` images,
``rng.integers(0, 2p + 1, (N, 2))`` crop offsets (row, column) if ``p > 0``; then
``rng.random(N) < 0.5`` flips if ``flip``; then ``rng.integers(0, H, N)`` and
``rng.integers(0, W, N)`` cutout centres if ``cutout > 0``.

Normalisation constants (:data:`STATS`, in the ``[0, 1]`` pixel scale): CIFAR-10's are the
reference code's constants (quark0/darts ``CIFAR_MEAN``/``CIFAR_STD``, the statistics of the
50,000 training images); CIFAR-100's are the constants P-DARTS/PC-DARTS and most CIFAR-100 code use
(``(0.5071, 0.4865, 0.4409)``, ``(0.2673, 0.2564, 0.2762)``). SVHN has no constant here: its
loader computes the statistics of its training split (search-train and search-val together).
"""

from __future__ import annotations

import numpy as np

from jaxnas.errors import JaxnasError

__all__ = ["STATS", "augment_batch", "random_crop", "random_flip", "cutout", "normalize"]

STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.49139968, 0.48215827, 0.44653124), (0.24703233, 0.24348505, 0.26158768)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def _check_batch(images) -> np.ndarray:
  images = np.asarray(images)
  if images.ndim != 4:
    raise JaxnasError(f"augmentation takes a batch of shape (N, H, W, C), got shape "
                      f"{images.shape}; add the batch axis")
  return images


def _check_rng(rng) -> np.random.Generator:
  if not isinstance(rng, np.random.Generator):
    raise JaxnasError(f"rng must be a np.random.Generator (np.random.default_rng(seed)), got "
                      f"{type(rng).__name__}")
  return rng


def _whole(value, what: str) -> int:
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
    raise JaxnasError(f"{what} must be a whole number ≥ 0, got {value!r}")
  return int(value)


def random_crop(images, *, rng, padding: int = 4, fill=0.0) -> np.ndarray:
  r"""Random crops of each image padded by ``padding`` pixels (torchvision ``RandomCrop``).

  .. math:: y_n[i, j] = \tilde x_n[i + a_n, j + b_n], \quad a_n, b_n \sim U\{0, \dots, 2p\}

  where :math:`\tilde x_n` is image ``n`` padded by ``p`` pixels of value ``fill`` on every side
  (DARTS: ``RandomCrop(32, padding=4)``).

  Args:
    images: a batch ``(N, H, W, C)``.
    rng: the ``np.random.Generator`` the offsets are drawn from (``integers(0, 2p+1, (N, 2))``).
    padding: ``p``, pixels added on each side; 0 returns a copy and draws nothing.
    fill: the padding value, a scalar or one value per channel ``(C,)``.

  Returns:
    The cropped batch, same shape; ``images``' dtype if it is a float type (``fill`` is cast to
    it), else the type that holds both.
  """
  images, rng, p = _check_batch(images), _check_rng(rng), _whole(padding, "crop padding")
  if p == 0:
    return images.copy()
  n, h, w, c = images.shape
  fill = np.broadcast_to(np.asarray(fill), (c,))
  floating = np.issubdtype(images.dtype, np.floating)
  dtype = images.dtype if floating else np.result_type(images.dtype, fill.dtype)
  padded = np.empty((n, h + 2 * p, w + 2 * p, c), dtype)
  padded[...] = fill
  padded[:, p:p + h, p:p + w] = images
  offsets = rng.integers(0, 2 * p + 1, size=(n, 2))
  rows = offsets[:, :1] + np.arange(h)  # (N, H)
  cols = offsets[:, 1:] + np.arange(w)  # (N, W)
  return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def random_flip(images, *, rng) -> np.ndarray:
  r"""Mirrors each image left-right with probability 1/2: :math:`y_n[i, j] = x_n[i, W-1-j]`.

  Args:
    images: a batch ``(N, H, W, C)``.
    rng: the generator; image ``n`` is flipped where ``rng.random(N)[n] < 0.5``.

  Returns:
    The batch, same shape and dtype.
  """
  images, rng = _check_batch(images), _check_rng(rng)
  flips = rng.random(len(images)) < 0.5
  return np.where(flips[:, None, None, None], images[:, :, ::-1], images)


def cutout(images, *, rng, length: int = 16) -> np.ndarray:
  r"""Zeros one ``length`` x ``length`` square per image (DeVries & Taylor 2017; DARTS ``Cutout``).

  With a centre :math:`(c_y, c_x)` drawn uniformly from the pixels, the pixels with
  :math:`\max(0, c_y - \lfloor l/2 \rfloor) \le i < \min(H, c_y + \lfloor l/2 \rfloor)` (and the
  same in ``j``) become 0 in every channel; the square is clipped at the border, as in the
  reference.

  Args:
    images: a batch ``(N, H, W, C)``, normalised (0 is the mean colour).
    rng: the generator (``integers(0, H, N)`` then ``integers(0, W, N)``).
    length: the side ``l``; 0 returns a copy and draws nothing.

  Returns:
    The batch, same shape and dtype.
  """
  images, rng, length = _check_batch(images), _check_rng(rng), _whole(length, "cutout length")
  if length == 0:
    return images.copy()
  n, h, w, _ = images.shape
  cy, cx = rng.integers(0, h, n), rng.integers(0, w, n)
  half = length // 2
  i, j = np.arange(h), np.arange(w)
  inside_rows = (i >= (cy - half)[:, None]) & (i < (cy + half)[:, None])  # (N, H)
  inside_cols = (j >= (cx - half)[:, None]) & (j < (cx + half)[:, None])  # (N, W)
  hole = inside_rows[:, :, None] & inside_cols[:, None, :]
  return np.where(hole[..., None], np.zeros((), images.dtype), images)


_cutout = cutout  # augment_batch's ``cutout`` argument shadows the function's name


def augment_batch(images, *, rng, crop_padding: int = 4, flip: bool = True, cutout: int = 16,
                  fill=0.0) -> np.ndarray:
  """The DARTS training augmentation of a batch: random crop, horizontal flip, cutout.

  Equals ``cutout(random_flip(random_crop(x)))`` with the draws in the module docstring's order;
  each step is skipped (and draws nothing) when ``crop_padding=0``, ``flip=False`` or
  ``cutout=0``.

  Args:
    images: a normalised batch ``(N, H, W, C)`` (a :class:`~jaxnas.data.Dataset`'s images).
    rng: a ``np.random.Generator``; the same generator state gives the same batch.
    crop_padding: pixels of padding for the random crop (DARTS: 4).
    flip: whether to flip half the images left-right.
    cutout: the cutout square's side (DARTS evaluation: 16; 0 for none).
    fill: the crop's padding value, scalar or per channel; ``-dataset.mean / dataset.std`` is
      the reference's black padding.

  Returns:
    A new array of the same shape.

  Raises:
    JaxnasError: if ``images`` is not 4-D, ``rng`` is not a Generator, or a size is negative.
  """
  out = random_crop(images, rng=rng, padding=crop_padding, fill=fill)
  if flip:
    out = random_flip(out, rng=rng)
  return _cutout(out, rng=rng, length=cutout)


def normalize(images, mean, std) -> np.ndarray:
  r"""Per-channel standardisation :math:`y = (x - \mu_c) / \sigma_c` (torchvision ``Normalize``).

  Args:
    images: ``(..., C)`` in the scale of ``mean`` (e.g. ``[0, 1]`` pixels).
    mean: ``(C,)`` channel means (e.g. ``STATS["cifar10"][0]``).
    std: ``(C,)`` channel standard deviations, all positive.

  Returns:
    float32 array of ``images``' shape.

  Raises:
    JaxnasError: if ``mean``/``std`` do not have one value per channel or a std is not positive.
  """
  images = np.asarray(images)
  mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
  c = images.shape[-1] if images.ndim else 0
  if mean.shape != (c,) or std.shape != (c,):
    raise JaxnasError(f"mean and std must have one value per channel ({c}), got shapes "
                      f"{mean.shape} and {std.shape}")
  if np.any(std <= 0):
    raise JaxnasError(f"std must be positive in every channel, got {std.tolist()}")
  return ((images - mean) / std).astype(np.float32)
