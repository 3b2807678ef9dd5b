"""The pieces a recipe plugs into the search: regularisers, perturbations, stopping rules.

Each piece is checked on hand-made inputs against an answer it did not compute, then inside the
real step. Step compilations are the expensive part on a small CPU, so there are three: the
β-DARTS step, the same step with SDARTS-RS' perturbation, and one run_search that stops early.
"""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnas import methods, perturb, regularize, search, spaces, stopping
from jaxnas.derive import Genotype, genotype_from_nb201_string
from jaxnas.errors import JaxnasError
from jaxnas.methods import Regularizer
from jaxnas.run import SearchConfig, run_search

IMAGE = (8, 8, 1)
BATCH = 8
SPE, EPOCHS = 10, 5
START_EPOCH = 2  # the steps below run at epoch 2 of 5, where the linear schedules are 2/5 along
LAM = 0.05  # λ of beta-decay; λ_t = LAM · 2/5


def _batch(seed):
  rng = np.random.default_rng(seed)
  return {"image": rng.standard_normal((BATCH,) + IMAGE),
          "label": rng.integers(0, 10, BATCH).astype(np.int32)}


def _np_softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _np_logsumexp(x):
  m = x.max(-1)
  return m + np.log(np.exp(x - m[..., None]).sum(-1))


# --- regularisers --------------------------------------------------------------------------------

HAND_ALPHAS = {
    "normal": np.array([[0.1, -0.2, 0.3, 0.0], [1.0, 2.0, -1.0, 0.5], [0.0, 0.0, 0.0, 0.0]]),
    "reduce": np.array([[-3.0, 1.5, 0.2, 0.7], [600.0, 599.0, 0.0, -2.0]]),  # 600: overflow-safe
    "other": np.array([[0.3, -0.4], [2.0, 1.0]]),  # a leaf with a different op count
}
HAND_EDGES = 3 + 2 + 2


def test_beta_decay_is_the_mean_logsumexp_over_all_edges_of_all_leaves():
  alphas = jax.tree.map(jnp.asarray, HAND_ALPHAS)
  want = np.mean(np.concatenate([_np_logsumexp(a) for a in HAND_ALPHAS.values()]))
  np.testing.assert_allclose(regularize.beta_decay(alphas), want, rtol=1e-14)
  # Row by row for the small rows, without the shift trick: log Σ exp.
  np.testing.assert_allclose(_np_logsumexp(HAND_ALPHAS["normal"]),
                             np.log(np.exp(HAND_ALPHAS["normal"]).sum(-1)), rtol=1e-14)


def test_beta_decay_gradient_is_softmax_over_num_edges():
  alphas = jax.tree.map(jnp.asarray, HAND_ALPHAS)
  grad = jax.grad(regularize.beta_decay)(alphas)
  for k, a in HAND_ALPHAS.items():
    np.testing.assert_allclose(grad[k], _np_softmax(a) / HAND_EDGES, rtol=1e-12, atol=1e-300)


def test_regularizer_records_schedules_and_registry():
  lin = Regularizer("beta-decay", 50.0, "linear")
  assert [regularize.scheduled_weight(lin, e, 100) for e in (0, 1, 99)] == [0.0, 0.5, 49.5]
  assert regularize.scheduled_weight(Regularizer("beta-decay", 3.0), 7, 10) == 3.0
  recipe = methods.get("darts-1st").replace(regularizers=[("beta-decay", 1.0, "linear")],
                                            perturbation_options={"epsilon_end": 0.5})
  assert recipe.regularizers == (Regularizer("beta-decay", 1.0, "linear"),)
  assert recipe.perturbation_options == (("epsilon_end", 0.5),)
  hash(recipe)  # frozen and hashable, as a recipe must stay
  with pytest.raises(JaxnasError, match="unknown regularizer schedule 'cosine'"):
    Regularizer("beta-decay", 1.0, "cosine")
  with pytest.raises(JaxnasError, match="unknown regularizer 'nope'"):
    regularize.get("nope")
  with pytest.raises(JaxnasError, match="empty"):
    regularize.beta_decay({})
  with pytest.raises(JaxnasError, match="a regularizer is"):
    methods.get("darts-1st").replace(regularizers=("beta-decay",))


