r"""Hypergradient estimators along a real search's trajectory: does the approximation matter?

A search saves snapshots of its state with :func:`save_snapshot` (``jaxnas search
--save-trajectory N``): ``RUN_DIR/trajectory/step_000100.npz`` holds the weights, the batch
statistics and the alphas of a :class:`jaxnas.search.SearchState` as plain arrays under their key
paths (``weights/stage_0/from_0/conv1x1_kernel``, ``alphas/cell``, ...), loadable without pickle.
:func:`trajectory_study` rebuilds the run's supernet and losses from ``RUN_DIR/config.json`` and, at
every snapshot, compares each estimator of :mod:`jaxnas.hypergrad` with a reference hypergradient on
one fixed train/val batch.

**What "exact" means mid-search.** The IFT hypergradient assumes weights at a stationary point of
the train loss; a search's weights are not (its ``‖∇_w L_train‖`` is recorded at every snapshot),
and there :math:`H = \nabla^2_{ww} \mathcal L_{train}` is usually indefinite. The reference is
therefore the *damped IFT hypergradient at the current weights*,

.. math::
   g_{ref} = \nabla_\alpha \mathcal L_{val}(w, \alpha) - \nabla^2_{\alpha w}
     \mathcal L_{train}(w, \alpha)\, (H + \lambda I)^{-1} \nabla_w \mathcal L_{val}(w, \alpha),

which ``cg`` and ``dense_ift`` with ``damping`` λ compute, and which becomes the IFT
hypergradient as the weights approach a minimum and λ → 0. A dense Hessian is out of reach at a
search's size (the quick start has about 10⁵ weights), so the linear system is solved by conjugate
gradients on exact Hessian-vector products (forward-over-reverse, float64) to a relative residual
:math:`\lVert (H + \lambda I) x - \nabla_w \mathcal L_{val} \rVert / \lVert \nabla_w
\mathcal L_{val} \rVert \le` ``tol``, recomputed with one more product after the solve and recorded
(``reference_residual``). Unless ``damping`` is given, λ is chosen per snapshot as the smallest
shift that makes :math:`H + \lambda I` positive definite plus a margin,
:math:`\lambda = \max(0, -\lambda_{min}) + \text{rel\_damping} \cdot \lambda_{max}`, with the
extreme eigenvalues estimated by ``lanczos_steps`` Lanczos steps from
:math:`\nabla_w \mathcal L_{val}` (the Krylov space CG then searches). If CG still meets a
direction of non-positive curvature (the Lanczos estimate of :math:`\lambda_{min}` is an upper
bound), λ is raised past that direction's Rayleigh quotient and the solve restarts
(``damping_retries``). So the reference's :math:`H + \lambda I` is positive definite along every
direction CG used, with a condition number of at most about
:math:`(1 + |\lambda_{min}| / \lambda_{max}) / \text{rel\_damping}`.

The losses are those of the search: :func:`jaxnas.search.make_losses` with the run's relaxation
(unperturbed, as the architecture step sees it; regularisers are not part of the hypergradient),
batch norm in train mode (the running statistics do not enter the losses; they are saved so that a
snapshot is a complete network), and the train loss carries the weight optimiser's decay,
:math:`\mathcal L_{train} = \mathrm{CE} + \tfrac{\lambda_w}{2} \lVert w \rVert^2`, because that is
the objective the search's weight steps descend (coupled L2, as DARTS). Everything runs in
float64 (snapshots are upcast), with ``key=None``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import time
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxnas import data, hypergrad, methods, relax, run, search
from jaxnas.errors import JaxnasError
from jaxnas.study import _markdown_table, _number, _write_csv

__all__ = ["Snapshot", "save_snapshot", "load_snapshot", "load_snapshots", "trajectory_study",
           "DEFAULT_ESTIMATORS", "TRAJECTORY_COLUMNS", "SNAPSHOT_DIR"]

SNAPSHOT_DIR = "trajectory"  # inside a run directory
_GROUPS = ("weights", "batch_stats", "alphas")
_FILE = re.compile(r"step_(\d+)\.npz")

# The estimator settings compared by default: (name, options). An int option is static (it fixes
# the compiled program); a float is passed traced; "lr" stands for the run's weight learning rate
# at the snapshot's step and "damping" for the reference's damping λ at that snapshot.
DEFAULT_ESTIMATORS = (
    ("first_order", {}),
    ("mixed_level", {"mixed_weight": 1.0}),
    ("unrolled_fd", {"xi": "lr", "epsilon": 0.01}),
    ("unrolled_hvp", {"xi": "lr"}),
    ("neumann", {"gamma": "lr", "num_terms": 2}),
    ("cg", {"damping": "damping", "maxiter": 10, "tol": 1e-10}),
)
_SYMBOLS = ("lr", "damping")

# The columns of trajectory.csv, one row per (snapshot, estimator setting).
TRAJECTORY_COLUMNS = ("step", "estimator", "options", "cosine", "rel_error", "hvp_passes")


class Snapshot(NamedTuple):
  """The networks' state at one search step, as saved by :func:`save_snapshot`."""
  step: int
  weights: Any  # nested dict of arrays (the Flax params)
  batch_stats: Any  # nested dict of arrays
  alphas: Any  # dict of arrays


