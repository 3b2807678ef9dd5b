"""Throughput of N seeds in one vmapped program against the same N seeds run one after another.

Both sides search the NAS-Bench-201 space on the embedded digits with ``darts-1st`` and the real
per-seed batches (:func:`jaxnas.seeds.seed_batches`). The sequential side compiles the single-seed
step once and runs it for each seed in turn; the vmapped side compiles the N-seed step once. Warm
steps only in the throughput (seed-steps per second, median over ``--repeats`` rounds); compile
times are reported apart.

    python experiments/bench_seeds.py                       # N = 1, 2, 4, 8; C = 8, batch 64
    python experiments/bench_seeds.py --seeds 4 --channels 4 --batch 32
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 4, 8])
  p.add_argument("--channels", type=int, default=8)
  p.add_argument("--cells", type=int, default=1)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--steps", type=int, default=5, help="warm steps per round")
  p.add_argument("--repeats", type=int, default=3)
  args = p.parse_args(argv)
  import jax
  from jaxnas import data, methods, search, seeds, spaces
  ds = data.load("digits")
  model = spaces.get("nb201", channels=args.channels, cells_per_stage=args.cells,
                     num_classes=ds.num_classes)
  recipe = methods.get("darts-1st")
  kw = dict(steps_per_epoch=data.steps_per_epoch(len(ds.train_x), args.batch), epochs=50)
  print(json.dumps({"device": str(jax.devices()[0]), "cpu_count": os.cpu_count(),
                    "load_avg": os.getloadavg(), **vars(args)}), flush=True)

  step = search.make_search_step(model, recipe, **kw)
  state = search.init_search_state(model, recipe, jax.random.key(0), ds.image_shape, **kw)
  t = time.perf_counter()
  state, _ = step(state, *data.search_batches(ds, args.batch, seed=0, step=0))
  jax.block_until_ready(state)
  single_compile = time.perf_counter() - t
  rows = []
  for n in args.seeds:
    ids = list(range(n))
    states = [search.init_search_state(model, recipe, jax.random.key(s), ds.image_shape, **kw)
              for s in ids]
    vstates = seeds.stack(states)
    vstep = seeds.make_seeds_step(model, recipe, **kw)
    t = time.perf_counter()
    vstates, _ = vstep(vstates, *seeds.seed_batches(ds, args.batch, ids, 0))
    jax.block_until_ready(vstates)
    v_compile = time.perf_counter() - t
    seq, vm = [], []
    for r in range(args.repeats):
      steps = range(1 + r * args.steps, 1 + (r + 1) * args.steps)
      t = time.perf_counter()
      for j, s in enumerate(ids):
        for i in steps:
          states[j], _ = step(states[j], *data.search_batches(ds, args.batch, seed=s, step=i))
      jax.block_until_ready(states)
      seq.append(n * args.steps / (time.perf_counter() - t))
      t = time.perf_counter()
      for i in steps:
        vstates, _ = vstep(vstates, *seeds.seed_batches(ds, args.batch, ids, i))
      jax.block_until_ready(vstates)
      vm.append(n * args.steps / (time.perf_counter() - t))
    row = {"seeds": n, "sequential_seed_steps_per_s": statistics.median(seq),
           "vmapped_seed_steps_per_s": statistics.median(vm),
           "speedup": statistics.median(vm) / statistics.median(seq),
           "single_compile_s": single_compile, "vmapped_compile_s": v_compile}
    rows.append(row)
    print(json.dumps(row), flush=True)
  print(f"\n{'seeds':>5}{'sequential':>12}{'vmapped':>10}{'speedup':>9}{'vmap compile s':>16}")
  for r in rows:
    print(f"{r['seeds']:>5}{r['sequential_seed_steps_per_s']:>12.2f}"
          f"{r['vmapped_seed_steps_per_s']:>10.2f}{r['speedup']:>8.2f}×{r['vmapped_compile_s']:>16.1f}")
  print(f"(seed-steps per second, warm; single-seed step compiled in {single_compile:.1f} s)")


if __name__ == "__main__":
  main()
