"""Training a searched genotype from scratch: the ``jaxnas train`` command (DARTS' evaluation phase).

The protocol is quark0/darts ``cnn/train.py`` (Liu et al., ICLR 2019) for DARTS-space genotypes:
SGD with momentum 0.9, weight decay 3·10⁻⁴ on every weight, gradient-norm clipping at 5, learning
rate 0.025 on a per-epoch cosine to 0; loss = CE(logits) + 0.4 · CE(auxiliary logits); drop-path
probability 0.2 · epoch / epochs on every non-identity op; C = 36, L = 20, batch 96, 600 epochs,
cutout 16, random crop and flip. For NAS-Bench-201 strings it is the benchmark's (Dong & Yang,
ICLR 2020): C = 16, N = 5, Nesterov SGD 0.1 cosine to 0, weight decay 5·10⁻⁴, batch 256, 200
epochs, no auxiliary head, no drop-path, no cutout. On small images (the embedded 8×8 digits) the
defaults shrink to what fits (see :data:`_DEFAULTS`).

The network trains on the data set's search-train and search-val parts together (the whole training
set, as the reference) and is evaluated on its test part after every epoch. The run directory holds
``config.json``, ``metrics.jsonl`` (one line per logged step, one per epoch's evaluation),
``weights.msgpack`` (final params and batch statistics, ``flax.serialization``),
``summary.json``, a TensorBoard events file (:mod:`jaxnas.tb`: the logged steps' losses,
accuracies, learning rate, gradient norm and drop-path probability, and each epoch's test loss and
accuracy) and ``checkpoints/`` (:mod:`jaxnas.checkpoint`: the whole :class:`TrainState`
every ``--checkpoint-every`` steps and at the end, the newest ``--keep`` kept), from which
``jaxnas train --resume --out RUN_DIR`` continues. Batches, augmentation and drop-path masks are
pure functions of (seed, step), so a resumed run is bit for bit the run never interrupted (on one
machine). A step whose loss, gradient or new weights are not finite stops the run with one line.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import math
import os
import pathlib
import sys
import time
from typing import Any, NamedTuple, Optional

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnas import data, ddarts, derive, evalnet, genotypes, search
from jaxnas.errors import JaxnasError
from jaxnas.run import _jsonable, _make_run_dir, _truncate_metrics, _versions
from jaxnas.search import cross_entropy, epoch_cosine_schedule

__all__ = ["TrainConfig", "TrainState", "load_genotype", "resolve", "validate", "make_optimizer",
           "make_train_step", "init_train_state", "evaluate", "run_train", "NONFINITE_QUANTITIES",
           "nonfinite_mask", "describe_nonfinite", "resume_config", "check_resume_flags",
           "paper_counts"]

# Defaults by (genotype space, image size class). "paper": 32×32 images, the papers' protocols.
# "small": images under 32×32 (digits): the auxiliary head cannot be built (it needs 8×8 at cell
# 2L/3) and cutout 16 exceeds the image, so both are off, and the network and run are smaller.
_DEFAULTS = {
    ("darts", "paper"): dict(channels=36, cells=20, batch_size=96, epochs=600,
                             auxiliary_weight=0.4, drop_path=0.2, cutout=16, lr=0.025,
                             momentum=0.9, nesterov=False, weight_decay=3e-4, grad_clip=5.0),
    ("darts", "small"): dict(channels=16, cells=8, batch_size=64, epochs=30,
                             auxiliary_weight=0.0, drop_path=0.2, cutout=0, lr=0.025,
                             momentum=0.9, nesterov=False, weight_decay=3e-4, grad_clip=5.0),
    ("nb201", "paper"): dict(channels=16, cells=5, batch_size=256, epochs=200,
                             auxiliary_weight=0.0, drop_path=0.0, cutout=0, lr=0.1,
                             momentum=0.9, nesterov=True, weight_decay=5e-4, grad_clip=None),
    ("nb201", "small"): dict(channels=16, cells=5, batch_size=64, epochs=30,
                             auxiliary_weight=0.0, drop_path=0.0, cutout=0, lr=0.1,
                             momentum=0.9, nesterov=True, weight_decay=5e-4, grad_clip=None),
}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything a training run needs; None means the default of the genotype's space and data."""

  genotype: str = "DARTS_V2"  # a genotype.json, a run directory holding one, or a published name
  dataset: str = "digits"
  data_dir: Optional[str] = None
  epochs: Optional[int] = None
  batch_size: Optional[int] = None
  channels: Optional[int] = None
  cells: Optional[int] = None  # L (all cells) for darts, N (cells per stage) for nb201
  auxiliary_weight: Optional[float] = None
  drop_path: Optional[float] = None
  cutout: Optional[int] = None
  lr: Optional[float] = None
  momentum: Optional[float] = None
  nesterov: Optional[bool] = None
  weight_decay: Optional[float] = None
  grad_clip: Optional[float] = None
  seed: int = 0
  out: Optional[str] = None
  log_every: int = 50
  dry_run: bool = False
  checkpoint_every: Optional[int] = None  # steps between checkpoints (None: each epoch; 0: end)
  keep: int = 3  # checkpoints kept (the newest)


