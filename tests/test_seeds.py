"""Several seeds in one vmapped program equal the single runs with those seeds; a --seeds run is
checkpointed and, interrupted and resumed, ends bit for bit as one never interrupted."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnas import cli, data, methods, search, seeds, spaces
from jaxnas.errors import JaxnasError

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


# ------------------------------------------------------------------------------------------------
# Checkpoints and --resume of a --seeds run.

SEEDS_TINY = ["search", "--channels", "2", "--batch-size", "8", "--seeds", "2", "--seed", "4"]


@pytest.fixture(scope="module")
def dry_seeds(tmp_path_factory):
  """A --seeds run's directory as --dry-run writes it (nothing compiled), and a single run's."""
  root = tmp_path_factory.mktemp("dry")
  assert cli.main([*SEEDS_TINY, "--steps", "4", "--dry-run", "--out", str(root / "s")]) == 0
  assert cli.main(["search", "--channels", "2", "--batch-size", "8", "--steps", "4",
                   "--dry-run", "--out", str(root / "one")]) == 0
  return root


def test_dry_run_marks_the_seeds_and_resume_reads_them(dry_seeds):
  assert json.loads((dry_seeds / "s" / seeds.SEEDS_FILE).read_text())["seeds"] == [4, 5]
  assert seeds.seeds_of(dry_seeds / "s") == [4, 5]
  assert seeds.seeds_of(dry_seeds / "one") is None
  cfg, recipe, n = seeds.resume_config(dry_seeds / "s")
  assert (cfg.seed, n, cfg.steps, cfg.out, recipe.name) == (4, 2, 4, str(dry_seeds / "s"),
                                                            "darts-1st")


@pytest.mark.parametrize("where, flags, text", [
    ("s/seed-5", [], "is one seed of a --seeds run, whose seeds run as one program; resume "
                     "them all: --resume --out "),
    ("s", ["--seeds", "3"], "--seeds 3 conflicts with the run's 2 seeds"),
    ("s", ["--channels", "4"], "--channels 4 conflicts with the run's config.json"),
    ("one", ["--seeds", "2"], "holds one search, not a --seeds run; leave --seeds out"),
])
def test_bad_seeds_resume_is_one_line_and_changes_nothing(dry_seeds, where, flags, text, capsys):
  before = sorted(p.relative_to(dry_seeds) for p in dry_seeds.rglob("*"))
  assert cli.main(["search", "--resume", "--out", str(dry_seeds / where), *flags]) == 2
  err = capsys.readouterr().err
  assert text in err and len(err.strip().splitlines()) == 1, err
  assert sorted(p.relative_to(dry_seeds) for p in dry_seeds.rglob("*")) == before


def test_damaged_seeds_record_is_one_line(tmp_path):
  (tmp_path / seeds.SEEDS_FILE).write_text('{"seeds": [3, 7]}')
  with pytest.raises(JaxnasError, match="not a run of consecutive seeds"):
    seeds.seeds_of(tmp_path)
  (tmp_path / seeds.SEEDS_FILE).write_text("{")
  with pytest.raises(JaxnasError, match="is not a jaxnas seeds record"):
    seeds.seeds_of(tmp_path)


@pytest.mark.slow
def test_interrupted_seeds_run_resumes_to_the_uninterrupted_run_bit_for_bit(tmp_path,
                                                                            monkeypatch):
  # One persistent compilation cache for the three runs: the step compiles once.
  monkeypatch.setenv("JAXNAS_CACHE_DIR", str(tmp_path / "xla"))
  argv = [*SEEDS_TINY, "--steps", "6", "--checkpoint-every", "2"]
  whole, cut = tmp_path / "whole", tmp_path / "cut"
  assert cli.main([*argv, "--out", str(whole)]) == 0

  real = seeds.seed_batches

  def interrupted(dataset, batch_size, seed_list, step):
    if step == 5:  # steps 1..5 done and logged, the last checkpoint at step 4
      raise KeyboardInterrupt
    return real(dataset, batch_size, seed_list, step)

  monkeypatch.setattr(seeds, "seed_batches", interrupted)
  assert cli.main([*argv, "--out", str(cut)]) == 130
  monkeypatch.setattr(seeds, "seed_batches", real)
  steps_of = lambda d: sorted(int(p.name) for p in (d / "checkpoints").iterdir()
                              if p.name.isdigit())
  assert steps_of(cut) == [2, 4] and not (cut / "summary.json").exists()
  lines = lambda d: [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()]
  assert [m["step"] for m in lines(cut / "seed-4")] == [1, 2, 3, 4, 5]

  assert cli.main(["search", "--resume", "--out", str(cut)]) == 0
  assert steps_of(cut) == steps_of(whole) == [2, 4, 6]
  strip = lambda ls: [{k: v for k, v in l.items() if k != "time_s"} for l in ls]
  from jaxnas import run, tb
  for s in (4, 5):
    a_dir, b_dir = whole / f"seed-{s}", cut / f"seed-{s}"
    with np.load(a_dir / "alphas.npz") as a, np.load(b_dir / "alphas.npz") as b:
      assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)
    assert (a_dir / "genotype.json").read_text() == (b_dir / "genotype.json").read_text()
    assert strip(lines(b_dir)) == strip(lines(a_dir))  # each step once, the same numbers
    assert [m["step"] for m in lines(b_dir)] == [1, 2, 3, 4, 5, 6]
    curves = tb.read_scalars(b_dir)
    assert [st for st, _ in curves["train_loss"]] == [1, 2, 3, 4, 5, 6]
    assert [v for _, v in curves["train_loss"]] == pytest.approx(
        [m["train_loss"] for m in lines(a_dir)], rel=1e-6)  # events store float32
    names = sorted(p.name for p in (a_dir / run.ALPHAS_HISTORY).iterdir())
    assert names == sorted(p.name for p in (b_dir / run.ALPHAS_HISTORY).iterdir()) == [
        "step_000000.npz", "step_000006.npz"]
  # The seeds differ from one another, and the summaries agree.
  with np.load(whole / "seed-4" / "alphas.npz") as a, np.load(whole / "seed-5" / "alphas.npz") as b:
    assert np.abs(a["cell"] - b["cell"]).max() > 1e-5
  sa, sb = (json.loads((d / "summary.json").read_text()) for d in (whole, cut))
  assert sa["val_accuracy"] == sb["val_accuracy"] and sa["genotypes"] == sb["genotypes"]
