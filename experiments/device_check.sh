#!/usr/bin/env bash
# One run on a lent GPU machine: the jitted step's tests, the quick start, and the compile/step
# benchmark. Usage (from the repository root): bash experiments/device_check.sh [quick|bench|hypergrad]
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
  hypergrad)
    # Issue 3's cost target: darts-2nd-exact vs darts-1st and darts-2nd, side by side.
    timeout 200 python experiments/bench_hypergrad.py --space nb201 --channels 16 --cells 5 \
      --batch 64 --side 32 --repeats 20
    timeout 260 python experiments/bench_hypergrad.py --space darts --channels 16 --cells 3 \
      --batch 64 --side 32 --repeats 20
    timeout 100 python -m pytest -q -p no:cacheprovider tests/test_attack_noise.py 2>&1 | tail -2
    ;;
esac
