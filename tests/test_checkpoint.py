"""Checkpoints: save → restore → continue equals an uninterrupted search, bit for bit; damaged and
foreign checkpoints give one line naming the path and change nothing; resume flags; kill -9."""

import dataclasses
import hashlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnas import checkpoint, cli, methods, run, search, spaces
from jaxnas.errors import JaxnasError

IMAGE = (8, 8, 1)
BATCH = 4
SPE, EPOCHS = 3, 2  # a schedule that changes across the run (cosine steps each epoch)


def _batches(step):
  """Train and val batches as a pure function of the step, as jaxnas.data.batch_at."""
  rng = np.random.default_rng([7, step])
  make = lambda: {"image": rng.standard_normal((BATCH,) + IMAGE),
                  "label": rng.integers(0, 10, BATCH).astype(np.int32)}
  return make(), make()


@pytest.fixture(scope="module")
def setup():
  model = spaces.get("nb201", channels=2, cells_per_stage=1, num_classes=10, dtype=jnp.float64)
  recipe = methods.get("darts-1st")
  state0 = search.init_search_state(model, recipe, jax.random.key(0), IMAGE, steps_per_epoch=SPE,
                                    epochs=EPOCHS)
  step = jax.jit(search.make_search_step(model, recipe, steps_per_epoch=SPE, epochs=EPOCHS,
                                         jit=False))
  return state0, step


def _run(step, state, start, stop):
  for i in range(start, stop):
    state, _ = step(state, *_batches(i))
  return state


def _leaves(state):
  return jax.tree.leaves(checkpoint._storable(state))


def _blank(state):
  """A state of the same shapes with other values (zeros, another key)."""
  return jax.tree.map(jnp.zeros_like, state._replace(key=None))._replace(key=jax.random.key(9))


def _tree_hashes(root: pathlib.Path) -> dict:
  """Every file under ``root`` by its hash; a save a kill cut short (orbax's temporary directory,
  removed when the checkpoints are next opened) is not a file the run wrote."""
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob("*"))
          if p.is_file() and "orbax-checkpoint-tmp" not in str(p)}


