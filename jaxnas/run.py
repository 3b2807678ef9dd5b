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


def space_config(cfg: SearchConfig, num_classes: int) -> dict:
  """The keyword arguments of the space's module for ``cfg``."""
  if cfg.space == "nb201":
    return dict(channels=cfg.channels, cells_per_stage=cfg.cells, num_classes=num_classes)
  return dict(channels=cfg.channels, num_cells=cfg.cells, num_classes=num_classes,
              depthwise=cfg.depthwise)


def build(cfg: SearchConfig, num_classes: int, *, recipe=None):
  """The supernet module and the recipe (with ``--estimator`` applied) for ``cfg``.

  ``recipe``, if given, replaces the registered method ``cfg.method``.
  """
  from jaxnas import methods, spaces
  model = spaces.get(cfg.space, **space_config(cfg, num_classes))
  recipe = methods.get(cfg.method) if recipe is None else recipe
  if cfg.estimator is not None:
    recipe = recipe.replace(estimator=cfg.estimator)
  return model, recipe


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
  ``stopped_at_epoch`` (1-based; null when the search ran to the end).

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
  from jaxnas import data, derive, relax, search, stopping
  from jaxnas.methods import options
  dataset = data.load(cfg.dataset, data_dir=cfg.data_dir)
  for n, part in ((len(dataset.train_x), "search-train"), (len(dataset.val_x), "search-val")):
    data.validate_batch_size(n, cfg.batch_size, f"{part} images of {dataset.name}")
  model, recipe = build(cfg, dataset.num_classes, recipe=recipe)
  spe = data.steps_per_epoch(len(dataset.train_x), cfg.batch_size)
  total_steps = cfg.steps if cfg.steps is not None else cfg.epochs * spe
  epochs = math.ceil(total_steps / spe)
  search.check_recipe(recipe, steps_per_epoch=spe, epochs=epochs)
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
  step_fn = search.make_search_step(model, recipe, steps_per_epoch=spe, epochs=epochs)
  relaxation = relax.get(recipe.relaxation, **options(recipe.relaxation_options))
  rule = recipe.derivation or model.default_rule

  def derive_now():
    mixing = jax.device_get(relaxation(state.alphas, None))
    mixing = {k: np.asarray(v) for k, v in mixing.items()}
    return derive.derive(rule, mixing, model.op_names), mixing

  stop_rule = stopping.get(recipe.stopping) if recipe.stopping is not None else None
  history, stopped_at, steps_done = [], None, total_steps
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
          genotype, mixing = derive_now()
          history.append(stopping.EpochRecord(epoch=step // spe, genotype=genotype, mixing=mixing,
                                              metrics=_jsonable(jax.device_get(metrics))))
          if stop_rule(genotype, tuple(history)):
            stopped_at, steps_done = step // spe, step
            break
    finally:
      progress.close()
  search_s = time.perf_counter() - t0
  if stopped_at is not None:
    print(f"stopped after epoch {stopped_at} of {epochs}: stopping rule {recipe.stopping!r} fired "
          f"on genotype {history[-1].genotype}", file=stdout, flush=True)

  alphas = jax.device_get(state.alphas)
  np.savez(run_dir / "alphas.npz", **{k: np.asarray(v) for k, v in alphas.items()})
  genotype, _ = derive_now()
  genotype.save(run_dir)
  val_loss, val_acc = search.evaluate(model, relaxation, state, dataset.val_x, dataset.val_y)
  summary = {"supernet_val_accuracy": val_acc, "supernet_val_loss": val_loss,
             "derivation_rule": rule, "genotype": genotype.to_dict(),
             "first_step_s": compile_s, "search_s": search_s, "steps": steps_done,
             "stopped_at_epoch": stopped_at}
  if genotype.space == "nb201":
    summary["nb201_arch"] = derive.nb201_arch_string(genotype)
  (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
  print(f"genotype ({rule}): {genotype}", file=stdout)
  print(f"supernet validation accuracy: {100 * val_acc:.2f}% (loss {val_loss:.4f}) on "
        f"{len(dataset.val_x)} search-val images; {search_s:.1f} s, first step {compile_s:.1f} s",
        file=stdout)
  print(f"results in {run_dir}", file=stdout, flush=True)
  return run_dir
