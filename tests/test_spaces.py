"""Search spaces (jaxnas.spaces), each checked against an answer the module did not compute.

- Parameter counts: a closed form written here from the op definitions, and the counts the
  reference PyTorch code (quark0/darts, D-X-Y/AutoDL-Projects) reports for the same configurations.
- One-hot mixing weights: the supernet equals the discrete network they choose, computed by the
  straightforward NumPy forward in ``_reference_nets.py`` from the same parameter tree.
- Mixed weights: an edge group is linear in its mixing weights.
- The two depthwise implementations give the same logits and gradients.
- Bad input, ``init_alphas``, and BatchNorm against NumPy.

Compile time dominates on a small CPU: every forward is jitted once per module (module-scoped
fixtures), parameters are drawn in NumPy from ``jax.eval_shape`` of ``init`` (a jitted ``init`` of a
supernet is itself a long compile), and the configurations are tiny.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _reference_nets as ref
from jaxnas import spaces
from jaxnas.errors import JaxnasError
from jaxnas.spaces.darts import DartsEdgeGroup, DartsSearchNetwork
from jaxnas.spaces.layers import BatchNorm
from jaxnas.spaces.nb201 import NB201EdgeGroup, NB201SearchNetwork, ResNetBasicBlock

F64 = jnp.float64
KEY = jax.random.key(0)
# Cheaper XLA backend passes: these programs run once or twice, so compile time is what counts.
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0,
                                                    "xla_llvm_disable_expensive_passes": True})


def _darts_weights(value=None):
  w = np.full((14, 8), 1 / 8) if value is None else value
  return {"normal": jnp.asarray(w, F64), "reduce": jnp.asarray(w, F64)}


def _nb201_weights(value=None):
  return {"cell": jnp.asarray(np.full((6, 5), 1 / 5) if value is None else value, F64)}


def _shapes(model, x_shape, weights):
  """The variables' shapes and dtypes, traced without compiling."""
  return jax.eval_shape(lambda: model.init(KEY, jnp.zeros(x_shape, F64), weights, train=True))


def _count(tree):
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