def test_save_restore_continue_equals_uninterrupted(setup, tmp_path):
  state0, step = setup
  uninterrupted = _run(step, state0, 0, 5)
  with checkpoint.Checkpoints(tmp_path / "ckpt", keep=2) as ckpts:
    half = _run(step, state0, 0, 2)
    ckpts.save(2, half, {"step": 2})
    restored, position = ckpts.restore(_blank(state0))
  assert position == {"step": 2}
  assert jax.random.key_impl(restored.key) == jax.random.key_impl(state0.key)
  assert jax.tree.structure(restored) == jax.tree.structure(state0)
  resumed = _run(step, restored, position["step"], 5)
  for a, b in zip(_leaves(uninterrupted), _leaves(resumed), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert int(resumed.step) == 5
  # The run moved: the comparison is not between two untouched states.
  assert np.abs(np.asarray(resumed.alphas["cell"] - state0.alphas["cell"])).max() > 0


def test_step_flags_exactly_the_quantities_an_infinite_train_batch_spoils(setup):
  state0, step = setup
  train, val = _batches(0)
  _, m = step(state0, train, val)
  assert int(m["nonfinite"]) == 0
  train["image"][0, 0, 0, 0] = np.inf
  _, m = step(state0, train, val)
  # The arch step (first, on the val batch) stays finite; the weight step sees the Inf: training
  # loss (bit 2), weight gradient (bit 3) and the updated weights (bit 5).
  assert int(m["nonfinite"]) == 4 + 8 + 32
  m = {k: float(v) for k, v in m.items()}
  assert np.isfinite(m["val_loss"]) and np.isfinite(m["alpha_grad_norm"])
  assert search.describe_nonfinite(int(m["nonfinite"]), m) == "training loss is NaN"


def test_keeps_the_newest_k_and_the_position_bit_for_bit(setup, tmp_path):
  state0, _ = setup
  position = {"step": 5, "nan": float("nan"), "inf": float("-inf"), "none": None,
              "history": [{"alphas": {"cell": np.float32([[0.1, -3e-39], [np.inf, 1 / 3]])},
                           "metrics": {"val_loss": 0.1}}],
              "ints": np.arange(3, dtype=np.int64)}
  ckpts = checkpoint.Checkpoints(tmp_path, keep=3)
  for s in range(1, 6):
    ckpts.save(s, state0, position)
  # A half-written save of a killed process (orbax's temporary name) is not a checkpoint.
  (tmp_path / "6.orbax-checkpoint-tmp-1").mkdir()
  assert ckpts.steps() == [3, 4, 5] and ckpts.latest_step() == 5
  assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["3", "4", "5"]
  _, got = ckpts.restore(_blank(state0), 4)
  ckpts.close()
  assert got["step"] == 5 and np.isnan(got["nan"]) and got["inf"] == -np.inf and got["none"] is None
  a = got["history"][0]["alphas"]["cell"]
  assert a.dtype == np.float32 and a.tobytes() == position["history"][0]["alphas"]["cell"].tobytes()
  assert got["ints"].dtype == np.int64 and got["ints"].tolist() == [0, 1, 2]


def _damage_arrays(path):
  for f in sorted((path / "state").rglob("*")):
    if f.is_file() and f.parent.name == "d":
      f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _flip_bytes(path):
  for f in sorted((path / "state").rglob("*")):
    if f.is_file() and f.parent.name == "d":
      data = bytearray(f.read_bytes())
      data[-9] ^= 0xFF
      f.write_bytes(bytes(data))


def _damage_meta(path):
  (path / "meta" / "metadata").write_text('{"format": 1, "step": ')


@pytest.mark.parametrize("damage", [_damage_arrays, _flip_bytes, _damage_meta])
def test_damaged_checkpoint_is_one_line_naming_it_and_nothing_changes(setup, tmp_path, damage):
  state0, _ = setup
  ckpts = checkpoint.Checkpoints(tmp_path, keep=3)
  ckpts.save(1, state0, {"step": 1})
  ckpts.save(2, state0, {"step": 2})
  damage(ckpts.path(2))
  before = _tree_hashes(tmp_path)
  with pytest.raises(JaxnasError) as info:
    ckpts.restore(_blank(state0))
  message = str(info.value)
  assert "\n" not in message and str(ckpts.path(2)) in message and "damaged" in message
  assert _tree_hashes(tmp_path) == before
  restored, _ = ckpts.restore(_blank(state0), 1)  # the earlier one still restores
  ckpts.close()
  for a, b in zip(_leaves(restored), _leaves(state0), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_checkpoint_of_another_configuration_is_one_line_naming_it(setup, tmp_path):
  state0, _ = setup
  ckpts = checkpoint.Checkpoints(tmp_path)
  ckpts.save(3, state0, {"step": 3})
  before = _tree_hashes(tmp_path)
  wider = state0._replace(alphas={"cell": jnp.zeros((6, 4))})  # another op set
  with pytest.raises(JaxnasError) as info:
    ckpts.restore(wider)
  message = str(info.value)
  assert "\n" not in message and str(ckpts.path(3)) in message
  assert "another configuration" in message and "['cell'] is float64(6, 5) there" in message
  with pytest.raises(JaxnasError, match="no checkpoint .*/7; the checkpoints there are steps 3"):
    ckpts.restore(state0, 7)
  ckpts.close()
  assert _tree_hashes(tmp_path) == before


@pytest.mark.parametrize("name", sorted(methods.METHODS))
def test_every_recipe_rebuilds_from_its_config_json_record(name):
  recipe = methods.get(name)
  record = json.loads(json.dumps(dataclasses.asdict(recipe), default=str))
  assert run._recipe_from_dict(record) == recipe


@pytest.fixture(scope="module")
def dry_run_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("dry") / "run"
  assert cli.main(["search", "--channels", "2", "--cells", "1", "--batch-size", "8", "--steps",
                   "5", "--seed", "3", "--dry-run", "--out", str(out)]) == 0
  return out


@pytest.mark.parametrize("flags,fragment", [
    (["--steps", "9"], "--steps 9 conflicts with the run's config.json (steps = 5)"),
    (["--seed", "4"], "--seed 4 conflicts with the run's config.json (seed = 3)"),
    (["--method", "sdarts-rs"], "--method 'sdarts-rs' conflicts"),
    (["--add-regularizer", "beta-decay:1"], "--add-regularizer ('beta-decay:1',) conflicts"),
])
def test_resume_with_a_conflicting_flag_is_one_line(dry_run_dir, capsys, flags, fragment):
  before = _tree_hashes(dry_run_dir)
  assert cli.main(["search", "--resume", "--out", str(dry_run_dir), *flags]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("jaxnas: error: ") and fragment in err
  assert _tree_hashes(dry_run_dir) == before


def test_resume_config_reads_the_run_and_flags_that_agree_are_accepted(dry_run_dir):
  cfg, recipe = run.resume_config(dry_run_dir)
  assert (cfg.steps, cfg.seed, cfg.channels, cfg.cells, cfg.batch_size) == (5, 3, 2, 1, 8)
  assert cfg.out == str(dry_run_dir) and not cfg.dry_run and recipe == methods.get("darts-1st")
  defaults = run.SearchConfig()
  run.check_resume_flags(cfg, dataclasses.replace(defaults, steps=5, seed=3, keep=7,
                                                  checkpoint_every=2), defaults)


def test_resume_needs_a_run_and_refuses_a_finished_one(dry_run_dir, tmp_path, capsys):
  assert cli.main(["search", "--resume"]) == 2
  assert "--resume needs --out RUN_DIR" in capsys.readouterr().err
  assert cli.main(["search", "--resume", "--out", str(tmp_path / "none")]) == 2
  assert "config.json not found" in capsys.readouterr().err
  finished = tmp_path / "finished"
  finished.mkdir()
  (finished / "config.json").write_text((dry_run_dir / "config.json").read_text())
  (finished / "summary.json").write_text("{}\n")
  assert cli.main(["search", "--resume", "--out", str(finished), "--no-compile-cache"]) == 2
  assert "holds a finished search (summary.json)" in capsys.readouterr().err


def test_save_alphas_writes_the_host_arrays_whole(tmp_path):
  alphas = {"normal": jnp.arange(14 * 8.0).reshape(14, 8), "reduce": -jnp.ones((14, 8))}
  path = run.save_alphas(tmp_path, 7, alphas)
  assert path == tmp_path / "alphas_history" / "step_000007.npz"
  assert [p.name for p in (tmp_path / "alphas_history").iterdir()] == [path.name]  # no partial
  with np.load(path) as f:
    assert sorted(f.files) == ["normal", "reduce"]
    np.testing.assert_array_equal(f["normal"], np.arange(14 * 8.0).reshape(14, 8))
    np.testing.assert_array_equal(f["reduce"], -np.ones((14, 8)))


def test_truncate_metrics_keeps_lines_up_to_the_step_and_drops_a_cut_line(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text("".join(json.dumps({"step": s, "loss": s / 3}) + "\n" for s in range(1, 6))
                  + '{"step": 6, "lo')
  run._truncate_metrics(path, 3)
  assert [json.loads(l)["step"] for l in path.read_text().splitlines()] == [1, 2, 3]


def test_events_file_round_trip_skips_non_curves_and_purges_redone_steps(tmp_path):
  from jaxnas import tb
  writer = tb.ScalarWriter(tmp_path)
  for s in range(1, 5):
    writer.scalars(s, {"train_loss": 1 / s, "lr": 0.025, "hessian_eigenvalue": float("nan"),
                       "step": s, "epoch": 1, "time_s": 0.5, "nonfinite": 0, "flag": True})
  writer.close()
  # A killed process's file stops mid-record: the reader keeps what came before.
  first = tb.event_files(tmp_path)[0]
  first.write_bytes(first.read_bytes() + b"\x40\x00\x00\x00\x00\x00\x00\x00\x01\x02")
  resumed = tb.ScalarWriter(tmp_path, purge_step=3)  # resumed after a checkpoint at step 2
  resumed.scalars(3, {"train_loss": 7.0, "hessian_eigenvalue": 2.5})
  resumed.close()
  assert len(tb.event_files(tmp_path)) == 2
  got = tb.read_scalars(tmp_path)
  assert sorted(got) == ["hessian_eigenvalue", "lr", "train_loss"]
  assert got["train_loss"] == [(1, 1.0), (2, 0.5), (3, 7.0)]  # float32 of 1, 1/2, 7: exact
  assert [s for s, _ in got["lr"]] == [1, 2] and got["hessian_eigenvalue"] == [(3, 2.5)]


# ------------------------------------------------------------------------------------------------
# End to end: SIGKILL part-way, resume, same alphas and genotype as a run never interrupted.

TINY = ["--channels", "2", "--cells", "1", "--batch-size", "8", "--steps", "30",
        "--checkpoint-every", "2", "--seed", "5"]


def _jaxnas(args, env, **kw):
  return subprocess.run([sys.executable, "-m", "jaxnas.cli", "search", *args], env=env,
                        capture_output=True, text=True, **kw)


@pytest.mark.slow
def test_killed_search_resumes_to_bit_identical_alphas(tmp_path):
  env = dict(os.environ, JAXNAS_CACHE_DIR=str(tmp_path / "xla"))
  whole, killed = tmp_path / "whole", tmp_path / "killed"
  done = _jaxnas([*TINY, "--out", str(whole)], env)
  assert done.returncode == 0, done.stderr
  # Same command, killed with SIGKILL as soon as a checkpoint exists.
  proc = subprocess.Popen([sys.executable, "-m", "jaxnas.cli", "search", *TINY, "--out",
                           str(killed)], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  ckpt_dir = killed / "checkpoints"
  while proc.poll() is None and not (ckpt_dir.is_dir() and any(
      p.name.isdigit() for p in ckpt_dir.iterdir())):
    time.sleep(0.01)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL and not (killed / "summary.json").exists()
  saved = sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit())
  assert saved and saved[-1] < 30

  # A damaged newest checkpoint, or one of another configuration: one line, nothing changed.
  for name, spoil in (("damaged", _damage_arrays), ("other", None)):
    copy = tmp_path / name
    subprocess.run(["cp", "-r", str(killed), str(copy)], check=True)
    newest = sorted(int(p.name) for p in (copy / "checkpoints").iterdir() if p.name.isdigit())[-1]
    if spoil is not None:
      spoil(copy / "checkpoints" / str(newest))
    else:
      config = json.loads((copy / "config.json").read_text())
      config["config"]["channels"] = 4
      (copy / "config.json").write_text(json.dumps(config))
    before = _tree_hashes(copy)
    failed = _jaxnas(["--resume", "--out", str(copy)], env)
    assert failed.returncode == 2 and failed.stderr.count("\n") == 1, failed.stderr
    assert str((copy / "checkpoints" / str(newest)).absolute()) in failed.stderr
    assert _tree_hashes(copy) == before

  resumed = _jaxnas(["--resume", "--out", str(killed)], env)
  assert resumed.returncode == 0, resumed.stderr
  assert "resuming from step " in resumed.stdout
  with np.load(whole / "alphas.npz") as a, np.load(killed / "alphas.npz") as b:
    assert a.files == b.files
    for k in a.files:
      np.testing.assert_array_equal(a[k], b[k])
  assert (whole / "genotype.json").read_text() == (killed / "genotype.json").read_text()
  lines = lambda d: [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()]
  strip = lambda ls: [{k: v for k, v in l.items() if k != "time_s"} for l in ls]
  assert strip(lines(killed)) == strip(lines(whole))  # each step once, same numbers
  from jaxnas import tb
  assert [s for s, _ in tb.read_scalars(killed)["alpha_grad_norm"]] == list(range(1, 31))
  assert sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()) == [26, 28, 30]
  # The alphas at the start, each epoch's end and the last step (for jaxnas plot): the same files.
  spe = json.loads((whole / "config.json").read_text())["steps_per_epoch"]
  history = lambda d: sorted(p.name for p in (d / run.ALPHAS_HISTORY).iterdir())
  assert history(whole) == history(killed) == [
      f"step_{s:06d}.npz" for s in sorted({0, *range(spe, 31, spe), 30})]
  for name in history(whole):
    with np.load(whole / run.ALPHAS_HISTORY / name) as a, \
         np.load(killed / run.ALPHAS_HISTORY / name) as b:
      assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)
  with np.load(whole / run.ALPHAS_HISTORY / "step_000030.npz") as a, \
       np.load(whole / "alphas.npz") as b:
    assert all(np.array_equal(a[k], b[k]) for k in b.files)
