"""Tests for ``jaxnas plot``: on run directories the tests write by hand (no search is compiled)."""

import itertools
import json
import math

import numpy as np
import pytest

from jaxnas import cli, derive, genotypes, plots
from jaxnas.errors import JaxnasError


def _config(space, recipe="darts-1st", relaxation="softmax"):
  return {"config": {"space": space}, "steps_per_epoch": 4, "dataset": {"name": "digits"},
          "recipe": {"name": recipe, "relaxation": relaxation, "relaxation_options": []}}


def _write_run(root, space, *, shapes, genotype, trajectory=True, relaxation="softmax",
               history=False):
  """A finished run directory as jaxnas.run writes it: config, metrics, alphas, genotype, and
  snapshots."""
  root.mkdir()
  (root / "config.json").write_text(json.dumps(_config(space, relaxation=relaxation)))
  rng = np.random.default_rng(0)
  start = {k: rng.normal(size=s) * 1e-3 for k, s in shapes.items()}
  drift = {k: rng.normal(size=s) * 0.05 for k, s in shapes.items()}
  with open(root / "metrics.jsonl", "w") as f:
    for step in range(1, 13):
      f.write(json.dumps({"step": step, "epoch": (step + 3) // 4, "train_loss": 2.3 / step,
                          "val_loss": 2.4 / step, "train_accuracy": step / 13,
                          "val_accuracy": step / 14}) + "\n")
  if trajectory:
    (root / "trajectory").mkdir()
    for step in (2, 4, 6, 8, 10, 12):
      arrays = {f"alphas/{k}": start[k] + step * drift[k] for k in shapes}
      np.savez(root / "trajectory" / f"step_{step:06d}.npz", step=np.int64(step),
               **{"weights/dense/kernel": np.zeros((2, 2))}, **arrays)
  if history:  # what run_search saves at its start and each epoch's end (4 steps)
    (root / "alphas_history").mkdir()
    for step in (0, 4, 8, 12):
      np.savez(root / "alphas_history" / f"step_{step:06d}.npz",
               **{k: start[k] + step * drift[k] for k in shapes})
  np.savez(root / "alphas.npz", **{k: start[k] + 12 * drift[k] for k in shapes})
  genotype.save(root)
  return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  base = tmp_path_factory.mktemp("runs")
  nb201 = _write_run(base / "nb201", "nb201", shapes={"cell": (6, 5)},
                     genotype=derive.genotype_from_nb201_string(
                         "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|avg_pool_3x3~0|"
                         "nor_conv_1x1~1|skip_connect~2|"))
  darts = _write_run(base / "darts", "darts", shapes={"normal": (14, 8), "reduce": (14, 8)},
                     genotype=genotypes.get("DARTS_V2"), trajectory=False)
  return {"nb201": nb201, "darts": darts}


@pytest.fixture(scope="module")
def plotted(runs):
  """Runs ``jaxnas plot`` once per run directory; returns its exit codes and stdout."""
  import contextlib
  import io
  out = {}
  for name, run in runs.items():
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
      code = cli.main(["plot", str(run)])
    out[name] = (code, buf.getvalue())
  return out


def _check_png(path):
  import matplotlib.image
  assert path.is_file(), path
  assert path.stat().st_size > 15_000, (path, path.stat().st_size)
  image = matplotlib.image.imread(path)
  assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300
  rgb = (image[..., :3] * 255).round().astype(np.int64)
  colours = np.unique(rgb[..., 0] * 65536 + rgb[..., 1] * 256 + rgb[..., 2])
  assert len(colours) >= 20, (path, len(colours))  # lines, fills and text, not a blank canvas


def test_plot_draws_every_figure_of_a_run_with_snapshots(runs, plotted):
  code, stdout = plotted["nb201"]
  assert code == 0
  names = ["mixing_cell.png", "mixing_final.png", "genotype_cell.png", "curves.png"]
  for name in names:
    _check_png(runs["nb201"] / "plots" / name)
    assert f"wrote {runs['nb201'] / 'plots' / name}" in stdout
  assert "note:" not in stdout


def test_plot_without_snapshots_draws_what_exists_and_says_so(runs, plotted):
  code, stdout = plotted["darts"]
  assert code == 0
  for name in ["mixing_final.png", "genotype_normal.png", "genotype_reduce.png", "curves.png"]:
    _check_png(runs["darts"] / "plots" / name)
  assert not (runs["darts"] / "plots" / "mixing_normal.png").exists()
  assert "note: no per-step alphas" in stdout and "--save-trajectory N" in stdout


