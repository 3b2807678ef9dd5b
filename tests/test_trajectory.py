"""Snapshots of a search and the hypergradient study along them.

The run directory is written by ``jaxnas.run.run_search(..., dry_run=True)`` (config.json only) for
the smallest NAS-Bench-201 supernet (C = 1, one cell per stage); the two snapshots hold weights
drawn from the network's parameter shapes, so no initialisation program is compiled. The default
tier runs the study with first order only (its one big program, the reference's exact products,
still compiles in about a minute on a 2-core CPU); every default estimator and the reference against
``hypergrad.cg`` are marked slow.
"""

import csv
import io
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jaxnas import data, hypergrad, relax, run, search
from jaxnas.errors import JaxnasError
from jaxnas.trajectory import (DEFAULT_ESTIMATORS, TRAJECTORY_COLUMNS, load_snapshot,
                               load_snapshots, save_snapshot, trajectory_study)

_CONFIG = dict(space="nb201", channels=1, cells=1, batch_size=16, steps=4, seed=3)


def _random_state(model, seed: int) -> search.SearchState:
  """A SearchState with random float32 weights of the model's shapes (nothing compiled)."""
  alphas = model.init_alphas(jax.random.key(seed))
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)),
                                             relax.softmax(alphas), train=False))
  rng = np.random.default_rng(seed)
  draw = lambda s: jnp.asarray(rng.uniform(-0.5, 0.5, s.shape), jnp.float32)  # noqa: E731
  weights = jax.tree.map(draw, shapes["params"])
  stats = jax.tree.map(lambda s: jnp.ones(s.shape, jnp.float32), shapes["batch_stats"])
  return search.SearchState(weights=weights, batch_stats=stats, alphas=alphas, w_opt_state=None,
                            a_opt_state=None, step=jnp.asarray(0, jnp.int32),
                            key=jax.random.key(seed))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("runs") / "run"
  run.run_search(run.SearchConfig(**_CONFIG, out=str(out), dry_run=True), stdout=io.StringIO())
  model, _ = run.build(run.SearchConfig(**_CONFIG), 10)
  first = _random_state(model, 0)
  save_snapshot(out, 0, first)
  moved = _random_state(model, 1)
  save_snapshot(out, 3, moved._replace(alphas={"cell": first.alphas["cell"] + 0.3}))
  return out


def _trees_identical(a, b):
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  assert ta == tb
  for x, y in zip(la, lb):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    assert x.tobytes() == y.tobytes()  # bit for bit


# ----------------------------------------------------------------------------------------------
# Snapshots.


def test_snapshot_round_trip_is_bit_exact(tmp_path):
  model, _ = run.build(run.SearchConfig(**_CONFIG), 10)
  state = _random_state(model, 7)
  state = state._replace(alphas={"cell": state.alphas["cell"].astype(jnp.float64)})
  path = save_snapshot(tmp_path, 12, state)
  assert path == tmp_path / "trajectory" / "step_000012.npz"
  snap = load_snapshot(path)
  assert snap.step == 12
  _trees_identical(snap.weights, state.weights)
  _trees_identical(snap.batch_stats, state.batch_stats)
  _trees_identical(snap.alphas, state.alphas)
  assert np.asarray(snap.alphas["cell"]).dtype == np.float64
  with np.load(path, allow_pickle=False) as archive:  # plain arrays under key paths, no pickle
    assert "weights/classifier/kernel" in archive.files and "alphas/cell" in archive.files
  assert [p.name for p in (tmp_path / "trajectory").iterdir()] == ["step_000012.npz"]


def test_load_snapshots_orders_by_step(tmp_path):
  model, _ = run.build(run.SearchConfig(**_CONFIG), 10)
  state = _random_state(model, 0)
  for step in (20, 3, 100):
    save_snapshot(tmp_path, step, state)
  assert [s.step for s in load_snapshots(tmp_path)] == [3, 20, 100]


def test_snapshot_errors_say_what_to_do(tmp_path):
  with pytest.raises(JaxnasError, match="--save-trajectory"):
    load_snapshots(tmp_path)
  model, _ = run.build(run.SearchConfig(**_CONFIG), 10)
  state = _random_state(model, 0)
  with pytest.raises(JaxnasError, match="step must be a whole number"):
    save_snapshot(tmp_path, -1, state)
  with pytest.raises(JaxnasError, match="nested dicts with string keys"):
    save_snapshot(tmp_path, 0, state._replace(alphas=[state.alphas["cell"]]))
  np.savez(tmp_path / "foreign.npz", x=np.zeros(2))
  with pytest.raises(JaxnasError, match="not a jaxnas snapshot"):
    load_snapshot(tmp_path / "foreign.npz")


