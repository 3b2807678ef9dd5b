"""Evaluation networks: parameter and multiply-add counts against per-op formulas written out here,
the reference figures, drop-path's expectation, and the published genotypes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnas import evalnet, genotypes
from jaxnas.derive import Genotype, genotype_from_nb201_string
from jaxnas.errors import JaxnasError

F64 = jnp.float64

# --- the DARTS cell, counted by hand from quark0/darts operations.py ------------------------------
# With C channels (BN affine: 2C each):
#   sep_conv_k: 2 × (depthwise k²C + pointwise C² + BN 2C)      dil_conv_k: k²C + C² + 2C
#   skip_connect at stride 2 (FactorizedReduce C→C): 2 · C·C/2 + 2C; pools, identity, none: 0
#   preprocessing: ReLUConvBN 1×1 (C_in·C + 2C) or FactorizedReduce (2 · C_in·C/2 + 2C): equal
#   stem 3×3 conv 3 → 3C + BN: 27·3C + 6C; classifier C_last·K + K
#   auxiliary head on C_aux channels: C_aux·128 + 256 + 128·768·4 + 1536 + 768·K + K


def _op_params(op, c, stride):
  if op.startswith("sep_conv"):
    k = int(op[-1])
    return 2 * (k * k * c + c * c + 2 * c)
  if op.startswith("dil_conv"):
    k = int(op[-1])
    return k * k * c + c * c + 2 * c
  if op == "skip_connect" and stride == 2:
    return c * c + 2 * c
  return 0


def _nodes(genes):
  """(kept gene list, number of concatenated nodes) of a cell, pairs or FairDARTS triples."""
  if len(genes[0]) == 2:
    return [(op, src) for op, src in genes], None
  present, kept = {0, 1}, []
  for node in sorted({to for _, to, _ in genes}):
    mine = [(op, src) for op, to, src in genes if to == node and src in present]
    if mine:
      present.add(node)
      kept += mine
  return kept, len(present) - 2


def _formula(g, c, cells, classes=10, size=32):
  """(params without aux, aux params, mult-adds at size×size×3) by the formulas above."""
  params = 27 * 3 * c + 6 * c
  macs = size * size * 27 * 3 * c
  c_pp = c_p = 3 * c
  c_cur, h, reduction_prev = c, size, False
  for i in range(cells):
    reduction = i in (cells // 3, 2 * cells // 3)
    c_cur = 2 * c_cur if reduction else c_cur
    genes, concat = (g.reduce, g.reduce_concat) if reduction else (g.normal, g.normal_concat)
    kept, width = _nodes(genes)
    width = len(concat) if width is None else width
    params += (c_pp * c_cur + 2 * c_cur) + (c_p * c_cur + 2 * c_cur)
    macs += h * h * c_pp * c_cur + h * h * c_p * c_cur  # 1×1 (or two half 1×1) at resolution h
    out = h // 2 if reduction else h
    for op, src in kept:
      stride = 2 if reduction and src < 2 else 1
      params += _op_params(op, c_cur, stride)
      n = out * out * c_cur  # outputs of each conv of the op
      if op.startswith("sep_conv"):
        macs += 2 * (n * int(op[-1]) ** 2 + n * c_cur)
      elif op.startswith("dil_conv"):
        macs += n * int(op[-1]) ** 2 + n * c_cur
      elif op == "skip_connect" and stride == 2:
        macs += n * c_cur
    c_pp, c_p, h = c_p, width * c_cur, out
    if i == 2 * cells // 3:
      c_aux = c_p
  params += c_p * classes + classes
  macs += c_p * classes
  aux = c_aux * 128 + 256 + 128 * 768 * 4 + 1536 + 768 * classes + classes
  return params, aux, macs


def test_darts_v2_parameter_count_is_the_reference_count():
  # quark0/darts reports "3.3M" for DARTS_V2 (C=36, L=20, CIFAR-10); its own counter
  # (utils.count_parameters_in_MB, which leaves the auxiliary head out) gives 3.349342M, the
  # figure its training logs print and the formula above reproduces: 3,349,342; the head adds
  # 476,426 (C_aux = 576).
  g = genotypes.get("DARTS_V2")
  plain, aux, _ = _formula(g, 36, 20)
  assert (plain, aux) == (3_349_342, 476_426)
  model = evalnet.NetworkCIFAR(g, channels=36, num_cells=20, num_classes=10, auxiliary=True)
  assert evalnet.count_params(model, (32, 32, 3)) == (3_349_342, 3_349_342 + 476_426)
  assert round(plain / 1e6, 1) == 3.3


# Pairs with a strided skip and pools (DARTS_V1), convs of every kind (PC_DARTS, PDARTS), and
# FairDARTS triples with a node left out (A) or reading an intermediate node (D).
@pytest.mark.parametrize("name", ["DARTS_V1", "PC_DARTS", "PDARTS", "FAIRDARTS_A", "FAIRDARTS_D"])
def test_published_genotypes_count_as_the_formula(name):
  # Small network (a normal cell, then both reduction cells, the second read by the auxiliary
  # head): the module's parameter count and mult-adds equal the per-op formulas, pairs and
  # FairDARTS triples alike.
  g = genotypes.get(name)
  plain, aux, macs = _formula(g, 4, 3, classes=7, size=32)
  model = evalnet.NetworkCIFAR(g, channels=4, num_cells=3, num_classes=7, auxiliary=True)
  assert evalnet.count_params(model, (32, 32, 3)) == (plain, plain + aux)
  assert evalnet.count_macs(model, (32, 32, 3)) == macs


def test_published_figures():
  """The formula at C=36, L=20 against the figures the genotypes' READMEs print."""
  million = lambda name, with_aux=False: sum(_formula(genotypes.get(name), 36, 20)[:2 if with_aux
                                                                                 else 1]) / 1e6
  assert round(million("PC_DARTS"), 1) == 3.6  # PC-DARTS README
  assert round(million("DRNAS"), 1) == 4.1  # DrNAS README
  # FairDARTS README (thop, truncated to 2 decimals; its counts include the auxiliary head, except
  # for c): a 2.83, b 3.88, c 2.59, d 3.84, e 3.12, f 3.62, g 3.38 (3.375 in genotypes.py).
  for name, published in (("A", 2.83), ("B", 3.88), ("D", 3.84), ("E", 3.12), ("F", 3.62),
                          ("G", 3.375)):
    assert abs(million("FAIRDARTS_" + name, True) - published) < 0.01
  assert abs(million("FAIRDARTS_C") - 2.59) < 0.01
  # Mult-adds of one 32×32 forward pass: DARTS_V2 528,359,040 (the "528M" of DARTS-family tables).
  assert _formula(genotypes.get("DARTS_V2"), 36, 20)[2] == 528_359_040