def test_bad_pieces_are_one_line_errors_before_anything_compiles():
  model = spaces.get("nb201", channels=2, cells_per_stage=1, num_classes=10)
  base = methods.get("darts-1st")
  for recipe, needle in [
      (base.replace(regularizers=(("nope", 1.0),)), "unknown regularizer 'nope'"),
      (base.replace(regularizers=(("beta-decay", 1.0), ("beta-decay", 2.0))), "twice"),
      (base.replace(perturbation="nope"), "unknown perturbation 'nope'"),
      (base.replace(perturbation="random-smoothing", perturbation_options={"sigma": 1.0}),
       "no option 'sigma'"),
      (base.replace(perturbation_options={"epsilon_end": 1.0}), "but no perturbation"),
      (base.replace(stopping="nope"), "unknown stopping rule 'nope'"),
  ]:
    with pytest.raises(JaxnasError, match=needle):
      search.make_search_step(model, recipe, steps_per_epoch=SPE, epochs=EPOCHS)


# --- perturbations -------------------------------------------------------------------------------


def _mixing(seed, scale=1.0):
  rng = np.random.default_rng(seed)
  return {"cell": jnp.asarray(_np_softmax(scale * rng.standard_normal((6, 5)))),
          "reduce": jnp.asarray(_np_softmax(scale * rng.standard_normal((14, 8))))}


def test_simplex_clip_follows_the_reference_rule_on_hand_made_rows():
  rows = np.array([
      [-0.3, -0.1, -0.2],  # all clamp to zero: the pre-clamp argmax becomes 1
      [-0.1, -0.1, -0.5],  # all zero with a tie: the lowest index wins
      [-0.5, 0.2, 1.5],  # clamp to [0, 0.2, 1], then renormalise
      [0.2, 0.3, 0.5],  # already on the simplex: unchanged
  ])
  want = np.array([[0, 1, 0], [1, 0, 0], [0, 0.2 / 1.2, 1 / 1.2], [0.2, 0.3, 0.5]])
  np.testing.assert_allclose(perturb.simplex_clip(jnp.asarray(rows)), want, rtol=1e-15, atol=0)


def test_random_smoothing_is_clip_of_bounded_uniform_noise():
  w, key = _mixing(0), jax.random.key(3)
  eps = 0.3
  noise = perturb.uniform_noise(w, key, epsilon=eps)
  out = perturb.random_smoothing(w, key, epsilon=eps)
  for k in w:
    u = np.asarray(noise[k])
    # ε bound before the projection, and the noise fills the interval (not, say, ε/2).
    assert np.abs(u).max() <= eps and np.abs(u).max() > 0.9 * eps
    assert u.min() < 0 < u.max()
    # Structure: exactly the reference's clip of w + u.
    chex.assert_trees_all_equal(out[k], perturb.simplex_clip(w[k] + u))
    # Every row on the simplex.
    assert float(out[k].min()) >= 0
    np.testing.assert_allclose(out[k].sum(-1), 1.0, rtol=1e-14)
  # ε large enough to clamp: some entries went to zero, and w changed by more than rounding.
  assert any(float(jnp.min(out[k])) == 0 for k in w)
  assert float(jnp.abs(out["cell"] - w["cell"]).max()) > 0.05


def test_random_smoothing_small_epsilon_stays_close_to_clip_w():
  """Interior weights and small ε: nothing clamps, so out = (w + u) / (1 + Σu) and
  |out − clip(w)| ≤ (K + 1) ε / (1 − K ε) with clip(w) = w on the simplex."""
  w, key, eps = _mixing(1, scale=0.3), jax.random.key(4), 1e-3
  out = perturb.random_smoothing(w, key, epsilon=eps)
  noise = perturb.uniform_noise(w, key, epsilon=eps)
  for k in w:
    K = w[k].shape[-1]
    np.testing.assert_allclose(perturb.simplex_clip(w[k]), w[k], rtol=1e-14)
    diff = np.abs(np.asarray(out[k] - w[k]))
    assert 0 < diff.max() <= (K + 1) * eps / (1 - K * eps)
    u = np.asarray(noise[k])
    np.testing.assert_allclose(out[k] * (1 + u.sum(-1, keepdims=True)), w[k] + u, rtol=1e-13)


