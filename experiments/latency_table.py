"""Measure each candidate operation's cost on this machine: the op-cost table of ProxylessNAS / SNAS.

For every operation of the DARTS space (on a normal-cell edge: stride 1 at C channels; on a
reduction edge: stride 2 at 2C channels) and of NAS-Bench-201 (C channels), at batch B and H×W
inputs, it records

- ``latency_ms``: the median wall time of the jitted forward pass (train-mode batch norm), over
  ``--repeats`` runs after one warm-up, on the default JAX device;
- ``flops``: the floating-point operations XLA's cost analysis counts for the same program.

and writes them as JSON (``--out``, default ``experiments/op_costs.json``). The regularisers
``expected-latency`` and ``expected-flops`` (:mod:`jaxnas.sampling`) read the table packaged at
``jaxnas/data/op_costs.json``; ``--install`` writes there too. Run:

    python experiments/latency_table.py                      # C=16, 32×32, batch 64 (CIFAR search)
    python experiments/latency_table.py --channels 4 --size 8 --batch 8 --repeats 5   # quick
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import time

import jax
import jax.numpy as jnp

from jaxnas.derive import DARTS_OPS, NB201_OPS
from jaxnas.spaces.layers import avg_pool_3x3, conv2d
from jaxnas.spaces.sampled import batch_norm, darts_op

PACKAGED = pathlib.Path(__file__).resolve().parents[1] / "jaxnas" / "data" / "op_costs.json"


def _darts_params(key, c_in, c, stride):
  shapes = {}
  if stride == 2:
    shapes.update(fr_conv1=(c_in, c // 2), fr_conv2=(c_in, c // 2))
  for k in (3, 5):
    shapes.update({f"sep{k}_dw1": (k, k, c), f"sep{k}_pw1": (c, c), f"sep{k}_dw2": (k, k, c),
                   f"sep{k}_pw2": (c, c)})
    shapes.update({f"dil{k}_dw": (k, k, c), f"dil{k}_pw": (c, c)})
  keys = jax.random.split(key, len(shapes))
  return {n: 0.1 * jax.random.normal(k, s) for (n, s), k in zip(sorted(shapes.items()), keys)}


def _darts_stats(c_in, c, stride):
  names = ["max_pool_bn", "avg_pool_bn", "fr_bn"] + [f"sep{k}_bn{i}" for k in (3, 5)
                                                     for i in (1, 2)] + ["dil3_bn", "dil5_bn"]
  size = {"max_pool_bn": c_in, "avg_pool_bn": c_in}
  return {n: (jnp.zeros(size.get(n, c)), jnp.ones(size.get(n, c))) for n in names}


def _nb201_op(name, x, p):
  r = jax.nn.relu(x)
  if name == "none":
    return jnp.zeros_like(x)
  if name == "skip_connect":
    return x
  if name == "avg_pool_3x3":
    return avg_pool_3x3(x)
  if name == "nor_conv_1x1":
    y = r @ p["k1"] + p["b1"]
  else:
    y = conv2d(r, p["k3"], padding=1) + p["b3"]
  c = y.shape[-1]
  return batch_norm(y, jnp.zeros(c), jnp.ones(c), True)[0]


def _measure(fn, x, repeats):
  jitted = jax.jit(fn)
  compiled = jitted.lower(x).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float((cost or {}).get("flops", 0.0))
  jax.block_until_ready(compiled(x))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(x))
    times.append((time.perf_counter() - t0) * 1e3)
  return statistics.median(times), flops


def measure(channels: int, size: int, batch: int, repeats: int, seed: int = 0) -> dict:
  key = jax.random.key(seed)
  table = {"darts": {"latency_ms": {}, "flops": {}}, "nb201": {"latency_ms": {}, "flops": {}}}
  for cell, c_in, c, stride in (("normal", channels, channels, 1),
                                ("reduce", 2 * channels, 2 * channels, 2)):
    x = jax.random.normal(key, (batch, size, size, c_in))
    params, stats = _darts_params(key, c_in, c, stride), _darts_stats(c_in, c, stride)
    lat, fl = {}, {}
    for i, name in enumerate(DARTS_OPS):
      fn = lambda x, i=i: darts_op(i, x, params, stats, stride=stride, train=True)[0]
      lat[name], fl[name] = _measure(fn, x, repeats)
      print(f"darts {cell:6s} {name:14s} {lat[name]:9.3f} ms {fl[name]:14.0f} flops", flush=True)
    table["darts"]["latency_ms"][cell], table["darts"]["flops"][cell] = lat, fl
  x = jax.random.normal(key, (batch, size, size, channels))
  k1, k3 = jax.random.split(key)
  p = {"k1": 0.1 * jax.random.normal(k1, (channels, channels)), "b1": jnp.zeros(channels),
       "k3": 0.1 * jax.random.normal(k3, (3, 3, channels, channels)), "b3": jnp.zeros(channels)}
  lat, fl = {}, {}
  for name in NB201_OPS:
    lat[name], fl[name] = _measure(lambda x, name=name: _nb201_op(name, x, p), x, repeats)
    print(f"nb201 cell   {name:14s} {lat[name]:9.3f} ms {fl[name]:14.0f} flops", flush=True)
  table["nb201"]["latency_ms"]["cell"], table["nb201"]["flops"]["cell"] = lat, fl
  table["config"] = {"channels": channels, "size": size, "batch": batch, "repeats": repeats,
                     "device": str(jax.devices()[0]), "machine": platform.machine(),
                     "jax": jax.__version__,
                     "what": "median wall time of the jitted forward (train-mode BN) and XLA's "
                             "flop count; DARTS reduce = stride 2 at 2C channels"}
  return table


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--channels", type=int, default=16)
  parser.add_argument("--size", type=int, default=32)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "op_costs.json"))
  parser.add_argument("--install", action="store_true",
                      help=f"also write the table the package reads ({PACKAGED})")
  args = parser.parse_args(argv)
  table = measure(args.channels, args.size, args.batch, args.repeats)
  text = json.dumps(table, indent=1, sort_keys=True) + "\n"
  pathlib.Path(args.out).write_text(text)
  print(f"wrote {args.out}")
  if args.install:
    PACKAGED.write_text(text)
    print(f"wrote {PACKAGED}")


if __name__ == "__main__":
  main()
