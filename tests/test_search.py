"""The jitted search step: gradients, learning, one compilation, determinism."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnas import hypergrad, methods, relax, search, spaces

IMAGE = (8, 8, 1)
BATCH = 8
SPE, EPOCHS = 10, 5


def _batch(seed):
  rng = np.random.default_rng(seed)
  return {"image": rng.standard_normal((BATCH,) + IMAGE),
          "label": rng.integers(0, 10, BATCH).astype(np.int32)}


@pytest.fixture(scope="module")
def setup():
  model = spaces.get("nb201", channels=2, cells_per_stage=1, num_classes=10, dtype=jnp.float64)
  recipe = methods.get("darts-1st")
  state = search.init_search_state(model, recipe, jax.random.key(0), IMAGE, steps_per_epoch=SPE,
                                   epochs=EPOCHS)
  traced = []

  def counting_step(*args):
    traced.append(1)
    return raw_step(*args)

  raw_step = search.make_search_step(model, recipe, steps_per_epoch=SPE, epochs=EPOCHS, jit=False)
  step = jax.jit(counting_step)
  return model, recipe, state, step, traced


def test_state_is_one_pytree_with_float64_alphas(setup):
  model, _, state, _, _ = setup
  assert isinstance(state, search.SearchState)
  assert model.alpha_shapes() == {"cell": (6, 5)}
  assert jax.tree.map(jnp.shape, state.alphas) == {"cell": (6, 5)}
  assert state.alphas["cell"].dtype == jnp.float64
  assert state.step.dtype == jnp.int32 and int(state.step) == 0
  assert "alphas" not in state.weights


def test_first_order_equals_grad_of_val_loss(setup):
  model, _, state, _, _ = setup
  loss = search.make_losses(model, relax.softmax, state.batch_stats)
  tb, vb = _batch(1), _batch(2)
  g, info = jax.jit(lambda w, a: hypergrad.first_order(loss, loss, w, a, tb, vb, key=None))(
      state.weights, state.alphas)

  def val_ce(alphas):
    weights = jax.nn.softmax(alphas["cell"], axis=-1)
    logits, _ = model.apply({"params": state.weights, "batch_stats": state.batch_stats},
                            vb["image"], {"cell": weights}, train=True, mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, vb["label"]).mean()

  ref_value, ref = jax.jit(jax.value_and_grad(val_ce))(state.alphas)
  np.testing.assert_allclose(g["cell"], ref["cell"], rtol=1e-10, atol=1e-14)
  np.testing.assert_allclose(info["val_loss"], ref_value, rtol=1e-12)
  assert float(jnp.abs(ref["cell"]).max()) > 1e-6  # the gradient is not trivially zero


def test_step_learns_compiles_once_and_is_deterministic(setup):
  _, _, state0, step, traced = setup
  tb, vb = _batch(3), _batch(4)
  state = state0
  losses, alphas_seen = [], []
  for _ in range(15):
    state, m = step(state, tb, vb)
    losses.append(float(m["train_loss"]))
  # Learns: the training loss on a repeated batch falls well below where it started.
  assert losses[-1] < 0.5 * losses[0], losses
  # Alphas moved by Adam: at most lr per step in each coordinate, and not zero.
  delta = np.abs(np.asarray(state.alphas["cell"] - state0.alphas["cell"]))
  assert 0 < delta.max() <= 15 * 3e-4 * 1.01
  assert int(state.step) == 15
  # One trace for fifteen steps (shapes and dtypes fix everything else), and one compilation:
  # the initial state is committed to the device as every later state is, so jit's cache does
  # not key a second executable on the first call's uncommitted leaves.
  assert len(traced) == 1
  assert step._cache_size() == 1
  assert all(leaf.committed for leaf in jax.tree.leaves(state0))
  # Same start, same batches: bit-identical alphas and weights.
  again = state0
  for _ in range(15):
    again, _ = step(again, tb, vb)
  chex.assert_trees_all_equal(again.alphas, state.alphas)
  chex.assert_trees_all_equal(again.weights, state.weights)
  assert len(traced) == 1


def test_metrics_are_finite_and_complete(setup):
  _, _, state, step, _ = setup
  _, m = step(state, _batch(5), _batch(6))
  for k in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "weight_grad_norm",
            "alpha_grad_norm", "mixing_entropy", "lr"):
    assert np.isfinite(float(m[k])), k
  # Near-uniform mixing weights over 5 ops: entropy close to log 5.
  assert abs(float(m["mixing_entropy"]) - np.log(5)) < 1e-3
  np.testing.assert_allclose(float(m["lr"]), 0.025)


def test_cosine_schedule_is_per_epoch_from_lr_to_lr_min():
  sched = search.epoch_cosine_schedule(0.025, 0.001, steps_per_epoch=10, epochs=4)
  got = [float(sched(s)) for s in (0, 9, 10, 20, 30, 39, 40)]
  e = np.array([0, 0, 1, 2, 3, 3, 4])
  want = 0.001 + 0.5 * 0.024 * (1 + np.cos(np.pi * e / 4))
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_weight_optimizer_matches_pytorch_sgd_with_clip_and_decay():
  """clip → +λw → momentum SGD equals torch's clip_grad_norm_ then SGD(momentum, weight_decay)."""
  w_tx, _, _ = search.make_optimizers(methods.WeightOptimizer(), methods.ArchOptimizer(),
                                      steps_per_epoch=10, epochs=5)
  w = {"a": jnp.array([1.0, -2.0]), "b": jnp.array([[0.5]])}
  g = {"a": jnp.array([30.0, 40.0]), "b": jnp.array([[0.0]])}  # global norm 50 → clipped to 5
  state = w_tx.init(w)
  upd, state = w_tx.update(g, state, w)
  upd2, _ = w_tx.update(g, state, w)
  lr, mu, wd = 0.025, 0.9, 3e-4
  flat_w, flat_g = np.array([1.0, -2.0, 0.5]), np.array([3.0, 4.0, 0.0])  # clipped gradient
  m1 = flat_g + wd * flat_w
  m2 = mu * m1 + flat_g + wd * flat_w
  np.testing.assert_allclose(np.concatenate([upd["a"], upd["b"].ravel()]), -lr * m1, rtol=1e-12)
  np.testing.assert_allclose(np.concatenate([upd2["a"], upd2["b"].ravel()]), -lr * m2,
                             rtol=1e-12)


