"""Trace, compile and step times of the jitted search step, for both spaces and both orders.

Each configuration runs in a fresh Python process (no warm caches, persistent cache off), so the
figures are what a user meets on a first run. Prints one line per configuration and a table.

    python experiments/bench_compile.py                      # the issue's targets
    python experiments/bench_compile.py --configs quick      # only the quick start
    python experiments/bench_compile.py --opt-levels 0 3     # XLA:CPU optimisation levels

Configurations (name: space, channels, cells, batch, image side):
  quick:      nb201, C=8,  1 cell/stage, batch 64, 8×8×1 (the `jaxnas search` default)
  nb201-c8n5: nb201, C=8,  5 cells/stage, batch 64, 8×8×1
  darts-c16:  darts, C=16, 8 cells, batch 64, 32×32×3 (the DARTS CIFAR-10 search network)
  darts-c4:   darts, C=4,  5 cells, batch 64, 8×8×1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CONFIGS = {
    "quick": dict(space="nb201", channels=8, cells=1, batch=64, side=8, in_ch=1),
    "nb201-c8n5": dict(space="nb201", channels=8, cells=5, batch=64, side=8, in_ch=1),
    "darts-c16": dict(space="darts", channels=16, cells=8, batch=64, side=32, in_ch=3),
    "darts-c4": dict(space="darts", channels=4, cells=5, batch=64, side=8, in_ch=1),
}
ESTIMATORS = {"1st": "first_order", "2nd": "unrolled_hvp"}


def _child(cfg: dict, order: str, opt_level: int | None, depthwise: str, steps: int) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jaxnas import methods, search, spaces

  space_cfg = dict(channels=cfg["channels"], num_classes=10)
  if cfg["space"] == "nb201":
    space_cfg["cells_per_stage"] = cfg["cells"]
  else:
    space_cfg.update(num_cells=cfg["cells"], depthwise=depthwise)
  model = spaces.get(cfg["space"], **space_cfg)
  recipe = methods.get("darts-1st").replace(estimator=ESTIMATORS[order])
  shape = (cfg["side"], cfg["side"], cfg["in_ch"])
  t = time.perf_counter()
  state = search.init_search_state(model, recipe, jax.random.key(0), shape, steps_per_epoch=100,
                                   epochs=50)
  jax.block_until_ready(state)
  init_s = time.perf_counter() - t
  rng = np.random.default_rng(0)
  def batch():
    return {"image": rng.standard_normal((cfg["batch"],) + shape).astype(np.float32),
            "label": rng.integers(0, 10, cfg["batch"]).astype(np.int32)}
  step = search.make_search_step(model, recipe, steps_per_epoch=100, epochs=50)
  tb, vb = batch(), batch()
  t = time.perf_counter()
  lowered = step.lower(state, tb, vb)
  trace_s = time.perf_counter() - t
  t = time.perf_counter()
  options = None if opt_level is None else {"xla_backend_optimization_level": opt_level}
  compiled = lowered.compile(options)
  compile_s = time.perf_counter() - t
  state, m = compiled(state, tb, vb)
  jax.block_until_ready(state)
  times = []
  for _ in range(steps):
    tb, vb = batch(), batch()
    t = time.perf_counter()
    state, m = compiled(state, tb, vb)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - t)
  mem = compiled.memory_analysis()
  temp = getattr(mem, "temp_size_in_bytes", None) if mem is not None else None
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return dict(device=str(jax.devices()[0].device_kind), init_s=init_s, trace_s=trace_s, compile_s=compile_s,
              step_ms=1000 * float(np.median(times)),
              step_ms_spread=1000 * float(np.max(times) - np.min(times)),
              temp_mib=None if temp is None else temp / 2**20,
              device_peak_mib=None if peak is None else peak / 2**20,
              train_loss=float(m["train_loss"]))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--configs", nargs="+", default=["quick", "nb201-c8n5", "darts-c16"],
                 choices=sorted(CONFIGS))
  p.add_argument("--orders", nargs="+", default=["1st", "2nd"], choices=["1st", "2nd"])
  p.add_argument("--opt-levels", nargs="+", type=int, default=[None])
  p.add_argument("--depthwise", nargs="+", default=["lax"], choices=["lax", "taps"])
  p.add_argument("--steps", type=int, default=5, help="warm steps timed after the first")
  p.add_argument("--timeout", type=float, default=1800.0)
  p.add_argument("--child", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.child:
    spec = json.loads(args.child)
    print(json.dumps(_child(CONFIGS[spec["config"]], spec["order"], spec["opt_level"],
                            spec["depthwise"], spec["steps"])))
    return
  rows = []
  for name in args.configs:
    for order in args.orders:
      for level in args.opt_levels:
        for dw in (args.depthwise if CONFIGS[name]["space"] == "darts" else ["-"]):
          spec = dict(config=name, order=order, opt_level=level, depthwise=dw, steps=args.steps)
          env = dict(os.environ, JAX_ENABLE_COMPILATION_CACHE="false")
          t = time.perf_counter()
          try:
            out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                                 capture_output=True, text=True, timeout=args.timeout, env=env)
            res = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else {
                "error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
          except subprocess.TimeoutExpired:
            res = {"error": f"timed out after {args.timeout:.0f} s"}
          res.update(spec, wall_s=time.perf_counter() - t)
          rows.append(res)
          print(json.dumps(res), flush=True)
  print()
  print(f"{'config':<11} {'order':<5} {'opt':<4} {'dw':<5} {'init s':>7} {'trace s':>8} "
        f"{'compile s':>10} {'step ms':>9} {'temp MiB':>9}")
  for r in rows:
    if "error" in r:
      print(f"{r['config']:<11} {r['order']:<5} {str(r['opt_level']):<4} {r['depthwise']:<5} "
            f"error: {r['error']}")
      continue
    print(f"{r['config']:<11} {r['order']:<5} {str(r['opt_level']):<4} {r['depthwise']:<5} "
          f"{r['init_s']:>7.1f} {r['trace_s']:>8.1f} {r['compile_s']:>10.1f} {r['step_ms']:>9.1f} "
          f"{(r['temp_mib'] or 0):>9.1f}")


if __name__ == "__main__":
  main()