class TrainState(NamedTuple):
  """What training carries from one step to the next, as one pytree."""

  params: Any  # the network's Flax params
  batch_stats: Any  # BN running statistics
  opt_state: Any  # optax state
  step: Any  # shape=(), dtype=int32
  key: Any  # PRNG key of the run; step keys are fold_in(key, step)


def load_genotype(spec) -> derive.Genotype | ddarts.CellGenotype:
  """A genotype from a file, a run directory (its ``genotype.json``) or a published name.

  A per-cell genotype (``"space": "darts-cells"``: D-DARTS' ``jaxnas derive RUN_DIR --cells N``,
  DARTOpti's whole-network genotype) loads as a :class:`jaxnas.ddarts.CellGenotype`.

  Raises:
    JaxnasError: if ``spec`` is neither an existing path nor a name of :data:`genotypes.NAMES`, or
      the file is not a genotype.
  """
  if isinstance(spec, (derive.Genotype, ddarts.CellGenotype)):
    return spec
  path = pathlib.Path(str(spec))
  if path.exists():
    try:
      if _is_per_cell(path):  # D-DARTS / DARTOpti: one genotype per cell
        return ddarts.CellGenotype.load(path)
      return derive.Genotype.load(path)
    except JaxnasError as e:
      raise JaxnasError(f"--genotype {spec}: {e}") from None
  key = str(spec).upper().replace("-", "_")
  if key in genotypes.GENOTYPES:
    return genotypes.GENOTYPES[key]
  raise JaxnasError(f"--genotype {spec!r} is neither a file or run directory nor a published "
                    f"genotype; choose a genotype.json or one of: {', '.join(genotypes.NAMES)}")


def _is_per_cell(path: pathlib.Path) -> bool:
  """Whether ``path`` (a file or run directory) holds a :class:`jaxnas.ddarts.CellGenotype`."""
  try:
    fields = json.loads(derive._genotype_path(path).read_text())
  except (OSError, ValueError):
    return False
  return isinstance(fields, dict) and fields.get("space") == "darts-cells"


def _genotype_from_dict(fields):
  """A genotype from its ``to_dict()`` (a run's config.json): per-cell or not, by its space."""
  if isinstance(fields, dict) and fields.get("space") == "darts-cells":
    return ddarts.CellGenotype.from_dict(fields)
  return derive.Genotype.from_dict(fields)


def _family(space: str) -> str:
  """The defaults' space of a genotype space: per-cell genotypes train as darts ones."""
  return "darts" if space == "darts-cells" else space


def _head_buildable(genotype) -> bool:
  """Whether the auxiliary head can be built on 32×32 images: it needs 8×8 features, so at most
  two reductions before it (a per-cell genotype with three, as DARTOpti's ResNet-18, has 4×4)."""
  if isinstance(genotype, ddarts.CellGenotype):
    return 1 <= len(genotype.reductions) <= 2
  return genotype.space == "darts"


def _size_class(image_shape) -> str:
  return "paper" if min(image_shape[:2]) >= 32 else "small"


def resolve(cfg: TrainConfig, space: str, image_shape) -> TrainConfig:
  """``cfg`` with every None replaced by the default of ``space`` on images of ``image_shape``."""
  defaults = _DEFAULTS[(_family(space), _size_class(image_shape))]
  filled = {k: (v if getattr(cfg, k) is None else getattr(cfg, k)) for k, v in defaults.items()}
  return dataclasses.replace(cfg, **filled)


def _whole(value, flag: str, low: int) -> None:
  if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
    raise JaxnasError(f"{flag} must be a whole number ≥ {low}, got {value!r}")


def _real(value, flag: str, low: float, high: float, high_open: bool = False) -> None:
  if value is None:
    return
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
  ok = ok and low <= value and (value < high if high_open else value <= high)
  if not ok:
    bracket = ")" if high_open else "]"
    raise JaxnasError(f"{flag} must be a number in [{low}, {high}{bracket}, got {value!r}")


