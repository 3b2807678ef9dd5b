r"""How far each hypergradient estimator is from the exact one, and what it costs.

:func:`hypergrad_study` sets up a small bilevel problem whose inner problem is solved to a strict
local minimum, computes the exact implicit-function-theorem hypergradient there with
:func:`jaxnas.hypergrad.dense_ift`, sweeps every estimator's knobs, and records for each setting the
relative error and cosine similarity to that reference, the HVP-equivalent passes and the wall time.

Problems (data drawn from ``seed``; float64 throughout):

- ``ridge``: :math:`\mathcal L_{train} = \lVert X_t w - y_t \rVert^2 / 2n + \tfrac12 \sum_i
  e^{\alpha_i} w_i^2`, :math:`\mathcal L_{val} = \lVert X_v w - y_v \rVert^2 / 2m`, one penalty per
  feature (so the hypergradient is a vector and its direction means something), features on
  scales from 1 to 0.1 so the Hessian is moderately ill-conditioned. :math:`w^*` and the
  hypergradient have closed forms,
  :math:`d\mathcal L_{val}/d\alpha = -\,e^{\alpha} \odot w^* \odot A^{-1} \nabla_w \mathcal L_{val}`
  with :math:`A = X_t^\top X_t / n + \mathrm{diag}(e^\alpha)`; the study checks ``dense_ift``
  against it (``reference_vs_closed_form``).
- ``logistic``: multiclass logistic regression (weights ``W`` and bias ``b``), mean cross-entropy
  plus :math:`\tfrac12 \sum_i e^{\alpha_i} \lVert W_{i,:} \rVert^2` (one penalty per input feature)
  plus a fixed :math:`\tfrac{1}{2} 10^{-2} \lVert b \rVert^2` (softmax is shift-invariant in
  :math:`b`, which would leave :math:`H` singular), optimised to stationarity by Newton's method.
- ``toy``: a two-edge mixed-op network
  :math:`y = \sum_k \mathrm{softmax}(\alpha_2)_k V_k \tanh(\sum_k \mathrm{softmax}(\alpha_1)_k
  W_k x) + b` with MSE and a fixed weight decay :math:`10^{-3}`, trained to a local minimum by
  Levenberg–Marquardt on the dense Hessian. Unlike ridge and logistic, :math:`\alpha` enters
  :math:`\nabla_\alpha \mathcal L_{train}` non-quadratically in :math:`w`, so the finite
  difference of ``unrolled_fd`` has a truncation error (in those two it is exact up to rounding).
- ``supernet``: a real jaxnas supernet: the NAS-Bench-201 space (:func:`jaxnas.spaces.get`,
  C = 2, one cell per stage, 6,504 weights) with the softmax relaxation, in float64, on a fixed
  class-balanced subset of the embedded digits (8×8×1): 5 search-train images per class as the
  train batch, 5 search-val images per class as the val batch, both full batches, BN in train mode
  (so every loss is a deterministic function of weights, alphas and batch). Weights and alphas come
  from 100 steps of ``darts-1st`` (:func:`jaxnas.search.make_search_step`) on those batches. The
  inner variables :math:`w` are then the classifier head (``Dense`` 8 → 10, 90 weights), the rest
  of the supernet frozen, and
  :math:`\mathcal L_{train} = \mathrm{CE} + \tfrac{\lambda_w}{2} \lVert w \rVert^2` with the
  search's own weight decay :math:`\lambda_w = 3 \cdot 10^{-4}`; :math:`\mathcal L_{val}` is the
  plain cross-entropy. :math:`\alpha` (6 edges × 5 ops) still reaches both losses through every
  mixed op of the network. The inner problem is strictly convex (cross-entropy is convex in the
  head, the decay makes it strict; without it the softmax's shift invariance in the bias leaves
  :math:`H` singular), and Newton's method solves it to :math:`\lVert \nabla_w \mathcal L_{train}
  \rVert \approx 10^{-14}`.

  Why not all 6,504 (or, at C = 1, 1,717) weights as inner variables: the network is piecewise
  smooth (ReLU), and its regularised training loss takes its minima on ReLU kinks, where the
  Hessian the IFT needs does not exist. Measured on the C = 1 supernet (1,717 weights, 10–20
  images, weight decay :math:`3 \cdot 10^{-4}` to :math:`10^{-2}`; the decay does remove the
  singularity that affine-free batch norm's scale invariance would leave): Adam then trust-region
  Newton–CG stalled at :math:`\lVert \nabla \rVert \approx 10^{-2}`, the gradient jumped by
  :math:`4 \cdot 10^{-2}` across steps of :math:`10^{-5}` (a smooth function with
  :math:`\lambda_{max} \approx 10^2` allows :math:`10^{-3}`), and :math:`H` kept eigenvalues down
  to :math:`-0.05`. The head sits after the last ReLU, so its loss is smooth.

**Stationarity check.** Before any estimator runs, the study computes
:math:`\lVert \nabla_w \mathcal L_{train}(w^*) \rVert` and the eigenvalues of the dense
:math:`H = \nabla^2_{ww} \mathcal L_{train}(w^*)` (``jax.hessian`` on the weights flattened by
``ravel_pytree``), records both (``inner_grad_norm``, ``hessian_eig_min``, ``hessian_eig_max``), and
raises :class:`~jaxnas.errors.JaxnasError` unless the gradient norm is at most
:data:`STATIONARY_TOL` and :math:`\lambda_{min}(H) > 0`: a strict local minimum, where the IFT
gives the exact hypergradient.

Every estimator is evaluated at :math:`w^*` with step size :math:`\xi = 1/\lambda_{max}(H)` for the
unrolled ones.
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxnas import data, hypergrad, methods, relax, search, spaces
from jaxnas.errors import JaxnasError, unknown_name

__all__ = ["hypergrad_study", "PROBLEMS", "STATIONARY_TOL", "STUDY_COLUMNS"]

STATIONARY_TOL = 1e-8  # largest ‖∇_w L_train(w*)‖ the study accepts as stationary

# The columns of study.csv and study.md, one row per estimator setting.
STUDY_COLUMNS = ("estimator", "options", "rel_error", "cosine", "hvp_passes", "wall_time_s")


class Problem(NamedTuple):
  """A bilevel problem at its inner optimum."""
  train_loss: Callable
  val_loss: Callable
  w: Any
  alphas: Any
  train: Any
  val: Any
  closed_form: Any  # the exact hypergradient, or None
  facts: dict  # what the problem's builder reports about itself (sizes, solver steps, ...)


def _newton(objective: Callable, w0, *, tol: float = 1e-12, max_steps: int = 50):
  """Minimises a smooth, strictly convex ``objective(w)`` by Newton's method with backtracking.

  Returns ``(w, steps)``: the point where ``‖∇ objective‖ <= tol`` (or the last iterate after
  ``max_steps``; the caller's stationarity check decides) and the number of Newton steps taken.
  """
  flat, unravel = ravel_pytree(w0)
  f = lambda x: objective(unravel(x))  # noqa: E731
  parts = jax.jit(lambda x: (f(x), jax.grad(f)(x), jax.hessian(f)(x)))
  value, grad, hessian = parts(flat)
  steps = 0
  while steps < max_steps and float(jnp.linalg.norm(grad)) > tol:
    direction = -jnp.linalg.solve(hessian, grad)
    t = 1.0
    while True:
      candidate = parts(flat + t * direction)
      if float(candidate[0]) <= float(value) * (1 + 1e-14) or t < 1e-10:  # rounding slack
        break
      t /= 2
    flat, (value, grad, hessian) = flat + t * direction, candidate
    steps += 1
  return unravel(flat), steps


def _ridge(seed: int) -> Problem:
  rng = np.random.default_rng(seed)
  n, m, d = 200, 200, 20
  scales = np.logspace(0.0, -1.0, d)
  xt, xv = rng.normal(size=(n, d)) * scales, rng.normal(size=(m, d)) * scales
  w_true = rng.normal(size=d) / scales
  yt = xt @ w_true + 0.5 * rng.normal(size=n)
  yv = xv @ w_true + 0.5 * rng.normal(size=m)
  log_lam = np.log(1e-3) + 0.5 * rng.normal(size=d)
  a = xt.T @ xt / n + np.diag(np.exp(log_lam))
  w_star = np.linalg.solve(a, xt.T @ yt / n)
  grad_val = xv.T @ (xv @ w_star - yv) / m
  closed_form = -np.exp(log_lam) * w_star * np.linalg.solve(a, grad_val)

  def train_loss(w, alphas, batch, key):
    del key
    x, y = batch
    r = x @ w - y
    mse = r @ r / (2 * y.shape[0])
    return mse + jnp.sum(jnp.exp(alphas) * w * w) / 2, {"mse": mse}

  def val_loss(w, alphas, batch, key):
    del alphas, key
    x, y = batch
    r = x @ w - y
    mse = r @ r / (2 * y.shape[0])
    return mse, {"mse": mse}

  return Problem(train_loss, val_loss, jnp.asarray(w_star), jnp.asarray(log_lam),
                 (jnp.asarray(xt), jnp.asarray(yt)), (jnp.asarray(xv), jnp.asarray(yv)),
                 jnp.asarray(closed_form), {})


def _logistic(seed: int) -> Problem:
  rng = np.random.default_rng(seed)
  n, m, d, c = 300, 300, 10, 4
  means = 1.5 * rng.normal(size=(c, d))
  yt, yv = rng.integers(0, c, size=n), rng.integers(0, c, size=m)
  xt = means[yt] + rng.normal(size=(n, d)) * 2.0
  xv = means[yv] + rng.normal(size=(m, d)) * 2.0
  log_lam = np.log(1e-2) + 0.5 * rng.normal(size=d)

  def cross_entropy(w, x, y):
    logits = x @ w["W"] + w["b"]
    logp = jax.nn.log_softmax(logits)
    ce = -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))
    accuracy = jnp.mean((jnp.argmax(logits, axis=1) == y).astype(logits.dtype))
    return ce, accuracy

  def train_loss(w, alphas, batch, key):
    del key
    ce, accuracy = cross_entropy(w, *batch)
    penalty = jnp.sum(jnp.exp(alphas)[:, None] * w["W"] ** 2) / 2 + 1e-2 * jnp.sum(w["b"] ** 2) / 2
    return ce + penalty, {"cross_entropy": ce, "accuracy": accuracy}

  def val_loss(w, alphas, batch, key):
    del alphas, key
    ce, accuracy = cross_entropy(w, *batch)
    return ce, {"cross_entropy": ce, "accuracy": accuracy}

  train = (jnp.asarray(xt), jnp.asarray(yt))
  alphas = jnp.asarray(log_lam)
  w0 = {"W": jnp.zeros((d, c)), "b": jnp.zeros(c)}
  w, steps = _newton(lambda w: train_loss(w, alphas, train, None)[0], w0, tol=1e-13)
  return Problem(train_loss, val_loss, w, alphas, train, (jnp.asarray(xv), jnp.asarray(yv)), None,
                 {"newton_steps": steps})


def _toy_forward(w, alphas, x):
  m1, m2 = jax.nn.softmax(alphas["edge1"]), jax.nn.softmax(alphas["edge2"])
  h = jnp.tanh(jnp.einsum("k,koi,bi->bo", m1, w["w1"], x))
  return jnp.einsum("k,koi,bi->bo", m2, w["w2"], h) + w["bias"]


def _toy(seed: int) -> Problem:
  rng = np.random.default_rng(seed)
  ops, d_in, d_hidden, d_out, n = 3, 4, 5, 2, 64

  def weights(scale):
    return {"w1": jnp.asarray(scale * rng.normal(size=(ops, d_hidden, d_in))),
            "w2": jnp.asarray(scale * rng.normal(size=(ops, d_out, d_hidden))),
            "bias": jnp.asarray(0.1 * rng.normal(size=d_out))}

  teacher = weights(0.8)
  alphas = {"edge1": jnp.asarray(0.5 * rng.normal(size=ops)),
            "edge2": jnp.asarray(0.5 * rng.normal(size=ops))}
  xt, xv = jnp.asarray(rng.normal(size=(n, d_in))), jnp.asarray(rng.normal(size=(n, d_in)))
  yt = _toy_forward(teacher, alphas, xt) + 0.1 * jnp.asarray(rng.normal(size=(n, d_out)))
  yv = _toy_forward(teacher, alphas, xv) + 0.1 * jnp.asarray(rng.normal(size=(n, d_out)))

  def mse(w, alphas, batch):
    x, y = batch
    return jnp.mean((_toy_forward(w, alphas, x) - y) ** 2) / 2

  def train_loss(w, alphas, batch, key):
    del key
    value = mse(w, alphas, batch)
    decay = sum(jnp.sum(leaf ** 2) for leaf in jax.tree.leaves(w))
    return value + 1e-3 * decay / 2, {"mse": value}

  def val_loss(w, alphas, batch, key):
    del key
    value = mse(w, alphas, batch)
    return value, {"mse": value}

  flat, unravel = ravel_pytree(weights(0.5))
  objective = lambda f: train_loss(unravel(f), alphas, (xt, yt), None)[0]  # noqa: E731

  @jax.jit
  def levenberg_marquardt(f, mu):
    g, h = jax.grad(objective)(f), jax.hessian(objective)(f)
    candidate = f - jnp.linalg.solve(h + mu * jnp.eye(f.size, dtype=f.dtype), g)
    better = objective(candidate) <= objective(f)
    return (jnp.where(better, candidate, f), jnp.where(better, mu / 3, mu * 3),
            jnp.linalg.norm(g))

  mu = jnp.asarray(1.0)
  for steps in range(1, 301):
    flat, mu, grad_norm = levenberg_marquardt(flat, mu)
    if grad_norm < 1e-10:
      break
  return Problem(train_loss, val_loss, unravel(flat), alphas, (xt, yt), (xv, yv), None,
                 {"levenberg_marquardt_steps": steps})


# The supernet problem's sizes (see the module docstring).
_SUPERNET_CHANNELS = 2
_SUPERNET_IMAGES_PER_CLASS = 5
_SUPERNET_SEARCH_STEPS = 100


def _class_subset(x, y, per_class: int, rng) -> dict:
  """``per_class`` images of every class, drawn without replacement, as a float64 batch."""
  rows = np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False)
                         for c in np.unique(y)])
  return {"image": jnp.asarray(x[rows], jnp.float64), "label": jnp.asarray(y[rows])}


def _supernet(seed: int) -> Problem:
  dataset = data.load("digits")
  rng = np.random.default_rng(seed)
  train = _class_subset(dataset.train_x, dataset.train_y, _SUPERNET_IMAGES_PER_CLASS, rng)
  val = _class_subset(dataset.val_x, dataset.val_y, _SUPERNET_IMAGES_PER_CLASS, rng)
  space_config = dict(channels=_SUPERNET_CHANNELS, cells_per_stage=1,
                      num_classes=dataset.num_classes)
  model = spaces.get("nb201", **space_config, dtype=jnp.float64)
  recipe = methods.get("darts-1st")
  steps = _SUPERNET_SEARCH_STEPS
  state = search.init_search_state(model, recipe, jax.random.key(seed), dataset.image_shape,
                                   steps_per_epoch=steps, epochs=1)
  step_fn = search.make_search_step(model, recipe, steps_per_epoch=steps, epochs=1)
  for _ in range(steps):
    state, metrics = step_fn(state, train, val)

  cross_entropy = search.make_losses(model, relax.softmax, state.batch_stats)
  frozen = {k: v for k, v in state.weights.items() if k != "classifier"}
  weight_decay = recipe.weight_optimizer.weight_decay

  def val_loss(head, alphas, batch, key):
    return cross_entropy({**frozen, "classifier": head}, alphas, batch, key)

  def train_loss(head, alphas, batch, key):
    value, aux = val_loss(head, alphas, batch, key)
    decay = sum(jnp.sum(leaf ** 2) for leaf in jax.tree.leaves(head))
    return value + weight_decay * decay / 2, aux

  head, newton_steps = _newton(lambda h: train_loss(h, state.alphas, train, None)[0],
                               state.weights["classifier"])
  facts = {
      "space": "nb201", "space_config": space_config,
      "supernet_weights": int(ravel_pytree(state.weights)[0].size),
      "inner_weights": "classifier (Dense), the rest of the supernet frozen",
      "train_images": int(train["label"].size), "val_images": int(val["label"].size),
      "pretraining": {"method": recipe.name, "steps": steps,
                      "train_loss": float(metrics["train_loss"]),
                      "train_accuracy": float(metrics["train_accuracy"]),
                      "val_loss": float(metrics["val_loss"]),
                      "val_accuracy": float(metrics["val_accuracy"])},
      "weight_decay": weight_decay, "newton_steps": newton_steps,
  }
  return Problem(train_loss, val_loss, head, state.alphas, train, val, None, facts)


PROBLEMS: dict[str, Callable[[int], Problem]] = {
    "ridge": _ridge, "logistic": _logistic, "toy": _toy, "supernet": _supernet}


def _flat(tree):
  return np.asarray(ravel_pytree(tree)[0], dtype=np.float64)


def _compare(g, ref):
  g, ref = _flat(g), _flat(ref)
  ref_norm, g_norm = np.linalg.norm(ref), np.linalg.norm(g)
  rel_error = float(np.linalg.norm(g - ref) / ref_norm)
  cosine = float(g @ ref / (g_norm * ref_norm)) if g_norm > 0 else None
  return rel_error, cosine


def _finite_or_none(x):
  x = float(x)
  return x if math.isfinite(x) else None


def _sweep(lam_max: float):
  """``(estimator, series label, static options, traced options)`` for every setting."""
  lr = 1.0 / lam_max
  yield "first_order", "first_order", {}, {}
  yield "mixed_level", "mixed_level λ=1", {}, {"mixed_weight": 1.0}
  yield "unrolled_hvp", "unrolled_hvp", {}, {"xi": lr}
  for eps in (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6):
    yield "unrolled_fd", "unrolled_fd", {}, {"xi": lr, "epsilon": eps}
  for steps in (1, 2, 5, 10, 20, 50, 100):
    yield "unrolled_autodiff", "unrolled_autodiff ξ=1/λmax", {"unroll_steps": steps}, {"xi": lr}
  for factor in (0.5, 1.0, 1.9):
    for k_terms in (0, 1, 2, 5, 10, 20, 50, 100):
      yield ("neumann", f"neumann γ={factor:g}/λmax", {"num_terms": k_terms},
             {"gamma": factor * lr})
  for rel_damping in (0.0, 1e-3, 1e-2, 1e-1):
    for maxiter in (1, 2, 3, 5, 10, 20, 50):
      yield ("cg", f"cg λ={rel_damping:g}·λmax", {"maxiter": maxiter},
             {"damping": rel_damping * lam_max, "tol": 1e-14})
  yield "dense_ift", "dense_ift", {}, {}


def hypergrad_study(problem: str, out_dir: str, *, seed: int = 0, repeats: int = 5) -> dict:
  r"""Sweeps every hypergradient estimator on a small problem against the exact hypergradient.

  For each setting (FD :math:`\epsilon \in 10^{-1..-6}`; Neumann :math:`K \in 0..100` for
  :math:`\gamma \in \{0.5, 1, 1.9\}/\lambda_{max}`; CG ``maxiter`` in 1..50 for damping
  :math:`\in \{0, 10^{-3}, 10^{-2}, 10^{-1}\}\lambda_{max}`; ``unroll_steps`` in 1..100;
  first order, mixed level, one-step unrolled HVP and ``dense_ift`` once each) it records

  .. math:: \text{rel\_error} = \frac{\lVert g - g_{ref} \rVert}{\lVert g_{ref} \rVert}, \qquad
     \text{cosine} = \frac{\langle g, g_{ref} \rangle}{\lVert g \rVert \lVert g_{ref} \rVert}

  with :math:`g_{ref}` from ``dense_ift`` at the same :math:`w^*`, the ``hvp_passes`` the estimator
  reports, and its median wall time over ``repeats`` jitted calls (compilation excluded; a knob
  that is a traced option shares one compilation). Unrolled FD also records its error against
  ``unrolled_hvp``, the quantity its finite difference approximates.

  Writes into ``out_dir`` (created if needed):

  - ``study.json``: the returned dict;
  - ``study.csv``: one row per setting with the :data:`STUDY_COLUMNS` (``options`` as a JSON
    object; numbers written exactly, so each row equals its JSON record);
  - ``study.md``: the problem's facts and the same rows as a Markdown table, numbers rounded for
    reading (relative error to 3 significant digits, cosine to 6 decimals, time in ms or s);
  - ``study.png``: relative error against passes and against wall time, log-log, one line per
    estimator setting; FD error against :math:`\epsilon`.

  Args:
    problem: ``"ridge"``, ``"logistic"``, ``"toy"`` or ``"supernet"`` (see the module docstring).
    out_dir: directory for the four files.
    seed: seed of the synthetic data (for ``supernet``: of the image subset, the initialisation
      and the pretraining search).
    repeats: timed calls per setting.

  Returns:
    The dict written to ``study.json``: problem facts (sizes, the stationarity check's
    ``inner_grad_norm`` and Hessian extreme eigenvalues, reference norm, for ridge the reference's
    error against the closed form, the builder's own ``problem_facts``) and ``runs``, one record
    per setting with ``estimator``, ``series``, ``options``, ``hvp_passes``, ``rel_error``,
    ``cosine``, ``wall_time_s`` and, where reported, ``residual``.

  Raises:
    JaxnasError: if ``problem`` is not one of :data:`PROBLEMS`, or if its inner solve did not end
      at a strict local minimum (see the module docstring).
  """
  if problem not in PROBLEMS:
    raise unknown_name("study problem", problem, PROBLEMS)
  with jax.enable_x64(True):
    summary = _study(problem, seed, repeats)
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "study.json"), "w") as f:
    json.dump(summary, f, indent=1)
  _write_csv(os.path.join(out_dir, "study.csv"), summary["runs"], STUDY_COLUMNS)
  with open(os.path.join(out_dir, "study.md"), "w") as f:
    f.write(_study_markdown(summary))
  _plot(summary, os.path.join(out_dir, "study.png"))
  return summary


def _check_stationary(problem: str, grad_norm: float, eig_min: float) -> None:
  """Raises a one-line JaxnasError unless ``w*`` is a strict local minimum of the train loss."""
  if not (grad_norm <= STATIONARY_TOL and eig_min > 0):
    raise JaxnasError(
        f"the {problem} problem's inner solve did not reach a strict local minimum "
        f"(‖∇_w L_train‖ = {grad_norm:.3g}, needs ≤ {STATIONARY_TOL:g}; smallest Hessian "
        f"eigenvalue {eig_min:.3g}, needs > 0), so the IFT reference would be wrong; try another "
        "seed")


def _study(problem: str, seed: int, repeats: int) -> dict:
  p = PROBLEMS[problem](seed)
  flat_w, unravel = ravel_pytree(p.w)
  objective = lambda f: p.train_loss(unravel(f), p.alphas, p.train, None)[0]  # noqa: E731
  grad, hessian = jax.jit(lambda f: (jax.grad(objective)(f), jax.hessian(objective)(f)))(flat_w)
  eigs = np.linalg.eigvalsh(np.asarray(hessian))
  grad_norm = float(jnp.linalg.norm(grad))
  _check_stationary(problem, grad_norm, float(eigs[0]))
  compiled = {}

  def evaluate(name, static, traced):
    cache_key = (name, tuple(sorted(static.items())))
    if cache_key not in compiled:
      est = hypergrad.get(name, **static)
      compiled[cache_key] = jax.jit(
          lambda numbers: est(p.train_loss, p.val_loss, p.w, p.alphas, p.train, p.val, key=None,
                              **numbers))
    fn = compiled[cache_key]
    numbers = {k: jnp.asarray(v) for k, v in traced.items()}
    out = jax.block_until_ready(fn(numbers))
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      jax.block_until_ready(fn(numbers))
      times.append(time.perf_counter() - start)
    return out, statistics.median(times)

  (reference, _), _ = evaluate("dense_ift", {}, {})
  (hvp_target, _), _ = evaluate("unrolled_hvp", {}, {"xi": 1.0 / float(eigs[-1])})
  runs = []
  for name, series, static, traced in _sweep(float(eigs[-1])):
    (g, info), wall = evaluate(name, static, traced)
    rel_error, cosine = _compare(g, reference)
    record = {"estimator": name, "series": series,
              "options": {**static, **{k: float(v) for k, v in traced.items()}},
              "hvp_passes": int(info["hvp_passes"]), "rel_error": _finite_or_none(rel_error),
              "cosine": None if cosine is None else _finite_or_none(cosine),
              "wall_time_s": wall, "val_loss": _finite_or_none(info["val_loss"])}
    if "residual" in info:
      record["residual"] = _finite_or_none(info["residual"])
    if name == "unrolled_fd":
      record["rel_error_vs_unrolled_hvp"] = _finite_or_none(_compare(g, hvp_target)[0])
    runs.append(record)
  summary = {
      "problem": problem, "seed": seed, "reference": "dense_ift", "backend": jax.default_backend(),
      "dtype": str(flat_w.dtype), "n_weights": int(flat_w.size),
      "n_alphas": int(ravel_pytree(p.alphas)[0].size), "hessian_eig_min": float(eigs[0]),
      "hessian_eig_max": float(eigs[-1]), "inner_grad_norm": grad_norm,
      "stationary_tol": STATIONARY_TOL,
      "reference_norm": float(np.linalg.norm(_flat(reference))), "repeats": repeats,
      "problem_facts": p.facts, "runs": runs,
  }
  if p.closed_form is not None:
    summary["reference_vs_closed_form"] = _compare(reference, p.closed_form)[0]
  return summary


# ----------------------------------------------------------------------------------------------
# Tables: CSV with exact numbers, Markdown rounded for reading.


def _csv_cell(value) -> str:
  """A CSV field: '' for None, JSON for a dict, the shortest exact repr for a float."""
  if value is None:
    return ""
  if isinstance(value, dict):
    return json.dumps(value, sort_keys=True)
  if isinstance(value, float):
    return repr(value)
  return str(value)


def _write_csv(path: str, records: Sequence[dict], columns: Sequence[str]) -> None:
  """Writes ``records`` as CSV rows of ``columns`` (a header line first)."""
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(columns)
    for record in records:
      writer.writerow([_csv_cell(record.get(c)) for c in columns])


def _number(x: float) -> str:
  """Three significant digits: ``0.0834``, ``1.23e-07``; ``—`` for None."""
  if x is None:
    return "—"
  return "0" if x == 0 else f"{x:.3g}"


def _options_text(options: dict) -> str:
  return ", ".join(f"{k}={_number(v) if isinstance(v, float) else v}"
                   for k, v in options.items()) or "—"


def _seconds_text(s: float) -> str:
  return f"{s * 1e3:.3g} ms" if s < 1 else f"{s:.3g} s"


def _markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  """A GitHub Markdown table; ``|`` inside a cell is escaped."""
  cell = lambda text: str(text).replace("|", "\\|")  # noqa: E731
  lines = ["| " + " | ".join(map(cell, headers)) + " |",
           "|" + "|".join("---" for _ in headers) + "|"]
  lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def _study_markdown(summary: dict) -> str:
  """``study.md``: the problem's facts, then one table row per estimator setting."""
  facts = [
      f"- {summary['n_weights']} inner weights, {summary['n_alphas']} alphas, "
      f"{summary['dtype']} on {summary['backend']}",
      f"- stationarity: ‖∇_w L_train(w*)‖ = {summary['inner_grad_norm']:.3g} "
      f"(≤ {summary['stationary_tol']:g} required); eigenvalues of H in "
      f"[{summary['hessian_eig_min']:.3g}, {summary['hessian_eig_max']:.3g}]",
      f"- reference: {summary['reference']}, ‖g_ref‖ = {summary['reference_norm']:.3g}",
      f"- wall time: median of {summary['repeats']} jitted call(s), compilation excluded",
  ]
  if "reference_vs_closed_form" in summary:
    facts.append(f"- reference against the closed form: relative error "
                 f"{summary['reference_vs_closed_form']:.3g}")
  for key, value in summary["problem_facts"].items():
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, dict) else value
    facts.append(f"- {key.replace('_', ' ')}: {text}")
  rows = [(r["estimator"], _options_text(r["options"]), _number(r["rel_error"]),
           "—" if r["cosine"] is None else f"{r['cosine']:.6f}", r["hvp_passes"],
           _seconds_text(r["wall_time_s"])) for r in summary["runs"]]
  table = _markdown_table(
      ("estimator", "options", "rel. error", "cosine", "HVP passes", "wall time"), rows)
  return (f"# Hypergradient estimators on `{summary['problem']}` (seed {summary['seed']})\n\n"
          + "\n".join(facts) + "\n\n" + table)


def _plot(summary: dict, path: str) -> None:
  import matplotlib  # noqa: PLC0415  (plotting is optional work; keep the import local)
  from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

  floor = 1e-17  # exact zeros (the reference against itself) drawn at the floor
  series: dict[str, list] = {}
  for run in summary["runs"]:
    series.setdefault(run["series"], []).append(run)
  fig = Figure(figsize=(17, 5.5), layout="constrained")
  ax_pass, ax_time, ax_eps = fig.subplots(1, 3)
  colors = matplotlib.colormaps["tab20"].colors
  for i, (label, runs) in enumerate(series.items()):
    err = [max(r["rel_error"], floor) if r["rel_error"] is not None else np.nan for r in runs]
    style = dict(marker="*" if label == "dense_ift" else "o", markersize=3 + 5 * (len(runs) == 1),
                 label=label, color=colors[i % len(colors)],
                 linestyle="none" if label.startswith("unrolled_fd") else "-")
    ax_pass.plot([r["hvp_passes"] for r in runs], err, **style)
    ax_time.plot([r["wall_time_s"] for r in runs], err, **style)
  ax_pass.set_xscale("symlog", linthresh=1)
  ax_pass.set_xlabel("HVP-equivalent passes")
  ax_time.set_xscale("log")
  ax_time.set_xlabel("wall time per call [s]")
  for ax in (ax_pass, ax_time):
    ax.set_yscale("log")
    ax.set_ylabel("relative error vs dense_ift")
    ax.grid(True, which="major", alpha=0.3)
  ax_time.legend(fontsize=7, loc="best")
  fd = [r for r in summary["runs"] if r["estimator"] == "unrolled_fd"]
  eps = [r["options"]["epsilon"] for r in fd]
  ax_eps.loglog(eps, [max(r["rel_error_vs_unrolled_hvp"], floor) for r in fd], "o-",
                label="vs unrolled_hvp (what FD approximates)")
  ax_eps.loglog(eps, [max(r["rel_error"], floor) for r in fd], "s--", label="vs dense_ift")
  ax_eps.set_xlabel("FD epsilon")
  ax_eps.set_ylabel("relative error")
  ax_eps.grid(True, which="major", alpha=0.3)
  ax_eps.legend(fontsize=8)
  fig.suptitle(f"hypergradient estimators on {summary['problem']} (seed {summary['seed']}, "
               f"{summary['n_weights']} weights, {summary['n_alphas']} alphas, "
               f"λ(H) ∈ [{summary['hessian_eig_min']:.2g}, {summary['hessian_eig_max']:.2g}])")
  fig.savefig(path, dpi=110)
