#!/usr/bin/env bash
# One run on a lent GPU machine: the jitted step's tests, the quick start, and the compile/step
# benchmark. Usage (from the repository root): bash experiments/device_check.sh [quick|bench]
set -uo pipefail
export PYTHONPATH=.
nvidia-smi -L || true
python -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
case "${1:-quick}" in
  quick)
    python -m pytest -q -p no:cacheprovider tests/test_search.py tests/test_spaces.py 2>&1 | tail -3
    out="${OUT:-/tmp}/quickstart"
    time (python -m jaxnas.cli search --no-compile-cache --out "$out" 2>&1 | tail -4)
    ;;
  bench)
    python experiments/bench_compile.py --configs quick nb201-c8n5 darts-c16 --orders 1st 2nd \
      --steps 20 --timeout 280
    ;;
esac
