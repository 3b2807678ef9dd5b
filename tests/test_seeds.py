"""Several seeds in one vmapped program equal the single runs with those seeds."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnas import cli, data, methods, search, seeds, spaces

SEEDS = (0, 1)
STEPS, BATCH = 10, 8


@pytest.fixture(scope="module")
def runs():
  """Seeds 0 and 1 for 10 steps, once one at a time (one compiled step) and once vmapped."""
  ds = data.load("digits")
  model = spaces.get("nb201", channels=2, cells_per_stage=1, num_classes=ds.num_classes,
                     dtype=jnp.float64)
  recipe = methods.get("darts-1st")
  spe = data.steps_per_epoch(len(ds.train_x), BATCH)
  kw = dict(steps_per_epoch=spe, epochs=1)
  step = search.make_search_step(model, recipe, **kw)
  starts = [search.init_search_state(model, recipe, jax.random.key(s), ds.image_shape, **kw)
            for s in SEEDS]
  # init_seed_states stacks exactly these (it is init_search_state per seed; the slow CLI test
  # runs it); stacking here saves compiling the initialisation twice more.
  states = seeds.stack(starts)
  singles = []
  for s, state in zip(SEEDS, starts):
    for i in range(STEPS):
      state, _ = step(state, *data.search_batches(ds, BATCH, seed=s, step=i))
    singles.append(state)
  vstep = seeds.make_seeds_step(model, recipe, **kw)
  for i in range(STEPS):
    states, metrics = vstep(states, *seeds.seed_batches(ds, BATCH, SEEDS, i))
  return singles, states, metrics, step, vstep


@pytest.mark.slow
def test_each_vmapped_seed_equals_its_single_run(runs):
  singles, states, _, _, _ = runs
  host = jax.device_get(states._replace(key=jax.random.key_data(states.key)))
  for j, single in enumerate(singles):
    got = seeds.unstack(host, j)
    # The programs differ only in summation order; float32 tolerance (the run itself is float64).
    for name in ("alphas", "weights", "batch_stats", "w_opt_state", "a_opt_state"):
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                   getattr(got, name), getattr(single, name))
    assert int(got.step) == int(single.step) == STEPS
  # The seeds really differ: different initial alphas and data give different alphas.
  diff = np.abs(np.asarray(singles[0].alphas["cell"]) - np.asarray(singles[1].alphas["cell"]))
  assert diff.max() > 1e-4


@pytest.mark.slow
def test_metrics_have_one_entry_per_seed_and_each_step_compiles_once(runs):
  _, _, metrics, step, vstep = runs
  assert metrics["val_loss"].shape == (len(SEEDS),)
  assert np.all(np.isfinite(np.asarray(metrics["train_loss"])))
  assert step._cache_size() == 1 and vstep._cache_size() == 1


def test_seed_batches_stack_the_single_runs_batches():
  ds = data.load("digits")
  train, val = seeds.seed_batches(ds, 4, (3, 5), 7)
  for j, s in enumerate((3, 5)):
    t, v = data.search_batches(ds, 4, seed=s, step=7)
    np.testing.assert_array_equal(train["image"][j], t["image"])
    np.testing.assert_array_equal(val["label"][j], v["label"])


def _summary(acc, cell):
  return {"supernet_val_accuracy": acc, "genotype": {"space": "darts", "normal": cell,
                                                     "reduce": [["max_pool_3x3", 0], ["max_pool_3x3", 1]] * 4}}


def test_summarize_counts_op_wins_per_edge_and_sample_std():
  a = [["sep_conv_3x3", 0], ["skip_connect", 1]] * 4
  b = [["sep_conv_3x3", 0], ["sep_conv_5x5", 1]] + [["skip_connect", 1], ["dil_conv_3x3", 0]] * 3
  out = seeds.summarize({0: _summary(0.5, a), 1: _summary(0.7, a), 2: _summary(0.9, b)})
  # Node 2 (state 2): edge 2<-0 sep_conv_3x3 in all three; 2<-1 skip twice, sep_conv_5x5 once.
  assert out["op_wins"]["normal"]["2<-0"] == {"sep_conv_3x3": 3}
  assert out["op_wins"]["normal"]["2<-1"] == {"skip_connect": 2, "sep_conv_5x5": 1}
  # Node 3 (state 3): seeds 0, 1 keep 3<-0 sep_conv_3x3, seed 2 keeps 3<-0 dil_conv_3x3.
  assert out["op_wins"]["normal"]["3<-0"] == {"sep_conv_3x3": 2, "dil_conv_3x3": 1}
  assert out["op_wins"]["reduce"]["5<-0"] == {"max_pool_3x3": 3}
  assert out["val_accuracy_mean"] == pytest.approx(0.7)
  assert out["val_accuracy_std"] == pytest.approx(0.2)  # sqrt(((−.2)² + 0 + .2²) / 2)


def test_summarize_nb201_edges_are_the_benchmark_edges():
  genes = [["nor_conv_3x3", 0], ["skip_connect", 0], ["none", 1], ["avg_pool_3x3", 0],
           ["nor_conv_1x1", 1], ["nor_conv_3x3", 2]]
  out = seeds.summarize({4: {"supernet_val_accuracy": 0.25,
                             "genotype": {"space": "nb201", "normal": genes}}})
  assert out["op_wins"]["normal"]["1<-0"] == {"nor_conv_3x3": 1}
  assert out["op_wins"]["normal"]["3<-2"] == {"nor_conv_3x3": 1}
  assert out["val_accuracy_std"] == 0.0


@pytest.mark.parametrize("argv, text", [
    (["--seeds", "0"], "--seeds must be a whole number ≥ 1"),
    (["--seeds", "2", "--method", "darts-plus"], "not available with --seeds"),
    (["--seeds", "2", "--eigen-every", "3"], "not available with --seeds"),
])
def test_bad_seeds_input_is_one_line(argv, text, tmp_path, capsys):
  code = cli.main(["search", "--channels", "2", "--batch-size", "8", "--steps", "2",
                   "--out", str(tmp_path / "r")] + argv)
  err = capsys.readouterr().err
  assert code == 2 and text in err and len(err.strip().splitlines()) == 1
  assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_cli_seeds_writes_a_run_per_seed_and_a_summary(tmp_path):
  out = tmp_path / "s"
  assert cli.main(["search", "--channels", "2", "--batch-size", "8", "--steps", "3",
                   "--seeds", "3", "--seed", "5", "--out", str(out), "--no-compile-cache"]) == 0
  summary = json.loads((out / "summary.json").read_text())
  assert summary["seeds"] == [5, 6, 7]
  for s in (5, 6, 7):
    run = out / f"seed-{s}"
    assert json.loads((run / "config.json").read_text())["config"]["seed"] == s
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3
    assert (run / "genotype.json").is_file()
  accs = [json.loads((out / f"seed-{s}" / "summary.json").read_text())["supernet_val_accuracy"]
          for s in (5, 6, 7)]
  assert summary["val_accuracy_mean"] == pytest.approx(np.mean(accs))
  assert summary["val_accuracy_std"] == pytest.approx(np.std(accs, ddof=1))
  assert sum(summary["op_wins"]["normal"]["1<-0"].values()) == 3
