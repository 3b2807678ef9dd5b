r"""CIFAR-10, CIFAR-100 and SVHN from their standard archives, with no TensorFlow; or through tfds.

``load_cifar10`` / ``load_cifar100`` / ``load_svhn`` look in ``data_dir`` for the files the data
sets' own sites distribute, and fall back to tensorflow-datasets (:mod:`jaxnas.data.tfds`, the
``data`` extra) when they are not there:

=========  ============================================================================
cifar10    ``cifar-10-python.tar.gz``, or the folder it extracts to, ``cifar-10-batches-py/``
           (``data_batch_1`` .. ``data_batch_5``, ``test_batch``)
cifar100   ``cifar-100-python.tar.gz``, or ``cifar-100-python/`` (``train``, ``test``); the
           100 fine labels
svhn       ``train_32x32.mat`` and ``test_32x32.mat`` (format 2, the cropped digits; read with
           ``scipy.io.loadmat``); label 10 stands for the digit 0 and becomes 0
=========  ============================================================================

``data_dir`` may also be the extracted folder itself. A tar.gz is read in place (one sequential pass),
never extracted to disk.

**The CIFAR batches are Python pickles.** Unpickling runs whatever callables a pickle names, so a
user's file is never given to ``pickle.load``: :func:`load_pickle` uses :class:`ArrayUnpickler`,
whose ``find_class`` hands out only NumPy's array and scalar reconstruction helpers (what the
archives' ``b"data"`` arrays need) and refuses every other global before anything is called.

**Split** (the Dataset contract, :mod:`jaxnas.data.dataset`): as quark0/darts ``train_search.py``,
the first half of the training set in file order is search-train (the weights' data), the second
half search-val (the architecture's data); the official test set is the held-out test part.

**Normalisation**: pixels are divided by 255 and standardised per channel,
:math:`x' = (x/255 - \mu_c)/\sigma_c`. CIFAR-10 and CIFAR-100 use the constants of
:data:`jaxnas.data.augment.STATS` (the reference code's); SVHN has none and uses the statistics of
its training split (search-train and search-val together), computed at load time.
"""

from __future__ import annotations

import os
import pathlib
import pickle
import tarfile
import zlib
from typing import Callable, NamedTuple

import numpy as np

from jaxnas.data import augment
from jaxnas.data.dataset import Dataset
from jaxnas.errors import JaxnasError

__all__ = [
    "ArrayUnpickler",
    "load_pickle",
    "RawSplits",
    "read_cifar",
    "read_svhn",
    "dataset_from_splits",
    "load_cifar10",
    "load_cifar100",
    "load_svhn",
    "CIFAR_FILES",
]

_MAX_PIXEL = 255.0
_DATA_EXTRA = "pip install -e '.[data]'"


def _one_line(error: BaseException) -> str:
  """An exception's message squeezed onto one line (tarfile's span several)."""
  return " ".join(str(error).split()) or type(error).__name__


class RawSplits(NamedTuple):
  """A data set as its files hold it: uint8 NHWC images and integer labels, train and test."""

  train_x: np.ndarray
  train_y: np.ndarray
  test_x: np.ndarray
  test_y: np.ndarray


# ---------------------------------------------------------------------------------------------
# The restricted unpickler.


def _latin1_encode(text, encoding="utf-8"):
  """``_codecs.encode`` for bytes in protocol-2 pickles written by Python 3, latin-1 only."""
  if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
    raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
  return text.encode("latin-1")


def _allowed_globals() -> dict:
  """The only globals a CIFAR pickle may name: NumPy's array/scalar reconstruction helpers.

  A pickled ndarray is ``_reconstruct(ndarray, shape, dtype)`` followed by ``__setstate__`` with
  its bytes; the helper is found under ``numpy.core.multiarray`` (pickles written by NumPy < 2,
  the real archives) or ``numpy._core.multiarray`` (NumPy 2). Each name maps to the running
  NumPy's object; no module is imported by name. Python 3 writes ``bytes`` into protocol-2
  pickles as ``_codecs.encode(text, "latin1")``, allowed for that encoding only.
  """
  reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]
  scalar = np.float64(0).__reduce__()[0]
  allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
             ("_codecs", "encode"): _latin1_encode}
  for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    allowed[(module, "_reconstruct")] = reconstruct
    allowed[(module, "scalar")] = scalar
  return allowed


