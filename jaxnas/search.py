"""The search state and the one jitted search step.

``search_step(state, train_batch, val_batch) -> (state, metrics)`` updates the architecture and the
weights in a single XLA program (DARTS, Liu et al. 2019, Alg. 1): an architecture step with the
recipe's hypergradient estimator on the val batch, then an SGD step of the weights on the train
batch (the order reverses for recipes with ``arch_first=False``, as GDAS). Per-step randomness comes
from ``jax.random.fold_in(state.key, state.step)``.

The recipe's pieces plug in here without changing the loop: regularisers
(:mod:`jaxnas.regularize`) add ``∇_α Σ λ_t R(α)`` to the hypergradient, a perturbation
(:mod:`jaxnas.perturb`) wraps the relaxation that the weight step sees. With neither, the step is
the plain program. Stopping rules (:mod:`jaxnas.stopping`) run on the host, in
:func:`jaxnas.run.run_search`.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxnas import derive, hypergrad, perturb, regularize, relax, sampling, stopping
from jaxnas.errors import JaxnasError
from jaxnas.methods import ArchOptimizer, Recipe, WeightOptimizer, options

__all__ = ["SearchState", "make_optimizers", "make_inner_optimizer", "make_losses",
           "make_mixing_loss", "make_relaxation", "make_search_step", "init_search_state",
           "init_variables", "epoch_cosine_schedule", "cross_entropy", "mixing_entropy",
           "evaluate", "check_recipe", "nonfinite_mask", "describe_nonfinite",
           "NONFINITE_QUANTITIES"]


class SearchState(NamedTuple):
  """Everything a search carries from one step to the next, as one pytree."""

  weights: Any  # the network's Flax params
  batch_stats: Any  # BN running statistics
  alphas: Any  # architecture logits, e.g. {"normal": (14, 8), "reduce": (14, 8)}
  w_opt_state: Any  # optax state of the weight optimiser
  a_opt_state: Any  # optax state of the architecture optimiser
  step: jax.Array  # shape=(), dtype=int32
  key: jax.Array  # PRNG key of the run; step keys are fold_in(key, step)


def epoch_cosine_schedule(lr: float, lr_min: float, *, steps_per_epoch: int, epochs: int):
  """Cosine from ``lr`` to ``lr_min`` over ``epochs``, constant within an epoch.

  .. math:: \\eta_e = \\eta_{min} + \\tfrac12(\\eta - \\eta_{min})(1 + \\cos(\\pi e / E)),
     \\quad e = \\lfloor t / \\text{steps\\_per\\_epoch} \\rfloor

  as ``CosineAnnealingLR(T_max=E, eta_min)`` stepped per epoch in quark0/darts.
  """
  def schedule(count):
    epoch = jnp.minimum(count // steps_per_epoch, epochs).astype(jnp.result_type(float))
    return lr_min + 0.5 * (lr - lr_min) * (1.0 + jnp.cos(jnp.pi * epoch / epochs))
  return schedule


def make_optimizers(weight_opt: WeightOptimizer, arch_opt: ArchOptimizer, *, steps_per_epoch: int,
                    epochs: int, frozen: Callable | None = None):
  """The weights' and alphas' optax optimisers and the weight learning-rate schedule.

  ``frozen(params)`` (a space's ``frozen_weights``, e.g. D2NAS' branch cells,
  :mod:`jaxnas.spaces.branch`), if given, marks weights that never move: their updates are zero
  (``optax.set_to_zero``: no clipping share, weight decay or momentum); the others get the optimiser.
  """
  schedule = epoch_cosine_schedule(weight_opt.lr, weight_opt.lr_min,
                                   steps_per_epoch=steps_per_epoch, epochs=epochs)
  w_parts = []
  if weight_opt.clip is not None:
    w_parts.append(optax.clip_by_global_norm(weight_opt.clip))
  if weight_opt.weight_decay:
    w_parts.append(optax.add_decayed_weights(weight_opt.weight_decay))
  w_parts.append(optax.sgd(schedule, momentum=weight_opt.momentum or None,
                           nesterov=weight_opt.nesterov))
  a_parts = []
  if arch_opt.clip is not None:
    a_parts.append(optax.clip_by_global_norm(arch_opt.clip))
  if arch_opt.weight_decay:
    a_parts.append(optax.add_decayed_weights(arch_opt.weight_decay))
  a_parts.append(optax.adam(arch_opt.lr, b1=arch_opt.b1, b2=arch_opt.b2, eps=arch_opt.eps))
  return _freeze(optax.chain(*w_parts), frozen), optax.chain(*a_parts), schedule


def _freeze(tx, frozen):
  """``tx`` on the weights ``frozen`` does not mark, zero updates on the others."""
  if frozen is None:
    return tx
  labels = lambda params: jax.tree.map(lambda f: "frozen" if f else "train", frozen(params))
  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def _frozen_weights(model):
  """The space's ``frozen_weights(params) -> bool tree``, or None (every weight trained)."""
  return getattr(model, "frozen_weights", None)