def test_arch_optimizer_is_adam_with_coupled_l2():
  _, a_tx, _ = search.make_optimizers(methods.WeightOptimizer(), methods.ArchOptimizer(),
                                      steps_per_epoch=10, epochs=5)
  a = {"x": jnp.array([0.5, -1.0])}
  g = {"x": jnp.array([0.2, 0.1])}
  with jax.numpy_dtype_promotion("standard"):  # optax's Adam is not strict-promotion clean
    upd, _ = a_tx.update(g, a_tx.init(a), a)
  gg = np.array([0.2, 0.1]) + 1e-3 * np.array([0.5, -1.0])
  m = (1 - 0.5) * gg / (1 - 0.5)
  v = (1 - 0.999) * gg**2 / (1 - 0.999)
  np.testing.assert_allclose(upd["x"], -3e-4 * m / (np.sqrt(v) + 1e-8), rtol=1e-9)


@pytest.mark.slow
def test_arch_warmup_keeps_alphas_fixed(setup):
  model, recipe, state, _, _ = setup
  warm = recipe.replace(arch_warmup_epochs=1)
  step = search.make_search_step(model, warm, steps_per_epoch=2, epochs=3)
  s = jax.tree.map(jnp.copy, state)
  for _ in range(2):
    s, _ = step(s, _batch(7), _batch(8))
  chex.assert_trees_all_equal(s.alphas, state.alphas)
  s, _ = step(s, _batch(7), _batch(8))
  assert float(jnp.abs(s.alphas["cell"] - state.alphas["cell"]).max()) > 0


