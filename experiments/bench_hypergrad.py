"""Cost of the second-order search steps against the first-order one, side by side in one run.

    python experiments/bench_hypergrad.py [--space darts] [--channels C] [--cells L] [--batch B]
                                          [--side S] [--repeats N] [--methods ...]

For each method (default darts-1st, darts-2nd, darts-2nd-exact) it builds the jitted search step
of ``jaxnas.search.make_search_step`` on the same supernet, state and batches, and reports trace
and compile time and the warm step time (median and min/max over ``--repeats`` calls, compilation
excluded), then the ratios to the first-order step. The target (issue 3): darts-2nd-exact at most
1.8x darts-1st and no slower than darts-2nd.

Pass counts (one forward + backward of the supernet = 1): darts-1st = 2 (val grad for alpha,
train grad for w). darts-2nd = 5 (inner train grad, val grad at w', two train alpha-grads at
w +- R v, weight grad). darts-2nd-exact = 4 plus a jvp of the alpha-gradient (forward-over-reverse,
about 1.5-2 passes) = 5.5-6. These set the floor of the ratios: about 2.5x for both.

The default size is small enough to compile on a 2-core CPU (the full DARTS supernet, C = 16 and
8 cells, does not compile there; see RESULTS.md); on a GPU pass --channels 16 --cells 5 or more.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

# XLA:GPU's Triton GEMM fusion aborts on the DARTS supernet (jax 0.11.2, H200); see jaxnas.cli.
if "xla_gpu_enable_triton_gemm" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_gpu_enable_triton_gemm=false").strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxnas import methods, search, spaces  # noqa: E402


def _batch(rng, b, shape):
  return {"image": rng.standard_normal((b,) + shape).astype(np.float32),
          "label": rng.integers(0, 10, b).astype(np.int32)}


def bench(method, model, shape, batches, repeats):
  recipe = methods.get(method)
  state = search.init_search_state(model, recipe, jax.random.key(0), shape, steps_per_epoch=100,
                                   epochs=50)
  step = search.make_search_step(model, recipe, steps_per_epoch=100, epochs=50)
  tb, vb = batches
  t0 = time.perf_counter()
  lowered = step.lower(state, tb, vb)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  state, m = compiled(state, tb, vb)  # first call: allocation, warm-up
  jax.block_until_ready(state)
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    state, m = compiled(state, tb, vb)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - t)
  return {"method": method, "trace_s": t1 - t0, "compile_s": t2 - t1,
          "step_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
          "hvp_passes": int(m["hvp_passes"]), "loss": float(m["train_loss"])}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--space", default="darts")
  p.add_argument("--channels", type=int, default=4)
  p.add_argument("--cells", type=int, default=2)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--side", type=int, default=16)
  p.add_argument("--repeats", type=int, default=10)
  p.add_argument("--methods", nargs="+", default=["darts-1st", "darts-2nd", "darts-2nd-exact"])
  args = p.parse_args()
  cfg = ({"channels": args.channels, "num_cells": args.cells} if args.space == "darts"
         else {"channels": args.channels, "cells_per_stage": args.cells})
  model = spaces.get(args.space, num_classes=10, **cfg)
  shape = (args.side, args.side, 3)
  rng = np.random.default_rng(0)
  batches = (_batch(rng, args.batch, shape), _batch(rng, args.batch, shape))
  print(f"{args.space} C={args.channels} cells={args.cells} batch={args.batch} "
        f"{args.side}x{args.side}x3 on {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"{args.repeats} warm steps each", flush=True)
  rows = []
  for method in args.methods:
    r = bench(method, model, shape, batches, args.repeats)
    rows.append(r)
    print(f"  {method:<16} trace {r['trace_s']:6.1f} s  compile {r['compile_s']:6.1f} s  "
          f"step {1e3 * r['step_s']:8.1f} ms (min {1e3 * r['min_s']:.1f}, max "
          f"{1e3 * r['max_s']:.1f})  hvp_passes {r['hvp_passes']}", flush=True)
  base = rows[0]
  print(f"ratios to {base['method']} (warm step, median):")
  for r in rows[1:]:
    print(f"  {r['method']:<16} {r['step_s'] / base['step_s']:.2f}x step, "
          f"{r['compile_s'] / base['compile_s']:.2f}x compile")
  by = {r["method"]: r for r in rows}
  if "darts-2nd" in by and "darts-2nd-exact" in by:
    print(f"  darts-2nd-exact / darts-2nd: "
          f"{by['darts-2nd-exact']['step_s'] / by['darts-2nd']['step_s']:.2f}x step")


if __name__ == "__main__":
  main()
