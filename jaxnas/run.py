"""A whole search as the ``jaxnas search`` command runs it: config, run directory, loop, results.

The run directory (DESIGN §6) holds ``config.json`` (everything needed to repeat the run, versions
and ``num_params`` included), ``metrics.jsonl`` (one JSON object per logged step), ``alphas.npz``,
``genotype.json`` and ``summary.json``. An existing directory is never overwritten.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import pathlib
import platform
import sys
import time
from typing import Any, NamedTuple, Optional

import numpy as np

from jaxnas.errors import JaxnasError

__all__ = ["SearchConfig", "run_search", "space_config", "build", "count_params", "RESULT_FILES"]

RESULT_FILES = ("config.json", "metrics.jsonl", "alphas.npz", "genotype.json", "summary.json")

# Defaults per space when --channels / --cells are not given: small enough for a laptop CPU.
_SPACE_DEFAULTS = {"nb201": dict(channels=8, cells=1), "darts": dict(channels=16, cells=8)}
# --fuse-phases → search.make_search_step(fuse_phases=...): None lets it choose (on for darts).
FUSE_PHASES = {"auto": None, "on": True, "off": False}


@dataclasses.dataclass(frozen=True)
class SearchConfig:
  """Everything a search needs; ``config.json`` records it with the derived quantities."""

  space: str = "nb201"
  method: str = "darts-1st"
  estimator: Optional[str] = None
  dataset: str = "digits"
  data_dir: Optional[str] = None
  epochs: Optional[int] = None
  steps: Optional[int] = None
  batch_size: int = 64
  channels: Optional[int] = None
  cells: Optional[int] = None
  seed: int = 0
  out: Optional[str] = None
  log_every: int = 1
  dry_run: bool = False
  depthwise: str = "lax"
  remat: str = "none"  # rematerialisation: "none", "cell" or "op" (the space's remat option)
  fuse_phases: str = "auto"  # first-order two-phase scan: "auto" (on for darts), "on" or "off"
  cell_sharing: Optional[str] = None  # darts: "type" (DARTS) or "none" (D-DARTS); None: recipe's
  init_genotype: Optional[str] = None  # darts, DARTOpti: a hand-made network (resnet18, resnet50)
  # Pieces added to the method's recipe from the command line (DESIGN §4, issue 4).
  add_regularizers: tuple = ()  # ("name:weight[:schedule]", ...)
  estimator_options: tuple = ()  # ("key=value", ...) set on the (possibly replaced) estimator
  perturbation: Optional[str] = None  # replaces the recipe's perturbation; "none" removes it
  stopping: Optional[str] = None  # replaces the recipe's stopping rule; "none" removes it
  eigen_every: int = 0  # log the Hessian eigenvalue every N steps (0: only if a rule needs it)
  save_trajectory: int = 0  # save weights/alphas snapshots every N steps (0: never)
  devices: Optional[int] = None  # data-parallel devices per process (None: all local devices)
  dtype: str = "float32"  # activations' dtype: float32, or bfloat16 with float32 master weights
  checkpoint_every: Optional[int] = None  # steps between checkpoints (None: each epoch; 0: end only)
  keep: int = 3  # checkpoints kept (the newest)

  def resolved(self) -> "SearchConfig":
    """The config with per-space defaults filled in."""
    d = dict(_SPACE_DEFAULTS.get(self.space, {}))
    if self.init_genotype:  # DARTOpti: the hand-made network fixes the cell count
      from jaxnas.spaces.dartopti_ops import handmade
      d["cells"] = len(handmade(self.init_genotype).seq)
    epochs = self.epochs if (self.epochs is not None or self.steps is not None) else 30
    return dataclasses.replace(
        self, channels=self.channels if self.channels is not None else d.get("channels"),
        cells=self.cells if self.cells is not None else d.get("cells"), epochs=epochs)


def _positive(value, flag: str) -> None:
  if value is not None and (not isinstance(value, int) or value <= 0):
    raise JaxnasError(f"{flag} must be a whole number ≥ 1, got {value}")


def validate(cfg: SearchConfig, *, recipe=None) -> None:
  """Raises a one-line JaxnasError for a config that cannot work.

  ``cfg.method`` must name a registered method unless a ``recipe`` overrides it.
  """
  from jaxnas import data, hypergrad, methods, spaces
  if cfg.space not in spaces.SPACES:
    raise JaxnasError(f"unknown search space {cfg.space!r}; choose one of: "
                      + ", ".join(sorted(spaces.SPACES)) + " (--space)")
  if recipe is None:
    methods.get(cfg.method)
  if cfg.estimator is not None and cfg.estimator not in hypergrad.ESTIMATORS:
    raise JaxnasError(f"unknown estimator {cfg.estimator!r}; choose one of: "
                      + ", ".join(sorted(hypergrad.ESTIMATORS)) + " (--estimator)")
  if cfg.dataset not in data.DATASETS:
    raise JaxnasError(f"unknown data set {cfg.dataset!r}; choose one of: "
                      + ", ".join(sorted(data.DATASETS)) + " (--dataset)")
  if cfg.epochs is not None and cfg.steps is not None:
    raise JaxnasError("give --epochs or --steps, not both")
  for value, flag in ((cfg.epochs, "--epochs"), (cfg.steps, "--steps"),
                      (cfg.batch_size, "--batch-size"), (cfg.channels, "--channels"),
                      (cfg.cells, "--cells"), (cfg.log_every, "--log-every")):
    _positive(value, flag)
  if not isinstance(cfg.seed, int) or cfg.seed < 0:
    raise JaxnasError(f"--seed must be a whole number ≥ 0, got {cfg.seed}")
  if cfg.depthwise not in ("lax", "taps", "vjp"):
    raise JaxnasError(f"--depthwise must be 'lax', 'taps' or 'vjp', got {cfg.depthwise!r}")
  if cfg.cell_sharing is not None and cfg.cell_sharing not in ("type", "none"):
    raise JaxnasError(f"--cell-sharing must be 'type' (one alphas per cell type) or 'none' (one "
                      f"per cell, D-DARTS), got {cfg.cell_sharing!r}")
  if cfg.cell_sharing is not None and cfg.space != "darts":
    raise JaxnasError(f"--cell-sharing is an option of the darts space; add --space darts")
  if cfg.init_genotype is not None:
    from jaxnas.spaces.dartopti_ops import handmade
    if cfg.space != "darts":
      raise JaxnasError("--init-genotype is an option of the darts space; add --space darts")
    seq = handmade(cfg.init_genotype).seq
    if cfg.cells is not None and cfg.cells != len(seq):
      raise JaxnasError(f"--init-genotype {cfg.init_genotype} has {len(seq)} cells, not "
                        f"{cfg.cells}; leave --cells out or pass --cells {len(seq)}")
  if cfg.remat not in ("none", "cell", "op"):
    raise JaxnasError(f"--remat must be 'none', 'cell' or 'op', got {cfg.remat!r}")
  if cfg.fuse_phases not in FUSE_PHASES:
    raise JaxnasError(f"--fuse-phases must be 'auto', 'on' or 'off', got {cfg.fuse_phases!r}")
  for value, flag in ((cfg.eigen_every, "--eigen-every"),
                      (cfg.save_trajectory, "--save-trajectory")):
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
      raise JaxnasError(f"{flag} must be a whole number ≥ 0 (0 turns it off), got {value}")
  _positive(cfg.devices, "--devices")
  from jaxnas import precision
  if cfg.dtype not in precision.DTYPES:
    raise JaxnasError(f"--dtype must be one of {', '.join(precision.DTYPES)}, got {cfg.dtype!r}")
  if cfg.checkpoint_every is not None and (not isinstance(cfg.checkpoint_every, int) or isinstance(
      cfg.checkpoint_every, bool) or cfg.checkpoint_every < 0):
    raise JaxnasError(f"--checkpoint-every must be a whole number ≥ 0 (0: only at the end), got "
                      f"{cfg.checkpoint_every}")
  _positive(cfg.keep, "--keep")
  for text in cfg.add_regularizers:
    parse_regularizer(text)
  for text in cfg.estimator_options:
    parse_estimator_option(text)


def parse_estimator_option(text: str):
  """``"key=value"`` (``--estimator-option``) as ``(key, int or float)``."""
  key, sep, value = str(text).partition("=")
  if not sep or not key or not value:
    raise JaxnasError(f"--estimator-option {text!r}: write KEY=VALUE, e.g. unroll_steps=5 or "
                      "epsilon=0.001")
  try:
    number = int(value)
  except ValueError:
    try:
      number = float(value)
    except ValueError:
      raise JaxnasError(f"--estimator-option {text!r}: the value {value!r} is not a number")
  return key, number


def parse_regularizer(text: str):
  """``"name:weight[:schedule]"`` (``--add-regularizer``) as a :class:`jaxnas.methods.Regularizer`."""
  from jaxnas import methods, regularize
  parts = str(text).split(":")
  if len(parts) not in (2, 3) or not parts[0]:
    raise JaxnasError(f"--add-regularizer {text!r}: write NAME:WEIGHT or NAME:WEIGHT:SCHEDULE, "
                      "e.g. beta-decay:1.0:linear")
  regularize.get(parts[0])
  try:
    weight = float(parts[1])
  except ValueError:
    raise JaxnasError(f"--add-regularizer {text!r}: the weight {parts[1]!r} is not a number")
  if not math.isfinite(weight) or weight < 0:
    raise JaxnasError(f"--add-regularizer {text!r}: the weight must be a finite number ≥ 0, "
                      f"got {parts[1]}")
  return methods.Regularizer(parts[0], weight, *parts[2:])


def space_config(cfg: SearchConfig, num_classes: int) -> dict:
  """The keyword arguments of the space's module for ``cfg`` (``remat`` only when not "none")."""
  extra = {"remat": cfg.remat} if cfg.remat != "none" else {}
  if cfg.space == "nb201":
    return dict(channels=cfg.channels, cells_per_stage=cfg.cells, num_classes=num_classes,
                **extra)
  if cfg.cell_sharing is not None:
    extra["cell_sharing"] = cfg.cell_sharing
  if cfg.init_genotype:
    extra["init_genotype"] = cfg.init_genotype
  return dict(channels=cfg.channels, num_cells=cfg.cells, num_classes=num_classes,
              depthwise=cfg.depthwise, **extra)


