"""GDAS, SNAS and D2NAS: the Gumbel samplers and the sampled-operation supernet path."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnas import cli, derive, relax, sampling
from jaxnas.errors import JaxnasError
from jaxnas.spaces.darts import DartsEdgeGroup
from jaxnas.spaces.sampled import SampledEdgeGroup

ALPHA_ROW = np.array([0.3, -1.0, 0.8, 0.0, 1.5, -0.4, 0.2, -2.0])


def _softmax(a):
  e = np.exp(a - a.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_gumbel_tau_is_linear_from_10_to_0_1():
  assert sampling.gumbel_tau(0.0) == 10.0
  assert sampling.gumbel_tau(0.5) == pytest.approx(5.05)
  assert sampling.gumbel_tau(1.0) == pytest.approx(0.1)
  assert sampling.gumbel_tau(None) == 0.1
  with pytest.raises(JaxnasError):
    sampling.gumbel_tau(1.5)


def test_soft_sample_is_the_formula_with_the_same_gumbel_noise():
  a = jnp.asarray(np.stack([ALPHA_ROW, ALPHA_ROW[::-1]]))
  key = jax.random.key(3)
  (k,) = jax.random.split(key, 1)  # gumbel_soft splits the key once per leaf
  g = np.asarray(jax.random.gumbel(k, a.shape, a.dtype))
  logp = np.log(_softmax(np.asarray(a)))
  expected = _softmax((logp + g) / 2.5)
  got = relax.get("gumbel-soft")({"x": a}, key, progress=(10 - 2.5) / 9.9)["x"]
  np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_hard_sample_is_one_hot_with_the_soft_samples_gradient():
  a = jnp.asarray(ALPHA_ROW)
  key, tau = jax.random.key(7), 0.7
  hard = lambda x: sampling.straight_through(sampling.gumbel_soft_sample(x, key, tau))
  soft = lambda x: sampling.gumbel_soft_sample(x, key, tau)
  h = np.asarray(hard(a))
  assert set(h.tolist()) == {0.0, 1.0} and h.sum() == 1.0  # exactly one-hot in value
  assert np.argmax(h) == np.argmax(np.asarray(soft(a)))
  np.testing.assert_allclose(jax.jacobian(hard)(a), jax.jacobian(soft)(a), rtol=0, atol=1e-15)
  # ... and the Jacobian is not trivially zero: it is the softmax Jacobian of the sample / τ.
  s = np.asarray(soft(a))
  np.testing.assert_allclose(jax.jacobian(soft)(a),
                             (np.diag(s) - np.outer(s, s)) @ (np.eye(8) - _softmax(ALPHA_ROW)) / tau,
                             atol=1e-12)


def test_gdas_sample_frequencies_match_softmax_alpha():
  # Gumbel-max: argmax(log p + g) ~ Categorical(p) for any τ. With N = 40000 draws (fixed key) each
  # frequency has standard error sqrt(p(1-p)/N) ≤ 0.0025; a 5-SE band fails by chance with
  # probability < 6e-7 per op (normal approximation), so 8 ops < 5e-6.
  n = 40_000
  keys = jax.random.split(jax.random.key(0), n)
  alphas = {"e": jnp.asarray(ALPHA_ROW)[None]}
  draw = jax.jit(jax.vmap(lambda k: sampling.gumbel_hard(alphas, k, progress=0.3)["e"][0]))
  freq = np.asarray(draw(keys)).mean(0)
  p = _softmax(ALPHA_ROW)
  assert np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / n)), (freq, p)


def test_gumbel_hard_without_key_is_softmax():
  a = {"normal": jnp.asarray(np.stack([ALPHA_ROW] * 14))}
  np.testing.assert_allclose(sampling.gumbel_hard(a, None)["normal"][0], _softmax(ALPHA_ROW))


@pytest.fixture(scope="module")
def d2nas_samples():
  rng = np.random.default_rng(0)
  alphas = {"normal": jnp.asarray(rng.normal(size=(14, 8))),
            "reduce": jnp.asarray(rng.normal(size=(14, 8)))}
  fn = jax.jit(jax.vmap(lambda k: relax.get("d2nas")(alphas, k, op_names=derive.DARTS_OPS,
                                                      progress=0.2)))
  return alphas, fn(jax.random.split(jax.random.key(1), 3000))


def test_d2nas_keeps_exactly_two_input_edges_per_node_in_every_sample(d2nas_samples):
  _, samples = d2nas_samples
  nodes = np.asarray([to for to, _ in derive.darts_edge_sources()])
  for kind in ("normal", "reduce"):
    w = np.asarray(samples[kind])  # (3000, 14, 8)
    row_sums = w.sum(-1)
    assert set(np.unique(row_sums).tolist()) <= {0.0, 1.0}
    assert set(np.unique(w).tolist()) == {0.0, 1.0}
    for node in range(4):
      assert np.all(row_sums[:, nodes == node].sum(-1) == 2)
    assert np.all(w[..., derive.DARTS_OPS.index("none")] == 0)  # 'none' is never sampled
    # Every input edge of node 3 (5 inputs) is sometimes kept and sometimes not.
    kept = row_sums[:, nodes == 3].mean(0)
    assert np.all((kept > 0.05) & (kept < 0.95))


def test_d2nas_edge_pair_frequencies_follow_sampling_without_replacement(d2nas_samples):
  # Node 0 has two inputs (both always kept); node 1 has three: the dropped edge j has probability
  # P(j last) = Σ_i q_i q_k/(1-q_i) over orderings i, k of the other two, q = softmax(β),
  # β_e = logsumexp of the edge's non-'none' logits. 3000 draws: 5-SE band as above.
  alphas, samples = d2nas_samples
  a = np.asarray(alphas["normal"])[2:5, 1:]
  beta = np.log(np.exp(a).sum(-1))
  q = _softmax(beta)
  p_drop = np.array([sum(q[i] * q[k] / (1 - q[i]) for i in range(3) for k in range(3)
                         if len({i, k, j}) == 3) for j in range(3)])
  dropped = (np.asarray(samples["normal"])[:, 2:5].sum(-1) == 0).mean(0)
  n = len(np.asarray(samples["normal"]))
  assert np.all(np.abs(dropped - p_drop) <= 5 * np.sqrt(p_drop * (1 - p_drop) / n)), (dropped,
                                                                                     p_drop)


def test_d2nas_rejects_alphas_of_an_unknown_cell():
  with pytest.raises(JaxnasError, match="14 edges"):
    sampling.d2nas_gumbel({"x": jnp.zeros((5, 8))}, jax.random.key(0), op_names=derive.DARTS_OPS)


# --- The sampled-operation path against the full mixed op, one edge group --------------------------

E, C = 2, 2


def _random_variables(model, x, w, seed):
  """Variables of ``model`` with the shapes of its init, filled from NumPy (no init compile)."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, w, train=False))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(0.5 * rng.normal(size=s.shape)), shapes)


