"""Training a genotype: the jitted step (one compilation, SGD on the autodiff gradient, schedules),
the loss falling, the command line's dry run and its one-line errors."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnas import cli, data, evalnet, genotypes, train
from jaxnas.derive import Genotype
from test_evalnet import _formula  # the per-op counts written out there

F64 = jnp.float64
SPE, EPOCHS, DROP, BATCH = 5, 4, 0.2, 32


@pytest.fixture(scope="module")
def setup():
  ds = data.load("digits")
  model = evalnet.NetworkCIFAR(genotypes.get("DARTS_V2"), channels=4, num_cells=3, num_classes=10,
                               dtype=F64)
  cfg = train.resolve(train.TrainConfig(epochs=EPOCHS, drop_path=DROP), "darts", (8, 8, 1))
  tx, schedule = train.make_optimizer(cfg, steps_per_epoch=SPE)
  state = train.init_train_state(model, tx, jax.random.key(0), ds.image_shape)
  traced = []
  raw = train.make_train_step(model, tx, schedule, auxiliary_weight=0.0, drop_path=DROP,
                              steps_per_epoch=SPE, epochs=EPOCHS, jit=False)

  def counting(state, batch):
    traced.append(1)
    return raw(state, batch)

  step = jax.jit(counting)
  batch = {"image": jnp.asarray(ds.train_x[:BATCH], F64), "label": jnp.asarray(ds.train_y[:BATCH])}
  return model, cfg, state, step, traced, batch


def test_first_step_is_clipped_sgd_with_weight_decay_on_the_autodiff_gradient(setup):
  model, cfg, state, step, _, batch = setup

  def ce(params):  # written here: mean softmax cross-entropy of the train-mode logits
    (logits, _), _ = model.apply({"params": params, "batch_stats": state.batch_stats},
                                 batch["image"], train=True, mutable=["batch_stats"])
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, batch["label"][:, None], axis=1))

  loss0, grads = jax.jit(jax.value_and_grad(ce))(state.params)
  new_state, metrics = step(state, batch)
  norm = np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree.leaves(grads)))
  scale = min(1.0, 5.0 / norm)  # clip_grad_norm(5)
  expected = jax.tree.map(lambda w, g: w - 0.025 * (scale * g + 3e-4 * w), state.params, grads)
  # Epoch 0: drop-path probability 0, so the step's loss is the plain cross-entropy.
  np.testing.assert_allclose(float(metrics["train_loss"]), float(loss0), rtol=1e-12)
  np.testing.assert_allclose(float(metrics["grad_norm"]), norm, rtol=1e-10)
  for got, want in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(expected)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-9, atol=1e-12)


def test_loss_falls_schedules_follow_the_epoch_and_the_step_compiles_once(setup):
  _, _, state, step, traced, batch = setup
  losses, drops, lrs = [], [], []
  for _ in range(SPE * EPOCHS):  # 20 steps on one batch
    state, metrics = step(state, batch)
    losses.append(float(metrics["train_ce"]))
    drops.append(float(metrics["drop_prob"]))
    lrs.append(float(metrics["lr"]))
  assert len(traced) == 1
  assert all(math.isfinite(v) for v in losses)
  assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3])
  epochs = np.arange(SPE * EPOCHS) // SPE
  np.testing.assert_allclose(drops, DROP * epochs / EPOCHS, rtol=1e-12)  # p · e / E
  np.testing.assert_allclose(lrs, 0.5 * 0.025 * (1 + np.cos(np.pi * epochs / EPOCHS)), rtol=1e-7)


def test_evaluate_counts_every_example_once(setup):
  model, _, state, _, _, batch = setup
  x, y = np.asarray(batch["image"][:7]), np.asarray(batch["label"][:7])
  logits, _ = jax.jit(lambda p, s, x: model.apply({"params": p, "batch_stats": s}, x,
                                                  train=False))(state.params, state.batch_stats, x)
  logp = np.asarray(jax.nn.log_softmax(logits))
  loss, acc = train.evaluate(model, state.params, state.batch_stats, x, y, batch_size=4)
  np.testing.assert_allclose(loss, -np.mean(logp[np.arange(7), y]), rtol=1e-10)
  assert acc == np.mean(np.argmax(logp, 1) == y)


def test_genotype_from_name_file_and_run_directory(tmp_path):
  g = genotypes.get("PC_DARTS")
  g.save(tmp_path)  # a run directory holding genotype.json
  assert train.load_genotype(tmp_path) == g
  assert train.load_genotype(tmp_path / "genotype.json") == g
  assert train.load_genotype("pc-darts") == g


def test_dry_run_prints_the_counts(tmp_path, capsys):
  out = tmp_path / "run"
  assert cli.main(["train", "--genotype", "DARTS_V2", "--channels", "8", "--cells", "5",
                   "--dry-run", "--out", str(out)]) == 0
  text = capsys.readouterr().out
  plain, aux, macs = _formula(genotypes.get("DARTS_V2"), 8, 5)  # 3-channel 32×32 images
  # The digits have one channel: the stem's 3×3 conv to 3C channels has 2·9·3C fewer weights.
  one = plain - 2 * 9 * 3 * 8
  assert (f"parameters: {one:,} without the auxiliary head, {one + aux:,} with the auxiliary head "
          f"(1-channel images; for 3-channel ones as in the papers: {plain:,}, {plain + aux:,} "
          "with the auxiliary head)") in text
  assert f"multiply-adds of one 32×32×3 forward pass (the papers' figure): {macs / 1e6:.2f}M" in text
  config = json.loads((out / "config.json").read_text())
  assert config["num_params_32x32x3"] == plain and config["macs_32x32x3"] == macs
  assert not (out / "metrics.jsonl").exists()


def _error(argv, capsys):
  assert cli.main(argv) == 2
  err = capsys.readouterr().err
  assert err.startswith("jaxnas: error: ") and err.count("\n") == 1
  return err


def test_bad_genotypes_give_one_line(tmp_path, capsys):
  assert "DARTS_V2" in _error(["train", "--genotype", "DARTS_V9"], capsys)
  bad = tmp_path / "bad.json"
  bad.write_text("{not json")
  assert "not valid JSON" in _error(["train", "--genotype", str(bad)], capsys)
  bad.write_text(json.dumps({"normal": [["sep_conv_3x3", 0]]}))
  assert "lacks ['normal_concat']" in _error(["train", "--genotype", str(bad)], capsys)
  empty = tmp_path / "run"
  empty.mkdir()
  assert "no genotype file" in _error(["train", "--genotype", str(empty)], capsys)
  odd = Genotype(normal=[("conv_9x9", 0), ("skip_connect", 1)], normal_concat=[2],
                 reduce=[("max_pool_3x3", 0), ("skip_connect", 1)], reduce_concat=[2])
  odd.save(tmp_path)
  assert "conv_9x9" in _error(["train", "--genotype", str(tmp_path), "--dry-run",
                               "--out", str(tmp_path / "x")], capsys)


def test_bad_options_give_one_line(capsys):
  assert "--cutout 12 is larger than the 8×8" in _error(
      ["train", "--genotype", "DARTS_V2", "--cutout", "12"], capsys)
  assert "images of at least 32×32" in _error(
      ["train", "--genotype", "DARTS_V2", "--auxiliary-weight", "0.4"], capsys)
  assert "--drop-path must be a number in [0.0, 1.0)" in _error(
      ["train", "--genotype", "DARTS_V2", "--drop-path", "1"], capsys)
  assert "no auxiliary head" in _error(
      ["train", "--genotype", "NB201_RESNET", "--auxiliary-weight", "0.4"], capsys)
  assert "--channels 5 is odd" in _error(
      ["train", "--genotype", "DARTS_V2", "--channels", "5"], capsys)


@pytest.mark.slow
def test_auxiliary_loss_enters_with_its_weight():
  """On 32×32 inputs: the step's loss = CE(logits) + 0.4 · CE(aux logits), both computed here."""
  model = evalnet.NetworkCIFAR(genotypes.get("DARTS_V2"), channels=2, num_cells=3, num_classes=10,
                               auxiliary=True, dtype=F64)
  cfg = train.resolve(train.TrainConfig(epochs=1), "darts", (32, 32, 3))
  tx, schedule = train.make_optimizer(cfg, steps_per_epoch=1)
  state = train.init_train_state(model, tx, jax.random.key(1), (32, 32, 3))
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.standard_normal((4, 32, 32, 3))),
           "label": jnp.asarray(rng.integers(0, 10, 4).astype(np.int32))}
  (logits, aux), _ = jax.jit(lambda p, s, x: model.apply(
      {"params": p, "batch_stats": s}, x, train=True, mutable=["batch_stats"]))(
          state.params, state.batch_stats, batch["image"])
  ce = lambda z: float(optax.softmax_cross_entropy_with_integer_labels(z, batch["label"]).mean())
  step = train.make_train_step(model, tx, schedule, auxiliary_weight=0.4, drop_path=0.2,
                               steps_per_epoch=1, epochs=1)
  _, metrics = step(state, batch)
  np.testing.assert_allclose(float(metrics["train_loss"]), ce(logits) + 0.4 * ce(aux), rtol=1e-10)


