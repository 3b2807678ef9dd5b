"""Compile time of the first-order DARTS search step for the DARTS space, sizes from the command line.

    python experiments/bench_darts_compile.py C L BATCH SIDE [depthwise] [fused|plain]

XLA flags to compare go in XLA_FLAGS (e.g. --xla_cpu_use_thunk_runtime=false).

Prints trace, backend compile and one warm step, and how many conditionals the compiled HLO holds.
"""
import sys
import time

import jax
import numpy as np

from jaxnas import methods, search, spaces


def main():
  c, cells, b, side = (int(v) for v in sys.argv[1:5])
  dw = sys.argv[5] if len(sys.argv) > 5 else "lax"
  fused = (sys.argv[6] if len(sys.argv) > 6 else "fused") == "fused"
  model = spaces.get("darts", channels=c, num_cells=cells, num_classes=10, depthwise=dw)
  recipe = methods.get("darts-1st")
  shape = (side, side, 3)
  state = search.init_search_state(model, recipe, jax.random.key(0), shape, steps_per_epoch=100,
                                   epochs=50)
  rng = np.random.default_rng(0)
  def batch():
    return {"image": rng.standard_normal((b,) + shape).astype(np.float32),
            "label": rng.integers(0, 10, b).astype(np.int32)}
  step = search.make_search_step(model, recipe, steps_per_epoch=100, epochs=50, fuse_phases=fused)
  tb, vb = batch(), batch()
  t = time.perf_counter()
  lowered = step.lower(state, tb, vb)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  print(f"step C={c} L={cells} b={b} side={side} dw={dw} {'fused' if fused else 'plain'} trace {t1 - t:.1f} "
        f"compile {t2 - t1:.1f} conditionals {compiled.as_text().count('conditional(')}", flush=True)
  state, _ = compiled(state, tb, vb)
  jax.block_until_ready(state)
  t = time.perf_counter()
  state, m = compiled(state, tb, vb)
  jax.block_until_ready(state)
  print(f"run {time.perf_counter() - t:.2f} s loss {float(m['train_loss']):.4f}", flush=True)


if __name__ == "__main__":
  main()