# ----------------------------------------------------------------------------------------------
# Snapshots.


def snapshot_path(run_dir, step: int) -> pathlib.Path:
  """``run_dir/trajectory/step_{step:06d}.npz``."""
  return pathlib.Path(run_dir) / SNAPSHOT_DIR / f"step_{step:06d}.npz"


def _flatten(tree, group: str) -> dict[str, np.ndarray]:
  """``{"group/a/b": array}`` for a nested dict of arrays; names may not contain ``/``."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  out = {}
  for keypath, leaf in leaves:
    names = [getattr(k, "key", None) for k in keypath]
    if not names or not all(isinstance(n, str) and n and "/" not in n for n in names):
      raise JaxnasError(f"snapshots store {group} as nested dicts with string keys free of '/'; "
                        f"got the key path {jax.tree_util.keystr(keypath)!r}")
    out["/".join([group, *names])] = np.asarray(jax.device_get(leaf))
  return out


def _insert(tree: dict, names: Sequence[str], value) -> None:
  for name in names[:-1]:
    tree = tree.setdefault(name, {})
  tree[names[-1]] = value


def save_snapshot(run_dir, step: int, state: search.SearchState) -> pathlib.Path:
  """Saves the weights, batch statistics and alphas of ``state`` as ``step_{step:06d}.npz``.

  The file, in ``run_dir/trajectory/`` (created if needed), is an uncompressed ``.npz`` with one
  array per leaf under its key path (``weights/classifier/kernel``) and the step under ``step``;
  :func:`load_snapshot` reads it back bit for bit, without pickle. It is written to a temporary
  name and renamed, so a reader never sees half a file.

  Args:
    run_dir: the search's run directory.
    step: the search step the state belongs to (``int(state.step)`` in a search loop).
    state: a :class:`jaxnas.search.SearchState` (only ``weights``, ``batch_stats`` and ``alphas``
      are read).

  Returns:
    The path written.

  Raises:
    JaxnasError: if ``step`` is negative or a tree is not a nested dict with string keys.
  """
  if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
    raise JaxnasError(f"snapshot step must be a whole number ≥ 0, got {step!r}")
  arrays = {"step": np.asarray(int(step), np.int64)}
  for group in _GROUPS:
    arrays.update(_flatten(getattr(state, group), group))
  path = snapshot_path(run_dir, int(step))
  path.parent.mkdir(parents=True, exist_ok=True)
  partial = path.with_name(path.name + ".partial")
  with open(partial, "wb") as f:
    np.savez(f, **arrays)
  os.replace(partial, path)
  return path


def load_snapshot(path) -> Snapshot:
  """Reads one snapshot written by :func:`save_snapshot` (arrays as NumPy, dtypes kept)."""
  path = pathlib.Path(path)
  groups: dict[str, dict] = {g: {} for g in _GROUPS}
  with np.load(path, allow_pickle=False) as archive:
    if "step" not in archive.files:
      raise JaxnasError(f"{path} is not a jaxnas snapshot (no 'step' array); snapshots are "
                        "written by jaxnas.trajectory.save_snapshot")
    step = int(archive["step"])
    for name in archive.files:
      if name == "step":
        continue
      group, *names = name.split("/")
      if group not in groups or not names:
        raise JaxnasError(f"{path} is not a jaxnas snapshot (unexpected array {name!r})")
      _insert(groups[group], names, archive[name])
  return Snapshot(step, groups["weights"], groups["batch_stats"], groups["alphas"])


def load_snapshots(run_dir) -> list[Snapshot]:
  """Every snapshot in ``run_dir/trajectory/``, in step order.

  Raises:
    JaxnasError: if there is none.
  """
  folder = pathlib.Path(run_dir) / SNAPSHOT_DIR
  files = sorted(f for f in folder.glob("step_*.npz") if _FILE.fullmatch(f.name))
  if not files:
    raise JaxnasError(f"no snapshots in {folder}; run the search with --save-trajectory N "
                      "(or save them with jaxnas.trajectory.save_snapshot)")
  return sorted((load_snapshot(f) for f in files), key=lambda s: s.step)


# ----------------------------------------------------------------------------------------------
# The run: config, model, losses, batches.


def _recipe_from_json(d: dict) -> methods.Recipe:
  """The :class:`~jaxnas.methods.Recipe` that ``config.json`` holds (``dataclasses.asdict``)."""
  fields = {f.name for f in dataclasses.fields(methods.Recipe)}
  d = {k: v for k, v in d.items() if k in fields}
  d["weight_optimizer"] = methods.WeightOptimizer(**d["weight_optimizer"])
  d["arch_optimizer"] = methods.ArchOptimizer(**d["arch_optimizer"])
  d["regularizers"] = tuple(methods.Regularizer(**r) for r in d.get("regularizers", ()))
  for name in fields:
    if name.endswith("_options") and name in d:
      d[name] = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in d[name])
  return methods.Recipe(**d)


class _Run(NamedTuple):
  config: dict
  model: Any
  recipe: methods.Recipe
  train: dict
  val: dict
  schedule: Any  # the weight learning rate as a function of the step


def _load_run(run_dir: pathlib.Path, batch_size, batch_step: int) -> _Run:
  config = json.loads((run_dir / "config.json").read_text())
  fields = {f.name for f in dataclasses.fields(run.SearchConfig)}
  cfg = run.SearchConfig(**{k: v for k, v in config["config"].items() if k in fields})
  dataset = data.load(cfg.dataset, data_dir=cfg.data_dir)
  model, recipe = run.build(cfg, dataset.num_classes, recipe=_recipe_from_json(config["recipe"]))
  train, val = data.search_batches(dataset, batch_size or cfg.batch_size, seed=cfg.seed,
                                   step=batch_step)
  to64 = lambda b: {"image": jnp.asarray(b["image"], jnp.float64),  # noqa: E731
                    "label": jnp.asarray(b["label"])}
  _, _, schedule = search.make_optimizers(recipe.weight_optimizer, recipe.arch_optimizer,
                                          steps_per_epoch=config["steps_per_epoch"],
                                          epochs=config["epochs"])
  return _Run(config, model.clone(dtype=jnp.float64), recipe, to64(train), to64(val), schedule)


def _float64(tree):
  return jax.tree.map(
      lambda a: jnp.asarray(a, jnp.float64) if np.issubdtype(a.dtype, np.floating)
      else jnp.asarray(a), tree)


def _losses(r: _Run, batch_stats):
  """``(train_loss, val_loss)``: cross-entropy, plus the weight decay in the train loss."""
  relaxation = relax.get(r.recipe.relaxation, **methods.options(r.recipe.relaxation_options))
  cross_entropy = search.make_losses(r.model, relaxation, batch_stats)
  weight_decay = r.recipe.weight_optimizer.weight_decay

  def train_loss(w, alphas, batch, key):
    value, aux = cross_entropy(w, alphas, batch, key)
    decay = sum(jnp.sum(leaf ** 2) for leaf in jax.tree.leaves(w))
    return value + weight_decay * decay / 2, aux

  return train_loss, cross_entropy


# ----------------------------------------------------------------------------------------------
# The reference: damped IFT by CG on exact HVPs, driven from NumPy.


def _products_fn(train_loss, val_loss, unravel):
  """``products(flat_w, alphas, v, train, val)``, all that the reference needs, in one program.

  Returns ``(Hv, Mv, ∇_w L_train, L_train, ∇_w L_val, ∇_α L_val, L_val)``: one jvp of the train
  loss's gradient in (w, α) along ``v`` gives both products, and the val gradients come along so
  that a study compiles one network-sized program for its reference.
  """
  def products(flat_w, alphas, v, train, val):
    def train_grads(f):
      return jax.value_and_grad(lambda f_, a: train_loss(unravel(f_), a, train, None)[0],
                                argnums=(0, 1))(f, alphas)
    (train_value, (grad_w, _)), (_, (hv, mv)) = jax.jvp(train_grads, (flat_w,), (v,))
    (val_value, _), (val_w, val_alpha) = jax.value_and_grad(
        lambda f_, a: val_loss(unravel(f_), a, val, None), argnums=(0, 1), has_aux=True)(
            flat_w, alphas)
    return hv, mv, grad_w, train_value, val_w, val_alpha, val_value
  return products


def _lanczos_extremes(matvec, start: np.ndarray, steps: int) -> tuple[float, float, int]:
  """Smallest and largest Ritz values of ``steps`` Lanczos steps (full reorthogonalisation)."""
  basis = [start / np.linalg.norm(start)]
  diag, offdiag = [], []
  for _ in range(steps):
    q = basis[-1]
    w = matvec(q)
    diag.append(float(q @ w))
    for b in basis:  # twice is enough (Kahan–Parlett)
      w -= (b @ w) * b
    for b in basis:
      w -= (b @ w) * b
    beta = float(np.linalg.norm(w))
    if beta <= 1e-12 * max(abs(d) for d in diag) or len(basis) == start.size:
      break  # an invariant subspace: the Ritz values are exact eigenvalues
    offdiag.append(beta)
    basis.append(w / beta)
  k = len(diag)
  tri = np.diag(diag) + np.diag(offdiag[:k - 1], 1) + np.diag(offdiag[:k - 1], -1)
  ritz = np.linalg.eigvalsh(tri)
  return float(ritz[0]), float(ritz[-1]), k


def _cg(matvec, b: np.ndarray, *, tol: float, maxiter: int):
  """CG from 0 on ``matvec(x) = b``; ``(x, iterations, None)`` or, at a direction ``p`` of
  non-positive curvature, ``(x, iterations, p)``."""
  x = np.zeros_like(b)
  r, p = b.copy(), b.copy()
  rr, target = float(r @ r), tol * float(np.linalg.norm(b))
  for k in range(maxiter):
    if np.sqrt(rr) <= target:
      return x, k, None
    ap = matvec(p)
    curvature = float(p @ ap)
    if curvature <= 0:
      return x, k, p
    step = rr / curvature
    x += step * p
    r -= step * ap
    rr, rr_old = float(r @ r), rr
    p = r + (rr / rr_old) * p
  return x, maxiter, None


def _reference(products, v, *, damping, rel_damping, tol, maxiter, lanczos_steps):
  """``(x, facts)`` with ``(H + λI) x = v`` solved by CG; see the module docstring for λ."""
  hvp = lambda u: products(u)[0]  # noqa: E731
  eig_min, eig_max, k = _lanczos_extremes(hvp, v, lanczos_steps)
  lam = damping if damping is not None else max(0.0, -eig_min) + rel_damping * eig_max
  retries, iterations = 0, 0
  while True:
    x, its, bad = _cg(lambda u: hvp(u) + lam * u, v, tol=tol, maxiter=maxiter)
    iterations += its
    if bad is None or retries == 5:
      break
    # (H + λI) is not positive definite along `bad`: shift past its Rayleigh quotient.
    rayleigh = float(bad @ hvp(bad)) / float(bad @ bad)
    lam = max(lam, -rayleigh) + rel_damping * max(eig_max, abs(rayleigh))
    retries += 1
  residual = float(np.linalg.norm(hvp(x) + lam * x - v) / np.linalg.norm(v))
  facts = {"damping": lam, "damping_retries": retries, "lanczos_eig_min": eig_min,
           "lanczos_eig_max": eig_max, "lanczos_steps": k, "cg_iterations": iterations,
           "reference_residual": residual, "reference_converged": bool(residual <= tol)}
  return x, facts


# ----------------------------------------------------------------------------------------------
# The study.


def _check_settings(estimators) -> list[tuple[str, dict, dict, dict]]:
  """``(name, label options, static, symbolic-or-float)`` per setting; one-line errors."""
  out = []
  for item in estimators:
    if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], dict)):
      raise JaxnasError(f"an estimator setting is a (name, options dict) pair, got {item!r}")
    name, options = item
    static, traced = {}, {}
    for key, value in options.items():
      if isinstance(value, bool) or not isinstance(value, (int, float, str)) or (
          isinstance(value, str) and value not in _SYMBOLS):
        raise JaxnasError(f"option {key}={value!r} of {name}: give a number, 'lr' (the run's "
                          "weight learning rate at the snapshot) or 'damping' (the reference's)")
      (static if isinstance(value, int) else traced)[key] = value
    hypergrad.get(name, **options)  # unknown estimator or option names fail here
    out.append((name, dict(options), static, traced))
  return out


def _label(name: str, options: dict) -> str:
  return name + ("" if not options else " " + ", ".join(f"{k}={v}" for k, v in options.items()))


def _compare(g: np.ndarray, ref: np.ndarray) -> tuple[float, float | None]:
  g_norm, ref_norm = np.linalg.norm(g), np.linalg.norm(ref)
  rel_error = float(np.linalg.norm(g - ref) / ref_norm)
  cosine = float(g @ ref / (g_norm * ref_norm)) if g_norm > 0 else None
  return rel_error, cosine


def _finite(x):
  return x if x is None or np.isfinite(x) else None


def _flat_alpha(tree) -> np.ndarray:
  return np.asarray(ravel_pytree(tree)[0], dtype=np.float64)


def trajectory_study(run_dir, out_dir, *, estimators: Sequence = DEFAULT_ESTIMATORS,
                     batch_size: int | None = None, batch_step: int = 0,
                     damping: float | None = None, rel_damping: float = 1e-2, tol: float = 1e-10,
                     maxiter: int = 2000, lanczos_steps: int = 30) -> dict:
  r"""Compares the hypergradient estimators with the damped IFT reference at a run's snapshots.

  At every snapshot of ``run_dir`` (:func:`load_snapshots`), on the run's train and val batch of
  step ``batch_step`` (:func:`jaxnas.data.search_batches` with the run's seed), it computes the
  reference :math:`g_{ref}` (module docstring) and each estimator's :math:`g`, and records

  .. math:: \text{cosine} = \frac{\langle g, g_{ref} \rangle}{\lVert g \rVert
     \lVert g_{ref} \rVert}, \qquad
     \text{rel\_error} = \frac{\lVert g - g_{ref} \rVert}{\lVert g_{ref} \rVert}

  and the ``hvp_passes`` the estimator reports. Unrolled estimators step with plain gradient descent
  on the weight-decayed train loss at :math:`\xi` = the run's weight learning rate at that step
  (no momentum: snapshots hold no optimiser state). Each setting compiles once for all snapshots.

  Writes into ``out_dir`` (created if needed): ``trajectory.json`` (the returned dict),
  ``trajectory.csv`` (one row per snapshot and setting, the :data:`TRAJECTORY_COLUMNS`, numbers
  exact), ``trajectory.md`` (the snapshots' facts, then cosine and relative error as step-by-setting
  tables) and ``trajectory.png`` (cosine and relative error against the step, one line per setting).

  Args:
    run_dir: a run directory with ``config.json`` and ``trajectory/step_*.npz``.
    out_dir: where the four files go.
    estimators: ``(name, options)`` settings; see :data:`DEFAULT_ESTIMATORS` for the meaning of
      int, float, ``"lr"`` and ``"damping"`` values.
    batch_size: images per batch (default: the run's).
    batch_step: which step's batches (of the run's seeded streams) to use, the same at every
      snapshot.
    damping: a fixed λ for the reference (and for ``"damping"`` options); ``None`` chooses it per
      snapshot.
    rel_damping: the margin of the automatic λ, relative to :math:`\lambda_{max}(H)`.
    tol: relative residual the reference's CG must reach.
    maxiter: most CG iterations of the reference.
    lanczos_steps: Lanczos steps for the extreme eigenvalues of :math:`H`.

  Returns:
    The dict written to ``trajectory.json``: the run's facts, ``snapshots`` (per step: learning
    rate, losses, ``train_grad_norm``, the reference's λ, Lanczos estimates, CG iterations,
    ``reference_residual``, ``reference_norm`` and the flattened ``reference`` itself, alphas in
    ``ravel_pytree`` order) and ``runs`` (per step and setting: ``step``, ``estimator``,
    ``label``, ``options`` with numbers resolved, ``cosine``, ``rel_error``, ``hvp_passes``).

  Raises:
    JaxnasError: for a directory without ``config.json`` or snapshots, an unknown estimator or
      option, or a bad numeric argument.
  """
  run_dir = pathlib.Path(run_dir)
  if not (run_dir / "config.json").is_file():
    raise JaxnasError(f"{run_dir} has no config.json; pass a run directory written by "
                      "'jaxnas search'")
  settings = _check_settings(estimators)
  if damping is not None and not damping >= 0:
    raise JaxnasError(f"damping must be ≥ 0 (or None to choose it per snapshot), got {damping}")
  if not (rel_damping > 0 and tol > 0):
    raise JaxnasError(f"rel_damping ({rel_damping}) and tol ({tol}) must be > 0")
  if maxiter < 1 or lanczos_steps < 1:
    raise JaxnasError(f"maxiter ({maxiter}) and lanczos_steps ({lanczos_steps}) must be ≥ 1")
  snapshots = load_snapshots(run_dir)
  with jax.enable_x64(True):
    summary = _trajectory(run_dir, snapshots, settings, batch_size=batch_size,
                          batch_step=batch_step, damping=damping, rel_damping=rel_damping,
                          tol=tol, maxiter=maxiter, lanczos_steps=lanczos_steps)
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / "trajectory.json").write_text(json.dumps(summary, indent=1) + "\n")
  _write_csv(str(out_dir / "trajectory.csv"), summary["runs"], TRAJECTORY_COLUMNS)
  (out_dir / "trajectory.md").write_text(_markdown(summary))
  _plot(summary, out_dir / "trajectory.png")
  return summary


def _snapshot_reference(products, snap: Snapshot, r: _Run, **solver) -> tuple[np.ndarray, dict]:
  """The reference hypergradient at one snapshot (flattened alphas) and the snapshot's facts."""
  start = time.perf_counter()
  flat_w, alphas = ravel_pytree(_float64(snap.weights))[0], _float64(snap.alphas)

  def at(u):
    hv, mv, grad_w, train_value, val_w, val_alpha, val_value = products(
        flat_w, alphas, jnp.asarray(u), r.train, r.val)
    return (np.array(hv), _flat_alpha(mv), np.array(grad_w), float(train_value),
            np.array(val_w), _flat_alpha(val_alpha), float(val_value))

  _, _, grad_w, train_value, val_w, val_alpha, val_value = at(np.zeros(flat_w.size))
  x, facts = _reference(at, val_w, **solver)
  reference = val_alpha - at(x)[1]
  facts = {"step": snap.step, "lr": float(r.schedule(snap.step)), "train_loss": train_value,
           "val_loss": val_value, "train_grad_norm": float(np.linalg.norm(grad_w)), **facts,
           "reference_norm": float(np.linalg.norm(reference)),
           "reference_time_s": time.perf_counter() - start, "reference": reference.tolist()}
  return reference, facts


