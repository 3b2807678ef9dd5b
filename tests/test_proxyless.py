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


# --- The rescaling of the pair's logits after each arch step ---------------------------------------

def test_rescale_pair_logits_is_the_references_offset_by_hand():
  rng = np.random.default_rng(5)
  old = rng.normal(size=(3, 5))
  new = old + rng.normal(size=(3, 5)) * 0.3
  active, second = np.array([0, 4, 2]), np.array([3, 1, 4])
  mixing = {"e": jax.nn.one_hot(active, 5, dtype=jnp.float64),
            sampling.INACTIVE: {"e": jax.nn.one_hot(second, 5, dtype=jnp.float64)}}
  got = np.asarray(sampling.rescale_pair_logits({"e": jnp.asarray(old)}, {"e": jnp.asarray(new)},
                                                mixing)["e"])
  expect = new.copy()
  for r, (a, b) in enumerate(zip(active, second)):  # mix_op.py: offset = log(Σ e^new / Σ e^old)
    offset = np.log((np.exp(new[r, a]) + np.exp(new[r, b])) / (np.exp(old[r, a]) + np.exp(old[r, b])))
    expect[r, [a, b]] -= offset
  np.testing.assert_allclose(got, expect, rtol=0, atol=1e-14)
  # Where only the pair moved, every other operation keeps its probability.
  moved = old.copy()
  for r, (a, b) in enumerate(zip(active, second)):
    moved[r, [a, b]] += [0.4, -0.9]
  kept = np.asarray(sampling.rescale_pair_logits({"e": jnp.asarray(old)},
                                                 {"e": jnp.asarray(moved)}, mixing)["e"])
  p_old, p_new = _softmax_rows(old), _softmax_rows(kept)
  for r, (a, b) in enumerate(zip(active, second)):
    others = [k for k in range(5) if k not in (a, b)]
    np.testing.assert_allclose(p_new[r, others], p_old[r, others], rtol=1e-13)
    assert abs(p_new[r, a] - p_old[r, a]) > 1e-3


def _softmax_rows(a):
  e = np.exp(a - a.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _toy_model():
  """A two-edge, five-op model: logits = Dense(x) · (1 + Σ w ⊙ c), reading the gates only."""
  import flax.linen as nn  # noqa: PLC0415

  class Toy(nn.Module):
    op_names = ("a", "b", "c", "d", "e")
    dtype = jnp.float64

    def init_alphas(self, key):
      return {"normal": 0.5 * jax.random.normal(key, (2, 5), jnp.float64)}

    @nn.compact
    def __call__(self, x, weights, *, train):
      c = jnp.asarray(np.arange(10.0).reshape(2, 5) / 10 - 0.3)
      h = nn.Dense(3, param_dtype=jnp.float64)(x.reshape(x.shape[0], -1))
      return h * (1 + jnp.sum(weights["normal"] * c))

  return Toy()


@pytest.mark.parametrize("hook", ["rescale-pair-logits", None])
def test_the_search_step_applies_the_hook_after_the_arch_update(hook):
  from jaxnas import methods, search  # noqa: PLC0415
  recipe = methods.get("proxylessnas").replace(regularizers=(), arch_update_hook=hook,
                                               arch_optimizer=methods.ArchOptimizer(
                                                   lr=0.1, b1=0.0, b2=0.999, weight_decay=0.0))
  model = _toy_model()
  state = search.init_search_state(model, recipe, jax.random.key(0), (2, 2, 1),
                                   steps_per_epoch=1, epochs=1)
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.normal(size=(4, 2, 2, 1))), "label": jnp.asarray([0, 1, 2, 0])}
  old = np.asarray(state.alphas["normal"])
  new_state, _ = search.make_search_step(model, recipe, steps_per_epoch=1, epochs=1)(
      state, batch, batch)
  new = np.asarray(new_state.alphas["normal"])
  changed = np.abs(new - old) > 1e-9
  assert np.all(changed.sum(-1) == 2)  # b1 = 0, no decay: only the sampled pair moves
  lse = lambda a: np.log(np.exp(a).sum(-1))
  if hook:  # every row's normaliser, so every unsampled probability, is unchanged
    np.testing.assert_allclose(lse(new), lse(old), rtol=0, atol=1e-13)
  else:
    assert np.all(np.abs(lse(new) - lse(old)) > 1e-6)
