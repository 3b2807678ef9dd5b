"""Micro-benchmarks for the DARTS supernet's building blocks on XLA:CPU (compile and fwd+bwd time).

    python experiments/bench_depthwise.py cell --impls lax taps vjp     # one DARTS cell, C=16, b64
    python experiments/bench_depthwise.py conv --impls taps vjp         # one depthwise conv
    python experiments/bench_depthwise.py step --impls vjp --reps 2     # bench_compile's darts-c16

Each variant is compiled in this process; timings interleave the variants (the machine is shared,
so compare variants within one run). Reports compile seconds and the median/min of fwd+bwd.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np


def _time(fns, args, reps):
  ts = {n: [] for n in fns}
  for _ in range(reps):
    for n, c in fns.items():
      t = time.perf_counter()
      jax.block_until_ready(c(*args[n]))
      ts[n].append(time.perf_counter() - t)
  return ts


def bench_cell(impls, batch, channels, side, reps, reduction=False, variants=None):
  from jaxnas.spaces.darts import DartsCell
  rng = np.random.default_rng(0)
  cin = 4 * channels
  s0 = jnp.asarray(rng.standard_normal((batch, side, side, cin)), jnp.float32)
  s1 = jnp.asarray(rng.standard_normal((batch, side, side, cin)), jnp.float32)
  w = jax.nn.softmax(jnp.asarray(rng.standard_normal((14, 8)), jnp.float32))
  fns, args, outs = {}, {}, {}
  for impl in impls:
    cell = DartsCell(2 * channels if reduction else channels, reduction, False, impl)
    variables = cell.init(jax.random.key(0), s0[:1], s1[:1], w, train=False)

    def loss(params, w, s0, s1, cell=cell, stats=variables["batch_stats"]):
      out, _ = cell.apply({"params": params, "batch_stats": stats}, s0, s1, w, train=True,
                          mutable=["batch_stats"])
      return jnp.sum(out * out)

    f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))
    t = time.perf_counter()
    lowered = f.lower(variables["params"], w, s0, s1)
    trace = time.perf_counter() - t
    t = time.perf_counter()
    fns[impl] = lowered.compile()
    comp = time.perf_counter() - t
    args[impl] = (variables["params"], w, s0, s1)
    outs[impl] = fns[impl](*args[impl])
    print(f"{impl:8s} trace {trace:6.1f} s compile {comp:6.1f} s", flush=True)
  ts = _time(fns, args, reps)
  ref = outs[impls[0]]
  for n in impls:
    err = max(float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))
              for a, b in zip(jax.tree.leaves(outs[n]), jax.tree.leaves(ref)))
    print(f"{n:8s} fwd+bwd median {1000 * np.median(ts[n]):8.1f} ms  min {1000 * min(ts[n]):8.1f} ms"
          f"  max rel err vs {impls[0]} {err:.1e}", flush=True)


def bench_conv(impls, batch, channels, side, reps):
  from jaxnas.spaces.layers import DEPTHWISE_IMPLS
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((batch, side, side, channels)), jnp.float32)
  for (k, s, p, d) in [(3, 1, 1, 1), (5, 1, 2, 1), (3, 1, 2, 2), (5, 1, 4, 2), (3, 2, 1, 1),
                       (5, 2, 4, 2)]:
    kern = jnp.asarray(rng.standard_normal((k, k, channels)), jnp.float32)
    ho = (side + 2 * p - d * (k - 1) - 1) // s + 1
    ct = jnp.asarray(rng.standard_normal((batch, ho, ho, channels)), jnp.float32)
    fns, args, outs, comp = {}, {}, {}, {}
    for name in impls:
      f = DEPTHWISE_IMPLS[name]
      g = jax.jit(jax.grad(lambda x, kk, ct, f=f: jnp.sum(f(x, kk, s, p, d) * ct), argnums=(0, 1)))
      t = time.perf_counter()
      fns[name] = g.lower(x, kern, ct).compile()
      comp[name] = time.perf_counter() - t
      args[name] = (x, kern, ct)
      outs[name] = fns[name](x, kern, ct)
    ts = _time(fns, args, reps)
    for n in impls:
      err = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
                for a, b in zip(outs[n], outs[impls[0]]))
      print(f"k{k} s{s} d{d} {n:6s} compile {comp[n]:5.2f} s  fwd+bwd median "
            f"{1000 * np.median(ts[n]):7.1f} ms min {1000 * min(ts[n]):7.1f}  rel err {err:.1e}",
            flush=True)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("what", choices=["cell", "conv", "step"])
  p.add_argument("--impls", nargs="+", default=["lax", "taps"])
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--channels", type=int, default=16)
  p.add_argument("--side", type=int, default=32)
  p.add_argument("--reps", type=int, default=5)
  p.add_argument("--reduction", action="store_true")
  a = p.parse_args()
  if a.what == "step":  # the whole search step as bench_compile's darts-c16 (any impl here)
    import json
    import os
    import sys
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_compile
    for impl in a.impls:
      print(json.dumps(dict(impl=impl, **bench_compile._child(bench_compile.CONFIGS["darts-c16"],
                                                             "1st", None, impl, a.reps))),
            flush=True)
  elif a.what == "cell":
    bench_cell(a.impls, a.batch, a.channels, a.side, a.reps, a.reduction)
  else:
    bench_conv(a.impls, a.batch, a.channels, a.side, a.reps)


if __name__ == "__main__":
  main()
