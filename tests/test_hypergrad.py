"""Hypergradient estimators, each checked against an answer it did not compute (DESIGN §3)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnas import hypergrad
from jaxnas.errors import JaxnasError

KEY = jax.random.key(0)


# ----------------------------------------------------------------------------------------------
# Ridge regression, alpha = log lambda, with its closed-form hypergradient computed in NumPy.


def _split(w):
  return jnp.concatenate([w["head"], w["tail"]])


def ridge_train_loss(w, alphas, batch, key):
  del key
  x, y = batch
  coef = _split(w)
  r = x @ coef - y
  mse = r @ r / (2 * y.shape[0])
  return mse + jnp.exp(alphas["log_lambda"]) / 2 * (coef @ coef), {"mse": mse}


def ridge_val_loss(w, alphas, batch, key):
  del alphas, key
  x, y = batch
  r = x @ _split(w) - y
  mse = r @ r / (2 * y.shape[0])
  return mse, {"mse": mse}


def _ridge_solution(xt, yt, log_lam):
  d = xt.shape[1]
  a = xt.T @ xt / len(yt) + np.exp(log_lam) * np.eye(d)
  return a, np.linalg.solve(a, xt.T @ yt / len(yt))


@functools.lru_cache(maxsize=None)
def ridge(seed=0, n=40, m=30, d=5, log_lam=float(np.log(0.1))):
  """Data, w*, the Hessian A and, all in NumPy, the IFT hypergradient at w*."""
  rng = np.random.default_rng(seed)
  w_true = rng.normal(size=d)
  xt, xv = rng.normal(size=(n, d)), rng.normal(size=(m, d))
  yt = xt @ w_true + 0.3 * rng.normal(size=n)
  yv = xv @ w_true + 0.3 * rng.normal(size=m)
  a, w_star = _ridge_solution(xt, yt, log_lam)
  grad_val = xv.T @ (xv @ w_star - yv) / m
  mixed = np.exp(log_lam) * w_star  # d/d alpha of grad_w L_train
  oracle = -grad_val @ np.linalg.solve(a, mixed)
  return dict(
      train=(jnp.asarray(xt), jnp.asarray(yt)), val=(jnp.asarray(xv), jnp.asarray(yv)),
      w={"head": jnp.asarray(w_star[:2]), "tail": jnp.asarray(w_star[2:])},
      alphas={"log_lambda": jnp.asarray(log_lam)}, a=a, w_star=w_star, grad_val=grad_val,
      mixed=mixed, oracle=oracle, log_lam=log_lam, np_data=(xt, yt, xv, yv))


def _estimate(name, problem, *, jit=True, train_loss=ridge_train_loss, val_loss=ridge_val_loss,
              key=KEY, **options):
  fn = functools.partial(hypergrad.get(name, **options), train_loss, val_loss)
  if jit:
    fn = jax.jit(fn)
  return fn(problem["w"], problem["alphas"], problem["train"], problem["val"], key=key)


def test_ridge_oracle_is_the_derivative_of_the_val_loss_at_the_optimum():
  p = ridge()
  xt, yt, xv, yv = p["np_data"]

  def outer(log_lam):
    _, w = _ridge_solution(xt, yt, log_lam)
    return np.sum((xv @ w - yv) ** 2) / (2 * len(yv))

  h = 1e-5
  fd = (outer(p["log_lam"] + h) - outer(p["log_lam"] - h)) / (2 * h)
  np.testing.assert_allclose(p["oracle"], fd, rtol=1e-7)


@pytest.mark.parametrize("name, options", [
    ("dense_ift", {}),
    ("cg", {"maxiter": 50, "tol": 1e-14}),
])
def test_implicit_estimators_match_ridge_oracle(name, options):
  p = ridge()
  g, info = _estimate(name, p, **options)
  np.testing.assert_allclose(g["log_lambda"], p["oracle"], rtol=1e-8)
  xv, yv = p["np_data"][2:]
  np.testing.assert_allclose(info["val_loss"],
                             np.sum((xv @ p["w_star"] - yv) ** 2) / (2 * len(yv)), rtol=1e-12)
  if name == "cg":
    assert info["residual"] < 1e-12 * np.linalg.norm(p["grad_val"])


def _numpy_cg(a, b, *, tol, maxiter):
  """Textbook CG from x = 0 with scipy's stopping rule; returns x and the iteration count."""
  x, r = np.zeros_like(b), b.copy()
  p, rs, k = r.copy(), r @ r, 0
  while rs > tol**2 * (b @ b) and k < maxiter:
    ap = a @ p
    step = rs / (p @ ap)
    x, r = x + step * p, r - step * ap
    rs_new = r @ r
    p, rs, k = r + rs_new / rs * p, rs_new, k + 1
  return x, k


