"""The hypergradient study on the ridge problem: files written, contents sane, reference exact."""

import json
import math

import pytest

from jaxnas import hypergrad
from jaxnas.errors import JaxnasError
from jaxnas.study import hypergrad_study


@pytest.fixture(scope="module")
def ridge_study(tmp_path_factory):
  out = tmp_path_factory.mktemp("study")
  return out, hypergrad_study("ridge", str(out), seed=0, repeats=1)


def _runs(summary, name, **options):
  return [r for r in summary["runs"] if r["estimator"] == name
          and all(r["options"].get(k) == v for k, v in options.items())]


def test_study_writes_json_and_png(ridge_study):
  out, summary = ridge_study
  with open(out / "study.json") as f:
    assert json.load(f) == summary
  assert (out / "study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_study_json_is_sane(ridge_study):
  _, summary = ridge_study
  assert summary["problem"] == "ridge" and summary["dtype"] == "float64"
  assert {r["estimator"] for r in summary["runs"]} == set(hypergrad.ESTIMATORS)
  assert 0 < summary["hessian_eig_min"] <= summary["hessian_eig_max"]
  assert summary["inner_grad_norm"] < 1e-10  # evaluated at the inner optimum
  for run in summary["runs"]:
    assert isinstance(run["hvp_passes"], int) and run["hvp_passes"] >= 0
    assert run["wall_time_s"] > 0
    assert run["rel_error"] is not None and math.isfinite(run["rel_error"])
    assert run["cosine"] is None or -1 - 1e-12 <= run["cosine"] <= 1 + 1e-12
  fd = _runs(summary, "unrolled_fd")
  assert sorted(r["options"]["epsilon"] for r in fd) == [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]


def test_study_reference_is_exact_and_cg_reaches_it(ridge_study):
  _, summary = ridge_study
  assert summary["reference_vs_closed_form"] < 1e-10
  (dense,) = _runs(summary, "dense_ift")
  assert dense["rel_error"] == 0.0 and dense["hvp_passes"] == summary["n_weights"] + 1
  (cg_full,) = _runs(summary, "cg", maxiter=50, damping=0.0)
  assert cg_full["rel_error"] < 1e-10


def test_study_unrolled_autodiff_matches_neumann_at_the_optimum(ridge_study):
  # From w*, T unrolled GD steps of size xi give the Neumann sum with K = T - 1, gamma = xi.
  _, summary = ridge_study
  lr = 1.0 / summary["hessian_eig_max"]
  for steps in (1, 2):
    (unrolled,) = _runs(summary, "unrolled_autodiff", unroll_steps=steps)
    (series,) = [r for r in _runs(summary, "neumann", num_terms=steps - 1)
                 if math.isclose(r["options"]["gamma"], lr)]
    assert math.isclose(unrolled["rel_error"], series["rel_error"], rel_tol=1e-9)


def test_study_unknown_problem_lists_the_problems(tmp_path):
  with pytest.raises(JaxnasError, match="logistic, ridge, supernet"):
    hypergrad_study("mnist", str(tmp_path))