def test_trajectory_study_checks_its_arguments_first(run_dir, tmp_path):
  with pytest.raises(JaxnasError, match="has no config.json"):
    trajectory_study(tmp_path, tmp_path / "out")
  with pytest.raises(JaxnasError, match="unknown estimator 'newton'"):
    trajectory_study(run_dir, tmp_path / "out", estimators=[("newton", {})])
  with pytest.raises(JaxnasError, match="'lr' .* or 'damping'"):
    trajectory_study(run_dir, tmp_path / "out", estimators=[("unrolled_hvp", {"xi": "eta"})])
  with pytest.raises(JaxnasError, match="takes no option 'gamma'"):
    trajectory_study(run_dir, tmp_path / "out", estimators=[("cg", {"gamma": 0.1})])
  with pytest.raises(JaxnasError, match="damping must be ≥ 0"):
    trajectory_study(run_dir, tmp_path / "out", damping=-1.0)
  assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------
# The study, first order only.


@pytest.fixture(scope="module")
def first_order_study(run_dir, tmp_path_factory):
  out = tmp_path_factory.mktemp("trajectory")
  return out, trajectory_study(run_dir, out, estimators=[("first_order", {})], batch_size=8)


def test_trajectory_study_writes_its_files(first_order_study):
  out, summary = first_order_study
  assert json.loads((out / "trajectory.json").read_text()) == summary
  assert (out / "trajectory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  md = (out / "trajectory.md").read_text()
  assert "## Cosine similarity to the reference" in md
  assert "| estimator | step 0 | step 3 |" in md
  with open(out / "trajectory.csv", newline="") as f:
    rows = list(csv.reader(f))
  assert tuple(rows[0]) == TRAJECTORY_COLUMNS
  assert len(rows) - 1 == len(summary["runs"]) == 2
  for row, record in zip(rows[1:], summary["runs"]):
    parsed = dict(zip(rows[0], row))
    assert int(parsed["step"]) == record["step"] and parsed["estimator"] == record["estimator"]
    assert json.loads(parsed["options"]) == record["options"]
    assert float(parsed["cosine"]) == record["cosine"]
    assert float(parsed["rel_error"]) == record["rel_error"]
    assert int(parsed["hvp_passes"]) == record["hvp_passes"]


def test_trajectory_reference_is_a_converged_damped_solve(first_order_study):
  _, summary = first_order_study
  assert [s["step"] for s in summary["snapshots"]] == [0, 3]
  assert summary["n_alphas"] == 30 and summary["batch_size"] == 8
  for snap in summary["snapshots"]:
    assert snap["reference_converged"] and snap["reference_residual"] <= 1e-10
    # λ shifts past the most negative curvature Lanczos saw, by 1% of the largest.
    assert snap["damping"] >= -snap["lanczos_eig_min"] + 0.01 * snap["lanczos_eig_max"] - 1e-12
    assert snap["train_grad_norm"] > 0  # mid-search weights: not stationary
    assert len(snap["reference"]) == 30 and np.isfinite(snap["reference"]).all()
    assert math.isclose(np.linalg.norm(snap["reference"]), snap["reference_norm"], rel_tol=1e-12)


def test_first_order_cosine_equals_a_direct_computation(run_dir, first_order_study):
  # ∇_α L_val by jax.grad of the search's own loss (float64), against the stored reference.
  _, summary = first_order_study
  cfg = run.SearchConfig(**_CONFIG)
  model, _ = run.build(cfg, 10)
  model = model.clone(dtype=jnp.float64)
  _, val = data.search_batches(data.load("digits"), 8, seed=cfg.seed, step=0)
  val = {"image": jnp.asarray(val["image"], jnp.float64), "label": jnp.asarray(val["label"])}
  to64 = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), t)  # noqa: E731
  snapshots = load_snapshots(run_dir)
  loss = search.make_losses(model, relax.softmax, to64(snapshots[0].batch_stats))
  grad_alpha = jax.jit(jax.grad(lambda w, a: loss(w, a, val, None)[0], argnums=1))
  for snap, facts in zip(snapshots, summary["snapshots"]):
    g = np.asarray(ravel_pytree(grad_alpha(to64(snap.weights), to64(snap.alphas)))[0])
    ref = np.asarray(facts["reference"])
    (record,) = [r for r in summary["runs"] if r["step"] == snap.step]
    assert record["estimator"] == "first_order" and record["hvp_passes"] == 0
    cosine = g @ ref / (np.linalg.norm(g) * np.linalg.norm(ref))
    assert math.isfinite(record["cosine"]) and abs(record["cosine"] - cosine) < 1e-12
    assert math.isclose(record["rel_error"], np.linalg.norm(g - ref) / np.linalg.norm(ref),
                        rel_tol=1e-12)