@pytest.mark.parametrize("maxiter, tol", [(2, 1e-12), (100, 1e-3), (100, 1e-12)])
def test_cg_iterates_and_counts_like_textbook_cg(maxiter, tol):
  p = ridge()
  x, k = _numpy_cg(p["a"], p["grad_val"], tol=tol, maxiter=maxiter)
  g, info = _estimate("cg", p, maxiter=maxiter, tol=tol)
  np.testing.assert_allclose(g["log_lambda"], -p["mixed"] @ x, rtol=1e-10)
  assert int(info["iterations"]) == k
  assert int(info["hvp_passes"]) == k + 1
  np.testing.assert_allclose(info["residual"], np.linalg.norm(p["a"] @ x - p["grad_val"]),
                             rtol=1e-6, atol=1e-14)


def test_cg_damping_solves_the_damped_system():
  p = ridge()
  lam = 0.7
  expected = -p["mixed"] @ np.linalg.solve(p["a"] + lam * np.eye(5), p["grad_val"])
  g_cg, _ = _estimate("cg", p, damping=lam, maxiter=50, tol=1e-14)
  g_dense, _ = _estimate("dense_ift", p, damping=lam)
  np.testing.assert_allclose(g_cg["log_lambda"], expected, rtol=1e-10)
  np.testing.assert_allclose(g_dense["log_lambda"], expected, rtol=1e-10)


def _neumann_partial_sum(p, gamma, k_terms):
  a, v = p["a"], p["grad_val"]
  term, total = v.copy(), v.copy()
  for _ in range(k_terms):
    term = term - gamma * a @ term
    total = total + term
  return -gamma * p["mixed"] @ total


def test_neumann_converges_to_ridge_oracle_as_terms_grow():
  p = ridge()
  gamma = 1.0 / np.linalg.eigvalsh(p["a"]).max()  # below 2 / lambda_max
  errors = []
  for k_terms in (1, 5, 20, 100):
    g, info = _estimate("neumann", p, gamma=gamma, num_terms=k_terms)
    np.testing.assert_allclose(g["log_lambda"], _neumann_partial_sum(p, gamma, k_terms),
                               rtol=1e-10, atol=1e-14)
    assert int(info["hvp_passes"]) == k_terms + 1
    errors.append(abs(float(g["log_lambda"]) - p["oracle"]))
  assert all(e1 > e2 for e1, e2 in zip(errors, errors[1:])), errors
  assert errors[-1] < 1e-8 * abs(p["oracle"]), errors


def test_unrolled_autodiff_from_the_optimum_is_a_neumann_sum():
  # From a stationary w*, w_T stays at w* but dw_T/dalpha = -xi sum_{t<T} (I - xi H)^t M^T,
  # so T unrolled steps give the Neumann partial sum with K = T - 1 and gamma = xi.
  p = ridge()
  xi = 0.5 / np.linalg.eigvalsh(p["a"]).max()
  g, info = _estimate("unrolled_autodiff", p, xi=xi, unroll_steps=6)
  np.testing.assert_allclose(g["log_lambda"], _neumann_partial_sum(p, xi, 5), rtol=1e-10)
  assert int(info["hvp_passes"]) == 6


def test_mixed_level_closed_form():
  p = ridge()
  w = p["w_star"]
  lam = 0.3
  g, info = _estimate("mixed_level", p, mixed_weight=lam, key=None)  # deterministic: no key
  np.testing.assert_allclose(g["log_lambda"], lam * np.exp(p["log_lam"]) / 2 * (w @ w),
                             rtol=1e-12)
  assert int(info["hvp_passes"]) == 0


# ----------------------------------------------------------------------------------------------
# A toy two-edge mixed-op network y = sum_k softmax(a2)_k V_k tanh(sum_k softmax(a1)_k W_k x) + b.