@pytest.mark.slow
def test_cli_trains_end_to_end(tmp_path, capsys):
  out = tmp_path / "run"
  assert cli.main(["train", "--genotype", "DARTS_V2", "--channels", "4", "--cells", "3",
                   "--epochs", "2", "--batch-size", "128", "--log-every", "5", "--out", str(out),
                   "--no-compile-cache"]) == 0
  text = capsys.readouterr().out
  assert "epoch 2/2" in text
  lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
  evals = [l for l in lines if "test_accuracy" in l]
  assert [l["epoch"] for l in evals] == [1, 2]
  summary = json.loads((out / "summary.json").read_text())
  assert summary["test_accuracy"] == evals[-1]["test_accuracy"] > 0.1
  assert (out / "weights.msgpack").stat().st_size > 0


@pytest.mark.slow
def test_32x32_run_with_augmentation_and_auxiliary_head(tmp_path, monkeypatch, capsys):
  """The paper's path on synthetic 32×32×3 images: crop, flip, cutout, auxiliary head."""
  from jaxnas.data.dataset import make_dataset
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (48, 32, 32, 3))
  labels = rng.integers(0, 10, 48)
  fake = make_dataset("cifar10", images, labels, train_idx=np.arange(0, 20),
                      val_idx=np.arange(20, 40), test_idx=np.arange(40, 48), max_value=255,
                      num_classes=10)
  monkeypatch.setattr(train.data, "load", lambda name, data_dir=None: fake)
  out = tmp_path / "run"
  assert cli.main(["train", "--genotype", "DARTS_V2", "--dataset", "cifar10", "--channels", "2",
                   "--cells", "3", "--epochs", "1", "--batch-size", "8", "--log-every", "1",
                   "--out", str(out), "--no-compile-cache"]) == 0
  config = json.loads((out / "config.json").read_text())
  assert config["config"]["auxiliary_weight"] == 0.4 and config["config"]["cutout"] == 16
  assert config["augmentation"] == {"crop_padding": 4, "flip": True, "cutout": 16,
                                    "available": True}
  lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
  steps = [l for l in lines if "train_aux_ce" in l]
  assert len(steps) == 5 and all(math.isfinite(l["train_loss"]) for l in steps)
  for l in steps:
    np.testing.assert_allclose(l["train_loss"], l["train_ce"] + 0.4 * l["train_aux_ce"],
                               rtol=1e-5)
