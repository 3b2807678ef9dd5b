"""SDARTS-ADV's PGD attack, NoisyDARTS' skip noise and the unrolled step's inner optimiser."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnas import methods, perturb, search
from jaxnas.errors import JaxnasError
from jaxnas.spaces.layers import add_skip_noise


def _rows(seed, shape=(6, 5)):
  rng = np.random.default_rng(seed)
  return jax.nn.softmax(jnp.asarray(rng.normal(size=shape)), axis=-1)


def _quadratic_loss(target):
  """A smooth loss of the mixing weights with a known gradient: ‖A − T‖² / 2 summed over leaves."""
  def loss(weights):
    return sum(0.5 * jnp.sum((w - t) ** 2) for w, t in zip(jax.tree.leaves(weights),
                                                             jax.tree.leaves(target)))
  return loss


def test_pgd_raises_the_loss_stays_in_the_ball_and_on_the_simplex():
  weights = {"a": _rows(0), "b": _rows(1, (3, 4))}
  target = {"a": _rows(2), "b": _rows(3, (3, 4))}
  loss = _quadratic_loss(target)
  eps = 0.1
  attacked = jax.jit(lambda w, k: perturb.pgd_attack(w, k, epsilon=eps, loss_fn=loss))(
      weights, jax.random.key(0))
  assert float(loss(attacked)) > float(loss(weights))
  for a, w in zip(jax.tree.leaves(attacked), jax.tree.leaves(weights)):
    np.testing.assert_allclose(np.sum(a, -1), 1.0, atol=1e-12)
    assert np.all(np.asarray(a) >= 0)
    # simplex_clip rescales rows whose clamped sum is not 1, so the ball holds before it: the
    # attacked rows differ from the originals by at most eps before the renormalisation, i.e.
    # a * s − w ∈ [−eps, eps] for the row's pre-normalisation sum s. Check the weaker, exact
    # consequence that no entry moved by more than 2·eps / (1 − eps·K) here.
    k = w.shape[-1]
    assert float(jnp.max(jnp.abs(a - w))) <= 2 * eps / (1 - eps * k) + 1e-12


def test_pgd_one_step_from_the_centre_is_a_clipped_sign_step():
  """Without a random start, one step is clip(A + η sign(∇L)), worked out with NumPy."""
  w = _rows(4)
  target = _rows(5)
  eps = 0.05
  out = perturb.pgd_attack({"x": w}, None, epsilon=eps, steps=1, random_start=False,
                           loss_fn=_quadratic_loss({"x": target}))["x"]
  a = np.asarray(w)
  step = a + 2 * eps * np.sign(a - np.asarray(target))  # η = 2ε/1, gradient A − T
  step = a + np.clip(step - a, -eps, eps)
  step = np.clip(step, 0, 1)
  step = step / step.sum(-1, keepdims=True)
  expected = step if 0.5 * np.sum((step - target) ** 2) >= 0.5 * np.sum((a - target) ** 2) else a
  np.testing.assert_allclose(out, expected, atol=1e-12)


def test_pgd_reverts_when_the_attack_lowers_the_loss():
  """A loss that every sign step lowers (the negated quadratic is maximised at A, a local max):
  the attack cannot raise it, so the reference's revert returns A itself."""
  w = {"x": _rows(6)}
  loss = lambda m: -0.5 * jnp.sum((m["x"] - w["x"]) ** 2)  # noqa: E731
  out = perturb.pgd_attack(w, jax.random.key(1), epsilon=0.2, loss_fn=loss)
  np.testing.assert_array_equal(out["x"], w["x"])


def test_pgd_is_constant_to_the_caller_and_rejects_bad_steps():
  w = {"x": _rows(7)}
  loss = _quadratic_loss({"x": _rows(8)})
  g = jax.grad(lambda m: jnp.sum(perturb.pgd_attack(m, jax.random.key(0), epsilon=0.1,
                                                    loss_fn=loss)["x"] ** 2))(w)
  assert float(jnp.max(jnp.abs(g["x"]))) == 0.0
  with pytest.raises(JaxnasError, match="steps must be a whole number ≥ 1"):
    perturb.pgd_attack(w, None, epsilon=0.1, loss_fn=loss, steps=0)