def compose_recipe(recipe, cfg: SearchConfig):
  """``recipe`` with the command line's pieces applied.

  ``--estimator`` replaces the estimator (keeping the recipe's estimator options that the new one
  takes), and each ``--estimator-option KEY=VALUE`` sets one of its options; ``--perturbation`` and ``--stopping`` replace those pieces (``none`` removes them);
  each ``--add-regularizer NAME:WEIGHT[:SCHEDULE]`` adds a regulariser, or replaces the weight and
  schedule of the recipe's regulariser of that name.
  """
  from jaxnas import hypergrad
  if cfg.estimator is not None and cfg.estimator != recipe.estimator:
    known = hypergrad.option_names(cfg.estimator)
    kept = tuple((k, v) for k, v in recipe.estimator_options if k in known)
    recipe = recipe.replace(estimator=cfg.estimator, estimator_options=kept)
  if cfg.estimator_options:
    opts = dict(recipe.estimator_options)
    opts.update(parse_estimator_option(t) for t in cfg.estimator_options)
    recipe = recipe.replace(estimator_options=tuple(sorted(opts.items())))
  if cfg.perturbation is not None:
    if cfg.perturbation == "none":
      recipe = recipe.replace(perturbation=None, perturbation_options=())
    else:
      eps = tuple((k, v) for k, v in recipe.perturbation_options
                  if k in ("epsilon_start", "epsilon_end"))
      recipe = recipe.replace(perturbation=cfg.perturbation, perturbation_options=eps)
  if cfg.stopping is not None:
    recipe = recipe.replace(stopping=None if cfg.stopping == "none" else cfg.stopping)
  if cfg.add_regularizers:
    regs = {r.name: r for r in recipe.regularizers}
    for text in cfg.add_regularizers:
      r = parse_regularizer(text)
      regs[r.name] = r
    recipe = recipe.replace(regularizers=tuple(regs.values()))
  return recipe