def test_random_smoothing_is_deterministic_in_the_key_and_traceable():
  w = _mixing(2)
  a = perturb.random_smoothing(w, jax.random.key(5), epsilon=0.2)
  b = perturb.random_smoothing(w, jax.random.key(5), epsilon=0.2)
  c = perturb.random_smoothing(w, jax.random.key(6), epsilon=0.2)
  chex.assert_trees_all_equal(a, b)
  assert float(jnp.abs(a["cell"] - c["cell"]).max()) > 1e-3
  # ε may be traced (it follows a schedule inside the step): same numbers under jit.
  jitted = jax.jit(lambda w, k, e: perturb.random_smoothing(w, k, epsilon=e))
  chex.assert_trees_all_close(jitted(w, jax.random.key(5), jnp.asarray(0.2)), a, rtol=1e-14)
  # ε = 0 leaves weights on the simplex where they are.
  chex.assert_trees_all_close(perturb.random_smoothing(w, jax.random.key(5), epsilon=0.0), w,
                              rtol=1e-14)


def test_epsilon_schedule_is_linear_per_epoch():
  sched = perturb.epsilon_schedule(steps_per_epoch=10, epochs=4)
  got = [float(sched(jnp.asarray(s, jnp.int32))) for s in (0, 9, 10, 25, 39, 40)]
  e = np.array([0, 0, 1, 2, 3, 4])
  np.testing.assert_allclose(got, 0.03 + 0.27 * e / 4, rtol=1e-12)
  custom = perturb.epsilon_schedule(0.1, 0.5, steps_per_epoch=10, epochs=4)
  np.testing.assert_allclose(float(custom(jnp.asarray(20, jnp.int32))), 0.3, rtol=1e-12)


# --- the pieces inside the search step ----------------------------------------------------------


