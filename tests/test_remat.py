"""Rematerialisation changes memory, not numbers: one search step with and without it.

A tiny DARTS space (3 cells, C=4, 8×8, batch 4; slow: three compiles of a DARTS step) and a tiny
NAS-Bench-201 space (C=2, one cell per stage), float64: the step
with ``remat="cell"`` and ``remat="op"`` gives the new alphas, weights, statistics and metrics of
the step without remat. Each step is compiled once per module.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnas import methods, search, spaces
from jaxnas.errors import JaxnasError
from jaxnas.run import SearchConfig, space_config, validate

SHAPE = (8, 8, 3)


def _batch(seed):
  rng = np.random.default_rng(seed)
  return {"image": jnp.asarray(rng.standard_normal((4,) + SHAPE)),
          "label": jnp.asarray(rng.integers(0, 10, 4), jnp.int32)}


def _steps(space, method, **config):
  """The state after one step for remat none, cell and op, from one initial state."""
  recipe = methods.get(method)
  opts = dict(methods.options(recipe.space_options))
  base = spaces.get(space, dtype=jnp.float64, num_classes=10, **config, **opts)
  state = search.init_search_state(base, recipe, jax.random.key(0), SHAPE, steps_per_epoch=5,
                                   epochs=2)
  results = {}
  for remat in ("none", "cell", "op"):
    model = base.clone(remat=remat)
    # The parameter tree does not depend on remat: one initial state serves all three.
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1,) + SHAPE),
                                               base.init_alphas(jax.random.key(1)), train=False))
    assert jax.tree.structure(shapes["params"]) == jax.tree.structure(state.weights)
    step = search.make_search_step(model, recipe, steps_per_epoch=5, epochs=2, jit=False)
    results[remat] = jax.jit(step)(state, _batch(1), _batch(2))  # not donated: state is reused
  return results


def _check_equal(results):
  (ref_state, ref_m) = results["none"]
  for remat in ("cell", "op"):
    got_state, got_m = results[remat]
    for name in ("alphas", "weights", "batch_stats", "w_opt_state", "a_opt_state"):
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12),
                   getattr(ref_state, name), getattr(got_state, name))
    for key in ref_m:
      np.testing.assert_allclose(got_m[key], ref_m[key], rtol=1e-10, atol=1e-12, err_msg=key)


@pytest.fixture(scope="module")
def darts_results():
  return _steps("darts", "darts-1st", channels=4, num_cells=3)


@pytest.fixture(scope="module")
def nb201_results():
  return _steps("nb201", "darts-1st", channels=2, cells_per_stage=1)


@pytest.mark.slow  # three compiles of a DARTS search step: minutes on a busy 2-core CPU
def test_darts_step_is_the_same_with_cell_and_op_remat(darts_results):
  _check_equal(darts_results)
  assert float(darts_results["none"][1]["alpha_grad_norm"]) > 0


def test_nb201_step_is_the_same_with_cell_and_op_remat(nb201_results):
  _check_equal(nb201_results)
  assert float(nb201_results["none"][1]["alpha_grad_norm"]) > 0


def test_remat_option_reaches_the_space_and_bad_values_are_one_line_errors():
  cfg = SearchConfig(space="darts", remat="cell", channels=4, cells=3)
  assert space_config(cfg, 10)["remat"] == "cell"
  assert "remat" not in space_config(SearchConfig(space="darts", channels=4, cells=3), 10)
  with pytest.raises(JaxnasError, match="--remat must be"):
    validate(SearchConfig(remat="layer"))
  model = spaces.get("nb201", channels=2, cells_per_stage=1, remat="layer")
  with pytest.raises(JaxnasError, match="remat is 'layer'"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1,) + SHAPE),
                                      model.init_alphas(jax.random.key(1)), train=False))
