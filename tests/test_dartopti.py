"""DARTOpti (D-DARTS §4.4): the 12-op set S_o, the ResNet-18 genotype as a supernet, the recipe.

Oracles: per-edge convolutions written here with ``lax.conv_general_dilated`` and a batch norm
written here (not the supernet's grouped code), a plain ResNet-18-style network written here from
the supernet's own weights, parameter counts worked out by hand, and the one-line errors.
"""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxnas import methods, run
from jaxnas.errors import JaxnasError
from jaxnas.spaces import DartsSearchNetwork
from jaxnas.spaces.dartopti import DartoptiEdgeGroup
from jaxnas.spaces.darts import DartsCell
from jaxnas.spaces.dartopti_ops import DARTOPTI_OPS, genotype_alphas, handmade

F64 = jnp.float64
NEW_OPS = ("conv_3x1_1x3", "conv_7x1_1x7", "simple_conv_1x1", "simple_conv_3x3",
           "bottleneck_1x3x1")


# ---------------------------------------------------------------------------------- oracles ---

def _conv(x, k, stride=(1, 1), pad=((0, 0), (0, 0))):
  """One plain conv, NHWC / HWIO."""
  return lax.conv_general_dilated(x, k, stride, pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _bn(y):
  """Train-mode affine-free batch norm: batch mean, biased variance, eps 1e-5 (PyTorch)."""
  m = jnp.mean(y, axis=(0, 1, 2))
  v = jnp.mean((y - m) ** 2, axis=(0, 1, 2))
  return (y - m) / jnp.sqrt(v + 1e-5)


def _fr(x, k1, k2):
  """FactorizedReduce: ReLU, two 1×1 stride-2 convs (the second shifted one pixel), concat, BN."""
  r = jax.nn.relu(x)
  return _bn(jnp.concatenate([r[:, ::2, ::2] @ k1, r[:, 1::2, 1::2] @ k2], axis=-1))


def _new_op(op, x, p, e, s):
  """Edge ``e`` of one new op of S_o, written as the authors' ``operations.py`` sequence."""
  r = jax.nn.relu(x)
  if op in ("conv_3x1_1x3", "conv_7x1_1x7"):
    k = 3 if op == "conv_3x1_1x3" else 7
    y = _conv(r, p[f"rect{k}_1xk"][e], (1, s), ((0, 0), (k // 2, k // 2)))
    return _bn(_conv(y, p[f"rect{k}_kx1"][e], (s, 1), ((k // 2, k // 2), (0, 0))))
  if op.startswith("simple_conv"):
    k = int(op[-1])
    return _bn(_conv(r, p[f"simple{k}"][e], (s, s), ((k // 2, k // 2),) * 2))
  y = _bn(_conv(r, p["bneck_in"][e]))
  y = _bn(_conv(y, p["bneck_3x3"][e], (s, s), ((1, 1), (1, 1))))
  y = jax.nn.relu(_bn(_conv(y, p["bneck_expand"][e])))
  return _bn(_conv(y, p["bneck_project"][e]))


def _numpy_variables(module, *args, seed=0, **kwargs):
  """Variables of ``module`` with its own shapes and weights drawn by NumPy, U(-0.5, 0.5).

  Shapes come from ``jax.eval_shape`` (nothing compiled): a random init of the 12-op supernet
  compiles for over a minute of CPU, and these tests need weights, not the init's distribution.
  """
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kwargs))
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda a: jnp.asarray(rng.uniform(-0.5, 0.5, a.shape)), shapes["params"])
  stats = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes.get("batch_stats", {}))
  return {"params": params, "batch_stats": stats}


# ------------------------------------------------------------------------------ the op group ---

E, C = 2, 4


@pytest.fixture(scope="module")
def groups():
  """Both strides of a 2-edge group on 4 channels, initialised; one jitted apply per stride."""
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, C), F64)
  out = {}
  for s in (1, 2):
    g = DartoptiEdgeGroup(E, C, s, dtype=F64)
    w0 = jnp.ones((E, len(DARTOPTI_OPS)), F64)
    variables = _numpy_variables(g, x, w0, True, seed=s)
    apply = jax.jit(lambda v, w, g=g: g.apply(v, x, w, True, mutable=["batch_stats"])[0])
    out[s] = (variables, apply)
  return x, out


@pytest.mark.parametrize("s", [1, 2])
def test_new_op_param_counts_by_hand(groups, s):
  """Per edge, C = 4: rect 1×3+3×1 = 2·3·16 = 96; 1×7+7×1 = 2·7·16 = 224; simple 1×1 = 16,
  3×3 = 9·16 = 144; bottleneck 1×1 (16) + 3×3 (144) + 1×1 to 4C (64) + 1×1 back (64) = 288."""
  p = groups[1][s][0]["params"]
  count = lambda *names: sum(p[n].size for n in names)
  assert count("rect3_1xk", "rect3_kx1") == E * 96
  assert count("rect7_1xk", "rect7_kx1") == E * 224
  assert count("simple1") == E * 16
  assert count("simple3") == E * 144
  assert count("bneck_in", "bneck_3x3", "bneck_expand", "bneck_project") == E * 288
  # The 7 DARTS ops: sep3 2·(9·4 + 16) = 104, sep5 2·(25·4 + 16) = 232, dil3 36 + 16 = 52,
  # dil5 100 + 16 = 116, FR (stride 2) 2·4·2 = 16; pools and identity none.
  total = E * (96 + 224 + 16 + 144 + 288 + 104 + 232 + 52 + 116 + (16 if s == 2 else 0))
  assert sum(v.size for v in jax.tree.leaves(p)) == total


@pytest.mark.parametrize("s", [1, 2])
@pytest.mark.parametrize("op", NEW_OPS)
def test_new_op_shape_and_function(groups, op, s):
  """One-hot mixing on ``op`` (edge 0 weight 1, edge 1 weight 0.5): the group's output equals the
  op written here edge by edge, shape (B, 8/s, 8/s, E, C)."""
  x, g = groups
  variables, apply = g[s]
  w = np.zeros((E, len(DARTOPTI_OPS)))
  w[0, DARTOPTI_OPS.index(op)], w[1, DARTOPTI_OPS.index(op)] = 1.0, 0.5
  y = apply(variables, jnp.asarray(w))
  assert y.shape == (2, 8 // s, 8 // s, E, C)
  p = variables["params"]
  for e, scale in ((0, 1.0), (1, 0.5)):
    np.testing.assert_allclose(y[..., e, :], scale * _new_op(op, x, p, e, s), rtol=1e-10,
                               atol=1e-12)


# --------------------------------------------------------------------- ResNet-18 as a supernet ---

CH = 2  # C of the supernet: cells at 2, 4, 8, 16 channels (ResNet-18 reduces in cells 1, 2, 3)
ONEHOT = genotype_alphas(handmade("resnet18"), on=1.0, off=0.0)  # (1, 14, 12) mixing weights


def _resnet18_net():
  return DartsSearchNetwork(channels=CH, num_cells=4, num_classes=10, dtype=F64, op_set="dartopti",
                            cell_sharing="none", init_genotype="resnet18")


def _plain_cell(q, s0, s1, red, prev_red):
  """One ResNet-18 cell of DARTOpti's genotype, written here from a supernet cell's weights ``q``.

  The inputs are preprocessed (ReLU 1×1 BN, or FactorizedReduce after a reduction); node 2 =
  conv3(s0'), node 3 = conv3(node 2) + skip(s0'), node 4 = conv3(node 3), node 5 = conv3(node 4) +
  node 3, where conv3 is ReLU → 3×3 → BN (stride 2 on node 2 in a reduction cell) and skip is the
  identity or, in a reduction cell, FactorizedReduce; the output is concat(nodes 2..5). s1 is read
  by no node: the authors' ResNet-18 genotype uses input 0 only.
  Edge slots in the supernet's groups: from_0 holds edges (0, 2, 5, 9), so edge 0 (node 2 ← 0) is
  slot 0 and edge 2 (node 3 ← 0) slot 1; from_2's slot 0 is edge 4, from_3's edge 8, from_4's 13.
  """
  del s1
  conv3 = lambda h, k, s: _bn(_conv(jax.nn.relu(h), k, (s, s), ((1, 1), (1, 1))))
  s = 2 if red else 1
  if prev_red:
    a = _fr(s0, q["pre0"]["conv1"], q["pre0"]["conv2"])
  else:
    a = _bn(jax.nn.relu(s0) @ q["pre0"]["conv"])
  f0 = q["from_0"]
  n2 = conv3(a, f0["simple3"][0], s)
  skip = _fr(a, f0["fr_conv1"][1], f0["fr_conv2"][1]) if red else a
  n3 = conv3(n2, q["from_2"]["simple3"][0], 1) + skip
  n4 = conv3(n3, q["from_3"]["simple3"][0], 1)
  n5 = conv3(n4, q["from_4"]["simple3"][0], 1) + n3
  return jnp.concatenate([n2, n3, n4, n5], axis=-1)


def _plain_resnet18(p, x):
  """The plain network: stem 3×3 → affine BN, four cells (cells 1-3 reduce), mean pool, linear."""
  stem = _conv(x, p["stem_kernel"], pad=((1, 1), (1, 1)))
  s0 = s1 = _bn(stem) * p["stem_bn"]["scale"] + p["stem_bn"]["bias"]
  prev_red = False
  for i in range(4):
    red = i in (1, 2, 3)
    s0, s1 = s1, _plain_cell(p[f"cell_{i}"], s0, s1, red, prev_red)
    prev_red = red
  return jnp.mean(s1, axis=(1, 2)) @ p["classifier"]["kernel"] + p["classifier"]["bias"]


def test_resnet18_cell_is_a_resnet_block_pair():
  """One reduction cell after a reduction (the FactorizedReduce paths of pre0 and of the strided
  skip) with the genotype's one-hot mixing weights equals the plain cell (train-mode BN, float64).
  The whole network is compared in the slow test below."""
  cell = DartsCell(4, True, True, "lax", F64, 0.0, 1, False, "dartopti", 4)
  s0 = jax.random.normal(jax.random.key(4), (2, 8, 8, 3), F64)
  s1 = jax.random.normal(jax.random.key(5), (2, 4, 4, 5), F64)
  w = jnp.asarray(ONEHOT[0])
  variables = _numpy_variables(cell, s0, s1, w, True, seed=7)
  out = jax.jit(lambda v: cell.apply(v, s0, s1, w, True, mutable=["batch_stats"])[0])(variables)
  assert out.shape == (2, 2, 2, 16)
  np.testing.assert_allclose(out, _plain_cell(variables["params"], s0, s1, True, True),
                             rtol=1e-9, atol=1e-12)


@pytest.mark.slow
def test_resnet18_genotype_is_a_resnet():
  """The whole supernet from --init-genotype resnet18 with one-hot mixing weights on the genotype's
  ops is the plain ResNet-18-style network (train-mode batch norm, float64). Slow: compiling the
  12-op supernet's forward takes ~30 s of CPU."""
  net = _resnet18_net()
  x = jax.random.normal(jax.random.key(2), (2, 8, 8, 3), F64)
  onehot = {"cells": jnp.asarray(ONEHOT)}
  variables = _numpy_variables(net, x, onehot, train=False, seed=3)
  logits = jax.jit(lambda v: net.apply(v, x, onehot, train=True, mutable=["batch_stats"])[0])(
      variables)
  assert logits.shape == (2, 10)
  np.testing.assert_allclose(logits, _plain_resnet18(variables["params"], x), rtol=1e-9,
                             atol=1e-12)


def test_resnet18_parameter_count_by_hand():
  """Per edge on c channels, the 12 ops hold 6c² + 14c² + c² + 9c² (rect, rect, simple 1, 3)
  + (18c + 2c²) + (50c + 2c²) (sep 3, 5) + (9c + c²) + (25c + c²) (dil 3, 5) + 18c² (bottleneck)
  = 54c² + 102c, plus c² for the FactorizedReduce skip on each of a reduction cell's 8 strided
  edges. Cells have 14 edges; pre0 and pre1 hold c_in·c each (1×1, or two 1×1 to c/2).
  C = 2: stem 3·3·3·6 = 162 + BN affine 12.
  cell 0 (c 2, inputs 6, 6):   12 + 12 + 14·(54·4 + 102·2) = 24 + 5880 = 5904.
  cell 1 (c 4, red., in 6, 8): 24 + 32 + 14·(54·16 + 102·4) + 8·16 = 56 + 17808 + 128 = 17992.
  cell 2 (c 8, red., in 8, 16): 64 + 128 + 14·(54·64 + 102·8) + 8·64 = 192 + 59808 + 512 = 60512.
  cell 3 (c 16, red., in 16, 32): 256 + 512 + 14·(54·256 + 102·16) + 8·256
                                  = 768 + 216384 + 2048 = 219200.
  classifier 64·10 + 10 = 650. Total 174 + 5904 + 17992 + 60512 + 219200 + 650 = 304432.
  """
  assert run.count_params(_resnet18_net(), (8, 8, 3)) == 304432


def test_resnet_alphas_shared_by_identical_cells():
  """ResNet-18: one distinct cell for 4 positions → alphas (1, 14, 12), the genotype's 6 entries
  at 10 and the other 162 at 0; ResNet-50: 3 distinct cells of 6 nodes → (3, 27, 12)."""
  a = _resnet18_net().init_alphas(jax.random.key(0))["cells"]
  assert a.shape == (1, 14, 12)
  assert np.sum(np.asarray(a) == 10.0) == 6 and np.sum(np.asarray(a) == 0.0) == 14 * 12 - 6
  assert a[0, 0, DARTOPTI_OPS.index("simple_conv_3x3")] == 10.0
  r50 = DartsSearchNetwork(num_cells=4, op_set="dartopti", cell_sharing="none",
                           init_genotype="resnet50")
  assert r50.alpha_shapes() == {"cells": (3, 27, 12)}


# ------------------------------------------------------------------------------- bad input ---

def _one_line(exc):
  msg = str(exc.value)
  assert "\n" not in msg
  return msg


def test_unknown_handmade_network():
  with pytest.raises(JaxnasError) as e:
    DartsSearchNetwork(num_cells=4, op_set="dartopti", cell_sharing="none",
                       init_genotype="vgg16").alpha_shapes()
  assert "vgg16" in _one_line(e)
  with pytest.raises(JaxnasError) as e:
    run.validate(run.SearchConfig(space="darts", method="dartopti", init_genotype="vgg16"))
  assert "resnet18" in _one_line(e)


def test_cell_count_mismatch():
  with pytest.raises(JaxnasError) as e:
    DartsSearchNetwork(num_cells=8, op_set="dartopti", cell_sharing="none",
                       init_genotype="resnet18").alpha_shapes()
  assert "--cells 4" in _one_line(e)
  with pytest.raises(JaxnasError) as e:
    run.validate(run.SearchConfig(space="darts", method="dartopti", cells=8,
                                  init_genotype="resnet18"))
  assert "--cells 4" in _one_line(e)


def test_init_genotype_needs_the_12_op_set():
  with pytest.raises(JaxnasError) as e:
    DartsSearchNetwork(num_cells=4, cell_sharing="none", init_genotype="resnet18").alpha_shapes()
  assert "dartopti" in _one_line(e)


def test_recipe_defaults():
  r = methods.get("dartopti")
  assert r.arch_warmup_epochs == 5 and r.relaxation == "sigmoid"
  assert {g.name: g.weight for g in r.regularizers} == {"zero-one-cells": 8.0,
                                                        "ddarts-ablation": 0.5}
  assert dict(r.space_options) == {"cell_sharing": "none", "op_set": "dartopti"}


# ------------------------------------------------------------------------------ end to end ---

@pytest.mark.slow
def test_dartopti_cli_three_steps(tmp_path):
  """``jaxnas search --method dartopti --init-genotype resnet18`` runs 3 steps and writes alphas
  of shape (1, 14, 12)."""
  out = tmp_path / "run"
  cmd = [sys.executable, "-m", "jaxnas.cli", "search", "--space", "darts", "--method", "dartopti",
         "--init-genotype", "resnet18", "--steps", "3", "--channels", "2", "--batch-size", "8",
         "--out", str(out)]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=2400)
  assert proc.returncode == 0, proc.stderr[-2000:]
  config = json.loads((out / "config.json").read_text())
  assert config["config"]["init_genotype"] == "resnet18"
  lines = (out / "metrics.jsonl").read_text().splitlines()
  assert len([ln for ln in lines if '"step"' in ln]) >= 1
  g = json.loads((out / "genotype.json").read_text())  # the whole network: 4 positions, 1, 2, 3
  assert len(g["cells"]) == 4 and g["reductions"] == [1, 2, 3]


# ------------------------------------------------- derivation of any node count, whole network ---

from jaxnas import cli, ddarts, derive  # noqa: E402
from jaxnas.spaces.dartopti_ops import edge_index  # noqa: E402


def test_nodes_of_edges_by_hand():
  # s nodes have 2 + 3 + ... + (s + 1) edges: 2, 5, 9, 14, 20, 27
  assert [ddarts.nodes_of_edges(e) for e in (2, 5, 9, 14, 20, 27)] == [1, 2, 3, 4, 5, 6]
  with pytest.raises(JaxnasError) as e:
    ddarts.nodes_of_edges(15)
  assert "15 edge rows" in _one_line(e)


def test_threshold_rules_read_a_six_node_cell_by_hand():
  """27 rows; node state 7 owns rows 20..26 (from states 0..6). Row 23 (7 ← 3): op0 0.96, op2
  0.95; row 26 (7 ← 6): op1 0.9; row 21 (7 ← 1): op0 0.8 (< 0.85); row 0 (2 ← 0): op2 0.86;
  everything else 0.1. Sparse: node 2 keeps 2 ← 0 (op2), its second edge is 0.1; node 7's two
  strongest edges are 23 (0.96) then 26 (0.9). Edge: row 23 keeps op0 and op2, row 26 op1."""
  ops = ("a", "b", "c")
  w = np.full((27, 3), 0.1)
  w[23, 0], w[23, 2], w[26, 1], w[21, 0], w[0, 2] = 0.96, 0.95, 0.9, 0.8, 0.86
  assert (edge_index(7, 0), edge_index(7, 3), edge_index(7, 6)) == (20, 23, 26)
  sparse = derive.fairdarts_sparse({"normal": w, "reduce": w}, ops, num_nodes=6)
  assert sparse.normal == (("c", 2, 0), ("a", 7, 3), ("b", 7, 6))
  assert sparse.normal_concat == (4, 5, 6, 7)  # the last four states, as the search cell
  edge = derive.fairdarts_edge({"normal": w, "reduce": w}, ops, num_nodes=6)
  assert edge.normal == (("c", 2, 0), ("a", 7, 3), ("c", 7, 3), ("b", 7, 6))
  with pytest.raises(JaxnasError) as e:  # 27 rows read as a 4-node cell
    derive.fairdarts_sparse({"normal": w, "reduce": w}, ops)
  assert "(14, 3)" in _one_line(e)


def _sigmoid(a):
  return 1.0 / (1.0 + np.exp(-np.asarray(a)))


def test_resnet18_derives_the_whole_network():
  """From its initial alphas (10 on the genotype, 0 elsewhere: σ = 0.99995 or 0.5) ddarts-sparse
  gives the ResNet-18 cell back: node 3's two edges tie, so 3 ← 0 (skip) comes before 3 ← 2; the
  one distinct cell fills all 4 positions, reductions 1, 2, 3."""
  net = _resnet18_net()
  w = {"cells": _sigmoid(genotype_alphas(handmade("resnet18")))}
  cell = (("simple_conv_3x3", 2, 0), ("skip_connect", 3, 0), ("simple_conv_3x3", 3, 2),
          ("simple_conv_3x3", 4, 3), ("skip_connect", 5, 3), ("simple_conv_3x3", 5, 4))
  g = ddarts.network_genotype(net, derive.derive("ddarts-sparse", w, DARTOPTI_OPS))
  assert g == ddarts.CellGenotype((cell,) * 4, (2, 3, 4, 5), (1, 2, 3))
  assert ddarts.deepen(g, 4) == g  # Algorithm 1 with n = |C| leaves it as it is
  with pytest.raises(JaxnasError) as e:  # reductions 1, 2, 3 are not |C|/3, 2|C|/3
    ddarts.deepen(g, 8)
  assert "--cells 4" in _one_line(e)


def test_resnet50_derives_six_node_cells_at_their_positions():
  """ResNet-50's 3 distinct 6-node cells (27 rows); ddarts-edge keeps both ops of a (bottleneck +
  skip) edge, the earlier of S_o first (skip_connect is op 4, bottleneck op 11); ddarts-sparse
  keeps one op per edge (the tie goes to skip). Positions take cells 0 1 2 0."""
  net = DartsSearchNetwork(num_cells=4, op_set="dartopti", cell_sharing="none",
                           init_genotype="resnet50")
  w = {"cells": _sigmoid(genotype_alphas(handmade("resnet50")))}
  block = lambda to: (("skip_connect", to, to - 1 if to > 2 else 0),
                      ("bottleneck_1x3x1", to, to - 1 if to > 2 else 0))
  cells = [sum((block(to) for to in range(2, last + 1)), ()) for last in (4, 5, 7)]
  g = ddarts.network_genotype(net, derive.derive("ddarts-edge", w, DARTOPTI_OPS))
  assert g == ddarts.CellGenotype([cells[0], cells[1], cells[2], cells[0]], (4, 5, 6, 7),
                                  (1, 2, 3))
  sparse = ddarts.network_genotype(net, derive.derive("ddarts-sparse", w, DARTOPTI_OPS))
  assert sparse.cells[2] == tuple(("skip_connect", to, to - 1 if to > 2 else 0)
                                  for to in range(2, 8))
  assert run.check_derivation(net, methods.get("dartopti")) == "ddarts-sparse"  # no longer refused


def _dartopti_run(tmp_path, name, alphas):
  out = tmp_path / name
  out.mkdir()
  (out / "config.json").write_text(json.dumps({
      "config": {"space": "darts"},
      "space_config": {"num_cells": 4, "cell_sharing": "none", "init_genotype": name},
      "recipe": {"name": "dartopti", "description": "", "relaxation": "sigmoid",
                 "derivation": "ddarts-sparse",
                 "space_options": [["cell_sharing", "none"], ["op_set", "dartopti"]]}}))
  np.savez(out / "alphas.npz", cells=alphas)
  return out


def test_derive_and_train_a_dartopti_run_from_the_command_line(tmp_path, capsys):
  out = _dartopti_run(tmp_path, "resnet18", genotype_alphas(handmade("resnet18")))
  assert cli.main(["derive", str(out)]) == 0
  g = ddarts.CellGenotype.load(out / "genotype.json")
  assert len(g.cells) == 4 and len(set(g.cells)) == 1 and g.reductions == (1, 2, 3)
  assert cli.main(["derive", str(out), "--cells", "4"]) == 0
  assert ddarts.CellGenotype.load(out / "genotype-4cells.json") == g
  capsys.readouterr()
  assert cli.main(["derive", str(out), "--cells", "8"]) == 2
  err = capsys.readouterr().err
  assert "reduces at [1, 2, 3]" in err and err.count("\n") == 1
  # jaxnas train builds per-cell genotypes (CellNetworkCIFAR); the dry run checks it accepts this one
  # without training it (a whole training run is not a unit test).
  assert cli.main(["train", "--genotype", str(out), "--out", str(tmp_path / "t"), "--dry-run"]) == 0
  assert "parameters" in capsys.readouterr().out
  r50 = _dartopti_run(tmp_path, "resnet50", genotype_alphas(handmade("resnet50")))
  assert cli.main(["derive", str(r50), "--rule", "ddarts-edge"]) == 0
  g50 = ddarts.CellGenotype.load(r50 / "genotype-ddarts-edge.json")
  assert g50.cells[0] == g50.cells[3] != g50.cells[1] and g50.concat == (4, 5, 6, 7)