def toy_forward(w, alphas, x):
  m1 = jax.nn.softmax(alphas["edge1"])
  m2 = jax.nn.softmax(alphas["edge2"])
  h = jnp.tanh(jnp.einsum("k,koi,bi->bo", m1, w["w1"], x))
  return jnp.einsum("k,koi,bi->bo", m2, w["w2"], h) + w["bias"]


def make_toy_loss(noisy):
  def loss(w, alphas, batch, key):
    x, y = batch
    if noisy:
      x = x * (1 + 0.2 * jax.random.normal(key, x.shape, x.dtype))
    pred = toy_forward(w, alphas, x)
    value = jnp.mean((pred - y) ** 2) / 2
    return value, {"mse": value, "mean_pred": jnp.mean(pred)}
  return loss


toy_loss = make_toy_loss(noisy=False)
noisy_toy_loss = make_toy_loss(noisy=True)


@functools.lru_cache(maxsize=None)
def toy(seed=1, ops=3, d_in=4, d_hidden=5, d_out=2, batch=8):
  rng = np.random.default_rng(seed)
  arr = lambda *shape, s=1.0: jnp.asarray(s * rng.normal(size=shape))  # noqa: E731
  w = {"w1": arr(ops, d_hidden, d_in, s=0.6), "w2": arr(ops, d_out, d_hidden, s=0.6),
       "bias": arr(d_out, s=0.1)}
  alphas = {"edge1": arr(ops, s=0.5), "edge2": arr(ops, s=0.5)}
  return dict(w=w, alphas=alphas, train=(arr(batch, d_in), arr(batch, d_out)),
              val=(arr(batch, d_in), arr(batch, d_out)))


def _toy_estimate(name, *, loss=toy_loss, jit=True, **options):
  return _estimate(name, toy(), jit=jit, train_loss=loss, val_loss=loss, **options)


def _random_like(tree, seed):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape)), tree)


def _assert_trees_close(actual, expected, **tol):
  jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, **tol), actual, expected)


def test_hvp_and_mixed_product_match_central_differences_of_the_gradient():
  p = toy()
  w, alphas, batch = p["w"], p["alphas"], p["train"]
  v = _random_like(w, seed=2)
  h = 1e-5
  w_plus = jax.tree.map(lambda a, b: a + h * b, w, v)
  w_minus = jax.tree.map(lambda a, b: a - h * b, w, v)
  grads = jax.jit(jax.grad(lambda w_, a_: toy_loss(w_, a_, batch, None)[0], argnums=(0, 1)))
  (gw_p, ga_p), (gw_m, ga_m) = grads(w_plus, alphas), grads(w_minus, alphas)
  fd_hv = jax.tree.map(lambda a, b: (a - b) / (2 * h), gw_p, gw_m)
  fd_mv = jax.tree.map(lambda a, b: (a - b) / (2 * h), ga_p, ga_m)
  hv = jax.jit(hypergrad.hvp, static_argnums=0)(toy_loss, w, alphas, batch, None, v)
  mv = jax.jit(hypergrad.mixed_product, static_argnums=0)(toy_loss, w, alphas, batch, None, v)
  _assert_trees_close(hv, fd_hv, rtol=1e-6, atol=1e-9)
  _assert_trees_close(mv, fd_mv, rtol=1e-6, atol=1e-9)


def test_first_order_is_the_gradient_of_the_val_loss():
  p = toy()
  g, info = _toy_estimate("first_order")
  (value, aux), expected = jax.jit(jax.value_and_grad(toy_loss, argnums=1, has_aux=True))(
      p["w"], p["alphas"], p["val"], KEY)
  _assert_trees_close(g, expected, rtol=1e-12)
  np.testing.assert_allclose(info["val_loss"], value, rtol=1e-12)
  np.testing.assert_allclose(info["val_aux"]["mean_pred"], aux["mean_pred"], rtol=1e-12)
  assert int(info["hvp_passes"]) == 0


def test_unrolled_hvp_equals_unrolled_autodiff_one_step():
  # A noisy train loss: the inner step and the mixed product must see the same key.
  xi = 0.3
  g_hvp, info_hvp = _toy_estimate("unrolled_hvp", loss=noisy_toy_loss, xi=xi)
  g_ad, info_ad = _toy_estimate("unrolled_autodiff", loss=noisy_toy_loss, xi=xi, unroll_steps=1)
  _assert_trees_close(g_hvp, g_ad, rtol=1e-10, atol=1e-13)
  np.testing.assert_allclose(info_hvp["val_loss"], info_ad["val_loss"], rtol=1e-12)
  assert int(info_hvp["hvp_passes"]) == 1 and int(info_ad["hvp_passes"]) == 1