def validate(cfg: TrainConfig, space: Optional[str] = None, image_shape=None) -> None:
  """Raises a one-line JaxnasError for a config that cannot work.

  With ``space`` and ``image_shape`` (after :func:`resolve`), also checks what depends on them:
  the auxiliary head and drop-path exist only for darts genotypes, the head needs images of at
  least 32×32, darts networks need sides divisible by 4 and the cutout square must fit the image.
  """
  for value, flag, low in ((cfg.epochs, "--epochs", 1), (cfg.batch_size, "--batch-size", 1),
                           (cfg.channels, "--channels", 1), (cfg.cells, "--cells", 1),
                           (cfg.cutout, "--cutout", 0), (cfg.seed, "--seed", 0),
                           (cfg.log_every, "--log-every", 1),
                           (cfg.checkpoint_every, "--checkpoint-every", 0), (cfg.keep, "--keep", 1)):
    _whole(value, flag, low)
  _real(cfg.auxiliary_weight, "--auxiliary-weight", 0.0, math.inf, True)
  _real(cfg.drop_path, "--drop-path", 0.0, 1.0, True)
  _real(cfg.lr, "--lr", 0.0, math.inf, True)
  _real(cfg.momentum, "--momentum", 0.0, 1.0, True)
  _real(cfg.weight_decay, "--weight-decay", 0.0, math.inf, True)
  if cfg.grad_clip is not None:
    _real(cfg.grad_clip, "--grad-clip", 0.0, math.inf, True)
  if space is None:
    return
  h, w = image_shape[:2]
  if space == "nb201":
    if cfg.auxiliary_weight:
      raise JaxnasError("the NAS-Bench-201 network has no auxiliary head; use --auxiliary-weight 0")
    if cfg.drop_path:
      raise JaxnasError("the NAS-Bench-201 network has no drop-path; use --drop-path 0")
  else:
    if h % 4 or w % 4:
      raise JaxnasError(f"the darts network halves {h}×{w} images twice; it needs sides divisible "
                        "by 4")
    if cfg.auxiliary_weight and min(h, w) < 32:
      raise JaxnasError(f"the auxiliary head needs 8×8 features at cell 2L//3, i.e. images of at "
                        f"least 32×32, but these are {h}×{w}; use --auxiliary-weight 0")
    if cfg.channels % 2:
      raise JaxnasError(f"--channels {cfg.channels} is odd; FactorizedReduce splits channels in "
                        "halves, choose an even number")
  if cfg.cutout and cfg.cutout > min(h, w):
    raise JaxnasError(f"--cutout {cfg.cutout} is larger than the {h}×{w} images; choose --cutout "
                      f"≤ {min(h, w)} (0 turns it off)")


def make_optimizer(cfg: TrainConfig, *, steps_per_epoch: int):
  r"""SGD as the reference: clip, then weight decay, then momentum, lr on a per-epoch cosine.

  .. math:: g \leftarrow \mathrm{clip}(g, 5);\; d = g + \lambda w;\; m \leftarrow \mu m + d;\;
     w \leftarrow w - \eta_e m, \quad \eta_e = \tfrac12 \eta (1 + \cos(\pi e / E))

  (torch ``SGD(momentum, weight_decay)`` after ``clip_grad_norm``; Nesterov for NB201). The
  cosine is :func:`jaxnas.search.epoch_cosine_schedule` to 0: epoch ``e`` (from 0) trains at
  :math:`\eta_e`. quark0/darts steps its ``CosineAnnealingLR`` at the start of each epoch, which,
  depending on the PyTorch version's scheduler semantics, can shift this by one epoch; we keep
  the schedule's own definition.
  """
  schedule = epoch_cosine_schedule(cfg.lr, 0.0, steps_per_epoch=steps_per_epoch,
                                   epochs=cfg.epochs)
  parts = []
  if cfg.grad_clip is not None:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip))
  if cfg.weight_decay:
    parts.append(optax.add_decayed_weights(cfg.weight_decay))
  parts.append(optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=bool(cfg.nesterov)))
  return optax.chain(*parts), schedule


# Bit i of the step's "nonfinite" mask stands for the i-th quantity (metrics key, words).
NONFINITE_QUANTITIES = (("train_loss", "training loss"), ("grad_norm", "weight gradient"),
                        ("weights", "weights"), ("batch_stats", "batch statistics"))


def nonfinite_mask(metrics, params, batch_stats):
  r"""A bit mask of the training step's quantities that are not finite: 0 when all are.

  .. math:: m = \sum_i 2^i \, [\lnot \mathrm{isfinite}(q_i)]

  with :math:`q_i` the i-th entry of :data:`NONFINITE_QUANTITIES`: the training loss, the norm of
  the weight gradient (finite exactly when every entry is, up to overflow of the sum of squares),
  every updated weight and every BN running statistic. The same check as
  :func:`jaxnas.search.nonfinite_mask` for the search (issue 7); not in quark0/darts, which trains
  on through NaN. A few ``isfinite`` reductions inside the jitted step, so the loop stops at the
  first bad step reading one integer back.
  """
  return search.flag_nonfinite({"weights": params, "batch_stats": batch_stats}, metrics,
                               NONFINITE_QUANTITIES)


def describe_nonfinite(mask: int, metrics: dict) -> str:
  """The first quantity flagged in ``mask`` (:func:`nonfinite_mask`) in words, e.g.
  ``"training loss is NaN"``; :func:`jaxnas.search.describe_nonfinite` with this module's table."""
  return search.describe_nonfinite(mask, metrics, NONFINITE_QUANTITIES)


