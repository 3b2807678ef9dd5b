"""Several seeds of one search in one compiled program: the search step vmapped over seeds.

A search is a pure function of its seed: the seed fixes the initial alphas and weights (through
``jax.random.key(seed)``), the per-step keys and the order of the data
(:func:`jaxnas.data.search_batches`). With the states of N seeds stacked along a leading axis
(:func:`init_seed_states`) and their batches stacked the same way (:func:`seed_batches`),

    step_N(states, train_batches, val_batches) = vmap(step)(states, train_batches, val_batches)

advances all N searches at once, and seed i's slice equals the single search run with seed i (to
floating-point summation order; tested). ``jaxnas search --seeds N`` (:func:`run_seeds`) runs seeds
``seed .. seed+N-1`` this way and writes one run directory per seed plus a summary; the stacked
state is checkpointed as one run's is, and ``jaxnas search --resume --out OUT`` continues all seeds.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import json
import math
import pathlib
import statistics
import sys
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxnas import search
from jaxnas.errors import JaxnasError

__all__ = ["stack", "unstack", "init_seed_states", "make_seeds_step", "seed_batches",
           "summarize", "run_seeds", "seeds_of", "resume_config", "SEEDS_FILE"]


def stack(trees):
  """One pytree whose leaves are the given pytrees' leaves stacked along a new axis 0."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree, i: int):
  """Slice ``i`` of a stacked pytree."""
  return jax.tree.map(lambda x: x[i], tree)


def init_seed_states(model, recipe, seeds, image_shape, *, steps_per_epoch: int,
                     epochs: int) -> search.SearchState:
  """The :class:`~jaxnas.search.SearchState` of each seed, stacked along axis 0.

  Seed ``s``'s slice is ``init_search_state(model, recipe, jax.random.key(s), ...)``, exactly the
  state a single search with seed ``s`` starts from.
  """
  return stack([search.init_search_state(model, recipe, jax.random.key(s), image_shape,
                                         steps_per_epoch=steps_per_epoch, epochs=epochs)
                for s in seeds])


def make_seeds_step(model, recipe, *, steps_per_epoch: int, epochs: int, jit: bool = True,
                    **options):
  """``step(states, train_batches, val_batches) -> (states, metrics)`` over stacked seeds.

  ``jax.vmap`` of :func:`jaxnas.search.make_search_step`'s step (``options`` go to it) with every
  argument and output batched on axis 0: metrics come back with one entry per seed. Jitted with
  the states donated unless ``jit=False`` (then it can be jitted with shardings by
  :func:`jaxnas.parallel.jit_step`, batch axis 1).

  Raises:
    JaxnasError: with ``eigen_every``: under vmap its ``lax.cond`` becomes a select that would
      compute the eigenvalue at every step.
  """
  if options.get("eigen_every"):
    raise JaxnasError("the Hessian eigenvalue (--eigen-every, or a stopping rule that reads it) "
                      "is not available with --seeds; run the seeds one at a time")
  step = search.make_search_step(model, recipe, steps_per_epoch=steps_per_epoch, epochs=epochs,
                                 jit=False, **options)
  vstep = jax.vmap(step)
  return jax.jit(vstep, donate_argnums=0) if jit else vstep


def seed_batches(dataset, batch_size: int, seeds, step: int):
  """The search-train and search-val batches of ``step`` for each seed, stacked along axis 0.

  Seed ``s``'s slice is ``data.search_batches(dataset, batch_size, seed=s, step=step)``.
  """
  from jaxnas import data
  pairs = [data.search_batches(dataset, batch_size, seed=s, step=step) for s in seeds]
  return tuple({k: np.stack([p[j][k] for p in pairs]) for k in pairs[0][j]} for j in (0, 1))


