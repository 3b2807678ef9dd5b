r"""Hypergradient estimators for the bilevel problem of differentiable architecture search.

The bilevel problem (DESIGN §3) is

.. math::
   \min_\alpha \mathcal L_{val}(w^*(\alpha), \alpha) \quad\text{s.t.}\quad
   w^*(\alpha) = \arg\min_w \mathcal L_{train}(w, \alpha),

whose exact gradient at a stationary :math:`w^*` is given by the implicit function theorem (IFT):

.. math::
   \frac{d\mathcal L_{val}}{d\alpha} = \nabla_\alpha \mathcal L_{val}
     - \nabla^2_{\alpha w}\mathcal L_{train}\,[\nabla^2_{ww}\mathcal L_{train}]^{-1}
       \nabla_w \mathcal L_{val}.

Every estimator has one signature::

    estimate(train_loss, val_loss, w, alphas, train_batch, val_batch, *, key, **options)
        -> (g_alpha, info)

where ``train_loss`` and ``val_loss`` are ``loss(w, alphas, batch, key) -> (scalar, aux)``,
``w`` and ``alphas`` are arbitrary pytrees and ``g_alpha`` has the structure of ``alphas``.
:func:`get` binds options by name and returns a ``functools.partial``. All estimators are
jit-compatible: numeric options (``xi``, ``gamma``, ``epsilon``, ``damping``, ``tol``,
``mixed_weight``) may be traced scalars; integer knobs (``num_terms``, ``unroll_steps``,
``maxiter``) and ``inner_optimizer`` are static Python values.

``info`` is a dict with at least

- ``hvp_passes``: int32 scalar, the number of HVP-equivalent passes. One pass is one Hessian-vector
  product :math:`Hv`, one mixed product :math:`Mv`, one reverse pass through an inner gradient step,
  or one central finite-difference pair of gradients. Plain gradient evaluations are not counted.
- ``val_loss``: the val loss at the point where the estimator took the val gradient.
- ``val_aux``: the aux of that val-loss evaluation (accuracy, batch statistics, ...).

Iterative solvers (``neumann``, ``cg``) add ``residual``.

Keys: every val-loss evaluation gets ``key`` itself (so all estimators see the same val noise as
:func:`first_order`); every train-loss evaluation in one call gets the one derived key
``jax.random.fold_in(key, 1)``, so the inner steps, the Hessian products and the finite-difference
pair all see the same noise, just as they see the same train batch. ``key=None`` is passed through
for deterministic losses.

This module imports no Flax: it works on any loss pair of that signature, plain quadratics included.

References:
  Liu, Simonyan, Yang. DARTS: Differentiable Architecture Search. ICLR 2019.
  Zhang et al. iDARTS: Differentiable Architecture Search with Stochastic Implicit Gradients.
  ICML 2021.
  He, Wang, Li. MiLeNAS: Efficient Neural Architecture Search via Mixed-Level Reformulation.
  CVPR 2020.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from jaxnas.errors import JaxnasError, unknown_name

__all__ = [
    "ESTIMATORS",
    "Estimator",
    "cg",
    "check_options",
    "dense_ift",
    "first_order",
    "get",
    "hvp",
    "mixed_level",
    "mixed_product",
    "neumann",
    "option_names",
    "unrolled_autodiff",
    "unrolled_fd",
    "unrolled_hvp",
]

Estimator = Callable[..., Any]


# ----------------------------------------------------------------------------------------------
# Pytree arithmetic (scalars are cast to each leaf's dtype, so strict promotion never trips).


def _cast(s, x):
  return jnp.asarray(s).astype(x.dtype)


def _axpy(a, x, y):
  """``a * x + y`` leaf by leaf."""
  return jax.tree.map(lambda xi, yi: _cast(a, xi) * xi + yi, x, y)


def _sub(x, y):
  return jax.tree.map(jnp.subtract, x, y)


def _add(x, y):
  return jax.tree.map(jnp.add, x, y)


def _vdot(x, y):
  leaves = [jnp.sum(a * b) for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y))]
  return functools.reduce(jnp.add, leaves, 0.0)


def _norm(x):
  return jnp.sqrt(_vdot(x, x))


def _passes(n):
  return jnp.asarray(n, jnp.int32)


# ----------------------------------------------------------------------------------------------
# Second-order products.


def _train_key(key):
  return None if key is None else jax.random.fold_in(key, 1)


def _grad_w_fn(loss, alphas, batch, key):
  return jax.grad(lambda w: loss(w, alphas, batch, key)[0])


def _grad_alpha_fn(loss, alphas, batch, key):
  return lambda w: jax.grad(lambda a: loss(w, a, batch, key)[0])(alphas)


def hvp(loss, w, alphas, batch, key, v):
  r"""Hessian-vector product in the weights, exact, forward-over-reverse.

  .. math:: H v = \nabla^2_{ww} \mathcal L(w, \alpha)\, v
     = \frac{\partial}{\partial t} \nabla_w \mathcal L(w + t v, \alpha) \Big|_{t=0}

  Args:
    loss: ``loss(w, alphas, batch, key) -> (scalar, aux)``.
    w: weights pytree.
    alphas: architecture pytree.
    batch: the batch ``loss`` is evaluated on.
    key: PRNG key passed to ``loss`` (or ``None``).
    v: tangent with the structure and dtypes of ``w``.

  Returns:
    :math:`Hv`, structured like ``w``.
  """
  return jax.jvp(_grad_w_fn(loss, alphas, batch, key), (w,), (v,))[1]


def mixed_product(loss, w, alphas, batch, key, v):
  r"""The mixed second derivative applied to a weight-space vector, exact.

  .. math:: M v = \nabla^2_{\alpha w} \mathcal L(w, \alpha)\, v
     = \frac{\partial}{\partial t} \nabla_\alpha \mathcal L(w + t v, \alpha) \Big|_{t=0}

  computed as the jvp of :math:`w \mapsto \nabla_\alpha \mathcal L` along ``v``.

  Args:
    loss: ``loss(w, alphas, batch, key) -> (scalar, aux)``.
    w: weights pytree.
    alphas: architecture pytree.
    batch: the batch ``loss`` is evaluated on.
    key: PRNG key passed to ``loss`` (or ``None``).
    v: tangent with the structure and dtypes of ``w``.

  Returns:
    :math:`Mv`, structured like ``alphas``.
  """
  return jax.jvp(_grad_alpha_fn(loss, alphas, batch, key), (w,), (v,))[1]


# ----------------------------------------------------------------------------------------------
# Validation of static options and inner steps.


def _static_int(name, value, minimum):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise JaxnasError(
        f"{name} must be a Python int >= {minimum} (it fixes the compiled program); got {value!r}"
    )
  return int(value)


def _concrete_number(value):
  """``value`` as a Python float if it is a concrete real scalar, else None (traced or absent)."""
  if value is None or isinstance(value, bool) or isinstance(value, jax.core.Tracer):
    return None
  try:
    array = np.asarray(value)
  except Exception:  # noqa: BLE001  (anything not convertible is left to the estimator)
    return None
  if array.shape != () or not np.issubdtype(array.dtype, np.number):
    return None
  return float(array)


# Accepted ranges of the numeric options: (predicate, text of the range).
_RANGES = {
    "xi": (lambda x: x > 0, "> 0 (the weight learning rate)"),
    "epsilon": (lambda x: x > 0, "> 0 (DARTS uses 0.01)"),
    "gamma": (lambda x: x > 0, "> 0 and below 2/λ_max(H)"),
    "damping": (lambda x: x >= 0, ">= 0"),
    "tol": (lambda x: x > 0, "> 0"),
    "mixed_weight": (lambda x: np.isfinite(x), "a finite number"),
    "lambda_max": (lambda x: x > 0, "> 0 (the largest eigenvalue of the train Hessian)"),
}


def check_options(estimator: str, **options) -> None:
  r"""Raises a one-line :class:`JaxnasError` if a concrete numeric option is out of its range.

  Traced values (inside ``jax.jit``) cannot be checked and are let through; ``None`` means "not
  given". Ranges: ``xi``, ``epsilon``, ``gamma``, ``tol``, ``lambda_max`` > 0; ``damping`` >= 0;
  ``mixed_weight`` finite; and ``gamma < 2 / lambda_max`` when both are known, the condition for
  the Neumann series :math:`\sum_k (I - \gamma H)^k` to converge.
  """
  values = {}
  for name, value in options.items():
    number = _concrete_number(value)
    if number is None or name not in _RANGES:
      continue
    ok, text = _RANGES[name]
    if not (np.isfinite(number) or name == "mixed_weight") or not ok(number):
      raise JaxnasError(f"{estimator}: option {name} = {number:g} is out of range; it must be "
                        f"{text}")
    values[name] = number
  if "gamma" in values and "lambda_max" in values and values["gamma"] * values["lambda_max"] >= 2:
    raise JaxnasError(
        f"{estimator}: gamma = {values['gamma']:g} >= 2/lambda_max = "
        f"{2 / values['lambda_max']:g}, where the Neumann series diverges; choose gamma in "
        f"(0, {2 / values['lambda_max']:g})")


def _check_inner(estimator, xi, steps, inner_optimizer, inner_opt_state):
  """Raises :class:`JaxnasError` if the inner-step options cannot take ``steps`` steps."""
  if inner_optimizer is None:
    if inner_opt_state is not None:
      raise JaxnasError(f"{estimator} got inner_opt_state but no inner_optimizer; pass both")
    if steps > 0 and xi is None:
      raise JaxnasError(
          f"{estimator} takes plain gradient steps without inner_optimizer and needs xi "
          "(the current weight learning rate)"
      )
  elif not (hasattr(inner_optimizer, "init") and hasattr(inner_optimizer, "update")):
    raise JaxnasError(
        f"{estimator}: inner_optimizer must be an optax GradientTransformation; "
        f"got {type(inner_optimizer).__name__}"
    )


def _inner_step(train_loss, w, opt_state, alphas, batch, key, *, xi, inner_optimizer):
  """One inner weight step: the optax update if an optimiser is given, else ``w - xi * grad``."""
  grads = _grad_w_fn(train_loss, alphas, batch, key)(w)
  if inner_optimizer is None:
    return _axpy(-xi, grads, w), opt_state
  updates, opt_state = inner_optimizer.update(grads, opt_state, w)
  return optax.apply_updates(w, updates), opt_state


def _unroll(train_loss, w, alphas, batch, key, *, steps, xi, inner_optimizer, inner_opt_state):
  """``steps`` inner steps on one batch with one key; differentiable in ``alphas``."""
  if inner_optimizer is not None and inner_opt_state is None:
    inner_opt_state = inner_optimizer.init(w)
  step = functools.partial(
      _inner_step, train_loss, alphas=alphas, batch=batch, key=key, xi=xi,
      inner_optimizer=inner_optimizer)
  if steps == 0:
    return w
  if steps == 1:
    return step(w, inner_opt_state)[0]

  def body(carry, _):
    return step(*carry), None

  (w, _), _ = jax.lax.scan(body, (w, inner_opt_state), None, length=steps)
  return w


def _val_grads(val_loss, w, alphas, batch, key):
  """``(value, aux), (grad_w, grad_alpha)`` of the val loss."""
  return jax.value_and_grad(val_loss, argnums=(0, 1), has_aux=True)(w, alphas, batch, key)


def _info(passes, val_value, val_aux, **extra):
  return {"hvp_passes": _passes(passes), "val_loss": val_value, "val_aux": val_aux, **extra}


def _cg(matvec, b, *, tol, maxiter):
  """Conjugate gradients on pytrees from ``x0 = 0``; also returns ``‖r‖`` and the iteration count.

  The algorithm and stopping rule of ``jax.scipy.sparse.linalg.cg`` (stop when
  ``‖r‖ <= tol * ‖b‖`` or after ``maxiter`` iterations; one ``matvec`` per iteration, none for the
  initial residual since ``x0 = 0``), written out because that function reports no iteration
  count. ``‖r‖`` is CG's recursively updated residual, equal to ``‖matvec(x) - b‖`` up to rounding.
  """
  bs = _vdot(b, b)
  atol2 = jnp.square(_cast(tol, bs)) * bs

  def cond(state):
    _, _, gamma, _, k = state
    return (gamma > atol2) & (k < maxiter)

  def body(state):
    x, r, gamma, p, k = state
    ap = matvec(p)
    step = gamma / _vdot(p, ap)
    x = _axpy(step, p, x)
    r = _axpy(-step, ap, r)
    gamma_new = _vdot(r, r)
    p = _axpy(gamma_new / gamma, p, r)
    return x, r, gamma_new, p, k + 1

  x0 = jax.tree.map(jnp.zeros_like, b)
  x, _, gamma, _, k = jax.lax.while_loop(cond, body, (x0, b, bs, b, jnp.asarray(0, jnp.int32)))
  return x, jnp.sqrt(gamma), k


# ----------------------------------------------------------------------------------------------
# Estimators.


def first_order(train_loss, val_loss, w, alphas, train_batch, val_batch, *, key):
  r"""DARTS' first-order approximation (Liu et al., 2019, §2.3 with :math:`\xi = 0`).

  .. math:: g = \nabla_\alpha \mathcal L_{val}(w, \alpha)

  The weights are treated as constant in :math:`\alpha`; ``train_loss`` and ``train_batch`` are
  unused. ``hvp_passes = 0``.
  """
  del train_loss, train_batch
  (value, aux), g = jax.value_and_grad(val_loss, argnums=1, has_aux=True)(
      w, alphas, val_batch, key)
  return g, _info(0, value, aux)


def mixed_level(train_loss, val_loss, w, alphas, train_batch, val_batch, *, key,
                mixed_weight=1.0):
  r"""MiLeNAS' mixed-level gradient (He et al., 2020).

  .. math:: g = \nabla_\alpha \mathcal L_{val}(w, \alpha) + \lambda\, \nabla_\alpha
     \mathcal L_{train}(w, \alpha)

  Args:
    train_loss, val_loss, w, alphas, train_batch, val_batch, key: see the module docstring.
    mixed_weight: :math:`\lambda` (may be traced). The default 1 is not checked against the
      MiLeNAS code.

  Returns:
    ``(g, info)`` with ``hvp_passes = 0`` (two gradient evaluations).
  """
  check_options("mixed_level", mixed_weight=mixed_weight)
  (value, aux), g_val = jax.value_and_grad(val_loss, argnums=1, has_aux=True)(
      w, alphas, val_batch, key)
  g_train = _grad_alpha_fn(train_loss, alphas, train_batch, _train_key(key))(w)
  return _axpy(mixed_weight, g_train, g_val), _info(0, value, aux)


def _unrolled_one_step(name, train_loss, val_loss, w, alphas, train_batch, val_batch, key, xi,
                       inner_optimizer, inner_opt_state, mixed):
  """Shared body of ``unrolled_fd`` and ``unrolled_hvp``; ``mixed(w, tkey, v)`` gives ``M v``."""
  if xi is None:
    raise JaxnasError(f"{name} needs xi (the current weight learning rate)")
  check_options(name, xi=xi)
  _check_inner(name, xi, 1, inner_optimizer, inner_opt_state)
  tkey = _train_key(key)
  w1 = _unroll(train_loss, w, alphas, train_batch, tkey, steps=1, xi=xi,
               inner_optimizer=inner_optimizer, inner_opt_state=inner_opt_state)
  (value, aux), (v, g_val) = _val_grads(val_loss, w1, alphas, val_batch, key)
  g = _axpy(-xi, mixed(w, tkey, v), g_val)
  return g, _info(1, value, aux)


def unrolled_fd(train_loss, val_loss, w, alphas, train_batch, val_batch, *, key, xi,
                epsilon=0.01, inner_optimizer=None, inner_opt_state=None):
  r"""DARTS' second-order estimate with its finite difference (Liu et al., 2019, eq. 7–8).

  One inner step :math:`w' = w - \xi u(w, \alpha)`, then

  .. math::
     v = \nabla_{w'} \mathcal L_{val}(w', \alpha), \qquad
     R = \frac{\epsilon}{\lVert v \rVert_2}, \qquad w^\pm = w \pm R v,

     g = \nabla_\alpha \mathcal L_{val}(w', \alpha)
       - \xi\, \frac{\nabla_\alpha \mathcal L_{train}(w^+, \alpha)
                     - \nabla_\alpha \mathcal L_{train}(w^-, \alpha)}{2R}

  as in quark0/darts ``architect.py``: the norm is over all weight leaves together, :math:`w^\pm`
  lie around the *original* :math:`w`, and the difference uses the same train batch (and key) as
  the inner step. The difference approximates the mixed product :math:`M v` with error
  :math:`O(\epsilon^2)`; :func:`unrolled_hvp` computes it exactly.

  Args:
    train_loss, val_loss, w, alphas, train_batch, val_batch, key: see the module docstring.
    xi: :math:`\xi`, the current weight learning rate (may be traced). It scales the mixed term,
      and is the inner step size when ``inner_optimizer`` is ``None``.
    epsilon: :math:`\epsilon` (0.01 in DARTS; may be traced).
    inner_optimizer: optax ``GradientTransformation`` whose ``update`` takes the inner step, so
      momentum and weight decay enter as in training: with
      ``optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, momentum=mu))`` the step is
      DARTS' :math:`w' = w - \mathrm{lr}(\mu m + \nabla_w \mathcal L_{train} + \mathrm{wd}\, w)`.
      ``None``: plain gradient descent :math:`w' = w - \xi \nabla_w \mathcal L_{train}`.
    inner_opt_state: that optimiser's state (``None``: ``inner_optimizer.init(w)``).

  Returns:
    ``(g, info)``; ``hvp_passes = 1`` (the finite-difference pair of gradients).
  """
  check_options("unrolled_fd", epsilon=epsilon)

  def fd(w0, tkey, v):
    norm = _norm(v)
    r = _cast(epsilon, norm) / jnp.maximum(norm, jnp.finfo(norm.dtype).tiny)
    grad_a = _grad_alpha_fn(train_loss, alphas, train_batch, tkey)
    g_plus, g_minus = grad_a(_axpy(r, v, w0)), grad_a(_axpy(-r, v, w0))
    return jax.tree.map(lambda p, m: (p - m) / _cast(2 * r, p), g_plus, g_minus)

  return _unrolled_one_step("unrolled_fd", train_loss, val_loss, w, alphas, train_batch,
                            val_batch, key, xi, inner_optimizer, inner_opt_state, fd)


def unrolled_hvp(train_loss, val_loss, w, alphas, train_batch, val_batch, *, key, xi,
                 inner_optimizer=None, inner_opt_state=None):
  r"""DARTS' second-order estimate with the mixed product exact.

  .. math::
     w' = w - \xi u(w, \alpha), \qquad
     g = \nabla_\alpha \mathcal L_{val}(w', \alpha)
       - \xi\, \nabla^2_{\alpha w} \mathcal L_{train}(w, \alpha)\, \nabla_{w'} \mathcal L_{val}(w', \alpha)

  with :math:`\nabla^2_{\alpha w} \mathcal L_{train}\, v` by :func:`mixed_product`. This is the
  exact gradient of :math:`\alpha \mapsto \mathcal L_{val}(w'(\alpha), \alpha)` whenever
  :math:`\partial w' / \partial \alpha = -\xi \nabla^2_{w\alpha} \mathcal L_{train}`: plain
  gradient descent, or SGD with momentum and weight decay with learning rate ``xi`` (then it equals
  :func:`unrolled_autodiff` with ``unroll_steps=1``). For adaptive optimisers (Adam) it is the
  DARTS approximation, not the exact gradient.

  Args:
    train_loss, val_loss, w, alphas, train_batch, val_batch, key: see the module docstring.
    xi, inner_optimizer, inner_opt_state: as in :func:`unrolled_fd`.

  Returns:
    ``(g, info)``; ``hvp_passes = 1`` (one mixed product).
  """
  def exact(w0, tkey, v):
    return mixed_product(train_loss, w0, alphas, train_batch, tkey, v)

  return _unrolled_one_step("unrolled_hvp", train_loss, val_loss, w, alphas, train_batch,
                            val_batch, key, xi, inner_optimizer, inner_opt_state, exact)


def unrolled_autodiff(train_loss, val_loss, w, alphas, train_batch, val_batch, *, key, xi=None,
                      unroll_steps=1, inner_optimizer=None, inner_opt_state=None):
  r"""The exact gradient through ``unroll_steps`` inner steps, by reverse-mode autodiff.

  .. math::
     w_0 = w, \quad (w_{t+1}, s_{t+1}) = \mathrm{step}(w_t, s_t; \alpha), \qquad
     g = \frac{d}{d\alpha} \mathcal L_{val}(w_T(\alpha), \alpha)

  where each step is the real ``inner_optimizer.update`` + ``optax.apply_updates`` (or plain
  :math:`w - \xi \nabla_w \mathcal L_{train}`), differentiated through its state as well. Every
  inner step uses the one given train batch and the same train key. For Adam, pass
  ``optax.adam(..., eps_root=1e-8)`` or similar: the derivative of :math:`\sqrt{\nu}` at
  :math:`\nu = 0` is infinite.

  Args:
    train_loss, val_loss, w, alphas, train_batch, val_batch, key: see the module docstring.
    xi: inner step size when ``inner_optimizer`` is ``None`` (may be traced); unused otherwise.
    unroll_steps: :math:`T`, a static Python int (0 gives :func:`first_order`).
    inner_optimizer, inner_opt_state: as in :func:`unrolled_fd`.

  Returns:
    ``(g, info)``; ``hvp_passes = T`` (one reverse pass through each inner gradient step).
  """
  steps = _static_int("unroll_steps", unroll_steps, 0)
  check_options("unrolled_autodiff", xi=xi)
  _check_inner("unrolled_autodiff", xi, steps, inner_optimizer, inner_opt_state)
  tkey = _train_key(key)

  def objective(a):
    w_t = _unroll(train_loss, w, a, train_batch, tkey, steps=steps, xi=xi,
                  inner_optimizer=inner_optimizer, inner_opt_state=inner_opt_state)
    return val_loss(w_t, a, val_batch, key)

  (value, aux), g = jax.value_and_grad(objective, has_aux=True)(alphas)
  return g, _info(steps, value, aux)


def neumann(train_loss, val_loss, w, alphas, train_batch, val_batch, *, key, xi=None, gamma=None,
            num_terms=2, unroll_steps=0, inner_optimizer=None, inner_opt_state=None,
            lambda_max=None):
  r"""iDARTS' Neumann-series hypergradient (Zhang et al., 2021), mixed term exact.

  After :math:`T` inner steps :math:`w \to w_T` (not differentiated through), with
  :math:`H = \nabla^2_{ww} \mathcal L_{train}(w_T, \alpha)`:

  .. math::
     v = \nabla_w \mathcal L_{val}(w_T, \alpha), \quad p_0 = s_0 = v, \quad
     p_{k} = p_{k-1} - \gamma H p_{k-1}, \quad s_k = s_{k-1} + p_k \;(k = 1..K),

     g = \nabla_\alpha \mathcal L_{val}(w_T, \alpha)
       - \gamma\, \nabla^2_{\alpha w} \mathcal L_{train}(w_T, \alpha)\, s_K

  i.e. :math:`H^{-1} \approx \gamma \sum_{k=0}^{K} (I - \gamma H)^k`, which converges to the IFT
  gradient as :math:`K \to \infty` when :math:`0 < \gamma < 2 / \lambda_{max}(H)` and
  :math:`H \succ 0`. The reference (miaozhang0525/iDARTS ``architect_hess.py``) uses :math:`K = 2`,
  :math:`\gamma` = the current weight lr, :math:`T` = 4 or 5 on fresh batches and a finite
  difference for the mixed term; here the inner steps reuse the one train batch (and key) that the
  Hessian products see, and the mixed product is exact.

  Args:
    train_loss, val_loss, w, alphas, train_batch, val_batch, key: see the module docstring.
    xi: inner step size when ``inner_optimizer`` is ``None``, and :math:`\gamma` when ``gamma`` is
      ``None`` (may be traced).
    gamma: :math:`\gamma` (may be traced); ``None`` means ``xi``.
    num_terms: :math:`K`, a static Python int (0 gives :math:`H^{-1} \approx \gamma I`).
    unroll_steps: :math:`T`, a static Python int; 0 evaluates at ``w`` itself.
    inner_optimizer, inner_opt_state: as in :func:`unrolled_fd`.
    lambda_max: :math:`\lambda_{max}(H)` where it is known (e.g. a study's problem); a concrete
      ``gamma >= 2 / lambda_max`` is then refused, since the series diverges there.

  Returns:
    ``(g, info)``; ``hvp_passes = K + 1`` (K Hessian products and one mixed product; the T inner
    steps are gradient evaluations). ``info["residual"]`` is :math:`\lVert p_K \rVert =
    \lVert (I - \gamma H)^K v \rVert = \lVert \gamma H s_{K-1} - v \rVert`, which bounds the
    residual :math:`\lVert \gamma H s_K - v \rVert` when the series converges.
  """
  k_terms = _static_int("num_terms", num_terms, 0)
  steps = _static_int("unroll_steps", unroll_steps, 0)
  if gamma is None:
    gamma = xi
  if gamma is None:
    raise JaxnasError("neumann needs gamma (or xi, the current weight learning rate, as gamma)")
  check_options("neumann", xi=xi, gamma=gamma, lambda_max=lambda_max)
  _check_inner("neumann", xi, steps, inner_optimizer, inner_opt_state)
  tkey = _train_key(key)
  w_t = _unroll(train_loss, w, alphas, train_batch, tkey, steps=steps, xi=xi,
                inner_optimizer=inner_optimizer, inner_opt_state=inner_opt_state)
  (value, aux), (v, g_val) = _val_grads(val_loss, w_t, alphas, val_batch, key)
  _, h = jax.linearize(_grad_w_fn(train_loss, alphas, train_batch, tkey), w_t)

  def body(_, ps):
    p, s = ps
    p = _axpy(-gamma, h(p), p)
    return p, _add(s, p)

  p, s = jax.lax.fori_loop(0, k_terms, body, (v, v))
  m = mixed_product(train_loss, w_t, alphas, train_batch, tkey, s)
  return _axpy(-gamma, m, g_val), _info(k_terms + 1, value, aux, residual=_norm(p))


def cg(train_loss, val_loss, w, alphas, train_batch, val_batch, *, key, damping=0.0, maxiter=10,
       tol=1e-5):
  r"""Implicit hypergradient with a damped conjugate-gradient solve on HVPs.

  .. math::
     (H + \lambda I)\, x = \nabla_w \mathcal L_{val}(w, \alpha), \qquad
     g = \nabla_\alpha \mathcal L_{val}(w, \alpha)
       - \nabla^2_{\alpha w} \mathcal L_{train}(w, \alpha)\, x

  with :math:`H = \nabla^2_{ww} \mathcal L_{train}(w, \alpha)` applied matrix-free
  (forward-over-reverse, linearised once). The IFT gradient when :math:`\lambda = 0` and ``w`` is
  stationary. :math:`H` is often indefinite away from a minimum, where plain CG can diverge;
  :math:`\lambda > 0` damps it. The solve follows ``jax.scipy.sparse.linalg.cg`` (same iteration
  and stopping rule, :math:`x_0 = 0`) but also reports its iteration count.

  Args:
    train_loss, val_loss, w, alphas, train_batch, val_batch, key: see the module docstring.
    damping: :math:`\lambda \ge 0` (may be traced).
    maxiter: most CG iterations, a static Python int.
    tol: stop when :math:`\lVert r \rVert \le \mathrm{tol}\, \lVert \nabla_w \mathcal L_{val}
      \rVert` (may be traced).

  Returns:
    ``(g, info)``; ``hvp_passes = iterations + 1`` (one HVP per CG iteration and one mixed
    product). ``info["residual"]`` is :math:`\lVert (H + \lambda I)x - \nabla_w \mathcal L_{val}
    \rVert` (CG's recursive residual) and ``info["iterations"]`` the iteration count.
  """
  maxiter = _static_int("maxiter", maxiter, 0)
  check_options("cg", damping=damping, tol=tol)
  tkey = _train_key(key)
  (value, aux), (v, g_val) = _val_grads(val_loss, w, alphas, val_batch, key)
  _, h = jax.linearize(_grad_w_fn(train_loss, alphas, train_batch, tkey), w)
  x, residual, iterations = _cg(lambda p: _axpy(damping, p, h(p)), v, tol=tol, maxiter=maxiter)
  m = mixed_product(train_loss, w, alphas, train_batch, tkey, x)
  info = _info(iterations + 1, value, aux, residual=residual, iterations=iterations)
  return _sub(g_val, m), info


def dense_ift(train_loss, val_loss, w, alphas, train_batch, val_batch, *, key, damping=0.0):
  r"""The IFT hypergradient with the weight Hessian materialised and solved exactly.

  .. math::
     x = (H + \lambda I)^{-1} \nabla_w \mathcal L_{val}(w, \alpha), \qquad
     g = \nabla_\alpha \mathcal L_{val}(w, \alpha)
       - \nabla^2_{\alpha w} \mathcal L_{train}(w, \alpha)\, x

  :math:`H` is ``jax.hessian`` of the train loss in the weights flattened by
  ``jax.flatten_util.ravel_pytree`` (an :math:`n \times n` matrix for :math:`n` weights), solved by
  ``jnp.linalg.solve``. For tiny problems only: the ground truth that tests and the study compare
  against.

  Args:
    train_loss, val_loss, w, alphas, train_batch, val_batch, key: see the module docstring.
    damping: :math:`\lambda` (may be traced; 0 is the IFT gradient).

  Returns:
    ``(g, info)``; ``hvp_passes = n + 1`` (the Hessian costs n HVPs, then one mixed product).
  """
  check_options("dense_ift", damping=damping)
  tkey = _train_key(key)
  (value, aux), (v, g_val) = _val_grads(val_loss, w, alphas, val_batch, key)
  flat_w, unravel = ravel_pytree(w)
  hessian = jax.hessian(lambda f: train_loss(unravel(f), alphas, train_batch, tkey)[0])(flat_w)
  flat_v, _ = ravel_pytree(v)
  eye = jnp.eye(flat_w.size, dtype=hessian.dtype)
  x = jnp.linalg.solve(hessian + _cast(damping, hessian) * eye, flat_v)
  m = mixed_product(train_loss, w, alphas, train_batch, tkey, unravel(x))
  return _sub(g_val, m), _info(flat_w.size + 1, value, aux)


# ----------------------------------------------------------------------------------------------
# Registry.

ESTIMATORS: dict[str, Estimator] = {
    "first_order": first_order,
    "mixed_level": mixed_level,
    "unrolled_fd": unrolled_fd,
    "unrolled_hvp": unrolled_hvp,
    "unrolled_autodiff": unrolled_autodiff,
    "neumann": neumann,
    "cg": cg,
    "dense_ift": dense_ift,
}


def option_names(name: str) -> tuple[str, ...]:
  """The keyword options the estimator called ``name`` accepts (``key`` excluded), sorted.

  A search step can test ``"xi" in option_names(name)`` to know whether to pass the current
  weight learning rate.

  Raises:
    JaxnasError: if ``name`` is not an estimator.
  """
  if name not in ESTIMATORS:
    raise unknown_name("estimator", name, ESTIMATORS)
  params = inspect.signature(ESTIMATORS[name]).parameters.values()
  return tuple(sorted(p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name != "key"))


def get(name: str, **options) -> Estimator:
  """Returns the estimator called ``name`` with ``options`` bound (a ``functools.partial``).

  Options left unbound (``xi``, ``inner_opt_state``, ...) can still be passed at call time.

  Example: train loss :math:`(w - a)^2/2` (so :math:`w^* = a`), val loss :math:`(w - 1)^2/2`;
  the hypergradient of :math:`(a - 1)^2/2` at :math:`a = w = 0.5` is :math:`-0.5`, where
  first order gives 0.

  >>> import jax.numpy as jnp
  >>> from jaxnas import hypergrad
  >>> train = lambda w, a, batch, key: ((w - a) ** 2 / 2, None)
  >>> val = lambda w, a, batch, key: ((w - 1.0) ** 2 / 2, None)
  >>> estimate = hypergrad.get("cg", maxiter=5)
  >>> g, info = estimate(train, val, jnp.asarray(0.5), jnp.asarray(0.5), None, None, key=None)
  >>> float(g), int(info["hvp_passes"])
  (-0.5, 2)

  Raises:
    JaxnasError: if ``name`` is not an estimator (the message lists those that are), or an option
      is not one that estimator takes (the message lists those it does), or a numeric option
      is out of range (:func:`check_options`).
  """
  known = option_names(name)
  unknown = sorted(set(options) - set(known))
  if unknown:
    raise JaxnasError(
        f"estimator {name!r} takes no option {', '.join(map(repr, unknown))}; "
        f"its options are: {', '.join(known) or '(none)'}"
    )
  check_options(name, **options)
  fn = ESTIMATORS[name]
  return functools.partial(fn, **options) if options else fn