def _trajectory(run_dir, snapshots, settings, *, batch_size, batch_step, **solver) -> dict:
  r = _load_run(run_dir, batch_size, batch_step)
  train_loss, val_loss = _losses(r, _float64(snapshots[0].batch_stats))
  flat0, unravel = ravel_pytree(_float64(snapshots[0].weights))
  products = jax.jit(_products_fn(train_loss, val_loss, unravel))
  compiled = {}

  def estimate(name, static, weights, alphas, numbers):
    key = (name, tuple(sorted(static.items())))
    if key not in compiled:  # one compilation per setting, for every snapshot
      est = hypergrad.get(name, **static)
      compiled[key] = jax.jit(lambda w, a, tb, vb, numbers: est(
          train_loss, val_loss, w, a, tb, vb, key=None, **numbers))
    return compiled[key](weights, alphas, r.train, r.val,
                         {k: jnp.asarray(v) for k, v in numbers.items()})

  records, facts = [], []
  for snap in snapshots:
    reference, snap_facts = _snapshot_reference(products, snap, r, **solver)
    facts.append(snap_facts)
    symbols = {"lr": snap_facts["lr"], "damping": snap_facts["damping"]}
    weights, alphas = _float64(snap.weights), _float64(snap.alphas)
    for name, options, static, traced in settings:
      numbers = {k: float(symbols[v] if isinstance(v, str) else v) for k, v in traced.items()}
      g, info = estimate(name, static, weights, alphas, numbers)
      rel_error, cosine = _compare(_flat_alpha(g), reference)
      records.append({"step": snap.step, "estimator": name, "label": _label(name, options),
                      "options": {**static, **numbers}, "cosine": _finite(cosine),
                      "rel_error": _finite(rel_error), "hvp_passes": int(info["hvp_passes"])})
  return {
      "run_dir": str(run_dir), "space": r.config["config"]["space"],
      "method": r.recipe.name, "dataset": r.config["config"]["dataset"],
      "n_weights": int(flat0.size), "n_alphas": int(ravel_pytree(snapshots[0].alphas)[0].size),
      "batch_size": int(r.train["label"].size), "batch_step": batch_step,
      "weight_decay": r.recipe.weight_optimizer.weight_decay, "dtype": "float64",
      "backend": jax.default_backend(),
      "reference": {"what": "damped IFT at the snapshot's weights, CG on exact HVPs", **solver},
      "settings": [{"estimator": n, "label": _label(n, o), "options": o}
                   for n, o, _, _ in settings],
      "snapshots": facts, "runs": records,
  }