def _nb201_formula(arch, c=16, n=5, classes=10):
  """NAS-Bench-201's TinyNetwork: stem 27C + 2C; per cell and stage width w, nor_conv_3x3 9w² + 2w,
  nor_conv_1x1 w² + 2w (bias-free, affine BN); ResNet block w→2w: 9·w·2w + 2·2w + 9·(2w)² + 2·2w +
  w·2w; last BN 2·4C; classifier 4C·K + K."""
  ops = [op for node in arch.split("+") for op in node.strip("|").split("|")]
  total = 27 * c + 2 * c
  for w in (c, 2 * c, 4 * c):
    per_cell = sum(9 * w * w + 2 * w if o.startswith("nor_conv_3x3") else
                   w * w + 2 * w if o.startswith("nor_conv_1x1") else 0 for o in ops)
    total += n * per_cell
  for w in (c, 2 * c):
    total += 9 * w * 2 * w + 4 * w + 9 * (2 * w) ** 2 + 4 * w + w * 2 * w
  return total + 2 * 4 * c + 4 * c * classes + classes


@pytest.mark.parametrize("arch, published", [
    # All six edges nor_conv_3x3: the largest network of the benchmark, 1.531546 MB on CIFAR-10.
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|"
     "nor_conv_3x3~2|", 1_531_546),
    # No parametric op: stem, ResNet blocks, last BN and classifier only (the smallest, 0.073 MB).
    ("|skip_connect~0|+|none~0|avg_pool_3x3~1|+|none~0|skip_connect~1|avg_pool_3x3~2|", 73_306),
    ("|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|", None),
    ("|nor_conv_1x1~0|+|nor_conv_3x3~0|none~1|+|avg_pool_3x3~0|nor_conv_1x1~1|skip_connect~2|",
     None),
])
def test_nb201_network_parameter_count(arch, published):
  expected = _nb201_formula(arch)
  if published is not None:
    assert expected == published
  model = evalnet.NB201Network(genotype_from_nb201_string(arch), channels=16, cells_per_stage=5)
  assert evalnet.count_params(model, (32, 32, 3)) == (expected, expected)