@pytest.fixture(scope="module")
def edge_groups():
  """The full and the sampled stride-2 edge group (each edge rematerialised, the default, and
  not: ``sampled_plain``), compiled once each, on the same variables."""
  full = DartsEdgeGroup(E, C, 2, dtype=jnp.float64)
  samp = SampledEdgeGroup(E, C, 2, dtype=jnp.float64)
  plain = SampledEdgeGroup(E, C, 2, dtype=jnp.float64, remat_edges=False)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 6, 6, C)))
  w0 = jnp.zeros((E, 8))
  variables = _random_variables(full, x, w0, 0)
  stats = jax.tree.map(lambda v: jnp.abs(v) + 0.5, variables["batch_stats"])  # positive variances
  shapes_sampled = jax.eval_shape(lambda: samp.init(jax.random.key(0), x, w0, train=False))
  cos = jnp.cos(jnp.arange(3 * 3 * 3 * E * C, dtype=jnp.float64).reshape(3, 3, 3, E, C))

  def make(model):
    def f(params, w):
      out, new = model.apply({"params": params, "batch_stats": stats}, x, w, train=True,
                             mutable=["batch_stats"])
      return jnp.sum(out * cos), (out, new["batch_stats"])
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))

  return dict(full=make(full), sampled=make(samp), sampled_plain=make(plain),
              params=variables["params"], stats=stats,
              same_layout=jax.tree.map(lambda a, b: a.shape == b.shape, variables, shapes_sampled))