def build(cfg: SearchConfig, num_classes: int, *, recipe=None):
  """The supernet module and the recipe (with the command line's pieces applied) for ``cfg``.

  ``recipe``, if given, replaces the registered method ``cfg.method``. The recipe's
  ``space_options`` (e.g. NoisyDARTS' ``skip_noise``) are passed to the space's module.
  """
  from jaxnas import methods, spaces
  recipe = methods.get(cfg.method) if recipe is None else recipe
  recipe = compose_recipe(recipe, cfg)
  space_options = methods.options(recipe.space_options)
  if "cell_sharing" in space_options and cfg.space != "darts":
    raise JaxnasError(f"method {recipe.name!r} searches one set of alphas per cell, an option of "
                      f"the darts space; add --space darts")
  # The command line's settings win over the recipe's (e.g. --cell-sharing type with d-darts).
  model = spaces.get(cfg.space, **{**space_options, **space_config(cfg, num_classes)})
  from jaxnas import precision
  return precision.wrap(model, cfg.dtype), recipe  # --dtype bfloat16: bf16 activations


def check_derivation(model, recipe) -> str:
  """The derivation rule the run will use; a one-line error if it cannot serve this space."""
  from jaxnas import derive
  rule = recipe.derivation or model.default_rule
  # All-ones weights: every threshold rule keeps something, every top-k rule has its choice.
  ones = {k: np.ones(shape) for k, shape in model.alpha_shapes().items()}
  try:
    derive.derive(rule, ones, model.op_names)
  except JaxnasError as e:
    raise JaxnasError(f"derivation rule {rule!r} of method {recipe.name!r} cannot serve the "
                      f"{model.space_name} space ({e}); choose another --space or method")
  return rule


def count_params(model, image_shape) -> int:
  """Number of network weights (alphas excluded), from shapes alone: nothing is compiled."""
  import jax
  import jax.numpy as jnp
  alphas = jax.eval_shape(model.init_alphas, jax.random.key(0))
  weights = jax.tree.map(lambda a: jnp.ones(a.shape, a.dtype), alphas)
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1,) + tuple(image_shape)), weights,
                         train=False))
  return int(sum(math.prod(p.shape) for p in jax.tree.leaves(variables["params"])))


def _versions() -> dict:
  import importlib.metadata as md
  out = {"python": platform.python_version(), "platform": platform.platform()}
  for pkg in ("jaxnas", "jax", "jaxlib", "flax", "optax", "chex", "numpy"):
    try:
      out[pkg] = md.version(pkg)
    except md.PackageNotFoundError:
      out[pkg] = None
  return out


def _default_out(cfg: SearchConfig) -> pathlib.Path:
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  return pathlib.Path("runs") / f"{cfg.method}-{cfg.space}-{cfg.dataset}-s{cfg.seed}-{stamp}"


def _make_run_dir(path: pathlib.Path) -> pathlib.Path:
  if path.exists():
    raise JaxnasError(f"run directory {path} already exists and is never overwritten; choose "
                      "another --out (or leave --out out to get a fresh timestamped one)")
  try:
    path.mkdir(parents=True)
  except OSError as e:
    raise JaxnasError(f"cannot create run directory {path}: {e.strerror}; choose another --out")
  return path


class _Progress:
  """A tqdm bar on a terminal; plain log lines (one per epoch) otherwise."""

  def __init__(self, total: int, steps_per_epoch: int, stream=None):
    self.stream = stream or sys.stderr
    self.total, self.spe = total, steps_per_epoch
    self.bar = None
    if self.stream.isatty():
      from tqdm.auto import tqdm
      self.bar = tqdm(total=total, unit="step", file=self.stream, dynamic_ncols=True)

  def update(self, step: int, m: dict) -> None:
    text = (f"loss {m['train_loss']:.3f} acc {m['train_accuracy']:.3f} "
            f"val_loss {m['val_loss']:.3f} val_acc {m['val_accuracy']:.3f}")
    if self.bar is not None:
      self.bar.set_postfix_str(text, refresh=False)
      self.bar.update(1)
    elif step % self.spe == 0 or step == self.total:
      print(f"step {step}/{self.total} (epoch {math.ceil(step / self.spe)}) {text}",
            file=sys.stdout, flush=True)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


def _jsonable(tree) -> dict:
  return {k: (v.item() if hasattr(v, "item") else v) for k, v in tree.items()}


class _Discard:
  """Stands in for the metrics log, the TensorBoard writer and the checkpoints in a process that
  writes nothing (processes 1.. of a multi-process run): every method does nothing."""

  def __getattr__(self, name):
    return lambda *args, **kwargs: None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


_DISCARD = _Discard()


class Plan(NamedTuple):
  """What :func:`prepare` works out from a config before anything is written or compiled."""

  cfg: SearchConfig  # resolved: per-space defaults filled in
  dataset: Any
  model: Any
  recipe: Any  # with the command line's pieces applied
  steps_per_epoch: int
  total_steps: int
  epochs: int
  rule: str  # the derivation rule
  stop_rule: Any  # the stopping rule's function, or None
  eigen_every: int  # log the Hessian eigenvalue every this many steps (0: never)
  num_params: int