def test_unrolled_fd_error_is_second_order_in_epsilon():
  xi = 0.3
  est = jax.jit(lambda eps: _toy_estimate("unrolled_fd", loss=noisy_toy_loss, jit=False, xi=xi,
                                          epsilon=eps)[0])
  exact, _ = _toy_estimate("unrolled_hvp", loss=noisy_toy_loss, xi=xi)
  exact = np.concatenate([np.ravel(x) for x in jax.tree.leaves(exact)])

  def error(eps):
    g = np.concatenate([np.ravel(x) for x in jax.tree.leaves(est(eps))])
    return np.linalg.norm(g - exact)

  errors = [error(eps) for eps in (0.2, 0.1, 0.05, 0.025)]
  ratios = [e1 / e2 for e1, e2 in zip(errors, errors[1:])]
  assert all(3.6 < r < 4.4 for r in ratios), (errors, ratios)
  assert error(0.01) < 1e-4 * np.linalg.norm(exact)


def test_unrolled_fd_default_epsilon_is_darts():
  assert hypergrad.unrolled_fd.__kwdefaults__["epsilon"] == 0.01


def _toy_step(w, alphas, batch, xi):
  grads = jax.grad(lambda w_: toy_loss(w_, alphas, batch, None)[0])(w)
  return jax.tree.map(lambda a, b: a - xi * b, w, grads)


def test_unrolled_autodiff_two_steps_matches_hand_unrolled_gradient():
  p = toy()
  xi = 0.2

  def objective(alphas):
    w2 = _toy_step(_toy_step(p["w"], alphas, p["train"], xi), alphas, p["train"], xi)
    return toy_loss(w2, alphas, p["val"], None)[0]

  expected = jax.jit(jax.grad(objective))(p["alphas"])
  g, info = _toy_estimate("unrolled_autodiff", xi=xi, unroll_steps=2)
  _assert_trees_close(g, expected, rtol=1e-10, atol=1e-13)
  np.testing.assert_allclose(info["val_loss"], objective(p["alphas"]), rtol=1e-12)
  assert int(info["hvp_passes"]) == 2