def make_inner_optimizer(weight_opt: WeightOptimizer, schedule, frozen: Callable | None = None):
  r"""The weight optimiser as the unrolled estimators' inner step sees it: without clipping.

  DARTS' unrolled step (quark0/darts ``Architect._compute_unrolled_model``) is
  :math:`w' = w - \eta(\mu m + \nabla_w \mathcal L_{train} + \lambda_w w)` with the optimiser's
  momentum buffer and weight decay but no gradient clipping. The clipping stage is replaced by
  ``optax.identity()``, whose state has the same (empty) structure, so the weight optimiser's state
  serves as the inner optimiser's state unchanged.
  """
  parts = []
  if weight_opt.clip is not None:
    parts.append(optax.identity())
  if weight_opt.weight_decay:
    parts.append(optax.add_decayed_weights(weight_opt.weight_decay))
  parts.append(optax.sgd(schedule, momentum=weight_opt.momentum or None,
                         nesterov=weight_opt.nesterov))
  return _freeze(optax.chain(*parts), frozen)


def cross_entropy(logits, labels):
  """Mean softmax cross-entropy with integer labels."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _accuracy(logits, labels):
  pred = jnp.argmax(logits, -1)
  return jnp.mean((pred == labels.astype(pred.dtype)).astype(logits.dtype))


def mixing_entropy(weights):
  """Mean over edges of the entropy −Σ_k p_k log p_k of each edge's normalised mixing weights.

  One-axis leaves (PC-DARTS' per-edge weights β, one number per edge) are not operation mixtures
  and are left out.
  """
  ents = []
  for w in jax.tree.leaves(weights):
    if w.ndim < 2:
      continue
    p = w / jnp.sum(w, axis=-1, keepdims=True)
    ents.append(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1))
  return jnp.mean(jnp.concatenate([e.reshape(-1) for e in ents]))


def make_mixing_loss(model, batch_stats):
  """``loss(w, mixing, batch, key) -> (scalar, aux)``: the train-mode loss at given mixing weights.

  ``key`` (if not None) seeds the module's ``"noise"`` stream (``fold_in(key, 2)``), used by spaces
  built with ``skip_noise`` (NoisyDARTS); other spaces ignore it. Weights the space marks frozen
  (``frozen_weights``, D2NAS' branch cells) enter through ``stop_gradient``: their gradient is
  exactly zero and is not computed.
  """
  frozen = _frozen_weights(model)

  def loss(w, mixing, batch, key):
    if frozen is not None:
      w = jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p, w, frozen(w))
    rngs = {} if key is None else {"noise": jax.random.fold_in(key, 2)}
    logits, new_vars = model.apply({"params": w, "batch_stats": batch_stats}, batch["image"],
                                   mixing, train=True, mutable=["batch_stats"], rngs=rngs)
    value = cross_entropy(logits, batch["label"])
    return value, {"batch_stats": new_vars["batch_stats"],
                   "accuracy": _accuracy(logits, batch["label"])}
  return loss


def make_losses(model, relaxation: Callable, batch_stats):
  """The estimators' loss ``loss(w, alphas, batch, key) -> (scalar, aux)`` for ``model``.

  The network runs in train mode (batch statistics, running averages updated), as in the reference
  search. ``aux`` holds the new ``batch_stats`` and the batch ``accuracy``. The same function serves
  as ``train_loss`` and ``val_loss``; only the batch differs.
  """
  mixing_loss = make_mixing_loss(model, batch_stats)

  def loss(w, alphas, batch, key):
    return mixing_loss(w, relaxation(alphas, key), batch, key)
  return loss


def _bind(fn, **available):
  """``fn`` with those of the ``available`` keyword arguments that its signature takes bound."""
  taken = {k: v for k, v in available.items() if _accepts(fn, k)}
  return functools.partial(fn, **taken) if taken else fn


def make_relaxation(recipe: Recipe, op_names, progress=None) -> Callable:
  """The recipe's relaxation as ``fn(alphas, key) -> mixing weights`` for a space.

  Relaxations that take ``op_names`` (e.g. to give ``none`` zero weight) get the space's operation
  names; those that take ``progress`` (a schedule over the search, e.g. DARTS−' β_aux) get
  ``progress``: epoch/epochs inside the step (constant within an epoch), ``None`` outside a search
  (derivation, evaluation).
  """
  fn = relax.get(recipe.relaxation, **options(recipe.relaxation_options))
  return _bind(fn, op_names=tuple(op_names), progress=progress)


def _accepts(fn, name: str) -> bool:
  target = fn.func if hasattr(fn, "func") else fn
  bound = fn.keywords if hasattr(fn, "keywords") else {}
  try:
    params = inspect.signature(target).parameters
  except (TypeError, ValueError):
    return False
  return name in params and name not in (bound or {})


def _optax_promotion():
  """Standard dtype promotion inside optax's updates.

  optax's Adam computes ``b1 ** count`` (a float to an int32 power), which JAX's strict promotion
  mode (the one the tests run in) refuses; jaxnas' own code stays strict-clean.
  """
  return jax.numpy_dtype_promotion("standard")


def _global_norm(tree):
  return optax.tree.norm(tree)


# What the step's ``nonfinite`` bit mask flags, bit i for entry i: (metric or state field, words).
NONFINITE_QUANTITIES = (("val_loss", "validation loss"), ("alpha_grad_norm", "arch gradient"),
                        ("train_loss", "training loss"), ("weight_grad_norm", "weight gradient"),
                        ("alphas", "alphas"), ("weights", "weights"))


def nonfinite_mask(metrics, weights, alphas):
  r"""A bit mask of the step's quantities that are not finite: 0 when all are.

  .. math:: m = \sum_i 2^i \, [\lnot \mathrm{isfinite}(q_i)]

  with :math:`q_i` the i-th entry of :data:`NONFINITE_QUANTITIES`: the validation and training
  losses, the norms of the architecture and weight gradients (a norm is finite exactly when every
  entry of its gradient is, up to overflow of the sum of squares), and all entries of the updated
  alphas and weights. A few ``isfinite`` reductions inside the jitted step, so the loop can stop at
  the first step that diverged without reading the state back (:func:`describe_nonfinite`).
  """
  return flag_nonfinite({"alphas": alphas, "weights": weights}, metrics, NONFINITE_QUANTITIES)


def flag_nonfinite(trees: dict, metrics: dict, quantities) -> jax.Array:
  """Bit ``i`` set when the ``i``-th of ``quantities`` (a ``trees`` entry, every leaf checked, or a
  scalar in ``metrics``) is not finite; entries in neither (or with no leaves) are skipped. The
  search step and :mod:`jaxnas.train`'s step share it, each with its own table."""
  mask = jnp.zeros((), jnp.int32)
  for bit, (name, _) in enumerate(quantities):
    if name in trees:
      leaves = jax.tree.leaves(trees[name])
      if not leaves:
        continue
      ok = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))
    elif name in metrics:
      ok = jnp.isfinite(metrics[name])
    else:
      continue
    mask = mask | jnp.where(ok, 0, 1 << bit).astype(jnp.int32)
  return mask


def describe_nonfinite(mask: int, metrics: dict, quantities=NONFINITE_QUANTITIES) -> str:
  """The first quantity flagged in ``mask`` (:func:`nonfinite_mask`) in words, e.g.
  ``"arch gradient is NaN"``; ``metrics`` (host values) tell NaN from Inf where they can;
  ``quantities`` is the table the mask was made with."""
  for bit, (name, words) in enumerate(quantities):
    if not int(mask) >> bit & 1:
      continue
    value = metrics.get(name)
    if isinstance(value, float) and math.isnan(value):
      return f"{words} is NaN"
    if isinstance(value, float) and math.isinf(value):
      return f"{words} is {'-' if value < 0 else ''}Inf"
    return f"{words} {'are' if words.endswith('s') else 'is'} not finite"
  return "no quantity is non-finite"


_EPSILON_OPTIONS = ("epsilon_start", "epsilon_end")
_RESERVED_PERTURBATION_OPTIONS = ("weights", "key", "epsilon", "loss_fn")


def _perturbation(recipe: Recipe, steps_per_epoch: int, epochs: int):
  """The recipe's perturbation with its options bound, and its ε schedule; (None, None) if none."""
  if recipe.perturbation is None:
    if recipe.perturbation_options:
      raise JaxnasError(f"recipe {recipe.name!r} has perturbation_options but no perturbation")
    return None, None
  fn = perturb.get(recipe.perturbation)
  opts = options(recipe.perturbation_options)
  eps_opts = {k: opts.pop(k) for k in _EPSILON_OPTIONS if k in opts}
  for k in opts:
    if k in _RESERVED_PERTURBATION_OPTIONS or not _accepts(fn, k):
      raise JaxnasError(f"perturbation {recipe.perturbation!r} has no option {k!r} (ε is set by "
                        "epsilon_start and epsilon_end in perturbation_options)")
  schedule = perturb.epsilon_schedule(**eps_opts, steps_per_epoch=steps_per_epoch, epochs=epochs)
  return (functools.partial(fn, **opts) if opts else fn), schedule


def _regularizers(recipe: Recipe):
  """``(record, fn)`` for each of the recipe's regularisers; a name used twice is an error."""
  names = [r.name for r in recipe.regularizers]
  for name in names:
    if names.count(name) > 1:
      raise JaxnasError(f"recipe {recipe.name!r} lists regularizer {name!r} twice; give it once "
                        "with the summed weight")
  return tuple((r, regularize.get(r.name)) for r in recipe.regularizers)


# Post-update hooks on the alphas (Recipe.arch_update_hook): hook(old, new, mixing) -> alphas, with
# ``mixing`` the relaxation's sample that the arch step's loss used (same key).
ARCH_UPDATE_HOOKS = {"rescale-pair-logits": sampling.rescale_pair_logits}


def check_recipe(recipe: Recipe, *, steps_per_epoch: int = 1, epochs: int = 1) -> None:
  """Raises a one-line JaxnasError if a name or option in ``recipe`` is unknown.

  Checks the relaxation, estimator, regularisers, perturbation, derivation rule and stopping rule,
  so that a run can fail before it writes anything.
  """
  relax.get(recipe.relaxation, **options(recipe.relaxation_options))
  hypergrad.get(recipe.estimator, **options(recipe.estimator_options))
  _regularizers(recipe)
  _perturbation(recipe, steps_per_epoch, epochs)
  if recipe.derivation is not None and recipe.derivation not in derive.RULES:
    raise JaxnasError(f"unknown derivation rule {recipe.derivation!r}; choose one of: "
                      + ", ".join(sorted(derive.RULES)))
  if recipe.stopping is not None:
    stopping.get(recipe.stopping)
  if recipe.arch_update_hook is not None and recipe.arch_update_hook not in ARCH_UPDATE_HOOKS:
    raise JaxnasError(f"unknown arch_update_hook {recipe.arch_update_hook!r}; choose one of: "
                      + ", ".join(sorted(ARCH_UPDATE_HOOKS)))


def _where_tree(pred, new, old):
  """``new`` where ``pred`` holds, else ``old``, leaf by leaf (a traced branch-free select)."""
  return jax.tree.map(lambda n, o: jnp.where(pred, n, o), new, old)


def make_search_step(model, recipe: Recipe, *, steps_per_epoch: int, epochs: int,
                     estimator: Callable | None = None, jit: bool = True, eigen_every: int = 0,
                     eigen_method: str = "auto", eigen_iters: int = 20,
                     fuse_phases: bool | None = None, arch_start: int | None = None):
  r"""Builds ``search_step(state, train_batch, val_batch) -> (state, metrics)``.

  Relaxation: the recipe's relaxation bound to the space's ``op_names`` and to
  ``progress = e / E`` (the step's epoch over the search's epochs) where it takes them
  (:func:`make_relaxation`).

  Regularisers: with :math:`\lambda_i(t)` from :func:`jaxnas.regularize.scheduled_weight` at the
  step's epoch, the architecture optimiser receives
  :math:`g_\alpha + \nabla_\alpha \sum_i \lambda_i(t) R_i` at the pre-update alphas, where
  :math:`R_i` is a function of the alphas (given the space's ``op_names`` and the ``progress``
  e/E where it takes them) or,
  for the loss-based ones in ``regularize.LOSS_REGULARIZERS``, of the train and val losses at the
  arch step's weights and batches. The metrics hold ``reg/<name>`` (:math:`R_i`) and
  ``reg/<name>/weight`` (:math:`\lambda_i(t)`), and ``alpha_grad_norm`` is the norm of that sum.

  Perturbation: the weight step's loss uses the relaxation
  ``lambda a, k: perturb(relaxation(a, k), k_perturb, epsilon=eps_t)`` with
  ``k_perturb = fold_in(k_weight, 1)`` and :math:`\epsilon_t` from
  :func:`jaxnas.perturb.epsilon_schedule` (logged as ``perturb/epsilon``); a perturbation that takes
  ``loss_fn`` (an attack) gets the weight step's loss as a function of the mixing weights. The
  architecture step and the logged ``mixing_entropy`` use the unperturbed relaxation.

  Hessian eigenvalue: with ``eigen_every = N > 0``, every N-th step (steps N, 2N, ... counted from
  1) logs ``hessian_eigenvalue``, the largest eigenvalue of
  :math:`\nabla^2_\alpha [\mathcal L_{val}(w, \alpha) + \tfrac{\lambda_\alpha}{2}\lVert\alpha
  \rVert^2]` at the step's new weights and alphas on its val batch, with the arch optimiser's L2
  term included as in R-DARTS (Zela et al., ICLR 2020; REFERENCE §10); other steps log NaN. It is
  computed inside the jitted step behind a ``lax.cond``. ``eigen_method`` is ``"dense"`` (the full
  Hessian, as R-DARTS), ``"lanczos"``, ``"power"`` or ``"auto"`` (dense up to 64 alphas, Lanczos
  above); ``eigen_iters`` the iterations of the iterative methods.

  Warm-up (``recipe.arch_warmup_epochs`` = :math:`E_w`, e.g. PC-DARTS' 15, DARTOpti's 5): for
  steps :math:`t < E_w \cdot` ``steps_per_epoch`` the alphas, the arch optimiser's state and the
  BN running statistics leave the arch step as they entered it, so the step is the weight step
  alone, as in the references (PC-DARTS ``train_search.py`` calls ``architect.step`` only from
  epoch 15 on). The departure: the references make no arch forward at all in warm-up; here the
  arch gradient (and its forward on the val batch) is still computed and then discarded, because
  one program serves every step (a traced select, not a second compiled step), so a warm-up step
  costs a full step's time.

  With no regulariser, perturbation or eigenvalue none of this is traced. The recipe's stopping rule
  is not part of the step (see :func:`jaxnas.run.run_search`).

  Args:
    model: a search-space module (``__call__(x, weights, *, train)``).
    recipe: the method; see :class:`jaxnas.methods.Recipe`.
    steps_per_epoch: steps in one epoch (for the per-epoch schedules and warm-up).
    epochs: epochs of the whole search (the schedules' period).
    estimator: overrides the recipe's estimator (a function of the estimator signature).
    jit: return the function jitted (with the state donated); False for tracing by hand.
    eigen_every: log the Hessian eigenvalue every this many steps (0: never).
    eigen_method, eigen_iters: how (see above).
    fuse_phases: for first-order recipes (estimator ``first_order``, arch step first, no attack
      or loss-based regulariser) and train and val batches of one shape, run the two updates as
      two iterations of one ``lax.scan`` whose body is a single forward and backward
      (``phase_loop_update``): the same numbers from a program with one copy of the network.
      ``None`` (default) fuses for the DARTS space, whose compile time is the wall on CPU (C=16,
      4 cells, CPU under load: compile 117 s against 197 s), and not for NB201, whose step runs
      faster unfused (the fused step also computes the weight gradient in the arch phase and
      ran 3.5 s against 1.9 s in that measurement).
    arch_start: the first step whose architecture update is applied, in place of
      ``recipe.arch_warmup_epochs · steps_per_epoch`` (a staged search's warm-up counted from its
      stage's start, :mod:`jaxnas.progressive`).

  Returns:
    The step function. It compiles once: shapes and dtypes fix everything else.

  Raises:
    JaxnasError: for an unknown piece or option in ``recipe`` (:func:`check_recipe`) or a bad
      eigenvalue setting.
  """
  if steps_per_epoch <= 0 or epochs <= 0:
    raise JaxnasError(f"steps_per_epoch ({steps_per_epoch}) and epochs ({epochs}) must be ≥ 1")
  if isinstance(eigen_every, bool) or not isinstance(eigen_every, int) or eigen_every < 0:
    raise JaxnasError(f"eigen_every must be a whole number ≥ 0 (0 turns it off), got "
                      f"{eigen_every!r}")
  if eigen_method not in ("auto", "dense", "lanczos", "power"):
    raise JaxnasError(f"eigen_method must be auto, dense, lanczos or power, got {eigen_method!r}")
  check_recipe(recipe, steps_per_epoch=steps_per_epoch, epochs=epochs)
  op_names = tuple(model.op_names)
  if fuse_phases is None:
    fuse_phases = getattr(model, "space_name", None) == "darts"
  if estimator is None:
    estimator = hypergrad.get(recipe.estimator, **options(recipe.estimator_options))
  frozen = _frozen_weights(model)
  w_tx, a_tx, schedule = make_optimizers(recipe.weight_optimizer, recipe.arch_optimizer,
                                         steps_per_epoch=steps_per_epoch, epochs=epochs,
                                         frozen=frozen)
  inner_tx = make_inner_optimizer(recipe.weight_optimizer, schedule, frozen)
  warmup_steps = (recipe.arch_warmup_epochs * steps_per_epoch if arch_start is None
                  else arch_start)
  regs = _regularizers(recipe)
  perturbation, eps_schedule = _perturbation(recipe, steps_per_epoch, epochs)

  def epoch_of(step):
    return jnp.minimum(step // steps_per_epoch, epochs).astype(jnp.result_type(float))

  def regularize_grad(g_alpha, loss, weights, alphas, train_batch, val_batch, key, step,
                      relaxation=None, batch_stats=None):
    """``g_alpha + ∇_α Σ λ_t R`` and the regularisers' metrics.

    Loss-based regularisers that take ``mixing_loss`` and ``relaxation`` (D-DARTS' ablation loss,
    which evaluates the network at mixing weights of its own) get the step's
    :func:`make_mixing_loss` and relaxation.
    """
    lams = [regularize.scheduled_weight(r, epoch_of(step), epochs) for r, _ in regs]
    progress = epoch_of(step) / epochs

    def total(a):
      values = []
      for r, fn in regs:
        if regularize.is_loss_regularizer(r.name):
          if relaxation is not None:
            fn = _bind(fn, mixing_loss=make_mixing_loss(model, batch_stats), relaxation=relaxation)
          values.append(fn(loss, loss, weights, a, train_batch, val_batch, key))
        else:
          values.append(_bind(fn, op_names=op_names, progress=progress)(a))
      return sum(jnp.asarray(lam, v.dtype) * v for lam, v in zip(lams, values)), values

    (_, values), g_reg = jax.value_and_grad(total, has_aux=True)(alphas)
    metrics = {}
    for (r, _), lam, v in zip(regs, lams, values):
      metrics[f"reg/{r.name}"] = v
      metrics[f"reg/{r.name}/weight"] = jnp.asarray(lam, v.dtype)
    return jax.tree.map(jnp.add, g_alpha, g_reg), metrics

  def arch_update(state, relaxation, weights, batch_stats, train_batch, val_batch, key, lr):
    loss = make_losses(model, relaxation, batch_stats)
    extra = {}
    if _accepts(estimator, "xi"):
      extra["xi"] = lr
    if _accepts(estimator, "gamma"):
      extra["gamma"] = lr
    if recipe.unroll_with_weight_optimizer and _accepts(estimator, "inner_optimizer"):
      extra["inner_optimizer"] = inner_tx
      if _accepts(estimator, "inner_opt_state"):
        extra["inner_opt_state"] = state.w_opt_state
    g_alpha, info = estimator(loss, loss, weights, state.alphas, train_batch, val_batch, key=key,
                              **extra)
    reg_metrics = {}
    if regs:
      g_alpha, reg_metrics = regularize_grad(g_alpha, loss, weights, state.alphas, train_batch,
                                             val_batch, key, state.step, relaxation, batch_stats)
    with _optax_promotion():
      updates, a_opt_state = a_tx.update(g_alpha, state.a_opt_state, state.alphas)
    alphas = optax.apply_updates(state.alphas, updates)
    if recipe.arch_update_hook is not None:
      mixing = jax.lax.stop_gradient(relaxation(state.alphas, key))
      alphas = ARCH_UPDATE_HOOKS[recipe.arch_update_hook](state.alphas, alphas, mixing)
    if warmup_steps:
      active = state.step >= warmup_steps
      alphas = _where_tree(active, alphas, state.alphas)
      a_opt_state = _where_tree(active, a_opt_state, state.a_opt_state)
    val_aux = info.get("val_aux", {})
    new_stats = val_aux.get("batch_stats", batch_stats) if isinstance(val_aux, dict) else batch_stats
    if warmup_steps:  # no arch forward in the references' warm-up: keep the statistics it had
      new_stats = _where_tree(state.step >= warmup_steps, new_stats, batch_stats)
    metrics = {"val_loss": info.get("val_loss", jnp.nan),
               "val_accuracy": val_aux.get("accuracy", jnp.nan) if isinstance(val_aux, dict)
               else jnp.nan,
               "alpha_grad_norm": _global_norm(g_alpha),
               "hvp_passes": info.get("hvp_passes", 0), **reg_metrics}
    return alphas, a_opt_state, new_stats, metrics

  def weight_update(state, relaxation, weights, alphas, batch_stats, train_batch, key):
    weight_relaxation, extra_metrics = relaxation, {}
    if perturbation is not None:
      eps = eps_schedule(state.step)
      k_perturb = jax.random.fold_in(key, 1)
      attack = perturbation
      if _accepts(perturbation, "loss_fn"):
        mixing_loss = make_mixing_loss(model, batch_stats)
        attack = functools.partial(
            perturbation, loss_fn=lambda m: mixing_loss(weights, m, train_batch, key)[0])
      weight_relaxation = lambda a, k: attack(relaxation(a, k), k_perturb, epsilon=eps)
      extra_metrics["perturb/epsilon"] = eps
    loss = make_losses(model, weight_relaxation, batch_stats)
    (value, aux), g_w = jax.value_and_grad(loss, has_aux=True)(weights, alphas, train_batch, key)
    with _optax_promotion():
      updates, w_opt_state = w_tx.update(g_w, state.w_opt_state, weights)
    weights = optax.apply_updates(weights, updates)
    metrics = {"train_loss": value, "train_accuracy": aux["accuracy"],
               "weight_grad_norm": _global_norm(g_w), **extra_metrics}
    return weights, w_opt_state, aux["batch_stats"], metrics

  def hessian_eigenvalue(relaxation, weights, alphas, batch_stats, val_batch, key):
    from jaxnas import eigen  # noqa: PLC0415  (only traced when the eigenvalue is logged)
    loss = make_losses(model, relaxation, batch_stats)
    decay = recipe.arch_optimizer.weight_decay

    def objective(a):
      l2 = sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(a))
      value = loss(weights, a, val_batch, key)[0]
      return value + jnp.asarray(0.5 * decay, value.dtype) * l2

    size = sum(leaf.size for leaf in jax.tree.leaves(alphas))
    method = eigen_method if eigen_method != "auto" else ("dense" if size <= 64 else "lanczos")
    out = eigen.dominant_eigenvalue(objective, alphas, key, method=method, iters=eigen_iters)
    return out[0] if isinstance(out, tuple) else out

  def phase_loop_update(state, relaxation, train_batch, val_batch, k_arch, k_weight):
    """The first-order arch step and the weight step as two iterations of one ``lax.scan``.

    Both updates of a first-order step are one gradient of the same loss on a batch (the val
    batch for alphas, then the train batch for the weights, with the new alphas). Written as two
    copies, XLA:CPU compiles the network's forward and backward twice, and the compile time of
    the DARTS supernet grows faster than the program (RESULTS.md). Scanned over the two phases,
    the body holds one forward and one backward: each phase computes the gradient in both the
    weights and the alphas and keeps the one it needs (the weight gradient of the arch phase is
    the extra work, a fraction of one backward). Same numbers as the two-copy program.
    """
    keys = jnp.stack([k_arch, k_weight])
    if perturbation is not None:
      k_perturb = jax.random.fold_in(k_weight, 1)
      eps = eps_schedule(state.step)

    def body(carry, phase):
      weights, alphas, stats, w_opt_state, a_opt_state = carry
      is_arch = phase == 0
      batch = _where_tree(is_arch, val_batch, train_batch)
      key = keys[phase]
      mixing_loss = make_mixing_loss(model, stats)

      def loss(w, a):
        mixing = relaxation(a, key)
        if perturbation is not None:
          perturbed = perturbation(mixing, k_perturb, epsilon=eps)
          mixing = _where_tree(is_arch, mixing, perturbed)
        return mixing_loss(w, mixing, batch, key)

      (value, aux), (g_w, g_a) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
          weights, alphas)
      reg_metrics = {}
      if regs:
        g_a, reg_metrics = regularize_grad(g_a, None, weights, alphas, train_batch, val_batch,
                                           key, state.step)
      with _optax_promotion():
        a_updates, new_a_opt = a_tx.update(g_a, a_opt_state, alphas)
        w_updates, new_w_opt = w_tx.update(g_w, w_opt_state, weights)
      new_alphas = optax.apply_updates(alphas, a_updates)
      if warmup_steps:
        active = state.step >= warmup_steps
        new_alphas = _where_tree(active, new_alphas, alphas)
        new_a_opt = _where_tree(active, new_a_opt, a_opt_state)
      new_weights = optax.apply_updates(weights, w_updates)
      pick = functools.partial(_where_tree, is_arch)  # (arch phase's value, weight phase's)
      new_stats = aux["batch_stats"]
      if warmup_steps:  # the arch phase leaves the statistics alone during warm-up
        new_stats = _where_tree(is_arch & (state.step < warmup_steps), stats, new_stats)
      carry = (pick(weights, new_weights), pick(new_alphas, alphas), new_stats,
               pick(w_opt_state, new_w_opt), pick(new_a_opt, a_opt_state))
      out = {"loss": value, "accuracy": aux["accuracy"],
             "grad_norm": jnp.where(is_arch, _global_norm(g_a), _global_norm(g_w)), **reg_metrics}
      return carry, out

    init = (state.weights, state.alphas, state.batch_stats, state.w_opt_state, state.a_opt_state)
    (weights, alphas, stats, w_opt, a_opt), out = jax.lax.scan(body, init, jnp.arange(2))
    m_a = {"val_loss": out["loss"][0], "val_accuracy": out["accuracy"][0],
           "alpha_grad_norm": out["grad_norm"][0], "hvp_passes": jnp.asarray(0, jnp.int32),
           **{k: v[0] for k, v in out.items() if k.startswith("reg/")}}
    m_w = {"train_loss": out["loss"][1], "train_accuracy": out["accuracy"][1],
           "weight_grad_norm": out["grad_norm"][1]}
    if perturbation is not None:
      m_w["perturb/epsilon"] = eps
    return weights, w_opt, alphas, a_opt, stats, m_a, m_w

  def fusable(train_batch, val_batch) -> bool:
    same_batches = (jax.tree.structure(train_batch) == jax.tree.structure(val_batch) and all(
        jnp.shape(t) == jnp.shape(v) and jnp.result_type(t) == jnp.result_type(v)
        for t, v in zip(jax.tree.leaves(train_batch), jax.tree.leaves(val_batch))))
    return (fuse_phases and same_batches and recipe.arch_first
            and recipe.arch_update_hook is None
            and estimator is hypergrad.first_order
            and not any(regularize.is_loss_regularizer(r.name) for r, _ in regs)
            and (perturbation is None or not _accepts(perturbation, "loss_fn")))

  def search_step(state: SearchState, train_batch, val_batch):
    step_key = jax.random.fold_in(state.key, state.step)
    k_arch, k_weight = jax.random.split(step_key)
    lr = schedule(state.step)
    relaxation = make_relaxation(recipe, op_names, progress=epoch_of(state.step) / epochs)
    if fusable(train_batch, val_batch):
      weights, w_opt, alphas, a_opt, stats, m_a, m_w = phase_loop_update(
          state, relaxation, train_batch, val_batch, k_arch, k_weight)
    elif recipe.arch_first:
      alphas, a_opt, stats, m_a = arch_update(state, relaxation, state.weights, state.batch_stats,
                                              train_batch, val_batch, k_arch, lr)
      weights, w_opt, stats, m_w = weight_update(state, relaxation, state.weights, alphas, stats,
                                                 train_batch, k_weight)
    else:
      weights, w_opt, stats, m_w = weight_update(state, relaxation, state.weights, state.alphas,
                                                 state.batch_stats, train_batch, k_weight)
      moved = state._replace(weights=weights, w_opt_state=w_opt)
      alphas, a_opt, stats, m_a = arch_update(moved, relaxation, weights, stats, train_batch,
                                              val_batch, k_arch, lr)
    mixing = relaxation(alphas, k_arch)
    metrics = {**m_w, **m_a, "lr": lr, "mixing_entropy": mixing_entropy(mixing)}
    metrics["nonfinite"] = nonfinite_mask(metrics, weights, alphas)
    if eigen_every:
      k_eigen = jax.random.fold_in(step_key, 3)
      due = (state.step + 1) % eigen_every == 0
      dtype = jax.tree.leaves(alphas)[0].dtype
      metrics["hessian_eigenvalue"] = jax.lax.cond(
          due,
          lambda: hessian_eigenvalue(relaxation, weights, alphas, stats, val_batch,
                                     k_eigen).astype(dtype),
          lambda: jnp.asarray(jnp.nan, dtype))
    new_state = SearchState(weights=weights, batch_stats=stats, alphas=alphas, w_opt_state=w_opt,
                            a_opt_state=a_opt, step=state.step + 1, key=state.key)
    return new_state, metrics

  if jit:
    return jax.jit(search_step, donate_argnums=0)
  return search_step