def prepare(cfg: SearchConfig, *, recipe=None) -> Plan:
  """Validates ``cfg``, loads the data and builds the supernet and recipe: a run's :class:`Plan`.

  Shared by :func:`run_search` and :func:`jaxnas.seeds.run_seeds`.

  Raises:
    JaxnasError: for a config that cannot work (nothing has been written yet).
  """
  if recipe is not None:
    cfg = dataclasses.replace(cfg, method=recipe.name)
  validate(cfg, recipe=recipe)
  cfg = cfg.resolved()
  validate(cfg, recipe=recipe)
  from jaxnas import data, search, stopping
  dataset = data.load(cfg.dataset, data_dir=cfg.data_dir)
  for n, part in ((len(dataset.train_x), "search-train"), (len(dataset.val_x), "search-val")):
    data.validate_batch_size(n, cfg.batch_size, f"{part} images of {dataset.name}")
  model, recipe = build(cfg, dataset.num_classes, recipe=recipe)
  spe = data.steps_per_epoch(len(dataset.train_x), cfg.batch_size)
  total_steps = cfg.steps if cfg.steps is not None else cfg.epochs * spe
  epochs = math.ceil(total_steps / spe)
  search.check_recipe(recipe, steps_per_epoch=spe, epochs=epochs)
  rule = check_derivation(model, recipe)
  stop_rule = stopping.get(recipe.stopping) if recipe.stopping is not None else None
  eigen_every = cfg.eigen_every
  if stop_rule is not None and "hessian_eigenvalue" in stopping.required_metrics(stop_rule):
    if eigen_every and spe % eigen_every and eigen_every % spe:
      raise JaxnasError(f"stopping rule {recipe.stopping!r} reads the Hessian eigenvalue at epoch "
                        f"ends, but --eigen-every {eigen_every} is neither a divisor nor a multiple "
                        f"of the {spe} steps of an epoch; choose one or leave it out")
    # R-DARTS computes it every 2 epochs (REFERENCE §10); DARTS-ES' windows count values.
    eigen_every = eigen_every or 2 * spe
  if (cfg.space == "darts" and cfg.depthwise == "vjp"
      and (recipe.estimator not in ("first_order", "mixed_level") or eigen_every)):
    raise JaxnasError(f"--depthwise vjp has a reverse-mode-only derivative, but estimator "
                      f"{recipe.estimator!r}" + (" and the Hessian eigenvalue" if eigen_every else "")
                      + " need forward-over-reverse products; use --depthwise lax or taps")
  num_params = count_params(model, dataset.image_shape)
  from jaxnas import parallel
  parallel.check_batch_size(cfg.batch_size, parallel.make_mesh(cfg.devices))
  plan = Plan(cfg, dataset, model, recipe, spe, total_steps, epochs, rule, stop_rule, eigen_every,
              num_params)
  if recipe.stages:  # a staged search (DrNAS' progressive schedule): every stage must build
    from jaxnas import progressive
    progressive.check_plan(plan)
  return plan