def test_inner_step_through_optax_is_darts_momentum_weight_decay_formula():
  # DARTS: w' = w - xi (mu m + grad + wd w). optax's trace keeps m_new = g + mu m and sgd applies
  # -lr m_new, where add_decayed_weights put wd w into g first.
  p = toy()
  w, alphas = p["w"], p["alphas"]
  lr, mu, wd = 0.05, 0.9, 3e-4
  tx = optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, momentum=mu))
  _, state = jax.jit(tx.update)(_random_like(w, seed=3), tx.init(w), w)  # momentum now nonzero
  m = state[1][0].trace
  assert all(float(jnp.abs(x).min()) > 0 for x in jax.tree.leaves(m))

  grads = jax.jit(jax.grad(lambda w_: toy_loss(w_, alphas, p["train"], None)[0]))(w)
  updates, _ = jax.jit(tx.update)(grads, state, w)
  _assert_trees_close(
      updates, jax.tree.map(lambda g, mi, wi: -lr * (mu * mi + g + wd * wi), grads, m, w),
      rtol=1e-14, atol=1e-17)

  def objective(a):
    g = jax.grad(lambda w_: toy_loss(w_, a, p["train"], None)[0])(w)
    w1 = jax.tree.map(lambda wi, mi, gi: wi - lr * (mu * mi + gi + wd * wi), w, m, g)
    return toy_loss(w1, a, p["val"], None)[0]

  expected = jax.jit(jax.grad(objective))(alphas)
  for name, options in [("unrolled_autodiff", {}), ("unrolled_hvp", {"xi": lr})]:
    g, info = _toy_estimate(name, inner_optimizer=tx, inner_opt_state=state, **options)
    _assert_trees_close(g, expected, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(info["val_loss"], objective(alphas), rtol=1e-12)
  # Without a state the optimiser starts from tx.init(w): no momentum.
  g0, _ = _toy_estimate("unrolled_autodiff", inner_optimizer=tx)
  g_plain, _ = _toy_estimate("unrolled_autodiff",
                             inner_optimizer=optax.chain(optax.add_decayed_weights(wd),
                                                         optax.sgd(lr)))
  _assert_trees_close(g0, g_plain, rtol=1e-12, atol=1e-15)


def test_neumann_inner_steps_use_the_inner_optimizer():
  # With T inner steps, neumann evaluates at w_T: compare with T = 0 at a hand-stepped w_T.
  p = toy()
  tx = optax.sgd(0.1, momentum=0.9)

  @jax.jit
  def step(w_t, state):
    grads = jax.grad(lambda w_: toy_loss(w_, p["alphas"], p["train"], None)[0])(w_t)
    updates, state = tx.update(grads, state, w_t)
    return optax.apply_updates(w_t, updates), state

  w_t, state = p["w"], tx.init(p["w"])
  for _ in range(3):
    w_t, state = step(w_t, state)
  g, info = _toy_estimate("neumann", gamma=0.1, unroll_steps=3, inner_optimizer=tx)
  g_ref, info_ref = _estimate("neumann", dict(toy(), w=w_t), train_loss=toy_loss,
                              val_loss=toy_loss, gamma=0.1)
  _assert_trees_close(g, g_ref, rtol=1e-10, atol=1e-13)
  np.testing.assert_allclose(info["val_loss"], info_ref["val_loss"], rtol=1e-12)


# ----------------------------------------------------------------------------------------------
# Every estimator under jit with traced numeric options; info conventions.

JIT_CASES = [
    ("first_order", {}, {}),
    ("mixed_level", {}, {"mixed_weight": 0.5}),
    ("unrolled_fd", {}, {"xi": 0.1, "epsilon": 0.01}),
    ("unrolled_hvp", {}, {"xi": 0.1}),
    ("unrolled_autodiff", {"unroll_steps": 3}, {"xi": 0.1}),
    ("neumann", {"num_terms": 4, "unroll_steps": 1}, {"xi": 0.1}),
    ("cg", {"maxiter": 7}, {"damping": 0.1, "tol": 1e-30}),
    ("dense_ift", {}, {"damping": 0.1}),
]

N_TOY_WEIGHTS = 3 * 5 * 4 + 3 * 2 * 5 + 2
EXPECTED_PASSES = {"first_order": 0, "mixed_level": 0, "unrolled_fd": 1, "unrolled_hvp": 1,
                   "unrolled_autodiff": 3, "neumann": 5, "cg": 8, "dense_ift": N_TOY_WEIGHTS + 1}
# Where the val gradient is taken: after this many plain GD steps of size xi on the train loss.
VAL_POINT_STEPS = {"unrolled_fd": 1, "unrolled_hvp": 1, "unrolled_autodiff": 3, "neumann": 1}


@functools.partial(jax.jit, static_argnums=0)
def _noisy_val_loss_after_steps(steps, w, alphas, train, val, xi):
  # The documented key convention: val sees KEY, every train evaluation fold_in(KEY, 1).
  train_key = jax.random.fold_in(KEY, 1)
  for _ in range(steps):
    grads = jax.grad(lambda w_: noisy_toy_loss(w_, alphas, train, train_key)[0])(w)
    w = jax.tree.map(lambda a, b: a - xi * b, w, grads)
  return noisy_toy_loss(w, alphas, val, KEY)[0]


def test_jit_cases_cover_every_estimator():
  assert sorted(name for name, _, _ in JIT_CASES) == sorted(hypergrad.ESTIMATORS)


@pytest.mark.parametrize("name, static, traced", JIT_CASES, ids=[c[0] for c in JIT_CASES])
def test_estimator_jits_once_with_traced_options(name, static, traced):
  p = toy()
  est = hypergrad.get(name, **static)
  traces = []

  def run(w, alphas, train, val, key, numbers):
    traces.append(1)
    return est(noisy_toy_loss, noisy_toy_loss, w, alphas, train, val, key=key, **numbers)

  jitted = jax.jit(run)
  args = (p["w"], p["alphas"], p["train"], p["val"], KEY)
  numbers = {k: jnp.asarray(v) for k, v in traced.items()}
  g, info = jitted(*args, numbers)
  g2, _ = jitted(*args, {k: 2 * v for k, v in numbers.items()})
  assert len(traces) == 1
  if numbers:
    assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g2)))

  assert jax.tree.structure(g) == jax.tree.structure(p["alphas"])
  assert info["hvp_passes"].dtype == jnp.int32
  assert int(info["hvp_passes"]) == EXPECTED_PASSES[name]
  assert info["val_loss"].shape == ()
  expected_val = _noisy_val_loss_after_steps(VAL_POINT_STEPS.get(name, 0), *args[:4], 0.1)
  np.testing.assert_allclose(info["val_loss"], expected_val, rtol=1e-12)
  np.testing.assert_allclose(info["val_aux"]["mse"], info["val_loss"], rtol=1e-12)
  assert ("residual" in info) == (name in ("neumann", "cg"))


