"""One DARTS search step, jaxnas against a PyTorch port of the reference, side by side.

Same machine, same process, same thread settings, same network (the parameter counts are checked
equal before anything is timed), same random batches. jaxnas runs ``darts-1st``, ``darts-2nd`` (the
reference's finite difference) and ``darts-2nd-exact`` (exact mixed product by jvp); the PyTorch
baseline (``experiments/torch_darts.py``) runs the reference's first- and second-order steps.
Compile time (jaxnas: lowering + XLA compile) is reported apart; step times are warm steps only:
median, min and max over ``--repeats``. Ratios are jaxnas / PyTorch for the same order.

    python experiments/bench_step.py                                    # DARTS CIFAR-10 search size
    python experiments/bench_step.py --channels 8 --cells 5 --batch 16 --side 16   # small, on CPU
    python experiments/bench_step.py --only jax --methods darts-1st      # one side, one method
    python experiments/bench_step.py --methods darts-1st darts-1st-plain # fused and plain first order

Runs unchanged on a GPU: JAX takes its default device, PyTorch takes CUDA when it is available
(``--torch-device`` overrides). Needs the ``bench`` extra (torch).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

TORCH_ORDER = {"darts-1st": "1st", "darts-1st-plain": "1st", "darts-2nd": "2nd",
               "darts-2nd-exact": "2nd"}
# darts-1st is what `jaxnas search --space darts` runs: the two-phase scan (one forward+backward in
# the program, run twice), chosen for the DARTS space because it compiles in a fraction of the
# time; darts-1st-plain is the same first-order step as two copies (make_search_step(fuse_phases=
# False)), which compiles slower and runs faster on CPU.
FUSE = {"darts-1st-plain": False}


def _stats(times):
  return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
          "repeats": len(times)}


def bench_jax(args, method: str) -> dict:
  import jax
  import numpy as np
  from jaxnas import methods, search, spaces
  model = spaces.get("darts", channels=args.channels, num_cells=args.cells, num_classes=10,
                     depthwise=args.depthwise)
  recipe = methods.get(method.removesuffix("-plain"))
  shape = (args.side, args.side, 3)
  kw = dict(steps_per_epoch=100, epochs=50)
  state = search.init_search_state(model, recipe, jax.random.key(0), shape, **kw)
  step = search.make_search_step(model, recipe, fuse_phases=FUSE.get(method), **kw)
  batches = _batches(args)
  tb, vb = ({"image": x.transpose(0, 2, 3, 1), "label": y} for x, y in batches)  # NCHW → NHWC
  t = time.perf_counter()
  compiled = step.lower(state, tb, vb).compile()
  compile_s = time.perf_counter() - t
  for _ in range(args.warmup):
    state, m = compiled(state, tb, vb)
  jax.block_until_ready(state)
  times = []
  for _ in range(args.repeats):
    t = time.perf_counter()
    state, m = compiled(state, tb, vb)
    jax.block_until_ready((state, m))
    times.append(time.perf_counter() - t)
  return {"side": "jaxnas", "method": method, "compile_s": compile_s,
          "train_loss": float(np.asarray(m["train_loss"])), **_stats(times)}


def _batches(args):
  import numpy as np
  rng = np.random.default_rng(0)
  return [(rng.standard_normal((args.batch, 3, args.side, args.side)).astype(np.float32),
           rng.integers(0, 10, args.batch).astype(np.int64)) for _ in range(2)]


def bench_torch(args, order: str) -> dict:
  import torch
  import torch_darts
  device = torch.device(args.torch_device)
  torch.manual_seed(0)
  net = torch_darts.Network(args.channels, 10, args.cells).to(device)
  alphas = {k: v.detach().to(device).requires_grad_(True) for k, v in torch_darts.init_alphas().items()}
  searcher = torch_darts.Searcher(net, alphas, unrolled=order == "2nd")
  train, val = ((torch.from_numpy(x).to(device), torch.from_numpy(y).to(device))
                for x, y in _batches(args))
  sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
  for _ in range(args.warmup):
    searcher.search_step(train, val)
  sync()
  times = []
  for _ in range(args.repeats):
    t = time.perf_counter()
    loss, _ = searcher.search_step(train, val)
    sync()
    times.append(time.perf_counter() - t)
  return {"side": "torch", "method": f"torch-{order}", "compile_s": 0.0,
          "train_loss": float(loss), **_stats(times)}


def check_params(args) -> int:
  import torch_darts
  from jaxnas import run, spaces
  n_torch = torch_darts.count_params(torch_darts.Network(args.channels, 10, args.cells))
  n_jax = run.count_params(spaces.get("darts", channels=args.channels, num_cells=args.cells,
                                      num_classes=10), (args.side, args.side, 3))
  if n_torch != n_jax:
    sys.exit(f"parameter counts differ: jaxnas {n_jax:,}, torch {n_torch:,}; not timing")
  return n_jax


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--channels", type=int, default=16)
  p.add_argument("--cells", type=int, default=8)
  p.add_argument("--side", type=int, default=32)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--methods", nargs="+", default=["darts-1st", "darts-2nd", "darts-2nd-exact"],
                 choices=list(TORCH_ORDER))
  p.add_argument("--only", choices=["jax", "torch"], default=None)
  p.add_argument("--depthwise", default="lax", help="jaxnas depthwise form: lax, taps or vjp")
  p.add_argument("--torch-device", default=None, help="default: cuda if available, else cpu")
  p.add_argument("--json", default=None, help="also write the results to this file")
  args = p.parse_args(argv)
  # As `jaxnas search --space darts` does: XLA:GPU's Triton GEMM fusion aborts on this graph.
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_gpu_enable_triton_gemm" not in flags:
    os.environ["XLA_FLAGS"] = (flags + " --xla_gpu_enable_triton_gemm=false").strip()
  import jax
  import torch
  args.torch_device = args.torch_device or ("cuda" if torch.cuda.is_available() else "cpu")
  num_params = check_params(args)
  header = {"num_params": num_params, "jax_device": str(jax.devices()[0]),
            "torch_device": args.torch_device, "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "load_avg": os.getloadavg(), "jax": jax.__version__,
            "torch": torch.__version__, "platform": platform.platform(),
            "config": {k: getattr(args, k) for k in ("batch", "channels", "cells", "side",
                                                     "repeats", "warmup", "depthwise")}}
  print(json.dumps(header), flush=True)
  results = []
  orders = sorted({TORCH_ORDER[m] for m in args.methods})
  if args.only != "jax":
    for order in orders:
      results.append(bench_torch(args, order))
      print(json.dumps(results[-1]), flush=True)
  if args.only != "torch":
    for method in args.methods:
      results.append(bench_jax(args, method))
      print(json.dumps(results[-1]), flush=True)
  torch_median = {r["method"][len("torch-"):]: r["median_s"] for r in results if r["side"] == "torch"}
  print(f"\n{'step':<18}{'compile s':>10}{'median s':>10}{'min s':>9}{'max s':>9}{'vs torch':>10}")
  for r in results:
    ratio = ""
    if r["side"] == "jaxnas" and TORCH_ORDER[r["method"]] in torch_median:
      ratio = f"{r['median_s'] / torch_median[TORCH_ORDER[r['method']]]:.2f}×"
    print(f"{r['method']:<18}{r['compile_s']:>10.1f}{r['median_s']:>10.3f}{r['min_s']:>9.3f}"
          f"{r['max_s']:>9.3f}{ratio:>10}")
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps({"header": header, "results": results},
                                                  indent=2) + "\n")


if __name__ == "__main__":
  main()
