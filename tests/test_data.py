"""Tests for jaxnas.data: the embedded digits, the split, and stateless batches."""

import hashlib
import itertools
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from jaxnas import data
from jaxnas.data import digits
from jaxnas.errors import JaxnasError


@pytest.fixture(scope="module")
def ds():
  return data.load("digits")


# --- the embedded data set --------------------------------------------------------------------


def test_raw_digits_are_the_uci_optdigits_test_file():
  images, labels = digits.read_digits()
  assert images.shape == (1797, 8, 8) and images.dtype == np.uint8
  assert labels.shape == (1797,) and labels.dtype == np.uint8
  assert images.min() == 0 and images.max() == 16
  np.testing.assert_array_equal(np.bincount(labels),
                                [178, 182, 177, 183, 181, 182, 181, 179, 174, 180])


def test_dataset_shapes_dtypes_and_counts(ds):
  assert ds.name == "digits"
  assert ds.num_classes == 10
  assert ds.image_shape == (8, 8, 1)
  sizes = {"train": 748, "val": 749, "test": 300}
  for part, size in sizes.items():
    x, y = getattr(ds, f"{part}_x"), getattr(ds, f"{part}_y")
    assert x.shape == (size, 8, 8, 1) and x.dtype == np.float32
    assert y.shape == (size,) and y.dtype == np.int32
    assert y.min() == 0 and y.max() == 9
  assert sum(sizes.values()) == 1797
  assert ds.mean.shape == (1,) and ds.std.shape == (1,)
  assert ds.mean.dtype == np.float32 and ds.std.dtype == np.float32


def test_split_is_disjoint_covers_everything_and_stratifies_test():
  _, labels = digits.read_digits()
  train, val, test = digits.digits_split(labels)
  together = np.concatenate([train, val, test])
  np.testing.assert_array_equal(np.sort(together), np.arange(1797))
  assert (len(train), len(val), len(test)) == (748, 749, 300)
  np.testing.assert_array_equal(np.bincount(labels[test]), np.full(10, 30))


def test_split_is_pinned():
  # The split must never change between versions: a changed hash means results are no longer
  # comparable with earlier runs.
  _, labels = digits.read_digits()
  digest = hashlib.sha256()
  for part in digits.digits_split(labels):
    digest.update(part.astype(np.int64).tobytes())
  assert digest.hexdigest()[:16] == "39f12fbda00afccc"


def test_parts_hold_the_right_images(ds):
  images, labels = digits.read_digits()
  train, val, test = digits.digits_split(labels)
  for idx, x, y in ((train, ds.train_x, ds.train_y), (val, ds.val_x, ds.val_y),
                    (test, ds.test_x, ds.test_y)):
    np.testing.assert_array_equal(y, labels[idx])
    raw = x[..., 0] * ds.std[0] + ds.mean[0]
    np.testing.assert_allclose(raw * 16, images[idx], atol=1e-4)


def test_normalised_by_the_training_split(ds):
  fit = np.concatenate([ds.train_x, ds.val_x]).astype(np.float64)
  np.testing.assert_allclose(fit.mean(axis=(0, 1, 2)), [0.0], atol=1e-5)
  np.testing.assert_allclose(fit.std(axis=(0, 1, 2)), [1.0], atol=1e-5)
  np.testing.assert_allclose(ds.train_x.mean(axis=(0, 1, 2)), [0.0], atol=0.05)
  np.testing.assert_allclose(ds.train_x.std(axis=(0, 1, 2)), [1.0], atol=0.05)
  # mean and std are recorded in the [0, 1] pixel scale.
  images, _ = digits.read_digits()
  assert 0.0 < ds.mean[0] < 1.0
  np.testing.assert_allclose(ds.mean[0], images.mean() / 16, rtol=0.05)


def test_load_ignores_the_run_and_is_deterministic(ds):
  again = data.load("digits", data_dir="/nonexistent")
  for a, b in zip(ds, again, strict=True):
    np.testing.assert_array_equal(a, b)


