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
from typing import Optional

import numpy as np

from jaxnas.errors import JaxnasError

__all__ = ["SearchConfig", "run_search", "space_config", "build", "count_params", "RESULT_FILES"]

RESULT_FILES = ("config.json", "metrics.jsonl", "alphas.npz", "genotype.json", "summary.json")

# Defaults per space when --channels / --cells are not given: small enough for a laptop CPU.
_SPACE_DEFAULTS = {"nb201": dict(channels=8, cells=1), "darts": dict(channels=16, cells=8)}


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
  # Pieces added to the method's recipe from the command line (DESIGN §4, issue 4).
  add_regularizers: tuple = ()  # ("name:weight[:schedule]", ...)
  estimator_options: tuple = ()  # ("key=value", ...) set on the (possibly replaced) estimator
  perturbation: Optional[str] = None  # replaces the recipe's perturbation; "none" removes it
  stopping: Optional[str] = None  # replaces the recipe's stopping rule; "none" removes it
  eigen_every: int = 0  # log the Hessian eigenvalue every N steps (0: only if a rule needs it)
  save_trajectory: int = 0  # save weights/alphas snapshots every N steps (0: never)

  def resolved(self) -> "SearchConfig":
    """The config with per-space defaults filled in."""
    d = _SPACE_DEFAULTS.get(self.space, {})
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
  for value, flag in ((cfg.eigen_every, "--eigen-every"),
                      (cfg.save_trajectory, "--save-trajectory")):
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
      raise JaxnasError(f"{flag} must be a whole number ≥ 0 (0 turns it off), got {value}")
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
  """The keyword arguments of the space's module for ``cfg``."""
  if cfg.space == "nb201":
    return dict(channels=cfg.channels, cells_per_stage=cfg.cells, num_classes=num_classes)
  return dict(channels=cfg.channels, num_cells=cfg.cells, num_classes=num_classes,
              depthwise=cfg.depthwise)


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
  model = spaces.get(cfg.space, **space_config(cfg, num_classes),
                     **methods.options(recipe.space_options))
  return model, recipe


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


