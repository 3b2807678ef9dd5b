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
from jaxnas.errors import JaxnasError
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
  # The papers' network (C = 36, L = 20), counted by the per-op formula of test_evalnet.
  plain, aux, macs = _formula(genotypes.get("DARTS_V2"), 36, 20)
  assert (f"the papers' network (C=36, L=20, 10 classes, 32×32×3): {plain:,} parameters without "
          f"the auxiliary head, {plain + aux:,} with it; {macs / 1e6:.2f}M multiply-adds") in text
  assert "3,349,342 parameters without the auxiliary head, 3,825,768 with it; 528.36M" in text


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


# ------------------------------------------------------------------------------------------------
# Checkpoints, --resume and the non-finite stop (issue 7). The bit-for-bit test reuses the module's
# compiled step; one tiny diverging run (its own compile, a few steps) serves the run-level tests.

def _digits_batch(ds, step):
  """The training loop's batch at ``step`` (jaxnas.data.batch_at), in the fixture's dtypes."""
  x = np.concatenate([ds.train_x, ds.val_x])
  y = np.concatenate([ds.train_y, ds.val_y])
  xb, yb = data.batch_at(x, y, BATCH, seed=0, step=step)
  return {"image": jnp.asarray(xb, F64), "label": jnp.asarray(yb)}


