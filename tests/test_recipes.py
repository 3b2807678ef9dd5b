"""Every registered recipe runs from the command line; pieces compose; bad pieces are one line."""

import json

import jax
import numpy as np
import pytest

from jaxnas import cli, methods, stopping
from jaxnas.errors import JaxnasError
from jaxnas.run import SearchConfig, run_search

TINY = ["--channels", "2", "--cells", "1", "--batch-size", "8", "--no-compile-cache"]
# Recipes whose space options need more channels (PC-DARTS: C/4 even in the reduction cell).
_CHANNELS = {"pc-darts": ["--channels", "8"], "drnas-progressive": ["--channels", "12"]}
# Recipes whose space options exist on the DARTS space only (partial channels, branch cells).
_DARTS_ONLY = ("drnas-progressive", "d2nas-branch")


def _space_for(recipe):
  """nb201 unless the recipe's derivation rule or space options serve only the DARTS space."""
  if recipe.name in _DARTS_ONLY:
    return "darts"
  from jaxnas import derive, spaces
  model = spaces.get("nb201", channels=2, cells_per_stage=1, num_classes=10)
  rule = recipe.derivation or model.default_rule
  ones = {k: np.ones(s) for k, s in model.alpha_shapes().items()}
  try:
    derive.derive(rule, ones, model.op_names)
    return "nb201"
  except JaxnasError:
    return "darts"


def _metrics(run_dir):
  return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(methods.METHODS))
def test_every_recipe_runs_three_steps_from_the_command_line(name, tmp_path, capsys):
  recipe = methods.get(name)
  space = _space_for(recipe)
  out = tmp_path / "run"
  code = cli.main(["search", "--method", name, "--space", space, *TINY,
                   *_CHANNELS.get(name, []), "--steps", "3",
                   "--out", str(out)])
  captured = capsys.readouterr()
  assert code == 0, captured.err
  lines = _metrics(out)
  assert [m["step"] for m in lines] == [1, 2, 3]
  for m in lines:
    for key in ("train_loss", "val_loss", "alpha_grad_norm", "weight_grad_norm"):
      assert np.isfinite(m[key]), (name, key, m[key])
  config = json.loads((out / "config.json").read_text())
  assert config["recipe"]["name"] == name and config["recipe"]["estimator"] == recipe.estimator
  summary = json.loads((out / "summary.json").read_text())
  # A genotype, or (FairDARTS' threshold after 3 steps keeps nothing) the reason there is none.
  assert (out / "genotype.json").is_file() == (summary["derivation_error"] is None)
  assert (out / "alphas.npz").is_file()
  # The alphas moved (every recipe updates them from step 1 unless it has a warm-up).
  if recipe.arch_warmup_epochs == 0:
    assert lines[-1]["alpha_grad_norm"] > 0


def test_methods_lists_every_recipe_with_its_paper(capsys):
  assert cli.main(["methods"]) == 0
  out = capsys.readouterr().out
  for name, recipe in methods.METHODS.items():
    line = next(l for l in out.splitlines() if l.startswith(name + " "))
    assert recipe.description in line
    assert recipe.paper and f"paper: {recipe.paper}" in out


@pytest.mark.slow
def test_composed_sdarts_adv_with_the_exact_second_order_estimator(tmp_path, capsys):
  out = tmp_path / "run"
  code = cli.main(["search", "--method", "sdarts-adv", "--estimator", "unrolled_hvp", *TINY,
                   "--steps", "2", "--out", str(out), "--add-regularizer", "beta-decay:2:linear"])
  assert code == 0, capsys.readouterr().err
  config = json.loads((out / "config.json").read_text())
  assert config["recipe"]["estimator"] == "unrolled_hvp"
  assert config["recipe"]["perturbation"] == "pgd"
  assert [r["name"] for r in config["recipe"]["regularizers"]] == ["beta-decay"]
  first, second = _metrics(out)
  assert first["hvp_passes"] == 1 and first["perturb/epsilon"] == pytest.approx(0.03)
  assert first["reg/beta-decay/weight"] == 0.0  # linear from 0 at epoch 0
  assert first["reg/beta-decay"] == pytest.approx(np.log(5.0), abs=1e-3)  # alphas ≈ 0: log K
  assert np.isfinite(second["train_loss"]) and second["perturb/epsilon"] == pytest.approx(0.03)


@pytest.mark.slow
def test_estimator_option_and_removing_a_piece(tmp_path, capsys):
  out = tmp_path / "run"
  code = cli.main(["search", "--method", "darts-unrolled", "--estimator-option", "unroll_steps=2",
                   "--method", "sdarts-rs", "--perturbation", "none", "--estimator",
                   "unrolled_autodiff", *TINY, "--steps", "1", "--out", str(out)])
  assert code == 0, capsys.readouterr().err
  recipe = json.loads((out / "config.json").read_text())["recipe"]
  assert recipe["name"] == "sdarts-rs" and recipe["perturbation"] is None
  assert dict(recipe["estimator_options"]) == {"unroll_steps": 2}
  assert _metrics(out)[0]["hvp_passes"] == 2


