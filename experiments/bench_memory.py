"""Peak memory of ONE jitted search step per method, from XLA's compiled memory analysis.

    python experiments/bench_memory.py                      # D2NAS Table 4: b64, C16, 8 cells, 32×32×3
    python experiments/bench_memory.py --batch 8 --channels 4 --cells 5 --size 16   # a quick check
    python experiments/bench_memory.py --entries darts-1st,darts-1st+cell --log LOG.jsonl

Each entry is a recipe name, optionally ``+cell`` or ``+op`` for ``--remat cell|op``, or, for the
sampled recipes (gdas, d2nas, proxylessnas), ``+plain`` for the sampled path without its per-edge
rematerialisation (``edge_remat=False``, the program before it; see
:mod:`jaxnas.spaces.sampled`): the default list is ``darts-1st``, ``darts-2nd-exact``,
``pc-darts``, ``darts-1st+cell``, ``darts-1st+op``, ``pc-darts+cell``, ``gdas``, ``gdas+plain``,
``gdas+cell``, ``d2nas``, ``drnas`` (a recipe that is not registered is skipped with a printed
note). Nothing is initialised or run: the step is lowered on
shapes (``jax.ShapeDtypeStruct``) and compiled, and ``compiled.memory_analysis()`` gives XLA's
buffer assignment: temp (intermediates), argument and output bytes, and the bytes that outputs
alias donated arguments (the search state is donated, so the new state reuses the old one's
buffers). ``peak = temp + argument + output − alias`` is what the step needs at once; the plain sum
``temp + argument + output`` is printed too, and XLA's flop count of the step
(``compiled.cost_analysis()["flops"]``), which shows what rematerialisation's recomputation costs.
On a GPU the step is also run once on zeros and the device's ``peak_bytes_in_use`` is reported.

The paper figures (D2NAS, Table 4, GPU memory at the same configuration) are printed beside ours:
DARTS 9.4 GB, GDAS 3.1 GB, PC-DARTS 3.7 GB, D2NAS 2.1 GB. They are PyTorch allocator peaks on a GPU,
ours are XLA's static buffer sizes (CPU or GPU): comparable in magnitude, not byte for byte.

``--lowered-only`` skips the compile (minutes per entry at this size on a busy CPU) and prints
the flop count of the lowered, unoptimised program (``lowered.cost_analysis()``), enough to
compare two programs' arithmetic. XLA counts a ``switch`` at its costliest branch, so a sampled
edge is counted as if it ran ``sep_conv_5x5`` whatever was sampled (an upper bound).

One JSON line per entry goes to ``--log`` (appended) as soon as it is measured, so a long run can be
read while it goes on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp

from jaxnas import methods, search, spaces

PAPER_GB = {"darts-1st": 9.4, "gdas": 3.1, "pc-darts": 3.7, "d2nas": 2.1}
DEFAULT_ENTRIES = ("darts-1st", "darts-2nd-exact", "pc-darts", "darts-1st+cell", "darts-1st+op",
                   "pc-darts+cell", "gdas", "gdas+plain", "gdas+cell", "d2nas", "drnas")
GB = 1e9


def parse_entry(entry: str):
  """``"recipe[+cell|+op|+plain]"`` as ``(recipe name, remat)`` (``"plain"`` kept as is)."""
  name, _, remat = entry.partition("+")
  return name, remat or "none"


def state_shapes(model, recipe, image_shape, *, steps_per_epoch, epochs):
  """The :class:`jaxnas.search.SearchState` as shapes only (nothing is initialised or compiled)."""
  key = jax.random.key(0)
  alphas = jax.eval_shape(model.init_alphas, key)
  mixing = jax.tree.map(lambda a: jnp.ones(a.shape, a.dtype), alphas)
  variables = jax.eval_shape(
      lambda: model.init(key, jnp.zeros((1,) + tuple(image_shape), model.dtype), mixing,
                         train=False))
  w_tx, a_tx, _ = search.make_optimizers(recipe.weight_optimizer, recipe.arch_optimizer,
                                         steps_per_epoch=steps_per_epoch, epochs=epochs)
  weights = variables["params"]
  return search.SearchState(
      weights=weights, batch_stats=variables.get("batch_stats", {}), alphas=alphas,
      w_opt_state=jax.eval_shape(w_tx.init, weights), a_opt_state=jax.eval_shape(a_tx.init, alphas),
      step=jax.ShapeDtypeStruct((), jnp.int32), key=jax.eval_shape(lambda: jax.random.key(0)))


def measure(entry: str, args) -> dict | None:
  """Compiles one search step for ``entry`` and returns its memory figures (None: not registered)."""
  name, remat = parse_entry(entry)
  if name not in methods.METHODS:
    print(f"note: {name} is not registered in jaxnas.methods; skipped", flush=True)
    return None
  recipe = methods.get(name)
  opts = dict(methods.options(recipe.space_options))
  if remat not in ("none", "plain"):
    opts["remat"] = remat
  model = spaces.get("darts", channels=args.channels, num_cells=args.cells, num_classes=10,
                     depthwise=args.depthwise, **opts)
  if remat == "plain":
    if not hasattr(model, "edge_remat"):
      print(f"note: {entry}: +plain is for the sampled recipes; skipped", flush=True)
      return None
    model = model.clone(edge_remat=False)
  image_shape = (args.size, args.size, 3)
  spe, epochs = 100, 50
  state = state_shapes(model, recipe, image_shape, steps_per_epoch=spe, epochs=epochs)
  batch = {"image": jax.ShapeDtypeStruct((args.batch,) + image_shape, jnp.float32),
           "label": jax.ShapeDtypeStruct((args.batch,), jnp.int32)}
  step = search.make_search_step(model, recipe, steps_per_epoch=spe, epochs=epochs)
  t0 = time.perf_counter()
  lowered = step.lower(state, batch, batch)
  t1 = time.perf_counter()
  if args.lowered_only:
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return {"entry": entry, "recipe": name, "remat": remat, "batch": args.batch,
            "channels": args.channels, "cells": args.cells, "size": args.size,
            "lowered_flops": (cost or {}).get("flops"), "trace_s": round(t1 - t0, 1)}
  compiled = lowered.compile()
  t2 = time.perf_counter()
  ma = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = (cost or {}).get("flops")
  temp, arg = ma.temp_size_in_bytes, ma.argument_size_in_bytes
  out, alias = ma.output_size_in_bytes, ma.alias_size_in_bytes
  row = {"entry": entry, "recipe": name, "remat": remat, "batch": args.batch,
         "channels": args.channels, "cells": args.cells, "size": args.size,
         "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
         "temp_bytes": temp, "argument_bytes": arg, "output_bytes": out, "alias_bytes": alias,
         "sum_bytes": temp + arg + out, "peak_bytes": temp + arg + out - alias, "flops": flops,
         "trace_s": round(t1 - t0, 1), "compile_s": round(t2 - t1, 1),
         "paper_gb": PAPER_GB.get(name) if remat == "none" else None}
  if jax.default_backend() == "gpu":
    zeros = lambda s: jnp.zeros(s.shape, s.dtype)  # noqa: E731
    real = jax.tree.map(zeros, state._replace(key=None))._replace(key=jax.random.key(0))
    real_batch = jax.tree.map(zeros, batch)
    new_state, _ = compiled(real, real_batch, real_batch)
    jax.block_until_ready(new_state)
    stats = jax.devices()[0].memory_stats() or {}
    row["device_peak_bytes"] = stats.get("peak_bytes_in_use")
  return row


def _gb(x):
  return "—" if x is None else f"{x / GB:.3f}"


def _gflop(x):
  return "—" if x is None else f"{x / 1e9:.1f}"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--channels", type=int, default=16)
  p.add_argument("--cells", type=int, default=8)
  p.add_argument("--size", type=int, default=32, help="image side (square, 3 channels)")
  p.add_argument("--depthwise", default="lax")
  p.add_argument("--entries", default=",".join(DEFAULT_ENTRIES),
                 help="comma-separated recipe[+cell|+op] list")
  p.add_argument("--log", default=None, help="append one JSON line per entry here")
  p.add_argument("--lowered-only", action="store_true",
                 help="no compile: only the flops of the lowered (unoptimised) program")
  args = p.parse_args(argv)
  print(f"one search step, DARTS space, batch {args.batch}, C={args.channels}, {args.cells} cells, "
        f"{args.size}×{args.size}×3, backend {jax.default_backend()}", flush=True)
  print("entry | peak GB (temp+arg+out−alias) | temp | arg | out | alias | device peak | paper GB | "
        "GFLOP | compile s", flush=True)
  for entry in args.entries.split(","):
    try:
      row = measure(entry.strip(), args)
    except Exception as e:  # report and go on to the next entry (e.g. out of memory)
      print(f"{entry}: failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)
      continue
    if row is None:
      continue
    if args.lowered_only:
      print(f"{row['entry']} | lowered GFLOP {_gflop(row['lowered_flops'])} | trace+lower "
            f"{row['trace_s']} s", flush=True)
      if args.log:
        with open(args.log, "a") as f:
          f.write(json.dumps(row) + "\n")
      continue
    print(f"{row['entry']} | {_gb(row['peak_bytes'])} | {_gb(row['temp_bytes'])} | "
          f"{_gb(row['argument_bytes'])} | {_gb(row['output_bytes'])} | "
          f"{_gb(row['alias_bytes'])} | {_gb(row.get('device_peak_bytes'))} | "
          f"{row['paper_gb'] or '—'} | {_gflop(row['flops'])} | {row['compile_s']}", flush=True)
    if args.log:
      with open(args.log, "a") as f:
        f.write(json.dumps(row) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