def _write_train_run(root, genotype):
  """A ``jaxnas train`` run directory as jaxnas.train writes it (config, metrics), by hand."""
  root.mkdir()
  config = {"config": {"genotype": "DARTS_V2", "dataset": "digits", "epochs": 3},
            "genotype": genotype.to_dict(), "dataset": {"name": "digits"}, "steps_per_epoch": 4}
  (root / "config.json").write_text(json.dumps(config))
  with open(root / "metrics.jsonl", "w") as f:
    for step in range(1, 13):
      f.write(json.dumps({"step": step, "epoch": (step + 3) // 4, "train_loss": 2.3 / step,
                          "train_ce": 2.2 / step, "train_accuracy": step / 13,
                          "lr": 0.025 * (1 + math.cos(math.pi * ((step - 1) // 4) / 3)) / 2,
                          "drop_prob": 0.2 * ((step - 1) // 4) / 3, "nonfinite": 0}) + "\n")
      if step % 4 == 0:
        f.write(json.dumps({"epoch": step // 4, "step": step, "test_loss": 2.0 / step,
                            "test_accuracy": step / 15}) + "\n")
  return root


def test_plot_of_a_train_run_draws_its_cells_and_curves(tmp_path, capsys):
  run = _write_train_run(tmp_path / "train", genotypes.get("DARTS_V2"))
  assert cli.main(["plot", str(run)]) == 0
  stdout = capsys.readouterr().out
  for name in ["genotype_normal.png", "genotype_reduce.png", "curves.png"]:
    _check_png(run / "plots" / name)
    assert f"wrote {run / 'plots' / name}" in stdout
  assert not (run / "plots" / "mixing_final.png").exists() and "note:" not in stdout
  nb201 = _write_train_run(tmp_path / "nb201", genotypes.get("NB201_RESNET"))
  assert cli.main(["plot", str(nb201)]) == 0
  _check_png(nb201 / "plots" / "genotype_cell.png")


def test_train_series_keeps_the_finite_values_at_their_steps():
  rows = [{"step": 1, "train_ce": 2.0}, {"step": 2, "train_ce": float("nan")},
          {"step": 3, "test_accuracy": 0.5}, {"step": 4, "train_ce": 1.5, "lr": True},
          {"step": 4, "test_accuracy": 0.75}]
  steps, values = plots.train_series(rows, "train_ce")
  assert steps.tolist() == [1, 4] and values.tolist() == [2.0, 1.5]
  steps, values = plots.train_series(rows, "test_accuracy")
  assert steps.tolist() == [3, 4] and values.tolist() == [0.5, 0.75]
  assert plots.train_series(rows, "lr")[0].size == 0  # a bool is not a number


def test_plot_of_a_seeds_output_draws_every_seed(tmp_path, capsys):
  root = tmp_path / "seeds"
  root.mkdir()
  for s in (0, 1):
    _write_run(root / f"seed-{s}", "nb201", shapes={"cell": (6, 5)}, trajectory=False,
               genotype=derive.genotype_from_nb201_string(
                   "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|avg_pool_3x3~0|"
                   "nor_conv_1x1~1|skip_connect~2|"))
  (root / "summary.json").write_text("{}")
  assert cli.main(["plot", str(root)]) == 0
  stdout = capsys.readouterr().out
  for s in (0, 1):
    for name in ["mixing_final.png", "genotype_cell.png", "curves.png"]:
      assert f"wrote {root / f'seed-{s}' / 'plots' / name}" in stdout
      assert (root / f"seed-{s}" / "plots" / name).stat().st_size > 15_000


def test_without_snapshots_the_epoch_alphas_draw_the_mixing_over_the_search(tmp_path, capsys,
                                                                            monkeypatch):
  drawn = []
  plot = plots.plot_mixing_trajectory
  monkeypatch.setattr(plots, "plot_mixing_trajectory",
                      lambda steps, mixings, cell, **k: drawn.append((steps, mixings, cell))
                      or plot(steps, mixings, cell, **k))
  run = _write_run(tmp_path / "run", "darts", shapes={"normal": (14, 8), "reduce": (14, 8)},
                   genotype=genotypes.get("DARTS_V2"), trajectory=False, history=True)
  assert cli.main(["plot", str(run)]) == 0
  stdout = capsys.readouterr().out
  assert "note: mixing weights over the search from the alphas at each epoch's end" in stdout
  assert [cell for _, _, cell in drawn] == ["normal", "reduce"]
  steps, mixings, _ = drawn[0]
  assert list(steps) == [0, 4, 8, 12]
  with np.load(run / "alphas_history" / "step_000008.npz") as f:
    a = f["reduce"]
  softmax = np.exp(a) / np.exp(a).sum(-1, keepdims=True)  # DARTS' relaxation, by hand
  np.testing.assert_allclose(mixings[2]["reduce"], softmax, rtol=1e-12)
  for cell in ("normal", "reduce"):
    _check_png(run / "plots" / f"mixing_{cell}.png")


def test_mixing_weights_are_the_runs_relaxation_of_the_alphas(tmp_path):
  alphas = {"normal": np.linspace(-1, 1, 14 * 8).reshape(14, 8)}
  alphas["reduce"] = -alphas["normal"]
  for relaxation, want in (
      ("softmax", lambda a: np.exp(a) / np.exp(a).sum(axis=1, keepdims=True)),
      ("sigmoid", lambda a: np.where(np.arange(8) == 0, 0.0, 1 / (1 + np.exp(-a))))):  # no none
    run = tmp_path / relaxation
    run.mkdir()
    (run / "config.json").write_text(json.dumps(_config("darts", relaxation=relaxation)))
    got = plots._relaxation(plots._read_run(run))(alphas)
    for k in alphas:
      np.testing.assert_allclose(got[k], want(alphas[k]), rtol=1e-6)


def test_cell_graph_of_darts_v2_and_of_a_fairdarts_cell():
  g = plots.cell_graph(genotypes.get("DARTS_V2"), "normal")
  ops = [e for e in g.edges if e[0] is not None]
  # DARTS V2 normal: node 0 <- sep(c_{k-2}), sep(c_{k-1}); ...; node 3 <- skip(c_{k-2}), dil(0).
  assert ops[:2] == [("sep_conv_3x3", 0, 2), ("sep_conv_3x3", 1, 2)]
  assert ops[-2:] == [("skip_connect", 0, 5), ("dil_conv_3x3", 2, 5)]
  assert [e for e in g.edges if e[0] is None] == [(None, s, -1) for s in (2, 3, 4, 5)]
  pos = plots.layout_cell(g, dx=1.0, dy=1.0)
  # Layers by hand: inputs 0; nodes 0, 1, 2 read only inputs (1); node 3 reads node 0 (2);
  # output 3. The first gap is 1.35 dx wide.
  assert {s: pos[s][0] for s in pos} == {0: 0.0, 1: 0.0, 2: 1.35, 3: 1.35, 4: 1.35, 5: 2.35,
                                         -1: 3.35}
  assert pos[0][1] > pos[1][1] and pos[2][1] > pos[3][1] > pos[4][1]
  fair = derive.Genotype(normal=[("sep_conv_3x3", 2, 0), ("skip_connect", 4, 1)],
                         normal_concat=[2, 3, 4, 5], reduce=[("max_pool_3x3", 2, 0)],
                         reduce_concat=[2, 3, 4, 5])
  g = plots.cell_graph(fair, "normal")
  assert sorted(s for s, _, _ in g.nodes) == [-1, 0, 1, 2, 4]  # nodes 1 and 3 have no input
  assert (None, 3, -1) not in g.edges and (None, 4, -1) in g.edges


_DRAWN_BY_DEFAULT = ("DARTS_V2", "FAIRDARTS_C", "NB201_RESNET")  # pairs, triples, NB201


@pytest.mark.parametrize("name", [
    n if n in _DRAWN_BY_DEFAULT else pytest.param(n, marks=pytest.mark.slow)
    for n in sorted(genotypes.GENOTYPES)])
def test_cell_drawings_have_no_overlapping_labels(name):
  genotype = genotypes.get(name)
  for cell in ("normal",) if genotype.space == "nb201" else ("normal", "reduce"):
    _, boxes = plots.draw_cell(genotype, cell)
    labels, nodes = boxes["labels"], boxes["nodes"]
    assert len(labels) == sum(1 for op, _, _ in plots.cell_graph(genotype, cell).edges if op)
    for a, b in itertools.combinations(labels, 2):
      assert plots._area(a, b) == 0, (name, cell, a, b)
    for a in labels:
      assert all(plots._area(a, n) == 0 for n in nodes), (name, cell, a)


def _fails_in_one_line(argv, capsys, match):
  code = cli.main(argv)
  err = capsys.readouterr().err
  assert code == 2 and err.startswith("jaxnas: error: ") and err.count("\n") == 1, err
  assert match in err, err


def test_a_missing_run_directory_is_one_line(tmp_path, capsys):
  _fails_in_one_line(["plot", str(tmp_path / "nope")], capsys, "not found")


def test_a_corrupt_config_is_one_line(tmp_path, capsys):
  (tmp_path / "config.json").write_text("{not json")
  _fails_in_one_line(["plot", str(tmp_path)], capsys, "is not a jaxnas config.json")


def test_corrupt_alphas_and_metrics_are_one_line(tmp_path, capsys):
  (tmp_path / "config.json").write_text(json.dumps(_config("nb201")))
  (tmp_path / "alphas.npz").write_bytes(b"garbage")
  _fails_in_one_line(["plot", str(tmp_path)], capsys, "alphas.npz cannot be read")
  (tmp_path / "alphas.npz").unlink()
  (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{broken\n')
  _fails_in_one_line(["plot", str(tmp_path)], capsys, "line 2 of")


def test_a_run_with_nothing_to_plot_is_one_line(tmp_path, capsys):
  (tmp_path / "config.json").write_text(json.dumps(_config("nb201")))
  _fails_in_one_line(["plot", str(tmp_path)], capsys, "nothing to plot")


def test_library_error_is_a_jaxnas_error(tmp_path):
  with pytest.raises(JaxnasError, match="config.json not found"):
    plots.plot_run(tmp_path)


def test_only_edge_by_operation_tables_are_drawn():
  mixing = {"normal": np.zeros((14, 8)), "normal_edges": np.zeros(14),
            "cells": np.arange(3 * 14 * 8.0).reshape(3, 14, 8)}
  tables, skipped = plots._cell_tables(mixing, 8)
  assert list(tables) == ["normal", "cells_0", "cells_1", "cells_2"] and skipped == ["normal_edges"]
  np.testing.assert_array_equal(tables["cells_2"], mixing["cells"][2])