def _edges_chosen(genotype, cell: str):
  """``((to_state, from_state), op)`` for each gene of ``cell`` in a genotype dict (or None)."""
  from jaxnas import derive
  if not genotype:
    return []
  genes = genotype.get(cell) or []
  if genotype.get("space") == "nb201":
    return [(derive.NB201_EDGES[k], op) for k, (op, _) in enumerate(genes)]
  if genes and len(genes[0]) == 3:  # FairDARTS triples (op, to_state, from_state)
    return [((to, src), op) for op, to, src in genes]
  return [((g // 2 + 2, src), op) for g, (op, src) in enumerate(genes)]


def summarize(summaries: dict) -> dict:
  """What the seeds agree on: genotypes side by side, op wins per edge, accuracy mean ± std.

  Args:
    summaries: ``{seed: summary}``, each a run's ``summary.json`` content.

  Returns:
    ``{"seeds", "genotypes", "op_wins", "val_accuracy_mean", "val_accuracy_std", ...}`` where
    ``op_wins[cell][edge][op]`` counts the seeds whose genotype chose ``op`` on the edge
    ``"to<-from"`` (states numbered as in the genotype: NAS-Bench-201 nodes 0..3; DARTS states
    0, 1 the inputs and 2..5 the intermediate nodes, so an edge no seed kept is absent). The
    standard deviation is the sample one (n − 1; 0 for a single seed).
  """
  seeds = sorted(summaries)
  accs = [summaries[s]["supernet_val_accuracy"] for s in seeds]
  wins = collections.defaultdict(lambda: collections.defaultdict(collections.Counter))
  for s in seeds:
    genotype = summaries[s].get("genotype")
    for cell in ("normal", "reduce"):
      for (to, src), op in _edges_chosen(genotype, cell):
        wins[cell][f"{to}<-{src}"][op] += 1
  return {
      "seeds": seeds,
      "genotypes": {str(s): summaries[s].get("nb201_arch") or summaries[s].get("genotype")
                    for s in seeds},
      "op_wins": {c: {e: dict(cnt) for e, cnt in sorted(edges.items())}
                  for c, edges in wins.items()},
      "val_accuracy": accs,
      "val_accuracy_mean": statistics.fmean(accs),
      "val_accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
  }


def _markdown(summary: dict) -> str:
  lines = ["| seed | supernet val accuracy | genotype |", "|---|---|---|"]
  for s, acc in zip(summary["seeds"], summary["val_accuracy"]):
    lines.append(f"| {s} | {100 * acc:.2f}% | `{json.dumps(summary['genotypes'][str(s)])}` |")
  lines += ["", f"mean ± std: {100 * summary['val_accuracy_mean']:.2f} ± "
            f"{100 * summary['val_accuracy_std']:.2f}% over {len(summary['seeds'])} seeds", "",
            "| cell | edge | op (seeds that chose it) |", "|---|---|---|"]
  for cell, edges in summary["op_wins"].items():
    for edge, ops in edges.items():
      text = ", ".join(f"{op} ({n})" for op, n in sorted(ops.items(), key=lambda t: -t[1]))
      lines.append(f"| {cell} | {edge} | {text} |")
  return "\n".join(lines) + "\n"


SEEDS_FILE = "seeds.json"  # OUT/seeds.json marks the output of a --seeds run


def seeds_of(run_dir) -> Optional[list]:
  """The seeds of the ``--seeds`` run whose output is ``run_dir``; None for any other directory.

  Raises:
    JaxnasError: if ``run_dir`` is one seed's directory of a ``--seeds`` run (the seeds are one
      program and resume together), or if its ``seeds.json`` cannot be read.
  """
  path = pathlib.Path(run_dir)
  marker = path / SEEDS_FILE
  if marker.is_file():
    try:
      seeds = [int(s) for s in json.loads(marker.read_text())["seeds"]]
    except (ValueError, KeyError, TypeError) as e:
      raise JaxnasError(f"{marker} is not a jaxnas seeds record ({type(e).__name__}); cannot "
                        "resume") from None
    if not seeds or seeds != list(range(seeds[0], seeds[0] + len(seeds))):
      raise JaxnasError(f"{marker} lists seeds {seeds}, not a run of consecutive seeds; cannot "
                        "resume")
    return seeds
  try:
    record = json.loads((path / "config.json").read_text()).get("seeds")
  except (OSError, ValueError, AttributeError):
    return None
  if isinstance(record, dict) and record.get("vmapped"):
    raise JaxnasError(f"{path} is one seed of a --seeds run, whose seeds run as one program; "
                      f"resume them all: --resume --out {path.parent}")
  return None


def resume_config(run_dir) -> tuple:
  """``(cfg, recipe, num_seeds)`` of the ``--seeds`` run in ``run_dir``, to resume it.

  The configuration is the first seed's ``config.json`` (:func:`jaxnas.run.resume_config`) with
  ``cfg.out = run_dir``; the seeds run from ``cfg.seed``.

  Raises:
    JaxnasError: if ``run_dir`` is not the output of a ``--seeds`` run or cannot be read.
  """
  from jaxnas import run
  seeds = seeds_of(run_dir)
  if seeds is None:
    raise JaxnasError(f"{pathlib.Path(run_dir) / SEEDS_FILE} not found; {run_dir} is not the "
                      "output of 'jaxnas search --seeds N'")
  cfg, recipe = run.resume_config(pathlib.Path(run_dir) / f"seed-{seeds[0]}")
  return dataclasses.replace(cfg, out=str(run_dir), seed=seeds[0]), recipe, len(seeds)


def _save_alphas(dirs: dict, step: int, states) -> None:
  """Each seed's alphas of stacked ``states`` to its run directory's ``alphas_history/``."""
  from jaxnas import parallel, run
  alphas = parallel.to_host(states.alphas)
  for j, s in enumerate(dirs):
    run.save_alphas(dirs[s], step, {k: v[j] for k, v in alphas.items()})


def run_seeds(cfg, num_seeds: int, *, stdout=None, recipe=None, resume: bool = False
              ) -> pathlib.Path:
  """Runs seeds ``cfg.seed .. cfg.seed + num_seeds - 1`` of ``cfg`` as one vmapped program.

  Writes ``OUT/seed-<s>/`` for each seed, a run directory as :func:`jaxnas.run.run_search` writes
  it (``config.json``, ``metrics.jsonl``, a TensorBoard events file, ``alphas_history/``,
  ``alphas.npz``, ``genotype.json``, ``summary.json``), ``OUT/seeds.json`` (the seeds), and at the
  end ``OUT/summary.json`` and ``OUT/summary.md`` (:func:`summarize`). Stopping rules, the Hessian
  eigenvalue and trajectories are per-run host logic and are refused with ``--seeds``.

  Checkpoints go to ``OUT/checkpoints/`` as for one run (:mod:`jaxnas.checkpoint`): every
  ``cfg.checkpoint_every`` steps (default: each epoch; 0: only at the end) and after the last
  step, the newest ``cfg.keep`` kept. Each holds the stacked state of all seeds and the loop
  position (the step; every seed's batches are a pure function of its seed and the step). With
  ``resume=True`` the run in ``cfg.out`` continues from its newest checkpoint: each seed's
  ``metrics.jsonl`` is cut back to that step and its TensorBoard curves purged after it, and the
  run ends with the alphas one never interrupted ends with, bit for bit on one machine (the same
  compiled program on the same inputs). Use :func:`resume_config` for ``cfg`` and ``recipe``.

  Every step reports, per seed, whether its losses, gradients and updated parameters are finite
  (:func:`jaxnas.search.nonfinite_mask`); the first step where one seed's are not ends the run
  with one line naming the seed, the step, the quantity and the last good checkpoint.

  Raises:
    JaxnasError: for a config that cannot work, before anything is written; when resuming, for a
      finished run or a checkpoint that cannot be restored, before anything is changed; for a
      non-finite step; with several processes (``jax.distributed``): the seeds run in one.
  """
  from jaxnas import checkpoint, parallel, run, tb
  stdout = stdout or sys.stdout
  if isinstance(num_seeds, bool) or not isinstance(num_seeds, int) or num_seeds < 1:
    raise JaxnasError(f"--seeds must be a whole number ≥ 1, got {num_seeds}")
  if jax.process_count() > 1:
    raise JaxnasError("--seeds runs in one process; leave it out of a multi-process run (or run "
                      "the seeds on one host, its devices through --devices)")
  plan = run.prepare(cfg, recipe=recipe)
  cfg, dataset, model, recipe = plan.cfg, plan.dataset, plan.model, plan.recipe
  for what, on in (("a stopping rule (--stopping none removes the recipe's)", plan.stop_rule),
                   ("--eigen-every", plan.eigen_every), ("--save-trajectory", cfg.save_trajectory)):
    if on:
      raise JaxnasError(f"{what} is not available with --seeds; run the seeds one at a time")
  mesh = parallel.make_mesh(cfg.devices)
  parallel.check_batch_size(cfg.batch_size, mesh)
  seeds = list(range(cfg.seed, cfg.seed + num_seeds))
  if resume:
    root = run.resume_dir(cfg, "--seeds run")
    if seeds_of(root) != seeds:
      raise JaxnasError(f"{root / SEEDS_FILE} does not list seeds {seeds[0]}..{seeds[-1]}; "
                        "resume with the run's own configuration")
    dirs = {s: root / f"seed-{s}" for s in seeds}
  else:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    root = pathlib.Path(cfg.out) if cfg.out else pathlib.Path("runs") / (
        f"{cfg.method}-{cfg.space}-{cfg.dataset}-seeds{seeds[0]}-{seeds[-1]}-{stamp}")
    root = run._make_run_dir(root)
    (root / SEEDS_FILE).write_text(json.dumps({"seeds": seeds, "vmapped": True}) + "\n")
    dirs = {}
    for s in seeds:
      dirs[s] = root / f"seed-{s}"
      dirs[s].mkdir()
      run.write_config(dirs[s], plan._replace(cfg=dataclasses.replace(cfg, seed=s)),
                       seeds={"seeds": seeds, "vmapped": True})
  print(f"run directory: {root} ({num_seeds} seeds, one vmapped program)", file=stdout)
  print(f"{cfg.space} supernet, {plan.num_params:,} weights; method {recipe.name} "
        f"(estimator {recipe.estimator}); {plan.total_steps} steps of batch {cfg.batch_size}",
        file=stdout, flush=True)
  if cfg.dry_run:
    return root

  spe, epochs, total = plan.steps_per_epoch, plan.epochs, plan.total_steps
  states = init_seed_states(model, recipe, seeds, dataset.image_shape, steps_per_epoch=spe,
                            epochs=epochs)
  ckpts = checkpoint.Checkpoints(root / "checkpoints", keep=cfg.keep)
  start, elapsed = 0, 0.0
  if resume and ckpts.latest_step() is not None:
    states, position = ckpts.restore(states)
    start, elapsed = int(position["step"]), float(position["elapsed_s"])
    if start > total:
      raise JaxnasError(f"checkpoint {ckpts.path(start)} is at step {start}, past the run's "
                        f"{total} steps; it belongs to another run")
  if resume:
    print(f"resuming {num_seeds} seeds from step {start}" + (
        f" ({ckpts.path(start)})" if start else " (no checkpoint yet)"), file=stdout, flush=True)
    for s in seeds:
      run._truncate_metrics(dirs[s] / "metrics.jsonl", start)
  checkpoint_every = spe if cfg.checkpoint_every is None else cfg.checkpoint_every
  states = parallel.replicate(states, mesh)
  step_fn = parallel.jit_step(make_seeds_step(model, recipe, steps_per_epoch=spe, epochs=epochs,
                                              jit=False,
                                              fuse_phases=run.FUSE_PHASES[cfg.fuse_phases]),
                              mesh, batch_axis=1)
  rows = parallel.process_rows(cfg.batch_size, mesh)
  logs = {s: open(dirs[s] / "metrics.jsonl", "a" if resume else "w") for s in seeds}
  writers = {s: tb.ScalarWriter(dirs[s], purge_step=start + 1 if resume else None)
             for s in seeds}
  if start == 0:
    _save_alphas(dirs, 0, states)
  progress = run._Progress(total, spe)
  t_start = time.perf_counter()
  t0, compile_s = t_start - elapsed, None
  try:
    for i in range(start, total):
      train, val = seed_batches(dataset, cfg.batch_size, seeds, i)
      train, val = ({k: v[:, rows] for k, v in b.items()} for b in (train, val))
      states, metrics = step_fn(states, parallel.shard_batch(train, mesh, batch_axis=1),
                                parallel.shard_batch(val, mesh, batch_axis=1))
      if compile_s is None:
        jax.block_until_ready(states)
        compile_s = time.perf_counter() - t_start
      step = i + 1
      bad = parallel.to_host(metrics["nonfinite"])  # one bit mask per seed
      logged = step % cfg.log_every == 0 or step == total
      if logged or bad.any():
        m = parallel.to_host(metrics)
        now = round(time.perf_counter() - t0, 3)
        rows_of = {}
        for j, s in enumerate(seeds):
          rows_of[s] = {k: v[j].item() for k, v in m.items()}
          rows_of[s].update(step=step, epoch=math.ceil(step / spe), time_s=now)
          logs[s].write(json.dumps(rows_of[s]) + "\n")
          logs[s].flush()
          if logged:
            writers[s].scalars(step, rows_of[s])
        for j, s in enumerate(seeds):
          if bad[j]:
            last = ckpts.latest_step()
            raise JaxnasError(
                f"seed {s}, step {step}: {search.describe_nonfinite(int(bad[j]), rows_of[s])} "
                f"(last good checkpoint: {'none' if last is None else ckpts.path(last)}); the "
                "search diverged: lower the learning rate or check the data")
        progress.update(step, {k: float(np.mean(v)) for k, v in m.items()})
      if step % spe == 0 or step == total:
        _save_alphas(dirs, step, states)
      if step == total or (checkpoint_every and step % checkpoint_every == 0):
        for s in seeds:  # what the checkpoint covers is on disk before it is
          logs[s].flush()
          writers[s].flush()
        ckpts.save(step, states, {"step": step, "data_step": step,
                                  "elapsed_s": time.perf_counter() - t0})
  finally:
    progress.close()
    ckpts.close()
    for f in (*logs.values(), *writers.values()):
      f.close()
  compile_s = 0.0 if compile_s is None else compile_s  # None: a resumed run had no step left
  search_s = time.perf_counter() - t0

  relaxation = search.make_relaxation(recipe, model.op_names)
  host_states = parallel.to_host(states._replace(key=jax.random.key_data(states.key)))
  summaries = {}
  for j, s in enumerate(seeds):
    state = unstack(host_states, j)
    state = jax.device_put(state._replace(key=jax.random.wrap_key_data(state.key)))
    summaries[s], genotype = run.write_results(
        dirs[s], plan, relaxation, state, state.alphas, first_step_s=compile_s,
        search_s=search_s, steps=total, stopped_at_epoch=None, returned_epoch=None)
    print(f"seed {s}: {100 * summaries[s]['supernet_val_accuracy']:.2f}% supernet val accuracy; "
          f"genotype {genotype}", file=stdout)
  summary = summarize(summaries)
  summary.update(first_step_s=compile_s, search_s=search_s, steps=total)
  (root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
  (root / "summary.md").write_text(_markdown(summary))
  print(f"supernet validation accuracy {100 * summary['val_accuracy_mean']:.2f} ± "
        f"{100 * summary['val_accuracy_std']:.2f}% over {num_seeds} seeds; {search_s:.1f} s, "
        f"first step {compile_s:.1f} s; results in {root}", file=stdout, flush=True)
  return root
