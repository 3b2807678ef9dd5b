"""The pieces a recipe plugs into the search: regularisers, perturbations, stopping rules.

Each piece is checked on hand-made inputs against an answer it did not compute, then inside the
real step. Step compilations are the expensive part on a small CPU, so there are three: the
β-DARTS step, the same step with SDARTS-RS' perturbation, and one run_search that stops early.
"""

import functools
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnas import derive, methods, perturb, regularize, relax, search, spaces, stopping
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


@pytest.mark.slow
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


# === FairDARTS, DARTS−, CDARTS, PR-DARTS, UNAS: relaxations, regularisers, derivations =========
#
# Every expected number below is worked out by hand (or in NumPy from the paper's formula), never
# by calling the function under test. Logits are chosen so that the sigmoids are round numbers:
# σ(0) = 1/2, σ(±ln 3) = 3/4, 1/4, σ(ln 9) = 9/10, σ(ln 4) = 4/5.

LN3, LN4, LN9 = np.log(3.0), np.log(4.0), np.log(9.0)
TINY_OPS = ("none", "skip_connect", "sep_conv_3x3")


def _logit(p):
  p = np.asarray(p, dtype=np.float64)
  return np.log(p) - np.log1p(-p)


def _one_line(excinfo):
  assert "\n" not in str(excinfo.value)


# --- relaxations ---------------------------------------------------------------------------------


def test_sigmoid_is_unnormalised_and_gives_excluded_ops_exactly_zero():
  a = {"normal": jnp.asarray([[5.0, LN3, 0.0], [-7.0, -LN3, LN9]]),
       "reduce": jnp.asarray([[LN9, LN4, -LN3]])}
  w = relax.sigmoid(a, op_names=TINY_OPS)
  np.testing.assert_allclose(w["normal"], [[0, 0.75, 0.5], [0, 0.25, 0.9]], rtol=1e-14, atol=0)
  np.testing.assert_allclose(w["reduce"], [[0, 0.8, 0.25]], rtol=1e-14, atol=0)
  assert float(w["normal"][0, 0]) == 0.0 and float(w["reduce"][0, 0]) == 0.0  # exactly
  # Rows are not normalised (FairDARTS): 0.75 + 0.5 = 1.25.
  np.testing.assert_allclose(w["normal"].sum(-1), [1.25, 1.15], rtol=1e-14)
  # The excluded logit gets no gradient; the others σ(1 − σ).
  g = jax.grad(lambda a: sum(jnp.sum(v) for v in relax.sigmoid(a, op_names=TINY_OPS).values()))(a)
  np.testing.assert_allclose(g["normal"], [[0, 3 / 16, 1 / 4], [0, 3 / 16, 9 / 100]], rtol=1e-13)
  # No op_names: every column is a sigmoid, 'none' included (σ(5) = 1/(1 + e^-5)).
  w_all = relax.sigmoid(a)
  np.testing.assert_allclose(w_all["normal"][0, 0], 1 / (1 + np.exp(-5.0)), rtol=1e-14)
  # Explicit exclusions; FairDARTS' seven operations (no 'none') exclude nothing by default.
  w2 = relax.sigmoid(a, op_names=TINY_OPS, exclude=("none", "skip_connect"))
  np.testing.assert_allclose(w2["normal"], [[0, 0, 0.5], [0, 0, 0.9]], rtol=1e-14, atol=0)
  fair_ops = derive.DARTS_OPS[1:]
  w7 = relax.sigmoid({"n": jnp.zeros((2, 7))}, op_names=fair_ops)
  np.testing.assert_array_equal(w7["n"], np.full((2, 7), 0.5))
  assert relax.get("sigmoid") is relax.sigmoid


def test_softmax_exclude_renormalises_over_the_rest():
  a = {"n": jnp.asarray([[9.0, 0.0, LN3], [-2.0, 1.0, 1.0]])}
  w = relax.softmax(a, op_names=TINY_OPS, exclude=("none",))
  np.testing.assert_allclose(w["n"], [[0, 0.25, 0.75], [0, 0.5, 0.5]], rtol=1e-14, atol=0)
  g = jax.grad(lambda a: relax.softmax(a, op_names=TINY_OPS, exclude="none")["n"][0, 2])(a)
  # d p_2 / d a = p_2 (e_2 − p) over the two kept columns: (0, −3/16, 3/16); 'none' gets 0.
  np.testing.assert_allclose(g["n"][0], [0, -3 / 16, 3 / 16], rtol=1e-13, atol=1e-300)
  # Without exclude it is DARTS' softmax over all three (op_names alone changes nothing).
  np.testing.assert_allclose(relax.softmax(a, op_names=TINY_OPS)["n"], relax.softmax(a)["n"],
                             rtol=0, atol=0)