class ArrayUnpickler(pickle.Unpickler):
  """An unpickler for data files: dicts, lists, bytes, str, numbers and NumPy arrays only.

  ``find_class`` is the only way a pickle reaches a callable (``GLOBAL``/``STACK_GLOBAL``
  opcodes; ``REDUCE`` and ``BUILD`` call what it returned), so refusing every global but the
  NumPy helpers of :func:`_allowed_globals` means a pickle cannot run code: it fails with
  ``pickle.UnpicklingError`` at the first forbidden name, before calling anything. Python 2
  strings (the CIFAR archives were written by Python 2's cPickle) are read as ``bytes``.
  """

  _ALLOWED = None

  def __init__(self, file):
    super().__init__(file, encoding="bytes")

  def find_class(self, module, name):
    if ArrayUnpickler._ALLOWED is None:
      ArrayUnpickler._ALLOWED = _allowed_globals()
    try:
      return ArrayUnpickler._ALLOWED[(module, name)]
    except KeyError:
      raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: a data file may "
                                   "only hold arrays, lists, dicts, bytes, str and numbers")


def load_pickle(file, what: str = "file"):
  """Unpickles ``file`` (a binary file object) with :class:`ArrayUnpickler`.

  Args:
    file: an open binary file.
    what: how to name the file in the error message.

  Returns:
    The unpickled object.

  Raises:
    JaxnasError: if the pickle names anything but NumPy's array helpers, or is damaged.
  """
  try:
    return ArrayUnpickler(file).load()
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
          IndexError) as e:
    raise JaxnasError(f"{what} is not a CIFAR data pickle ({_one_line(e)}); download the "
                      "archive again") from None


# ---------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100.


class _CifarFiles(NamedTuple):
  archive: str
  folder: str
  train: tuple[str, ...]
  test: tuple[str, ...]
  label_key: bytes
  num_classes: int


CIFAR_FILES = {
    "cifar10": _CifarFiles("cifar-10-python.tar.gz", "cifar-10-batches-py",
                           tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                           b"labels", 10),
    "cifar100": _CifarFiles("cifar-100-python.tar.gz", "cifar-100-python", ("train",), ("test",),
                            b"fine_labels", 100),
}


def _cifar_batch(obj, label_key: bytes, what: str) -> tuple[np.ndarray, np.ndarray]:
  """``(images uint8 (n, 32, 32, 3), labels int64 (n,))`` from one unpickled batch dict."""
  if not isinstance(obj, dict):
    raise JaxnasError(f"{what} holds a {type(obj).__name__}, not a CIFAR batch dict; download "
                      "the archive again")
  obj = {k.encode() if isinstance(k, str) else k: v for k, v in obj.items()}
  if b"data" not in obj or label_key not in obj:
    raise JaxnasError(f"{what} lacks {b'data'!r} or {label_key!r} (keys: {sorted(obj)}); is it "
                      "the right data set's archive?")
  data = np.asarray(obj[b"data"])
  labels = np.asarray(obj[label_key]).astype(np.int64).reshape(-1)
  if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
    raise JaxnasError(f"{what}: 'data' is {data.dtype} {data.shape}, expected uint8 (n, 3072)")
  if len(labels) != len(data):
    raise JaxnasError(f"{what}: {len(data)} images but {len(labels)} labels")
  # Each row holds the red, green and blue 32x32 planes in turn, row-major.
  return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _cifar_objects(data_dir: pathlib.Path, files: _CifarFiles) -> dict | None:
  """``{member: unpickled batch}`` from the extracted folder or the archive, or None if neither.

  The archive is read in one sequential pass (``r|gz``): seeking back in a gzip stream would
  decompress it again from the start for every member.
  """
  members = files.train + files.test
  for folder in (data_dir / files.folder, data_dir):
    if all((folder / m).is_file() for m in members):
      objects = {}
      for m in members:
        with open(folder / m, "rb") as f:
          objects[m] = load_pickle(f, m)
      return objects
  archive = data_dir / files.archive
  if not archive.is_file():
    return None
  wanted = {f"{files.folder}/{m}": m for m in members}
  objects = {}
  try:
    with tarfile.open(archive, "r|gz") as tar:
      for info in tar:
        if info.name in wanted and info.isfile():
          objects[wanted[info.name]] = load_pickle(tar.extractfile(info), info.name)
  except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
    raise JaxnasError(f"{archive} cannot be read as a tar.gz archive ({_one_line(e)}); download "
                      "it again") from None
  missing = [m for m in members if m not in objects]
  if missing:
    raise JaxnasError(f"{archive} lacks {files.folder}/{missing[0]}; is it the right archive?")
  return objects