def test_save_restore_continue_equals_uninterrupted_bit_for_bit(setup, tmp_path):
  from jaxnas import checkpoint
  _, _, state0, step, traced, _ = setup
  ds = data.load("digits")
  run = lambda state, a, b: [state := step(state, _digits_batch(ds, i))[0] for i in range(a, b)][-1]
  stop, cut = SPE + 3, SPE - 2  # across an epoch end: drop-path on and the lr lower after it
  uninterrupted = run(state0, 0, stop)
  with checkpoint.Checkpoints(tmp_path / "ckpt", keep=2) as ckpts:
    ckpts.save(cut, run(state0, 0, cut), {"step": cut, "epoch": cut // SPE})
    blank = jax.tree.map(jnp.zeros_like, state0._replace(key=None))._replace(
        key=jax.random.key(9))  # same shapes, other values
    restored, position = ckpts.restore(blank)
  assert position == {"step": cut, "epoch": 0} and int(restored.step) == cut
  resumed = run(restored, position["step"], stop)
  leaves = lambda s: jax.tree.leaves(checkpoint._storable(s))
  for a, b in zip(leaves(uninterrupted), leaves(resumed), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert int(resumed.step) == stop
  assert np.abs(np.asarray(jax.tree.leaves(resumed.params)[0])
                - np.asarray(jax.tree.leaves(state0.params)[0])).max() > 0  # the run moved
  assert len(traced) == 1  # the restored state runs in the same compiled program


def test_nonfinite_mask_bits_worked_out_by_hand():
  # Bits by NONFINITE_QUANTITIES: training loss 1, weight gradient 2, weights 4, batch stats 8.
  assert [q for q, _ in train.NONFINITE_QUANTITIES] == ["train_loss", "grad_norm", "weights",
                                                        "batch_stats"]
  mask = jax.jit(train.nonfinite_mask)
  m = {"train_loss": 1.0, "grad_norm": 2.0}
  w, bs = {"a": jnp.ones(3), "b": {"c": jnp.zeros((2, 2))}}, {"mean": jnp.zeros(2)}
  assert int(mask(m, w, bs)) == 0
  assert int(mask({**m, "grad_norm": math.inf}, w, bs)) == 2
  assert int(mask({**m, "train_loss": math.nan}, w, {"mean": jnp.array([0.0, math.nan])})) == 9
  assert int(mask(m, {"a": jnp.ones(3), "b": {"c": jnp.full((2, 2), -math.inf)}}, bs)) == 4
  assert train.describe_nonfinite(1 + 2, {"train_loss": math.nan}) == "training loss is NaN"
  assert train.describe_nonfinite(2, {"grad_norm": math.inf}) == "weight gradient is Inf"
  assert train.describe_nonfinite(4, {}) == "weights are not finite"


def test_step_flags_an_infinite_input(setup):
  _, _, state, step, traced, batch = setup
  good = step(state, batch)[1]
  assert int(good["nonfinite"]) == 0
  bad = dict(batch, image=batch["image"].at[0, 0, 0, 0].set(jnp.inf))
  m = step(state, bad)[1]
  # The Inf reaches the loss (NaN through BN), the gradient, the new weights and the statistics.
  assert int(m["nonfinite"]) == 1 + 2 + 4 + 8 and math.isnan(float(m["train_loss"]))
  assert len(traced) == 1


TINY = ["train", "--genotype", "DARTS_V2", "--channels", "4", "--cells", "3", "--epochs", "2",
        "--batch-size", "256"]


@pytest.fixture(scope="module")
def diverged(tmp_path_factory):
  """A tiny run whose learning rate (1e30) diverges; a checkpoint after every step, 2 kept."""
  out = tmp_path_factory.mktemp("diverged") / "run"
  cfg = train.TrainConfig(genotype="DARTS_V2", channels=4, cells=3, epochs=2, batch_size=256,
                          lr=1e30, log_every=1, checkpoint_every=1, keep=2, out=str(out))
  with pytest.raises(JaxnasError) as info:
    train.run_train(cfg, stdout=open("/dev/null", "w"))
  return out, str(info.value)


def test_diverging_lr_stops_at_the_first_bad_step_with_its_checkpoint_intact(diverged):
  from jaxnas import checkpoint
  out, message = diverged
  lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
  bad = lines[-1]
  # Every step is logged (--log-every 1); the steps before the named one are finite.
  assert [l["step"] for l in lines] == list(range(1, bad["step"] + 1)) and bad["nonfinite"]
  assert all(l["nonfinite"] == 0 and math.isfinite(l["train_loss"]) for l in lines[:-1])
  step = bad["step"]
  assert step > 1 and "\n" not in message
  assert message.startswith(f"step {step}: {train.describe_nonfinite(bad['nonfinite'], bad)} ")
  last = out.absolute() / "checkpoints" / str(step - 1)
  assert f"(last good checkpoint: {last})" in message
  model = evalnet.build(genotypes.get("DARTS_V2"), channels=4, cells=3, num_classes=10)
  cfg = train.resolve(train.TrainConfig(epochs=2, lr=1.0), "darts", (8, 8, 1))
  tx, _ = train.make_optimizer(cfg, steps_per_epoch=5)
  like = train.init_train_state(model, tx, jax.random.key(5), (8, 8, 1))
  with checkpoint.Checkpoints(out / "checkpoints", keep=2) as ckpts:
    assert ckpts.steps() == list(range(max(1, step - 2), step))  # keep 2, the bad one never saved
    state, position = ckpts.restore(like)  # checks the digest written with it
  assert int(state.step) == position["step"] == step - 1 and position["data_step"] == step - 1
  assert all(np.all(np.isfinite(l)) for l in jax.tree.leaves((state.params, state.batch_stats,
                                                              state.opt_state)))
  assert not (out / "summary.json").exists() and not (out / "weights.msgpack").exists()


def test_tensorboard_scalars_are_the_logged_finite_metrics(diverged):
  """The events file holds, per tag, exactly the finite values of metrics.jsonl at their steps."""
  from jaxnas import tb
  out, _ = diverged
  scalars = tb.read_scalars(out)
  lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
  for tag in ("train_loss", "train_accuracy", "lr", "grad_norm", "drop_prob"):
    expected = [(l["step"], l[tag]) for l in lines if tag in l and math.isfinite(l[tag])]
    assert len(expected) >= 1 and [s for s, _ in scalars[tag]] == [s for s, _ in expected], tag
    # Stored as float32 (TensorBoard's simple_value).
    np.testing.assert_array_equal([v for _, v in scalars[tag]],
                                  np.float32([v for _, v in expected]), err_msg=tag)
  evals = [(l["step"], l["test_accuracy"]) for l in lines if "test_accuracy" in l]
  assert scalars.get("test_accuracy", []) == [(s, float(np.float32(v))) for s, v in evals]
  assert not {"step", "epoch", "time_s", "nonfinite"} & set(scalars)


def test_resume_flags_conflict_and_missing_run_give_one_line(diverged, tmp_path, capsys):
  out, _ = diverged
  assert "--lr 0.5 conflicts with the run's config.json (lr = 1e+30)" in _error(
      ["train", "--resume", "--out", str(out), "--lr", "0.5"], capsys)
  assert "--genotype 'PC_DARTS' conflicts" in _error(
      ["train", "--resume", "--out", str(out), "--genotype", "PC_DARTS"], capsys)
  assert "--resume needs --out RUN_DIR" in _error(["train", "--resume"], capsys)
  assert "not found; --resume needs --out RUN_DIR of an earlier 'jaxnas train'" in _error(
      ["train", "--resume", "--out", str(tmp_path / "none")], capsys)
  assert "train needs --genotype" in _error(["train"], capsys)
  assert "--keep must be a whole number ≥ 1" in _error(TINY + ["--keep", "0"], capsys)


def test_damaged_or_foreign_checkpoint_is_one_line_naming_it(setup, diverged, tmp_path, capsys):
  import shutil
  from jaxnas import checkpoint
  out, _ = diverged
  run_dir = tmp_path / "run"
  shutil.copytree(out, run_dir)
  with checkpoint.Checkpoints(run_dir / "checkpoints", keep=2) as ckpts:
    newest = ckpts.latest_step()
  for f in sorted((run_dir / "checkpoints" / str(newest) / "state").rglob("*")):
    if f.is_file() and f.parent.name == "d":  # the array files: cut in half
      f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
  path = (run_dir / "checkpoints" / str(newest)).absolute()
  err = _error(["train", "--resume", "--out", str(run_dir)], capsys)
  assert f"checkpoint {path} " in err and "damaged" in err
  shutil.rmtree(path)
  with checkpoint.Checkpoints(run_dir / "checkpoints", keep=2) as ckpts:
    ckpts.save(newest + 1, setup[2], {"step": newest + 1})  # float64 network of other shape
  path = (run_dir / "checkpoints" / str(newest + 1)).absolute()
  err = _error(["train", "--resume", "--out", str(run_dir)], capsys)
  assert f"checkpoint {path} holds a state of another configuration" in err


@pytest.mark.slow
def test_cli_run_interrupted_and_resumed_equals_uninterrupted(tmp_path, monkeypatch, capsys):
  """Ctrl-C after step 7 of 10 (checkpoints every 3 steps), then --resume: the same files."""
  whole, cut = tmp_path / "whole", tmp_path / "cut"
  args = TINY + ["--log-every", "2", "--checkpoint-every", "3", "--no-compile-cache"]
  assert cli.main(args + ["--out", str(whole)]) == 0
  batch_at = train.data.batch_at

  def interrupted(*a, step, **k):
    if step == 7:
      raise KeyboardInterrupt
    return batch_at(*a, step=step, **k)

  monkeypatch.setattr(train.data, "batch_at", interrupted)
  assert cli.main(args + ["--out", str(cut)]) == 130
  monkeypatch.setattr(train.data, "batch_at", batch_at)
  assert sorted(p.name for p in (cut / "checkpoints").iterdir()) == ["3", "6"]
  assert cli.main(["train", "--resume", "--out", str(cut), "--no-compile-cache"]) == 0
  assert "resuming from step 6" in capsys.readouterr().out
  read = lambda d: [{k: v for k, v in json.loads(l).items() if k != "time_s"}
                    for l in (d / "metrics.jsonl").read_text().splitlines()]
  assert read(cut) == read(whole) and len(read(whole)) == 6 + 2  # steps 2,4,5,6,8,10; 2 evals
  assert (cut / "weights.msgpack").read_bytes() == (whole / "weights.msgpack").read_bytes()
  drop = lambda d: {k: v for k, v in json.loads((d / "summary.json").read_text()).items()
                    if not k.endswith("_s")}
  assert drop(cut) == drop(whole)
  # TensorBoard: the resumed run's events (purging the steps after its checkpoint) read back as
  # the uninterrupted run's, each epoch's test accuracy included.
  from jaxnas import tb
  scalars = tb.read_scalars(whole)
  assert tb.read_scalars(cut) == scalars
  evals = [json.loads(l) for l in (whole / "metrics.jsonl").read_text().splitlines()]
  assert scalars["test_accuracy"] == [(l["step"], float(np.float32(l["test_accuracy"])))
                                      for l in evals if "test_accuracy" in l]


# --- per-cell genotypes (D-DARTS --cells N, DARTOpti whole networks) ------------------------------

_PER_CELL = ((("sep_conv_3x3", 2, 0), ("skip_connect", 2, 1), ("max_pool_3x3", 3, 2)),
             (("conv_3x1_1x3", 2, 1), ("skip_connect", 3, 0), ("avg_pool_3x3", 3, 2)),
             (("dil_conv_3x3", 2, 0), ("bottleneck_1x3x1", 3, 1), ("simple_conv_3x3", 4, 3)))


def test_per_cell_genotype_one_jitted_step_on_digits(tmp_path):
  """A 3-cell per-cell genotype loads from its file, and one jitted step (C = 4) is finite.
  Small cells (one compile of fwd + bwd is this test's cost)."""
  from jaxnas.ddarts import CellGenotype
  CellGenotype(((("skip_connect", 2, 1),), (("conv_3x1_1x3", 2, 1),),
                (("simple_conv_1x1", 2, 0), ("max_pool_3x3", 2, 1)))).save(tmp_path)
  g = train.load_genotype(tmp_path)
  assert isinstance(g, CellGenotype) and g.reductions == (1, 2)
  ds = data.load("digits")
  model = evalnet.build(g, channels=4, cells=None, num_classes=10)
  cfg = train.resolve(train.TrainConfig(epochs=1), g.space, ds.image_shape)
  tx, schedule = train.make_optimizer(cfg, steps_per_epoch=1)
  state = train.init_train_state(model, tx, jax.random.key(0), ds.image_shape)
  step = train.make_train_step(model, tx, schedule, auxiliary_weight=0.0, drop_path=0.2,
                               steps_per_epoch=1, epochs=1)
  batch = {"image": jnp.asarray(ds.train_x[:16], jnp.float32),
           "label": jnp.asarray(ds.train_y[:16])}
  before = jax.tree.map(np.asarray, state.params)  # the step donates its state
  new, metrics = step(state, batch)
  assert math.isfinite(float(metrics["train_loss"])) and int(new.step) == 1
  moved = jax.tree.map(lambda a, b: bool(np.any(a != np.asarray(b))), before, new.params)
  assert moved["cell_1"]["op0_conv_3x1_1x3"]["conv1"]  # cell 1's own genes are trained


def test_per_cell_dry_run_and_one_line_errors(tmp_path, capsys):
  from jaxnas.ddarts import CellGenotype
  CellGenotype(_PER_CELL).save(tmp_path / "g.json")
  out = tmp_path / "run"
  assert cli.main(["train", "--genotype", str(tmp_path / "g.json"), "--channels", "4",
                   "--dry-run", "--out", str(out)]) == 0
  text = capsys.readouterr().out
  config = json.loads((out / "config.json").read_text())
  n = evalnet.count_params(evalnet.build(CellGenotype(_PER_CELL), channels=4, cells=None,
                                         num_classes=10), (32, 32, 1))[0]
  assert config["num_params"] == n and config["config"]["cells"] == 3
  assert config["genotype"]["space"] == "darts-cells"
  assert f"darts-cells network of genotype g: C=4, L=3; parameters: {n:,}" in text
  assert train.resume_config(out).cells == 3  # the per-cell genotype reads back
  assert "has 3 cells, not --cells 8" in _error(
      ["train", "--genotype", str(tmp_path / "g.json"), "--cells", "8"], capsys)
  CellGenotype(_PER_CELL + (_PER_CELL[0],) * 2, reductions=(0, 1, 2, 3)).save(tmp_path / "r.json")
  assert "divisible by 16" in _error(["train", "--genotype", str(tmp_path / "r.json"),
                                      "--dry-run", "--out", str(tmp_path / "r")], capsys)
  CellGenotype(((("conv_9x9", 2, 0),),) * 3).save(tmp_path / "u.json")
  assert "uses op 'conv_9x9'" in _error(["train", "--genotype", str(tmp_path / "u.json"),
                                         "--dry-run", "--out", str(tmp_path / "u")], capsys)