@pytest.fixture(scope="module")
def setup():
  model = spaces.get("nb201", channels=2, cells_per_stage=1, num_classes=10, dtype=jnp.float64)
  beta = methods.get("darts-1st").replace(
      name="darts-1st-beta", regularizers=(Regularizer("beta-decay", LAM, "linear"),))
  smooth = beta.replace(name="darts-1st-beta-rs", perturbation="random-smoothing",
                        perturbation_options={"epsilon_start": 0.1, "epsilon_end": 0.5})
  state = search.init_search_state(model, beta, jax.random.key(0), IMAGE, steps_per_epoch=SPE,
                                   epochs=EPOCHS)
  state = state._replace(step=jnp.asarray(START_EPOCH * SPE, jnp.int32))
  steps = {r.name: search.make_search_step(model, r, steps_per_epoch=SPE, epochs=EPOCHS)
           for r in (beta, smooth)}

  def ce_of_mixing(mixing, params, batch_stats, batch):
    logits, _ = model.apply({"params": params, "batch_stats": batch_stats}, batch["image"],
                            mixing, train=True, mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

  ce_and_grad = jax.jit(jax.value_and_grad(ce_of_mixing))
  return model, state, steps, ce_and_grad


def _run(step, state, tb, vb):
  return step(jax.tree.map(jnp.copy, state), tb, vb)  # the step donates its state


def test_beta_decay_step_equals_adam_on_first_order_plus_regulariser_gradient(setup):
  _, state, steps, ce_and_grad = setup
  tb, vb = _batch(1), _batch(2)
  new, m = _run(steps["darts-1st-beta"], state, tb, vb)

  # Reference: ∇_α L_val by jax.grad through the mixing weights and softmax's Jacobian by hand,
  # λ_t ∇R = λ_t softmax(α) / 6, then the arch optimiser written out with optax directly.
  a0 = np.asarray(state.alphas["cell"])
  p = _np_softmax(a0)
  val, g_mix = ce_and_grad({"cell": jnp.asarray(p)}, state.weights, state.batch_stats, vb)
  g_mix = np.asarray(g_mix["cell"])
  g_val = p * (g_mix - (p * g_mix).sum(-1, keepdims=True))
  lam_t = LAM * START_EPOCH / EPOCHS
  g = g_val + lam_t * p / 6
  tx = optax.chain(optax.add_decayed_weights(1e-3),
                   optax.adam(3e-4, b1=0.5, b2=0.999, eps=1e-8))
  alphas = {"cell": jnp.asarray(a0)}
  with jax.numpy_dtype_promotion("standard"):  # optax's Adam is not strict-promotion clean
    upd, _ = tx.update({"cell": jnp.asarray(g)}, tx.init(alphas), alphas)
  want = a0 + np.asarray(upd["cell"])
  np.testing.assert_allclose(new.alphas["cell"], want, rtol=1e-12, atol=1e-16)

  # Without the regulariser the step would land elsewhere: the test can tell them apart.
  with jax.numpy_dtype_promotion("standard"):
    upd0, _ = tx.update({"cell": jnp.asarray(g_val)}, tx.init(alphas), alphas)
  assert np.abs(a0 + np.asarray(upd0["cell"]) - want).max() > 1e-10

  np.testing.assert_allclose(m["val_loss"], val, rtol=1e-12)
  np.testing.assert_allclose(m["reg/beta-decay"], _np_logsumexp(a0).mean(), rtol=1e-13)
  np.testing.assert_allclose(m["reg/beta-decay/weight"], lam_t, rtol=1e-15)
  np.testing.assert_allclose(m["alpha_grad_norm"], np.linalg.norm(g), rtol=1e-10)
  assert "perturb/epsilon" not in m


def test_perturbation_reaches_only_the_weight_step(setup):
  model, state, steps, ce_and_grad = setup
  tb, vb = _batch(3), _batch(4)
  plain, m_plain = _run(steps["darts-1st-beta"], state, tb, vb)
  smooth, m_smooth = _run(steps["darts-1st-beta-rs"], state, tb, vb)

  # The architecture update is the unperturbed one; the weight update is not.
  np.testing.assert_allclose(smooth.alphas["cell"], plain.alphas["cell"], rtol=1e-13, atol=0)
  np.testing.assert_allclose(m_smooth["val_loss"], m_plain["val_loss"], rtol=1e-13)
  w_diff = max(float(jnp.abs(a - b).max())
               for a, b in zip(jax.tree.leaves(smooth.weights), jax.tree.leaves(plain.weights)))
  assert w_diff > 1e-6
  assert abs(float(m_smooth["train_loss"]) - float(m_plain["train_loss"])) > 1e-6

  # ε from perturbation_options at epoch 2 of 5: 0.1 + (0.5 − 0.1)·2/5.
  eps = 0.1 + 0.4 * START_EPOCH / EPOCHS
  np.testing.assert_allclose(m_smooth["perturb/epsilon"], eps, rtol=1e-14)
  # The weight step's loss is the train CE at clip(softmax(α_new) + u), with u drawn from
  # fold_in(k_weight, 1) where k_arch, k_weight = split(fold_in(key, step)).
  k_weight = jax.random.split(jax.random.fold_in(state.key, state.step))[1]
  mixing = perturb.random_smoothing({"cell": jax.nn.softmax(smooth.alphas["cell"], axis=-1)},
                                    jax.random.fold_in(k_weight, 1), epsilon=eps)
  loss, _ = ce_and_grad(mixing, state.weights, state.batch_stats, tb)
  np.testing.assert_allclose(m_smooth["train_loss"], loss, rtol=1e-12)

  # Deterministic in the run key: same key, same result; another key, other weights, same alphas.
  again, _ = _run(steps["darts-1st-beta-rs"], state, tb, vb)
  chex.assert_trees_all_equal(again.weights, smooth.weights)
  other, _ = _run(steps["darts-1st-beta-rs"], state._replace(key=jax.random.key(99)), tb, vb)
  chex.assert_trees_all_equal(other.alphas, smooth.alphas)
  assert max(float(jnp.abs(a - b).max()) for a, b in
             zip(jax.tree.leaves(other.weights), jax.tree.leaves(smooth.weights))) > 1e-8


# --- stopping rules ------------------------------------------------------------------------------

_DARTS_REDUCE = [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2),
                 ("max_pool_3x3", 1), ("max_pool_3x3", 0), ("skip_connect", 2),
                 ("skip_connect", 2), ("max_pool_3x3", 1)]