@pytest.mark.parametrize("call, needle", [
    (lambda a: relax.sigmoid(a, op_names=TINY_OPS, exclude=("max_pool_3x3",)),
     r"sigmoid cannot exclude \['max_pool_3x3'\]: not among the space's operations"),
    (lambda a: relax.sigmoid(a, exclude=("none",)),
     r"sigmoid got exclude=\['none'\] but no op_names"),
    (lambda a: relax.softmax(a, op_names=TINY_OPS, exclude=TINY_OPS), r"excludes every operation"),
    (lambda a: relax.sigmoid(a, op_names=derive.DARTS_OPS), r"alphas have 3 operation columns but "
     r"op_names lists 8"),
    (lambda a: relax.darts_minus(a), r"darts_minus needs op_names"),
    (lambda a: relax.darts_minus(a, op_names=("none", "sep_conv_3x3", "avg_pool_3x3")),
     r"which op_names \['none', 'sep_conv_3x3', 'avg_pool_3x3'\] lacks"),
    (lambda a: relax.darts_minus(a, op_names=TINY_OPS, beta=-1.0), r"beta is -1.0; it must be"),
    (lambda a: relax.darts_minus(a, op_names=TINY_OPS, progress=1.5), r"progress=1.5"),
    (lambda a: relax.darts_minus(a, op_names=TINY_OPS, progress=0.5, decay="step"),
     r"unknown auxiliary-skip decay 'step'"),
    (lambda a: relax.pr_gates(a, jax.random.key(0), k=4), r"pr_gates k is 4"),
    (lambda a: relax.pr_gates(a, jax.random.key(0), k=0), r"pr_gates k is 0"),
    (lambda a: relax.pr_gates(a, jax.random.key(0), dropout=1.0), r"dropout is 1.0"),
    (lambda a: relax.pr_gates(a, jax.random.key(0), a=0.1), r"stretch limits a < 0 and b > 1"),
    (lambda a: relax.get("gumbel-max"), r"unknown relaxation 'gumbel-max'"),
])
def test_bad_relaxation_input_is_one_line(call, needle):
  with pytest.raises(JaxnasError, match=needle) as excinfo:
    call({"n": jnp.zeros((2, 3))})
  _one_line(excinfo)


def test_darts_minus_beta_schedule_matches_the_reference_decay_scheduler():
  # DecayScheduler(linear): β = β0 (T_max − epoch) / (T_max − T_start), T_max 50, T_start 0.
  betas = [relax.aux_skip_beta(e / 50) for e in range(50)]
  np.testing.assert_allclose(betas, [(50 - e) / 50 for e in range(50)], rtol=1e-14)
  assert betas[0] == 1.0 and abs(betas[-1] - 0.02) < 1e-15  # never 0 within the search
  assert relax.aux_skip_beta(0.5, beta=2.0) == 1.0
  np.testing.assert_allclose(relax.aux_skip_beta(0.5, decay="cosine"), 0.5, rtol=1e-14)
  np.testing.assert_allclose(relax.aux_skip_beta(0.5, decay="slow_cosine"), np.sqrt(0.5),
                             rtol=1e-14)
  assert relax.aux_skip_beta(None) == 0.0 and relax.aux_skip_beta(None, beta_eval=0.3) == 0.3


def test_darts_minus_adds_beta_to_the_skip_column_only():
  rng = np.random.default_rng(7)
  a = {"normal": jnp.asarray(rng.normal(size=(14, 8))),
       "reduce": jnp.asarray(rng.normal(size=(14, 8)))}
  ops = derive.DARTS_OPS
  for progress, beta in [(0.0, 1.0), (0.25, 0.75), (49 / 50, 0.02)]:
    w = relax.darts_minus(a, op_names=ops, progress=progress)
    for k in a:
      want = _np_softmax(np.asarray(a[k]))
      want[:, 3] += beta  # skip_connect is column 3 of DARTS_OPS
      np.testing.assert_allclose(w[k], want, rtol=1e-13, atol=1e-15)
      np.testing.assert_allclose(w[k].sum(-1), 1 + beta, rtol=1e-13)
  # Outside a search the weights are softmax(α) exactly (derivation sees what the reference sees).
  chex.assert_trees_all_equal(relax.darts_minus(a, op_names=ops), relax.softmax(a))
  # progress may be traced (it changes per epoch inside one compiled step).
  jitted = jax.jit(lambda a, p: relax.darts_minus(a, op_names=ops, progress=p))
  chex.assert_trees_all_close(jitted(a, jnp.asarray(0.25)), relax.darts_minus(a, op_names=ops,
                                                                              progress=0.25),
                              rtol=1e-14)
  # NAS-Bench-201: skip_connect is column 1.
  w201 = relax.darts_minus({"cell": jnp.zeros((6, 5))}, op_names=derive.NB201_OPS, progress=0.5)
  np.testing.assert_allclose(w201["cell"][0], [0.2, 0.7, 0.2, 0.2, 0.2], rtol=1e-14)
  assert relax.get("darts-minus") is relax.darts_minus