def test_fairdarts_cell_leaves_out_nodes_without_inputs():
  # FAIRDARTS_A's normal cell has genes into nodes 2, 4, 5 only: its output is 3 nodes wide, so the
  # next cell's preprocessing 1×1 reads 3C channels (DCOCell's multiplier = number of nodes kept).
  g = genotypes.get("FAIRDARTS_A")
  model = evalnet.NetworkCIFAR(g, channels=4, num_cells=3, num_classes=10)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                             jax.ShapeDtypeStruct((1, 8, 8, 1), jnp.float32))
  assert variables["params"]["cell_1"]["pre1"]["kernel"].shape == (1, 1, 3 * 4, 8)


def test_drop_path_keeps_the_expectation():
  x = jnp.ones((20_000, 2, 2, 1), F64)
  p = jnp.asarray(0.2, F64)
  y = np.asarray(jax.jit(evalnet.drop_path)(x, p, jax.random.key(3)))
  values = set(np.unique(y))
  assert values == {0.0, 1.0 / 0.8}  # dropped, or scaled by 1/keep
  per_example = y.reshape(len(y), -1)
  assert np.all(per_example.min(axis=1) == per_example.max(axis=1))  # one mask per example
  kept = np.mean(per_example[:, 0] > 0)
  assert abs(kept - 0.8) < 4 * np.sqrt(0.8 * 0.2 / len(y))  # Bernoulli(0.8), 4 standard errors
  assert abs(y.mean() - 1.0) < 4 * np.sqrt(0.8 * 0.2 / len(y)) / 0.8
  zero = jax.jit(evalnet.drop_path)(x, jnp.asarray(0.0, F64), jax.random.key(3))
  np.testing.assert_array_equal(np.asarray(zero), np.asarray(x))


@pytest.fixture(scope="module")
def tiny():
  model = evalnet.NetworkCIFAR(genotypes.get("DARTS_V2"), channels=4, num_cells=3, num_classes=10,
                               dtype=F64)
  params, stats = evalnet.init_variables(model, jax.random.key(0), (8, 8, 1))

  @jax.jit
  def forward(x, drop_prob, key):
    variables = {"params": params, "batch_stats": stats}
    train_logits, _ = model.apply(variables, x, train=True, drop_prob=drop_prob,
                                  rngs={"drop_path": key}, mutable=["batch_stats"])[0]
    eval_logits, _ = model.apply(variables, x, train=False, drop_prob=drop_prob,
                                 rngs={"drop_path": key})
    return train_logits, eval_logits

  x = jnp.asarray(np.random.default_rng(0).standard_normal((6, 8, 8, 1)))
  return forward, x


def test_drop_path_acts_in_training_only(tiny):
  forward, x = tiny
  train0, eval0 = forward(x, jnp.asarray(0.0, F64), jax.random.key(1))
  train5, eval5 = forward(x, jnp.asarray(0.5, F64), jax.random.key(1))
  np.testing.assert_array_equal(np.asarray(eval0), np.asarray(eval5))  # eval: no drop-path
  assert not np.allclose(np.asarray(train0), np.asarray(train5))  # train: masks act
  train5b, _ = forward(x, jnp.asarray(0.5, F64), jax.random.key(2))
  assert not np.allclose(np.asarray(train5), np.asarray(train5b))  # the key decides the masks