def test_data_never_imports_tensorflow_or_sklearn():
  code = ("import sys, jaxnas.data as d; d.load('digits'); "
          "bad = [m for m in ('tensorflow', 'sklearn', 'tensorflow_datasets') "
          "if m in sys.modules]; "
          "assert not bad, bad")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=pathlib.Path(__file__).parents[1])


def test_unknown_data_set_lists_the_known_ones():
  with pytest.raises(JaxnasError, match=r"unknown data set 'mnist'; choose one of: .*digits"):
    data.load("mnist")


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn"])
def test_real_data_sets_in_a_missing_folder_say_where_to_put_them(name):
  # The loaders themselves are tested in test_data_real.py.
  assert name in data.DATASETS
  with pytest.raises(JaxnasError, match=r"--data-dir /nonexistent is not a folder; create it"):
    data.load(name, data_dir="/nonexistent")


# --- batches ------------------------------------------------------------------------------------


def _toy(n=10):
  x = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
  return x, np.arange(n, dtype=np.int32)


def test_steps_per_epoch_drops_the_remainder():
  assert data.steps_per_epoch(10, 3) == 3
  assert data.steps_per_epoch(10, 10) == 1
  assert data.steps_per_epoch(748, 64) == 11


def test_batch_at_follows_the_documented_permutation():
  x, y = _toy(10)
  for step in range(8):
    epoch, position = divmod(step, 3)
    order = np.random.default_rng([7, epoch]).permutation(10)
    rows = order[position * 3:(position + 1) * 3]
    xb, yb = data.batch_at(x, y, 3, seed=7, step=step)
    np.testing.assert_array_equal(yb, rows)
    np.testing.assert_array_equal(xb, x[rows])
    assert isinstance(xb, np.ndarray) and xb.dtype == np.float32 and yb.dtype == np.int32


def test_each_epoch_visits_every_example_once():
  x, y = _toy(12)
  for epoch in range(3):
    seen = np.concatenate([data.batch_at(x, y, 4, seed=0, step=epoch * 3 + i)[1] for i in range(3)])
    np.testing.assert_array_equal(np.sort(seen), np.arange(12))


def test_epochs_differ_and_remainder_changes_between_epochs():
  x, y = _toy(10)
  first = np.concatenate([data.batch_at(x, y, 3, seed=0, step=s)[1] for s in range(3)])
  second = np.concatenate([data.batch_at(x, y, 3, seed=0, step=s)[1] for s in range(3, 6)])
  assert len(set(first)) == len(set(second)) == 9
  assert not np.array_equal(first, second)


def test_same_seed_same_batches_different_seed_different():
  x, y = _toy(50)
  a = [data.batch_at(x, y, 8, seed=3, step=s)[1] for s in range(12)]
  b = [data.batch_at(x, y, 8, seed=3, step=s)[1] for s in range(12)]
  c = [data.batch_at(x, y, 8, seed=4, step=s)[1] for s in range(12)]
  np.testing.assert_array_equal(np.stack(a), np.stack(b))
  assert not np.array_equal(np.stack(a), np.stack(c))


def test_batches_are_copies():
  x, y = _toy(10)
  xb, yb = data.batch_at(x, y, 5, seed=0, step=0)
  xb[:] = -1
  yb[:] = -1
  assert x.min() >= 0 and y.min() >= 0
  np.testing.assert_array_equal(data.batch_at(x, y, 5, seed=0, step=0)[1] >= 0, True)


def test_iterate_resumes_where_batch_at_says():
  x, y = _toy(23)
  stream = list(itertools.islice(data.iterate(x, y, 5, seed=11), 15))
  for k, (xb, yb) in enumerate(stream):
    xk, yk = data.batch_at(x, y, 5, seed=11, step=k)
    np.testing.assert_array_equal(xb, xk)
    np.testing.assert_array_equal(yb, yk)
  resumed = list(itertools.islice(data.iterate(x, y, 5, seed=11, start_step=9), 6))
  for (_, a), (_, b) in zip(resumed, stream[9:], strict=True):
    np.testing.assert_array_equal(a, b)


