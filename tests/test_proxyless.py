"""ProxylessNAS: binary gates over two sampled paths, their gradient, the latency term."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnas import cli, derive, regularize, relax, sampling
from jaxnas.spaces.darts import DartsEdgeGroup
from jaxnas.spaces.sampled import SampledEdgeGroup

ALPHA = np.array([0.5, -0.3, 1.1, 0.0, -0.8])
N = 30_000


def _softmax(a):
  e = np.exp(a - a.max())
  return e / e.sum()


@pytest.fixture(scope="module")
def draws():
  keys = jax.random.split(jax.random.key(0), N)
  fn = jax.jit(jax.vmap(lambda k: relax.get("binary-gates")({"e": jnp.asarray(ALPHA)[None]}, k)))
  out = fn(keys)
  return np.asarray(out["e"][:, 0]), np.asarray(out[sampling.INACTIVE]["e"][:, 0])


def test_gates_are_one_hot_at_the_active_path_and_the_inactive_path_differs(draws):
  gates, inactive = draws
  assert set(np.unique(gates).tolist()) == {0.0, 1.0} and np.all(gates.sum(-1) == 1)
  assert np.all(inactive.sum(-1) == 1) and np.all(np.argmax(gates, -1) != np.argmax(inactive, -1))


def test_pair_and_active_frequencies_match_the_multinomial(draws):
  # Pair {i, j} drawn without replacement from p = softmax(α): P = p_i p_j/(1−p_i) + p_j p_i/(1−p_j);
  # the active one is i with probability p_i/(p_i + p_j). 5-SE bands over N draws (fixed key).
  gates, inactive = draws
  p = _softmax(ALPHA)
  k = len(p)
  pair_p = np.array([[p[i] * p[j] / (1 - p[i]) + p[j] * p[i] / (1 - p[j]) if i != j else 0
                      for j in range(k)] for i in range(k)])
  active_p = np.array([sum(pair_p[i, j] * p[i] / (p[i] + p[j]) for j in range(k) if j != i)
                       for i in range(k)])
  a, b = np.argmax(gates, -1), np.argmax(inactive, -1)
  freq_pair = np.zeros((k, k))
  np.add.at(freq_pair, (np.minimum(a, b), np.maximum(a, b)), 1.0 / N)
  upper = np.triu(pair_p, 1)
  iu = np.triu_indices(k, 1)
  band = 5 * np.sqrt(upper[iu] * (1 - upper[iu]) / N)
  assert np.all(np.abs(freq_pair[iu] - upper[iu]) <= band)
  freq_active = np.bincount(a, minlength=k) / N
  assert np.all(np.abs(freq_active - active_p) <= 5 * np.sqrt(active_p * (1 - active_p) / N))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gate_gradient_is_the_papers_two_path_formula(seed):
  # L(g) = v·g; ∂L/∂α_i = Σ_{j∈pair} v_j p̃_j(δ_ij − p̃_i), p̃ = softmax over the pair (by hand).
  v = np.array([0.7, -1.3, 2.0, 0.4, -0.5])
  key = jax.random.key(seed)
  pair_of = lambda a: relax.get("binary-gates")({"e": a[None]}, key)
  out = pair_of(jnp.asarray(ALPHA))
  a, b = int(np.argmax(out["e"][0])), int(np.argmax(out[sampling.INACTIVE]["e"][0]))
  grad = jax.grad(lambda al: jnp.dot(jnp.asarray(v), pair_of(al)["e"][0]))(jnp.asarray(ALPHA))
  pt = np.exp(ALPHA[[a, b]]) / np.exp(ALPHA[[a, b]]).sum()
  expect = np.zeros(5)
  for ii, i in enumerate((a, b)):
    expect[i] = sum(v[j] * pt[jj] * ((i == j) - pt[ii]) for jj, j in enumerate((a, b)))
  np.testing.assert_allclose(grad, expect, atol=1e-14)


def test_expected_latency_is_the_softmax_weighted_normalised_table():
  table = sampling.load_cost_table()
  rng = np.random.default_rng(0)
  alphas = {"normal": rng.normal(size=(14, 8)), "reduce": rng.normal(size=(14, 8))}
  total = 0.0
  for kind, a in alphas.items():
    c = np.array([table["darts"]["latency_ms"][kind][op] for op in derive.DARTS_OPS])
    e = np.exp(a)
    total += np.sum(e / e.sum(-1, keepdims=True) * c / c.max())
  got = regularize.get("expected-latency")({k: jnp.asarray(v) for k, v in alphas.items()},
                                           op_names=derive.DARTS_OPS)
  np.testing.assert_allclose(float(got), total / 28, rtol=1e-12)


def test_two_paths_are_computed_and_both_gates_get_the_full_mixed_ops_gradient():
  E, C = 2, 2
  full = DartsEdgeGroup(E, C, 1, dtype=jnp.float64)
  samp = SampledEdgeGroup(E, C, 1, dtype=jnp.float64)
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(3, 5, 5, C)))
  shapes = jax.eval_shape(lambda: full.init(jax.random.key(0), x, jnp.zeros((E, 8)), train=False))
  params = jax.tree.map(lambda s: jnp.asarray(0.5 * rng.normal(size=s.shape)), shapes["params"])
  stats = jax.tree.map(lambda s: jnp.asarray(np.abs(rng.normal(size=s.shape)) + 0.5),
                       shapes["batch_stats"])
  cos = jnp.cos(jnp.arange(3 * 5 * 5 * E * C, dtype=jnp.float64).reshape(3, 5, 5, E, C))
  active, second = jnp.asarray([4, 3]), jnp.asarray([1, 6])
  gates = jax.nn.one_hot(active, 8, dtype=jnp.float64)
  inactive = jax.nn.one_hot(second, 8, dtype=jnp.float64)

  def loss(model, *extra):
    def f(w):
      out, _ = model.apply({"params": params, "batch_stats": stats}, x, w, *extra, train=True,
                           mutable=["batch_stats"])
      return jnp.sum(out * cos), out
    return jax.jit(jax.value_and_grad(f, has_aux=True))(gates)

  (_, out_f), g_f = loss(full)
  (_, out_s), g_s = loss(samp, inactive)
  np.testing.assert_allclose(out_s, out_f, atol=1e-12)
  rows = np.arange(E)
  for cols in (np.asarray(active), np.asarray(second)):
    np.testing.assert_allclose(np.asarray(g_s)[rows, cols], np.asarray(g_f)[rows, cols],
                               atol=1e-11)
    assert np.all(np.asarray(g_f)[rows, cols] != 0)


@pytest.mark.slow
def test_proxylessnas_runs_two_steps_on_the_darts_space(tmp_path, capsys):
  out = tmp_path / "run"
  code = cli.main(["search", "--method", "proxylessnas", "--space", "darts", "--channels", "2",
                   "--cells", "3", "--batch-size", "4", "--no-compile-cache", "--steps", "2",
                   "--out", str(out)])
  assert code == 0, capsys.readouterr().err
  lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
  assert [m["step"] for m in lines] == [1, 2]
  assert all(np.isfinite(m["train_loss"]) and m["reg/expected-latency"] > 0 for m in lines)
  assert lines[-1]["alpha_grad_norm"] > 0