def read_cifar(name: str, data_dir) -> RawSplits | None:
  """Reads CIFAR-10 or CIFAR-100 from ``data_dir``'s standard files, if they are there.

  Args:
    name: ``"cifar10"`` or ``"cifar100"``.
    data_dir: a folder holding the ``.tar.gz`` or its extracted folder (or being that folder).

  Returns:
    The raw splits (train 50,000 and test 10,000 images for the real archives), or None if
    ``data_dir`` holds neither form.

  Raises:
    JaxnasError: if the files are there but damaged, or a pickle is refused.
  """
  files = CIFAR_FILES[name]
  objects = _cifar_objects(pathlib.Path(data_dir), files)
  if objects is None:
    return None

  def part(members):
    batches = [_cifar_batch(objects[m], files.label_key, m) for m in members]
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])

  train_x, train_y = part(files.train)
  test_x, test_y = part(files.test)
  return RawSplits(train_x, train_y, test_x, test_y)


# ---------------------------------------------------------------------------------------------
# SVHN.

SVHN_FILES = ("train_32x32.mat", "test_32x32.mat")


def _svhn_mat(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  try:
    import scipy.io
  except ImportError:
    raise JaxnasError(f"reading {path.name} needs scipy: pip install scipy") from None
  try:
    mat = scipy.io.loadmat(path)
  except (ValueError, OSError, TypeError) as e:
    raise JaxnasError(f"{path} is not a readable .mat file ({_one_line(e)}); download it again") \
        from None
  if "X" not in mat or "y" not in mat:
    raise JaxnasError(f"{path} lacks the arrays X and y of SVHN's format 2; download "
                      "train_32x32.mat / test_32x32.mat again")
  x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
  if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != len(y):
    raise JaxnasError(f"{path}: X has shape {x.shape} and y {y.shape}; expected (32, 32, 3, n) "
                      "and (n, 1)")
  return np.ascontiguousarray(x.transpose(3, 0, 1, 2)), y.astype(np.int64) % 10


def read_svhn(data_dir) -> RawSplits | None:
  """Reads SVHN (cropped digits, format 2) from ``train_32x32.mat`` / ``test_32x32.mat``.

  Labels are ``y mod 10``: the files label the digit 0 as 10.

  Returns:
    The raw splits (73,257 train and 26,032 test images for the real files), or None if the
    files are not in ``data_dir``.

  Raises:
    JaxnasError: if a file is damaged or scipy is missing.
  """
  paths = [pathlib.Path(data_dir) / f for f in SVHN_FILES]
  if not all(p.is_file() for p in paths):
    return None
  train_x, train_y = _svhn_mat(paths[0])
  test_x, test_y = _svhn_mat(paths[1])
  return RawSplits(train_x, train_y, test_x, test_y)


# ---------------------------------------------------------------------------------------------
# From raw splits to a Dataset.


def _channel_stats(images: np.ndarray, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and (population) std of uint8 ``images`` in the [0, 1] scale, float64.

  Sums of ``x`` and ``x²`` over chunks, so no float copy of the whole set is made.
  """
  total, total_sq, count = 0.0, 0.0, 0
  for start in range(0, len(images), chunk):
    x = images[start:start + chunk].astype(np.float64) / _MAX_PIXEL
    total = total + x.sum(axis=(0, 1, 2))
    total_sq = total_sq + (x * x).sum(axis=(0, 1, 2))
    count += x.shape[0] * x.shape[1] * x.shape[2]
  mean = total / count
  return mean, np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))


def dataset_from_splits(name: str, raw: RawSplits, *, num_classes: int,
                        stats=None) -> Dataset:
  r"""The :class:`~jaxnas.data.Dataset` of a data set's train and test files.

  Search-train is ``raw.train_x[:n // 2]``, search-val ``raw.train_x[n // 2:]`` (quark0/darts'
  split, no shuffle: the batches shuffle), test is ``raw.test_x``. Images become float32
  :math:`(x/255 - \mu)/\sigma`.

  Args:
    name: the registry name.
    raw: uint8 images ``(n, H, W, C)`` and integer labels.
    num_classes: labels must lie in ``0 .. num_classes - 1``.
    stats: ``(mean, std)`` per channel in the [0, 1] scale; None computes them from the whole
      training set (search-train and search-val).

  Returns:
    The Dataset.

  Raises:
    JaxnasError: on labels out of range, images that are not 4-D, or a constant channel.
  """
  for x, y, part in ((raw.train_x, raw.train_y, "train"), (raw.test_x, raw.test_y, "test")):
    if x.ndim != 4 or len(x) != len(y):
      raise JaxnasError(f"{name} {part} images have shape {x.shape} for {len(y)} labels; "
                        "expected (n, H, W, C) and n labels")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
      raise JaxnasError(f"{name} {part} labels run from {y.min()} to {y.max()}; expected 0 .. "
                        f"{num_classes - 1}")
  if len(raw.train_x) < 2:
    raise JaxnasError(f"{name} has {len(raw.train_x)} training images; search needs at least 2")
  if stats is None:
    mean, std = _channel_stats(raw.train_x)
  else:
    mean, std = (np.asarray(s, np.float64) for s in stats)
  if np.any(std <= 0):
    raise JaxnasError(f"a channel of {name} is constant over its training split; cannot normalise")
  scale = (1.0 / (_MAX_PIXEL * std)).astype(np.float32)
  shift = (mean / std).astype(np.float32)

  def normalised(x):
    return x.astype(np.float32) * scale - shift

  half = len(raw.train_x) // 2
  return Dataset(
      name=name,
      train_x=normalised(raw.train_x[:half]), train_y=raw.train_y[:half].astype(np.int32),
      val_x=normalised(raw.train_x[half:]), val_y=raw.train_y[half:].astype(np.int32),
      test_x=normalised(raw.test_x), test_y=raw.test_y.astype(np.int32),
      num_classes=int(num_classes),
      image_shape=tuple(int(d) for d in raw.train_x.shape[1:]),
      mean=mean.astype(np.float32), std=std.astype(np.float32),
  )


# ---------------------------------------------------------------------------------------------
# Loaders (the registry's entries).

_WHERE = {
    "cifar10": "cifar-10-python.tar.gz (or its folder cifar-10-batches-py/)",
    "cifar100": "cifar-100-python.tar.gz (or its folder cifar-100-python/)",
    "svhn": "train_32x32.mat and test_32x32.mat",
}


def _tfds_installed() -> bool:
  import importlib.util
  return importlib.util.find_spec("tensorflow_datasets") is not None


def _load(name: str, read: Callable, data_dir, *, num_classes: int, stats) -> Dataset:
  """Archives in ``data_dir`` first, tensorflow-datasets second, else one line saying what to do."""
  if data_dir is not None:
    folder = pathlib.Path(os.path.expanduser(str(data_dir)))
    if not folder.is_dir():
      raise JaxnasError(f"--data-dir {data_dir} is not a folder; create it and put "
                        f"{_WHERE[name]} in it")
    raw = read(folder)
    if raw is not None:
      return dataset_from_splits(name, raw, num_classes=num_classes, stats=stats)
  if _tfds_installed():
    from jaxnas.data import tfds
    raw = tfds.read_tfds(name, data_dir=None if data_dir is None else str(data_dir))
    return dataset_from_splits(name, raw, num_classes=num_classes, stats=stats)
  where = f"{data_dir}" if data_dir is not None else "a folder"
  raise JaxnasError(f"data set {name!r} not found: put {_WHERE[name]} in {where} and pass "
                    f"--data-dir FOLDER, or install tensorflow-datasets ({_DATA_EXTRA})")


def load_cifar10(*, data_dir=None) -> Dataset:
  """CIFAR-10: 25,000 search-train, 25,000 search-val, 10,000 test images, 32x32x3, 10 classes.

  Args:
    data_dir: the folder with ``cifar-10-python.tar.gz`` or ``cifar-10-batches-py/``; without the
      files there, tensorflow-datasets is used if installed (its ``data_dir``).

  Raises:
    JaxnasError: one line saying where to put which file, if the data is nowhere.
  """
  return _load("cifar10", lambda d: read_cifar("cifar10", d), data_dir, num_classes=10,
               stats=augment.STATS["cifar10"])


def load_cifar100(*, data_dir=None) -> Dataset:
  """CIFAR-100 with its 100 fine labels: 25,000 / 25,000 / 10,000 images, 32x32x3.

  Args:
    data_dir: the folder with ``cifar-100-python.tar.gz`` or ``cifar-100-python/``.

  Raises:
    JaxnasError: one line saying where to put which file, if the data is nowhere.
  """
  return _load("cifar100", lambda d: read_cifar("cifar100", d), data_dir, num_classes=100,
               stats=augment.STATS["cifar100"])


def load_svhn(*, data_dir=None) -> Dataset:
  """SVHN cropped digits: 36,628 search-train, 36,629 search-val, 26,032 test images, 10 classes.

  The ``extra`` set is not used. Normalised with the statistics of the training split.

  Args:
    data_dir: the folder with ``train_32x32.mat`` and ``test_32x32.mat``.

  Raises:
    JaxnasError: one line saying where to put which file, if the data is nowhere.
  """
  return _load("svhn", read_svhn, data_dir, num_classes=10, stats=None)