def make_train_step(model, tx, schedule, *, auxiliary_weight: float, drop_path: float,
                    steps_per_epoch: int, epochs: int, jit: bool = True):
  r"""``train_step(state, batch) -> (state, metrics)``, one SGD step of the evaluation network.

  .. math:: \mathcal L = \mathrm{CE}(f(x), y) + \lambda_{aux} \mathrm{CE}(f_{aux}(x), y), \qquad
     p_e = p \cdot e / E

  with the network in train mode and drop-path probability :math:`p_e` at epoch ``e`` (from 0),
  as quark0/darts sets ``model.drop_path_prob`` at the start of each epoch. The drop-path masks
  come from ``fold_in(state.key, state.step)``. The epoch is read from ``state.step`` inside the
  program, so one compilation serves the whole run. ``metrics["nonfinite"]`` is
  :func:`nonfinite_mask` of the step (0 when its loss, gradient and new state are finite).
  """
  use_aux = bool(auxiliary_weight)

  def loss_fn(params, batch_stats, batch, drop_prob, key):
    (logits, aux_logits), new_vars = model.apply(
        {"params": params, "batch_stats": batch_stats}, batch["image"], train=True,
        drop_prob=drop_prob if drop_path else None, rngs={"drop_path": key},
        mutable=["batch_stats"])
    ce = cross_entropy(logits, batch["label"])
    aux = {"ce": ce, "batch_stats": new_vars["batch_stats"]}
    loss = ce
    if use_aux:
      aux["aux_ce"] = cross_entropy(aux_logits, batch["label"])
      loss = ce + jnp.asarray(auxiliary_weight, ce.dtype) * aux["aux_ce"]
    pred = jnp.argmax(logits, -1)
    aux["accuracy"] = jnp.mean((pred == batch["label"].astype(pred.dtype)).astype(ce.dtype))
    return loss, aux

  def train_step(state: TrainState, batch):
    epoch = state.step // steps_per_epoch
    dtype = model.dtype
    drop_prob = jnp.asarray(drop_path, dtype) * epoch.astype(dtype) / jnp.asarray(epochs, dtype)
    key = jax.random.fold_in(state.key, state.step)
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.batch_stats, batch, drop_prob, key)
    with jax.numpy_dtype_promotion("standard"):  # optax's schedules mix int and float
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
      lr = schedule(state.step)
    metrics = {"train_loss": loss, "train_ce": aux["ce"], "train_accuracy": aux["accuracy"],
               "grad_norm": optax.tree.norm(grads), "lr": lr, "drop_prob": drop_prob}
    if use_aux:
      metrics["train_aux_ce"] = aux["aux_ce"]
    metrics["nonfinite"] = nonfinite_mask(metrics, params, aux["batch_stats"])
    new_state = TrainState(params=params, batch_stats=aux["batch_stats"], opt_state=opt_state,
                           step=state.step + 1, key=state.key)
    return new_state, metrics

  return jax.jit(train_step, donate_argnums=0) if jit else train_step


def init_train_state(model, tx, key, image_shape) -> TrainState:
  """A fresh :class:`TrainState`, every leaf committed to the default device."""
  k_init, k_run = jax.random.split(key)
  params, batch_stats = evalnet.init_variables(model, k_init, image_shape)
  state = TrainState(params=params, batch_stats=batch_stats, opt_state=tx.init(params),
                     step=jnp.asarray(0, jnp.int32), key=k_run)
  # Uncommitted leaves would make the second step compile again (see search.init_search_state).
  return jax.device_put(state, jax.devices()[0])


@functools.partial(jax.jit, static_argnums=0)
def _batch_sums(model, params, batch_stats, x, y, mask):
  """Summed cross-entropy and correct predictions of a masked batch (compiled once per model)."""
  logits, _ = model.apply({"params": params, "batch_stats": batch_stats}, x, train=False)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
  pred = jnp.argmax(logits, -1)
  correct = (pred == y.astype(pred.dtype)).astype(ce.dtype)
  return jnp.sum(ce * mask.astype(ce.dtype)), jnp.sum(correct * mask.astype(ce.dtype))


def evaluate(model, params, batch_stats, images, labels, *, batch_size: int = 256):
  """Mean cross-entropy and accuracy of the network in eval mode on a whole split.

  The last partial batch is padded and masked, so every example counts once and one compiled
  program serves every batch.
  """
  n = len(images)
  batch_size = max(1, min(batch_size, n))
  total_loss = total_correct = 0.0
  for start in range(0, n, batch_size):
    x, y = np.asarray(images[start:start + batch_size]), np.asarray(labels[start:start + batch_size])
    m = len(x)
    if m < batch_size:
      x = np.concatenate([x, np.zeros((batch_size - m,) + x.shape[1:], x.dtype)])
      y = np.concatenate([y, np.zeros((batch_size - m,), y.dtype)])
    mask = np.arange(batch_size) < m
    loss, correct = _batch_sums(model, params, batch_stats, x, y, mask)
    total_loss += float(loss)
    total_correct += float(correct)
  return total_loss / n, total_correct / n


