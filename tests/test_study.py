"""The hypergradient study: files written, tables equal to the JSON, reference exact, stationarity.

The ridge study runs by default; the real-supernet problem (a NAS-Bench-201 supernet, minutes of
compilation on a 2-core CPU) is marked slow.
"""

import csv
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jaxnas import hypergrad, study
from jaxnas.errors import JaxnasError
from jaxnas.study import STUDY_COLUMNS, hypergrad_study


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


def _parse(column, text):
  if text == "":
    return None
  if column == "options":
    return json.loads(text)
  if column == "estimator":
    return text
  return int(text) if column == "hvp_passes" else float(text)


def test_study_csv_rows_equal_the_json_records(ridge_study):
  out, summary = ridge_study
  with open(out / "study.csv", newline="") as f:
    rows = list(csv.reader(f))
  assert tuple(rows[0]) == STUDY_COLUMNS
  assert len(rows) - 1 == len(summary["runs"])
  for row, record in zip(rows[1:], summary["runs"]):
    assert {c: _parse(c, t) for c, t in zip(rows[0], row)} == {c: record[c] for c in STUDY_COLUMNS}


def test_study_markdown_has_one_rounded_row_per_setting(ridge_study):
  out, summary = ridge_study
  lines = (out / "study.md").read_text().splitlines()
  assert lines[0] == "# Hypergradient estimators on `ridge` (seed 0)"
  table = [line for line in lines if line.startswith("| ")]
  assert table[0] == "| estimator | options | rel. error | cosine | HVP passes | wall time |"
  rows = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in table[1:]]
  assert len(rows) == len(summary["runs"])
  for cells, record in zip(rows, summary["runs"]):
    assert cells[0] == record["estimator"] and int(cells[4]) == record["hvp_passes"]
    if record["rel_error"]:  # 3 significant digits
      assert math.isclose(float(cells[2]), record["rel_error"], rel_tol=5e-3)
    if record["cosine"] is not None:  # 6 decimals
      assert abs(float(cells[3]) - record["cosine"]) <= 5e-7
    else:
      assert cells[3] == "—"
  (dense,) = [cells for cells in rows if cells[0] == "dense_ift"]
  assert dense[1:4] == ["—", "0", "1.000000"]
  (fd,) = [cells for cells in rows if cells[0] == "unrolled_fd" and "epsilon=1e-06" in cells[1]]
  assert fd[1].startswith("xi=") and fd[5].endswith("ms")


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
  with pytest.raises(JaxnasError, match="logistic, ridge, supernet, toy"):
    hypergrad_study("mnist", str(tmp_path))


def test_study_refuses_a_point_that_is_not_a_strict_minimum(monkeypatch, tmp_path):
  # The ridge problem moved off its optimum: the gradient is no longer zero.
  ridge = study.PROBLEMS["ridge"]

  def moved(seed):
    p = ridge(seed)
    return p._replace(w=p.w + 1e-3)

  monkeypatch.setitem(study.PROBLEMS, "ridge", moved)
  with pytest.raises(JaxnasError, match="did not reach a strict local minimum.*try another seed"):
    hypergrad_study("ridge", str(tmp_path))
  assert not any(tmp_path.iterdir())  # nothing written


# ----------------------------------------------------------------------------------------------
# The real supernet problem (slow: a search's compile and 100 steps, then the Newton solve).


@pytest.fixture(scope="module")
def supernet_problem():
  return study.PROBLEMS["supernet"](0)


@pytest.mark.slow
def test_supernet_problem_is_a_strict_local_minimum(supernet_problem):
  p = supernet_problem
  flat, unravel = ravel_pytree(p.w)
  assert flat.dtype == jnp.float64 and flat.size == 90  # the classifier head, Dense 8 → 10
  objective = lambda f: p.train_loss(unravel(f), p.alphas, p.train, None)[0]  # noqa: E731
  grad = jax.jit(jax.grad(objective))(flat)
  assert float(jnp.linalg.norm(grad)) <= 1e-12
  eigs = np.linalg.eigvalsh(np.asarray(jax.jit(jax.hessian(objective))(flat)))
  assert eigs[0] > 0
  # Cross-entropy is invariant to adding one constant to every bias, so the smallest curvature is
  # the weight decay's own: the direction (0, …, 0, 1, …, 1)/√10 has eigenvalue exactly λ_w.
  weight_decay = p.facts["weight_decay"]
  assert abs(eigs[0] - weight_decay) <= 1e-12
  bias_shift = unravel(jnp.zeros_like(flat))
  bias_shift["bias"] = jnp.ones(10) / jnp.sqrt(10.0)
  v = ravel_pytree(bias_shift)[0]
  hv = jax.jvp(jax.grad(objective), (flat,), (v,))[1]
  np.testing.assert_allclose(hv, weight_decay * v, atol=1e-12)


@pytest.mark.slow
def test_supernet_dense_ift_is_the_hypergradient(supernet_problem):
  p = supernet_problem
  dense, _ = jax.jit(lambda w, a: hypergrad.dense_ift(
      p.train_loss, p.val_loss, w, a, p.train, p.val, key=None))(p.w, p.alphas)
  cg, info = jax.jit(lambda w, a: hypergrad.cg(
      p.train_loss, p.val_loss, w, a, p.train, p.val, key=None, maxiter=300, tol=1e-14))(
          p.w, p.alphas)
  dense, cg = ravel_pytree(dense)[0], ravel_pytree(cg)[0]
  assert int(info["iterations"]) < 300
  np.testing.assert_allclose(cg, dense, rtol=0, atol=1e-11 * float(jnp.linalg.norm(dense)))

  # The bilevel objective α ↦ L_val(w*(α), α) by central differences along a random direction,
  # the inner problem re-solved by Newton's method at α ± εd.
  flat0, unravel = ravel_pytree(p.w)
  a_flat, a_unravel = ravel_pytree(p.alphas)

  @jax.jit
  def newton_step(f, a):
    objective = lambda f: p.train_loss(unravel(f), a_unravel(a), p.train, None)[0]  # noqa: E731
    g, h = jax.grad(objective)(f), jax.hessian(objective)(f)
    return f - jnp.linalg.solve(h, g), jnp.linalg.norm(g)

  val = jax.jit(lambda f, a: p.val_loss(unravel(f), a_unravel(a), p.val, None)[0])

  def bilevel(a):
    f = flat0
    for _ in range(30):
      f, grad_norm = newton_step(f, a)
      if grad_norm < 1e-13:
        break
    return float(val(f, a))

  d = jnp.asarray(np.random.default_rng(0).normal(size=a_flat.size))
  d = d / jnp.linalg.norm(d)
  eps = 1e-4
  slope = (bilevel(a_flat + eps * d) - bilevel(a_flat - eps * d)) / (2 * eps)
  assert math.isclose(slope, float(dense @ d), rel_tol=1e-6, abs_tol=1e-9)