@pytest.fixture(scope="module")
def nb201_group():
  """An NB201 edge group (3 edges, 2 channels, float64), one jitted apply over stacked weights."""
  from jaxnas.spaces.nb201 import NB201EdgeGroup
  group = NB201EdgeGroup(num_edges=3, channels=2, dtype=jnp.float64)
  rng = np.random.default_rng(11)
  x = jnp.asarray(rng.normal(size=(2, 5, 5, 2)))
  shapes = jax.eval_shape(lambda: group.init(jax.random.key(0), x, jnp.ones((3, 5)), train=False))
  params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape)), shapes["params"])
  stats = jax.tree.map(lambda s: jnp.asarray(rng.uniform(0.5, 1.5, size=s.shape)),
                       shapes["batch_stats"])

  @jax.jit
  def apply_all(stacked):
    one = lambda w: group.apply({"params": params, "batch_stats": stats}, x, w, train=False)
    return jax.vmap(one)(stacked)

  return np.asarray(x), apply_all


def test_darts_minus_edge_output_is_softmax_mix_plus_beta_times_x(nb201_group):
  """On a real NB201 edge group: ō(x) = Σ softmax(α)_k o_k(x) + β_aux·x on every edge."""
  x, apply_all = nb201_group
  alphas = {"cell": jnp.asarray(np.random.default_rng(12).normal(size=(3, 5)))}
  plain = relax.softmax(alphas)["cell"]
  minus = relax.darts_minus(alphas, op_names=derive.NB201_OPS, progress=0.3)["cell"]
  out_plain, out_minus = np.asarray(apply_all(jnp.stack([plain, minus])))
  beta = 0.7  # 1 − 0.3
  for edge in range(3):
    np.testing.assert_allclose(out_minus[..., edge, :] - out_plain[..., edge, :], beta * x,
                               rtol=0, atol=1e-12)
  assert np.abs(out_plain).max() > 0.1  # the edges do compute something besides the skip


def test_pr_tau_schedule():
  assert relax.pr_tau(0.0) == 1.0 and relax.pr_tau(None) == 0.1
  np.testing.assert_allclose(relax.pr_tau(0.5), 0.55, rtol=1e-15)
  np.testing.assert_allclose(relax.pr_tau(0.2, tau_start=2.0, tau_end=0.0), 1.6, rtol=1e-15)


def test_pr_gates_pick_k_ops_per_edge_with_straight_through_gradient():
  rng = np.random.default_rng(13)
  a = {"normal": jnp.asarray(rng.normal(size=(14, 8))),
       "reduce": jnp.asarray(rng.normal(size=(14, 8)))}
  key = jax.random.key(21)
  w = relax.pr_gates(a, key, progress=0.5)
  for k in a:
    v = np.asarray(w[k])
    assert set(np.unique(v)) <= {0.0, 1.0}  # the values are the hard mask, exactly
    np.testing.assert_array_equal(v.sum(-1), np.full(14, 2.0))
  chex.assert_trees_all_equal(w, relax.pr_gates(a, key, progress=0.5))  # deterministic in the key
  other = relax.pr_gates(a, jax.random.key(22), progress=0.5)
  assert any(not np.array_equal(w[k], other[k]) for k in a)
  # Two logits far above the others, no dropout: both gates are fully open (g = 1) and the rest
  # shut, so k = 2 takes exactly those two, and k = 1 one of them, the tie broken by a random
  # order of the operations drawn once per cell (as the reference's one randperm per cell).
  big = jnp.full((6, 5), -30.0).at[:, 3].set(30.0).at[:, 1].set(20.0)
  picked = set()
  for s in range(20):
    two = relax.pr_gates({"c": big}, jax.random.key(s), k=2, dropout=0.0)["c"]
    np.testing.assert_array_equal(two, np.tile(np.eye(5)[3] + np.eye(5)[1], (6, 1)))
    one = np.asarray(relax.pr_gates({"c": big}, jax.random.key(s), k=1, dropout=0.0)["c"])
    assert np.all(one == one[0]) and one[0].sum() == 1 and one[0][[1, 3]].sum() == 1
    picked.add(int(one[0].argmax()))
  assert picked == {1, 3}
  # Gradient flows only through the chosen operations.
  g = jax.grad(lambda a: sum(jnp.sum(v * 3.0) for v in relax.pr_gates(a, key, progress=0.5)
                             .values()))(a)
  for k in a:
    assert np.all(np.asarray(g[k])[np.asarray(w[k]) == 0] == 0)
  # key=None: the reference derives from softmax(α).
  chex.assert_trees_all_equal(relax.pr_gates(a, None), relax.softmax(a))


