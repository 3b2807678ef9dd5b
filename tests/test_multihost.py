"""Two processes on 127.0.0.1 run the same sharded step and agree on the alphas.

Each process joins through ``jax.distributed.initialize`` (via :func:`jaxnas.parallel.initialize`),
reads only its half of every global batch (:func:`jaxnas.parallel.process_rows`) and runs 3 steps
of a tiny NB201 search on a 2-device mesh (one CPU device per process). The processes compile,
meet at :func:`jaxnas.parallel.barrier`, then run (gloo's collectives time out after 30 s). Compiling in two processes
at once is heavy on a 2-core machine, so the test is marked slow.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

_SCRIPT = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_disable_most_optimizations", True)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
from jaxnas import data, methods, parallel, search, spaces
parallel.initialize(f"127.0.0.1:{sys.argv[1]}", num_processes=2, process_id=int(sys.argv[2]))
assert jax.process_count() == 2 and jax.device_count() == 2
ds = data.load("digits")
model = spaces.get("nb201", channels=2, cells_per_stage=1, num_classes=10, dtype=jnp.float64)
recipe = methods.get("darts-1st")
kw = dict(steps_per_epoch=93, epochs=1)
mesh = parallel.make_mesh(1)
step = parallel.jit_step(search.make_search_step(model, recipe, jit=False, **kw), mesh)
state = search.init_search_state(model, recipe, jax.random.key(0), ds.image_shape, **kw)
state = parallel.replicate(state, mesh)
rows = parallel.process_rows(8, mesh)
def global_batches(i):
  batches = data.search_batches(ds, 8, seed=0, step=i)
  return [parallel.shard_batch({k: v[rows] for k, v in b.items()}, mesh) for b in batches]
step = step.lower(state, *global_batches(0)).compile()
parallel.barrier("compiled")  # both compiled: the first collective starts in both at once
for i in range(3):
  state, metrics = step(state, *global_batches(i))
alphas = parallel.to_host(state.alphas)
print(json.dumps({"process": jax.process_index(), "rows": [rows.start, rows.stop],
                  "alphas": alphas["cell"].tolist(),
                  "val_loss": float(parallel.to_host(metrics)["val_loss"])}))
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_agree_on_the_alphas(tmp_path):
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
  # Output to files, not pipes: a process blocked on a full pipe would miss the shutdown barrier.
  logs = [(open(tmp_path / f"out{pid}", "w"), open(tmp_path / f"err{pid}", "w")) for pid in (0, 1)]
  procs = [subprocess.Popen([sys.executable, "-c", _SCRIPT, str(port), str(pid)], env=env,
                            stdout=out, stderr=err, text=True)
           for pid, (out, err) in zip((0, 1), logs)]
  outs = []
  for pid, (proc, (out, err)) in enumerate(zip(procs, logs)):
    proc.wait(timeout=1800)
    out.close()
    err.close()
    assert proc.returncode == 0, (tmp_path / f"err{pid}").read_text()[-3000:]
    outs.append(json.loads((tmp_path / f"out{pid}").read_text().strip().splitlines()[-1]))
  assert [o["process"] for o in outs] == [0, 1]
  assert [o["rows"] for o in outs] == [[0, 4], [4, 8]]  # each read half of the batch
  a0, a1 = (np.asarray(o["alphas"]) for o in outs)
  assert a0.shape == (6, 5)
  np.testing.assert_array_equal(a0, a1)  # one replicated state: the same bits in both
  assert np.abs(a0).max() > 1e-4 and outs[0]["val_loss"] == outs[1]["val_loss"]
