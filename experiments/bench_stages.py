"""Memory of one jitted search step for DrNAS' two stages and for D2NAS with and without branch cells.

    python experiments/bench_stages.py                       # batch 16, C 12, 5 cells, 16×16×3
    python experiments/bench_stages.py --entries d2nas,d2nas-branch --batch 64 --channels 16 \\
        --cells 8 --size 32                                  # D2NAS Table 4's configuration

Entries: a recipe name, or ``drnas-progressive:N`` for stage N of the staged recipe (its supernet:
partial channels 6, then 4). As ``experiments/bench_memory.py``, nothing is initialised or run: the
step is lowered on shapes and compiled, and XLA's ``memory_analysis()`` gives temp, argument, output
and alias bytes (``peak = temp + argument + output − alias``), ``cost_analysis()`` the flops. Unlike
it, the weight optimiser's state is built with the space's ``frozen_weights`` (D2NAS' branch cells),
and the weights are counted as trained and frozen.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import jax
import jax.numpy as jnp

from jaxnas import methods, progressive, search, spaces

DEFAULT_ENTRIES = ("d2nas", "d2nas-branch", "drnas-progressive:1", "drnas-progressive:2")


def build(entry: str, args):
  """``(model, recipe)`` for an entry (a stage's supernet for ``recipe:N``)."""
  name, _, stage = entry.partition(":")
  recipe = methods.get(name)
  opts = dict(methods.options(recipe.space_options))
  if stage:
    for s in progressive.check_stages(recipe.stages, recipe.space_options)[:int(stage)]:
      opts.update(s["space_options"])
  model = spaces.get("darts", channels=args.channels, num_cells=args.cells, num_classes=10,
                     depthwise=args.depthwise, **opts)
  return model, recipe


def measure(entry: str, args) -> dict:
  model, recipe = build(entry, args)
  image_shape = (args.size, args.size, 3)
  key = jax.random.key(0)
  alphas = jax.eval_shape(model.init_alphas, key)
  mixing = jax.tree.map(lambda a: jnp.ones(a.shape, a.dtype), alphas)
  variables = jax.eval_shape(lambda: model.init(key, jnp.zeros((1,) + image_shape), mixing,
                                                train=False))
  frozen = getattr(model, "frozen_weights", None)
  spe, epochs = 100, 50
  w_tx, a_tx, _ = search.make_optimizers(recipe.weight_optimizer, recipe.arch_optimizer,
                                         steps_per_epoch=spe, epochs=epochs, frozen=frozen)
  weights = variables["params"]
  state = search.SearchState(
      weights=weights, batch_stats=variables.get("batch_stats", {}), alphas=alphas,
      w_opt_state=jax.eval_shape(w_tx.init, weights), a_opt_state=jax.eval_shape(a_tx.init, alphas),
      step=jax.ShapeDtypeStruct((), jnp.int32), key=jax.eval_shape(lambda: jax.random.key(0)))
  batch = {"image": jax.ShapeDtypeStruct((args.batch,) + image_shape, jnp.float32),
           "label": jax.ShapeDtypeStruct((args.batch,), jnp.int32)}
  step = search.make_search_step(model, recipe, steps_per_epoch=spe, epochs=epochs)
  t0 = time.perf_counter()
  compiled = step.lower(state, batch, batch).compile()
  compile_s = time.perf_counter() - t0
  ma = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  marks = jax.tree.leaves(frozen(weights)) if frozen else [False] * len(jax.tree.leaves(weights))
  sizes = [math.prod(w.shape) for w in jax.tree.leaves(weights)]
  temp, arg, out, alias = (ma.temp_size_in_bytes, ma.argument_size_in_bytes,
                           ma.output_size_in_bytes, ma.alias_size_in_bytes)
  return {"entry": entry, "batch": args.batch, "channels": args.channels, "cells": args.cells,
          "size": args.size, "weights_trained": sum(s for s, f in zip(sizes, marks) if not f),
          "weights_frozen": sum(s for s, f in zip(sizes, marks) if f),
          "temp_bytes": temp, "argument_bytes": arg, "output_bytes": out, "alias_bytes": alias,
          "peak_bytes": temp + arg + out - alias, "flops": (cost or {}).get("flops"),
          "compile_s": round(compile_s, 1)}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--channels", type=int, default=12)
  p.add_argument("--cells", type=int, default=5)
  p.add_argument("--size", type=int, default=16)
  p.add_argument("--depthwise", default="lax")
  p.add_argument("--entries", default=",".join(DEFAULT_ENTRIES))
  args = p.parse_args(argv)
  print("| entry | weights trained / frozen | peak MB | temp MB | GFLOP | compile s |")
  print("|---|---|---|---|---|---|")
  for entry in args.entries.split(","):
    row = measure(entry, args)
    print(json.dumps(row), flush=True)
    print(f"| {entry} | {row['weights_trained']:,} / {row['weights_frozen']:,} | "
          f"{row['peak_bytes'] / 1e6:.1f} | {row['temp_bytes'] / 1e6:.1f} | "
          f"{(row['flops'] or 0) / 1e9:.2f} | {row['compile_s']} |", flush=True)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