def init_variables(model, key, image_shape, alphas, relaxation: Callable = relax.softmax):
  """Initial ``params`` and ``batch_stats`` of ``model``.

  Parameter shapes depend on neither batch size nor image size, so the network is initialised on a
  single image. Initialisation is compiled once at XLA's lowest optimisation level with a
  counter-free ``unsafe_rbg`` key derived from ``key``: on a 2-core CPU, compiling Flax's threefry
  key splitting for every parameter otherwise costs more than compiling the search step itself
  (measured: 23 s against 4 s for the quick-start network). It always runs on the host CPU and the
  result is then placed on the default device: the RNG bits of ``unsafe_rbg`` are backend-specific,
  so this gives the same initial weights on a CPU and a GPU machine, and the GPU is spared compiling
  a program that runs once (26 s on an H200 for the quick-start network). The values are
  deterministic in ``key``.
  """
  cpu = jax.local_devices(backend="cpu")[0]
  seed = int(jax.random.randint(key, (), 0, jnp.iinfo(jnp.int32).max))
  with jax.default_device(cpu):
    x = jnp.zeros((1,) + tuple(image_shape), model.dtype)
    weights = jax.device_put(relaxation(alphas, None), cpu)
    init_key = jax.random.key(seed, impl="unsafe_rbg")
    init = jax.jit(lambda k, x, w: model.init(k, x, w, train=False))
    compiled = init.lower(init_key, x, weights).compile({"xla_backend_optimization_level": 0})
    variables = compiled(init_key, x, weights)
  variables = jax.device_put(variables, jax.local_devices()[0])
  return variables["params"], variables.get("batch_stats", {})


