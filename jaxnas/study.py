r"""How far each hypergradient estimator is from the exact one, and what it costs.

:func:`hypergrad_study` sets up a small bilevel problem whose weights can be optimised to
stationarity, computes the exact implicit-function-theorem hypergradient with
:func:`jaxnas.hypergrad.dense_ift`, sweeps every estimator's knobs, and records for each setting the
relative error and cosine similarity to that reference, the HVP-equivalent passes and the wall time.

Problems (synthetic data drawn from ``seed``; float64 throughout):

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
- ``supernet``: a two-edge mixed-op network
  :math:`y = \sum_k \mathrm{softmax}(\alpha_2)_k V_k \tanh(\sum_k \mathrm{softmax}(\alpha_1)_k
  W_k x) + b` with MSE and a fixed weight decay :math:`10^{-3}`, trained to a local minimum by
  Levenberg–Marquardt on the dense Hessian. Unlike the other two, :math:`\alpha` enters
  :math:`\nabla_\alpha \mathcal L_{train}` non-quadratically in :math:`w`, so the finite
  difference of ``unrolled_fd`` has a truncation error (in the first two it is exact up to rounding).

Every estimator is evaluated at :math:`w^*` with step size :math:`\xi = 1/\lambda_{max}(H)` for the
unrolled ones.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxnas import hypergrad
from jaxnas.errors import unknown_name

__all__ = ["hypergrad_study", "PROBLEMS"]


class Problem(NamedTuple):
  """A bilevel problem at its inner optimum."""
  train_loss: Callable
  val_loss: Callable
  w: Any
  alphas: Any
  train: Any
  val: Any
  closed_form: Any  # the exact hypergradient, or None


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
                 jnp.asarray(closed_form))


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
  flat0, unravel = ravel_pytree(w0)
  objective = lambda f: train_loss(unravel(f), alphas, train, None)[0]  # noqa: E731

  @jax.jit
  def newton(f):
    g, h = jax.grad(objective)(f), jax.hessian(objective)(f)
    return f - jnp.linalg.solve(h, g), jnp.linalg.norm(g)

  flat = flat0
  for _ in range(50):
    flat, grad_norm = newton(flat)
    if grad_norm < 1e-13:
      break
  return Problem(train_loss, val_loss, unravel(flat), alphas, train,
                 (jnp.asarray(xv), jnp.asarray(yv)), None)


def _supernet_forward(w, alphas, x):
  m1, m2 = jax.nn.softmax(alphas["edge1"]), jax.nn.softmax(alphas["edge2"])
  h = jnp.tanh(jnp.einsum("k,koi,bi->bo", m1, w["w1"], x))
  return jnp.einsum("k,koi,bi->bo", m2, w["w2"], h) + w["bias"]


def _supernet(seed: int) -> Problem:
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
  yt = _supernet_forward(teacher, alphas, xt) + 0.1 * jnp.asarray(rng.normal(size=(n, d_out)))
  yv = _supernet_forward(teacher, alphas, xv) + 0.1 * jnp.asarray(rng.normal(size=(n, d_out)))

  def mse(w, alphas, batch):
    x, y = batch
    return jnp.mean((_supernet_forward(w, alphas, x) - y) ** 2) / 2

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
  for _ in range(300):
    flat, mu, grad_norm = levenberg_marquardt(flat, mu)
    if grad_norm < 1e-10:
      break
  return Problem(train_loss, val_loss, unravel(flat), alphas, (xt, yt), (xv, yv), None)


PROBLEMS: dict[str, Callable[[int], Problem]] = {
    "ridge": _ridge, "logistic": _logistic, "supernet": _supernet}


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

  Writes ``study.json`` (the returned dict) and ``study.png`` (relative error against passes and
  against wall time, log-log, one line per estimator setting; FD error against
  :math:`\epsilon`) into ``out_dir``, which is created if needed.

  Args:
    problem: ``"ridge"``, ``"logistic"`` or ``"supernet"`` (see the module docstring).
    out_dir: directory for the two files.
    seed: seed of the synthetic data.
    repeats: timed calls per setting.

  Returns:
    The dict written to ``study.json``: problem facts (sizes, Hessian extreme eigenvalues,
    reference norm, for ridge the reference's error against the closed form) and ``runs``, one
    record per setting with ``estimator``, ``series``, ``options``, ``hvp_passes``,
    ``rel_error``, ``cosine``, ``wall_time_s`` and, where reported, ``residual``.

  Raises:
    JaxnasError: if ``problem`` is not one of :data:`PROBLEMS`.
  """
  if problem not in PROBLEMS:
    raise unknown_name("study problem", problem, PROBLEMS)
  with jax.enable_x64(True):
    summary = _study(problem, seed, repeats)
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "study.json"), "w") as f:
    json.dump(summary, f, indent=1)
  _plot(summary, os.path.join(out_dir, "study.png"))
  return summary


def _study(problem: str, seed: int, repeats: int) -> dict:
  p = PROBLEMS[problem](seed)
  flat_w, unravel = ravel_pytree(p.w)
  hessian = jax.jit(jax.hessian(lambda f: p.train_loss(unravel(f), p.alphas, p.train, None)[0]))(
      flat_w)
  eigs = np.linalg.eigvalsh(np.asarray(hessian))
  grad_norm = float(jnp.linalg.norm(ravel_pytree(jax.grad(
      lambda w: p.train_loss(w, p.alphas, p.train, None)[0])(p.w))[0]))
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
      "reference_norm": float(np.linalg.norm(_flat(reference))), "repeats": repeats,
      "runs": runs,
  }
  if p.closed_form is not None:
    summary["reference_vs_closed_form"] = _compare(reference, p.closed_form)[0]
  return summary


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
