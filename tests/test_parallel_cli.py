"""`jaxnas search` across processes: the flags, their one-line errors, two processes on 127.0.0.1.

The invariants the two-process run is checked against: the sharded step computes the same function
as the step on one device with the whole global batch (the mean loss and BatchNorm's statistics are
means over all 8 rows, `jaxnas.parallel`), so process 0's run directory holds the alphas of a
single-process run with the same flags up to the order in which the two halves' sums are added:
float32 rounding, not bit identity. With the same split, one process with two devices
(`--devices 2`), XLA runs the same partitioned program, and the alphas are equal bit for bit
(measured: 3e-8 apart from the 1-device run, 0 from the 2-device one). (The library-path test,
tests/test_multihost.py, runs float64 with another set-up, so its numbers are not this run's.)
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from jaxnas import cli, parallel
from jaxnas.errors import JaxnasError

ADDR = "127.0.0.1:12345"


@pytest.mark.parametrize("flags, text", [
    (["--num-processes", "2", "--process-id", "2", "--coordinator", ADDR],
     "--process-id 2 is not one of the 2 processes; give each process an id in 0..1"),
    (["--num-processes", "2", "--process-id", "0"],
     "a multi-process run needs --coordinator ADDR:PORT as well"),
    (["--coordinator", ADDR],
     "needs --num-processes N and --process-id I as well"),
    (["--coordinator", "127.0.0.1", "--num-processes", "2", "--process-id", "0"],
     "--coordinator '127.0.0.1': write ADDR:PORT"),
    (["--num-processes", "0", "--process-id", "0", "--coordinator", ADDR],
     "--num-processes must be a whole number ≥ 1, got 0"),
    (["--seeds", "2", "--num-processes", "2", "--process-id", "0", "--coordinator", ADDR],
     "--seeds runs in one process"),
    (["--resume", "--num-processes", "2", "--process-id", "1", "--coordinator", ADDR],
     "--resume runs in one process"),
    (["--distributed", "manual"], "argument --distributed: invalid choice: 'manual'"),
])
def test_bad_process_flags_are_one_line_and_nothing_starts(flags, text, tmp_path, capsys):
  code = cli.main(["search", "--channels", "2", "--steps", "1", "--batch-size", "8",
                   "--out", str(tmp_path / "r"), *flags])
  err = capsys.readouterr().err
  assert code == 2 and err.startswith("jaxnas: error: ") and text in err, err
  assert len(err.strip().splitlines()) == 1
  assert not (tmp_path / "r").exists()
  from jax._src import distributed
  assert distributed.global_state.client is None  # refused before jax.distributed.initialize


def test_auto_without_a_cluster_is_one_line(tmp_path, capsys, monkeypatch):
  for name in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "OMPI_MCA_orte_hnp_uri",
               "JAX_COORDINATOR_ADDRESS", "JAX_COORDINATOR_PORT"):
    monkeypatch.delenv(name, raising=False)
  code = cli.main(["search", "--steps", "1", "--distributed", "auto", "--out",
                   str(tmp_path / "r")])
  err = capsys.readouterr().err
  assert code == 2 and err.startswith("jaxnas: error: cannot join the distributed run (")
  assert len(err.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


def test_distributed_options_map_the_flags_to_initialize():
  assert parallel.distributed_options(None, None, None, None) is None  # one process
  assert parallel.distributed_options(None, None, None, "auto") == {}  # JAX finds them all
  assert parallel.distributed_options("10.0.0.1:1234", 4, 3, None) == {
      "coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3}
  # auto with some flags: the given ones are passed, JAX finds the rest.
  assert parallel.distributed_options("[::1]:99", None, None, "auto") == {
      "coordinator_address": "[::1]:99"}
  with pytest.raises(JaxnasError, match="is not one of the 4 processes"):
    parallel.distributed_options("10.0.0.1:1234", 4, 4, "auto")
  with pytest.raises(JaxnasError, match="write ADDR:PORT"):
    parallel.distributed_options("10.0.0.1:99999", 4, 0, None)


# ------------------------------------------------------------------------------------------------
# Two `jaxnas search` processes on 127.0.0.1 against one process with the same global batch.

TINY = ["--channels", "2", "--cells", "1", "--batch-size", "8", "--steps", "3", "--seed", "3",
        "--no-compile-cache"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


# Both runs compile with XLA's cheap settings (as conftest does in-process); same numbers.
ENV = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="true",
           XLA_FLAGS="--xla_force_host_platform_device_count=1")


def _two_processes(root, out: str) -> list:
  """Runs ``jaxnas search TINY --out OUT`` as processes 0 and 1 (one CPU device each), process
  ``i`` in the folder ``root/p<i>``; returns their exit codes (stdout, stderr in ``root``).

  Process 0 gets the explicit flags; process 1 gets ``--distributed auto`` in the environment a
  SLURM task sees (JAX's SLURM detection reads it; ``JAX_COORDINATOR_PORT`` sets the port).
  """
  port = _free_port()
  cmd = [sys.executable, "-m", "jaxnas.cli", "search", *TINY, "--out", out]
  flags = {0: (["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id",
                "0"], {}),
           1: (["--distributed", "auto"], dict(
               SLURM_JOB_ID="1", SLURM_STEP_NODELIST="127.0.0.1", SLURM_NTASKS="2",
               SLURM_PROCID="1", SLURM_LOCALID="0", JAX_COORDINATOR_PORT=str(port)))}
  procs, logs = [], []
  for pid in (0, 1):
    cwd = root / f"p{pid}"  # a relative --out in two folders: who writes what
    cwd.mkdir()
    # Output to files, not pipes: a process blocked on a full pipe would miss a barrier.
    logs.append((open(root / f"out{pid}", "w"), open(root / f"err{pid}", "w")))
    procs.append(subprocess.Popen([*cmd, *flags[pid][0]], cwd=cwd, env={**ENV, **flags[pid][1]},
                                  stdout=logs[-1][0], stderr=logs[-1][1]))
  codes = []
  for pid, proc in enumerate(procs):
    codes.append(proc.wait(timeout=1800))
    for f in logs[pid]:
      f.close()
  return codes


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """A two-process run, then one process alone with one device and with two."""
  root = tmp_path_factory.mktemp("hosts")
  codes = _two_processes(root, "run")
  for pid in (0, 1):
    assert codes[pid] == 0, (root / f"err{pid}").read_text()[-3000:]
  for name, devices in (("single", 1), ("two-devices", 2)):
    flags = f"--xla_force_host_platform_device_count={devices}"
    one = subprocess.run([sys.executable, "-m", "jaxnas.cli", "search", *TINY, "--out",
                          str(root / name), "--devices", str(devices)],
                         env={**ENV, "XLA_FLAGS": flags}, capture_output=True, text=True,
                         timeout=1800)
    assert one.returncode == 0, one.stderr[-3000:]
  return root


@pytest.mark.slow
def test_an_existing_run_directory_ends_every_process_in_one_line(tmp_path):
  taken = tmp_path / "taken"
  taken.mkdir()
  assert _two_processes(tmp_path, str(taken)) == [2, 2]  # not process 0 alone, then a hang
  for pid in (0, 1):
    err = (tmp_path / f"err{pid}").read_text()
    assert err.strip() == (
        f"jaxnas: error: run directory {taken} already exists and is never overwritten; choose "
        "another --out (or leave --out out to get a fresh timestamped one)"), err[-2000:]
  assert list(taken.iterdir()) == []


@pytest.mark.slow
def test_only_process_0_writes_the_run_directory(runs):
  assert sorted(p.name for p in (runs / "p1").iterdir()) == []  # process 1 wrote nothing
  run = runs / "p0" / "run"
  for name in ("config.json", "metrics.jsonl", "alphas.npz", "genotype.json", "summary.json"):
    assert (run / name).is_file(), name
  assert json.loads((run / "config.json").read_text())["processes"] == 2
  assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == ["3"]
  assert "process 1: 3 steps done; process 0 writes the results" in (runs / "out1").read_text()


@pytest.mark.slow
def test_two_processes_end_with_the_alphas_of_one_process_with_the_global_batch(runs):
  run, single = runs / "p0" / "run", runs / "single"
  with np.load(run / "alphas.npz") as a, np.load(single / "alphas.npz") as b:
    assert a.files == b.files
    for k in a.files:
      assert a[k].dtype == np.float32
      # Float32 rounding of two half-batch sums against one whole-batch sum, through 3 Adam
      # steps of lr 3e-4: far below one step's change (3e-4), far above the rounding (~1e-7).
      np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6)
  with np.load(run / "alphas_history" / "step_000000.npz") as start, \
       np.load(run / "alphas.npz") as end:
    assert max(np.abs(end[k] - start[k]).max() for k in end.files) > 1e-5  # the alphas moved
  # One process with the same two-way split runs the same partitioned program: the same bits.
  with np.load(run / "alphas.npz") as a, np.load(runs / "two-devices" / "alphas.npz") as b:
    assert all(np.array_equal(a[k], b[k]) for k in a.files)
  lines = lambda d: [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()]
  got, want = lines(run), lines(single)
  assert [m["step"] for m in got] == [m["step"] for m in want] == [1, 2, 3]
  for g, w in zip(got, want):
    for key in ("train_loss", "val_loss"):
      assert g[key] == pytest.approx(w[key], rel=1e-5)
