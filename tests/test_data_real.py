"""Tests for the real data sets (on archives the tests write) and the training augmentation."""

import os
import pathlib
import pickle
import tarfile

import numpy as np
import pytest

from jaxnas import data
from jaxnas.data import archives, augment
from jaxnas.errors import JaxnasError

CIFAR10_MEAN = np.array([0.49139968, 0.48215827, 0.44653124])
CIFAR10_STD = np.array([0.24703233, 0.24348505, 0.26158768])


# --- archives written by the tests ---------------------------------------------------------------


def _batch(rng, n, label_key, num_classes):
  """A CIFAR batch dict as the archives hold it: bytes keys, uint8 (n, 3072) data, list labels."""
  d = {b"batch_label": b"fake batch", b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
       label_key: [int(v) for v in rng.integers(0, num_classes, n)],
       b"filenames": [b"img_%d.png" % i for i in range(n)]}
  if label_key == b"fine_labels":
    d[b"coarse_labels"] = [0] * n
  return d


def _as_numpy1_pickle(obj) -> bytes:
  """Protocol 2, with NumPy 1's module name for the array helper (as the real archives have it)."""
  raw = pickle.dumps(obj, protocol=2)
  return raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def _write_cifar(root: pathlib.Path, name: str, *, per_batch=4, test=6, form="tar", seed=0):
  """Writes a fake CIFAR archive (``form`` tar or folder); returns its batches in file order."""
  files = archives.CIFAR_FILES[name]
  rng = np.random.default_rng(seed)
  members = {m: _batch(rng, per_batch, files.label_key, files.num_classes) for m in files.train}
  members.update({m: _batch(rng, test, files.label_key, files.num_classes) for m in files.test})
  if form == "tar":
    with tarfile.open(root / files.archive, "w:gz") as tar:
      for m, d in members.items():
        path = root / m
        path.write_bytes(_as_numpy1_pickle(d))
        tar.add(path, arcname=f"{files.folder}/{m}")
        path.unlink()
  else:
    folder = root / files.folder
    folder.mkdir()
    for m, d in members.items():
      (folder / m).write_bytes(pickle.dumps(d, protocol=2))
  return members, files


def _expected_images(batches) -> np.ndarray:
  """NHWC uint8 images from CIFAR rows, pixel by pixel: row = red plane, green plane, blue plane."""
  rows = np.concatenate([b[b"data"] for b in batches])
  out = np.zeros((len(rows), 32, 32, 3), np.uint8)
  for c in range(3):
    for i in range(32):
      out[:, i, :, c] = rows[:, c * 1024 + i * 32:c * 1024 + i * 32 + 32]
  return out


def test_cifar10_from_the_tar_gz(tmp_path):
  members, files = _write_cifar(tmp_path, "cifar10")
  ds = data.load("cifar10", data_dir=str(tmp_path))
  train = [members[m] for m in files.train]
  images = _expected_images(train)
  labels = np.concatenate([b[b"labels"] for b in train])
  assert (ds.name, ds.num_classes, ds.image_shape) == ("cifar10", 10, (32, 32, 3))
  # 5 batches of 4: the first half (file order) is search-train, the second search-val.
  assert ds.train_x.shape == ds.val_x.shape == (10, 32, 32, 3) and ds.test_x.shape[0] == 6
  assert ds.train_x.dtype == np.float32 and ds.train_y.dtype == np.int32
  np.testing.assert_array_equal(ds.train_y, labels[:10])
  np.testing.assert_array_equal(ds.val_y, labels[10:])
  np.testing.assert_array_equal(ds.test_y, members["test_batch"][b"labels"])
  # Normalised with the reference's constants, not the (random) data's own statistics.
  np.testing.assert_allclose(ds.mean, CIFAR10_MEAN, rtol=1e-7)
  np.testing.assert_allclose(ds.std, CIFAR10_STD, rtol=1e-7)
  want = (images / 255.0 - CIFAR10_MEAN) / CIFAR10_STD
  np.testing.assert_allclose(ds.train_x, want[:10], atol=2e-6)
  np.testing.assert_allclose(ds.val_x, want[10:], atol=2e-6)
  test_want = (_expected_images([members["test_batch"]]) / 255.0 - CIFAR10_MEAN) / CIFAR10_STD
  np.testing.assert_allclose(ds.test_x, test_want, atol=2e-6)