def paper_counts(genotype) -> tuple[int, int, int]:
  """``(params, params with the auxiliary head, multiply-adds)`` of ``genotype``'s network as the
  papers report it: 10 classes, 32×32×3 images, C = 36 and L = 20 (darts) or C = 16 and N = 5
  (nb201), counted by :func:`jaxnas.evalnet.count_params` and :func:`~jaxnas.evalnet.count_macs`.
  A per-cell genotype keeps its own L (its cell count); where its auxiliary head cannot be built
  (:func:`_head_buildable`) the second figure equals the first.
  """
  paper = _DEFAULTS[(_family(genotype.space), "paper")]
  cells = None if isinstance(genotype, ddarts.CellGenotype) else paper["cells"]
  net = evalnet.build(genotype, channels=paper["channels"], cells=cells, num_classes=10,
                      auxiliary=_head_buildable(genotype))
  plain, with_aux = evalnet.count_params(net, (32, 32, 3))
  macs = evalnet.count_macs(
      evalnet.build(genotype, channels=paper["channels"], cells=cells, num_classes=10),
      (32, 32, 3))
  return plain, with_aux, macs


def _print_paper_counts(genotype, cfg: TrainConfig, num_classes: int, data_shape, stdout) -> None:
  """A dry run of another network (smaller, other data) also prints the papers' figures."""
  paper = dict(_DEFAULTS[(_family(genotype.space), "paper")])
  if isinstance(genotype, ddarts.CellGenotype):
    paper["cells"] = len(genotype.cells)
  if ((cfg.channels, cfg.cells, num_classes) == (paper["channels"], paper["cells"], 10)
      and tuple(data_shape) == (32, 32, 3)):
    return
  plain, with_aux, macs = paper_counts(genotype)
  darts = _head_buildable(genotype)
  size = f"C={paper['channels']}, {'N' if genotype.space == 'nb201' else 'L'}={paper['cells']}"
  print(f"the papers' network ({size}, 10 classes, 32×32×3): {plain:,} parameters"
        + (f" without the auxiliary head, {with_aux:,} with it" if darts else "")
        + f"; {macs / 1e6:.2f}M multiply-adds", file=stdout, flush=True)


def _augment_module():
  """``jaxnas.data.augment`` if this version has it, else None."""
  try:
    from jaxnas.data import augment
  except ImportError:
    return None
  return augment


def _default_out(cfg: TrainConfig, genotype_label: str) -> pathlib.Path:
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  return pathlib.Path("runs") / f"train-{genotype_label}-{cfg.dataset}-s{cfg.seed}-{stamp}"


# Resuming (issue 7): the config from config.json, the loop position in each checkpoint.

_RESUME_OVERRIDES = ("out", "checkpoint_every", "keep", "dry_run")  # may differ on --resume


def resume_config(run_dir) -> TrainConfig:
  """The :class:`TrainConfig` of the training run that wrote ``run_dir/config.json``.

  ``out`` is ``run_dir`` and ``dry_run`` False (a dry run's directory resumes into a real run).
  The genotype itself is read back from the same file by :func:`run_train`, so a resumed run does
  not depend on the genotype file it started from.

  Raises:
    JaxnasError: if ``run_dir`` has no readable ``jaxnas train`` config.json.
  """
  path = pathlib.Path(run_dir) / "config.json"
  if not path.is_file():
    raise JaxnasError(f"{path} not found; --resume needs --out RUN_DIR of an earlier "
                      "'jaxnas train'")
  try:
    config = json.loads(path.read_text())
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in config["config"].items() if k in known})
    _genotype_from_dict(config["genotype"])
  except (ValueError, KeyError, TypeError, AttributeError, JaxnasError) as e:
    raise JaxnasError(f"{path} is not a jaxnas train config.json ({type(e).__name__}: "
                      f"{str(e).splitlines()[0] if str(e) else ''}); cannot resume") from None
  return dataclasses.replace(cfg, out=str(run_dir), dry_run=False)


def check_resume_flags(cfg: TrainConfig, given: TrainConfig, defaults: TrainConfig) -> None:
  """Raises a one-line error if ``given`` (the command line) sets a field unlike ``cfg`` (the run's).

  A field counts as set when it differs from ``defaults`` (the command line's own defaults);
  ``--out``, ``--checkpoint-every`` and ``--keep`` may change on resume, nothing else may (as
  :func:`jaxnas.run.check_resume_flags` for the search).
  """
  for f in dataclasses.fields(TrainConfig):
    if f.name in _RESUME_OVERRIDES:
      continue
    value = getattr(given, f.name)
    if value != getattr(defaults, f.name) and value != getattr(cfg, f.name):
      flag = "--" + f.name.replace("_", "-")
      raise JaxnasError(f"{flag} {value!r} conflicts with the run's config.json "
                        f"({f.name} = {getattr(cfg, f.name)!r}); --resume takes the "
                        f"configuration from there: leave {flag} out")