def write_config(run_dir: pathlib.Path, plan: Plan, **extra) -> dict:
  """Writes ``run_dir/config.json``: everything needed to repeat the run, and ``extra``."""
  cfg, dataset = plan.cfg, plan.dataset
  config = {
      "config": dataclasses.asdict(cfg),
      "recipe": dataclasses.asdict(plan.recipe),
      "space_config": space_config(cfg, dataset.num_classes),
      "num_params": plan.num_params,
      "dataset": {"name": dataset.name, "image_shape": list(dataset.image_shape),
                  "num_classes": dataset.num_classes, "search_train": len(dataset.train_x),
                  "search_val": len(dataset.val_x), "test": len(dataset.test_x)},
      "steps_per_epoch": plan.steps_per_epoch, "total_steps": plan.total_steps,
      "epochs": plan.epochs, "eigen_every": plan.eigen_every,
      "versions": _versions(),
      "command": sys.argv,
      "started": datetime.datetime.now().isoformat(timespec="seconds"),
      **extra,
  }
  (run_dir / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
  return config


def derive_genotype(plan: Plan, relaxation, alphas):
  """``(genotype, mixing, error)`` of ``alphas`` by the plan's rule on ``relaxation(alphas, None)``.

  A rule that finds nothing to keep (FairDARTS' threshold early in a search) is reported in
  ``error``, not raised: the run's other results stay.
  """
  import jax
  from jaxnas import ddarts, derive
  mixing = jax.device_get(relaxation(alphas, None))
  mixing = {k: np.asarray(v) for k, v in mixing.items()}
  try:
    # DARTOpti (--init-genotype): the distinct cells' genotypes laid out over every position.
    return ddarts.network_genotype(plan.model, derive.derive(plan.rule, mixing,
                                                             plan.model.op_names)), mixing, None
  except JaxnasError as e:
    return None, mixing, str(e)


def write_results(run_dir: pathlib.Path, plan: Plan, relaxation, state, alphas, **extra):
  """Writes a finished run's ``alphas.npz``, ``genotype.json`` and ``summary.json``.

  The supernet is evaluated (running statistics) on the whole search-val part with ``state``'s
  weights and statistics; ``alphas`` (the returned ones) are derived by the plan's rule. ``extra``
  (timings, steps, ...) joins the summary. Returns ``(summary, genotype or None)``.
  """
  from jaxnas import derive, search
  np.savez(run_dir / "alphas.npz", **{k: np.asarray(v) for k, v in alphas.items()})
  genotype, _, derive_error = derive_genotype(plan, relaxation, alphas)
  if genotype is not None:
    genotype.save(run_dir)
  val_loss, val_acc = search.evaluate(plan.model, relaxation, state, plan.dataset.val_x,
                                      plan.dataset.val_y)
  summary = {"supernet_val_accuracy": val_acc, "supernet_val_loss": val_loss,
             "derivation_rule": plan.rule,
             "genotype": None if genotype is None else genotype.to_dict(),
             "derivation_error": derive_error, **extra}
  if genotype is not None and genotype.space == "nb201":
    summary["nb201_arch"] = derive.nb201_arch_string(genotype)
  (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
  return summary, genotype


# ------------------------------------------------------------------------------------------------
# Resuming (issue 7): the config from config.json, the loop position in each checkpoint.

# May differ on --resume (fuse_phases: the same step as another program, equal to float rounding).
_RESUME_OVERRIDES = ("out", "checkpoint_every", "keep", "dry_run", "fuse_phases")


def _tuples(value):
  """JSON lists back to the tuples a frozen config or recipe holds (recursively)."""
  return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _recipe_from_dict(fields: dict):
  """The :class:`jaxnas.methods.Recipe` that ``dataclasses.asdict`` turned into ``fields``."""
  from jaxnas import methods
  nested = {"weight_optimizer": lambda d: methods.WeightOptimizer(**d),
            "arch_optimizer": lambda d: methods.ArchOptimizer(**d),
            "regularizers": lambda rs: tuple(methods.Regularizer(**r) for r in rs)}
  kwargs = {}
  for f in dataclasses.fields(methods.Recipe):
    if f.name in fields:
      value = fields[f.name]
      kwargs[f.name] = nested[f.name](value) if f.name in nested else _tuples(value)
  return methods.Recipe(**kwargs)


def resume_config(run_dir) -> tuple:
  """``(cfg, recipe)`` of the search that wrote ``run_dir/config.json``, to resume it.

  ``cfg.out`` is ``run_dir`` and ``cfg.dry_run`` False (a dry run's directory resumes into a real
  run); the recipe is the composed one the run used, rebuilt exactly (checked by writing it back).

  Raises:
    JaxnasError: if ``run_dir`` has no readable jaxnas ``config.json``.
  """
  path = pathlib.Path(run_dir) / "config.json"
  if not path.is_file():
    raise JaxnasError(f"{path} not found; --resume needs --out RUN_DIR of an earlier "
                      "'jaxnas search'")
  try:
    config = json.loads(path.read_text())
    known = {f.name for f in dataclasses.fields(SearchConfig)}
    cfg = SearchConfig(**{k: _tuples(v) for k, v in config["config"].items() if k in known})
    recipe = _recipe_from_dict(config["recipe"])
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    raise JaxnasError(f"{path} is not a jaxnas search config.json ({type(e).__name__}: {e}); "
                      "cannot resume") from None
  if json.dumps(dataclasses.asdict(recipe), default=str) != json.dumps(config["recipe"],
                                                                       default=str):
    raise JaxnasError(f"{path}: its recipe cannot be rebuilt exactly by this jaxnas version; "
                      "cannot resume")
  return dataclasses.replace(cfg, out=str(run_dir), dry_run=False), recipe


def resume_dir(cfg: SearchConfig, what: str) -> pathlib.Path:
  """``cfg.out`` as the run directory to continue; a one-line error if it is not given or the
  run there (a ``what``) has finished (its summary.json exists)."""
  if not cfg.out:
    raise JaxnasError("--resume needs --out RUN_DIR: the run directory to continue")
  run_dir = pathlib.Path(cfg.out)
  if (run_dir / "summary.json").exists():
    raise JaxnasError(f"{run_dir} holds a finished {what} (summary.json); nothing to resume")
  return run_dir


def check_resume_flags(cfg: SearchConfig, given: SearchConfig, defaults: SearchConfig) -> None:
  """Raises a one-line error if ``given`` (the command line) sets a field unlike ``cfg`` (the run's).

  A field counts as set when it differs from ``defaults`` (the command line's own defaults);
  ``--out``, ``--checkpoint-every``, ``--keep`` and ``--fuse-phases`` may change on resume,
  nothing else may.
  """
  for f in dataclasses.fields(SearchConfig):
    if f.name in _RESUME_OVERRIDES:
      continue
    value = getattr(given, f.name)
    if value != getattr(defaults, f.name) and value != getattr(cfg, f.name):
      flag = {"add_regularizers": "--add-regularizer", "estimator_options": "--estimator-option"
              }.get(f.name, "--" + f.name.replace("_", "-"))
      raise JaxnasError(f"{flag} {value!r} conflicts with the run's config.json "
                        f"({f.name} = {getattr(cfg, f.name)!r}); --resume takes the "
                        f"configuration from there: leave {flag} out")


def _position(step, history, stopped_at, steps_done, returned_epoch, last_eigen, last_eigen_step,
              elapsed) -> dict:
  """The loop position a search checkpoint records (batches are a pure function of the step)."""
  records = [dict(epoch=r.epoch, genotype=r.genotype.to_dict(), mixing=r.mixing,
                  metrics=r.metrics, alphas=r.alphas) for r in history]
  return {"step": step, "data_step": step, "history": records, "stopped_at": stopped_at,
          "steps_done": steps_done, "returned_epoch": returned_epoch, "last_eigen": last_eigen,
          "last_eigen_step": last_eigen_step, "elapsed_s": elapsed}


def _unpack_position(position: dict) -> tuple:
  """The inverse of :func:`_position`: ``(history, stopped_at, steps_done, returned_epoch,
  last_eigen, last_eigen_step, elapsed)``."""
  from jaxnas import derive, stopping
  history = [stopping.EpochRecord(epoch=r["epoch"], genotype=derive.Genotype.from_dict(r["genotype"]),
                                  mixing=r["mixing"], metrics=r["metrics"], alphas=r["alphas"])
             for r in position["history"]]
  return (history, position["stopped_at"], position["steps_done"], position["returned_epoch"],
          position["last_eigen"], position["last_eigen_step"], position["elapsed_s"])


def _truncate_metrics(path: pathlib.Path, step: int) -> None:
  """Keeps the lines of ``metrics.jsonl`` up to ``step`` (those after it are redone on resume).

  A line cut short by a kill is dropped. The file is replaced atomically.
  """
  if not path.exists():
    return
  kept = []
  for line in path.read_text().splitlines():
    try:
      if json.loads(line)["step"] <= step:
        kept.append(line)
    except (ValueError, KeyError, TypeError):
      continue
  partial = path.with_name(path.name + ".partial")
  partial.write_text("".join(line + "\n" for line in kept))
  os.replace(partial, path)


ALPHAS_HISTORY = "alphas_history"  # RUN_DIR/alphas_history/step_<step>.npz, see run_search


def save_alphas(run_dir, step: int, alphas) -> pathlib.Path:
  """Writes ``alphas`` (host copies) to ``run_dir/alphas_history/step_{step:06d}.npz`` atomically.

  What ``jaxnas plot`` draws the mixing weights over the search from when the run saved no
  ``--save-trajectory`` snapshots: a few KB per epoch.
  """
  import jax
  folder = pathlib.Path(run_dir) / ALPHAS_HISTORY
  folder.mkdir(exist_ok=True)
  path = folder / f"step_{step:06d}.npz"
  partial = folder / f".step_{step:06d}.npz.partial"
  with open(partial, "wb") as f:
    np.savez(f, **{k: np.asarray(v) for k, v in jax.device_get(alphas).items()})
  os.replace(partial, path)
  return path


def run_search(cfg: SearchConfig, *, stdout=None, recipe=None, resume: bool = False
               ) -> pathlib.Path:
  """Runs the search ``cfg`` describes and returns its run directory.

  If the recipe has a stopping rule (:mod:`jaxnas.stopping`), it is evaluated on the host at the
  end of every epoch but the last, on the genotype derived from the current deterministic mixing
  weights (``relaxation(alphas, None)``) with the recipe's derivation rule. When it fires, the
  search stops after that epoch, prints one line saying so, and ``summary.json`` records
  ``stopped_at_epoch`` (1-based; null when the search ran to the end). A rule that returns an
  epoch number instead of True (R-DARTS' early stop) makes the run return that epoch's alphas and
  genotype (``returned_epoch``; the last alphas are kept in ``alphas-final.npz``). A rule that reads
  the Hessian eigenvalue (``needs_metrics``) turns its logging on, every 2 epochs as R-DARTS
  unless ``cfg.eigen_every`` says otherwise; epochs without a fresh value record NaN.

  ``cfg.save_trajectory = N`` saves a snapshot (weights, statistics, alphas) every N steps and at
  the end under ``trajectory/`` for ``jaxnas study hypergrad --run``.

  Checkpoints (:mod:`jaxnas.checkpoint`) go to ``checkpoints/`` every ``cfg.checkpoint_every``
  steps (default: each epoch; 0: only the last) and after the last step, the newest ``cfg.keep``
  kept. Each holds the whole :class:`~jaxnas.search.SearchState` (weights, statistics, alphas, both
  optimiser states, step, PRNG key) and the loop position: the step (the data order is a pure
  function of seed and step, :func:`jaxnas.data.batch_at`), the stopping rule's history and the
  last Hessian eigenvalue. ``resume=True`` continues the run in ``cfg.out`` from its newest
  checkpoint (from step 0 if it has none): ``metrics.jsonl`` is cut back to that step and appended
  to, so a run killed at any point and resumed ends with the same numbers, bit for bit on one
  machine, as one never interrupted. Use :func:`resume_config` for ``cfg`` and ``recipe``.

  Every step reports whether its losses, gradients and new parameters are finite
  (:func:`jaxnas.search.nonfinite_mask`); the first step that is not ends the run with one line
  naming the step, the quantity and the last good checkpoint, which stays as it was.

  Scalars of every logged step also go to a TensorBoard events file in the run directory
  (:mod:`jaxnas.tb`). The alphas at the start, at every epoch's end and at the last step go to
  ``alphas_history/`` (:func:`save_alphas`), for ``jaxnas plot``.

  In a multi-process run (``jax.distributed`` initialised, :func:`jaxnas.parallel.initialize`)
  every process runs this loop on its rows of each global batch and the replicated state; only
  process 0 writes the run directory (the others print and return it unwritten). Each process
  compiles the step, then all meet (:func:`jaxnas.parallel.compile_then_meet`), and they meet
  again after each checkpoint process 0 writes. ``resume`` and ``save_trajectory`` are refused.

  A recipe with ``stages`` (DrNAS' progressive schedule, :mod:`jaxnas.progressive`) runs each stage
  with its own supernet and compiled step; at a stage's first step the state is rebuilt (alphas
  pruned, weights widened) and ``stages.json`` records the boundaries and the masks that
  ``jaxnas derive`` applies. Checkpoints record the stage, so a resumed run continues in it.

  Args:
    cfg: the search.
    stdout: where the progress lines go (default ``sys.stdout``).
    recipe: a :class:`jaxnas.methods.Recipe` to use instead of the registered ``cfg.method``
      (``cfg.method`` becomes its name); ``config.json`` records it in full.
    resume: continue the run in the existing directory ``cfg.out`` (see above).

  Raises:
    JaxnasError: for a config that cannot work, before anything is written; when resuming, for a
      finished run or a checkpoint that cannot be restored, before anything is changed; for a
      step that is not finite.
  """
  stdout = stdout or sys.stdout
  plan = prepare(cfg, recipe=recipe)
  (cfg, dataset, model, recipe, spe, total_steps, epochs, rule, stop_rule, eigen_every,
   num_params) = plan
  from jaxnas import data, derive, parallel, search, stopping
  import jax
  # Several processes (jax.distributed): all run the same loop; only process 0 writes files.
  writes = parallel.writes_files()
  if jax.process_count() > 1 and (resume or cfg.save_trajectory):
    raise JaxnasError(f"{'--resume' if resume else '--save-trajectory'} runs in one process; "
                      "leave it out of a multi-process run (--num-processes / --distributed)")

  if resume:
    run_dir = resume_dir(cfg, "search")
  else:
    def make_run_dir() -> str:
      path = _make_run_dir(pathlib.Path(cfg.out) if cfg.out else _default_out(cfg))
      write_config(path, plan, processes=jax.process_count())
      return str(path)
    # Several processes: process 0 makes it; its path, or its one-line error, reaches every one.
    run_dir = pathlib.Path(parallel.on_process_0(make_run_dir, "run-dir"))
  print(f"run directory: {run_dir}" + ("" if writes else f" (written by process 0; this is "
                                         f"process {jax.process_index()})"), file=stdout)
  print(f"{cfg.space} supernet, {num_params:,} weights; method {recipe.name} "
        f"(estimator {recipe.estimator}); {total_steps} steps of batch {cfg.batch_size} "
        f"({epochs} epochs of {spe})", file=stdout, flush=True)
  if cfg.dry_run:
    return run_dir

  # One code path for 1 and N devices: state replicated, batch split (jaxnas.parallel).
  mesh = parallel.make_mesh(cfg.devices)
  rows = parallel.process_rows(cfg.batch_size, mesh)
  state = search.init_search_state(model, recipe, jax.random.key(cfg.seed), dataset.image_shape,
                                   steps_per_epoch=spe, epochs=epochs)
  from jaxnas import checkpoint, tb
  ckpts = checkpoint.Checkpoints(run_dir / "checkpoints", keep=cfg.keep) if writes else _DISCARD
  staged = None
  if recipe.stages:  # a staged search: one supernet and compiled step per stage
    from jaxnas import progressive
    if jax.process_count() > 1:
      raise JaxnasError(f"method {recipe.name!r} runs in stages, in one process only; leave "
                        "--num-processes / --distributed out")
    staged = progressive.StagedRun(plan, run_dir if writes else None)
  start, position = 0, None
  if resume and ckpts.latest_step() is not None:
    if staged is not None:  # the checkpoint holds a state of its stage's shapes
      state = staged.template(ckpts.latest_step(), jax.random.key(cfg.seed))
    state, position = ckpts.restore(state)
    if staged is not None:
      staged.restore(position)
    start = int(position["step"])
    if start > total_steps:
      raise JaxnasError(f"checkpoint {ckpts.path(start)} is at step {start}, past the run's "
                        f"{total_steps} steps; it belongs to another run")
  if resume:
    print(f"resuming from step {start}" + (f" ({ckpts.path(start)})" if position else
                                           " (no checkpoint yet)"), file=stdout, flush=True)
  checkpoint_every = spe if cfg.checkpoint_every is None else cfg.checkpoint_every
  state = parallel.replicate(state, mesh)

  def compile_stage():
    """``(plan, step, relaxation)`` of the current stage (of the whole search without stages)."""
    p = plan if staged is None else staged.plan()
    extra = {} if staged is None else {"arch_start": staged.arch_start()}
    fn = parallel.jit_step(
        search.make_search_step(p.model, p.recipe, steps_per_epoch=spe, epochs=epochs,
                                eigen_every=eigen_every, jit=False,
                                fuse_phases=FUSE_PHASES[cfg.fuse_phases], **extra), mesh)
    return p, fn, search.make_relaxation(p.recipe, p.model.op_names)

  plan, step_fn, relaxation = compile_stage()
  if staged is not None:
    if writes:
      staged.write()
    print(staged.describe(), file=stdout, flush=True)

  def derive_now(alphas):
    return derive_genotype(plan, relaxation, alphas)

  if cfg.save_trajectory:
    from jaxnas import trajectory
  history, stopped_at, steps_done, returned_epoch = [], None, total_steps, None
  last_eigen, last_eigen_step = math.nan, None
  elapsed = 0.0
  if position is not None:
    (history, stopped_at, steps_done, returned_epoch, last_eigen, last_eigen_step,
     elapsed) = _unpack_position(position)
  if resume:
    _truncate_metrics(run_dir / "metrics.jsonl", start)
  t_start = time.perf_counter()
  t0 = t_start - elapsed
  progress = _Progress(total_steps, spe)
  writer = (tb.ScalarWriter(run_dir, purge_step=start + 1 if resume else None) if writes
            else _DISCARD)
  compile_s = None
  end = total_steps if stopped_at is None else start  # a checkpoint of a stopped run: no steps
  if start == 0 and writes:
    save_alphas(run_dir, 0, parallel.to_host(state.alphas))
  if start < end and jax.process_count() > 1:  # each process compiles, then all meet
    step_fn = parallel.compile_then_meet(step_fn, state, *(
        parallel.shard_batch({k: v[rows] for k, v in b.items()}, mesh)
        for b in data.search_batches(dataset, cfg.batch_size, seed=cfg.seed, step=start)))
  with open(run_dir / "metrics.jsonl", "a" if resume else "w") if writes else _DISCARD as log:
    try:
      for i in range(start, end):
        if staged is not None and staged.is_boundary(i):  # rebuild the state for the next stage
          state = parallel.replicate(staged.advance(state), mesh)
          plan, step_fn, relaxation = compile_stage()
          print(staged.describe(), file=stdout, flush=True)
        train_batch, val_batch = (
            parallel.shard_batch({k: v[rows] for k, v in b.items()}, mesh)
            for b in data.search_batches(dataset, cfg.batch_size, seed=cfg.seed, step=i))
        state, metrics = step_fn(state, train_batch, val_batch)
        if compile_s is None:
          jax.block_until_ready(state)
          compile_s = time.perf_counter() - t_start
        step = i + 1
        bad = int(parallel.to_host(metrics["nonfinite"]))
        if bad:
          m = _jsonable(parallel.to_host(metrics))
          m.update(step=step, epoch=math.ceil(step / spe),
                   time_s=round(time.perf_counter() - t0, 3))
          log.write(json.dumps(m) + "\n")
          last = ckpts.latest_step()
          raise JaxnasError(f"step {step}: {search.describe_nonfinite(bad, m)} (last good "
                            f"checkpoint: {'none' if last is None else ckpts.path(last)}); the "
                            "search diverged: lower the learning rate or check the data")
        if cfg.save_trajectory and (step % cfg.save_trajectory == 0 or step == total_steps):
          trajectory.save_snapshot(run_dir, step, state)
        if writes and (step % spe == 0 or step == total_steps):
          save_alphas(run_dir, step, parallel.to_host(state.alphas))
        if eigen_every and step % eigen_every == 0:
          last_eigen = float(parallel.to_host(metrics["hessian_eigenvalue"]))
          last_eigen_step = step
        if step % cfg.log_every == 0 or step == total_steps:
          m = _jsonable(parallel.to_host(metrics))
          m.update(step=step, epoch=math.ceil(step / spe),
                   time_s=round(time.perf_counter() - t0, 3))
          log.write(json.dumps(m) + "\n")
          log.flush()
          writer.scalars(step, m)
          progress.update(step, m)
        if stop_rule is not None and step % spe == 0 and step < total_steps:
          alphas_now = parallel.to_host(state.alphas)
          genotype, mixing, derive_error = derive_now(alphas_now)
          if derive_error is None:  # else nothing derivable yet: the rule waits for an epoch
            epoch_metrics = _jsonable(parallel.to_host(metrics))
            if eigen_every:  # the value computed at this epoch's end, else missing (NaN)
              epoch_metrics["hessian_eigenvalue"] = (last_eigen if last_eigen_step == step
                                                     else math.nan)
            history.append(stopping.EpochRecord(
                epoch=step // spe, genotype=genotype, mixing=mixing, metrics=epoch_metrics,
                alphas={k: np.asarray(v) for k, v in alphas_now.items()}))
            chosen = stopping.stop_epoch(stop_rule(genotype, tuple(history)), tuple(history))
            if chosen is not None:
              stopped_at, steps_done = step // spe, step
              if chosen != stopped_at:
                returned_epoch = chosen
        if (stopped_at is not None or step == total_steps
            or (checkpoint_every and step % checkpoint_every == 0)):
          log.flush()
          writer.flush()  # what the checkpoint covers is on disk before it is
          position = _position(step, history, stopped_at, steps_done, returned_epoch, last_eigen,
                               last_eigen_step, time.perf_counter() - t0)
          if staged is not None:  # the stage and its masks, to resume in it
            position["stages"] = staged.record()
          ckpts.save(step, parallel.local_copy(state) if writes else None, position)
          # The other processes wait here, not in the next step's all-reduce (gloo: 30 s).
          parallel.barrier(f"checkpoint-{step}")
        if stopped_at is not None:
          break
    finally:
      progress.close()
      writer.close()
      ckpts.close()
  compile_s = 0.0 if compile_s is None else compile_s  # None: a resumed run had no step left
  search_s = time.perf_counter() - t0
  if stopped_at is not None:
    print(f"stopped after epoch {stopped_at} of {epochs}: stopping rule {recipe.stopping!r} fired "
          f"on genotype {history[-1].genotype}", file=stdout, flush=True)

  if not writes:
    print(f"process {jax.process_index()}: {steps_done} steps done; process 0 writes the "
          f"results in {run_dir}", file=stdout, flush=True)
    return run_dir
  state = parallel.local_copy(state)  # several processes: evaluate process 0's copy alone
  alphas = jax.device_get(state.alphas)
  if returned_epoch is not None:
    np.savez(run_dir / "alphas-final.npz", **{k: np.asarray(v) for k, v in alphas.items()})
    alphas = history[returned_epoch - 1].alphas
    print(f"returning the alphas and genotype of epoch {returned_epoch} (the rule's choice); the "
          f"last alphas are in alphas-final.npz", file=stdout, flush=True)
  if returned_epoch is not None:
    state = state._replace(alphas=jax.device_put(alphas))
  summary, genotype = write_results(run_dir, plan, relaxation, state, alphas,
                                    first_step_s=compile_s, search_s=search_s, steps=steps_done,
                                    stopped_at_epoch=stopped_at, returned_epoch=returned_epoch)
  derive_error = summary["derivation_error"]
  val_loss, val_acc = summary["supernet_val_loss"], summary["supernet_val_accuracy"]
  if genotype is None:
    print(f"no genotype: {derive_error} (alphas.npz is written; 'jaxnas derive RUN_DIR --rule "
          "NAME' derives with another rule)", file=stdout)
  else:
    print(f"genotype ({rule}): {genotype}", file=stdout)
  print(f"supernet validation accuracy: {100 * val_acc:.2f}% (loss {val_loss:.4f}) on "
        f"{len(dataset.val_x)} search-val images; {search_s:.1f} s, first step {compile_s:.1f} s",
        file=stdout)
  print(f"results in {run_dir}", file=stdout, flush=True)
  return run_dir