def test_pr_gate_distribution_matches_the_hard_concrete_by_hand():
  """With k = K every gate is 'chosen', the value is 1 and the gradient is ∂g/∂α, which is
  (b − a) s (1 − s) / τ where 0 < g < 1 and 0 where the gate is clamped. By hand, for
  s = σ((α + L)/τ), L logistic: P(g > 0) = σ(α − τ log(−a/b)) and
  P(g = 1) = σ(α − τ log((1 − a)/(b − 1))), so P(0 < g < 1) is their difference."""
  tau, lo, hi = 0.5, -0.1, 1.1
  alpha_values = np.array([-1.0, 0.0, 0.5, 2.0])
  n = 5000
  a = {"c": jnp.asarray(np.tile(alpha_values, (n, 1)))}
  g = jax.grad(lambda a: jnp.sum(relax.pr_gates(a, jax.random.key(3), progress=0.5, k=4,
                                                tau_start=tau, tau_end=tau, dropout=0.0)["c"]))(a)
  g = np.asarray(g["c"])
  sig = lambda z: 1 / (1 + np.exp(-z))
  p_open = sig(alpha_values - tau * np.log(-lo / hi))
  p_full = sig(alpha_values - tau * np.log((1 - lo) / (hi - 1)))
  frac = (g > 0).mean(axis=0)
  np.testing.assert_allclose(frac, p_open - p_full, atol=4 * np.sqrt(0.25 / n))
  assert g.max() <= (hi - lo) / (4 * tau) + 1e-12 and g.min() >= 0
  # And the regulariser's gate-open probability is that same P(g > 0).
  p_reg = relax.gate_open_probability({"c": jnp.asarray(alpha_values)}, tau)["c"]
  np.testing.assert_allclose(p_reg, p_open, rtol=1e-14)


# --- regularisers -------------------------------------------------------------------------------


def test_zero_one_loss_and_gradient_by_hand():
  # σ: normal [[·, 3/4, 1/2], [·, 1/4, 9/10]], reduce [[·, 4/5, 1/2]]; 'none' (·) at σ = 9/10.
  a = {"normal": jnp.asarray([[LN9, LN3, 0.0], [LN9, -LN3, LN9]]),
       "reduce": jnp.asarray([[LN9, LN4, 0.0]])}
  # (σ − 1/2)²: 1/16, 0, 1/16, 4/25, 9/100, 0 → sum 3/8 over N = 6 entries.
  np.testing.assert_allclose(regularize.zero_one(a, op_names=TINY_OPS), -(3 / 8) / 6, rtol=1e-14)
  # ∂/∂α = −(2/N)(σ − 1/2) σ (1 − σ), 0 for the excluded 'none'.
  g = jax.grad(lambda a: regularize.zero_one(a, op_names=TINY_OPS))(a)
  np.testing.assert_allclose(g["normal"], [[0, -1 / 64, 0], [0, 1 / 64, -0.012]], rtol=1e-12,
                             atol=1e-18)
  np.testing.assert_allclose(g["reduce"], [[0, -0.016, 0]], rtol=1e-12, atol=1e-18)
  # Without op_names every column counts: three more (4/10)² terms, N = 9.
  np.testing.assert_allclose(regularize.zero_one(a), -(3 / 8 + 3 * 0.16) / 9, rtol=1e-14)
  assert regularize.get("zero-one") is regularize.zero_one


def test_cdarts_l1_touches_only_pools_and_skip_on_raw_logits():
  ops = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3")
  a = {"normal": jnp.asarray([[7.0, -1.5, 2.0, 0.0, -4.0], [-7.0, 0.25, -0.5, 3.0, 9.0]]),
       "reduce": jnp.asarray([[1.0, -2.0, 1.0, -1.0, 1.0]])}
  # |−1.5| + 2 + 0 + 0.25 + 0.5 + 3 + 2 + 1 + 1 (none and sep_conv not counted).
  np.testing.assert_allclose(regularize.cdarts_l1(a, op_names=ops), 11.25, rtol=1e-15)
  g = jax.grad(lambda a: regularize.cdarts_l1(a, op_names=ops))(a)
  np.testing.assert_array_equal(g["normal"], [[0, -1, 1, 0, 0], [0, 1, -1, 1, 0]])  # 0 at 0
  np.testing.assert_array_equal(g["reduce"], [[0, -1, 1, -1, 0]])
  # NAS-Bench-201: skip_connect (column 1) and avg_pool_3x3 (column 4).
  b = {"cell": jnp.asarray(np.arange(30.0).reshape(6, 5) - 12)}
  want = np.abs(np.asarray(b["cell"])[:, [1, 4]]).sum()
  np.testing.assert_allclose(regularize.cdarts_l1(b, op_names=derive.NB201_OPS), want, rtol=1e-15)
  gb = np.asarray(jax.grad(lambda b: regularize.cdarts_l1(b, op_names=derive.NB201_OPS))(b)["cell"])
  assert np.all(gb[:, [0, 2, 3]] == 0) and np.all(np.abs(gb[:, [1, 4]]) == 1)