def test_sampled_group_has_the_full_groups_parameters_and_statistics(edge_groups):
  assert all(jax.tree.leaves(edge_groups["same_layout"]))


@pytest.mark.parametrize("path", ["sampled", "sampled_plain"])
@pytest.mark.parametrize("ops", [(0, 1), (2, 3), (4, 5), (6, 7)])
def test_sampled_op_equals_the_full_mixed_op_at_that_one_hot(edge_groups, ops, path):
  w = jax.nn.one_hot(jnp.asarray(ops), 8, dtype=jnp.float64)
  (_, (out_f, stats_f)), (gp_f, gw_f) = edge_groups["full"](edge_groups["params"], w)
  (_, (out_s, stats_s)), (gp_s, gw_s) = edge_groups[path](edge_groups["params"], w)
  np.testing.assert_allclose(out_s, out_f, rtol=0, atol=1e-12)
  for a, b in zip(jax.tree.leaves(gp_s), jax.tree.leaves(gp_f)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-11)
  # The gradient of each sampled gate equals the full mixed op's; unsampled gates get none.
  rows = np.arange(E)
  np.testing.assert_allclose(np.asarray(gw_s)[rows, ops], np.asarray(gw_f)[rows, ops], atol=1e-11)
  mask = np.ones((E, 8), bool)
  mask[rows, ops] = False
  assert np.all(np.asarray(gw_s)[mask] == 0)
  # Running statistics: the sampled op's move as in the full group, the others do not move.
  names = {4: ("sep3_bn1", "sep3_bn2"), 5: ("sep5_bn1", "sep5_bn2"), 6: ("dil3_bn",),
           7: ("dil5_bn",), 3: ("fr_bn",)}
  for j, op in enumerate(ops):
    for name, moved in stats_s.items():
      if name in ("max_pool_bn", "avg_pool_bn"):
        continue
      sl = slice(j * C, (j + 1) * C)
      expect = stats_f[name] if name in names.get(op, ()) else edge_groups["stats"][name]
      np.testing.assert_allclose(moved["mean"][sl], expect["mean"][sl], atol=1e-12)


@pytest.mark.parametrize("path", ["sampled", "sampled_plain"])
def test_an_all_zero_row_computes_nothing(edge_groups, path):
  w = jnp.zeros((E, 8)).at[0, 4].set(1.0)  # edge 1 not sampled (D2NAS)
  (_, (out, _)), (gp, gw) = edge_groups[path](edge_groups["params"], w)
  assert np.all(np.asarray(out)[..., 1, :] == 0) and np.any(np.asarray(out)[..., 0, :] != 0)
  # ... and its slices of the weights get no gradient (edge 0's sep_conv_3x3 slice does).
  assert np.all(np.asarray(gw)[1] == 0)
  assert np.all(np.asarray(gp["sep3_pw1"])[1] == 0) and np.any(np.asarray(gp["sep3_pw1"])[0] != 0)


# --- Recipes from the command line -----------------------------------------------------------------

TINY = ["--space", "darts", "--channels", "2", "--cells", "3", "--batch-size", "4",
        "--no-compile-cache", "--steps", "2"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gdas", "snas", "d2nas"])
def test_recipe_runs_two_steps_on_the_darts_space(name, tmp_path, capsys):
  out = tmp_path / "run"
  code = cli.main(["search", "--method", name, *TINY, "--out", str(out)])
  assert code == 0, capsys.readouterr().err
  lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
  assert [m["step"] for m in lines] == [1, 2]
  for m in lines:
    for key in ("train_loss", "val_loss", "alpha_grad_norm", "weight_grad_norm"):
      assert np.isfinite(m[key]), (key, m[key])
  assert lines[-1]["alpha_grad_norm"] > 0
  assert (out / "genotype.json").is_file()


@pytest.mark.slow
def test_gdas_runs_two_steps_with_cell_remat(tmp_path, capsys):
  out = tmp_path / "run"
  code = cli.main(["search", "--method", "gdas", *TINY, "--remat", "cell", "--out", str(out)])
  assert code == 0, capsys.readouterr().err
  lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
  assert [m["step"] for m in lines] == [1, 2]
  assert all(np.isfinite(m["train_loss"]) for m in lines) and lines[-1]["alpha_grad_norm"] > 0