# ----------------------------------------------------------------------------------------------
# Tables and plot.


def _pivot(summary: dict, column: str, fmt) -> str:
  """One row per setting, one column per snapshot step."""
  steps = [s["step"] for s in summary["snapshots"]]
  cells = {(r["label"], r["step"]): r[column] for r in summary["runs"]}
  rows = [[s["label"]] + [fmt(cells.get((s["label"], step))) for step in steps]
          for s in summary["settings"]]
  return _markdown_table(["estimator"] + [f"step {step}" for step in steps], rows)


def _markdown(summary: dict) -> str:
  ref = summary["reference"]
  damping = (f"λ = {ref['damping']:g}" if ref["damping"] is not None else
             f"λ = max(0, −λ_min) + {ref['rel_damping']:g}·λ_max per snapshot")
  facts = [
      f"- run `{summary['run_dir']}`: {summary['space']} supernet, method {summary['method']}, "
      f"{summary['n_weights']} weights, {summary['n_alphas']} alphas",
      f"- one fixed batch of {summary['batch_size']} train and val images ({summary['dataset']}, "
      f"the run's batch of step {summary['batch_step']}); {summary['dtype']} on "
      f"{summary['backend']}",
      f"- train loss: cross-entropy + {summary['weight_decay']:g}/2·‖w‖²; val loss: cross-entropy",
      f"- reference: the damped IFT hypergradient at each snapshot's weights, {damping}, "
      f"CG on exact HVPs to a relative residual ≤ {ref['tol']:g}",
  ]
  snap_rows = [
      (s["step"], _number(s["lr"]), _number(s["train_loss"]), _number(s["train_grad_norm"]),
       f"[{_number(s['lanczos_eig_min'])}, {_number(s['lanczos_eig_max'])}]", _number(s["damping"]),
       s["cg_iterations"], _number(s["reference_residual"]))
      for s in summary["snapshots"]]
  snapshots = _markdown_table(("step", "lr", "train loss", "‖∇_w L_train‖", "λ(H), Lanczos",
                               "damping λ", "CG iterations", "residual"), snap_rows)
  cosine = _pivot(summary, "cosine", lambda c: "—" if c is None else f"{c:.4f}")
  rel_error = _pivot(summary, "rel_error", _number)
  return (f"# Hypergradient estimators along a search ({len(summary['snapshots'])} snapshots)\n\n"
          + "\n".join(facts) + "\n\n## Snapshots\n\n" + snapshots
          + "\n## Cosine similarity to the reference\n\n" + cosine
          + "\n## Relative error against the reference\n\n" + rel_error)


