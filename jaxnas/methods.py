"""Methods as recipes: a frozen record of named pieces, and a registry of them.

A DARTS-family method is data, not a fork: which relaxation turns alphas into mixing weights, which
hypergradient estimator updates alphas, which regularisers and perturbation enter, which rule derives
the genotype, which rule stops the search, in what order the two updates run, and the optimiser
settings. :func:`jaxnas.search.make_search_step` reads a :class:`Recipe` and builds one jitted step;
the loop is the same for every method. New methods register a recipe in :data:`METHODS`.

Options are stored as sorted tuples of ``(name, value)`` pairs so that a recipe stays hashable and
frozen; :func:`options` turns one back into a dict.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Optional

from jaxnas.errors import JaxnasError, unknown_name

__all__ = ["Recipe", "Regularizer", "WeightOptimizer", "ArchOptimizer", "METHODS", "get",
           "register", "options", "freeze_options", "SCHEDULES"]


def freeze_options(opts: Optional[dict]) -> tuple:
  """A dict of options as a sorted tuple of pairs (hashable, frozen)."""
  return tuple(sorted((opts or {}).items()))


def options(frozen: tuple) -> dict:
  """The inverse of :func:`freeze_options`."""
  return dict(frozen)


SCHEDULES = ("constant", "linear")


@dataclasses.dataclass(frozen=True)
class Regularizer:
  """One term ``λ_t · R(α)`` of the architecture objective.

  Attributes:
    name: key of :data:`jaxnas.regularize.REGULARIZERS`.
    weight: ``λ`` (the final weight for ``"linear"``).
    schedule: ``"constant"`` (``λ_t = λ``) or ``"linear"`` (``λ_t = λ·e/E`` at epoch ``e`` of
      ``E``, counted from 0 and constant within an epoch, as β-DARTS' ``λ = λ_max·epoch/E``).
  """

  name: str
  weight: float
  schedule: str = "constant"

  def __post_init__(self):
    if self.schedule not in SCHEDULES:
      raise unknown_name("regularizer schedule", self.schedule, SCHEDULES)
    if not isinstance(self.weight, numbers.Real) or isinstance(self.weight, bool):
      raise JaxnasError(f"regularizer {self.name!r} needs a number as weight, got {self.weight!r}")


def _regularizer(item) -> Regularizer:
  if isinstance(item, Regularizer):
    return item
  if isinstance(item, (tuple, list)) and len(item) in (2, 3):
    return Regularizer(*item)
  raise JaxnasError(f"a regularizer is a Regularizer(name, weight, schedule) or a (name, weight"
                    f"[, schedule]) tuple, got {item!r}")


@dataclasses.dataclass(frozen=True)
class WeightOptimizer:
  """SGD for the network weights, as DARTS (DESIGN §5).

  Gradients are clipped to global norm ``clip``, then ``weight_decay · w`` is added (PyTorch's
  coupled L2), then SGD with ``momentum`` (PyTorch's form: m ← g + μm, w ← w − lr·m) at a learning
  rate that follows a cosine from ``lr`` to ``lr_min`` over the search, stepped once per epoch as
  ``torch.optim.lr_scheduler.CosineAnnealingLR`` is in the reference.
  """

  lr: float = 0.025
  lr_min: float = 0.001
  momentum: float = 0.9
  nesterov: bool = False
  weight_decay: float = 3e-4
  clip: Optional[float] = 5.0


@dataclasses.dataclass(frozen=True)
class ArchOptimizer:
  """Adam for the architecture logits, as DARTS: lr 3e-4, betas (0.5, 0.999), L2 1e-3.

  The L2 term is added to the gradient before Adam (``torch.optim.Adam(weight_decay=...)``), not
  decoupled as in AdamW, matching the reference.
  """

  lr: float = 3e-4
  b1: float = 0.5
  b2: float = 0.999
  eps: float = 1e-8
  weight_decay: float = 1e-3
  clip: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class Recipe:
  """The named pieces of a search method.

  Attributes:
    name: registry name.
    description: one line for ``jaxnas methods``.
    relaxation: name in :data:`jaxnas.relax.RELAXATIONS`; ``relaxation_options`` its options.
    estimator: name in :data:`jaxnas.hypergrad.ESTIMATORS`; ``estimator_options`` its options.
      Estimators that accept ``xi`` or ``gamma`` get the current weight learning rate there unless
      the options fix it; those that accept ``inner_optimizer`` get the weights' optax optimiser and
      state when ``unroll_with_weight_optimizer`` is true.
    perturbation: name in :data:`jaxnas.perturb.PERTURBATIONS` of a perturbation of the mixing
      weights that only the weight step sees, or None. ``perturbation_options`` holds
      ``epsilon_start`` and ``epsilon_end`` (ε linear over epochs, default 0.03 → 0.3 as SDARTS)
      and any keyword options of the perturbation itself.
    regularizers: :class:`Regularizer` records whose ``λ_t · R(α)`` are added to the architecture
      objective (``(name, weight[, schedule])`` tuples are converted).
    derivation: derivation rule name, or None for the space's default rule.
    stopping: name in :data:`jaxnas.stopping.STOPPING_RULES` of a rule that
      :func:`jaxnas.run.run_search` evaluates at each epoch end, or None to run all steps.
    arch_first: architecture step before the weight step (DARTS); False for GDAS's order.
    arch_warmup_epochs: epochs of weight-only training before alphas move (PC-DARTS: 15).
    weight_optimizer, arch_optimizer: optimiser settings.
    paper: reference for the method.
  """

  name: str
  description: str
  relaxation: str = "softmax"
  relaxation_options: tuple = ()
  estimator: str = "first_order"
  estimator_options: tuple = ()
  unroll_with_weight_optimizer: bool = True
  perturbation: Optional[str] = None
  perturbation_options: tuple = ()
  regularizers: tuple = ()
  derivation: Optional[str] = None
  stopping: Optional[str] = None
  arch_first: bool = True
  arch_warmup_epochs: int = 0
  weight_optimizer: WeightOptimizer = WeightOptimizer()
  arch_optimizer: ArchOptimizer = ArchOptimizer()
  paper: str = ""

  def __post_init__(self):
    object.__setattr__(self, "regularizers", tuple(map(_regularizer, self.regularizers)))
    for field in ("relaxation_options", "estimator_options", "perturbation_options"):
      if isinstance(getattr(self, field), dict):  # a dict is accepted and frozen
        object.__setattr__(self, field, freeze_options(getattr(self, field)))

  def replace(self, **changes: Any) -> "Recipe":
    return dataclasses.replace(self, **changes)


METHODS: dict[str, Recipe] = {}


def register(recipe: Recipe) -> Recipe:
  """Adds ``recipe`` to :data:`METHODS` under its name (an existing name is an error)."""
  if recipe.name in METHODS:
    raise JaxnasError(f"a method named {recipe.name!r} is already registered")
  METHODS[recipe.name] = recipe
  return recipe


def get(name: str) -> Recipe:
  """The recipe called ``name``."""
  if name not in METHODS:
    raise unknown_name("method", name, METHODS)
  return METHODS[name]


register(Recipe(
    name="darts-1st",
    description="DARTS, first order: softmax relaxation, g = ∇_α L_val(w, α), top-2 derivation",
    paper="Liu, Simonyan, Yang. DARTS: Differentiable Architecture Search. ICLR 2019.",
))