def _fill(shapes, seed, scale=0.5):
  """Random float64 values (NumPy, seeded) for a tree of ShapeDtypeStructs."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda s: jnp.asarray(rng.normal(0.0, scale, s.shape), s.dtype),
                                shapes)


def _fresh_stats(shapes):
  """Running statistics as initialised: mean 0, var 1."""
  return jax.tree_util.tree_map_with_path(
      lambda path, s: jnp.full(s.shape, 1.0 if path[-1].key == "var" else 0.0, s.dtype), shapes)


def _one_hot(choice, num_ops):
  return jnp.asarray(np.eye(num_ops)[np.asarray(choice)], F64)


# ----------------------------------------------------------------------------------------------
# 1. Parameter counts.


def darts_param_count(c, num_cells, in_ch, num_classes=10):
  """Closed form from quark0/darts: stem, per-cell preprocess and 14 mixed ops, classifier.

  A MixedOp on C channels holds sep_conv_3x3 2(9C + C²), sep_conv_5x5 2(25C + C²), dil_conv_3x3
  9C + C², dil_conv_5x5 25C + C² = 6C² + 102C (pools, skip and none hold nothing, BN is affine-free),
  plus C² for the FactorizedReduce skip on the 8 stride-2 edges of a reduction cell.
  """
  c_stem = 3 * c
  n = 9 * in_ch * c_stem + 2 * c_stem  # conv 3x3, no bias; affine BN
  c_pp, c_p, c_cur = c_stem, c_stem, c
  for i in range(num_cells):
    reduction = i in (num_cells // 3, 2 * num_cells // 3)
    if reduction:
      c_cur *= 2
    n += c_pp * c_cur  # preprocess0: ReLUConvBN 1x1 (C_pp·C) or FactorizedReduce (2·C_pp·C/2)
    n += c_p * c_cur   # preprocess1: ReLUConvBN 1x1
    n += 14 * (6 * c_cur ** 2 + 102 * c_cur)
    if reduction:
      n += 8 * c_cur ** 2
    c_pp, c_p = c_p, 4 * c_cur
  return n + c_p * num_classes + num_classes


def nb201_param_count(c, cells_per_stage, in_ch, num_classes=10):
  """Closed form from AutoDL-Projects: stem, 6 edges of 10C² + 2C per cell, ResNet blocks, head.

  An edge holds nor_conv_1x1 C² + C and nor_conv_3x3 9C² + C (convs with bias, BN affine-free);
  ResNetBasicblock(Ci, Co): conv_a 9·Ci·Co + 2Co, conv_b 9·Co² + 2Co, downsample 1×1 Ci·Co.
  """
  n = 9 * in_ch * c + 2 * c
  c_prev = c
  for stage, width in enumerate((c, 2 * c, 4 * c)):
    if stage:
      n += 10 * c_prev * width + 9 * width ** 2 + 4 * width
    n += cells_per_stage * 6 * (10 * width ** 2 + 2 * width)
    c_prev = width
  return n + 2 * c_prev + c_prev * num_classes + num_classes


# Counts the reference PyTorch code reports (sum of p.numel() over model.parameters(), alphas
# excluded), 10 classes: (C, cells, input channels) -> count.
DARTS_REFERENCE_COUNTS = {
    (16, 8, 3): 1930618, (4, 3, 3): 72854, (2, 3, 3): 28464, (4, 1, 3): 18182,
    (4, 2, 3): 65606, (8, 5, 3): 394210, (4, 3, 1): 72638, (16, 8, 1): 1929754,
}
NB201_REFERENCE_COUNTS = {
    (16, 5, 3): 1692826, (8, 5, 3): 425298, (4, 1, 3): 25390, (2, 1, 3): 6540,
    (8, 2, 3): 181362, (4, 1, 1): 25318, (8, 2, 1): 181218, (8, 5, 1): 425154,
}


@pytest.mark.parametrize("config", sorted(DARTS_REFERENCE_COUNTS), ids=str)
def test_darts_param_count(config):
  c, cells, in_ch = config
  model = DartsSearchNetwork(channels=c, num_cells=cells, dtype=F64)
  variables = _shapes(model, (1, 8, 8, in_ch), _darts_weights())
  assert darts_param_count(c, cells, in_ch) == DARTS_REFERENCE_COUNTS[config]
  assert _count(variables["params"]) == DARTS_REFERENCE_COUNTS[config]


@pytest.mark.parametrize("config", sorted(NB201_REFERENCE_COUNTS), ids=str)
def test_nb201_param_count(config):
  c, cells, in_ch = config
  model = NB201SearchNetwork(channels=c, cells_per_stage=cells, dtype=F64)
  variables = _shapes(model, (1, 8, 8, in_ch), _nb201_weights())
  assert nb201_param_count(c, cells, in_ch) == NB201_REFERENCE_COUNTS[config]
  assert _count(variables["params"]) == NB201_REFERENCE_COUNTS[config]


def test_param_count_other_num_classes():
  darts = _shapes(DartsSearchNetwork(channels=2, num_cells=2, num_classes=7, dtype=F64),
                  (1, 8, 8, 3), _darts_weights())
  assert _count(darts["params"]) == darts_param_count(2, 2, 3, num_classes=7)
  nb = _shapes(NB201SearchNetwork(channels=2, cells_per_stage=2, num_classes=7, dtype=F64),
               (1, 8, 8, 3), _nb201_weights())
  assert _count(nb["params"]) == nb201_param_count(2, 2, 3, num_classes=7)


def _prefix_counts(params, prefixes):
  return {p: sum(int(np.prod(v.shape)) for k, v in params.items() if k.startswith(p))
          for p in prefixes}


@pytest.mark.parametrize("stride", [1, 2])
def test_darts_mixed_op_param_count(stride):
  """One MixedOp at C=4 (reference: 504 at stride 1, 520 at stride 2)."""
  group = DartsEdgeGroup(num_edges=1, channels=4, stride=stride, dtype=F64)
  params = jax.eval_shape(lambda: group.init(KEY, jnp.zeros((1, 8, 8, 4), F64),
                                             jnp.ones((1, 8), F64), train=True))["params"]
  assert _count(params) == {1: 504, 2: 520}[stride]
  per_op = _prefix_counts(params, ("sep3_", "sep5_", "dil3_", "dil5_", "fr_"))
  assert per_op == {"sep3_": 104, "sep5_": 232, "dil3_": 52, "dil5_": 116,
                    "fr_": 16 if stride == 2 else 0}


def test_nb201_edge_and_resnet_block_param_count():
  group = NB201EdgeGroup(num_edges=1, channels=4, dtype=F64)
  params = jax.eval_shape(lambda: group.init(KEY, jnp.zeros((1, 8, 8, 4), F64),
                                             jnp.ones((1, 5), F64), train=True))["params"]
  assert _count(params) == 168
  assert _prefix_counts(params, ("conv1x1_", "conv3x3_")) == {"conv1x1_": 20, "conv3x3_": 148}
  block = ResNetBasicBlock(features=8, dtype=F64)
  block_vars = jax.eval_shape(lambda: block.init(KEY, jnp.zeros((1, 8, 8, 4), F64), train=True))
  assert _count(block_vars["params"]) == 928


# ----------------------------------------------------------------------------------------------
# 2. Output shapes.


@pytest.mark.parametrize("num_edges,stride", [(1, 1), (3, 1), (5, 1), (2, 2), (4, 2)])
def test_darts_edge_group_shape(num_edges, stride):
  group = DartsEdgeGroup(num_edges=num_edges, channels=4, stride=stride, dtype=F64)
  out, _ = jax.eval_shape(lambda: group.init_with_output(
      KEY, jnp.zeros((3, 8, 8, 4), F64), jnp.ones((num_edges, 8), F64), train=True))
  assert out.shape == (3, 8 // stride, 8 // stride, num_edges, 4)
  assert out.dtype == F64


@pytest.mark.parametrize("num_edges", [1, 2, 3])
def test_nb201_edge_group_shape(num_edges):
  group = NB201EdgeGroup(num_edges=num_edges, channels=4, dtype=F64)
  out, _ = jax.eval_shape(lambda: group.init_with_output(
      KEY, jnp.zeros((3, 8, 8, 4), F64), jnp.ones((num_edges, 5), F64), train=True))
  assert out.shape == (3, 8, 8, num_edges, 4)
  assert out.dtype == F64


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_logits_shape(space):
  if space == "darts":
    model, weights = DartsSearchNetwork(channels=2, num_cells=3, num_classes=7, dtype=F64), \
        _darts_weights()
  else:
    model, weights = NB201SearchNetwork(channels=2, cells_per_stage=1, num_classes=7, dtype=F64), \
        _nb201_weights()
  x = jnp.zeros((4, 8, 8, 3), F64)
  for train in (True, False):
    logits, _ = jax.eval_shape(lambda: model.init_with_output(KEY, x, weights, train=train))
    assert logits.shape == (4, 7)
    assert logits.dtype == F64


# ----------------------------------------------------------------------------------------------
# 3. One-hot mixing weights: the supernet is the discrete network they choose.

NONE, MAX, AVG, SKIP, SEP3, SEP5, DIL3, DIL5 = range(8)
NB_NONE, NB_SKIP, NB_1X1, NB_3X3, NB_POOL = range(5)
DARTS_CELLS, NB201_CELLS = 3, 2   # DARTS: cell 0 normal, 1 reduces, 2 reduces after a reduction


def _darts_choices():
  rng = np.random.default_rng(7)
  all_ops = np.arange(14) % 8
  return {
      "random": (rng.integers(0, 8, 14), rng.integers(0, 8, 14)),
      "random2": (rng.integers(0, 8, 14), rng.integers(0, 8, 14)),
      "every_op": (all_ops, (all_ops + 3) % 8),
      # node 0 of the normal cell all 'none'; every stride-2 edge skip (FactorizedReduce)
      "none_and_strided_skip": (np.array([NONE, NONE, SEP3, SKIP, NONE, DIL5, MAX, AVG, SEP5,
                                          NONE, SKIP, DIL3, AVG, MAX]),
                                np.array([SKIP, SKIP, SKIP, SKIP, SEP3, SKIP, SKIP, DIL3, AVG,
                                          SKIP, SKIP, MAX, SEP5, DIL5])),
      "pools": (np.array([MAX, AVG] * 7), np.array([AVG, MAX] * 7)),
      "convs": (np.array([SEP3, SEP5, DIL3, DIL5] * 3 + [SEP3, SEP5]),
                np.array([DIL5, DIL3, SEP5, SEP3] * 3 + [DIL5, DIL3])),
  }


def _nb201_choices():
  rng = np.random.default_rng(8)
  return {
      "random": rng.integers(0, 5, 6),
      "random2": rng.integers(0, 5, 6),
      "every_op": np.array([NB_3X3, NB_1X1, NB_POOL, NB_SKIP, NB_NONE, NB_3X3]),
      "with_none": np.array([NB_NONE, NB_3X3, NB_POOL, NB_1X1, NB_NONE, NB_SKIP]),
      "convs": np.array([NB_1X1, NB_3X3, NB_3X3, NB_1X1, NB_3X3, NB_1X1]),
      "pool_skip": np.array([NB_POOL, NB_SKIP, NB_POOL, NB_3X3, NB_POOL, NB_SKIP]),
  }


def _train_forward(model, stats):
  """A jitted train-mode forward ``(params, x, weights) -> logits`` (new statistics dropped)."""

  @_jit
  def forward(params, x, weights):
    logits, _ = model.apply({"params": params, "batch_stats": stats}, x, weights, train=True,
                            mutable=["batch_stats"])
    return logits

  return forward


@pytest.fixture(scope="module")
def darts_net():
  model = DartsSearchNetwork(channels=4, num_cells=DARTS_CELLS, num_classes=7, dtype=F64)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 8, 8, 3)), F64)
  shapes = _shapes(model, x.shape, _darts_weights())
  params = _fill(shapes["params"], seed=2)
  return model, params, x, _train_forward(model, _fresh_stats(shapes["batch_stats"]))


@pytest.fixture(scope="module")
def nb201_net():
  model = NB201SearchNetwork(channels=4, cells_per_stage=NB201_CELLS, num_classes=7, dtype=F64)
  x = jnp.asarray(np.random.default_rng(3).normal(size=(3, 8, 8, 3)), F64)
  shapes = _shapes(model, x.shape, _nb201_weights())
  params = _fill(shapes["params"], seed=4)
  return model, params, x, _train_forward(model, _fresh_stats(shapes["batch_stats"]))


@pytest.mark.parametrize("name", sorted(_darts_choices()))
def test_darts_one_hot_is_discrete_network(darts_net, name):
  model, params, x, forward = darts_net
  normal, reduce = _darts_choices()[name]
  weights = {"normal": _one_hot(normal, 8), "reduce": _one_hot(reduce, 8)}
  got = np.asarray(forward(params, x, weights))
  want = ref.darts_forward(params, x, {"normal": normal, "reduce": reduce}, DARTS_CELLS)
  assert got.shape == (3, 7)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", sorted(_nb201_choices()))
def test_nb201_one_hot_is_discrete_network(nb201_net, name):
  model, params, x, forward = nb201_net
  choice = _nb201_choices()[name]
  got = np.asarray(forward(params, x, {"cell": _one_hot(choice, 5)}))
  want = ref.nb201_forward(params, x, choice, NB201_CELLS)
  assert got.shape == (3, 7)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)


def test_one_hot_choices_differ(darts_net, nb201_net):
  """The one-hot comparisons are not vacuous: different choices give different logits."""
  _, params, x, forward = darts_net
  outs = [np.asarray(forward(params, x, {"normal": _one_hot(n, 8), "reduce": _one_hot(r, 8)}))
          for n, r in _darts_choices().values()]
  _, nb_params, nb_x, nb_forward = nb201_net
  nb_outs = [np.asarray(nb_forward(nb_params, nb_x, {"cell": _one_hot(c, 5)}))
             for c in _nb201_choices().values()]
  for group in (outs, nb_outs):
    for i in range(len(group)):
      for j in range(i):
        assert np.max(np.abs(group[i] - group[j])) > 1e-3


# ----------------------------------------------------------------------------------------------
# 4. Mixed weights: an edge group is linear in its weights, and each one-hot column is its op.

GROUPS = {
    "darts_stride1": (DartsEdgeGroup, dict(num_edges=3, channels=4, stride=1), 8),
    "darts_stride2": (DartsEdgeGroup, dict(num_edges=4, channels=4, stride=2), 8),
    "nb201": (NB201EdgeGroup, dict(num_edges=3, channels=4), 5),
}


@pytest.fixture(scope="module", params=sorted(GROUPS))
def group_outputs(request):
  """Group outputs for random softmax weights and for each one-hot column, in one jitted vmap."""
  cls, kwargs, num_ops = GROUPS[request.param]
  group = cls(dtype=F64, **kwargs)
  e = kwargs["num_edges"]
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.normal(size=(3, 8, 8, 4)), F64)
  shapes = jax.eval_shape(lambda: group.init(KEY, x, jnp.ones((e, num_ops), F64), train=True))
  params = _fill(shapes["params"], seed=6)
  stats = _fresh_stats(shapes["batch_stats"])
  logits = rng.normal(size=(e, num_ops))
  mixed = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  one_hots = [np.tile(np.eye(num_ops)[k], (e, 1)) for k in range(num_ops)]
  all_weights = jnp.asarray(np.stack([mixed] + one_hots), F64)

  @_jit
  def apply_all(params, x, all_weights):
    def one(w):
      return group.apply({"params": params, "batch_stats": stats}, x, w, train=True,
                         mutable=["batch_stats"])[0]
    return jax.vmap(one)(all_weights)

  outs = np.asarray(apply_all(params, x, all_weights))
  return request.param, kwargs, params, np.asarray(x), mixed, outs


def test_edge_group_is_linear_in_weights(group_outputs):
  _, kwargs, _, _, mixed, outs = group_outputs
  expected = np.einsum("ek,kbhwec->bhwec", mixed, outs[1:])
  np.testing.assert_allclose(outs[0], expected, rtol=0, atol=1e-11)
  assert outs.shape[-2:] == (kwargs["num_edges"], 4)


def test_edge_group_one_hot_is_reference_op(group_outputs):
  """Column k of every edge of the group equals op k computed by the reference on that edge."""
  name, kwargs, params, x, _, outs = group_outputs
  for slot in range(kwargs["num_edges"]):
    for k in range(outs.shape[0] - 1):
      if name.startswith("darts"):
        want = ref.darts_op(k, x, params, slot, kwargs["stride"])
      else:
        want = ref.nb201_op(k, x, params, slot)
      np.testing.assert_allclose(outs[1 + k][..., slot, :], want, rtol=0, atol=1e-11,
                                 err_msg=f"{name}: op {k} on edge slot {slot}")


# ----------------------------------------------------------------------------------------------
# 5. The two depthwise implementations of the DARTS space.


@pytest.mark.slow
def test_darts_depthwise_impls_agree():
  """"lax", "taps", "vjp": same logits and the same gradients in params, mixing weights, input."""
  rng = np.random.default_rng(9)
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 3)), F64)
  a = rng.normal(size=(2, 14, 8))
  w = np.exp(a) / np.exp(a).sum(-1, keepdims=True)
  weights = {"normal": jnp.asarray(w[0], F64), "reduce": jnp.asarray(w[1], F64)}
  cotangent = jnp.asarray(rng.normal(size=(2, 10)), F64)
  results = {}
  for impl in ("lax", "taps", "vjp"):
    # one reduction cell: stride-1 and stride-2 edges, every depthwise kernel size and dilation
    model = DartsSearchNetwork(channels=2, num_cells=1, depthwise=impl, dtype=F64)
    shapes = _shapes(model, x.shape, weights)
    params = _fill(shapes["params"], seed=10)
    stats = _fresh_stats(shapes["batch_stats"])

    def loss(params, weights, x, model=model, stats=stats):
      logits, _ = model.apply({"params": params, "batch_stats": stats}, x, weights, train=True,
                              mutable=["batch_stats"])
      return jnp.sum(logits * cotangent), logits

    results[impl] = _jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(
        params, weights, x)
  (_, logits_lax), grads_lax = results["lax"]
  for other in ("taps", "vjp"):
    (_, logits_taps), grads_taps = results[other]
    np.testing.assert_allclose(logits_taps, logits_lax, rtol=0, atol=1e-11, err_msg=other)
    assert jax.tree_util.tree_structure(grads_lax) == jax.tree_util.tree_structure(grads_taps)
    for (path, g_lax), g_taps in zip(jax.tree_util.tree_leaves_with_path(grads_lax),
                                     jax.tree_util.tree_leaves(grads_taps)):
      scale = max(1.0, float(np.max(np.abs(g_lax))))
      np.testing.assert_allclose(g_taps, g_lax, rtol=0, atol=1e-10 * scale,
                                 err_msg=other + jax.tree_util.keystr(path))
  assert grads_lax[1]["normal"].shape == (14, 8)
  assert float(np.max(np.abs(grads_lax[1]["reduce"]))) > 0  # the gradient reaches the weights


# ----------------------------------------------------------------------------------------------
# 6. Bad input.


def _error(model, x_shape, weights):
  with pytest.raises(JaxnasError) as info:
    _shapes(model, x_shape, weights)
  message = str(info.value)
  assert "\n" not in message
  return message


def test_darts_wrong_weight_shape():
  model = DartsSearchNetwork(channels=2, num_cells=1, dtype=F64)
  bad = {"normal": jnp.zeros((14, 7), F64), "reduce": jnp.zeros((14, 8), F64)}
  message = _error(model, (1, 8, 8, 3), bad)
  assert "normal" in message and "(14, 7)" in message and "(14, 8)" in message
  bad = {"normal": jnp.zeros((14, 8), F64), "reduce": jnp.zeros((8,), F64)}
  message = _error(model, (1, 8, 8, 3), bad)
  assert "reduce" in message and "(8,)" in message and "(14, 8)" in message


def test_darts_wrong_weight_keys():
  model = DartsSearchNetwork(channels=2, num_cells=1, dtype=F64)
  message = _error(model, (1, 8, 8, 3), {"cell": jnp.zeros((6, 5), F64)})
  assert "'normal'" in message and "'reduce'" in message and "'cell'" in message
  message = _error(model, (1, 8, 8, 3), {"normal": jnp.zeros((14, 8), F64)})
  assert "'reduce'" in message
  message = _error(model, (1, 8, 8, 3), jnp.zeros((14, 8), F64))
  assert "'normal'" in message and "Array" in message


def test_nb201_wrong_weights():
  model = NB201SearchNetwork(channels=2, cells_per_stage=1, dtype=F64)
  message = _error(model, (1, 8, 8, 3), {"cell": jnp.zeros((6, 4), F64)})
  assert "cell" in message and "(6, 4)" in message and "(6, 5)" in message
  message = _error(model, (1, 8, 8, 3), _darts_weights())
  assert "'cell'" in message and "'normal'" in message and "'reduce'" in message


def test_get_unknown_space():
  with pytest.raises(JaxnasError) as info:
    spaces.get("nope")
  message = str(info.value)
  assert "'nope'" in message and "darts" in message and "nb201" in message


def test_get_known_spaces():
  model = spaces.get("darts", channels=4, num_cells=2)
  assert isinstance(model, DartsSearchNetwork) and model.channels == 4 and model.num_cells == 2
  assert isinstance(spaces.get("nb201", channels=4), NB201SearchNetwork)
  assert tuple(spaces.get("darts").op_names) == ref.DARTS_OPS
  assert tuple(spaces.get("nb201").op_names) == ref.NB201_OPS


# ----------------------------------------------------------------------------------------------
# 7. init_alphas.


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_init_alphas(space):
  model = spaces.get(space, channels=2, dtype=F64)
  expected = {"normal": (14, 8), "reduce": (14, 8)} if space == "darts" else {"cell": (6, 5)}
  assert {k: tuple(v) for k, v in model.alpha_shapes().items()} == expected
  alphas = model.init_alphas(jax.random.key(3))
  assert {k: v.shape for k, v in alphas.items()} == expected
  assert all(v.dtype == F64 for v in alphas.values())
  values = np.concatenate([np.ravel(v) for v in alphas.values()])
  assert 0.5e-3 < values.std() < 1.5e-3 and np.abs(values).max() < 1e-2
  again = model.init_alphas(jax.random.key(3))
  other = model.init_alphas(jax.random.key(4))
  for k in expected:
    np.testing.assert_array_equal(alphas[k], again[k])
    assert not np.allclose(alphas[k], other[k])
  if space == "darts":
    assert not np.allclose(alphas["normal"], alphas["reduce"])
  f32 = spaces.get(space, channels=2, dtype=jnp.float32).init_alphas(jax.random.key(3))
  assert all(v.dtype == jnp.float32 for v in f32.values())


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_alphas_are_not_params(space):
  if space == "darts":
    model, weights = DartsSearchNetwork(channels=2, num_cells=3, dtype=F64), _darts_weights()
    closed_form = darts_param_count(2, 3, 3)
  else:
    model, weights = NB201SearchNetwork(channels=2, cells_per_stage=1, dtype=F64), _nb201_weights()
    closed_form = nb201_param_count(2, 1, 3)
  variables = _shapes(model, (1, 8, 8, 3), weights)
  assert set(variables) == {"params", "batch_stats"}
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(variables)]
  assert not [p for p in paths if re.search("alpha", p, re.IGNORECASE)]
  assert _count(variables["params"]) == closed_form  # which holds no architecture parameter


# ----------------------------------------------------------------------------------------------
# 8. BatchNorm against NumPy (PyTorch semantics).


def _np_bn(x, mean, var, eps=1e-5):
  return (x - mean) / np.sqrt(var + eps)


@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (7, 3), (2, 3, 3, 2, 4)])
def test_batchnorm_train_and_running_stats(shape):
  rng = np.random.default_rng(11)
  x1 = rng.normal(1.5, 2.0, size=shape)
  x2 = rng.normal(-0.5, 0.7, size=shape)
  bn = BatchNorm(dtype=F64)
  variables = bn.init(KEY, jnp.asarray(x1, F64), train=True)
  assert "params" not in variables  # affine=False: no parameters at all
  c = shape[-1]
  np.testing.assert_array_equal(variables["batch_stats"]["mean"], np.zeros(c))
  np.testing.assert_array_equal(variables["batch_stats"]["var"], np.ones(c))
  step = _jit(lambda v, x: bn.apply(v, x, train=True, mutable=["batch_stats"]))
  axes = tuple(range(len(shape) - 1))
  run_mean, run_var = np.zeros(c), np.ones(c)
  for x in (x1, x2):
    y, updates = step(variables, jnp.asarray(x, F64))
    np.testing.assert_allclose(y, _np_bn(x, x.mean(axes), x.var(axes)), rtol=0, atol=1e-12)
    flat = x.reshape(-1, c)
    run_mean = 0.9 * run_mean + 0.1 * flat.mean(0)
    run_var = 0.9 * run_var + 0.1 * flat.var(0, ddof=1)  # unbiased, as torch
    np.testing.assert_allclose(updates["batch_stats"]["mean"], run_mean, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(updates["batch_stats"]["var"], run_var, rtol=1e-13, atol=1e-14)
    variables = {"batch_stats": updates["batch_stats"]}
  x3 = rng.normal(size=shape)
  y_eval = _jit(lambda v, x: bn.apply(v, x, train=False))(variables, jnp.asarray(x3, F64))
  np.testing.assert_allclose(y_eval, _np_bn(x3, run_mean, run_var), rtol=0, atol=1e-12)


def test_batchnorm_affine():
  rng = np.random.default_rng(12)
  x = rng.normal(size=(4, 3, 3, 5))
  bn = BatchNorm(affine=True, dtype=F64)
  variables = bn.init(KEY, jnp.asarray(x, F64), train=True)
  np.testing.assert_array_equal(variables["params"]["scale"], np.ones(5))
  np.testing.assert_array_equal(variables["params"]["bias"], np.zeros(5))
  scale, bias = rng.normal(size=5), rng.normal(size=5)
  run_mean, run_var = rng.normal(size=5), rng.uniform(0.5, 2.0, size=5)
  variables = {"params": {"scale": jnp.asarray(scale, F64), "bias": jnp.asarray(bias, F64)},
               "batch_stats": {"mean": jnp.asarray(run_mean, F64),
                               "var": jnp.asarray(run_var, F64)}}
  y, _ = _jit(lambda v, x: bn.apply(v, x, train=True, mutable=["batch_stats"]))(
      variables, jnp.asarray(x, F64))
  axes = (0, 1, 2)
  np.testing.assert_allclose(y, _np_bn(x, x.mean(axes), x.var(axes)) * scale + bias, rtol=0,
                             atol=1e-12)
  y_eval = _jit(lambda v, x: bn.apply(v, x, train=False))(variables, jnp.asarray(x, F64))
  np.testing.assert_allclose(y_eval, _np_bn(x, run_mean, run_var) * scale + bias, rtol=0,
                             atol=1e-12)


@pytest.mark.parametrize("stride", [1, 2])
def test_max_pool_gradient_matches_reduce_window(stride):
  """The slice-based max pool and its hand-written gradient against XLA's reduce_window pool."""
  from jax import lax
  from jaxnas.spaces.layers import max_pool_3x3
  x = jnp.asarray(np.random.default_rng(11).normal(size=(2, 8, 8, 3)), F64)  # no ties
  g = jnp.asarray(np.random.default_rng(12).normal(size=(2, 8 // stride, 8 // stride, 3)), F64)

  def reference(x):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, stride, stride, 1),
                             ((0, 0), (1, 1), (1, 1), (0, 0)))

  mine = jax.jit(jax.value_and_grad(lambda x: jnp.sum(max_pool_3x3(x, stride=stride) * g)))
  ref = jax.jit(jax.value_and_grad(lambda x: jnp.sum(reference(x) * g)))
  (v1, g1), (v2, g2) = mine(x), ref(x)
  np.testing.assert_allclose(v1, v2, rtol=1e-14)
  np.testing.assert_allclose(g1, g2, rtol=0, atol=1e-14)


@pytest.mark.parametrize("stride", [1, 2])
def test_max_pool_forward_mode_and_second_order_match_reduce_window(stride):
  """JVP and forward-over-reverse (what HVPs and mixed products need) through the max pool, and
  ties: the first maximum in row-major order takes the derivative, as select_and_scatter does."""
  from jax import lax
  from jaxnas.spaces.layers import max_pool_3x3
  rng = np.random.default_rng(13)
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 3)), F64)
  t = jnp.asarray(rng.normal(size=x.shape), F64)

  def reference(x):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, stride, stride, 1),
                             ((0, 0), (1, 1), (1, 1), (0, 0)))

  pool = lambda x: max_pool_3x3(x, stride=stride)  # noqa: E731
  _, mine = jax.jit(lambda x, t: jax.jvp(pool, (x,), (t,)))(x, t)
  _, ref = jax.jit(lambda x, t: jax.jvp(reference, (x,), (t,)))(x, t)
  np.testing.assert_allclose(mine, ref, rtol=0, atol=1e-14)
  # A smooth function of the pool, so its Hessian-vector product is not trivially zero.
  f = lambda p: lambda x: jnp.sum(jnp.sin(p(x)))  # noqa: E731
  hvp = lambda p: jax.jit(lambda x, t: jax.jvp(jax.grad(f(p)), (x,), (t,))[1])  # noqa: E731
  np.testing.assert_allclose(hvp(pool)(x, t), hvp(reference)(x, t), rtol=0, atol=1e-13)
  # Ties (a constant image): every window's first cell in row-major order wins.
  ones = jnp.ones((1, 4, 4, 1), F64)
  grads = jax.grad(lambda x: jnp.sum(pool(x) * jnp.arange(1.0, 1 + (4 // stride) ** 2).reshape(
      1, 4 // stride, 4 // stride, 1)))(ones)
  ref_grads = jax.grad(lambda x: jnp.sum(reference(x) * jnp.arange(1.0, 1 + (4 // stride) ** 2)
                                         .reshape(1, 4 // stride, 4 // stride, 1)))(ones)
  np.testing.assert_array_equal(grads, ref_grads)
