"""DrNAS: Dirichlet mixing weights, their reparameterised gradient, pruning and the KL term."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnas import cli, derive, relax, regularize, sampling

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
