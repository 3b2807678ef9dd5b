"""DrNAS: Dirichlet mixing weights, their reparameterised gradient, pruning and the KL term."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnas import cli, derive, relax, regularize, sampling
from _variables import filled_variables

ALPHA = np.array([0.4, -0.7, 1.2, 0.0, -1.5])  # both sides of ELU's kink
N = 20_000


def _beta(a):
  return np.where(a > 0, a, np.expm1(np.minimum(a, 0))) + 1.0


@pytest.fixture(scope="module")
def draws():
  """N Dirichlet samples of one edge and the per-key gradients of c·θ in α (fixed keys)."""
  keys = jax.random.split(jax.random.key(0), N)
  c = jnp.asarray([1.0, -2.0, 0.5, 3.0, -1.0])
  sample = lambda a, k: relax.get("dirichlet")({"e": a[None]}, k, exclude=())["e"][0]
  theta = jax.jit(jax.vmap(sample, in_axes=(None, 0)))(jnp.asarray(ALPHA), keys)
  grads = jax.jit(jax.vmap(jax.grad(lambda a, k: jnp.dot(c, sample(a, k))), in_axes=(None, 0)))(
      jnp.asarray(ALPHA), keys)
  return np.asarray(theta), np.asarray(grads), np.asarray(c)


def test_samples_lie_on_the_simplex(draws):
  theta, _, _ = draws
  assert np.all(theta > 0)
  np.testing.assert_allclose(theta.sum(-1), 1.0, atol=1e-12)


def test_sample_mean_matches_the_dirichlet_mean(draws):
  # E θ_k = β_k/β0, Var θ_k = m_k(1 − m_k)/(β0 + 1); a 5-SE band over N draws (fixed key) fails by
  # chance with probability < 6e-7 per coordinate.
  theta, _, _ = draws
  beta = _beta(ALPHA)
  m = beta / beta.sum()
  se = np.sqrt(m * (1 - m) / (beta.sum() + 1) / N)
  assert np.all(np.abs(theta.mean(0) - m) <= 5 * se), (theta.mean(0), m)


def test_reparameterised_gradient_matches_finite_differences_of_the_closed_form(draws):
  # f(θ) = c·θ is linear, so E f = Σ c_k β_k / Σ β; its gradient in α by central differences in
  # float64 (NumPy) against the mean of the per-key pathwise gradients (implicit reparameterisation
  # through jax.random.gamma), within 5 standard errors of that mean.
  _, grads, c = draws
  expect = lambda a: float(c @ (_beta(a) / _beta(a).sum()))
  h = 1e-6
  fd = np.array([(expect(ALPHA + h * e) - expect(ALPHA - h * e)) / (2 * h) for e in np.eye(5)])
  se = grads.std(0) / np.sqrt(N)
  assert np.all(np.abs(grads.mean(0) - fd) <= 5 * se + 1e-9), (grads.mean(0), fd, se)
  assert np.all(np.abs(fd) > 10 * se)  # the test can tell a wrong gradient from this one


def test_none_is_excluded_and_the_rest_renormalised():
  a = {"normal": jnp.asarray(np.random.default_rng(0).normal(size=(14, 8)))}
  w = np.asarray(relax.get("dirichlet")(a, jax.random.key(1), op_names=derive.DARTS_OPS)["normal"])
  assert np.all(w[:, 0] == 0) and np.all(w[:, 1:] > 0)
  np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-12)
  # Without a key: softmax over the kept operations (the reference's genotype weights).
  w0 = np.asarray(relax.get("dirichlet")(a, None, op_names=derive.DARTS_OPS)["normal"])
  e = np.exp(np.asarray(a["normal"])[:, 1:])
  np.testing.assert_allclose(w0[:, 1:], e / e.sum(-1, keepdims=True), rtol=1e-12)
  assert np.all(w0[:, 0] == 0)


def test_progressive_pruning_keeps_the_top_four_from_half_the_search():
  alphas = np.random.default_rng(2).normal(size=(14, 8))
  a = {"normal": jnp.asarray(alphas)}
  fn = relax.get("dirichlet", prune_to=4)
  early = np.asarray(fn(a, jax.random.key(0), op_names=derive.DARTS_OPS, progress=0.4)["normal"])
  late = np.asarray(fn(a, jax.random.key(0), op_names=derive.DARTS_OPS, progress=0.5)["normal"])
  assert np.all((early > 0).sum(-1) == 7)
  assert np.all((late > 0).sum(-1) == 4)
  top4 = np.argsort(-alphas[:, 1:], axis=-1)[:, :4] + 1  # by hand: the 4 largest non-none alphas
  for row in range(14):
    assert set(np.flatnonzero(late[row])) == set(top4[row])


def test_kl_to_the_uniform_dirichlet_matches_numerical_integration():
  # K = 2 kept ops: Dir(β1, β2) is Beta(β1, β2) on [0, 1] and Dir(1, 1) has density 1, so
  # KL = ∫ p log p, integrated on a fine grid (β > 1: no endpoint singularity).
  a = np.array([[0.0, 1.5, 0.7]])  # column 0 ('none') excluded; β = (2.5, 1.7)
  b1, b2 = 2.5, 1.7
  x = np.linspace(0, 1, 400_001)[1:-1]
  logp = ((b1 - 1) * np.log(x) + (b2 - 1) * np.log1p(-x)
          - (math.lgamma(b1) + math.lgamma(b2) - math.lgamma(b1 + b2)))
  kl = np.sum(np.exp(logp) * logp) * (x[1] - x[0])
  got = regularize.get("dirichlet-kl")({"e": jnp.asarray(a)}, op_names=("none", "p", "q"))
  np.testing.assert_allclose(float(got), kl, rtol=1e-6)
  zero = regularize.get("dirichlet-kl")({"e": jnp.zeros((3, 3))}, op_names=("none", "p", "q"))
  assert abs(float(zero)) < 1e-12  # β = 1 is the prior itself


@pytest.mark.slow
def test_drnas_runs_two_steps_on_the_darts_space(tmp_path, capsys):
  out = tmp_path / "run"
  code = cli.main(["search", "--method", "drnas", "--space", "darts", "--channels", "2",
                   "--cells", "3", "--batch-size", "4", "--no-compile-cache", "--steps", "2",
                   "--add-regularizer", "dirichlet-kl:0.1", "--out", str(out)])
  assert code == 0, capsys.readouterr().err
  lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
  assert [m["step"] for m in lines] == [1, 2]
  assert all(np.isfinite(m["train_loss"]) and np.isfinite(m["reg/dirichlet-kl"]) for m in lines)
  assert lines[-1]["alpha_grad_norm"] > 0


# --- The progressive schedule: stages, pruning at the boundary, widening (jaxnas.progressive) -----

from jaxnas import methods, progressive, search, spaces  # noqa: E402
from jaxnas.errors import JaxnasError  # noqa: E402

STAGES = methods.get("drnas-progressive").stages


def test_stage_boundaries_fall_on_epochs_or_steps_worked_out_by_hand():
  # 50 epochs of 10 steps, two halves: stage 2 starts after 25 epochs; warm-up 40% = 10 epochs.
  assert progressive.stage_starts(STAGES, 500, 10) == (0, 250)
  assert progressive.stage_warmups(STAGES, (0, 250), 500) == (100, 100)
  # 3 epochs of 4 steps: round(1.5) = 2 epochs, on an epoch boundary.
  assert progressive.stage_starts(STAGES, 12, 4) == (0, 8)
  # 2 steps of a 14-step epoch: on steps, one each; a warm-up of 40% of 1 step rounds to 0.
  assert progressive.stage_starts(STAGES, 2, 14) == (0, 1)
  assert progressive.stage_warmups(STAGES, (0, 1), 2) == (0, 0)
  with pytest.raises(JaxnasError, match="2 stages"):
    progressive.stage_starts(STAGES, 1, 14)


def test_stages_that_cannot_run_are_one_line_errors():
  bad = [(progressive.stage(0.5), progressive.stage(0.4)),  # lengths do not add up to 1
         (progressive.stage(1.0, space_options={"channels": 8}),),  # not a stage option
         (progressive.stage(0.5), progressive.stage(0.3, keep_ops=4),
          progressive.stage(0.2, keep_ops=5)),  # keep_ops grows
         (progressive.stage(0.5, keep_ops=4), progressive.stage(0.5)),  # the first stage prunes
         (progressive.stage(0.5), progressive.stage(0.5, space_options={"partial_channels": 8}))]
  for stages in bad:
    with pytest.raises(JaxnasError) as e:
      progressive.check_stages(stages, (("partial_channels", 6),))
    assert "\n" not in str(e.value)


def test_pruning_keeps_the_k_largest_alphas_and_zeroes_the_rest():
  rng = np.random.default_rng(5)
  alphas = {"normal": rng.normal(size=(14, 8)), "reduce": rng.normal(size=(14, 8))}
  pruned, masks = progressive.prune_alphas(alphas, 4, derive.DARTS_OPS)
  for kind, a in alphas.items():
    top = np.argsort(-a[:, 1:], axis=-1)[:, :4] + 1  # by hand: 'none' (column 0) never kept
    for row in range(14):
      assert set(np.flatnonzero(masks[kind][row])) == set(top[row])
    np.testing.assert_array_equal(pruned[kind], np.where(masks[kind], a, 0.0))
  # A later stage picks among the operations still kept (the reference subtracts 1e6 from the rest).
  again, masks2 = progressive.prune_alphas({k: -v for k, v in alphas.items()}, 2,
                                           derive.DARTS_OPS, masks)
  assert all(np.all(masks2[k] <= masks[k]) and np.all(masks2[k].sum(-1) == 2) for k in masks)


def test_the_stage_mask_gives_pruned_operations_weight_zero_in_every_sample():
  rng = np.random.default_rng(6)
  alphas = {"normal": jnp.asarray(rng.normal(size=(14, 8))),
            "reduce": jnp.asarray(rng.normal(size=(14, 8)))}
  _, masks = progressive.prune_alphas(alphas, 4, derive.DARTS_OPS)
  fn = relax.get("dirichlet", keep_mask=progressive.keep_mask_option(masks))
  for seed in range(5):
    w = fn(alphas, jax.random.key(seed), op_names=derive.DARTS_OPS)
    for k in alphas:
      got = np.asarray(w[k])
      assert np.all(got[~masks[k]] == 0) and np.all(got[masks[k]] > 0)
      np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-12)
  # Without a key: softmax over the kept operations, by hand.
  w0 = fn(alphas, None, op_names=derive.DARTS_OPS)
  for k in alphas:
    e = np.where(masks[k], np.exp(np.asarray(alphas[k])), 0.0)
    np.testing.assert_allclose(np.asarray(w0[k]), e / e.sum(-1, keepdims=True), rtol=1e-12)


def test_widening_an_edge_group_follows_net2wider_by_hand():
  # One stride-2 group, E = 2 edges, 2 → 3 channels (FactorizedReduce halves 1 → 2 ... of 2 → 4).
  rng = np.random.default_rng(7)
  g = {"sep3_dw1": rng.normal(size=(2, 3, 3, 2)), "sep3_pw1": rng.normal(size=(2, 2, 2))}
  idx = {"sep3_a": np.array([[1], [0]]), "sep3_b": np.array([[0], [0]])}
  for conv in ("sep3", "sep5", "dil3", "dil5"):  # only sep3 is checked; the rest must be present
    for name, shape in (("dw1", (2, 3, 3, 2)), ("pw1", (2, 2, 2)), ("dw2", (2, 3, 3, 2)),
                        ("pw2", (2, 2, 2)), ("dw", (2, 3, 3, 2)), ("pw", (2, 2, 2))):
      g.setdefault(f"{conv}_{name}", rng.normal(size=shape))
    for letter in "abcd":
      idx.setdefault(f"{conv}_{letter}", np.array([[1], [1]]))
  new = progressive.widen_group_params(g, idx)
  a, b = idx["sep3_a"], idx["sep3_b"]
  src = lambda t, e, i: t if t < 2 else i[e, t - 2]
  for e in range(2):
    for t in range(3):
      np.testing.assert_array_equal(new["sep3_dw1"][e, :, :, t], g["sep3_dw1"][e, :, :, src(t, e, a)])
      for u in range(3):
        assert new["sep3_pw1"][e, t, u] == g["sep3_pw1"][e, src(t, e, a), src(u, e, b)]
  # Statistics: each new channel takes its source channel's (per edge); FactorizedReduce per half.
  stats = {f"{c}_{bn}": {"mean": rng.normal(size=4), "var": rng.normal(size=4)}
           for c in ("sep3", "sep5") for bn in ("bn1", "bn2")}
  stats.update({f"{c}_bn": {"mean": rng.normal(size=4), "var": rng.normal(size=4)}
                for c in ("dil3", "dil5")})
  stats["fr_bn"] = {"mean": np.arange(8.0), "var": np.arange(8.0)}  # 2 edges × (2 + 2) channels
  stats["max_pool_bn"] = {"mean": np.array([5.0, 6.0]), "var": np.array([7.0, 8.0])}
  idx.update(fr_out1=np.array([[1], [0]]), fr_out2=np.array([[0], [1]]), max_pool=np.array([1]))
  new_s = progressive.widen_group_stats(stats, idx, 2)
  m = stats["sep3_bn1"]["mean"].reshape(2, 2)
  np.testing.assert_array_equal(new_s["sep3_bn1"]["mean"].reshape(2, 3),
                                [[m[0, 0], m[0, 1], m[0, 0]], [m[1, 0], m[1, 1], m[1, 0]]])
  # edge 0: halves [0, 1] and [2, 3] → [0, 1, 1 | 2, 3, 2]; edge 1: [4, 5, 4 | 6, 7, 7].
  np.testing.assert_array_equal(new_s["fr_bn"]["mean"], [0, 1, 1, 2, 3, 2, 4, 5, 4, 6, 7, 7])
  np.testing.assert_array_equal(new_s["max_pool_bn"]["var"], [7.0, 8.0, 8.0])


@pytest.fixture(scope="module")
def boundary():
  """A tiny DrNAS stage-1 state (C = 12, 3 cells, K = 6) rebuilt into stage 2 (K = 4, 4 ops)."""
  recipe = methods.get("drnas-progressive")
  m1 = spaces.get("darts", channels=12, num_cells=3, partial_channels=6)
  m2 = spaces.get("darts", channels=12, num_cells=3, partial_channels=4)
  v = filled_variables(m1, 8)
  stats = jax.tree.map(np.abs, v["batch_stats"])
  w_tx, a_tx, _ = search.make_optimizers(recipe.weight_optimizer, recipe.arch_optimizer,
                                         steps_per_epoch=1, epochs=2)
  wdef = jax.tree.structure(v["params"])
  is_params = lambda t: jax.tree.structure(t) == wdef
  momentum = jax.tree.map(lambda t: jax.tree.map(lambda p: 2 * p, v["params"]) if is_params(t)
                          else t, w_tx.init(v["params"]), is_leaf=is_params)
  rng = np.random.default_rng(9)
  alphas = {"normal": rng.normal(size=(14, 8)), "reduce": rng.normal(size=(14, 8))}
  state = search.SearchState(weights=v["params"], batch_stats=stats, alphas=alphas,
                             w_opt_state=momentum, a_opt_state=a_tx.init(alphas),
                             step=jnp.asarray(5, jnp.int32), key=jax.random.key(3))
  new, masks = progressive.rebuild(state, m2, keep_ops=4, op_names=m2.op_names, masks=None,
                                   key=jax.random.key(1), image_shape=(8, 8, 3))
  return dict(old=state, new=jax.device_get(new._replace(key=None)), new_key=new.key,
              masks=masks, target=filled_variables(m2, 0), wdef=wdef)


def test_the_boundary_prunes_alphas_and_keeps_the_optimiser_step_and_key(boundary):
  old, new, masks = boundary["old"], boundary["new"], boundary["masks"]
  for k, a in old.alphas.items():
    assert np.all(masks[k].sum(-1) == 4) and not masks[k][:, 0].any()
    np.testing.assert_array_equal(new.alphas[k], np.where(masks[k], a, 0.0))
  assert jax.tree.all(jax.tree.map(np.array_equal, jax.device_get(old.a_opt_state),
                                   new.a_opt_state))
  assert int(new.step) == 5
  assert np.array_equal(jax.random.key_data(boundary["new_key"]), jax.random.key_data(old.key))


def test_the_widened_state_has_stage_twos_shapes_and_carries_the_rest(boundary):
  old, new, target = boundary["old"], boundary["new"], boundary["target"]
  assert jax.tree.map(np.shape, new.weights) == jax.tree.map(np.shape, target["params"])
  assert jax.tree.map(np.shape, new.batch_stats) == jax.tree.map(np.shape, target["batch_stats"])
  # Stem, preprocessing and classifier (and their statistics) are carried bit for bit.
  flat_old = dict(jax.tree_util.tree_flatten_with_path(old.weights)[0])
  for path, leaf in jax.tree_util.tree_flatten_with_path(new.weights)[0]:
    if not any(getattr(p, "key", "").startswith("from_") for p in path):
      np.testing.assert_array_equal(leaf, flat_old[path])
  # SGD's momentum (2·w here) is widened with the weights' own indices.
  wdef = boundary["wdef"]
  traces = [t for t in jax.tree.leaves(new.w_opt_state, is_leaf=lambda t: jax.tree.structure(t)
                                       == wdef) if jax.tree.structure(t) == wdef]
  assert len(traces) == 1
  assert jax.tree.all(jax.tree.map(lambda m, w: np.array_equal(m, 2 * w), traces[0],
                                   new.weights))


def _sources(new, old, axis):
  """For each new slice along ``axis`` past the old ones, the old slice it equals (exactly one)."""
  c = old.shape[axis]
  out = []
  for t in range(c, new.shape[axis]):
    hits = [j for j in range(c) if np.array_equal(np.take(new, t, axis), np.take(old, j, axis))]
    assert len(hits) == 1, hits
    out.append(hits[0])
  return np.asarray(out, int)


def test_every_edge_group_is_widened_by_the_copy_rule_worked_out_by_hand(boundary):
  # net2wider: new channel t of a conv copies an old channel s(t); the next 1×1 conv's input rows
  # follow the same s; its output columns draw s'; the batch norm after it copies with s'. The
  # sources are read off the depthwise kernels and the 1×1 columns (random, hence unique).
  old, new = boundary["old"], boundary["new"]
  groups = 0
  for cell in ("cell_0", "cell_1", "cell_2"):
    for src in range(5):
      gp, gn = old.weights[cell][f"from_{src}"], new.weights[cell][f"from_{src}"]
      sp, sn = old.batch_stats[cell][f"from_{src}"], new.batch_stats[cell][f"from_{src}"]
      e, c = gp["sep3_dw1"].shape[0], gp["sep3_dw1"].shape[-1]
      chains = [("sep3_dw1", "sep3_pw1", "sep3_bn1"), ("sep3_dw2", "sep3_pw2", "sep3_bn2"),
                ("sep5_dw1", "sep5_pw1", "sep5_bn1"), ("sep5_dw2", "sep5_pw2", "sep5_bn2"),
                ("dil3_dw", "dil3_pw", "dil3_bn"), ("dil5_dw", "dil5_pw", "dil5_bn")]
      for dw, pw, bn in chains:
        for i in range(e):
          np.testing.assert_array_equal(gn[dw][i][..., :c], gp[dw][i])  # the old channels stay
          s_in = np.concatenate([np.arange(c), _sources(gn[dw][i], gp[dw][i], 2)])
          s_out = np.concatenate([np.arange(c), _sources(gn[pw][i][:c], gp[pw][i], 1)])
          np.testing.assert_array_equal(gn[pw][i], gp[pw][i][np.ix_(s_in, s_out)])
          for stat in ("mean", "var"):
            c_new = gn[dw].shape[-1]
            np.testing.assert_array_equal(sn[bn][stat].reshape(e, c_new)[i],
                                          sp[bn][stat].reshape(e, c)[i][s_out])
      if "fr_conv1" in gp:  # stride-2 groups: FactorizedReduce, its statistics per half
        h = gp["fr_conv1"].shape[-1]
        for i in range(e):
          outs = []
          for conv in ("fr_conv1", "fr_conv2"):
            s_in = np.concatenate([np.arange(c), _sources(gn[conv][i][:, :h], gp[conv][i], 0)])
            s_out = np.concatenate([np.arange(h), _sources(gn[conv][i][:c], gp[conv][i], 1)])
            np.testing.assert_array_equal(gn[conv][i], gp[conv][i][np.ix_(s_in, s_out)])
            outs.append(s_out)
          old_fr = sp["fr_bn"]["mean"].reshape(e, 2 * h)[i]
          np.testing.assert_array_equal(sn["fr_bn"]["mean"].reshape(e, -1)[i],
                                        np.concatenate([old_fr[:h][outs[0]], old_fr[h:][outs[1]]]))
      for pool in ("max_pool_bn", "avg_pool_bn"):  # one index per group
        s = np.concatenate([np.arange(c), _sources(sn[pool]["mean"], sp[pool]["mean"], 0)])
        np.testing.assert_array_equal(sn[pool]["var"], sp[pool]["var"][s])
      groups += 1
  assert groups == 15


@pytest.fixture(scope="module")
def stage_two():
  """A real stage-1 state of a one-cell DrNAS supernet rebuilt at the boundary and one jitted
  stage-2 step on it (the only compile of this module)."""
  from jaxnas import data, run
  plan = run.prepare(run.SearchConfig(space="darts", method="drnas-progressive", channels=12,
                                      cells=1, batch_size=4, steps=2))
  staged = progressive.StagedRun(plan, None)
  first = search.init_search_state(plan.model, plan.recipe, jax.random.key(0),
                                   plan.dataset.image_shape, steps_per_epoch=plan.steps_per_epoch,
                                   epochs=plan.epochs)
  rebuilt = staged.advance(first)  # as at the start of step 2 (index 1), the stage's first
  rebuilt = rebuilt._replace(step=jax.device_put(jnp.asarray(1, jnp.int32), jax.local_devices()[0]))
  p2 = staged.plan()
  step = search.make_search_step(p2.model, p2.recipe, steps_per_epoch=plan.steps_per_epoch,
                                 epochs=plan.epochs, arch_start=staged.arch_start())
  train, val = data.search_batches(plan.dataset, 4, seed=0, step=1)
  before = jax.device_get(rebuilt.alphas)
  after, metrics = step(rebuilt, train, val)
  mixing = search.make_relaxation(p2.recipe, p2.model.op_names)(after.alphas, jax.random.key(2))
  return dict(staged=staged, before=before, after=jax.device_get(after), mixing=mixing,
              metrics=jax.device_get(metrics))


@pytest.mark.slow
def test_the_stage_two_step_runs_and_the_pruned_operations_are_gone(stage_two):
  staged, m = stage_two["staged"], stage_two["metrics"]
  assert staged.index == 1 and staged.arch_start() == 1  # stage 2 = step 2; its warm-up rounds to 0
  assert int(m["nonfinite"]) == 0 and np.isfinite(m["train_loss"]) and m["alpha_grad_norm"] > 0
  for k, mask in staged.masks.items():
    assert np.all(mask.sum(-1) == 4)
    assert np.all(np.asarray(stage_two["mixing"][k])[~mask] == 0)  # pruned: weight 0 when sampled
    # ... and their alphas get no gradient: Adam's moments start at 0, so they stay exactly 0,
    # while the kept ones move.
    after, before = np.asarray(stage_two["after"].alphas[k]), stage_two["before"][k]
    assert np.all(after[~mask] == 0) and np.all(after[mask] != before[mask])


def test_a_drnas_progressive_run_needs_channels_that_both_stages_divide(tmp_path, capsys):
  # 6 channels suit stage 1 (K = 6; 12 in reduction cells) but not stage 2 (K = 4).
  assert cli.main(["search", "--method", "drnas-progressive", "--space", "darts", "--channels",
                   "6", "--cells", "3", "--steps", "2", "--dry-run", "--out",
                   str(tmp_path / "r")]) == 2
  err = capsys.readouterr().err
  assert err.startswith("jaxnas: error: stage 2 of method 'drnas-progressive'")
  assert err.count("\n") == 1 and not (tmp_path / "r").exists()


@pytest.mark.slow
def test_drnas_progressive_runs_two_stages_from_the_cli_and_resumes_in_stage_two(tmp_path, capsys):
  # 4 steps: stage 1 (K = 6, 7 ops) steps 1-2, stage 2 (K = 4, top-4 ops) steps 3-4.
  args = ["search", "--method", "drnas-progressive", "--space", "darts", "--channels", "12",
          "--cells", "1", "--batch-size", "4", "--no-compile-cache", "--steps", "4",
          "--checkpoint-every", "1", "--keep", "5"]
  out = tmp_path / "run"
  assert cli.main([*args, "--out", str(out)]) == 0, capsys.readouterr().err
  printed = capsys.readouterr().out
  assert "stage 1/2: steps 1-2, partial_channels 6" in printed
  assert "stage 2/2: steps 3-4, partial_channels 4, 4 ops per edge" in printed
  lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
  assert [m["step"] for m in lines] == [1, 2, 3, 4]
  assert all(np.isfinite(m["train_loss"]) and np.isfinite(m["val_loss"]) for m in lines)
  record = json.loads((out / "stages.json").read_text())
  assert record["starts"] == [0, 2]
  masks = {k: np.asarray(v) for k, v in record["stages"][-1]["masks"].items()}
  assert all(np.all(m.sum(-1) == 4) for m in masks.values())
  genotype = json.loads((out / "genotype.json").read_text())
  for kind in ("normal", "reduce"):  # every chosen op is one the boundary kept on its edge
    for pos, (op, src) in enumerate(genotype[kind]):  # two genes per node, in node order
      edge = derive.darts_edge_sources().index((pos // 2, src))
      assert masks[kind][edge, derive.DARTS_OPS.index(op)], (kind, pos, op, src)
  assert cli.main(["derive", str(out)]) == 0
  # Resume from the checkpoint after step 3 (stage 2): the same final alphas, bit for bit.
  import shutil
  again = tmp_path / "again"
  shutil.copytree(out, again)
  shutil.rmtree(again / "checkpoints" / "4")
  (again / "summary.json").unlink()
  assert cli.main(["search", "--resume", "--out", str(again), "--no-compile-cache"]) == 0
  with np.load(out / "alphas.npz") as a, np.load(again / "alphas.npz") as b:
    for k in a.files:
      np.testing.assert_array_equal(a[k], b[k])
