"""D-DARTS: per-cell alphas, marginal contributions, the ablation loss, Algorithm 1, recipes.

Answers the code did not compute: index lists worked out by hand, a toy "network of cells" in
NumPy-checkable form whose ablation gradient is checked against jax.jacrev's diagonal blocks and
float64 central differences, the vmapped marginal contributions against n + 1 separate (jitted)
forwards of a tiny supernet. The supernet is compiled once per program here (3 cells, 2 channels,
8×8 inputs); full searches run from the command line in the slow tests.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnas import cli, ddarts, derive, methods, regularize, relax, search, spaces
from jaxnas.errors import JaxnasError

IMAGE = (8, 8, 1)
BATCH = 4
N_CELLS = 3


# --- Algorithm 1, by hand -------------------------------------------------------------------------

# (|C|, n): m = |C| div 3, m2 = 2|C| div 3; stages [0, n div 3), n div 3, (n div 3, 2n div 3),
# 2n div 3, (2n div 3, n). Worked out on paper, cell by cell:
# (8, 14): m=2, m2=5, n/3=4, 2n/3=9: i<4: i mod 2; 4 -> 2; 5..8: (i mod 2)+3; 9 -> 5;
#          10..13: (i mod 2)+6.
# (8, 20): n/3=6, 2n/3=13: 0..5: i mod 2; 6 -> 2; 7..12: (i mod 2)+3; 13 -> 5; 14..19: (i mod 2)+6.
# (6, 14): m=2, m2=4: 0..3: i mod 2; 4 -> 2; 5..8: (i mod 1)+3 = 3; 9 -> 4; 10..13: (i mod 1)+5.
# (8, 8): n <= |C|: c = i.
HAND = {
    (8, 14): (0, 1, 0, 1, 2, 4, 3, 4, 3, 5, 6, 7, 6, 7),
    (8, 20): (0, 1, 0, 1, 0, 1, 2, 4, 3, 4, 3, 4, 3, 5, 6, 7, 6, 7, 6, 7),
    (6, 14): (0, 1, 0, 1, 2, 3, 3, 3, 3, 4, 5, 5, 5, 5),
    (8, 8): (0, 1, 2, 3, 4, 5, 6, 7),
}
# The authors' model.py: first stage (i mod |C|) div 3 instead of i mod (|C| div 3).
HAND_CODE = {
    (8, 14): (0, 0, 0, 1, 2, 4, 3, 4, 3, 5, 6, 7, 6, 7),
    (8, 20): (0, 0, 0, 1, 1, 1, 2, 4, 3, 4, 3, 4, 3, 5, 6, 7, 6, 7, 6, 7),
}


@pytest.mark.parametrize("key", sorted(HAND))
def test_algorithm1_matches_the_hand_worked_index_lists(key):
  assert ddarts.algorithm1_indices(*key) == HAND[key]


@pytest.mark.parametrize("key", sorted(HAND_CODE))
def test_the_authors_code_indexes_the_first_stage_differently(key):
  assert ddarts.code_indices(*key) == HAND_CODE[key]
  differ = [i for i, (a, b) in enumerate(zip(HAND_CODE[key], HAND[key])) if a != b]
  assert differ and max(differ) < key[1] // 3  # only in the first stage


def test_algorithm1_puts_the_searched_reductions_on_the_deeper_networks_reductions():
  for c, n in HAND:
    idx = ddarts.algorithm1_indices(c, n)
    if n > c:
      assert idx[n // 3] == c // 3 and idx[2 * n // 3] == 2 * c // 3


@pytest.mark.parametrize("c, n", [(3, 14), (4, 14), (2, 9), (1, 5)])
def test_algorithm1_refuses_a_zero_modulus_in_one_line(c, n):
  with pytest.raises(JaxnasError, match="undefined") as err:
    ddarts.algorithm1_indices(c, n)
  assert "\n" not in str(err.value)
  assert ddarts.algorithm1_indices(c, c) == tuple(range(c))  # n <= |C| is always defined


@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_algorithm1_refuses_n_below_one(n):
  with pytest.raises(JaxnasError, match="n must be a whole number"):
    ddarts.algorithm1_indices(8, n)


def _cell_genotype(num):
  ops = ("sep_conv_3x3", "skip_connect", "dil_conv_5x5", "max_pool_3x3")
  cells = [[(ops[i % 4], 2, 0), (ops[(i + 1) % 4], 3, 2), (f"sep_conv_{3 + 2 * (i % 2)}x"
            f"{3 + 2 * (i % 2)}", 5, i % 2)] for i in range(num)]
  return ddarts.CellGenotype(cells)


def test_deepen_copies_genes_by_algorithm1_and_moves_the_reductions():
  g = _cell_genotype(8)
  assert g.reductions == (2, 5)
  deep = ddarts.deepen(g, 14)
  assert deep.reductions == (4, 9)
  assert deep.cells == tuple(g.cells[c] for c in HAND[(8, 14)])
  assert ddarts.CellGenotype.from_dict(json.loads(deep.to_json())) == deep
  assert str(deep).startswith("Genotype_nested(genes=[[('")


def test_deepen_refuses_a_shared_genotype():
  g = derive.Genotype(normal=[("skip_connect", 0), ("skip_connect", 1)], normal_concat=[2])
  with pytest.raises(JaxnasError, match="per-cell genotype"):
    ddarts.deepen(g, 14)


# --- per-cell derivation and zero-one -------------------------------------------------------------


def test_derive_cells_applies_the_threshold_rule_to_each_cell():
  w = np.full((3, 14, 8), 0.1)
  w[0, 0, 4] = 0.9  # cell 0: node 2 (edges 0-1) from state 0, sep_conv_3x3
  w[1, 5, 3], w[1, 6, 7] = 0.95, 0.86  # cell 1: node 4 (edges 5-8): states 0 and 1
  w[2, 13, 1] = 0.85  # cell 2: node 5 from state 4, max_pool (exactly at the threshold)
  w[2, 12, 0] = 0.99  # 'none' never competes
  g = derive.derive("ddarts-sparse", {"cells": w})
  assert g.cells == ((("sep_conv_3x3", 2, 0),),
                     (("skip_connect", 4, 0), ("dil_conv_5x5", 4, 1)),
                     (("max_pool_3x3", 5, 4),))
  assert g.reductions == (1, 2)
  w[1, 5, 6] = 0.9  # edge rule: a second op on the same edge is kept
  g = derive.derive("ddarts-edge", {"cells": w})
  assert g.cells[1] == (("skip_connect", 4, 0), ("dil_conv_3x3", 4, 0), ("dil_conv_5x5", 4, 1))


def test_derive_cells_names_the_cell_that_keeps_nothing():
  w = np.full((3, 14, 8), 0.9)
  w[1] = 0.2
  with pytest.raises(JaxnasError, match="^cell 1: "):
    derive.derive("ddarts-sparse", {"cells": w})
  with pytest.raises(JaxnasError, match="cell-sharing none"):
    derive.derive("ddarts-sparse", {"normal": w[0], "reduce": w[0]})


def test_zero_one_per_cell_is_the_sum_of_per_cell_means():
  rng = np.random.default_rng(0)
  a = rng.standard_normal((3, 14, 8))
  s = 1 / (1 + np.exp(-a[..., 1:]))  # 'none' (column 0) left out
  want = -np.sum(np.mean((s - 0.5) ** 2, axis=(1, 2)))
  got = regularize.get("zero-one-cells")({"cells": jnp.asarray(a)}, op_names=derive.DARTS_OPS)
  np.testing.assert_allclose(got, want, rtol=1e-13)
  # each cell's gradient is that of its own mean: d/da (−mean_c) = −2(s − ½)s(1 − s)/(14·7)
  g = jax.grad(lambda x: ddarts.zero_one_per_cell({"cells": x}, op_names=derive.DARTS_OPS))(
      jnp.asarray(a))
  np.testing.assert_allclose(g[..., 1:], -2 * (s - 0.5) * s * (1 - s) / 98, rtol=1e-12)
  np.testing.assert_array_equal(g[..., 0], 0.0)


# --- ablation on a toy network of cells -----------------------------------------------------------
# Cell i maps x to tanh(Σ_k m[i, e, k] A[i, e, k] x) summed over e (gated: g·cell + (1 − g)·x); the
# loss is a softmax cross-entropy of a fixed readout. Everything a search supernet does to the
# mixing weights, in a few lines, so jacrev and finite differences are cheap.

TOY_N, TOY_E, TOY_K, TOY_D = 4, 2, 3, 5


def _toy_setup():
  rng = np.random.default_rng(1)
  w = {"A": jnp.asarray(rng.standard_normal((TOY_N, TOY_E, TOY_K, TOY_D, TOY_D)) / 2),
       "R": jnp.asarray(rng.standard_normal((TOY_D, 3)))}
  batch = {"x": jnp.asarray(rng.standard_normal((6, TOY_D))),
           "y": jnp.asarray(rng.integers(0, 3, 6))}
  alphas = {"cells": jnp.asarray(rng.standard_normal((TOY_N, TOY_E, TOY_K)))}
  return w, batch, alphas


def _toy_loss(w, mixing, batch, key):
  del key
  x = batch["x"]
  gates = mixing.get("gates", jnp.ones(TOY_N))
  for i in range(TOY_N):
    h = jnp.tanh(jnp.einsum("ek,ekij,bj->bi", mixing["cells"][i], w["A"][i], x))
    x = gates[i] * h + (1 - gates[i]) * x
  logits = x @ w["R"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean(), {}


def _toy_relax(alphas, key):
  del key
  return jax.tree.map(jax.nn.sigmoid, alphas)


@pytest.mark.parametrize("mode", ["zero", "identity", "random"])
def test_marginal_contributions_equal_separate_forwards_on_the_toy(mode):
  w, batch, alphas = _toy_setup()
  key = jax.random.key(3)
  mixing = _toy_relax(alphas, None)
  mc, losses = ddarts.marginal_contributions(_toy_loss, w, mixing, batch, key, deactivate=mode)
  full = float(_toy_loss(w, mixing, batch, None)[0])
  noise = np.asarray(jax.random.uniform(jax.random.fold_in(key, 1),
                                        (TOY_N + 1, TOY_N, TOY_E, TOY_K), jnp.float64))
  for i in range(TOY_N):
    m = {"cells": np.array(mixing["cells"])}
    if mode == "zero":
      m["cells"][i] = 0.0
    elif mode == "random":
      m["cells"][i] = noise[i + 1, i]
    else:
      m["gates"] = np.where(np.arange(TOY_N) == i, 0.0, 1.0)
    without = float(_toy_loss(w, jax.tree.map(jnp.asarray, m), batch, None)[0])
    np.testing.assert_allclose(mc[i], full - without, rtol=1e-12)
  np.testing.assert_allclose(losses[0], full, rtol=1e-13)


def test_ablation_terms_by_hand():
  np.testing.assert_allclose(ddarts.ablation_terms(jnp.array([1.0, 2.0, 3.0])),
                             [1.0 / 2.0, 0.0, -1.0 / 2.0])  # mean 2: −(M − 2)/2
  np.testing.assert_array_equal(ddarts.ablation_terms(jnp.array([1.0, -1.0])), [0.0, 0.0])


@pytest.mark.parametrize("mode", ["zero", "identity", "random"])
def test_ablation_gradient_is_each_cells_own_block_of_the_jacobian(mode):
  w, batch, alphas = _toy_setup()
  key = jax.random.key(5)

  def terms(a):
    mc, _ = ddarts.marginal_contributions(_toy_loss, w, _toy_relax(a, key), batch, key,
                                          deactivate=mode)
    return ddarts.ablation_terms(mc)

  jac = jax.jacrev(lambda c: terms({"cells": c}))(alphas["cells"])  # (n, n, E, K)
  want = np.stack([jac[c, c] for c in range(TOY_N)])
  got_terms, _, grad = ddarts.ablation_gradient(_toy_loss, _toy_relax, w, alphas, batch, key,
                                                deactivate=mode)
  np.testing.assert_allclose(got_terms, terms(alphas), rtol=1e-12)
  np.testing.assert_allclose(grad["cells"], want, rtol=1e-9, atol=1e-12)
  # and a float64 central difference for one entry of cell 2's own term
  h, idx = 1e-6, (2, 1, 0)
  e = np.zeros(alphas["cells"].shape)
  e[idx] = h
  fd = (terms({"cells": alphas["cells"] + e})[2] - terms({"cells": alphas["cells"] - e})[2]) / (2 * h)
  np.testing.assert_allclose(grad["cells"][idx], fd, rtol=1e-6)


def test_ablation_loss_constant_has_no_gradient_and_grad_version_has_the_blocks():
  w, batch, alphas = _toy_setup()
  key = jax.random.key(7)
  kw = dict(mixing_loss=_toy_loss, relaxation=_toy_relax)
  args = (None, None, w)
  fn_const = regularize.get("ddarts-ablation-zero")
  fn_grad = regularize.get("ddarts-ablation-grad-zero")
  v, g = jax.value_and_grad(lambda a: fn_const(*args, a, None, batch, key, **kw))(alphas)
  np.testing.assert_array_equal(g["cells"], 0.0)
  terms, _, want = ddarts.ablation_gradient(_toy_loss, _toy_relax, w, alphas, batch, key,
                                            deactivate="zero")
  np.testing.assert_allclose(v, np.mean(np.abs(terms)), rtol=1e-13)
  v2, g2 = jax.value_and_grad(lambda a: fn_grad(*args, a, None, batch, key, **kw))(alphas)
  np.testing.assert_allclose(v2, v, rtol=1e-13)
  np.testing.assert_allclose(g2["cells"], want["cells"], rtol=1e-13)
  with pytest.raises(JaxnasError, match="recipe regulariser"):
    fn_const(*args, alphas, None, batch, key)


# --- the supernet with per-cell alphas ------------------------------------------------------------


@pytest.fixture(scope="module")
def supernet():
  model = spaces.get("darts", channels=2, num_cells=N_CELLS, num_classes=10,
                     cell_sharing="none", dtype=jnp.float64)
  alphas = model.init_alphas(jax.random.key(0))
  alphas = {"cells": alphas["cells"] + 0.5 * jax.random.normal(jax.random.key(1),
                                                               alphas["cells"].shape)}
  weights, stats = search.init_variables(model, jax.random.key(2), IMAGE, alphas,
                                         relaxation=relax.sigmoid)
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.standard_normal((BATCH,) + IMAGE)),
           "label": jnp.asarray(rng.integers(0, 10, BATCH).astype(np.int32))}
  mixing_loss = search.make_mixing_loss(model, stats)
  one = jax.jit(lambda m: mixing_loss(weights, m, batch, None)[0])
  return model, alphas, weights, stats, batch, mixing_loss, one


def test_per_cell_alphas_have_one_row_per_cell_and_start_at_zero():
  model = spaces.get("darts", channels=2, num_cells=5, cell_sharing="none")
  assert model.alpha_shapes() == {"cells": (5, 14, 8)}
  np.testing.assert_array_equal(model.init_alphas(jax.random.key(0))["cells"], 0.0)


def test_each_cell_reads_its_own_row(supernet):
  model, alphas, weights, stats, batch, _, one = supernet
  mixing = relax.sigmoid(alphas, op_names=model.op_names)
  base = float(one(mixing))
  for i in range(N_CELLS):  # changing row i changes the loss; all rows equal = shared alphas
    moved = {"cells": mixing["cells"].at[i].multiply(0.5)}
    assert abs(float(one(moved)) - base) > 1e-6


def test_vmapped_marginal_contributions_equal_separate_forwards(supernet):
  """One vmapped pass (jitted once) against n + 1 separate jitted forwards."""
  model, alphas, weights, stats, batch, mixing_loss, one = supernet
  mixing = relax.sigmoid(alphas, op_names=model.op_names)
  key = jax.random.key(4)
  mc, losses = jax.jit(lambda m, k: ddarts.marginal_contributions(
      mixing_loss, weights, m, batch, k, deactivate="random"))(mixing, key)
  stack = ddarts.deactivated_mixing(mixing, jax.random.fold_in(key, 1), deactivate="random")
  separate = np.asarray([float(one({"cells": stack["cells"][j]})) for j in range(N_CELLS + 1)])
  np.testing.assert_allclose(losses, separate, rtol=1e-10)
  np.testing.assert_allclose(mc, separate[0] - separate[1:], rtol=1e-9)
  # With 3 cells, cell 0 changes shape (stem 3C -> 4C) and cells 1, 2 reduce: no identity exists,
  # so a gate of 0 (the identity deactivation) gives the zero cell, all mixing weights 0.
  for i in range(N_CELLS):
    gates = jnp.ones(N_CELLS).at[i].set(0.0)
    np.testing.assert_allclose(float(one({**mixing, "gates": gates})),
                               float(one({"cells": mixing["cells"].at[i].set(0.0)})), rtol=1e-12)


def test_supernet_reads_first_cells_and_first_gates_at_first_positions(supernet):
  """Without init_genotype every position is its row's first: "first_cells" replaces "cells"
  everywhere, and "first_gates" of 1 change nothing (one more compile)."""
  model, alphas, _, _, _, _, one = supernet
  mixing = relax.sigmoid(alphas, op_names=model.op_names)
  other = {"cells": mixing["cells"] * 0.5, "first_cells": mixing["cells"],
           "first_gates": jnp.ones(N_CELLS)}
  np.testing.assert_allclose(float(one(other)), float(one(mixing)), rtol=1e-12)


# --- recipes and the command line -----------------------------------------------------------------


def test_d_darts_recipe_has_the_papers_defaults():
  r = methods.get("d-darts")
  assert {(x.name, x.weight) for x in r.regularizers} == {("zero-one-cells", 8.0),
                                                          ("ddarts-ablation", 0.5)}
  assert r.relaxation == "sigmoid" and r.derivation == "ddarts-sparse"
  assert dict(r.space_options) == {"cell_sharing": "none"}


@pytest.mark.parametrize("argv, message", [
    (["search", "--method", "d-darts", "--dry-run"], "add --space darts"),
    (["search", "--space", "nb201", "--cell-sharing", "none", "--dry-run"], "--space darts"),
    (["search", "--space", "darts", "--cell-sharing", "each", "--dry-run"], "invalid choice"),
])
def test_bad_input_is_one_line(argv, message, capsys, tmp_path):
  assert cli.main(argv + ["--out", str(tmp_path / "run")]) == 2
  err = capsys.readouterr().err
  assert message in err and err.count("\n") == 1


def _fake_run(tmp_path, alphas, cells):
  run = tmp_path / "run"
  run.mkdir()
  (run / "config.json").write_text(json.dumps({
      "config": {"space": "darts"}, "space_config": {"num_cells": cells},
      "recipe": {"name": "d-darts", "description": "", "relaxation": "sigmoid",
                 "derivation": "ddarts-sparse", "space_options": [["cell_sharing", "none"]]}}))
  np.savez(run / "alphas.npz", cells=alphas)
  return run


def test_derive_cells_n_from_the_command_line(tmp_path, capsys):
  a = np.full((8, 14, 8), -3.0)
  for c in range(8):
    a[c, c % 14, 4 + c % 4] = 4.0  # one kept op per cell, a different one per cell
  run = _fake_run(tmp_path, a, 8)
  assert cli.main(["derive", str(run), "--cells", "14"]) == 0
  deep = ddarts.CellGenotype.load(run / "genotype-14cells.json")
  searched = ddarts.CellGenotype.load(run / "genotype.json") if (run / "genotype.json").exists() \
      else derive.derive("ddarts-sparse", {"cells": 1 / (1 + np.exp(-a))})
  assert deep.cells == tuple(searched.cells[c] for c in HAND[(8, 14)])
  assert deep.reductions == (4, 9)
  capsys.readouterr()
  for n, message in ((0, "n must be a whole number ≥ 1"),):
    assert cli.main(["derive", str(run), "--cells", str(n)]) == 2
    assert message in capsys.readouterr().err


def test_derive_cells_refuses_a_genotype_whose_cell_count_does_not_fit(tmp_path, capsys):
  run = _fake_run(tmp_path, np.zeros((3, 14, 8)), 8)  # 3 rows of alphas, 8 cells in the run
  assert cli.main(["derive", str(run), "--cells", "14"]) == 2
  err = capsys.readouterr().err
  assert "alphas['cells'] has shape (3, 14, 8)" in err and err.count("\n") == 1


@pytest.mark.slow
def test_d_darts_runs_three_steps_from_the_command_line(tmp_path):
  argv = ["search", "--space", "darts", "--method", "d-darts", "--steps", "3", "--batch-size", "8",
          "--channels", "2", "--cells", "3", "--out", str(tmp_path / "run"),
          "--no-compile-cache"]
  assert cli.main(argv) == 0
  lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert len(lines) == 3
  assert lines[-1]["reg/ddarts-ablation/weight"] == 0.5
  assert lines[-1]["reg/zero-one-cells/weight"] == 8.0
  with np.load(tmp_path / "run" / "alphas.npz") as f:
    assert f["cells"].shape == (3, 14, 8)


# --- DARTOpti encodings (data only) ---------------------------------------------------------------


def test_dartopti_op_set_is_darts_without_none_plus_five():
  from jaxnas.spaces import dartopti_ops as do
  assert len(do.DARTOPTI_OPS) == 12
  assert set(do.DARTOPTI_OPS) - set(derive.DARTS_OPS) == {
      "conv_3x1_1x3", "conv_7x1_1x7", "simple_conv_1x1", "simple_conv_3x3", "bottleneck_1x3x1"}
  assert set(derive.DARTS_OPS) - set(do.DARTOPTI_OPS) == {"none"}


def test_resnet18_alphas_by_hand():
  from jaxnas.spaces import dartopti_ops as do
  a = do.genotype_alphas(do.handmade("resnet18"))
  assert a.shape == (1, 14, 12)
  conv, skip = do.DARTOPTI_OPS.index("simple_conv_3x3"), do.DARTOPTI_OPS.index("skip_connect")
  # rows: node 2 = 0-1, node 3 = 2-4, node 4 = 5-8, node 5 = 9-13; (node, src) -> row
  want = np.zeros((14, 12))
  for row, op in ((0, conv), (4, conv), (2, skip), (8, conv), (13, conv), (12, skip)):
    want[row, op] = 10.0
  np.testing.assert_array_equal(a[0], want)
  r50 = do.genotype_alphas(do.handmade("resnet50"))
  assert r50.shape == (3, 27, 12)  # six nodes: 2+3+4+5+6+7 edges
  assert [int((c == 10).sum()) for c in r50] == [6, 8, 12]
  with pytest.raises(JaxnasError, match="unknown hand-made network 'vgg'"):
    do.handmade("vgg")


# --- the authors' reading: only a distinct cell's first position is switched off ------------------
# A toy network of 5 positions over 3 alpha rows (seq 0 1 0 2 1, as a DARTOpti network shares rows
# between positions); first positions are 0, 1 and 3.

SEQ = (0, 1, 0, 2, 1)
FIRST = (True, True, False, True, False)
G = 3


def _seq_setup():
  rng = np.random.default_rng(2)
  w = {"A": jnp.asarray(rng.standard_normal((len(SEQ), TOY_E, TOY_K, TOY_D, TOY_D)) / 2),
       "R": jnp.asarray(rng.standard_normal((TOY_D, 3)))}
  batch = {"x": jnp.asarray(rng.standard_normal((6, TOY_D))),
           "y": jnp.asarray(rng.integers(0, 3, 6))}
  return w, batch, {"cells": jnp.asarray(rng.standard_normal((G, TOY_E, TOY_K)))}


def _seq_loss(w, mixing, batch, key):
  """Position p mixes with row SEQ[p] ("first_cells"' row at a first position, if given)."""
  del key
  x = batch["x"]
  for p, r in enumerate(SEQ):
    rows = mixing["first_cells"] if FIRST[p] and "first_cells" in mixing else mixing["cells"]
    h = jnp.tanh(jnp.einsum("ek,ekij,bj->bi", rows[r], w["A"][p], x))
    for name in ("gates",) + (("first_gates",) if FIRST[p] else ()):
      if name in mixing:
        h = mixing[name][r] * h + (1 - mixing[name][r]) * x
    x = h
  return optax.softmax_cross_entropy_with_integer_labels(x @ w["R"], batch["y"]).mean(), {}


@pytest.mark.parametrize("mode", ["zero", "identity", "random"])
def test_first_position_ablation_equals_separate_forwards(mode):
  """M_i by hand: position FIRST-of-row-i alone gets zero weights / random weights / gate 0; the
  row's later positions (2 for row 0, 4 for row 1) keep the learned weights."""
  w, batch, alphas = _seq_setup()
  key = jax.random.key(4)
  mixing = _toy_relax(alphas, None)
  mc, losses = ddarts.marginal_contributions(_seq_loss, w, mixing, batch, key, deactivate=mode,
                                             positions="first")
  mc_all, _ = ddarts.marginal_contributions(_seq_loss, w, mixing, batch, key, deactivate=mode)
  full = float(_seq_loss(w, mixing, batch, None)[0])
  noise = np.asarray(jax.random.uniform(jax.random.fold_in(key, 1), (G + 1, G, TOY_E, TOY_K),
                                        jnp.float64))
  for i in range(G):
    first = np.array(mixing["cells"])
    m = {"cells": mixing["cells"]}
    if mode == "identity":
      m["first_gates"] = jnp.asarray(np.where(np.arange(G) == i, 0.0, 1.0))
    else:
      first[i] = 0.0 if mode == "zero" else noise[i + 1, i]
      m["first_cells"] = jnp.asarray(first)
    without = float(_seq_loss(w, m, batch, None)[0])
    np.testing.assert_allclose(mc[i], full - without, rtol=1e-12)
  np.testing.assert_allclose(losses[0], full, rtol=1e-13)
  if mode != "zero":  # (a zero position zeroes all that follows in this toy: the same M)
    assert not np.allclose(mc[:2], mc_all[:2])  # rows 0 and 1 have a second position: they differ
  np.testing.assert_allclose(mc[2], mc_all[2], rtol=1e-12)  # row 2 has one position only


@pytest.mark.parametrize("mode", ["random"])
def test_first_position_ablation_gradient_is_the_jacobians_own_blocks(mode):
  w, batch, alphas = _seq_setup()
  key = jax.random.key(6)

  def terms(c):
    mc, _ = ddarts.marginal_contributions(_seq_loss, w, _toy_relax({"cells": c}, key), batch, key,
                                          deactivate=mode, positions="first")
    return ddarts.ablation_terms(mc)

  jac = jax.jacrev(terms)(alphas["cells"])  # (G, G, E, K)
  _, _, grad = ddarts.ablation_gradient(_seq_loss, _toy_relax, w, alphas, batch, key,
                                        deactivate=mode, positions="first")
  np.testing.assert_allclose(grad["cells"], np.stack([jac[c, c] for c in range(G)]), rtol=1e-9,
                             atol=1e-12)
  _, _, grad_all = ddarts.ablation_gradient(_seq_loss, _toy_relax, w, alphas, batch, key,
                                            deactivate=mode)
  assert not np.allclose(grad_all["cells"], grad["cells"])  # the two-product formula would be off
  assert "ddarts-ablation-grad-zero-first" in regularize.LOSS_REGULARIZERS