@pytest.mark.parametrize("point_at", ["parent", "folder"])
def test_cifar100_from_the_extracted_folder_uses_fine_labels(tmp_path, point_at):
  members, files = _write_cifar(tmp_path, "cifar100", per_batch=8, test=4, form="folder")
  where = tmp_path if point_at == "parent" else tmp_path / files.folder
  ds = data.load("cifar100", data_dir=str(where))
  assert ds.num_classes == 100
  np.testing.assert_array_equal(ds.train_y, members["train"][b"fine_labels"][:4])
  np.testing.assert_array_equal(ds.val_y, members["train"][b"fine_labels"][4:])
  want = (_expected_images([members["test"]]) / 255.0 - np.array([0.5071, 0.4865, 0.4409])) \
      / np.array([0.2673, 0.2564, 0.2762])
  np.testing.assert_allclose(ds.test_x, want, atol=2e-6)


class _RunsCode:
  """An object whose unpickling runs a shell command (what a malicious 'data file' would hold)."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def test_the_unpickler_refuses_a_pickle_that_would_run_code(tmp_path):
  marker = tmp_path / "pwned"
  payload = pickle.dumps({b"data": _RunsCode(marker), b"labels": [0]}, protocol=2)
  with pytest.raises(JaxnasError, match=r"refusing to load global (posix|os|nt)\.system"):
    archives.load_pickle(__import__("io").BytesIO(payload), "data_batch_1")
  assert not marker.exists()
  # The same bytes through plain pickle do run the command: the test above could fail.
  pickle.loads(payload)
  assert marker.exists()


@pytest.mark.parametrize("target", [eval, exec, getattr])
def test_the_unpickler_refuses_builtins_too(target):
  payload = pickle.dumps({b"data": _Reduce(target, ("1",))}, protocol=4)
  with pytest.raises(JaxnasError, match=rf"refusing to load global builtins\.{target.__name__}"):
    archives.load_pickle(__import__("io").BytesIO(payload))


class _Reduce:
  def __init__(self, fn, args):
    self.fn, self.args = fn, args

  def __reduce__(self):
    return (self.fn, self.args)


def test_a_malicious_archive_fails_in_one_line_before_running_anything(tmp_path):
  marker = tmp_path / "pwned"
  files = archives.CIFAR_FILES["cifar10"]
  with tarfile.open(tmp_path / files.archive, "w:gz") as tar:
    for m in files.train + files.test:
      path = tmp_path / m
      path.write_bytes(pickle.dumps({b"data": _RunsCode(marker), b"labels": [0]}, protocol=2))
      tar.add(path, arcname=f"{files.folder}/{m}")
  with pytest.raises(JaxnasError) as err:
    data.load("cifar10", data_dir=str(tmp_path))
  assert "refusing to load global" in str(err.value) and "\n" not in str(err.value)
  assert not marker.exists()


def test_svhn_from_mat_files_maps_10_to_0_and_computes_its_statistics(tmp_path):
  scipy_io = pytest.importorskip("scipy.io")
  rng = np.random.default_rng(3)
  x_train = rng.integers(0, 256, (32, 32, 3, 6), dtype=np.uint8)
  y_train = np.array([[10], [1], [2], [10], [9], [3]], np.uint8)
  x_test = rng.integers(0, 256, (32, 32, 3, 2), dtype=np.uint8)
  scipy_io.savemat(tmp_path / "train_32x32.mat", {"X": x_train, "y": y_train})
  scipy_io.savemat(tmp_path / "test_32x32.mat", {"X": x_test, "y": np.array([[10], [5]])})
  ds = data.load("svhn", data_dir=str(tmp_path))
  np.testing.assert_array_equal(ds.train_y, [0, 1, 2])
  np.testing.assert_array_equal(ds.val_y, [0, 9, 3])
  np.testing.assert_array_equal(ds.test_y, [0, 5])
  pixels = x_train.astype(np.float64) / 255  # (H, W, C, N): channel axis 2
  np.testing.assert_allclose(ds.mean, pixels.mean(axis=(0, 1, 3)), rtol=1e-6)
  np.testing.assert_allclose(ds.std, pixels.std(axis=(0, 1, 3)), rtol=1e-6)
  both = np.concatenate([ds.train_x, ds.val_x]).astype(np.float64)
  np.testing.assert_allclose(both.mean(axis=(0, 1, 2)), 0, atol=1e-5)
  np.testing.assert_allclose(both.std(axis=(0, 1, 2)), 1, atol=1e-5)
  np.testing.assert_allclose(ds.test_x[1], (x_test[..., 1] / 255 - ds.mean) / ds.std, atol=1e-5)


@pytest.mark.parametrize("name,file", [("cifar10", "cifar-10-python.tar.gz"),
                                       ("cifar100", "cifar-100-python.tar.gz"),
                                       ("svhn", "train_32x32.mat and test_32x32.mat")])
def test_missing_data_is_one_line_saying_where_and_which_extra(tmp_path, monkeypatch, name, file):
  monkeypatch.setattr(archives, "_tfds_installed", lambda: False)
  with pytest.raises(JaxnasError) as err:
    data.load(name, data_dir=str(tmp_path))
  message = str(err.value)
  assert file in message and "--data-dir" in message and "pip install -e '.[data]'" in message
  assert "\n" not in message


def test_a_damaged_archive_is_one_line(tmp_path):
  (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"not a tar file at all")
  with pytest.raises(JaxnasError, match=r"cannot be read as a tar.gz archive.*download it again") \
      as err:
    data.load("cifar10", data_dir=str(tmp_path))
  assert "\n" not in str(err.value)


def test_the_cli_reports_missing_data_in_one_line(tmp_path, monkeypatch, capsys):
  from jaxnas import cli
  monkeypatch.setattr(archives, "_tfds_installed", lambda: False)
  code = cli.main(["search", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--dry-run",
                   "--out", str(tmp_path / "run")])
  err = capsys.readouterr().err
  assert code == 2 and err.startswith("jaxnas: error: data set 'cifar10' not found")
  assert err.count("\n") == 1


def test_tfds_loader_on_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  from jaxnas.data import tfds as jaxnas_tfds
  with tfds.testing.mock_data(num_examples=6):
    raw = jaxnas_tfds.read_tfds("cifar100")
    ds = data.load("svhn")
  assert raw.train_x.shape[1:] == (32, 32, 3) and raw.train_x.dtype == np.uint8
  assert len(raw.train_x) == len(raw.train_y) == 6 and raw.train_y.max() < 100
  assert ds.train_x.shape == (3, 32, 32, 3) and ds.val_x.shape == (3, 32, 32, 3)
  assert ds.test_x.shape[1:] == (32, 32, 3) and ds.num_classes == 10


# --- augmentation -----------------------------------------------------------------------------


def _images(n=5, h=8, w=8, c=3, seed=0):
  return np.random.default_rng(seed).normal(size=(n, h, w, c)).astype(np.float32)


def test_augment_keeps_shape_and_dtype_and_is_deterministic_for_a_seed():
  x = _images()
  a = augment.augment_batch(x, rng=np.random.default_rng(1), cutout=4)
  b = augment.augment_batch(x, rng=np.random.default_rng(1), cutout=4)
  c = augment.augment_batch(x, rng=np.random.default_rng(2), cutout=4)
  assert a.shape == x.shape and a.dtype == np.float32
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  np.testing.assert_array_equal(x, _images())  # the input is not modified


def test_crop_against_a_pixel_loop():
  x, p, fill = _images(n=6, h=5, w=7), 2, np.array([-1.0, -2.0, -3.0])
  got = augment.random_crop(x, rng=np.random.default_rng(4), padding=p, fill=fill)
  offsets = np.random.default_rng(4).integers(0, 2 * p + 1, size=(6, 2))  # the documented draw
  for n, (a, b) in enumerate(offsets):
    for i in range(5):
      for j in range(7):
        si, sj = i + a - p, j + b - p
        want = x[n, si, sj] if (0 <= si < 5 and 0 <= sj < 7) else fill
        np.testing.assert_array_equal(got[n, i, j], want)


def test_crop_by_hand_on_a_tiny_image():
  # A 2x2 image padded by 1: the offsets (0, 0) and (2, 2) give the corner crops.
  x = np.array([[1.0, 2.0], [3.0, 4.0]])[None, :, :, None].repeat(64, axis=0)
  got = augment.random_crop(x, rng=np.random.default_rng(0), padding=1)[..., 0]
  crops = {tuple(map(tuple, g)) for g in got}
  assert ((0.0, 0.0), (0.0, 1.0)) in crops       # offset (0, 0): top-left
  assert ((4.0, 0.0), (0.0, 0.0)) in crops       # offset (2, 2): bottom-right
  assert ((1.0, 2.0), (3.0, 4.0)) in crops       # offset (1, 1): the image itself
  assert len(crops) == 9                          # every offset in {0, 1, 2}² appears


def test_flip_mirrors_exactly_the_drawn_images():
  x = np.arange(3.0)[None, None, :, None].repeat(40, axis=0)  # each image is the row [0, 1, 2]
  got = augment.random_flip(x, rng=np.random.default_rng(5))[:, 0, :, 0]
  flips = np.random.default_rng(5).random(40) < 0.5
  np.testing.assert_array_equal(got[flips], [[2.0, 1.0, 0.0]] * flips.sum())
  np.testing.assert_array_equal(got[~flips], [[0.0, 1.0, 2.0]] * (~flips).sum())
  assert 0 < flips.sum() < 40


def test_cutout_zeros_the_clipped_square_around_the_drawn_centre():
  x = np.ones((50, 32, 32, 3), np.float32)
  got = augment.cutout(x, rng=np.random.default_rng(6), length=16)
  rng = np.random.default_rng(6)
  cy, cx = rng.integers(0, 32, 50), rng.integers(0, 32, 50)
  for n in range(50):
    rows = (min(32, cy[n] + 8) - max(0, cy[n] - 8))
    cols = (min(32, cx[n] + 8) - max(0, cx[n] - 8))
    zeros = got[n, :, :, 0] == 0
    assert zeros.sum() == rows * cols
    assert zeros[max(0, cy[n] - 8), max(0, cx[n] - 8)] and zeros[min(31, cy[n] + 7), cx[n]]
    np.testing.assert_array_equal(got[n, :, :, 0], got[n, :, :, 2])  # every channel alike
  assert (got == 0).reshape(50, -1).sum(axis=1).max() == 16 * 16 * 3  # an interior centre


def test_augmenting_normalised_images_with_black_fill_equals_the_reference_pipeline():
  # quark0/darts: pad raw [0, 1] pixels with 0, crop, flip, normalise, then cutout (zeros).
  raw = np.random.default_rng(8).random((7, 12, 12, 3))
  mean, std = CIFAR10_MEAN, CIFAR10_STD
  got = augment.augment_batch(augment.normalize(raw, mean, std), rng=np.random.default_rng(9),
                              fill=-mean / std, cutout=6)
  rng = np.random.default_rng(9)
  offsets = rng.integers(0, 9, size=(7, 2))
  flips = rng.random(7) < 0.5
  cy, cx = rng.integers(0, 12, 7), rng.integers(0, 12, 7)
  padded = np.pad(raw, ((0, 0), (4, 4), (4, 4), (0, 0)))
  for n in range(7):
    img = padded[n, offsets[n, 0]:offsets[n, 0] + 12, offsets[n, 1]:offsets[n, 1] + 12]
    img = img[:, ::-1] if flips[n] else img
    img = (img - mean) / std
    img[max(0, cy[n] - 3):cy[n] + 3, max(0, cx[n] - 3):cx[n] + 3] = 0
    np.testing.assert_allclose(got[n], img, atol=1e-6)


def test_switches_turn_each_step_off():
  x = _images()
  np.testing.assert_array_equal(
      augment.augment_batch(x, rng=np.random.default_rng(0), crop_padding=0, flip=False,
                            cutout=0), x)


def test_normalize_gives_zero_mean_unit_std_and_the_constants_map_as_expected():
  x = np.random.default_rng(1).random((20, 4, 4, 3))
  y = augment.normalize(x, x.mean(axis=(0, 1, 2)), x.std(axis=(0, 1, 2)))
  assert y.dtype == np.float32
  np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0, atol=1e-6)
  np.testing.assert_allclose(y.std(axis=(0, 1, 2)), 1, atol=1e-6)
  mean, std = augment.STATS["cifar10"]
  pixel = np.array([[mean, np.add(mean, std)]])  # (1, 2, 3): the mean colour and mean + std
  np.testing.assert_allclose(augment.normalize(pixel, mean, std), [[[0, 0, 0], [1, 1, 1]]],
                             atol=1e-6)


@pytest.mark.parametrize("call,match", [
    (lambda: augment.augment_batch(np.zeros((8, 8, 3)), rng=np.random.default_rng(0)),
     r"batch of shape \(N, H, W, C\), got shape \(8, 8, 3\)"),
    (lambda: augment.augment_batch(np.zeros((1, 8, 8, 3)), rng=0), r"np.random.Generator"),
    (lambda: augment.augment_batch(np.zeros((1, 8, 8, 3)), rng=np.random.default_rng(0),
                                   cutout=-1), r"cutout length must be a whole number"),
    (lambda: augment.normalize(np.zeros((1, 2, 2, 3)), [0.5], [0.2]), r"one value per channel"),
    (lambda: augment.normalize(np.zeros((1, 2, 2, 1)), [0.5], [0.0]), r"std must be positive"),
])
def test_bad_augmentation_input_is_one_line(call, match):
  with pytest.raises(JaxnasError, match=match):
    call()