def _nb201_alphas_for(p, tau=0.1, lo=-0.1, hi=1.1):
  """Logits whose gate-open probability σ(α − τ log(−a/b)) is ``p``."""
  return _logit(p) + tau * np.log(-lo / hi)


# NAS-Bench-201 columns: none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3.
# Chain edges 1<-0, 2<-1, 3<-2 are rows 0, 2, 5.
PR_P = np.array([
    [0.10, 0.50, 0.50, 0.50, 0.25],  # 1<-0 (chain): convs mean 1/2
    [0.25, 0.25, 0.90, 0.10, 0.50],  # 2<-0
    [0.50, 0.75, 0.75, 0.25, 0.75],  # 2<-1 (chain): convs mean 1/2
    [0.90, 0.50, 0.10, 0.10, 0.10],  # 3<-0
    [0.75, 0.50, 0.25, 0.50, 0.90],  # 3<-1
    [0.10, 0.50, 0.90, 0.50, 0.50],  # 3<-2 (chain): convs mean 7/10
])


def test_pr_terms_by_hand_on_a_nas_bench_201_cell():
  a = {"cell": jnp.asarray(_nb201_alphas_for(PR_P))}
  ops = derive.NB201_OPS
  # Skip group: mean of column 1 = 3/6 = 1/2, less the margin 0.2.
  np.testing.assert_allclose(regularize.pr_skip(a, op_names=ops), 0.3, rtol=1e-13)
  # Non-skip: 'rest' = none, conv1x1, conv3x3 (18 entries); pools = avg_pool (6 entries).
  rest = PR_P[:, [0, 2, 3]].mean()
  pool = PR_P[:, 4].mean()
  np.testing.assert_allclose(regularize.pr_nonskip(a, op_names=ops), (rest - 0.2) + (pool - 0.2),
                             rtol=1e-13)
  # Path: −(1/2 · 1/2 · 7/10).
  np.testing.assert_allclose(regularize.pr_path(a, op_names=ops), -0.175, rtol=1e-13)
  # Gradients: dσ/dα = P(1 − P).
  dp = PR_P * (1 - PR_P)
  g_skip = np.asarray(jax.grad(lambda a: regularize.pr_skip(a, op_names=ops))(a)["cell"])
  want = np.zeros((6, 5))
  want[:, 1] = dp[:, 1] / 6
  np.testing.assert_allclose(g_skip, want, rtol=1e-12, atol=1e-18)
  g_path = np.asarray(jax.grad(lambda a: regularize.pr_path(a, op_names=ops))(a)["cell"])
  means = {0: 0.5, 2: 0.5, 5: 0.7}
  want = np.zeros((6, 5))
  for e, m in means.items():
    others = np.prod([v for f, v in means.items() if f != e])
    want[e, [2, 3]] = -others * dp[e, [2, 3]] / 2
  np.testing.assert_allclose(g_path, want, rtol=1e-12, atol=1e-18)
  # Below the margin the hinge is flat: value and gradient 0.
  low = {"cell": jnp.asarray(_nb201_alphas_for(np.full((6, 5), 0.15)))}
  assert float(regularize.pr_skip(low, op_names=ops)) == 0.0
  assert float(regularize.pr_nonskip(low, op_names=ops)) == 0.0
  assert np.all(np.asarray(jax.grad(lambda a: regularize.pr_skip(a, op_names=ops))(low)["cell"])
                == 0)


def test_pr_terms_average_the_cells_and_follow_tau():
  ops = derive.DARTS_OPS
  assert regularize.chain_edges(14) == (1, 4, 8, 13) and regularize.chain_edges(6) == (0, 2, 5)
  pn, pr = np.full((14, 8), 0.5), np.full((14, 8), 0.5)
  pr[:, 3] = 0.25  # reduce skip column
  pn[[1, 4, 8, 13], 4:] = 0.9  # normal chain: the four convolutions (columns 4..7) at 0.9
  a = {"normal": jnp.asarray(_nb201_alphas_for(pn)), "reduce": jnp.asarray(_nb201_alphas_for(pr))}
  np.testing.assert_allclose(regularize.pr_skip(a, op_names=ops), (0.5 + 0.25) / 2 - 0.2,
                             rtol=1e-13)
  np.testing.assert_allclose(regularize.pr_path(a, op_names=ops), -(0.9 ** 4 + 0.5 ** 4) / 2,
                             rtol=1e-13)
  # progress = 0: τ = 1, so P = σ(α + ln 11) and α = −ln 11 gives 1/2.
  z = {"c": jnp.full((6, 5), -np.log(11.0))}
  np.testing.assert_allclose(regularize.pr_skip(z, op_names=derive.NB201_OPS, progress=0.0),
                             0.3, rtol=1e-13)
  for name in ("pr-skip", "pr-nonskip", "pr-path"):
    assert not regularize.is_loss_regularizer(name)