@pytest.mark.parametrize("argv, needle", [
    (["--add-regularizer", "nope:1"], "unknown regularizer 'nope'"),
    (["--add-regularizer", "beta-decay:-1"], "weight must be a finite number ≥ 0"),
    (["--add-regularizer", "beta-decay"], "write NAME:WEIGHT"),
    (["--add-regularizer", "beta-decay:1:cubic"], "unknown regularizer schedule 'cubic'"),
    (["--perturbation", "nope"], "unknown perturbation 'nope'"),
    (["--stopping", "nope"], "unknown stopping rule 'nope'"),
    (["--estimator-option", "epsilon=-0.1", "--method", "darts-2nd"],
     "epsilon = -0.1 is out of range"),
    (["--estimator-option", "unroll_steps"], "write KEY=VALUE"),
    (["--estimator-option", "bogus=1"], "takes no option 'bogus'"),
    (["--eigen-every", "-1"], "--eigen-every must be a whole number ≥ 0"),
])
def test_bad_pieces_are_one_line_errors_and_write_nothing(argv, needle, tmp_path, capsys):
  out = tmp_path / "run"
  assert cli.main(["search", *TINY, "--steps", "1", "--out", str(out), *argv]) == 2
  err = capsys.readouterr().err
  assert err.startswith("jaxnas: error: ") and err.count("\n") == 1
  assert needle in err
  assert not out.exists()


def test_negative_perturbation_epsilon_is_refused(tmp_path):
  recipe = methods.get("sdarts-rs").replace(perturbation_options=(("epsilon_start", -0.1),))
  with pytest.raises(JaxnasError, match="epsilon_start = -0.1 is out of range"):
    run_search(SearchConfig(channels=2, cells=1, steps=1, out=str(tmp_path / "r")), recipe=recipe)
  assert not (tmp_path / "r").exists()


def test_a_rule_returning_an_epoch_makes_the_run_return_that_epochs_alphas(tmp_path, monkeypatch,
                                                                            capsys):
  """The R-DARTS contract: a stopping rule may answer with an earlier epoch, whose alphas and
  genotype the run then returns (the last alphas kept in alphas-final.npz)."""
  seen = []

  def back_to_first(genotype, history):
    seen.append(history[-1])
    return 1 if len(history) == 2 else False

  monkeypatch.setitem(stopping.STOPPING_RULES, "test-back-to-first", back_to_first)
  recipe = methods.get("darts-1st").replace(name="test-revert", stopping="test-back-to-first")
  cfg = SearchConfig(channels=2, cells=1, batch_size=64, epochs=3, out=str(tmp_path / "run"))
  run = run_search(cfg, recipe=recipe)
  summary = json.loads((run / "summary.json").read_text())
  assert summary["stopped_at_epoch"] == 2 and summary["returned_epoch"] == 1
  with np.load(run / "alphas.npz") as f:
    mixing = jax.nn.softmax(f["cell"], axis=-1)
  np.testing.assert_allclose(mixing, seen[0].mixing["cell"], rtol=1e-6)
  with np.load(run / "alphas-final.npz") as f:
    assert not np.allclose(jax.nn.softmax(f["cell"], axis=-1), seen[0].mixing["cell"])
  assert summary["genotype"] == seen[0].genotype.to_dict()
  assert "returning the alphas and genotype of epoch 1" in capsys.readouterr().out


@pytest.mark.slow
def test_a_rule_needing_the_eigenvalue_gets_it_every_two_epochs(tmp_path, monkeypatch):
  seen = []

  def reads_eigen(genotype, history):
    seen.append(history[-1].metrics["hessian_eigenvalue"])
    return False

  reads_eigen.needs_metrics = ("hessian_eigenvalue",)
  monkeypatch.setitem(stopping.STOPPING_RULES, "test-eigen", reads_eigen)
  recipe = methods.get("darts-1st").replace(name="test-eigen", stopping="test-eigen")
  cfg = SearchConfig(channels=2, cells=1, batch_size=64, epochs=3, out=str(tmp_path / "run"))
  run = run_search(cfg, recipe=recipe)
  # Every 2 epochs by default, as R-DARTS: epoch 1 has no value, epoch 2 has one.
  assert len(seen) == 2 and np.isnan(seen[0]) and np.isfinite(seen[1]) and seen[1] > 0
  spe = json.loads((run / "config.json").read_text())["steps_per_epoch"]
  logged = [m.get("hessian_eigenvalue") for m in _metrics(run)]
  finite = [i + 1 for i, v in enumerate(logged) if v is not None and np.isfinite(v)]
  assert finite == [2 * spe]
  # A period that is neither a divisor nor a multiple of the epoch cannot feed the rule.
  with pytest.raises(JaxnasError, match="neither a divisor nor a multiple"):
    run_search(SearchConfig(channels=2, cells=1, batch_size=64, epochs=1, eigen_every=5,
                            out=str(tmp_path / "r2")), recipe=recipe)
  assert not (tmp_path / "r2").exists()


@pytest.mark.slow
def test_save_trajectory_then_study_the_run_from_the_command_line(tmp_path, capsys):
  run = tmp_path / "run"
  assert cli.main(["search", *TINY, "--steps", "4", "--save-trajectory", "2",
                   "--out", str(run)]) == 0
  assert sorted(p.name for p in (run / "trajectory").iterdir()) == ["step_000002.npz",
                                                                    "step_000004.npz"]
  capsys.readouterr()
  out = tmp_path / "study"
  assert cli.main(["study", "hypergrad", "--run", str(run), "--out", str(out)]) == 0, \
      capsys.readouterr().err
  summary = json.loads((out / "trajectory.json").read_text())
  assert [s["step"] for s in summary["snapshots"]] == [2, 4]
  cosines = [r["cosine"] for r in summary["runs"]]
  assert cosines and all(c is None or -1 - 1e-9 <= c <= 1 + 1e-9 for c in cosines)
  assert (out / "trajectory.png").read_bytes()[:4] == b"\x89PNG"
  # A second study into the same directory is refused, nothing overwritten.
  assert cli.main(["study", "hypergrad", "--run", str(run), "--out", str(out)]) == 2