def init_search_state(model, recipe: Recipe, key, image_shape, *, steps_per_epoch: int,
                      epochs: int) -> SearchState:
  """A fresh :class:`SearchState`: weights, statistics, alphas and both optimiser states."""
  k_alpha, k_weights, k_run = jax.random.split(key, 3)
  alphas = model.init_alphas(k_alpha)
  weights, batch_stats = init_variables(model, k_weights, image_shape, alphas)
  w_tx, a_tx, _ = make_optimizers(recipe.weight_optimizer, recipe.arch_optimizer,
                                  frozen=_frozen_weights(model),
                                  steps_per_epoch=steps_per_epoch, epochs=epochs)
  state = SearchState(weights=weights, batch_stats=batch_stats, alphas=alphas,
                      w_opt_state=w_tx.init(weights), a_opt_state=a_tx.init(alphas),
                      step=jnp.asarray(0, jnp.int32), key=k_run)
  # Commit every leaf to the device: the step's outputs are committed, and jit keys its cache on
  # whether inputs are, so an uncommitted leaf (jnp.asarray(0) above) would make the second step
  # compile the whole program again (measured: 97 s + 66 s for one tiny NB201 step).
  return jax.device_put(state, jax.local_devices()[0])  # this process's (multi-host)


def evaluate(model, relaxation: Callable, state: SearchState, images, labels, *,
             batch_size: int = 256):
  """Loss and accuracy of the supernet in eval mode (running statistics) on a whole split.

  The last partial batch is padded and masked, so every example counts once and one compiled
  program serves every batch.
  """
  weights = relaxation(state.alphas, None)

  @jax.jit
  def batch_sums(x, y, mask):
    logits = model.apply({"params": state.weights, "batch_stats": state.batch_stats}, x, weights,
                         train=False)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    pred = jnp.argmax(logits, -1)
    correct = (pred == y.astype(pred.dtype)).astype(ce.dtype)
    return jnp.sum(ce * mask), jnp.sum(correct * mask)

  n = len(images)
  batch_size = max(1, min(batch_size, n))
  total_loss, total_correct = 0.0, 0.0
  for start in range(0, n, batch_size):
    x, y = images[start:start + batch_size], labels[start:start + batch_size]
    m = len(x)
    if m < batch_size:
      pad = batch_size - m
      x = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)])
      y = jnp.concatenate([y, jnp.zeros((pad,), y.dtype)])
    mask = (jnp.arange(batch_size) < m).astype(model.dtype)
    l, c = batch_sums(jnp.asarray(x), jnp.asarray(y), mask)
    total_loss += float(l)
    total_correct += float(c)
  return total_loss / n, total_correct / n
