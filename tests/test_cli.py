"""The jaxnas command: a smoke run, its run directory, derive, dry run and every bad input."""

import json

import numpy as np
import pytest

from jaxnas import cli, derive

TINY = ["--channels", "2", "--cells", "1", "--batch-size", "8", "--no-compile-cache"]
# NAS-Bench-201 supernet at C=2, N=1 on 1-channel 8×8 digits, counted by hand from the reference:
# stem 9·1·2 + 2·2; 3 cells × 6 edges × (10C² + 2C) at C = 2, 4, 8; ResNet blocks
# 10·Ci·Co + 9·Co² + 4·Co for 2→4 and 4→8; lastact 2·8; classifier 8·10 + 10.
NB201_C2_N1_PARAMS = (18 + 4 + 6 * (44 + 168 + 656) + (80 + 144 + 16) + (320 + 576 + 32) + 16
                      + 90)


def _run(argv, capsys):
  code = cli.main(argv)
  out, err = capsys.readouterr()
  return code, out, err


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory):
  base = tmp_path_factory.mktemp("runs")
  paths = []
  for name in ("a", "b"):
    path = base / name
    assert cli.main(["search", *TINY, "--steps", "3", "--seed", "7", "--out", str(path)]) == 0
    paths.append(path)
  return paths


def test_smoke_run_writes_the_run_directory(run_dirs):
  run = run_dirs[0]
  for name in ("config.json", "metrics.jsonl", "alphas.npz", "genotype.json", "summary.json"):
    assert (run / name).is_file(), name
  config = json.loads((run / "config.json").read_text())
  assert config["num_params"] == NB201_C2_N1_PARAMS == 6504
  assert config["config"]["space"] == "nb201" and config["config"]["seed"] == 7
  assert config["versions"]["jax"] and config["total_steps"] == 3
  lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
  assert [l["step"] for l in lines] == [1, 2, 3]
  assert all(np.isfinite(l["train_loss"]) and 0 <= l["val_accuracy"] <= 1 for l in lines)
  with np.load(run / "alphas.npz") as f:
    assert f["cell"].shape == (6, 5)
  genotype = derive.Genotype.load(run)
  assert genotype.space == "nb201" and len(genotype.normal) == 6
  summary = json.loads((run / "summary.json").read_text())
  assert 0 <= summary["supernet_val_accuracy"] <= 1
  assert summary["nb201_arch"] == derive.nb201_arch_string(genotype)


def test_same_seed_gives_bit_identical_alphas(run_dirs):
  with np.load(run_dirs[0] / "alphas.npz") as a, np.load(run_dirs[1] / "alphas.npz") as b:
    np.testing.assert_array_equal(a["cell"], b["cell"])
    assert np.abs(a["cell"]).max() > 0


def test_fuse_phases_on_is_the_same_search_as_the_default_two_copies(run_dirs, tmp_path,
                                                                     monkeypatch):
  # nb201 runs the first-order step as two copies by default; --fuse-phases on runs it as one
  # forward+backward scanned over the two phases (search.phase_loop_update): another program,
  # the same updates, so the alphas agree to float rounding after 3 steps.
  from jaxnas import search
  asked, make = [], search.make_search_step
  monkeypatch.setattr(search, "make_search_step",
                      lambda *a, **kw: asked.append(kw.get("fuse_phases")) or make(*a, **kw))
  out = tmp_path / "fused"
  assert cli.main(["search", *TINY, "--steps", "3", "--seed", "7", "--fuse-phases", "on",
                   "--out", str(out)]) == 0
  assert asked == [True]
  assert json.loads((out / "config.json").read_text())["config"]["fuse_phases"] == "on"
  with np.load(run_dirs[0] / "alphas.npz") as a, np.load(out / "alphas.npz") as b:
    assert not np.array_equal(a["cell"], np.zeros_like(a["cell"]))
    np.testing.assert_allclose(b["cell"], a["cell"], rtol=1e-4, atol=1e-6)