class _Noisy(nn.Module):
  scale: float

  @nn.compact
  def __call__(self, y, *, train):
    return add_skip_noise(self, y, self.scale, train)


def test_skip_noise_has_the_stated_std_per_edge_and_only_in_train_mode():
  rng = np.random.default_rng(0)
  # (B, H, W, E, C) with edges on different scales: the noise std follows each edge's own std.
  y = jnp.asarray(rng.normal(size=(64, 6, 6, 3, 4)) * np.array([1.0, 3.0, 0.2])[:, None])
  module = _Noisy(0.2)
  out = module.apply({}, y, train=True, rngs={"noise": jax.random.key(42)})
  noise = np.asarray(out - y)
  n_per_edge = noise[..., 0, :].size  # 9216 samples per edge
  for e in range(3):
    expected = 0.2 * float(np.std(np.asarray(y)[..., e, :]))
    sample = noise[..., e, :]
    # Sample std of n Gaussians: relative standard error 1/sqrt(2n) ≈ 0.7%; allow 4 of them.
    assert abs(sample.std() / expected - 1) < 4 / np.sqrt(2 * n_per_edge)
    assert abs(sample.mean()) < 4 * expected / np.sqrt(n_per_edge)
  # Independent across edges: the correlation of two edges' noise is within sampling error.
  corr = np.corrcoef(noise[..., 0, :].ravel(), noise[..., 1, :].ravel())[0, 1]
  assert abs(corr) < 4 / np.sqrt(n_per_edge)
  # Eval mode, no noise stream, or scale 0: unchanged.
  np.testing.assert_array_equal(module.apply({}, y, train=False, rngs={"noise": jax.random.key(0)}),
                                y)
  np.testing.assert_array_equal(module.apply({}, y, train=True), y)
  np.testing.assert_array_equal(_Noisy(0.0).apply({}, y, train=True,
                                                  rngs={"noise": jax.random.key(0)}), y)
  # No gradient through the sample or the std: d out / d y = identity.
  g = jax.grad(lambda v: jnp.sum(module.apply({}, v, train=True,
                                              rngs={"noise": jax.random.key(1)})))(y)
  np.testing.assert_array_equal(g, jnp.ones_like(y))


def test_inner_optimizer_is_the_weight_optimizer_without_clipping():
  """The unrolled step is w − lr(μ m + g + λ w) with no clipping, even for a gradient far above
  the clip norm, and it runs on the weight optimiser's own state."""
  wo = methods.WeightOptimizer(lr=0.1, lr_min=0.1, momentum=0.9, weight_decay=0.01, clip=1.0)
  w_tx, _, schedule = search.make_optimizers(wo, methods.ArchOptimizer(), steps_per_epoch=1,
                                             epochs=1)
  inner = search.make_inner_optimizer(wo, schedule)
  w = {"k": jnp.asarray([1.0, -2.0, 3.0])}
  g0 = {"k": jnp.asarray([0.5, 0.5, -0.5])}
  state = w_tx.init(w)
  _, state = w_tx.update(g0, state, w)  # a first step fills the momentum buffer
  assert jax.tree.structure(state) == jax.tree.structure(inner.init(w))
  m = np.asarray(g0["k"]) + 0.01 * np.asarray(w["k"])  # ‖g0‖ = 0.87 is below the clip norm
  g = {"k": jnp.asarray([30.0, -40.0, 0.0])}  # norm 50 ≫ clip 1
  updates, _ = inner.update(g, state, w)
  new = optax.apply_updates(w, updates)
  expected = np.asarray(w["k"]) - 0.1 * (0.9 * m + np.asarray(g["k"]) + 0.01 * np.asarray(w["k"]))
  np.testing.assert_allclose(new["k"], expected, rtol=1e-12)
