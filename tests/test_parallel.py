"""Data parallelism: the step on a batch split over 4 devices equals the 1-device step.

XLA's host platform shows several CPU devices only if ``--xla_force_host_platform_device_count``
is set before JAX starts, so the 4-device check runs in a fresh Python process. It compiles the
step twice (about a minute of CPU), so it is marked slow; the 1-device path is the one every
``jaxnas search`` test runs.
"""

import json
import os
import subprocess
import sys

import jax
import pytest

from jaxnas import cli, parallel
from jaxnas.errors import JaxnasError

# Run in a subprocess with 4 host devices: 3 steps of a tiny NB201 search on the 1-device mesh
# and on the 4-device mesh (the same jit_step code path), the largest differences printed as JSON.
_SCRIPT = r"""
import contextlib, io, json, sys
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_disable_most_optimizations", True)
from jaxnas import cli, data, methods, parallel, search, spaces
from jaxnas.errors import JaxnasError
assert jax.device_count() == 4, jax.devices()
ds = data.load("digits")
model = spaces.get("nb201", channels=2, cells_per_stage=1, num_classes=10, dtype=jnp.float64)
recipe = methods.get("darts-1st")
kw = dict(steps_per_epoch=93, epochs=1)
raw = search.make_search_step(model, recipe, jit=False, **kw)
start = search.init_search_state(model, recipe, jax.random.key(0), ds.image_shape, **kw)
start = jax.device_get(start._replace(key=jax.random.key_data(start.key)))
out = {}
for n in (1, 4):
  mesh = parallel.make_mesh(n)
  step = parallel.jit_step(raw, mesh)
  state = parallel.replicate(start._replace(key=jax.random.wrap_key_data(start.key)), mesh)
  for i in range(3):
    batches = data.search_batches(ds, 8, seed=0, step=i)
    state, metrics = step(state, *(parallel.shard_batch(b, mesh) for b in batches))
  out[n] = (parallel.to_host(state._replace(key=jax.random.key_data(state.key))),
            parallel.to_host(metrics), len(state.alphas["cell"].sharding.device_set))
diffs = {}
for name in ("weights", "alphas", "batch_stats", "w_opt_state"):
  pairs = zip(jax.tree.leaves(getattr(out[1][0], name)), jax.tree.leaves(getattr(out[4][0], name)))
  diffs[name] = max(float(np.max(np.abs(a - b) / (1e-6 + np.abs(a)))) for a, b in pairs)
diffs["val_loss"] = abs(float(out[1][1]["val_loss"] - out[4][1]["val_loss"]))
mesh4 = parallel.make_mesh(4)
try:
  parallel.check_batch_size(6, mesh4)
  error = None
except JaxnasError as e:
  error = str(e)
err = io.StringIO()
with contextlib.redirect_stderr(err):
  code = cli.main(["search", "--channels", "2", "--steps", "1", "--batch-size", "6",
                   "--devices", "4", "--out", sys.argv[1]])
print(json.dumps({"diffs": diffs, "devices": [out[1][2], out[4][2]], "error": error,
                  "cli_code": code, "cli_err": err.getvalue()}))
"""


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  out = tmp_path_factory.mktemp("parallel") / "run"
  proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(out)], capture_output=True,
                        text=True, env=env, timeout=1800)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1]), out


@pytest.mark.slow
def test_four_device_step_equals_one_device_step(four_devices):
  result, _ = four_devices
  assert result["devices"] == [1, 4]  # the state really lived on 1, then on 4 devices
  # The 4-device program sums the batch in another order: float32 tolerance (the run is float64).
  for name, rel in result["diffs"].items():
    assert rel < 1e-5, (name, rel)


@pytest.mark.slow
def test_batch_not_divisible_by_devices_is_one_line(four_devices):
  result, out = four_devices
  assert "batch size 6 does not split over 4 devices" in result["error"]
  assert result["cli_code"] == 2
  assert result["cli_err"].startswith("jaxnas: error: batch size 6 does not split over 4 devices")
  assert len(result["cli_err"].strip().splitlines()) == 1
  assert not out.exists()  # refused before the run directory was made


def test_more_devices_than_present_is_one_line(tmp_path, capsys):
  n = jax.local_device_count() + 1
  code = cli.main(["search", "--channels", "2", "--steps", "1", "--batch-size", "8",
                   "--devices", str(n), "--out", str(tmp_path / "r")])
  err = capsys.readouterr().err
  assert code == 2 and f"--devices {n} is not possible" in err
  assert len(err.strip().splitlines()) == 1


def test_one_device_mesh_and_row_split():
  mesh = parallel.make_mesh(1)
  assert mesh.devices.size == 1 and mesh.axis_names == (parallel.AXIS,)
  assert parallel.process_rows(8, mesh) == slice(0, 8)
  with pytest.raises(JaxnasError, match="--devices 0 is not possible"):
    parallel.make_mesh(0)