def test_derive_reproduces_the_genotype(run_dirs, capsys):
  code, out, _ = _run(["derive", str(run_dirs[0])], capsys)
  assert code == 0
  with np.load(run_dirs[0] / "alphas.npz") as f:
    weights = np.exp(f["cell"]) / np.exp(f["cell"]).sum(-1, keepdims=True)
  expected = derive.nb201_argmax({"cell": weights})
  assert derive.Genotype.load(run_dirs[0]) == expected
  assert derive.nb201_arch_string(expected) in out


def test_existing_run_directory_is_never_overwritten(run_dirs, capsys):
  before = (run_dirs[0] / "metrics.jsonl").read_bytes()
  code, _, err = _run(["search", *TINY, "--steps", "1", "--out", str(run_dirs[0])], capsys)
  assert code == 2 and "already exists" in err and "--out" in err
  assert (run_dirs[0] / "metrics.jsonl").read_bytes() == before


def test_dry_run_writes_config_and_stops(tmp_path, capsys):
  out_dir = tmp_path / "dry"
  code, out, _ = _run(["search", "--space", "darts", "--channels", "16", "--cells", "8",
                       "--dry-run", "--no-compile-cache", "--out", str(out_dir)], capsys)
  assert code == 0
  config = json.loads((out_dir / "config.json").read_text())
  # DARTS C=16, L=8 on 1-channel input: the reference's count (quark0/darts) with a 1-channel stem.
  assert config["num_params"] == 1929754
  assert not (out_dir / "metrics.jsonl").exists()
  assert "1,929,754" in out


def test_methods_lists_darts_1st(capsys):
  code, out, _ = _run(["methods"], capsys)
  assert code == 0 and "darts-1st" in out


@pytest.mark.parametrize("argv, needle", [
    (["search", "--method", "nope"], "unknown method 'nope'"),
    (["search", "--space", "nope"], "unknown search space 'nope'"),
    (["search", "--dataset", "nope"], "unknown data set 'nope'"),
    (["search", "--estimator", "nope"], "unknown estimator 'nope'"),
    (["search", "--steps", "0"], "--steps must be"),
    (["search", "--steps", "-3"], "--steps must be"),
    (["search", "--epochs", "0"], "--epochs must be"),
    (["search", "--channels", "0"], "--channels must be"),
    (["search", "--cells", "-1"], "--cells must be"),
    (["search", "--batch-size", "0"], "batch"),
    (["search", "--batch-size", "100000"], "--batch-size"),
    (["search", "--steps", "abc"], "expected a whole number"),
    (["search", "--steps", "1", "--epochs", "1"], "not allowed with"),
    (["search", "--seed", "-1"], "--seed"),
    (["nope"], "invalid choice"),
    (["derive", "/nonexistent/run"], "not found"),
    (["study", "hypergrad", "--problem", "nope"], "unknown problem 'nope'"),
])
def test_bad_input_is_one_line_and_exit_2(argv, needle, tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(tmp_path)  # nothing may be written for bad input
  code, _, err = _run(argv, capsys)
  assert code == 2
  lines = err.strip().splitlines()
  assert len(lines) == 1, err
  assert lines[0].startswith("jaxnas: error:") and needle in lines[0], lines[0]
  assert "Traceback" not in err
  assert not (tmp_path / "runs").exists()


def test_derive_rejects_damaged_alphas(run_dirs, tmp_path, capsys):
  broken = tmp_path / "broken"
  broken.mkdir()
  (broken / "config.json").write_text((run_dirs[0] / "config.json").read_text())
  np.savez(broken / "alphas.npz", cell=np.zeros((6, 4)))
  code, _, err = _run(["derive", str(broken)], capsys)
  assert code == 2 and "(6, 4)" in err and "(6, 5)" in err
  (broken / "alphas.npz").write_bytes(b"not an npz")
  code, _, err = _run(["derive", str(broken)], capsys)
  assert code == 2 and "cannot be read" in err