# ----------------------------------------------------------------------------------------------
# Registry and option errors.


def test_get_unknown_name_lists_the_known_names():
  with pytest.raises(JaxnasError) as err:
    hypergrad.get("second_order")
  for name in hypergrad.ESTIMATORS:
    assert name in str(err.value)


def test_get_unknown_option_lists_the_options():
  with pytest.raises(JaxnasError, match="xi") as err:
    hypergrad.get("cg", xi=0.1)
  assert "damping, maxiter, tol" in str(err.value)


def test_get_binds_options_and_keeps_call_time_options():
  est = hypergrad.get("neumann", num_terms=3)
  assert isinstance(est, functools.partial) and est.keywords == {"num_terms": 3}
  assert hypergrad.get("first_order") is hypergrad.first_order
  assert "xi" in hypergrad.option_names("unrolled_hvp")
  assert hypergrad.option_names("first_order") == ()


@pytest.mark.parametrize("name, options, match", [
    ("unrolled_hvp", {"xi": None}, "xi"),
    ("unrolled_autodiff", {"unroll_steps": 2}, "xi"),
    ("neumann", {}, "gamma"),
    ("neumann", {"gamma": 0.1, "num_terms": 2.0}, "num_terms"),
    ("cg", {"maxiter": -1}, "maxiter"),
    ("unrolled_autodiff", {"xi": 0.1, "inner_opt_state": ()}, "inner_optimizer"),
])
def test_bad_options_raise_one_line_errors(name, options, match):
  with pytest.raises(JaxnasError, match=match):
    _toy_estimate(name, jit=False, **options)


@pytest.mark.parametrize("name, options, match", [
    ("unrolled_fd", {"epsilon": -0.01}, r"epsilon = -0.01 is out of range; it must be > 0"),
    ("unrolled_fd", {"epsilon": 0.0}, r"epsilon = 0 is out of range"),
    ("unrolled_hvp", {"xi": -1.0}, r"xi = -1 is out of range"),
    ("neumann", {"gamma": -0.1}, r"gamma = -0.1 is out of range; it must be > 0"),
    ("neumann", {"gamma": 0.5, "lambda_max": 4.0}, r"gamma = 0.5 >= 2/lambda_max = 0.5.*\(0, 0.5\)"),
    ("cg", {"damping": -1e-3}, r"damping = -0.001 is out of range; it must be >= 0"),
    ("cg", {"tol": 0.0}, r"tol = 0 is out of range"),
    ("dense_ift", {"damping": float("nan")}, r"damping = nan is out of range"),
    ("mixed_level", {"mixed_weight": float("inf")}, r"mixed_weight = inf is out of range"),
])
def test_out_of_range_options_name_the_option_and_range(name, options, match):
  # Refused both when bound by get() and when passed at call time.
  with pytest.raises(JaxnasError, match=match) as bound:
    hypergrad.get(name, **options)
  assert "\n" not in str(bound.value)
  extra = {"xi": 0.1} if "xi" in hypergrad.option_names(name) else {}
  t = toy()
  with pytest.raises(JaxnasError, match=match):
    hypergrad.ESTIMATORS[name](toy_loss, toy_loss, t["w"], t["alphas"], t["train"], t["val"],
                               key=None, **{**extra, **options})


def test_range_checks_let_traced_values_and_the_edge_of_the_range_through():
  g, _ = _toy_estimate("neumann", jit=True, gamma=0.49, lambda_max=4.0, num_terms=1)
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(g))
  hypergrad.get("cg", damping=0.0)  # 0 is inside [0, inf)
  # Traced gamma cannot be checked: it is let through (the series is the caller's business).
  out = jax.jit(lambda gam: _toy_estimate("neumann", jit=False, gamma=gam, num_terms=1)[0])(
      jnp.asarray(-1.0))
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(out))