def run_train(cfg: TrainConfig, *, stdout=None, resume: bool = False) -> pathlib.Path:
  """Builds the genotype's network, writes the run directory and (unless a dry run) trains it.

  A dry run prints the parameter counts without and with the auxiliary head and the multiply-adds
  of one 32×32 forward pass (the papers' figure) and of one forward pass at the data's image size,
  writes ``config.json`` and stops.

  Checkpoints (:mod:`jaxnas.checkpoint`) go to ``checkpoints/`` every ``cfg.checkpoint_every``
  steps (default: each epoch, after its evaluation; 0: only the last) and after the last step, the
  newest ``cfg.keep`` kept. Each holds the whole :class:`TrainState` (weights, BN statistics,
  optimiser state, step, PRNG key) and the loop position (step = data position, epoch, best and
  last test figures, elapsed time). ``resume=True`` continues the run in ``cfg.out`` from its
  newest checkpoint (from step 0 if it has none) with the genotype recorded in its config.json:
  ``metrics.jsonl`` is cut back to that step and appended to. The batch at step ``s`` is
  :func:`jaxnas.data.batch_at` ``(seed, s)``, its augmentation draws from
  ``default_rng([seed, s])`` and its drop-path masks from ``fold_in(key, s)``, so the resumed run
  ends with the same numbers, bit for bit on one machine, as one never interrupted. Use
  :func:`resume_config` for ``cfg``.

  Every step reports whether its loss, gradient and new state are finite (:func:`nonfinite_mask`);
  the first that is not ends the run with one line naming the step, the quantity and the last good
  checkpoint, which stays as it was (unlike quark0/darts, which trains on through NaN).

  Args:
    cfg: the training run.
    stdout: where the progress lines go (default ``sys.stdout``).
    resume: continue the run in the existing directory ``cfg.out`` (see above).

  Returns:
    The run directory.

  Raises:
    JaxnasError: for a config that cannot work, before anything is written; when resuming, for a
      finished run, a run directory of other data, or a checkpoint that cannot be restored (damaged
      or of another configuration), before anything is changed; for a step that is not finite.
  """
  stdout = stdout or sys.stdout
  validate(cfg)
  if resume:
    if not cfg.out:
      raise JaxnasError("--resume needs --out RUN_DIR: the run directory to continue")
    resume_config(cfg.out)  # a readable config.json of a training run
    saved = json.loads((pathlib.Path(cfg.out) / "config.json").read_text())
    if (pathlib.Path(cfg.out) / "summary.json").exists():
      raise JaxnasError(f"{cfg.out} holds a finished training run (summary.json); nothing to "
                        "resume")
    genotype = _genotype_from_dict(saved["genotype"])
  else:
    genotype = load_genotype(cfg.genotype)
  if isinstance(genotype, ddarts.CellGenotype):  # the genotype fixes L
    if cfg.cells is not None and cfg.cells != len(genotype.cells):
      evalnet.build(genotype, channels=2, cells=cfg.cells, num_classes=2)  # its one-line error
    cfg = dataclasses.replace(cfg, cells=len(genotype.cells))
    if cfg.auxiliary_weight is None and not _head_buildable(genotype):
      cfg = dataclasses.replace(cfg, auxiliary_weight=0.0)  # e.g. ResNet-18's three reductions
  dataset = data.load(cfg.dataset, data_dir=cfg.data_dir)
  cfg = resolve(cfg, genotype.space, dataset.image_shape)
  validate(cfg, genotype.space, dataset.image_shape)
  augment = _augment_module()
  crop_flip = _size_class(dataset.image_shape) == "paper"
  if cfg.cutout and augment is None:
    raise JaxnasError("cutout needs jaxnas.data.augment, which this installation lacks; pass "
                      "--cutout 0")
  train_x = np.concatenate([dataset.train_x, dataset.val_x])
  train_y = np.concatenate([dataset.train_y, dataset.val_y])
  data.validate_batch_size(len(train_x), cfg.batch_size, f"training images of {dataset.name}")
  spe = data.steps_per_epoch(len(train_x), cfg.batch_size)
  total_steps = spe * cfg.epochs

  model = evalnet.build(genotype, channels=cfg.channels, cells=cfg.cells,
                        num_classes=dataset.num_classes, auxiliary=bool(cfg.auxiliary_weight))
  counting = evalnet.build(genotype, channels=cfg.channels, cells=cfg.cells,
                           num_classes=dataset.num_classes,
                           auxiliary=_head_buildable(genotype))
  data_shape, paper_shape = tuple(dataset.image_shape), (32, 32, 3)
  # Parameter counts depend on the input channels (the stem), not on the image size; they are
  # taken at 32×32 where the auxiliary head can be built.
  # A resumed run reads them from its config.json (the same network; counting takes seconds).
  counted = ("num_params", "num_params_with_auxiliary", "num_params_32x32x3",
             "num_params_32x32x3_with_auxiliary", "macs_32x32x3", "macs_at_image_size")
  if resume and all(k in saved for k in counted):
    params_plain, params_aux, p3, p3_aux, macs_32, macs_data = (saved[k] for k in counted)
    paper_params = (p3, p3_aux)
  else:
    params_plain, params_aux = evalnet.count_params(counting, (32, 32, data_shape[-1]))
    paper_params = (evalnet.count_params(counting, paper_shape) if data_shape[-1] != 3
                    else (params_plain, params_aux))
    macs_32 = evalnet.count_macs(model, paper_shape)
    macs_data = macs_32 if data_shape == paper_shape else evalnet.count_macs(model, data_shape)

  label = (pathlib.Path(str(cfg.genotype)).stem if pathlib.Path(str(cfg.genotype)).exists()
           else str(cfg.genotype).lower())
  if resume:
    run_dir = pathlib.Path(cfg.out)
    recorded = (saved.get("dataset", {}).get("train"), saved.get("steps_per_epoch"),
                saved.get("total_steps"))
    if recorded != (len(train_x), spe, total_steps):
      raise JaxnasError(f"{run_dir / 'config.json'} records {recorded[0]} training images in "
                        f"{recorded[2]} steps, this data gives {len(train_x)} in {total_steps}; "
                        "resume with the data set the run was started on")
  else:
    run_dir = _make_run_dir(pathlib.Path(cfg.out) if cfg.out else _default_out(cfg, label))
  config = {
      "config": dataclasses.asdict(cfg),
      "genotype": genotype.to_dict(),
      "genotype_str": str(genotype),
      "num_params": params_plain,
      "num_params_with_auxiliary": params_aux,
      "num_params_32x32x3": paper_params[0],
      "num_params_32x32x3_with_auxiliary": paper_params[1],
      "macs_32x32x3": macs_32,
      "macs_at_image_size": macs_data,
      "dataset": {"name": dataset.name, "image_shape": list(dataset.image_shape),
                  "num_classes": dataset.num_classes, "train": len(train_x),
                  "test": len(dataset.test_x)},
      "augmentation": {"crop_padding": 4 if crop_flip else 0, "flip": crop_flip,
                       "cutout": cfg.cutout, "available": augment is not None},
      "steps_per_epoch": spe, "total_steps": total_steps,
      "versions": _versions(), "command": sys.argv,
      "started": datetime.datetime.now().isoformat(timespec="seconds"),
  }
  if not resume:
    (run_dir / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
  no_head = ", no auxiliary head (the genotype's reductions leave it no 8×8 input)"
  with_aux = lambda counts: ("" if genotype.space == "nb201" else
                             f", {counts[1]:,} with the auxiliary head"
                             if _head_buildable(genotype) else no_head)
  print(f"run directory: {run_dir}", file=stdout)
  print(f"{genotype.space} network of genotype {label}: C={cfg.channels}, "
        f"{'N' if genotype.space == 'nb201' else 'L'}={cfg.cells}; parameters: {params_plain:,}"
        + ("" if genotype.space == "nb201" else " without the auxiliary head")
        + with_aux((params_plain, params_aux))
        + ("" if data_shape[-1] == 3 else
           f" ({data_shape[-1]}-channel images; for 3-channel ones as in the papers: "
           f"{paper_params[0]:,}{with_aux(paper_params)})"), file=stdout)
  print(f"multiply-adds of one 32×32×3 forward pass (the papers' figure): {macs_32 / 1e6:.2f}M"
        + ("" if data_shape == paper_shape else
           f"; of one {'×'.join(map(str, data_shape))} forward pass: {macs_data / 1e6:.2f}M"),
        file=stdout)
  print(f"{total_steps} steps of batch {cfg.batch_size} ({cfg.epochs} epochs of {spe}); "
        f"auxiliary weight {cfg.auxiliary_weight}, drop-path {cfg.drop_path}, cutout {cfg.cutout}",
        file=stdout, flush=True)
  if cfg.dry_run:
    _print_paper_counts(genotype, cfg, dataset.num_classes, data_shape, stdout)
    return run_dir

  tx, schedule = make_optimizer(cfg, steps_per_epoch=spe)
  state = init_train_state(model, tx, jax.random.key(cfg.seed), dataset.image_shape)
  from jaxnas import checkpoint, tb  # noqa: PLC0415  (orbax only where a run trains)
  ckpts = checkpoint.Checkpoints(run_dir / "checkpoints", keep=cfg.keep)
  start, position = 0, None
  if resume and ckpts.latest_step() is not None:
    try:
      state, position = ckpts.restore(state)
    except JaxnasError:
      ckpts.close()
      raise
    start = int(position["step"])
    if start != int(state.step) or start > total_steps:
      ckpts.close()
      raise JaxnasError(f"checkpoint {ckpts.path(start)} is at step {int(state.step)} of "
                        f"{total_steps}; it belongs to another run")
  if resume:
    print(f"resuming from step {start}" + (f" ({ckpts.path(start)})" if position else
                                           " (no checkpoint yet)"), file=stdout, flush=True)
    _truncate_metrics(run_dir / "metrics.jsonl", start)
  checkpoint_every = spe if cfg.checkpoint_every is None else cfg.checkpoint_every
  step_fn = make_train_step(model, tx, schedule, auxiliary_weight=cfg.auxiliary_weight,
                            drop_path=cfg.drop_path, steps_per_epoch=spe, epochs=cfg.epochs)
  fill = -dataset.mean / dataset.std
  first_step_s, best, elapsed = None, 0.0, 0.0
  test_loss = test_acc = math.nan
  if position is not None:
    best, test_loss, test_acc = position["best"], position["test_loss"], position["test_accuracy"]
    elapsed = position["elapsed_s"]
  t_start = time.perf_counter()
  t0 = t_start - elapsed
  writer = tb.ScalarWriter(run_dir, purge_step=start + 1 if resume else None)
  with open(run_dir / "metrics.jsonl", "a" if resume else "w") as log:
    try:
      for step in range(start, total_steps):
        xb, yb = data.batch_at(train_x, train_y, cfg.batch_size, seed=cfg.seed, step=step)
        if augment is not None and (crop_flip or cfg.cutout):
          xb = augment.augment_batch(xb, rng=np.random.default_rng([cfg.seed, step]),
                                     crop_padding=4 if crop_flip else 0, flip=crop_flip,
                                     cutout=cfg.cutout, fill=fill).astype(xb.dtype)
        state, metrics = step_fn(state, {"image": xb, "label": yb})
        if first_step_s is None:
          jax.block_until_ready(state)
          first_step_s = time.perf_counter() - t_start
        done = step + 1
        bad = int(jax.device_get(metrics["nonfinite"]))
        if bad or done % cfg.log_every == 0 or done % spe == 0:
          m = _jsonable(jax.device_get(metrics))
          m.update(step=done, epoch=math.ceil(done / spe),
                   time_s=round(time.perf_counter() - t0, 3))
          log.write(json.dumps(m) + "\n")
          log.flush()
          writer.scalars(done, m)
        if bad:
          last = ckpts.latest_step()
          raise JaxnasError(f"step {done}: {describe_nonfinite(bad, m)} (last good checkpoint: "
                            f"{'none' if last is None else ckpts.path(last)}); training diverged: "
                            "lower --lr or check the data")
        if done % spe == 0:
          epoch = done // spe
          test_loss, test_acc = evaluate(model, state.params, state.batch_stats, dataset.test_x,
                                         dataset.test_y)
          best = max(best, test_acc)
          log.write(json.dumps({"epoch": epoch, "step": done, "test_loss": test_loss,
                                "test_accuracy": test_acc,
                                "time_s": round(time.perf_counter() - t0, 3)}) + "\n")
          log.flush()
          writer.scalars(done, {"test_loss": test_loss, "test_accuracy": test_acc})
          print(f"epoch {epoch}/{cfg.epochs}: train loss {m['train_loss']:.4f} acc "
                f"{m['train_accuracy']:.3f}; test loss {test_loss:.4f} acc {test_acc:.4f}",
                file=stdout, flush=True)
        if done == total_steps or (checkpoint_every and done % checkpoint_every == 0):
          log.flush()  # what the checkpoint covers is on disk before it is
          os.fsync(log.fileno())
          writer.flush()
          ckpts.save(done, state, {"step": done, "data_step": done, "epoch": done // spe,
                                   "best": best, "test_loss": test_loss,
                                   "test_accuracy": test_acc,
                                   "elapsed_s": time.perf_counter() - t0})
    finally:
      writer.close()
      ckpts.close()
  first_step_s = 0.0 if first_step_s is None else first_step_s  # None: no step was left
  train_s = time.perf_counter() - t0
  weights = {"params": jax.device_get(state.params),
             "batch_stats": jax.device_get(state.batch_stats)}
  (run_dir / "weights.msgpack").write_bytes(flax.serialization.to_bytes(weights))
  summary = {"test_accuracy": test_acc, "test_loss": test_loss, "best_test_accuracy": best,
             "num_params": params_plain, "num_params_with_auxiliary": params_aux,
             "macs_32x32x3": macs_32, "first_step_s": first_step_s, "train_s": train_s,
             "steps": total_steps}
  (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
  print(f"test accuracy {100 * test_acc:.2f}% (loss {test_loss:.4f}) on {len(dataset.test_x)} "
        f"test images after {cfg.epochs} epochs; {train_s:.1f} s, first step {first_step_s:.1f} s",
        file=stdout)
  print(f"results in {run_dir}", file=stdout, flush=True)
  return run_dir