def test_generalization_gap_gradient_is_grad_val_minus_grad_train_on_a_quadratic():
  # L_train = ½ αᵀ T α + wᵀα + u(key), L_val = ½ αᵀ V α + 2 wᵀα + u(key), u a uniform draw.
  rng = np.random.default_rng(17)
  m1, m2 = rng.normal(size=(2, 3, 3))
  T, V = m1 @ m1.T, m2 @ m2.T
  w = jnp.asarray(rng.normal(size=3))
  alphas = jnp.asarray(rng.normal(size=3))

  def loss(w, a, batch, key):
    u = jax.random.uniform(key, (), jnp.float64) if key is not None else 0.0
    return 0.5 * a @ batch["M"] @ a + batch["c"] * (w @ a) + u, {}

  tb, vb = {"M": jnp.asarray(T), "c": 1.0}, {"M": jnp.asarray(V), "c": 2.0}
  key = jax.random.key(0)
  gap = regularize.get("unas-gap")
  assert gap is regularize.generalization_gap and regularize.is_loss_regularizer("unas-gap")
  a0, w0 = np.asarray(alphas), np.asarray(w)
  want = 0.5 * a0 @ (V - T) @ a0 + w0 @ a0  # u(key) cancels only if both losses got the same key
  np.testing.assert_allclose(gap(loss, loss, w, alphas, tb, vb, key), want, rtol=1e-13)
  g = jax.grad(lambda a: gap(loss, loss, w, a, tb, vb, key))(alphas)
  np.testing.assert_allclose(g, (V - T) @ a0 + w0, rtol=1e-12)
  # The absolute gap (the UNAS code's |L_val − L_train|) has gradient sign(gap)·(that).
  abs_gap = regularize.get("unas-abs-gap")
  np.testing.assert_allclose(abs_gap(loss, loss, w, alphas, tb, vb, key), abs(want), rtol=1e-13)
  g_abs = jax.grad(lambda a: abs_gap(loss, loss, w, a, tb, vb, key))(alphas)
  np.testing.assert_allclose(g_abs, np.sign(want) * ((V - T) @ a0 + w0), rtol=1e-12)


def test_regularizer_registries():
  # Issue 4's terms, then issue 5's cost and Dirichlet terms and issue 8's per-cell zero-one.
  assert set(regularize.REGULARIZERS) == {"beta-decay", "zero-one", "cdarts-l1", "pr-skip",
                                          "pr-nonskip", "pr-path", "expected-flops",
                                          "expected-latency", "dirichlet-kl", "zero-one-cells"}
  assert {"unas-gap", "unas-abs-gap"} <= set(regularize.LOSS_REGULARIZERS)
  assert not set(regularize.REGULARIZERS) & set(regularize.LOSS_REGULARIZERS)
  assert regularize.get("cdarts-l1") is regularize.cdarts_l1
  assert not regularize.is_loss_regularizer("beta-decay")
  for call in (lambda: regularize.get("l2"), lambda: regularize.is_loss_regularizer("l2")):
    with pytest.raises(JaxnasError, match=r"^unknown regularizer 'l2'; choose one of: beta-decay, "
                       r"cdarts-l1, ddarts-ablation, .*, unas-abs-gap, unas-gap, "
                       r"zero-one, zero-one-cells$"):
      call()


@pytest.mark.parametrize("call, needle", [
    (lambda: regularize.cdarts_l1({"n": jnp.zeros((2, 3))}), r"cdarts_l1 needs op_names"),
    (lambda: regularize.cdarts_l1({"n": jnp.zeros((2, 3))}, op_names=("none", "a", "b")),
     r"cdarts_l1 penalises .* none of which is in op_names"),
    (lambda: regularize.pr_skip({"n": jnp.zeros((6, 5))}), r"pr_skip needs op_names"),
    (lambda: regularize.pr_path({"n": jnp.zeros((5, 5))}, op_names=derive.NB201_OPS),
     r"pr_path knows the DARTS \(14 edges\) and NAS-Bench-201 \(6 edges\) cells; an alphas leaf "
     r"has 5 rows"),
    (lambda: regularize.pr_skip({"n": jnp.zeros((6, 4))}, op_names=derive.NB201_OPS),
     r"alphas have 4 operation columns but op_names lists 5"),
    (lambda: regularize.zero_one({"n": jnp.zeros((6, 4))}, op_names=derive.NB201_OPS),
     r"alphas have 4 operation columns but op_names lists 5"),
    (lambda: regularize.zero_one({}), r"zero_one needs at least one alphas array"),
    (lambda: regularize.zero_one({"n": jnp.zeros((2, 3))}, op_names=TINY_OPS, exclude="pool"),
     r"zero_one cannot exclude \['pool'\]"),
])
def test_bad_regularizer_input_is_one_line(call, needle):
  with pytest.raises(JaxnasError, match=needle) as excinfo:
    call()
  _one_line(excinfo)