@pytest.mark.slow
def test_estimator_override_unrolled_runs_in_the_step(setup):
  """A second-order estimator drops into the same step: xi (the current lr) is passed for it."""
  model, recipe, state, _, _ = setup
  step = search.make_search_step(model, recipe.replace(estimator="unrolled_hvp"),
                                 steps_per_epoch=SPE, epochs=EPOCHS)
  s, m = step(jax.tree.map(jnp.copy, state), _batch(9), _batch(10))
  assert int(m["hvp_passes"]) == 1
  assert np.isfinite(float(m["alpha_grad_norm"]))


def test_second_order_through_the_darts_ops_equals_autodiff():
  """The exact mixed product (forward-over-reverse) runs through every DARTS op (max pool,
  FactorizedReduce, sep and dil convs, one edge group at stride 2) and equals reverse-over-reverse
  autodiff through the unrolled step."""
  from jaxnas.spaces.darts import DartsEdgeGroup
  group = DartsEdgeGroup(num_edges=2, channels=2, stride=2, dtype=jnp.float64)
  rng = np.random.default_rng(23)
  x = jnp.asarray(rng.normal(size=(4, 8, 8, 2)))
  variables = jax.jit(lambda k: group.init(k, x, jnp.ones((2, 8)), train=True))(jax.random.key(0))
  alphas = jnp.asarray(rng.normal(size=(2, 8)))

  def loss(w, a, batch, key):
    out, _ = group.apply({"params": w, "batch_stats": variables["batch_stats"]}, batch[0],
                         jax.nn.softmax(a, axis=-1), train=True, mutable=["batch_stats"])
    return jnp.mean(jnp.sin(out) * batch[1]), None

  tb = (x, jnp.asarray(rng.normal(size=(4, 4, 4, 2, 2))))
  vb = (jnp.asarray(rng.normal(size=x.shape)), jnp.asarray(rng.normal(size=(4, 4, 4, 2, 2))))

  @jax.jit
  def both(weights, alphas):
    hvp, _ = hypergrad.unrolled_hvp(loss, loss, weights, alphas, tb, vb, key=None, xi=0.5)
    auto, _ = hypergrad.unrolled_autodiff(loss, loss, weights, alphas, tb, vb, key=None, xi=0.5)
    first, _ = hypergrad.first_order(loss, loss, weights, alphas, tb, vb, key=None)
    return hvp, auto, first

  hvp, auto, first = both(variables["params"], alphas)
  np.testing.assert_allclose(hvp, auto, rtol=1e-9, atol=1e-14)
  assert float(jnp.abs(hvp - first).max()) > 1e-6  # the second-order term is really there


def test_phase_loop_equals_the_two_copy_step(setup):
  """The first-order step scanned over its two phases computes what the two-copy program does,
  with a regulariser and a perturbation in the recipe."""
  model, recipe, state, _, _ = setup
  recipe = recipe.replace(regularizers=(("beta-decay", 0.5, "constant"),),
                          perturbation="random-smoothing")
  state = search.init_search_state(model, recipe, jax.random.key(3), IMAGE, steps_per_epoch=SPE,
                                   epochs=EPOCHS)
  fused = search.make_search_step(model, recipe, steps_per_epoch=SPE, epochs=EPOCHS,
                                  fuse_phases=True)
  plain = search.make_search_step(model, recipe, steps_per_epoch=SPE, epochs=EPOCHS,
                                  fuse_phases=False)
  a, b = jax.tree.map(jnp.copy, state), jax.tree.map(jnp.copy, state)
  for i in range(3):
    a, ma = fused(a, _batch(30 + i), _batch(40 + i))
    b, mb = plain(b, _batch(30 + i), _batch(40 + i))
  chex.assert_trees_all_close(a._replace(key=None), b._replace(key=None), rtol=1e-10, atol=1e-12)
  assert float(jnp.abs(a.alphas["cell"] - state.alphas["cell"]).max()) > 0
  assert set(ma) == set(mb)
  for k in ma:
    np.testing.assert_allclose(ma[k], mb[k], rtol=1e-10, atol=1e-12, err_msg=k)
