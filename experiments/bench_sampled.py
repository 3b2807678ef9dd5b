"""One DARTS edge group: the full mixed ops against the sampled-operation path (issue 5, GDAS).

For ``DartsEdgeGroup`` (every op on every edge, ``full``), ``SampledEdgeGroup`` (only each edge's
sampled op, each edge rematerialised: the default, ``sampled``) and ``SampledEdgeGroup`` with
``remat_edges=False`` (``sampled-plain``: the switch residuals kept, the program before edge
rematerialisation), in train mode, reports for the forward pass alone and for forward + backward
(gradient in the weights and the mixing weights): XLA's flop count (``cost_analysis``) and temporary bytes
(``memory_analysis``) of the compiled program, which do not depend on the machine's load, the
compile time, and the median and min of ``--repeats`` timed runs.

  python experiments/bench_sampled.py --ops 4,5,6,3 --repeats 10 --out experiments/figures/bench_sampled.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxnas.spaces.darts import DartsEdgeGroup
from jaxnas.spaces.sampled import SampledEdgeGroup


def _programs(model, x, w, variables):
  params, stats = variables["params"], variables["batch_stats"]

  def fwd(params, stats, x, w):
    return model.apply({"params": params, "batch_stats": stats}, x, w, train=True,
                       mutable=["batch_stats"])

  def loss(params, w, stats, x):
    out, new = fwd(params, stats, x, w)
    return jnp.sum(out * out), new

  grad = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
  return {"forward": (jax.jit(fwd), (params, stats, x, w)),
          "forward+backward": (jax.jit(grad), (params, w, stats, x))}


def measure(name, model, x, w, variables, repeats):
  rows = []
  for kind, (fn, args) in _programs(model, x, w, variables).items():
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    mem = compiled.memory_analysis()
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      jax.block_until_ready(compiled(*args))
      times.append(time.perf_counter() - t0)
    row = dict(group=name, program=kind, gflop=cost.get("flops", float("nan")) / 1e9,
               temp_mib=mem.temp_size_in_bytes / 2**20, compile_s=compile_s,
               median_ms=1e3 * statistics.median(times), min_ms=1e3 * min(times), repeats=repeats)
    print(json.dumps(row), flush=True)
    rows.append(row)
  return rows


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--edges", type=int, default=4)
  p.add_argument("--channels", type=int, default=16)
  p.add_argument("--size", type=int, default=32)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--stride", type=int, default=1)
  p.add_argument("--ops", default="4,5,6,3", help="sampled op index per edge (DARTS_OPS order)")
  p.add_argument("--repeats", type=int, default=10)
  p.add_argument("--depthwise", default="lax", help="lax, taps or vjp (layers.depthwise_conv2d)")
  p.add_argument("--only", default="full,sampled,sampled-plain",
                 help="comma-separated groups: full, sampled, sampled-plain")
  p.add_argument("--out", default=None, help="append the rows to this JSONL file")
  a = p.parse_args()
  ops = [int(s) for s in a.ops.split(",")]
  assert len(ops) == a.edges, "one op per edge"
  x = jnp.asarray(np.random.default_rng(0).normal(size=(a.batch, a.size, a.size, a.channels)),
                  jnp.float32)
  w = jax.nn.one_hot(jnp.asarray(ops), 8, dtype=jnp.float32)
  models = {"full": DartsEdgeGroup(a.edges, a.channels, a.stride, a.depthwise),
            "sampled": SampledEdgeGroup(a.edges, a.channels, a.stride, a.depthwise),
            "sampled-plain": SampledEdgeGroup(a.edges, a.channels, a.stride, a.depthwise,
                                              remat_edges=False)}
  variables = models["full"].init(jax.random.key(0), x, w, train=False)
  rows = []
  for name, model in models.items():
    if name in a.only.split(","):
      rows += measure(name, model, x, w, variables, a.repeats)
  if a.out:
    with open(a.out, "a") as f:
      for r in rows:
        f.write(json.dumps({**r, "ops": ops, "batch": a.batch, "channels": a.channels,
                            "stride": a.stride, "edges": a.edges,
                            "depthwise": a.depthwise}) + "\n")


if __name__ == "__main__":
  main()