# --- derivation rules ---------------------------------------------------------------------------

NONE_, MAX, AVG, SKIP_, SEP3, SEP5, DIL3, DIL5 = range(8)


def _fair_normal():
  """σ weights worked through by hand in the two FairDARTS tests. 'none' is high everywhere and
  must never count."""
  w = np.full((14, 8), 0.1)
  w[:, NONE_] = 0.99
  # node 0 (edges 0, 1): edge 1 (skip .95) then edge 0 (sep3 .90; dil5 .88 second).
  w[0, SEP3], w[0, DIL5] = 0.90, 0.88
  w[1, SKIP_] = 0.95
  # node 1 (edges 2-4): edge 3 dil3 .86 kept; edge 2 max .84 is second but below .85.
  w[2, MAX] = 0.84
  w[3, DIL3] = 0.86
  w[4, SEP5] = 0.50
  # node 2 (edges 5-8): nothing reaches .85.
  w[5:9, SEP3] = 0.80
  # node 3 (edges 9-13): edge 13 sep3 = sep5 = .97 (tie), edge 12 avg .95, max .90, sep5 .86;
  # edge 10 avg exactly .85.
  w[13, SEP3], w[13, SEP5] = 0.97, 0.97
  w[12, AVG], w[12, MAX], w[12, SEP5] = 0.95, 0.90, 0.86
  w[10, AVG] = 0.85
  return w


def test_fairdarts_sparse_by_hand_nodes_with_two_one_and_no_inputs():
  reduce = np.full((14, 8), 0.2)
  reduce[:, SEP5] = 0.9  # every edge ties: each node keeps states 0 and 1
  g = derive.derive("fairdarts-sparse", {"normal": _fair_normal(), "reduce": reduce})
  assert g.normal == (("skip_connect", 2, 1), ("sep_conv_3x3", 2, 0),  # node 0: two inputs
                      ("dil_conv_3x3", 3, 1),                          # node 1: one input
                      # node 2 (state 4): no input at all
                      ("sep_conv_3x3", 5, 4), ("avg_pool_3x3", 5, 3))  # node 3: tie → sep3
  assert g.reduce == tuple(("sep_conv_5x5", n, s) for n in (2, 3, 4, 5) for s in (0, 1))
  assert g.normal_concat == g.reduce_concat == (2, 3, 4, 5)
  assert str(g).startswith("Genotype(normal=[('skip_connect', 2, 1), ('sep_conv_3x3', 2, 0), "
                           "('dil_conv_3x3', 3, 1), ('sep_conv_3x3', 5, 4)")
  assert Genotype.from_json(g.to_json()) == g
  assert json.loads(g.to_json())["normal"][0] == ["skip_connect", 2, 1]
  # A higher threshold, bound with functools.partial as a rule option: only .95 and up survive.
  strict = functools.partial(derive.fairdarts_sparse, threshold=0.95)
  g95 = strict({"normal": _fair_normal(), "reduce": np.full((14, 8), 0.96)})
  assert g95.normal == (("skip_connect", 2, 1), ("sep_conv_3x3", 5, 4), ("avg_pool_3x3", 5, 3))
  # FairDARTS' own seven operations (no 'none' column).
  g7 = derive.fairdarts_sparse({"normal": _fair_normal()[:, 1:], "reduce": reduce[:, 1:]},
                               derive.DARTS_OPS[1:])
  assert g7 == g


def test_fairdarts_edge_by_hand():
  reduce = np.full((14, 8), 0.2)
  reduce[:, SEP5] = 0.9
  g = derive.derive("fairdarts-edge", {"normal": _fair_normal(), "reduce": reduce})
  assert g.normal == (("sep_conv_3x3", 2, 0), ("dil_conv_5x5", 2, 0), ("skip_connect", 2, 1),
                      ("dil_conv_3x3", 3, 1),
                      ("avg_pool_3x3", 5, 1), ("avg_pool_3x3", 5, 3), ("max_pool_3x3", 5, 3),
                      ("sep_conv_3x3", 5, 4), ("sep_conv_5x5", 5, 4))
  assert g.reduce == tuple(("sep_conv_5x5", n, s) for n in (2, 3, 4, 5) for s in range(n))
  assert Genotype.from_json(g.to_json()) == g


@pytest.mark.parametrize("rule", ["fairdarts-sparse", "fairdarts-edge"])
def test_fairdarts_bad_input(rule):
  fn = derive.RULES[rule]
  w = {"normal": _fair_normal(), "reduce": np.full((14, 8), 0.5)}
  with pytest.raises(JaxnasError, match=rf"^{rule} kept no operation in the reduce cell: no weight "
                     r"reached the threshold 0.85 \(the largest is 0.5\); lower the threshold$"):
    fn(w)
  for bad in (-0.1, 1.5, True, "0.85", float("nan")):
    with pytest.raises(JaxnasError, match=rf"^{rule} threshold is .*; it must be a number from 0 "
                       r"to 1") as excinfo:
      fn(w, threshold=bad)
    _one_line(excinfo)