def _darts(normal_skips):
  ops = ["skip_connect"] * normal_skips + ["sep_conv_3x3"] * (8 - normal_skips)
  sources = [0, 1, 0, 1, 1, 0, 0, 1]
  return Genotype(normal=list(zip(ops, sources)), normal_concat=[2, 3, 4, 5],
                  reduce=_DARTS_REDUCE, reduce_concat=[2, 3, 4, 5])


def test_darts_plus_stops_at_two_skips_in_the_normal_cell():
  rule = stopping.get("darts-plus-skips")
  assert rule is stopping.darts_plus_skips
  assert [rule(_darts(n), ()) for n in (0, 1, 2, 3)] == [False, False, True, True]
  # Skips in the reduction cell do not count (three there, one in the normal cell).
  assert stopping.count_ops(_darts(1).reduce, "skip_connect") == 3 and not rule(_darts(1), ())
  # NAS-Bench-201: the one cell's skip_connect edges.
  one = genotype_from_nb201_string(
      "|skip_connect~0|+|nor_conv_3x3~0|none~1|+|avg_pool_3x3~0|nor_conv_1x1~1|nor_conv_3x3~2|")
  two = genotype_from_nb201_string(
      "|skip_connect~0|+|nor_conv_3x3~0|none~1|+|avg_pool_3x3~0|nor_conv_1x1~1|skip_connect~2|")
  assert not rule(one, ()) and rule(two, ())
  with pytest.raises(JaxnasError, match="unknown stopping rule 'nope'"):
    stopping.get("nope")


def test_run_search_stops_after_the_epoch_where_the_rule_fires(tmp_path, monkeypatch, capsys):
  seen = []

  def fires_after_first_epoch(genotype, history):
    seen.append((genotype, history))
    return len(history) >= 1

  monkeypatch.setitem(stopping.STOPPING_RULES, "test-first-epoch", fires_after_first_epoch)
  recipe = methods.Recipe(name="test-stopper", description="darts-1st that stops after epoch 1",
                          stopping="test-first-epoch")
  cfg = SearchConfig(space="nb201", channels=2, cells=1, batch_size=8, epochs=2,
                     out=str(tmp_path / "run"))
  run = run_search(cfg, recipe=recipe)
  out = capsys.readouterr().out
  spe = json.loads((run / "config.json").read_text())["steps_per_epoch"]
  summary = json.loads((run / "summary.json").read_text())
  assert summary["stopped_at_epoch"] == 1 and summary["steps"] == spe
  lines = (run / "metrics.jsonl").read_text().splitlines()
  assert len(lines) == spe and json.loads(lines[-1])["epoch"] == 1
  stop_lines = [l for l in out.splitlines() if "stopping rule" in l]
  assert len(stop_lines) == 1
  assert "after epoch 1 of 2" in stop_lines[0] and "'test-first-epoch'" in stop_lines[0]
  # The rule saw the genotype derived after epoch 1, which is also the run's final genotype.
  assert len(seen) == 1
  genotype, history = seen[0]
  assert history[-1].epoch == 1 and history[-1].genotype == genotype
  assert genotype == Genotype.load(run)
  assert set(history[-1].mixing) == {"cell"} and "train_loss" in history[-1].metrics
  config = json.loads((run / "config.json").read_text())
  assert config["recipe"]["stopping"] == "test-first-epoch"
  assert config["config"]["method"] == "test-stopper"