def _plot(summary: dict, path) -> None:
  import matplotlib  # noqa: PLC0415  (plotting is optional work; keep the import local)
  from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

  fig = Figure(figsize=(13, 5), layout="constrained")
  ax_cos, ax_err = fig.subplots(1, 2)
  colors = matplotlib.colormaps["tab10"].colors
  for i, setting in enumerate(summary["settings"]):
    runs = [r for r in summary["runs"] if r["label"] == setting["label"]]
    steps = [r["step"] for r in runs]
    style = dict(marker="o", color=colors[i % len(colors)], label=setting["label"])
    ax_cos.plot(steps, [np.nan if r["cosine"] is None else r["cosine"] for r in runs], **style)
    ax_err.plot(steps, [np.nan if r["rel_error"] is None else max(r["rel_error"], 1e-17)
                        for r in runs], **style)
  ax_cos.set_ylabel("cosine similarity to the damped IFT reference")
  ax_err.set_ylabel("relative error against the reference")
  ax_err.set_yscale("log")
  for ax in (ax_cos, ax_err):
    ax.set_xlabel("search step")
    ax.grid(True, alpha=0.3)
  ax_cos.legend(fontsize=8, loc="best")
  fig.suptitle(f"hypergradient estimators along {summary['method']} on {summary['space']} "
               f"({summary['n_weights']} weights, batch {summary['batch_size']})")
  fig.savefig(path, dpi=110)
