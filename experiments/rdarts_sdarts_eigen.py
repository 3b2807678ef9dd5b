"""R-DARTS' and SDARTS' Hessian findings at the quick-start size, on digits, on a 2-core CPU.

(a) R-DARTS (Zela et al., ICLR 2020): under first-order DARTS the dominant eigenvalue of
    ∇²_α L_val grows during the search while skip connections take over the derived cell.
(b) SDARTS (Chen & Hsieh, ICML 2020): sdarts-rs and sdarts-adv keep that eigenvalue lower than
    darts-1st on the same data and seeds.

Each method searches NAS-Bench-201 at the ``jaxnas.run.SearchConfig`` defaults (C = 8, one cell per
stage, digits 8×8×1, batch 64, 30 epochs) with the seeds given; the loop is ``run_search``'s
(``init_search_state``, ``make_search_step``, ``data.search_batches``) without the run directory.
After every epoch (and before the first) it computes, on one fixed val batch (the first 64
search-val images) and in BN train mode as the architecture step sees the loss, every eigenvalue
of the full 30 × 30 Hessian of L_val(w, α) + ½·λ_α‖α‖² in α (``jaxnas.eigen.dense_eigenvalues``;
λ_α = 1e-3, the arch optimiser's L2, as in R-DARTS), derives the genotype (nb201-argmax) and
counts its skip_connect edges. It also replays DARTS-ES
(``jaxnas.stopping.rdarts_es``, eigenvalue every epoch) on each run's history.

    python experiments/rdarts_sdarts_eigen.py                      # the study (about 20 min)
    python experiments/rdarts_sdarts_eigen.py --seeds 0 --epochs 1 --json /tmp/probe.json \\
        --figures /tmp/probe                                       # a smoke run
    python experiments/rdarts_sdarts_eigen.py --plot-only          # redraw from the JSON
    python experiments/rdarts_sdarts_eigen.py --arch-lr 3e-3       # alphas free to move 10× faster

Writes every number to experiments/figures/rdarts_sdarts_eigen.json (after each run, so a partial
study survives) and draws rdarts_sdarts_eigen.png (λ_max per epoch, mean and min–max over seeds)
and rdarts_sdarts_skips.png (skip_connect edges in the derived cell, and the mean skip_connect
mixing weight, per epoch).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
FIGURES = HERE / "figures"
VAL_BATCH = 64


def _recipes(names, arch_lr=None):
  import dataclasses
  from jaxnas import methods
  out = []
  for name in names:
    if name in methods.METHODS:
      recipe = methods.METHODS[name]
    elif name == "sdarts-rs":
      recipe = methods.METHODS["darts-1st"].replace(name="sdarts-rs",
                                                    perturbation="random-smoothing")
    else:
      print(f"skipping {name!r}: not registered in jaxnas.methods.METHODS", flush=True)
      continue
    if arch_lr is not None:
      recipe = recipe.replace(arch_optimizer=dataclasses.replace(recipe.arch_optimizer,
                                                                 lr=arch_lr))
    out.append(recipe)
  return out


def _eigen_fn(model, weight_decay: float):
  """jit(weights, batch_stats, alphas, batch) -> (ascending Hessian eigenvalues, loss, accuracy)."""
  import jax
  import jax.numpy as jnp
  from jaxnas import eigen, relax, search

  @jax.jit
  def fn(weights, batch_stats, alphas, batch):
    loss = search.make_losses(model, relax.softmax, batch_stats)

    def objective(a):
      value = loss(weights, a, batch, None)[0]
      l2 = sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(a))
      return value + jnp.asarray(0.5 * weight_decay, value.dtype) * l2

    value, aux = loss(weights, alphas, batch, None)
    return eigen.dense_eigenvalues(objective, alphas), value, aux["accuracy"]
  return fn


def _snapshot(model, eigen_fn, state, val_batch, epoch, t0):
  import jax
  from jaxnas import derive, relax, stopping
  eigs, loss, acc = jax.device_get(eigen_fn(state.weights, state.batch_stats, state.alphas,
                                             val_batch))
  mixing = {k: np.asarray(v) for k, v in jax.device_get(relax.softmax(state.alphas)).items()}
  genotype = derive.derive(model.default_rule, mixing, model.op_names)
  skip = list(model.op_names).index("skip_connect")
  return {"epoch": epoch, "lambda_max": float(eigs[-1]), "lambda_min": float(eigs[0]),
          "eigenvalues": [float(e) for e in eigs],
          "skips": stopping.count_ops(genotype.normal, "skip_connect"),
          "skip_weight": float(mixing["cell"][:, skip].mean()),
          "arch": derive.nb201_arch_string(genotype), "fixed_val_loss": float(loss),
          "fixed_val_accuracy": float(acc), "time_s": round(time.perf_counter() - t0, 1)}


def _replay_darts_es(epochs):
  """DARTS-ES on the run's eigenvalue history: (epoch it fires at, epoch it returns) or None."""
  from jaxnas import stopping
  history = []
  for e in epochs:
    if e["epoch"] == 0:
      continue
    history.append(stopping.EpochRecord(epoch=e["epoch"], genotype=None, mixing={},
                                        metrics={"hessian_eigenvalue": e["lambda_max"]}))
    answer = stopping.rdarts_es(None, tuple(history))
    if answer is not False:
      return [e["epoch"], answer]
  return None