def test_bad_inputs_raise_one_line():
  g = genotypes.get("DARTS_V2")
  shape = lambda m, s: jax.eval_shape(lambda x: m.init(jax.random.key(0), x, train=False),
                                      jax.ShapeDtypeStruct(s, jnp.float32))
  with pytest.raises(JaxnasError, match="auxiliary head needs a feature map of at least 8×8"):
    shape(evalnet.NetworkCIFAR(g, 4, 3, auxiliary=True), (1, 8, 8, 1))
  with pytest.raises(JaxnasError, match="divisible by 4"):
    shape(evalnet.NetworkCIFAR(g, 4, 3), (1, 10, 10, 1))
  odd = Genotype(normal=[("sep_conv_7x7", 0), ("skip_connect", 1)], normal_concat=[2],
                 reduce=[("max_pool_3x3", 0), ("skip_connect", 1)], reduce_concat=[2])
  with pytest.raises(JaxnasError, match="sep_conv_7x7") as err:
    shape(evalnet.NetworkCIFAR(odd, 4, 3), (1, 8, 8, 1))
  assert "\n" not in str(err.value)
  with pytest.raises(JaxnasError, match="no auxiliary head"):
    evalnet.build(genotypes.get("NB201_RESNET"), channels=4, cells=1, num_classes=10,
                  auxiliary=True)


def test_auxiliary_head_gradient_matches_finite_differences():
  # The head's 5×5 stride-3 average pool must be differentiable: the directional derivative of
  # its summed logits (train mode) equals a float64 central difference along a random direction.
  head = evalnet.AuxiliaryHeadCIFAR(num_classes=3, dtype=F64)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 8, 8, 4)))
  variables = head.init(jax.random.key(0), x, train=False)

  def f(x):
    return jnp.sum(head.apply(variables, x, train=True, mutable=["batch_stats"])[0] ** 2)

  value_and_grad = jax.jit(jax.value_and_grad(f))
  _, g = value_and_grad(x)
  v = jnp.asarray(rng.standard_normal(x.shape))
  eps = 1e-6
  fd = (value_and_grad(x + eps * v)[0] - value_and_grad(x - eps * v)[0]) / (2 * eps)
  np.testing.assert_allclose(float(jnp.vdot(g, v)), float(fd), rtol=1e-6)


# --- per-cell genotypes (D-DARTS Genotype_nested, DARTOpti's S_o ops) -----------------------------

_CELL = (("sep_conv_3x3", 2, 0), ("skip_connect", 2, 1), ("dil_conv_5x5", 3, 2),
         ("max_pool_3x3", 3, 0), ("avg_pool_3x3", 4, 1), ("skip_connect", 5, 0))


@pytest.mark.parametrize("cells", [3, 5])
def test_per_cell_network_of_equal_cells_counts_as_the_shared_cell_network(cells):
  """All cells equal: the same count (with and without the head) and multiply-adds as quark0's
  NetworkCIFAR of that cell, whose reductions L//3, 2L//3 are CellGenotype's default."""
  from jaxnas.ddarts import CellGenotype
  shared = evalnet.NetworkCIFAR(Genotype(normal=_CELL, normal_concat=[2, 3, 4, 5], reduce=_CELL,
                                         reduce_concat=[2, 3, 4, 5]),
                                channels=4, num_cells=cells, num_classes=10, auxiliary=True)
  per_cell = evalnet.build(CellGenotype((_CELL,) * cells), channels=4, cells=None, num_classes=10,
                           auxiliary=True)
  assert isinstance(per_cell, evalnet.CellNetworkCIFAR)
  assert evalnet.count_params(per_cell, (32, 32, 3)) == evalnet.count_params(shared, (32, 32, 3))
  plain = lambda m: m.clone(auxiliary=False)
  assert (evalnet.count_macs(plain(per_cell), (8, 8, 3))
          == evalnet.count_macs(plain(shared), (8, 8, 3)))


