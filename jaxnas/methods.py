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

from jaxnas import progressive as _progressive
from jaxnas.errors import JaxnasError, unknown_name

__all__ = ["Recipe", "Regularizer", "WeightOptimizer", "ArchOptimizer", "METHODS", "get",
           "register", "options", "freeze_options", "SCHEDULES"]


def freeze_options(opts: Optional[dict]) -> tuple:
  """A dict of options as a sorted tuple of pairs (hashable, frozen)."""
  return tuple(sorted((opts or {}).items()))


def options(frozen: tuple) -> dict:
  """The inverse of :func:`freeze_options`."""
  return dict(frozen)


SCHEDULES = ("constant", "linear", "decay-half")


@dataclasses.dataclass(frozen=True)
class Regularizer:
  """One term ``λ_t · R(α)`` of the architecture objective.

  Attributes:
    name: key of :data:`jaxnas.regularize.REGULARIZERS`.
    weight: ``λ`` (the final weight for ``"linear"``).
    schedule: ``"constant"`` (``λ_t = λ``), ``"linear"`` (``λ_t = λ·e/E`` at epoch ``e`` of
      ``E``, counted from 0 and constant within an epoch, as β-DARTS' ``λ = λ_max·epoch/E``) or
      ``"decay-half"`` (``λ_t = λ·max(0, 1 − 2e/E)``, CDARTS).
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
    arch_update_hook: name in :data:`jaxnas.search.ARCH_UPDATE_HOOKS` of a function
      ``hook(old_alphas, new_alphas, mixing) -> alphas`` applied after each architecture update,
      ``mixing`` being the arch step's sample (ProxylessNAS' ``rescale-pair-logits``); None: none.
    space_options: keyword options for the search space's module that the method needs, e.g.
      NoisyDARTS' ``(("skip_noise", 0.2),)``.
    stages: ``()`` for one search, or the stages of a staged search (DrNAS' progressive
      schedule), each made by :func:`jaxnas.progressive.stage`: its share of the steps, the space
      options it changes (``partial_channels``; ``space_options`` hold the first stage's), the
      operations kept per edge from its start and its architecture warm-up. Each stage is a
      supernet of its own shapes with its own compiled step; :func:`jaxnas.run.run_search` rebuilds
      the state at each boundary (:mod:`jaxnas.progressive`). ``arch_warmup_epochs`` is then
      unused: each stage has its own warm-up.
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
  arch_update_hook: Optional[str] = None
  space_options: tuple = ()
  stages: tuple = ()
  weight_optimizer: WeightOptimizer = WeightOptimizer()
  arch_optimizer: ArchOptimizer = ArchOptimizer()
  paper: str = ""

  def __post_init__(self):
    object.__setattr__(self, "regularizers", tuple(map(_regularizer, self.regularizers)))
    for field in ("relaxation_options", "estimator_options", "perturbation_options",
                  "space_options"):
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


# ------------------------------------------------------------------------------------------------
# Hypergradient recipes (DESIGN §3, REFERENCE §1–§2). xi and gamma default to the current weight
# learning rate (the search step passes it); the unrolled inner step is the weights' own optax
# optimiser without its clipping stage (search.make_inner_optimizer), as quark0/darts' unrolled step.

_DARTS_PAPER = "Liu, Simonyan, Yang. DARTS: Differentiable Architecture Search. ICLR 2019."

register(Recipe(
    name="darts-2nd",
    description="DARTS, second order as the reference: one unrolled step (momentum and weight "
                "decay), mixed term by central finite difference, R = 0.01/‖v‖",
    estimator="unrolled_fd",
    estimator_options=(("epsilon", 0.01),),
    paper=_DARTS_PAPER,
))

register(Recipe(
    name="darts-2nd-exact",
    description="DARTS, second order with the mixed product exact (jvp) instead of the finite "
                "difference; equals autodiff through the unrolled step",
    estimator="unrolled_hvp",
    paper=_DARTS_PAPER,
))

register(Recipe(
    name="darts-unrolled",
    description="exact gradient through T = 3 unrolled steps of the weights' optimiser "
                "(reverse-mode autodiff; T by --estimator-option unroll_steps=T)",
    estimator="unrolled_autodiff",
    estimator_options=(("unroll_steps", 3),),
    paper=_DARTS_PAPER + " (T-step unrolling: Franceschi et al., ICML 2017)",
))

register(Recipe(
    name="idarts",
    description="iDARTS: Neumann-series implicit gradient, K = 2, γ = the weight lr, after T = 4 "
                "inner steps (from the current weights, not kept; the weight step stays DARTS')",
    estimator="neumann",
    estimator_options=(("num_terms", 2), ("unroll_steps", 4)),
    paper="Zhang, Su, Qi, et al. iDARTS: Differentiable Architecture Search with Stochastic "
          "Implicit Gradients. ICML 2021.",
))

register(Recipe(
    name="implicit-cg",
    description="implicit gradient with damped conjugate gradients: (H + λI)x = ∇_w L_val, λ = 1, "
                "at most 10 HVPs (jaxnas' choice; no reference code)",
    estimator="cg",
    estimator_options=(("damping", 1.0), ("maxiter", 10), ("tol", 1e-5)),
    paper="Rajeswaran, Finn, Kakade, Levine. Meta-Learning with Implicit Gradients. NeurIPS 2019 "
          "(the damped CG solve); Lorraine, Vicol, Duvenaud. AISTATS 2020 (IFT hyperparameters).",
))

register(Recipe(
    name="milenas",
    description="MiLeNAS mixed-level: g = ∇_α L_val + λ ∇_α L_train, λ = 1, first order",
    estimator="mixed_level",
    estimator_options=(("mixed_weight", 1.0),),
    paper="He, Wang, Li. MiLeNAS: Efficient Neural Architecture Search via Mixed-Level "
          "Reformulation. CVPR 2020.",
))


# ------------------------------------------------------------------------------------------------
# Robustness recipes (DESIGN §4, REFERENCE §3, §6–§11).

_SDARTS_PAPER = ("Chen, Hsieh. Stabilizing Differentiable Architecture Search via "
                 "Perturbation-based Regularization. ICML 2020.")

register(Recipe(
    name="sdarts-rs",
    description="SDARTS-RS: uniform noise U(−ε, ε) on softmax(α), clipped to the simplex, seen by the "
                "weight step only; ε 0.03 → 0.3",
    perturbation="random-smoothing",
    perturbation_options=(("epsilon_end", 0.3), ("epsilon_start", 0.03)),
    paper=_SDARTS_PAPER,
))

register(Recipe(
    name="sdarts-adv",
    description="SDARTS-ADV: 7-step L∞ PGD attack on softmax(α) raising the train loss, seen by the "
                "weight step only; ε 0.03 → 0.3",
    perturbation="pgd",
    perturbation_options=(("epsilon_end", 0.3), ("epsilon_start", 0.03), ("steps", 7)),
    paper=_SDARTS_PAPER,
))

register(Recipe(
    name="beta-darts",
    description="β-DARTS: Beta-Decay regulariser mean_e logsumexp(α_e), λ linear from 0 to 50",
    regularizers=(Regularizer("beta-decay", 50.0, "linear"),),
    paper="Ye, Li, Huang, et al. β-DARTS: Beta-Decay Regularization for Differentiable "
          "Architecture Search. CVPR 2022.",
))

register(Recipe(
    name="fairdarts",
    description="FairDARTS: sigmoid(α) without 'none', zero-one loss w01 = 10, threshold 0.85 "
                "derivation (sparse); weight lr 0.005, arch Adam 3e-3 β (0.9, 0.999); the paper "
                "uses batch 128 (--batch-size)",
    relaxation="sigmoid",
    regularizers=(Regularizer("zero-one", 10.0),),
    derivation="fairdarts-sparse",
    weight_optimizer=WeightOptimizer(lr=0.005, lr_min=0.001),
    arch_optimizer=ArchOptimizer(lr=3e-3, b1=0.9, b2=0.999),
    paper="Chu, Zhou, Zhang, Li. Fair DARTS: Eliminating Unfair Advantages in Differentiable "
          "Architecture Search. ECCV 2020.",
))

register(Recipe(
    name="darts-minus",
    description="DARTS−: auxiliary skip β_aux·skip(x) outside the softmax on every edge, β_aux "
                "linear 1 → 0 over the search",
    relaxation="darts-minus",
    paper="Chu, Wang, Zhang, Zhang, Wei, Yan. DARTS-: Robustly Stepping out of Performance "
          "Collapse Without Indicators. ICLR 2021.",
))

register(Recipe(
    name="noisy-darts",
    description="NoisyDARTS: Gaussian noise of std 0.2·std(x) on every skip_connect output in "
                "train mode, no 'none'; weight lr 0.05 (the paper uses batch 128: --batch-size)",
    relaxation="softmax",
    relaxation_options=(("exclude", ("none",)),),
    space_options=(("skip_noise", 0.2),),
    weight_optimizer=WeightOptimizer(lr=0.05),
    paper="Chu, Zhang, Li, Li, Wei. Noisy Differentiable Architecture Search. BMVC 2021 "
          "(arXiv:2005.03566).",
))

register(Recipe(
    name="cdarts-l1",
    description="CDARTS' L1 on the raw logits of the parameter-free ops (pools, skip), weight 5 "
                "decaying linearly to 0 at half the search",
    regularizers=(Regularizer("cdarts-l1", 5.0, "decay-half"),),
    paper="Yu, Peng, Fu, et al. Cyclic Differentiable Architecture Search. TPAMI 2022 "
          "(microsoft/Cream).",
))

register(Recipe(
    name="pr-darts",
    description="PR-DARTS: hard-concrete gates (top-2 ops per edge, straight-through), skip / "
                "non-skip group losses (0.01, 0.005) and path-depth loss (0.005), τ 1 → 0.1",
    relaxation="pr-gates",
    regularizers=(Regularizer("pr-skip", 0.01), Regularizer("pr-nonskip", 0.005),
                  Regularizer("pr-path", 0.005)),
    derivation="pr-darts-top2",
    paper="Zhou, Xiong, Socher, Hoi. Theory-Inspired Path-Regularized Differential Network "
          "Architecture Search. NeurIPS 2020.",
))

register(Recipe(
    name="unas-gap",
    description="DARTS first order plus UNAS' generalisation-gap penalty 0.5·|L_val − L_train|, "
                "differentiated in α (UNAS' own objective is L_train + the penalty)",
    regularizers=(Regularizer("unas-abs-gap", 0.5),),
    paper="Vahdat, Mallya, Liu, Kautz. UNAS: Differentiable Architecture Search Meets "
          "Reinforcement Learning. CVPR 2020.",
))

register(Recipe(
    name="darts-plus",
    description="DARTS+: DARTS first order that stops early when the normal cell has ≥ 2 skips "
                "or the ranking of the learnable ops' alphas is stable for 10 epochs",
    stopping="darts-plus",
    paper="Liang, Zhang, Sun, et al. DARTS+: Improved Differentiable Architecture Search with "
          "Early Stopping. arXiv:1909.06035, 2019.",
))

register(Recipe(
    name="rdarts-es",
    description="R-DARTS' DARTS-ES: the dominant eigenvalue of ∇²_α L_val every 2 epochs; stop "
                "when its local average grows 1.3× and return the genotype 8 epochs earlier",
    stopping="rdarts-es",
    paper="Zela, Elsken, Saikia, Marrakchi, Brox, Hutter. Understanding and Robustifying "
          "Differentiable Architecture Search. ICLR 2020.",
))


# ------------------------------------------------------------------------------------------------
# Memory-efficient recipes (issue 5).

register(Recipe(
    name="pc-darts",
    description="PC-DARTS: 1/4 of each edge's channels through the mixed op (the rest bypass, "
                "channel shuffle), edge normalisation β per node, derivation from "
                "softmax(α)·softmax(β); 15 warm-up epochs; weight lr 0.1, arch Adam 6e-4 (the "
                "paper uses batch 256: --batch-size 256)",
    relaxation="pc-darts",
    derivation="pc-darts-top2",
    space_options=(("edge_normalization", True), ("partial_channels", 4)),
    arch_warmup_epochs=15,
    weight_optimizer=WeightOptimizer(lr=0.1, lr_min=0.001),
    arch_optimizer=ArchOptimizer(lr=6e-4),
    paper="Xu, Xie, Zhang, Chen, Qi, Tian, Xiong. PC-DARTS: Partial Channel Connections for "
          "Memory-Efficient Architecture Search. ICLR 2020.",
))


# ------------------------------------------------------------------------------------------------
# D-DARTS (issue 8, REFERENCE §12, jaxnas.ddarts).

_DDARTS_PAPER = ("Heuillet, Tabia, Arioui, Youcef-Toumi. D-DARTS: Distributed Differentiable "
                 "Architecture Search. Pattern Recognition Letters 2023 (arXiv:2108.09306).")

register(Recipe(
    name="d-darts",
    description="D-DARTS: one α per cell (darts space, cell_sharing none), sigmoid without "
                "'none', per-cell zero-one loss w01 = 8, ablation loss w_AB = 0.5 (constant, as "
                "the authors' code), per-cell threshold derivation 0.85; weight lr 0.005, arch "
                "Adam 3e-3 β (0.9, 0.999) (the paper uses batch 128: --batch-size 128)",
    relaxation="sigmoid",
    regularizers=(Regularizer("zero-one-cells", 8.0), Regularizer("ddarts-ablation", 0.5)),
    derivation="ddarts-sparse",
    space_options=(("cell_sharing", "none"),),
    weight_optimizer=WeightOptimizer(lr=0.005, lr_min=0.001),
    arch_optimizer=ArchOptimizer(lr=3e-3, b1=0.9, b2=0.999),
    paper=_DDARTS_PAPER,
))

# DARTOpti (D-DARTS §4.4): D-DARTS over the 12-op set S_o (jaxnas.spaces.dartopti), 5 epochs of
# weight-only warm start (the authors' --pretrain_epochs 5), usually started from a hand-made
# network with --init-genotype resnet18|resnet50 (alphas 10 on its ops, 0 elsewhere; the network's
# cells, reductions and nodes per cell come from it). Without it: 8 searched cells from α = 0.
register(Recipe(
    name="dartopti",
    description="DARTOpti: d-darts over the 12-op set S_o (no 'none'), 5 warm-start epochs before "
                "the alphas move, w01 = 8, w_AB = 0.5; --init-genotype resnet18|resnet50 starts "
                "from a hand-made network (else 8 cells from α = 0); paper batch 128",
    relaxation="sigmoid",
    regularizers=(Regularizer("zero-one-cells", 8.0), Regularizer("ddarts-ablation", 0.5)),
    derivation="ddarts-sparse",
    arch_warmup_epochs=5,
    space_options=(("cell_sharing", "none"), ("op_set", "dartopti")),
    weight_optimizer=WeightOptimizer(lr=0.005, lr_min=0.001),
    arch_optimizer=ArchOptimizer(lr=3e-3, b1=0.9, b2=0.999),
    paper=_DDARTS_PAPER,
))


# ------------------------------------------------------------------------------------------------
# Sampling methods (issue 5, REFERENCE §5 and §13, jaxnas.sampling, jaxnas.spaces.sampled). The
# hard ones run the sampled-operation supernet (space option sampled): only the sampled
# operations of each edge are computed, with the full supernet's parameters.

register(Recipe(
    name="gdas",
    description="GDAS: hard Gumbel-softmax, one sample per cell type per step, only the sampled op "
                "computed (straight-through), τ 10 → 0.1, weight step before the arch step; SGD "
                "nesterov, weight decay 5e-4",
    relaxation="gumbel-hard",
    space_options=(("sampled", True),),
    arch_first=False,
    weight_optimizer=WeightOptimizer(nesterov=True, weight_decay=5e-4),
    paper="Dong, Yang. Searching for a Robust Neural Architecture in Four GPU Hours. CVPR 2019.",
))

register(Recipe(
    name="snas",
    description="SNAS: soft Gumbel-softmax sample per step (all ops computed), τ 10 → 0.1, "
                "resource term 0.1·E[normalised FLOPs] (closed-form expectation)",
    relaxation="gumbel-soft",
    regularizers=(Regularizer("expected-flops", 0.1),),
    paper="Xie, Zheng, Liu, Lin. SNAS: Stochastic Neural Architecture Search. ICLR 2019.",
))

register(Recipe(
    name="d2nas",
    description="D2NAS: hard Gumbel-softmax op per edge without 'none' and exactly two input edges "
                "per node (Gumbel-top-2, straight-through), only the sampled ops computed, τ 10 → "
                "0.1, weight step first (branch cells: d2nas-branch)",
    relaxation="d2nas",
    space_options=(("sampled", True),),
    arch_first=False,
    paper="D2NAS (the seed paper of issue 5); sampler after GDAS (Dong & Yang, CVPR 2019).",
))

register(Recipe(
    name="d2nas-branch",
    description="D2NAS with branch cells: d2nas' sampler (one op per edge, two input edges per "
                "node); the cells' candidate operations keep their initial weights and only "
                "their architecture is learnt, the weight step trains the backbone (stem, cell "
                "preprocessing, classifier)",
    relaxation="d2nas",
    space_options=(("branch_cells", True), ("sampled", True)),
    arch_first=False,
    paper="Hou. Decoupled Differentiable Neural Architecture Search: Memory-Efficient "
          "Differentiable NAS via Disentangled Search Space. ICML 2024 workshop (branch cells: "
          "jaxnas' reading of the abstract, jaxnas.spaces.branch).",
))

register(Recipe(
    name="drnas",
    description="DrNAS: mixing ~ Dirichlet(ELU(α)+1), reparameterised, no 'none', ops per edge "
                "pruned to the top 4 at half the search; weight lr 0.1, arch Adam 6e-4 "
                "(KL prior: --add-regularizer dirichlet-kl:W)",
    relaxation="dirichlet",
    relaxation_options=(("prune_to", 4),),
    weight_optimizer=WeightOptimizer(lr=0.1),
    arch_optimizer=ArchOptimizer(lr=6e-4),
    paper="Chen, Wang, Cheng, Tang, Hsieh. DrNAS: Dirichlet Neural Architecture Search. ICLR 2021.",
))

# DrNAS' progressive schedule as the reference runs it (REFERENCE §13, jaxnas.progressive):
# stage 1 with partial channels K = 6 and all 7 ops, stage 2 rebuilt with K = 4 and the top 4 ops
# per edge (mask fixed at the boundary), each stage's first 40% (10 of 25 epochs) weight-only.
register(Recipe(
    name="drnas-progressive",
    description="DrNAS as the reference: Dirichlet(ELU(α)+1) without 'none', two stages (half the "
                "search each): partial channels K = 6 with 7 ops, then K = 4 with the top 4 ops "
                "per edge (weights widened, mask fixed); arch steps after 40% of each stage; "
                "weight lr 0.1 cosine to 0, arch Adam 6e-4 (darts space, --channels a multiple "
                "of 12; the paper: 36 channels, 20 cells)",
    relaxation="dirichlet",
    space_options=(("partial_channels", 6),),
    stages=(_progressive.stage(0.5, arch_warmup=0.4),
            _progressive.stage(0.5, space_options={"partial_channels": 4}, keep_ops=4,
                               arch_warmup=0.4)),
    weight_optimizer=WeightOptimizer(lr=0.1, lr_min=0.0),
    arch_optimizer=ArchOptimizer(lr=6e-4),
    paper="Chen, Wang, Cheng, Tang, Hsieh. DrNAS: Dirichlet Neural Architecture Search. ICLR 2021.",
))

register(Recipe(
    name="proxylessnas",
    description="ProxylessNAS: binary gates, two paths sampled per edge and only those computed, "
                "re-normalised two-path gradient, latency term 0.1·E[normalised latency] from the "
                "op-cost table, weight step first; arch Adam 1e-3 β (0, 0.999), no weight decay; "
                "the pair's logits shifted after each arch step so the others' probabilities stay",
    relaxation="binary-gates",
    regularizers=(Regularizer("expected-latency", 0.1),),
    space_options=(("sampled", True),),
    arch_first=False,
    arch_optimizer=ArchOptimizer(lr=1e-3, b1=0.0, b2=0.999, weight_decay=0.0),
    arch_update_hook="rescale-pair-logits",
    paper="Cai, Zhu, Han. ProxylessNAS: Direct Neural Architecture Search on Target Task and "
          "Hardware. ICLR 2019.",
))
