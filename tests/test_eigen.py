"""Hessian eigenvalues (jaxnas.eigen) against numpy.linalg.eigvalsh of an explicit Hessian.

The explicit Hessians are computed without jaxnas.eigen: written out by hand for a quadratic of
known spectrum and for a non-quadratic function of a pytree, and by central differences of the
gradient for a NAS-Bench-201 supernet's validation loss as a function of its alphas.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jaxnas import eigen, relax, search, spaces
from jaxnas.errors import JaxnasError

KEY = jax.random.key(0)
SHAPES = {"a": (2, 3), "b": (4,)}  # a pytree of 10 numbers


def _flat(p):
  return jnp.concatenate([p["a"].reshape(-1), p["b"]])


def _tree(z):
  z = jnp.asarray(z)
  return {"a": z[:6].reshape(2, 3), "b": z[6:]}


def _quadratic(spectrum, seed=0):
  """f(x) = ½ zᵀAz + bᵀz with A = Q diag(spectrum) Qᵀ; returns f, A."""
  rng = np.random.default_rng(seed)
  q, _ = np.linalg.qr(rng.standard_normal((10, 10)))
  a = q @ np.diag(spectrum) @ q.T
  a = 0.5 * (a + a.T)
  b = rng.standard_normal(10)

  def f(p):
    z = _flat(p)
    return 0.5 * z @ (jnp.asarray(a) @ z) + jnp.asarray(b) @ z
  return f, a


X0 = _tree(np.linspace(-1.0, 1.0, 10))


def _run(f, x, *, power_iters=200, lanczos_iters=20):
  """Every method on f at x in one jitted program."""
  @jax.jit
  def run(x):
    power = eigen.power_iteration(f, x, KEY, iters=power_iters)
    lz = eigen.lanczos(f, x, KEY, iters=lanczos_iters)
    return eigen.dense_eigenvalues(f, x), power, lz
  return jax.device_get(run(x))


# --- a quadratic of known spectrum ---------------------------------------------------------------


def test_hvp_is_the_hessian_times_v_on_a_pytree():
  f, a = _quadratic([-3.0, -1.0, 0.5, 0.5, 1.0, 2.0, 2.0, 4.0, 5.0, 7.0])
  v = _tree(np.random.default_rng(1).standard_normal(10))
  hv = jax.jit(lambda x, v: eigen.hvp(f, x, v))(X0, v)
  assert jax.tree.map(jnp.shape, hv) == SHAPES
  np.testing.assert_allclose(_flat(hv), a @ np.asarray(_flat(v)), rtol=1e-12, atol=1e-12)


def test_quadratic_positive_dominant():
  spectrum = np.array([-3.0, -1.0, 0.5, 0.5, 1.0, 2.0, 2.0, 2.5, 3.0, 9.0])
  f, a = _quadratic(spectrum)
  dense, (pv, pvec, pinfo), (lv, linfo) = _run(f, X0)
  expected = np.linalg.eigvalsh(a)
  np.testing.assert_allclose(expected, np.sort(spectrum), atol=1e-12)  # the oracle itself
  np.testing.assert_allclose(dense, expected, atol=1e-12)
  # λ_max = 9 is also the largest in magnitude: all three methods agree.
  np.testing.assert_allclose(pv, 9.0, rtol=1e-12)
  np.testing.assert_allclose(lv, 9.0, rtol=1e-12)
  assert pinfo["residual"] < 1e-10 and linfo["residual"] < 1e-10
  top = np.linalg.eigh(a)[1][:, -1]
  for vec in (pvec, linfo["eigenvector"]):
    assert jax.tree.map(np.shape, vec) == SHAPES
    z = np.asarray(_flat(vec))
    np.testing.assert_allclose(abs(z @ top), 1.0, rtol=1e-10)
  # Lanczos with m = n steps: its Ritz values are the whole spectrum.
  np.testing.assert_allclose(linfo["ritz_values"], expected, atol=1e-10)


def test_power_finds_largest_magnitude_lanczos_and_dense_largest_algebraic():
  # λ_min = −9 dominates in magnitude; R-DARTS' max(eigvals(H)) is 5.
  spectrum = np.array([-9.0, -1.0, -1.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
  f, a = _quadratic(spectrum, seed=1)
  dense, (pv, _, pinfo), (lv, _) = _run(f, X0)
  np.testing.assert_allclose(dense[-1], np.linalg.eigvalsh(a)[-1], rtol=1e-12)
  np.testing.assert_allclose(pv, -9.0, rtol=1e-12)
  np.testing.assert_allclose(lv, 5.0, rtol=1e-12)
  by_name = jax.jit(lambda x: [eigen.dominant_eigenvalue(f, x, KEY, method=m, iters=200)
                               for m in ("lanczos", "power", "dense")])(X0)
  np.testing.assert_allclose(by_name, [5.0, -9.0, 5.0], rtol=1e-10)


@pytest.mark.parametrize("spectrum", [
    [-1.0, -1.0, -1.0, -2.0, -2.0, -5.0, -5.0, -5.0, -5.0, -5.0],  # all negative, repeated
    [2.0] * 10,  # a multiple of the identity: the Krylov space has dimension 1
    [0.0] * 9 + [3.0],
], ids=["negative-repeated", "identity", "rank-one"])
def test_lanczos_restarts_on_breakdown(spectrum):
  # Repeated eigenvalues make the Krylov space invariant after fewer than n steps. A restart keeps
  # the answer exact; zero padding would report 0 for the all-negative spectrum.
  f, a = _quadratic(np.array(spectrum), seed=2)
  dense, _, (lv, linfo) = _run(f, X0)
  np.testing.assert_allclose(lv, max(spectrum), atol=1e-10)
  np.testing.assert_allclose(dense[-1], max(spectrum), atol=1e-10)
  assert linfo["residual"] < 1e-8


def test_lanczos_with_fewer_steps_is_a_lower_bound_that_converges():
  spectrum = np.array([-3.0, -1.0, 0.5, 0.7, 1.0, 2.0, 2.2, 4.0, 5.0, 7.0])
  f, a = _quadratic(spectrum, seed=3)
  values = jax.jit(lambda x: [eigen.lanczos(f, x, KEY, iters=k)[0] for k in range(1, 11)])(X0)
  values = np.asarray(values)
  assert np.all(values <= 7.0 + 1e-12)
  assert np.all(np.diff(values) >= -1e-12)  # the same start vector: a growing Krylov space
  np.testing.assert_allclose(values[-1], 7.0, rtol=1e-12)
  assert values[0] < 7.0 - 0.1  # one step is only the Rayleigh quotient of the start vector
  # The residual it reports (from the remainders it dropped) is ‖Ay − θy‖ of its Ritz pair.
  theta, info = jax.jit(lambda x: eigen.lanczos(f, x, KEY, iters=4))(X0)
  y = np.asarray(_flat(info["eigenvector"]))
  np.testing.assert_allclose(np.linalg.norm(y), 1.0, rtol=1e-12)
  np.testing.assert_allclose(info["residual"], np.linalg.norm(a @ y - theta * y), rtol=1e-8)
  assert info["residual"] > 1e-3


# --- a non-quadratic function of a pytree --------------------------------------------------------

_U = np.random.default_rng(4).standard_normal((5, 10))
_C = np.array([1.0, 2.0, 0.5, 3.0, 1.5])


def _nonquadratic(p):
  """Σ_i c_i softplus(u_i·z) + ¼(z·z)² + Σ_k sin z_k."""
  z = _flat(p)
  return (jnp.asarray(_C) @ jax.nn.softplus(jnp.asarray(_U) @ z) + 0.25 * (z @ z) ** 2
          + jnp.sum(jnp.sin(z)))


def _nonquadratic_hessian(z):
  """By hand: Σ c_i σ_i(1 − σ_i) u_i u_iᵀ + (z·z) I + 2 z zᵀ − diag(sin z)."""
  s = 1.0 / (1.0 + np.exp(-(_U @ z)))
  return ((_U.T * (_C * s * (1 - s))) @ _U + (z @ z) * np.eye(10) + 2.0 * np.outer(z, z)
          - np.diag(np.sin(z)))


def test_non_quadratic_pytree_function():
  z0 = np.linspace(-1.0, 1.0, 10)  # spectrum top 9.61, 12.68: power converges fast
  expected = np.linalg.eigvalsh(_nonquadratic_hessian(z0))
  dense, (pv, _, pinfo), (lv, linfo) = _run(_nonquadratic, _tree(z0), power_iters=300)
  np.testing.assert_allclose(dense, expected, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(lv, expected[-1], rtol=1e-10)
  largest_magnitude = expected[np.argmax(np.abs(expected))]
  np.testing.assert_allclose(pv, largest_magnitude, rtol=1e-8)
  assert pinfo["residual"] < 1e-6 and linfo["residual"] < 1e-8


# --- a NAS-Bench-201 supernet's validation loss as a function of its alphas -----------------------

IMAGE = (8, 8, 1)


@pytest.fixture(scope="module")
def supernet():
  """One jitted program: every method and the finite-difference Hessian of L_val(α)."""
  model = spaces.get("nb201", channels=2, cells_per_stage=1, num_classes=3, dtype=jnp.float64)
  k_alpha, k_w = jax.random.split(jax.random.key(1))
  # Alphas away from uniform so that the Hessian has structure.
  alphas = {"cell": 0.5 * jax.random.normal(k_alpha, (6, 5), jnp.float64)}
  weights, batch_stats = search.init_variables(model, k_w, IMAGE, alphas)
  rng = np.random.default_rng(0)
  batch = {"image": rng.standard_normal((8,) + IMAGE),
           "label": rng.integers(0, 3, 8).astype(np.int32)}
  loss = search.make_losses(model, relax.softmax, batch_stats)

  def val_loss(a):
    return loss(weights, a, batch, None)[0]

  h = 1e-4

  @jax.jit
  def run(a):
    flat, unravel = ravel_pytree(a)
    n = flat.shape[0]
    steps = h * jnp.concatenate([jnp.eye(n, dtype=flat.dtype), -jnp.eye(n, dtype=flat.dtype)])
    grads = jax.vmap(lambda e: ravel_pytree(jax.grad(val_loss)(unravel(flat + e)))[0])(steps)
    return dict(fd_hessian=(grads[:n] - grads[n:]) / (2 * h),
                dense=eigen.dense_eigenvalues(val_loss, a),
                power=eigen.power_iteration(val_loss, a, KEY, iters=50),
                lanczos=eigen.lanczos(val_loss, a, KEY, iters=30))
  return jax.device_get(run(alphas))


def test_supernet_hessian_eigenvalues(supernet):
  fd = supernet["fd_hessian"]
  assert fd.shape == (30, 30)
  np.testing.assert_allclose(fd, fd.T, atol=1e-6 * np.abs(fd).max())  # central differences
  expected = np.linalg.eigvalsh(0.5 * (fd + fd.T))
  scale = np.abs(expected).max()
  # Away from a minimum the most negative curvature dominates (here about −1.15 against a largest
  # eigenvalue of about 0.26), so power iteration and R-DARTS' max(eigvals) part ways.
  assert expected[0] < -expected[-1] < 0 and scale > 1e-2
  np.testing.assert_allclose(supernet["dense"], expected, atol=1e-7 * scale)
  # Lanczos with 30 steps on 30 alphas: the largest eigenvalue.
  lv, linfo = supernet["lanczos"]
  np.testing.assert_allclose(lv, expected[-1], atol=1e-7 * scale)
  assert linfo["residual"] < 1e-7 * scale
  # Power iteration: the eigenvalue of largest magnitude, within its residual.
  pv, _, pinfo = supernet["power"]
  np.testing.assert_allclose(pv, expected[0], atol=1e-7 * scale)
  assert np.min(np.abs(expected - pv)) <= pinfo["residual"] + 1e-7 * scale


# --- bad input -----------------------------------------------------------------------------------


def test_bad_input():
  f, _ = _quadratic(np.arange(10.0))
  for iters in (0, -1, True, 2.0):
    with pytest.raises(JaxnasError, match="iters must be a whole number ≥ 1"):
      eigen.power_iteration(f, X0, KEY, iters=iters)
    with pytest.raises(JaxnasError, match="iters must be a whole number ≥ 1"):
      eigen.lanczos(f, X0, KEY, iters=iters)
    with pytest.raises(JaxnasError, match="iters must be a whole number ≥ 1"):
      eigen.dominant_eigenvalue(f, X0, KEY, iters=iters)
  with pytest.raises(JaxnasError, match="unknown eigenvalue method 'eig'; choose one of: dense, "
                                        "lanczos, power"):
    eigen.dominant_eigenvalue(f, X0, KEY, method="eig")
  with pytest.raises(JaxnasError, match=r"fn must return one floating scalar \(the loss\), got "
                                        r"shape \(10,\)"):
    eigen.dense_eigenvalues(lambda p: _flat(p) ** 2, X0)
  with pytest.raises(JaxnasError, match="fn must return one floating scalar"):
    eigen.lanczos(lambda p: (f(p), {}), X0, KEY)
  with pytest.raises(JaxnasError, match="x has no arrays"):
    eigen.power_iteration(lambda p: jnp.zeros(()), {}, KEY)
  with pytest.raises(JaxnasError, match="x must hold floating arrays only, got one of dtype int"):
    eigen.dense_eigenvalues(lambda p: jnp.zeros(()), {"a": jnp.arange(3)})
