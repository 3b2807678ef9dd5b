r"""The dominant eigenvalue of a Hessian, matrix-free or dense, for any scalar function of a pytree.

R-DARTS (Zela et al., *Understanding and Robustifying Differentiable Architecture Search*, ICLR
2020) tracks the dominant eigenvalue of :math:`\nabla^2_\alpha \mathcal{L}_{val}(w, \alpha)` during
the search: it grows while the derived cell fills with parameter-free operations, and DARTS-ES stops
the search on it (:func:`jaxnas.stopping.rdarts_es`). This module computes it for any ``fn(x) ->
scalar`` of a pytree ``x`` (the alphas), knowing nothing of Flax or of the search:

- :func:`hvp`: the exact Hessian-vector product :math:`Hv`, forward-over-reverse;
- :func:`power_iteration`: the eigenvalue of **largest magnitude** (signed), by repeated :math:`Hv`;
- :func:`lanczos`: the **largest algebraic** eigenvalue of the Lanczos tridiagonal matrix, with full
  reorthogonalisation (a lower bound on :math:`\lambda_{max}(H)`, exact once ``iters`` reaches the
  size of ``x``);
- :func:`dense_eigenvalues`: every eigenvalue of the full Hessian (``jax.hessian``), small ``x``;
- :func:`dominant_eigenvalue`: one of the three by name.

Which eigenvalue. The reference computes the full Hessian and reports
``max(numpy.linalg.eigvals(H))`` (``src/search/train_search.py`` in automl/RobustDARTS), the largest
*algebraic* eigenvalue. That is what ``"dense"`` and ``"lanczos"`` return. Power iteration
converges to the eigenvalue of largest *magnitude*, the same number whenever
:math:`\lambda_{max} \ge |\lambda_{min}|` (near a minimum of the validation loss, where the
interesting curvature is positive), but a negative number when the most negative curvature is the
larger; it is offered because it is the textbook estimator and needs
no storage, not because the reference uses it (it does not: REFERENCE §10).

The iterative methods work on the ravelled pytree (``jax.flatten_util.ravel_pytree``), which is
cheap because alphas are small (DARTS: 2 × 14 × 8 = 224 numbers); the function still sees the
pytree. Everything is jit-compatible: ``iters`` is a Python int (static), the loops are
``lax.fori_loop``, and the start vectors come from an explicit PRNG ``key``.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jaxnas.errors import JaxnasError, unknown_name

__all__ = ["hvp", "power_iteration", "lanczos", "dense_eigenvalues", "dominant_eigenvalue",
           "METHODS"]

METHODS = ("lanczos", "power", "dense")


def hvp(fn: Callable[[Any], jax.Array], x, v):
  r"""The Hessian-vector product :math:`\nabla^2 f(x)\, v`, exactly, by forward-over-reverse.

  .. math:: H v = \frac{\partial}{\partial t} \nabla f(x + t v) \Big|_{t=0}

  computed as ``jax.jvp(jax.grad(fn), (x,), (v,))``: one gradient pass with a tangent carried
  forward, about the cost of two gradients, and no finite-difference step (quark0/darts perturbs
  the parameters by ``r = 0.01/‖v‖`` instead).

  Args:
    fn: a scalar function of the pytree ``x``.
    x: the point, a pytree of floating arrays.
    v: the direction, a pytree with the structure, shapes and dtypes of ``x``.

  Returns:
    :math:`Hv`, a pytree like ``x``.
  """
  return jax.jvp(jax.grad(fn), (x,), (v,))[1]


def _check_iters(iters) -> int:
  if isinstance(iters, bool) or not isinstance(iters, numbers.Integral) or iters < 1:
    raise JaxnasError(f"iters must be a whole number ≥ 1 (a Python int, static under jit), got "
                      f"{iters!r}")
  return int(iters)


def _flat_problem(fn, x):
  """``(flat_x, f, unravel)`` with ``f(flat) = fn(unravel(flat))``, after checking fn and x."""
  leaves = jax.tree.leaves(x)
  if not leaves:
    raise JaxnasError("x has no arrays; pass the pytree the Hessian is taken over (the alphas)")
  for leaf in leaves:
    if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
      raise JaxnasError(f"x must hold floating arrays only, got one of dtype "
                        f"{jnp.result_type(leaf)}; cast the alphas to a float dtype")
  out = jax.eval_shape(fn, x)
  if not (hasattr(out, "shape") and out.shape == () and jnp.issubdtype(out.dtype, jnp.floating)):
    got = f"shape {out.shape} of dtype {out.dtype}" if hasattr(out, "shape") else type(out).__name__
    raise JaxnasError(f"fn must return one floating scalar (the loss), got {got}; take the first "
                      "element of a (loss, aux) pair")
  flat, unravel = ravel_pytree(x)
  return flat, (lambda z: fn(unravel(z))), unravel


def _flat_hvp(f, z, v):
  return jax.jvp(jax.grad(f), (z,), (v,))[1]


def _unit(v):
  norm = jnp.linalg.norm(v)
  return v / jnp.where(norm > 0, norm, jnp.ones_like(norm))


def power_iteration(fn: Callable[[Any], jax.Array], x, key: jax.Array, *, iters: int = 20):
  r"""The Hessian eigenvalue of largest magnitude, by power iteration on :math:`Hv`.

  .. math:: v_0 = g / \lVert g \rVert,\ g \sim \mathcal N(0, I); \qquad
     v_{k+1} = \frac{H v_k}{\lVert H v_k \rVert}; \qquad
     \lambda = v_K^\top H v_K

  with :math:`H = \nabla^2 f(x)` and :math:`K` = ``iters``. The Rayleigh quotient :math:`\lambda`
  keeps the sign, so it converges to the eigenvalue :math:`\lambda_1` of largest :math:`|\lambda|`
  (error :math:`O(|\lambda_2/\lambda_1|^{2K})`), **not** to the largest algebraic eigenvalue that
  R-DARTS reports when the most negative eigenvalue is larger in magnitude (see the module
  docstring). ``iters + 1`` Hessian-vector products in all, through one traced product (one
  compile of the network's second-order program).

  Args:
    fn: a scalar function of the pytree ``x``.
    x: the point (e.g. the alphas).
    key: PRNG key of the start vector.
    iters: power steps :math:`K`, a Python int ≥ 1.

  Returns:
    ``(eigenvalue, eigenvector, info)``: the Rayleigh quotient (a scalar), the unit vector
    :math:`v_K` as a pytree like ``x``, and ``info = {"residual": ‖Hv − λv‖}`` (zero for an
    exact eigenpair; :math:`|\lambda - \lambda_i| \le` residual for some eigenvalue
    :math:`\lambda_i`).

  Raises:
    JaxnasError: if ``iters`` < 1, ``x`` is empty or not floating, or ``fn`` is not scalar.
  """
  iters = _check_iters(iters)
  z, f, unravel = _flat_problem(fn, x)
  v0 = _unit(jax.random.normal(key, z.shape, z.dtype))

  def step(_, carry):  # (v_k, ·, ·) -> (v_{k+1}, v_k, H v_k)
    v, _, _ = carry
    hv = _flat_hvp(f, z, v)
    return _unit(hv), v, hv

  # iters + 1 passes through one traced HVP (one copy of the network's second-order program to
  # compile): the last leaves v_K and H v_K.
  _, v, hv = jax.lax.fori_loop(0, iters + 1, step, (v0, v0, v0))
  eigenvalue = jnp.vdot(v, hv)
  residual = jnp.linalg.norm(hv - eigenvalue * v)
  return eigenvalue, unravel(v), {"residual": residual}


def _orthogonalize(w, q):
  """``w`` minus its projection on the rows of ``q`` (orthonormal or zero), twice (CGS2)."""
  w = w - q.T @ (q @ w)
  return w - q.T @ (q @ w)


def lanczos(fn: Callable[[Any], jax.Array], x, key: jax.Array, *, iters: int = 20):
  r"""The largest algebraic Hessian eigenvalue by Lanczos with full reorthogonalisation.

  With :math:`H = \nabla^2 f(x)`, :math:`q_0` a random unit vector and :math:`m` =
  ``min(iters, n)`` (:math:`n` the size of ``x``):

  .. math:: w_j = H q_j,\quad a_j = q_j^\top w_j,\quad
     r_j = (I - Q_j Q_j^\top)\, w_j,\quad b_j = \lVert r_j \rVert,\quad q_{j+1} = r_j / b_j

  where :math:`Q_j = [q_0 \dots q_j]` and the projection is applied twice (classical Gram-Schmidt
  with reorthogonalisation), so the basis stays orthonormal to rounding; storing it costs
  :math:`m \times n` numbers, nothing for alphas. The answer is the largest eigenvalue of the
  tridiagonal :math:`T = \mathrm{tridiag}(b, a, b)` (``jnp.linalg.eigvalsh``), a Ritz value:
  it never exceeds :math:`\lambda_{max}(H)` and equals it once :math:`m = n`.

  Breakdown (:math:`b_j \le \sqrt{\epsilon}\,\max_i \lVert w_i \rVert`, the Krylov space is
  invariant, e.g. for repeated eigenvalues): the process restarts from a fresh random vector
  orthogonalised against :math:`Q_j` with :math:`b_j = 0`, so :math:`T` becomes block diagonal
  and every block's eigenvalues are still eigenvalues of :math:`H` restricted to an invariant
  subspace. (Padding with zero vectors instead would add spurious zero Ritz values, wrong when
  every eigenvalue is negative.)

  The residual needs no further Hessian-vector product: with :math:`E` the remainders
  :math:`r_j` that the recurrence dropped (at restarts and at the last step),
  :math:`HQ = QT + E` holds to rounding, so for the Ritz pair :math:`(\theta, y = Qs)`,
  :math:`Hy - \theta y = Es`. One traced Hessian-vector product in all, so the network's
  second-order program is compiled once.

  Args:
    fn: a scalar function of the pytree ``x``.
    x: the point (e.g. the alphas).
    key: PRNG key of the start vector (and of restart vectors).
    iters: Lanczos steps, a Python int ≥ 1; more than ``n`` is cut to ``n``.

  Returns:
    ``(eigenvalue, info)``: the largest Ritz value (a scalar) and ``info`` with ``"eigenvector"``
    (its Ritz vector :math:`y = Q s`, a unit pytree like ``x``), ``"residual"``
    (:math:`\lVert Hy - \lambda y \rVert = \lVert Es \rVert`) and ``"ritz_values"`` (every
    eigenvalue of :math:`T`, ascending). ``m`` Hessian-vector products in all.

  Raises:
    JaxnasError: if ``iters`` < 1, ``x`` is empty or not floating, or ``fn`` is not scalar.
  """
  iters = _check_iters(iters)
  z, f, unravel = _flat_problem(fn, x)
  n = z.shape[0]
  m = min(iters, n)
  k_start, k_restart = jax.random.split(key)
  tol = jnp.sqrt(jnp.finfo(z.dtype).eps)
  q = jnp.zeros((m + 1, n), z.dtype).at[0].set(_unit(jax.random.normal(k_start, (n,), z.dtype)))
  a = jnp.zeros((m,), z.dtype)
  b = jnp.zeros((m,), z.dtype)

  def step(j, carry):
    q, a, b, e, scale = carry
    w = _flat_hvp(f, z, q[j])
    a = a.at[j].set(jnp.vdot(q[j], w))
    scale = jnp.maximum(scale, jnp.linalg.norm(w))
    r = _orthogonalize(w, q)
    norm = jnp.linalg.norm(r)
    fresh = _orthogonalize(jax.random.normal(jax.random.fold_in(k_restart, j), (n,), z.dtype), q)
    broke = norm <= tol * scale
    q = q.at[j + 1].set(jnp.where(broke, _unit(fresh), r / jnp.where(broke, 1.0, norm)))
    b = b.at[j].set(jnp.where(broke, jnp.zeros_like(norm), norm))
    e = e.at[j].set(jnp.where(broke | (j == m - 1), r, jnp.zeros_like(r)))
    return q, a, b, e, scale

  q, a, b, e, _ = jax.lax.fori_loop(0, m, step, (q, a, b, jnp.zeros((m, n), z.dtype),
                                                 jnp.zeros((), z.dtype)))
  t = jnp.diag(a) + jnp.diag(b[:m - 1], 1) + jnp.diag(b[:m - 1], -1)
  ritz, s = jnp.linalg.eigh(t)
  y = q[:m].T @ s[:, -1]
  residual = jnp.linalg.norm(e.T @ s[:, -1])
  return ritz[-1], {"eigenvector": unravel(y), "residual": residual, "ritz_values": ritz}


def dense_eigenvalues(fn: Callable[[Any], jax.Array], x):
  r"""Every eigenvalue of the full Hessian of ``fn`` at ``x``, ascending.

  .. math:: H = \tfrac12 (J + J^\top), \quad J = \nabla^2 f(\mathrm{vec}\,x)

  with ``J = jax.hessian`` of ``fn`` on the ravelled pytree (forward-over-reverse, :math:`n`
  Hessian-vector products batched) and the eigenvalues from ``jnp.linalg.eigvalsh``. The
  symmetrisation removes rounding asymmetry so that a symmetric solver applies. This is R-DARTS'
  computation (the full Hessian of all alphas, normal and reduce together, then
  ``max(eigvals(H))``); the reference builds ``H`` row by row with double backprop and uses the
  general ``numpy.linalg.eigvals``. :math:`O(n^2)` memory: for alphas only.

  Args:
    fn: a scalar function of the pytree ``x``.
    x: the point (e.g. the alphas).

  Returns:
    The :math:`n` eigenvalues, ascending (``[-1]`` is :math:`\lambda_{max}`).

  Raises:
    JaxnasError: if ``x`` is empty or not floating, or ``fn`` is not scalar.
  """
  z, f, _ = _flat_problem(fn, x)
  h = jax.hessian(f)(z)
  return jnp.linalg.eigvalsh(0.5 * (h + h.T))


def dominant_eigenvalue(fn: Callable[[Any], jax.Array], x, key: jax.Array, *,
                        method: str = "lanczos", iters: int = 20) -> jax.Array:
  """The dominant eigenvalue of the Hessian of ``fn`` at ``x``, by ``method``.

  - ``"lanczos"`` (default): :func:`lanczos`, the largest algebraic eigenvalue of ``iters`` Lanczos
    steps (a lower bound on :math:`\\lambda_{max}`, exact for ``iters`` ≥ the size of ``x``);
  - ``"power"``: :func:`power_iteration`, the eigenvalue of largest *magnitude* with its sign;
  - ``"dense"``: :func:`dense_eigenvalues`, the exact :math:`\\lambda_{max}`, as R-DARTS'
    ``max(eigvals(H))``; ``key`` and ``iters`` are unused.

  Args:
    fn: a scalar function of the pytree ``x`` (for R-DARTS: ``alphas -> L_val``).
    x: the point (e.g. the alphas).
    key: PRNG key of the iterative methods' start vector.
    method: one of :data:`METHODS`.
    iters: steps of the iterative methods, a Python int ≥ 1.

  Returns:
    A scalar.

  Raises:
    JaxnasError: for an unknown ``method``, ``iters`` < 1, an empty or non-floating ``x`` or a
      non-scalar ``fn``.
  """
  if method not in METHODS:
    raise unknown_name("eigenvalue method", method, METHODS)
  iters = _check_iters(iters)
  if method == "lanczos":
    return lanczos(fn, x, key, iters=iters)[0]
  if method == "power":
    return power_iteration(fn, x, key, iters=iters)[0]
  del key
  return dense_eigenvalues(fn, x)[-1]