def test_three_cell_per_cell_network_counted_by_hand():
  """C = 4, 8×8×1 images, reductions at 1 and 2, DARTOpti ops included; every figure by hand."""
  from jaxnas.ddarts import CellGenotype
  g = CellGenotype((
      (("conv_3x1_1x3", 2, 0), ("simple_conv_1x1", 2, 1), ("skip_connect", 3, 2)),
      (("bottleneck_1x3x1", 2, 1), ("skip_connect", 3, 0), ("max_pool_3x3", 3, 2)),
      (("sep_conv_3x3", 2, 0), ("dil_conv_5x5", 3, 1), ("conv_7x1_1x7", 4, 3)),
  ), reductions=(1, 2))
  stem = 9 * 1 * 12 + 2 * 12  # 3×3 conv 1 → 3C = 12, BN
  # cell 0, normal, C = 4, inputs 12 and 12: two ReLUConvBN 1×1 (12·4 + 8);
  # conv_3x1_1x3 6C² + 2C; simple_conv_1x1 C² + 2C; identity 0; nodes 2, 3 → 8 channels.
  cell0 = 2 * (12 * 4 + 8) + (6 * 16 + 8) + (16 + 8)
  # cell 1, reduction, C = 8, inputs 12 (stem) and 8: ReLUConvBN 12·8 + 16, 8·8 + 16;
  # bottleneck 18C² + 2(C + C + 4C + C); skip at stride 2 = FactorizedReduce C² + 2C; pool 0;
  # nodes 2, 3 → 16 channels.
  cell1 = (12 * 8 + 16) + (8 * 8 + 16) + (18 * 64 + 2 * 56) + (64 + 16)
  # cell 2, reduction after a reduction, C = 16, inputs 8 and 16: FactorizedReduce 8 → 16
  # (2 · 8·8 + 32), ReLUConvBN 16·16 + 32; sep_conv_3x3 2(9C + C² + 2C); dil_conv_5x5
  # 25C + C² + 2C; conv_7x1_1x7 14C² + 2C; nodes 2, 3, 4 → 48 channels.
  cell2 = ((2 * 64 + 32) + (256 + 32) + 2 * (144 + 256 + 32) + (400 + 256 + 32)
           + (14 * 256 + 32))
  classifier = 48 * 10 + 10
  net = evalnet.build(g, channels=4, cells=3, num_classes=10)
  assert evalnet.count_params(net, (8, 8, 1)) == (stem + cell0 + cell1 + cell2 + classifier,) * 2
  # The rectangular kernels are 1×k then k×1 (the 1×k first, as the authors' code).
  params = evalnet._abstract_variables(net, (8, 8, 1))["params"]
  assert params["cell_0"]["op0_conv_3x1_1x3"]["conv1"].shape == (1, 3, 4, 4)
  assert params["cell_2"]["op2_conv_7x1_1x7"]["conv2"].shape == (7, 1, 16, 16)


def test_per_cell_genotype_errors_are_one_line():
  from jaxnas.ddarts import CellGenotype
  x = (8, 8, 1)
  odd = CellGenotype((_CELL, (("conv_9x9", 2, 0),), _CELL))
  with pytest.raises(JaxnasError, match="cells\\[1\\] uses op 'conv_9x9'") as e:
    evalnet.count_params(evalnet.build(odd, channels=4, cells=None, num_classes=10), x)
  assert "\n" not in str(e.value)
  none = CellGenotype((_CELL, (("none", 2, 0),), _CELL))
  with pytest.raises(JaxnasError, match="uses op 'none'"):
    evalnet.count_params(evalnet.build(none, channels=4, cells=None, num_classes=10), x)
  with pytest.raises(JaxnasError, match="has 3 cells, not --cells 5"):
    evalnet.build(CellGenotype((_CELL,) * 3), channels=4, cells=5, num_classes=10)
  four = CellGenotype((_CELL,) * 5, reductions=(0, 1, 2, 3))  # 8 / 2⁴ is not whole
  with pytest.raises(JaxnasError, match="divisible by 16"):
    evalnet.count_params(evalnet.build(four, channels=4, cells=None, num_classes=10), x)
  flat = CellGenotype((_CELL,) * 2, reductions=())
  with pytest.raises(JaxnasError, match="has none; use --auxiliary-weight 0"):
    evalnet.count_params(evalnet.build(flat, channels=4, cells=None, num_classes=10,
                                       auxiliary=True), (32, 32, 3))
