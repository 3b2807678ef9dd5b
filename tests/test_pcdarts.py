"""PC-DARTS: partial channels, channel shuffle, edge normalisation, derivation, recipe.

The oracles: NumPy permutations and softmaxes, the cell's wiring recomposed by hand from its own
sub-modules, the reference network's parameter count worked out from its layer list, a genotype
derived by hand. The end-to-end command-line run is marked slow.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnas import cli, derive, methods, relax, spaces
from jaxnas.errors import JaxnasError
from jaxnas.run import count_params
from jaxnas.spaces.darts import (DARTS_EDGES, DartsCell, DartsEdgeGroup, DartsSearchNetwork,
                                 Preprocess, channel_shuffle, partial_channel_output)


def _shuffle_perm(c, k):
  """Output channel j·k + g reads input channel g·(c/k) + j (PyTorch's view-transpose-view)."""
  perm = np.empty(c, int)
  for g in range(k):
    for j in range(c // k):
      perm[j * k + g] = g * (c // k) + j
  return perm


@pytest.mark.parametrize("c,k", [(8, 4), (12, 4), (6, 2), (4, 1)])
def test_channel_shuffle_is_the_reference_permutation_and_its_inverse(c, k):
  x = np.arange(3 * c, dtype=np.float64).reshape(3, c)
  y = np.asarray(channel_shuffle(jnp.asarray(x), k))
  np.testing.assert_array_equal(y, x[:, _shuffle_perm(c, k)])
  # The inverse permutation, worked out in NumPy, is shuffling again with c/k groups.
  inverse = np.argsort(_shuffle_perm(c, k))
  np.testing.assert_array_equal(x, y[:, inverse])
  np.testing.assert_array_equal(np.asarray(channel_shuffle(jnp.asarray(y), c // k)), x)


def _max_pool_2x2_np(x):
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


@pytest.mark.parametrize("stride", [1, 2])
def test_partial_channel_output_against_numpy(stride):
  rng = np.random.default_rng(0)
  b, h, c, k, e = 2, 4, 8, 4, 3
  op_out = rng.standard_normal((b, h // stride, h // stride, e, c // k))
  bypass = rng.standard_normal((b, h, h, c - c // k))
  got = np.asarray(partial_channel_output(jnp.asarray(op_out), jnp.asarray(bypass), stride, k))
  byp = _max_pool_2x2_np(bypass) if stride == 2 else bypass
  for edge in range(e):
    want = np.concatenate([op_out[..., edge, :], byp], axis=-1)[..., _shuffle_perm(c, k)]
    np.testing.assert_array_equal(got[..., edge, :], want)


def test_with_k1_the_partial_channel_output_is_the_mixed_op_itself():
  op_out = jnp.asarray(np.random.default_rng(1).standard_normal((2, 4, 4, 3, 6)))
  empty = jnp.zeros((2, 4, 4, 0))
  np.testing.assert_array_equal(np.asarray(partial_channel_output(op_out, empty, 1, 1)), op_out)


def test_pc_darts_relaxation_normalises_each_node_and_each_edge():
  rng = np.random.default_rng(2)
  alphas = {"normal": jnp.asarray(rng.standard_normal((14, 8))),
            "normal_edges": jnp.asarray(rng.standard_normal(14)),
            "cell_edges": jnp.asarray(rng.standard_normal(6))}
  w = relax.pc_darts(alphas)
  a = np.asarray(alphas["normal"])
  np.testing.assert_allclose(w["normal"], np.exp(a) / np.exp(a).sum(-1, keepdims=True),
                             rtol=1e-12)
  for key, slices in (("normal_edges", [(0, 2), (2, 5), (5, 9), (9, 14)]),
                      ("cell_edges", [(0, 1), (1, 3), (3, 6)])):
    beta = np.asarray(alphas[key])
    for s, t in slices:
      np.testing.assert_allclose(w[key][s:t], np.exp(beta[s:t]) / np.exp(beta[s:t]).sum(),
                                 rtol=1e-12)
      np.testing.assert_allclose(np.sum(w[key][s:t]), 1.0, rtol=1e-12)
  assert relax.node_input_counts(14) == (2, 3, 4, 5)
  assert relax.node_input_counts(6) == (1, 2, 3)
  with pytest.raises(JaxnasError, match="node_inputs"):
    relax.node_input_counts(7)
  with pytest.raises(JaxnasError, match="add up to 3"):
    relax.pc_darts({"e": jnp.zeros(14)}, node_inputs=(1, 2))


def test_pc_cell_equals_its_wiring_recomposed_by_hand():
  """A PC-DARTS reduction cell (C=8, K=4) against Preprocess and the DARTS edge groups on C/K
  channels, the bypass (max-pooled on strided edges), the NumPy shuffle permutation and the
  β-weighted node sums, put together by hand. Both sides jitted once."""
  rng = np.random.default_rng(3)
  c, k = 8, 4
  cell = DartsCell(c, reduction=True, reduction_prev=False, dtype=jnp.float64, partial_channels=k)
  s0, s1 = (jnp.asarray(rng.standard_normal((2, 8, 8, 6))) for _ in range(2))
  weights = jax.nn.softmax(jnp.asarray(rng.standard_normal((14, 8))), -1)
  edge_w = jnp.asarray(rng.uniform(0.1, 1.0, 14))
  shapes = jax.eval_shape(lambda: cell.init(jax.random.key(0), s0, s1, weights, False, edge_w))
  # Random weights from the shapes (no init compile); batch statistics are unused in train mode.
  variables = jax.tree.map(lambda x: jnp.asarray(0.5 * rng.standard_normal(x.shape)), shapes)
  got, _ = jax.jit(lambda v: cell.apply(v, s0, s1, weights, True, edge_w,
                                        mutable=["batch_stats"]))(variables)

  @jax.jit
  def by_hand(v):
    p, stats = v["params"], v["batch_stats"]

    def sub(module, name, *args, **kwargs):
      return module.apply({"params": p[name], "batch_stats": stats[name]}, *args, **kwargs,
                          mutable=["batch_stats"])[0]

    states = [sub(Preprocess(c, False, jnp.float64), "pre0", s0, train=True),
              sub(Preprocess(c, False, jnp.float64), "pre1", s1, train=True)]
    nodes = {i: 0.0 for i in range(4)}
    for src in range(5):
      edges = [e for e, (_, s) in enumerate(DARTS_EDGES) if s == src]
      stride = 2 if src < 2 else 1
      x = states[src]
      group = DartsEdgeGroup(len(edges), c // k, stride, dtype=jnp.float64)
      out = sub(group, f"from_{src}", x[..., :c // k], weights[np.array(edges)], True)
      bypass = x[..., c // k:]
      if stride == 2:
        b, h, w_, ch = bypass.shape
        bypass = bypass.reshape(b, h // 2, 2, w_ // 2, 2, ch).max(axis=(2, 4))
      for slot, e in enumerate(edges):
        y = jnp.concatenate([out[..., slot, :], bypass], axis=-1)[..., _shuffle_perm(c, k)]
        nodes[DARTS_EDGES[e][0]] = nodes[DARTS_EDGES[e][0]] + edge_w[e] * y
      if src >= 1:
        states.append(nodes[src - 1])
    return jnp.concatenate(states[2:], axis=-1)

  np.testing.assert_allclose(np.asarray(got), np.asarray(by_hand(variables)), rtol=1e-10,
                             atol=1e-12)


def _reference_pc_darts_params(c, layers, k=4, classes=10, in_ch=3):
  """The parameter count of yuhuixu1993/PC-DARTS ``model_search.Network(C, classes, layers)``,
  worked out layer by layer from its code (all cell ops affine-free, so no BN parameters)."""
  total = 3 * 3 * in_ch * (3 * c) + 2 * 3 * c  # stem conv (no bias) + affine BN
  cpp = cp = 3 * c
  cc, red_prev = c, False
  for i in range(layers):
    red = i in (layers // 3, 2 * layers // 3)
    cc = cc * 2 if red else cc
    total += 2 * cpp * (cc // 2) if red_prev else cpp * cc  # FactorizedReduce or ReLUConvBN 1×1
    total += cp * cc
    q = cc // k  # the ops are built with C // k channels
    per_edge = (2 * (9 * q + q * q) + 2 * (25 * q + q * q)  # sep_conv 3×3, 5×5: two blocks each
                + (9 * q + q * q) + (25 * q + q * q))  # dil_conv 3×3, 5×5
    for node in range(4):
      for j in range(node + 2):
        total += per_edge + (2 * q * (q // 2) if red and j < 2 else 0)  # strided skip: FR
    red_prev = red
    cpp, cp = cp, 4 * cc
  return total + cp * classes + classes


@pytest.mark.parametrize("c,layers,k", [
    (8, 5, 4), (4, 3, 1), pytest.param(16, 8, 4, marks=pytest.mark.slow)])
def test_supernet_parameter_count_equals_the_reference_code(c, layers, k):
  model = DartsSearchNetwork(channels=c, num_cells=layers, partial_channels=k,
                             edge_normalization=k > 1)
  assert count_params(model, (32, 32, 3)) == _reference_pc_darts_params(c, layers, k)
  if (c, layers, k) == (16, 8, 4):  # the search configuration: 299,578 against DARTS' 1,930,618
    assert _reference_pc_darts_params(16, 8, 4) == 299_578
    assert _reference_pc_darts_params(16, 8, 1) == 1_930_618


def test_pc_darts_on_a_space_without_partial_channels_is_a_one_line_error():
  with pytest.raises(JaxnasError, match="nb201 space has no option edge_normalization, "
                                        "partial_channels"):
    spaces.get("nb201", **dict(methods.get("pc-darts").space_options))


def test_bad_partial_channels_are_one_line_errors():
  with pytest.raises(JaxnasError, match="multiple of 4.*--channels"):
    count_params(DartsSearchNetwork(channels=2, num_cells=3, partial_channels=4), (8, 8, 3))
  with pytest.raises(JaxnasError, match="whole number"):
    count_params(DartsSearchNetwork(channels=4, num_cells=3, partial_channels=0), (8, 8, 3))


def test_derivation_multiplies_operation_and_edge_weights():
  ops = np.full((14, 8), 1 / 8)
  # Node 1 (edges 2, 3, 4 from states 0, 1, 2): α alone prefers edges 2 and 3 ...
  ops[2] = [0.5 / 7] * 4 + [0.5] + [0.5 / 7] * 3  # sep_conv_3x3 0.5
  ops[3] = [0.6 / 7] * 3 + [0.4] + [0.6 / 7] * 4  # skip_connect 0.4
  ops[4] = [0.7 / 7] * 6 + [0.3] + [0.7 / 7]  # dil_conv_3x3 0.3
  edges = np.array([0.4, 0.6, 0.2, 0.3, 0.5] + [0.25] * 4 + [0.2] * 5)
  uniform = np.array([0.5, 0.5, 1 / 3, 1 / 3, 1 / 3] + [0.25] * 4 + [0.2] * 5)
  weights = {"normal": ops, "reduce": np.full((14, 8), 1 / 8), "normal_edges": edges,
             "reduce_edges": uniform}
  g = derive.derive("pc-darts-top2", weights)
  # ... β reorders node 0 (0.6 > 0.4) and, W = α·β = 0.1, 0.12, 0.15, makes node 1 keep 4 then 3.
  pool = "max_pool_3x3"  # uniform rows: the first non-none op, ties to the lower state
  assert g.normal == ((pool, 1), (pool, 0), ("dil_conv_3x3", 2), ("skip_connect", 1),
                      (pool, 0), (pool, 1), (pool, 0), (pool, 1))
  assert g.reduce == ((pool, 0), (pool, 1)) * 4
  assert derive.derive("darts-top2", {"normal": ops, "reduce": ops}).normal[2:4] == (
      ("sep_conv_3x3", 0), ("skip_connect", 1))
  with pytest.raises(JaxnasError, match="edge_normalization"):
    derive.derive("pc-darts-top2", {"normal": ops, "reduce": ops})


def test_pc_darts_recipe_has_the_reference_settings():
  r = methods.get("pc-darts")
  assert dict(r.space_options) == {"partial_channels": 4, "edge_normalization": True}
  assert (r.relaxation, r.derivation, r.arch_warmup_epochs) == ("pc-darts", "pc-darts-top2", 15)
  assert (r.arch_optimizer.lr, r.weight_optimizer.lr, r.weight_optimizer.lr_min) == (6e-4, 0.1,
                                                                                     0.001)


@pytest.mark.slow
def test_pc_darts_runs_two_steps_from_the_command_line(tmp_path, capsys):
  out = tmp_path / "run"
  code = cli.main(["search", "--space", "darts", "--method", "pc-darts", "--steps", "2",
                   "--channels", "4", "--cells", "3", "--batch-size", "8", "--no-compile-cache",
                   "--out", str(out)])
  assert code == 0, capsys.readouterr().err
  lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
  assert [m["step"] for m in lines] == [1, 2]
  assert all(np.isfinite(m["train_loss"]) and np.isfinite(m["val_loss"]) for m in lines)
  with np.load(out / "alphas.npz") as f:
    alphas = {k: f[k] for k in f.files}
  assert {k: v.shape for k, v in alphas.items()} == {
      "normal": (14, 8), "reduce": (14, 8), "normal_edges": (14,), "reduce_edges": (14,)}
  # 15 warm-up epochs: after 2 steps the alphas are still the initial ones.
  model = DartsSearchNetwork(channels=4, num_cells=3, edge_normalization=True, partial_channels=4)
  init = model.init_alphas(jax.random.split(jax.random.key(0), 3)[0])
  for key, value in init.items():
    np.testing.assert_array_equal(alphas[key], np.asarray(value, alphas[key].dtype))
  config = json.loads((out / "config.json").read_text())
  in_ch = config["dataset"]["image_shape"][-1]  # the embedded digits are 8×8×1
  assert config["num_params"] == _reference_pc_darts_params(4, 3, 4, in_ch=in_ch)
  assert (out / "genotype.json").is_file()
  assert cli.main(["derive", str(out)]) == 0
  assert "genotype (pc-darts-top2)" in capsys.readouterr().out