def test_split_seeds_are_distinct_and_fixed():
  assert data.split_seeds(0) == (0, 673228719)
  seeds = {s for run in range(100) for s in data.split_seeds(run)}
  assert len(seeds) == 200  # no run's val stream is another run's train stream


def test_search_batches(ds):
  train, val = data.search_batches(ds, 64, seed=5, step=13)
  assert set(train) == set(val) == {"image", "label"}
  assert train["image"].shape == val["image"].shape == (64, 8, 8, 1)
  assert train["image"].dtype == np.float32 and train["label"].dtype == np.int32
  train_seed, val_seed = data.split_seeds(5)
  xb, yb = data.batch_at(ds.train_x, ds.train_y, 64, seed=train_seed, step=13)
  np.testing.assert_array_equal(train["image"], xb)
  np.testing.assert_array_equal(train["label"], yb)
  xb, yb = data.batch_at(ds.val_x, ds.val_y, 64, seed=val_seed, step=13)
  np.testing.assert_array_equal(val["image"], xb)
  again_train, again_val = data.search_batches(ds, 64, seed=5, step=13)
  np.testing.assert_array_equal(again_train["label"], train["label"])
  np.testing.assert_array_equal(again_val["label"], val["label"])


@pytest.mark.parametrize("batch_size, message", [
    (0, r"^batch size 0 is not positive; choose --batch-size ≥ 1$"),
    (-3, r"^batch size -3 is not positive; choose --batch-size ≥ 1$"),
    (2.5, r"^batch size 2.5 is not a whole number; choose an integer --batch-size$"),
    (True, r"^batch size True is not a whole number"),
    (4096, r"^batch size 4096 is larger than the 748 search-train images of digits; "
           r"choose --batch-size ≤ 748$"),
    (749, r"^batch size 749 is larger than the 748 search-train"),
])
def test_bad_batch_sizes(ds, batch_size, message):
  with pytest.raises(JaxnasError, match=message):
    data.search_batches(ds, batch_size, seed=0, step=0)


def test_batch_size_larger_than_val_part_names_it():
  x, y = _toy(10)
  with pytest.raises(JaxnasError, match=r"larger than the 10 search-val images of toy; choose "
                     r"--batch-size ≤ 10$"):
    data.validate_batch_size(10, 11, "search-val images of toy")
  with pytest.raises(JaxnasError, match=r"larger than the 10 examples"):
    data.batch_at(x, y, 11, seed=0, step=0)
  with pytest.raises(JaxnasError, match=r"larger than the 10 examples"):
    data.steps_per_epoch(10, 11)
  with pytest.raises(JaxnasError, match=r"no examples"):
    data.validate_batch_size(0, 1)


@pytest.mark.parametrize("kwargs, message", [
    ({"seed": -1, "step": 0}, r"^seed -1 is negative; choose a seed ≥ 0$"),
    ({"seed": 0, "step": -2}, r"^step -2 is negative; choose a step ≥ 0$"),
    ({"seed": 0.5, "step": 0}, r"^seed 0.5 is not a whole number"),
    ({"seed": 0, "step": "3"}, r"^step '3' is not a whole number"),
])
def test_bad_seed_or_step(kwargs, message):
  x, y = _toy(10)
  with pytest.raises(JaxnasError, match=message):
    data.batch_at(x, y, 2, **kwargs)


def test_numpy_integers_are_accepted():
  x, y = _toy(10)
  a = data.batch_at(x, y, np.int64(2), seed=np.int32(1), step=np.uint8(4))[1]
  np.testing.assert_array_equal(a, data.batch_at(x, y, 2, seed=1, step=4)[1])


def test_mismatched_lengths_and_eager_iterate_checks():
  x, y = _toy(10)
  with pytest.raises(JaxnasError, match=r"^x has 10 examples but y has 9"):
    data.batch_at(x, y[:9], 2, seed=0, step=0)
  with pytest.raises(JaxnasError, match=r"^batch size 0"):
    data.iterate(x, y, 0, seed=0)
  with pytest.raises(JaxnasError, match=r"^start step -1 is negative"):
    data.iterate(x, y, 2, seed=0, start_step=-1)
