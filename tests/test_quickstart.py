"""The README's quick start as written: `jaxnas search` with no arguments reaches ≥ 90 %.

It runs as a separate process, as a user runs it: the test session's float64 and reduced XLA
optimisation (tests/conftest.py) must not change what is measured.
"""

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_quick_start_reaches_90_percent(tmp_path):
  env = dict(os.environ, JAXNAS_CACHE_DIR=str(tmp_path / "xla-cache"))
  proc = subprocess.run([sys.executable, "-m", "jaxnas.cli", "search"], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=1200)
  assert proc.returncode == 0, proc.stderr[-2000:]
  (run,) = list((tmp_path / "runs").iterdir())
  summary = json.loads((run / "summary.json").read_text())
  config = json.loads((run / "config.json").read_text())
  assert config["config"]["space"] == "nb201" and config["recipe"]["name"] == "darts-1st"
  assert config["total_steps"] == 330 and config["num_params"] == 99906
  assert summary["supernet_val_accuracy"] >= 0.90, summary
  assert "supernet validation accuracy" in proc.stdout and "genotype" in proc.stdout