# ----------------------------------------------------------------------------------------------
# Slow: every default estimator; the reference against hypergrad.cg.


@pytest.mark.slow
def test_trajectory_study_with_every_default_estimator(run_dir, tmp_path):
  summary = trajectory_study(run_dir, tmp_path, batch_size=8)
  assert {r["label"] for r in summary["runs"]} == {
      s["label"] for s in summary["settings"]}
  assert len(summary["runs"]) == 2 * len(DEFAULT_ESTIMATORS)
  for record in summary["runs"]:
    assert record["cosine"] is not None and -1 - 1e-12 <= record["cosine"] <= 1 + 1e-12
    assert math.isfinite(record["rel_error"])
  lr = summary["snapshots"][0]["lr"]
  (neumann,) = [r for r in summary["runs"] if r["estimator"] == "neumann" and r["step"] == 0]
  assert neumann["options"] == {"gamma": lr, "num_terms": 2} and neumann["hvp_passes"] == 3
  (cg,) = [r for r in summary["runs"] if r["estimator"] == "cg" and r["step"] == 0]
  assert cg["options"]["damping"] == summary["snapshots"][0]["damping"]


@pytest.mark.slow
def test_trajectory_reference_matches_hypergrad_cg(run_dir, first_order_study):
  # The same damped system solved by the library's CG (JAX, its own loop) to a tight tolerance.
  _, summary = first_order_study
  cfg = run.SearchConfig(**_CONFIG)
  model, recipe = run.build(cfg, 10)
  model = model.clone(dtype=jnp.float64)
  train, val = data.search_batches(data.load("digits"), 8, seed=cfg.seed, step=0)
  train, val = ({"image": jnp.asarray(b["image"], jnp.float64), "label": jnp.asarray(b["label"])}
                for b in (train, val))
  to64 = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), t)  # noqa: E731
  decay = recipe.weight_optimizer.weight_decay
  for snap, facts in zip(load_snapshots(run_dir), summary["snapshots"]):
    loss = search.make_losses(model, relax.softmax, to64(snap.batch_stats))

    def train_loss(w, a, b, k, loss=loss):
      value, aux = loss(w, a, b, k)
      return value + decay * sum(jnp.sum(x ** 2) for x in jax.tree.leaves(w)) / 2, aux

    g, info = jax.jit(lambda w, a, lam, loss=loss, train_loss=train_loss: hypergrad.cg(
        train_loss, loss, w, a, train, val, key=None, damping=lam, maxiter=500, tol=1e-12))(
            to64(snap.weights), to64(snap.alphas), facts["damping"])
    assert int(info["iterations"]) < 500  # stopped by its tolerance
    np.testing.assert_allclose(np.asarray(ravel_pytree(g)[0]), facts["reference"], rtol=1e-8,
                               atol=1e-10 * facts["reference_norm"])


@pytest.mark.slow
def test_trajectory_study_solver_options(run_dir, tmp_path):
  summary = trajectory_study(run_dir, tmp_path, estimators=[("cg", {"damping": "damping",
                                                                     "maxiter": 3})],
                             batch_size=8, batch_step=1, damping=100.0, tol=1e-8, maxiter=200,
                             lanczos_steps=5)
  assert summary["batch_step"] == 1
  assert summary["reference"] == {
      "what": "damped IFT at the snapshot's weights, CG on exact HVPs", "damping": 100.0,
      "rel_damping": 0.01, "tol": 1e-8, "maxiter": 200, "lanczos_steps": 5}
  for snap in summary["snapshots"]:
    assert snap["damping"] == 100.0 and snap["damping_retries"] == 0
    assert snap["lanczos_steps"] == 5 and snap["reference_residual"] <= 1e-8
  for record in summary["runs"]:
    assert record["options"] == {"damping": 100.0, "maxiter": 3} and record["hvp_passes"] <= 4