def run_search(cfg: SearchConfig, *, stdout=None, recipe=None) -> pathlib.Path:
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

  Args:
    cfg: the search.
    stdout: where the progress lines go (default ``sys.stdout``).
    recipe: a :class:`jaxnas.methods.Recipe` to use instead of the registered ``cfg.method``
      (``cfg.method`` becomes its name); ``config.json`` records it in full.

  Raises:
    JaxnasError: for a config that cannot work, before anything is written.
  """
  stdout = stdout or sys.stdout
  if recipe is not None:
    cfg = dataclasses.replace(cfg, method=recipe.name)
  validate(cfg, recipe=recipe)
  cfg = cfg.resolved()
  validate(cfg, recipe=recipe)
  from jaxnas import data, derive, search, stopping
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

  run_dir = _make_run_dir(pathlib.Path(cfg.out) if cfg.out else _default_out(cfg))
  config = {
      "config": dataclasses.asdict(cfg),
      "recipe": dataclasses.asdict(recipe),
      "space_config": space_config(cfg, dataset.num_classes),
      "num_params": num_params,
      "dataset": {"name": dataset.name, "image_shape": list(dataset.image_shape),
                  "num_classes": dataset.num_classes, "search_train": len(dataset.train_x),
                  "search_val": len(dataset.val_x), "test": len(dataset.test_x)},
      "steps_per_epoch": spe, "total_steps": total_steps, "epochs": epochs,
      "eigen_every": eigen_every,
      "versions": _versions(),
      "command": sys.argv,
      "started": datetime.datetime.now().isoformat(timespec="seconds"),
  }
  (run_dir / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
  print(f"run directory: {run_dir}", file=stdout)
  print(f"{cfg.space} supernet, {num_params:,} weights; method {recipe.name} "
        f"(estimator {recipe.estimator}); {total_steps} steps of batch {cfg.batch_size} "
        f"({epochs} epochs of {spe})", file=stdout, flush=True)
  if cfg.dry_run:
    return run_dir

  import jax
  state = search.init_search_state(model, recipe, jax.random.key(cfg.seed), dataset.image_shape,
                                   steps_per_epoch=spe, epochs=epochs)
  step_fn = search.make_search_step(model, recipe, steps_per_epoch=spe, epochs=epochs,
                                    eigen_every=eigen_every)
  relaxation = search.make_relaxation(recipe, model.op_names)

  def derive_now(alphas):
    """``(genotype, mixing, error)``: a rule that finds nothing to keep (FairDARTS' threshold
    early in a search) is reported, not fatal: the run's other results stay."""
    mixing = jax.device_get(relaxation(alphas, None))
    mixing = {k: np.asarray(v) for k, v in mixing.items()}
    try:
      return derive.derive(rule, mixing, model.op_names), mixing, None
    except JaxnasError as e:
      return None, mixing, str(e)

  if cfg.save_trajectory:
    from jaxnas import trajectory
  history, stopped_at, steps_done, returned_epoch = [], None, total_steps, None
  last_eigen, last_eigen_step = math.nan, None
  t0 = time.perf_counter()
  progress = _Progress(total_steps, spe)
  compile_s = None
  with open(run_dir / "metrics.jsonl", "w") as log:
    try:
      for i in range(total_steps):
        train_batch, val_batch = data.search_batches(dataset, cfg.batch_size, seed=cfg.seed,
                                                     step=i)
        state, metrics = step_fn(state, train_batch, val_batch)
        if compile_s is None:
          jax.block_until_ready(state)
          compile_s = time.perf_counter() - t0
        step = i + 1
        if cfg.save_trajectory and (step % cfg.save_trajectory == 0 or step == total_steps):
          trajectory.save_snapshot(run_dir, step, state)
        if eigen_every and step % eigen_every == 0:
          last_eigen, last_eigen_step = float(jax.device_get(metrics["hessian_eigenvalue"])), step
        if step % cfg.log_every == 0 or step == total_steps:
          m = _jsonable(jax.device_get(metrics))
          bad = [k for k in ("train_loss", "val_loss", "weight_grad_norm", "alpha_grad_norm")
                 if k in m and not math.isfinite(m[k])]
          m.update(step=step, epoch=math.ceil(step / spe),
                   time_s=round(time.perf_counter() - t0, 3))
          log.write(json.dumps(m) + "\n")
          log.flush()
          if bad:
            raise JaxnasError(f"step {step}: {bad[0]} is {m[bad[0]]}; the search diverged "
                              f"(lower the learning rate or check the data); metrics so far are "
                              f"in {run_dir / 'metrics.jsonl'}")
          progress.update(step, m)
        if stop_rule is not None and step % spe == 0 and step < total_steps:
          alphas_now = jax.device_get(state.alphas)
          genotype, mixing, derive_error = derive_now(alphas_now)
          if derive_error is not None:  # nothing derivable yet: the rule waits for an epoch
            continue
          epoch_metrics = _jsonable(jax.device_get(metrics))
          if eigen_every:  # the value computed at this epoch's end, else missing (NaN)
            epoch_metrics["hessian_eigenvalue"] = last_eigen if last_eigen_step == step else math.nan
          history.append(stopping.EpochRecord(
              epoch=step // spe, genotype=genotype, mixing=mixing, metrics=epoch_metrics,
              alphas={k: np.asarray(v) for k, v in alphas_now.items()}))
          chosen = stopping.stop_epoch(stop_rule(genotype, tuple(history)), tuple(history))
          if chosen is not None:
            stopped_at, steps_done = step // spe, step
            if chosen != stopped_at:
              returned_epoch = chosen
            break
    finally:
      progress.close()
  search_s = time.perf_counter() - t0
  if stopped_at is not None:
    print(f"stopped after epoch {stopped_at} of {epochs}: stopping rule {recipe.stopping!r} fired "
          f"on genotype {history[-1].genotype}", file=stdout, flush=True)

  alphas = jax.device_get(state.alphas)
  if returned_epoch is not None:
    np.savez(run_dir / "alphas-final.npz", **{k: np.asarray(v) for k, v in alphas.items()})
    alphas = history[returned_epoch - 1].alphas
    print(f"returning the alphas and genotype of epoch {returned_epoch} (the rule's choice); the "
          f"last alphas are in alphas-final.npz", file=stdout, flush=True)
  np.savez(run_dir / "alphas.npz", **{k: np.asarray(v) for k, v in alphas.items()})
  genotype, _, derive_error = derive_now(alphas)
  if genotype is not None:
    genotype.save(run_dir)
  if returned_epoch is not None:
    state = state._replace(alphas=jax.device_put(alphas))
  val_loss, val_acc = search.evaluate(model, relaxation, state, dataset.val_x, dataset.val_y)
  summary = {"supernet_val_accuracy": val_acc, "supernet_val_loss": val_loss,
             "derivation_rule": rule,
             "genotype": None if genotype is None else genotype.to_dict(),
             "derivation_error": derive_error,
             "first_step_s": compile_s, "search_s": search_s, "steps": steps_done,
             "stopped_at_epoch": stopped_at, "returned_epoch": returned_epoch}
  if genotype is not None and genotype.space == "nb201":
    summary["nb201_arch"] = derive.nb201_arch_string(genotype)
  (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
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