def study(method_names, seeds, epochs, json_path, arch_lr=None):
  import jax
  from jaxnas import data, run, search, spaces

  cfg = run.SearchConfig(epochs=epochs).resolved()
  dataset = data.load(cfg.dataset)
  model = spaces.get(cfg.space, **run.space_config(cfg, dataset.num_classes))
  spe = data.steps_per_epoch(len(dataset.train_x), cfg.batch_size)
  total = cfg.epochs * spe
  val_batch = {"image": dataset.val_x[:VAL_BATCH], "label": dataset.val_y[:VAL_BATCH]}
  print(f"{cfg.space} C={cfg.channels} cells={cfg.cells} on {dataset.name}: {cfg.epochs} epochs of "
        f"{spe} steps at batch {cfg.batch_size}; seeds {seeds}; jax {jax.__version__} on "
        f"{jax.devices()[0].platform}", flush=True)
  results = {"config": {"space": cfg.space, "channels": cfg.channels, "cells": cfg.cells,
                        "dataset": dataset.name, "batch_size": cfg.batch_size,
                        "epochs": cfg.epochs, "steps_per_epoch": spe, "seeds": list(seeds),
                        "val_batch": VAL_BATCH, "hessian": "dense, L_val + 0.5*1e-3*|alpha|^2",
                        "device": jax.devices()[0].platform, "arch_lr": arch_lr},
             "runs": {}}
  eigen_fns = {}
  t_study = time.perf_counter()
  for recipe in _recipes(method_names, arch_lr):
    decay = recipe.arch_optimizer.weight_decay
    if decay not in eigen_fns:
      eigen_fns[decay] = _eigen_fn(model, decay)
    eigen_fn = eigen_fns[decay]
    step_fn = search.make_search_step(model, recipe, steps_per_epoch=spe, epochs=cfg.epochs)
    results["runs"][recipe.name] = {}
    for seed in seeds:
      t0 = time.perf_counter()
      state = search.init_search_state(model, recipe, jax.random.key(seed), dataset.image_shape,
                                       steps_per_epoch=spe, epochs=cfg.epochs)
      epochs_out = [_snapshot(model, eigen_fn, state, val_batch, 0, t0)]
      for i in range(total):
        train_batch, val_b = data.search_batches(dataset, cfg.batch_size, seed=seed, step=i)
        state, metrics = step_fn(state, train_batch, val_b)
        if (i + 1) % spe == 0:
          snap = _snapshot(model, eigen_fn, state, val_batch, (i + 1) // spe, t0)
          m = jax.device_get(metrics)
          snap.update(train_loss=float(m["train_loss"]), val_loss=float(m["val_loss"]))
          epochs_out.append(snap)
          print(f"{recipe.name} seed {seed} epoch {snap['epoch']:2d}: λmax "
                f"{snap['lambda_max']:8.4f} λmin {snap['lambda_min']:8.4f} skips {snap['skips']} "
                f"w_skip {snap['skip_weight']:.4f} {snap['arch']} acc "
                f"{snap['fixed_val_accuracy']:.3f} ({snap['time_s']:.0f} s)", flush=True)
          if not all(math.isfinite(snap[k]) for k in ("lambda_max", "train_loss")):
            raise SystemExit(f"{recipe.name} seed {seed}: non-finite numbers at epoch "
                             f"{snap['epoch']}")
      results["runs"][recipe.name][str(seed)] = {
          "epochs": epochs_out, "darts_es": _replay_darts_es(epochs_out),
          "wall_s": round(time.perf_counter() - t0, 1)}
      results["study_wall_s"] = round(time.perf_counter() - t_study, 1)
      json_path.parent.mkdir(parents=True, exist_ok=True)
      json_path.write_text(json.dumps(results, indent=1) + "\n")
      print(f"{recipe.name} seed {seed}: {time.perf_counter() - t0:.0f} s; DARTS-ES replay "
            f"{results['runs'][recipe.name][str(seed)]['darts_es']}", flush=True)
  return results


def _series(runs, key):
  """(epochs, array seeds × epochs) of ``key`` over one method's runs."""
  per_seed = [[e[key] for e in r["epochs"]] for r in runs.values()]
  n = min(len(s) for s in per_seed)
  epochs = [e["epoch"] for e in next(iter(runs.values()))["epochs"]][:n]
  return np.asarray(epochs), np.asarray([s[:n] for s in per_seed], float)


def plot(results, figures: pathlib.Path, tag: str = ""):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  figures.mkdir(parents=True, exist_ok=True)
  cfg = results["config"]
  title = (f"NB201 C={cfg['channels']}, {cfg['cells']} cell/stage, {cfg['dataset']}, "
           f"seeds {cfg['seeds']}")
  if cfg.get("arch_lr") is not None:
    title += f", arch lr {cfg['arch_lr']:g} (default 3e-4)"

  fig, ax = plt.subplots(figsize=(7, 4.2))
  for name, runs in results["runs"].items():
    epochs, lam = _series(runs, "lambda_max")
    line, = ax.plot(epochs, lam.mean(0), marker="o", ms=3, label=f"{name} (mean)")
    ax.fill_between(epochs, lam.min(0), lam.max(0), color=line.get_color(), alpha=0.2)
  ax.set_xlabel("epoch")
  ax.set_ylabel(r"$\lambda_{max}(\nabla^2_\alpha L_{val})$")
  ax.set_title(f"Dominant Hessian eigenvalue (band: min–max over seeds)\n{title}", fontsize=9)
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(figures / f"rdarts_sdarts_eigen{tag}.png", dpi=120)
  plt.close(fig)

  fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
  for name, runs in results["runs"].items():
    epochs, skips = _series(runs, "skips")
    line, = a1.plot(epochs, skips.mean(0), marker="o", ms=3, label=name)
    a1.fill_between(epochs, skips.min(0), skips.max(0), color=line.get_color(), alpha=0.15)
    epochs, w = _series(runs, "skip_weight")
    a2.plot(epochs, w.mean(0), color=line.get_color(), label=name)
    a2.fill_between(epochs, w.min(0), w.max(0), color=line.get_color(), alpha=0.15)
  a1.set_xlabel("epoch")
  a1.set_ylabel("skip_connect edges in the derived cell (of 6)", fontsize=9)
  a1.set_ylim(-0.2, 6.2)
  a2.set_xlabel("epoch")
  a2.set_ylabel("mean skip_connect softmax weight (uniform: 0.2)", fontsize=9)
  for a in (a1, a2):
    a.grid(alpha=0.3)
    a.legend(fontsize=8)
  fig.suptitle(f"Skip connections (mean, band min–max over seeds)\n{title}", fontsize=9)
  fig.tight_layout(rect=(0, 0, 1, 0.93))
  fig.savefig(figures / f"rdarts_sdarts_skips{tag}.png", dpi=120)
  plt.close(fig)


def table(results) -> str:
  """Markdown: mean λ_max and mean skip count per epoch per method."""
  names = list(results["runs"])
  cols = {n: (_series(results["runs"][n], "lambda_max"), _series(results["runs"][n], "skips"))
          for n in names}
  n_epochs = min(len(c[0][0]) for c in cols.values())
  head = "| epoch | " + " | ".join(f"{n} λmax (mean ± sd) | {n} skips" for n in names) + " |"
  rows = [head, "|" + "---|" * (1 + 2 * len(names))]
  for i in range(n_epochs):
    cells = []
    for n in names:
      (ep, lam), (_, sk) = cols[n]
      cells += [f"{lam[:, i].mean():.4f} ± {lam[:, i].std():.4f}", f"{sk[:, i].mean():.2f}"]
    rows.append(f"| {cols[names[0]][0][0][i]} | " + " | ".join(cells) + " |")
  return "\n".join(rows)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--methods", nargs="+", default=["darts-1st", "sdarts-rs", "sdarts-adv"])
  p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
  p.add_argument("--epochs", type=int, default=None, help="default: SearchConfig's (30)")
  p.add_argument("--arch-lr", type=float, default=None,
                 help="the architecture optimiser's learning rate (default: the recipe's, 3e-4)")
  p.add_argument("--json", type=pathlib.Path, default=None,
                 help="default: experiments/figures/rdarts_sdarts_eigen[_archlr<lr>].json")
  p.add_argument("--figures", type=pathlib.Path, default=FIGURES)
  p.add_argument("--plot-only", action="store_true")
  args = p.parse_args(argv)
  tag = "" if args.arch_lr is None else f"_archlr{args.arch_lr:g}"
  json_path = args.json or FIGURES / f"rdarts_sdarts_eigen{tag}.json"
  if args.plot_only:
    results = json.loads(json_path.read_text())
  else:
    results = study(args.methods, args.seeds, args.epochs, json_path, args.arch_lr)
  plot(results, args.figures, tag)
  print(table(results))
  for name, runs in results["runs"].items():
    replay = [r["darts_es"] for r in runs.values()]
    print(f"{name}: DARTS-ES replay (fires at, returns) per seed: {replay}; wall s "
          f"{[r['wall_s'] for r in runs.values()]}")


if __name__ == "__main__":
  sys.exit(main())