def _skip_heavy_normal():
  """Top-2 gives four skips (edges 0, 1, 2, 5); worked through in the test below."""
  w = np.full((14, 8), 0.01)
  w[:, NONE_] = 0.95  # never counts
  w[0, SKIP_], w[0, SEP5] = 0.60, 0.20
  w[1, SKIP_], w[1, SEP3] = 0.50, 0.30
  w[2, SKIP_], w[2, MAX] = 0.70, 0.15
  w[3, SEP3], w[4, DIL3] = 0.40, 0.35
  w[5, SKIP_], w[5, AVG] = 0.45, 0.42
  w[6, SEP3], w[7, DIL3], w[8, SEP3] = 0.50, 0.44, 0.10
  w[9, SEP5], w[13, DIL5] = 0.80, 0.60
  return w


def test_darts_plus_skip_limit_by_hand():
  normal = _skip_heavy_normal()
  reduce = np.zeros((14, 8))
  reduce[:, SKIP_] = 1.0  # skips in the reduction cell are not limited
  w = {"normal": normal, "reduce": reduce}
  top2 = derive.darts_top2(w)
  assert [op for op, _ in top2.normal].count("skip_connect") == 4
  g = derive.derive("darts-plus-skip-limit", w)
  # Round 1 strikes edge 5's skip (.45, the weakest): edge 5 falls to avg .42, below edge 7's .44,
  # so node 2 takes edge 7. Round 2 strikes edge 1's skip (.50): edge 1 takes sep3 .30. Two left.
  assert g.normal == (("skip_connect", 0), ("sep_conv_3x3", 1),
                      ("skip_connect", 0), ("sep_conv_3x3", 1),
                      ("sep_conv_3x3", 1), ("dil_conv_3x3", 2),
                      ("sep_conv_5x5", 0), ("dil_conv_5x5", 4))
  assert g.reduce == top2.reduce and all(op == "skip_connect" for op, _ in g.reduce)
  # max_skips = 0: edge 0's skip (.60) goes (node 0: sep3 .30 from 1, then sep5 .20 from 0), then
  # edge 2's (.70): node 1 takes edges 3 and 4.
  g0 = derive.darts_plus_skip_limit(w, max_skips=0)
  assert g0.normal == (("sep_conv_3x3", 1), ("sep_conv_5x5", 0),
                       ("sep_conv_3x3", 1), ("dil_conv_3x3", 2),
                       ("sep_conv_3x3", 1), ("dil_conv_3x3", 2),
                       ("sep_conv_5x5", 0), ("dil_conv_5x5", 4))
  assert derive.darts_plus_skip_limit(w, max_skips=4) == top2
  for bad in (-1, 1.5, True):
    with pytest.raises(JaxnasError, match=r"^darts-plus-skip-limit max_skips is .*; it must be a "
                       r"whole number ≥ 0$"):
      derive.darts_plus_skip_limit(w, max_skips=bad)
  only = {"normal": np.ones((14, 2)), "reduce": np.ones((14, 2))}
  with pytest.raises(JaxnasError, match=r"needs an operation to put in place of a skip"):
    derive.darts_plus_skip_limit(only, ("none", "skip_connect"))


def test_pr_darts_top2_lets_two_ops_of_one_edge_win():
  w = np.full((14, 8), 0.01)
  w[:, NONE_] = 0.9  # never counts
  w[0, SEP3], w[0, DIL3], w[1, SKIP_] = 0.40, 0.35, 0.30  # node 0: both from edge 0
  w[2, MAX], w[3, AVG], w[4, SEP5] = 0.20, 0.50, 0.20  # node 1: avg from 1, then the tie: max
  w[5:9, SEP3] = 0.1  # node 2: four-way tie, so states 0 and 1
  w[13, DIL5], w[13, SEP5], w[9, SKIP_] = 0.6, 0.3, 0.5  # node 3: dil5 from 4, then skip from 0
  g = derive.derive("pr-darts-top2", {"normal": w, "reduce": w})
  assert g.normal == (("sep_conv_3x3", 0), ("dil_conv_3x3", 0),
                      ("avg_pool_3x3", 1), ("max_pool_3x3", 0),
                      ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
                      ("dil_conv_5x5", 4), ("skip_connect", 0))
  # DARTS' rule on the same weights takes one operation per edge.
  assert derive.darts_top2({"normal": w, "reduce": w}).normal[:2] == (("sep_conv_3x3", 0),
                                                                      ("skip_connect", 1))
